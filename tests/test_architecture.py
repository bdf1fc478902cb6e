"""The layers of ARCHITECTURE.md, enforced: who may import whom, and where torch may not go.

Each repository folder installs as part of the ``vqbench`` namespace (``bench/`` -> ``vqbench``,
``methods/`` -> ``vqbench.methods`` ...). The rules are checked on the source (every ``import`` statement,
including lazy ones inside functions) and, for torch, on what a fresh interpreter actually loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"bench": "vqbench", "methods": "vqbench.methods", "tasks": "vqbench.tasks", "slurm": "vqbench.slurm",
           "leaderboard": "vqbench.leaderboard"}
UPPER = ("vqbench.commands", "vqbench.slurm", "vqbench.leaderboard", "vqbench.methods", "vqbench.tasks")

# package -> the vqbench modules it may import (prefixes); its own package is always allowed
ALLOWED: dict[str, tuple[str, ...]] = {
    # the ground floor: everything in bench/ but the commands
    "vqbench": ("vqbench.errors", "vqbench.registry", "vqbench.spec", "vqbench.store", "vqbench.provenance",
                "vqbench.quantizer", "vqbench.metrics", "vqbench.collapse", "vqbench.runner", "vqbench.checkpoint",
                "vqbench.testing", "vqbench.image_metrics", "vqbench.gen_metrics", "vqbench.tuning",
                "vqbench.distributed"),
    "vqbench.methods": ("vqbench.errors", "vqbench.registry", "vqbench.quantizer", "vqbench.distributed"),
    "vqbench.tasks": ("vqbench.errors", "vqbench.registry", "vqbench.spec", "vqbench.store", "vqbench.metrics",
                      "vqbench.collapse",
                      "vqbench.image_metrics", "vqbench.gen_metrics", "vqbench.quantizer", "vqbench.distributed"),
    "vqbench.slurm": ("vqbench.errors", "vqbench.registry", "vqbench.spec", "vqbench.store", "vqbench.provenance",
                      "vqbench.runner", "vqbench.tuning", "vqbench.distributed", "vqbench.quantizer"),
    "vqbench.leaderboard": ("vqbench.errors", "vqbench.spec", "vqbench.store", "vqbench.tuning"),
    "vqbench.commands": ("vqbench",),  # the top floor may import every layer
}
# leaves: modules that import (almost) nothing of ours
LEAVES = {"vqbench.errors": (), "vqbench.registry": ("vqbench.errors",),
          "vqbench.spec": ("vqbench.errors", "vqbench.registry"), "vqbench.provenance": (),
          "vqbench.quantizer": ()}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO)
    package = FOLDERS[rel.parts[0]]
    parts = [package, *rel.parts[1:-1]]
    if path.stem != "__init__":
        parts.append(path.stem)
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names if node.module == "vqbench"]
    return names


def _sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _package_of(module: str) -> str:
    for package in ("vqbench.commands", *UPPER[1:]):
        if module == package or module.startswith(package + "."):
            return package
    return "vqbench"


def _allowed(module: str, imported: str) -> bool:
    package = _package_of(module)
    if imported == package or imported.startswith(package + "."):
        return package != "vqbench" or not imported.startswith(UPPER)
    if imported == "vqbench":  # the facade: only names re-exported lazily, resolved per name above
        return package == "vqbench.commands"
    return any(imported == a or imported.startswith(a + ".") for a in ALLOWED[package])


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_layer_it_may_not(path):
    module = _module_name(path)
    ours = [name for name in _imports(path) if name == "vqbench" or name.startswith("vqbench.")]
    bad = [name for name in ours if not _allowed(module, name)]
    assert not bad, f"{module} imports {bad}: see ARCHITECTURE.md (layers and import rules)"
    if module in LEAVES:
        extra = [n for n in ours if not any(n == a or n.startswith(a + ".") for a in LEAVES[module])]
        assert not extra, f"{module} is a leaf and may import only {LEAVES[module]}, not {extra}"


@pytest.mark.parametrize("path", [p for p in _sources() if p.parts[len(REPO.parts)] == "leaderboard"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_the_site_never_imports_torch(path):
    assert not [n for n in _imports(path) if n.split(".")[0] == "torch"], path


def test_methods_never_import_tasks_and_tasks_never_import_methods():
    for path in _sources():
        module, names = _module_name(path), _imports(path)
        if module.startswith("vqbench.methods"):
            assert not [n for n in names if n.startswith("vqbench.tasks")], path
        if module.startswith("vqbench.tasks"):
            assert not [n for n in names if n.startswith("vqbench.methods")], path


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_light_modules_load_no_torch_and_nothing_above_them():
    """The facade, the spec (so sweep files parse without torch) and the site builder load no torch."""
    loaded = _loaded_after("import vqbench, vqbench.spec, vqbench.store, vqbench.leaderboard.build")
    assert "torch" not in loaded
    assert not [m for m in loaded if m.startswith(("vqbench.methods", "vqbench.tasks", "vqbench.commands",
                                                   "vqbench.slurm", "vqbench.runner"))]


def test_ground_floor_loads_nothing_above_it():
    loaded = _loaded_after("import vqbench.runner, vqbench.metrics, vqbench.testing")
    assert not [m for m in loaded if m.startswith(UPPER)]
