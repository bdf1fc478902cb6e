"""Freeze the code a sweep runs: a copy of vqbench's packages and of its file plugins per submission.

Jobs may start hours after submission; by then the checkout may have moved on. Before submitting,
the driver copies the ``vqbench`` namespace (the repository folders ``bench``, ``methods``, ``tasks``,
``slurm`` and ``leaderboard``, mapped to ``vqbench``, ``vqbench.methods`` ...) into
``<results>/jobs/<sweep>/code/<hash>/vqbench/`` as one ordinary package tree, and puts that folder
first on the jobs' ``PYTHONPATH``, so the code that runs is the code that was submitted. The folder is named by the
hash of its content: resubmitting unchanged code reuses it. Jobs start through a small launcher
script in the snapshot (``_launch/vqbench_submit.py``) rather than ``python -m``, which would put
the job's working directory (often the checkout itself) ahead of the snapshot on ``sys.path``.
File plugins (``plugins:`` entries that are ``.py`` files) are copied likewise into
``plugins/<hash>-<name>.py``; a job loads the original file when it still has the same content (so
provenance names the same path) and the copy otherwise. A file plugin must be self-contained (a
plugin made of several modules should be an installed package, named by module).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

# import name -> folder inside the snapshot (the installed mapping of the repository folders, made plain)
PACKAGES = {
    "vqbench": "vqbench",
    "vqbench.methods": "vqbench/methods",
    "vqbench.tasks": "vqbench/tasks",
    "vqbench.slurm": "vqbench/slurm",
    "vqbench.leaderboard": "vqbench/leaderboard",
}
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
LAUNCHER = Path("_launch") / "vqbench_submit.py"
# `python -m submitit.core._submit` would put the job's working directory first on sys.path, ahead of
# PYTHONPATH, so a job started from a checkout would import the checkout, not the snapshot
_LAUNCHER_TEXT = '''"""Start a submitit job with the code of this snapshot first on sys.path (written by vqbench)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from submitit.core.submission import submitit_main  # noqa: E402

submitit_main()
'''


def package_dirs() -> dict[str, Path]:
    """Where each vqbench package is imported from (without importing it)."""
    dirs = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name) if "." not in name or name.rsplit(".", 1)[0] in dirs else None
        if spec is None or not spec.submodule_search_locations:
            continue
        dirs[name] = Path(list(spec.submodule_search_locations)[0])
    return dirs


def _files(root: Path, other_roots: set[Path] = frozenset()) -> list[Path]:
    """The files below ``root``, without those of the other packages (nested in an installed wheel)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")
                             and Path(dirpath, d) not in other_roots)
        for f in sorted(filenames):
            if f.endswith((".pyc", ".pyo")) or f.startswith("."):
                continue
            out.append(Path(dirpath) / f)
    return out


def snapshot_code(dest: Path) -> Path:
    """Copy vqbench's packages into ``dest/<hash>/`` (reused if it exists); returns that folder."""
    roots = package_dirs()
    files = [(name, path) for name, root in roots.items()
             for path in _files(root, set(roots.values()) - {root})]
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(f"{name}/{path.relative_to(roots[name])}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    target = dest / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=dest))
    try:
        for name, path in files:
            out = tmp / PACKAGES[name] / path.relative_to(roots[name])
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out)
        (tmp / LAUNCHER).parent.mkdir()
        (tmp / LAUNCHER).write_text(_LAUNCHER_TEXT)
        try:
            os.rename(tmp, target)
        except OSError:  # another driver made the same snapshot meanwhile
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def launcher(code: Path) -> Path:
    """The script a job starts instead of ``python -m submitit.core._submit`` (see ``_LAUNCHER_TEXT``)."""
    return code / LAUNCHER


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ship_plugins(plugins: tuple[str, ...] | list[str], dest: Path) -> list[dict[str, str]]:
    """Plugin references for the worker: file plugins copied under ``dest``, modules by name."""
    refs = []
    for plugin in plugins:
        path = Path(plugin)
        if plugin.endswith(".py") and path.is_file():
            sha = file_sha256(path)
            copy = dest / f"{sha[:12]}-{path.name}"
            if not copy.exists():
                dest.mkdir(parents=True, exist_ok=True)
                tmp = copy.with_name(f".{copy.name}.{os.getpid()}.tmp")
                shutil.copy2(path, tmp)
                os.replace(tmp, copy)
            refs.append({"kind": "file", "original": str(path.resolve()), "copy": str(copy), "sha256": sha})
        else:
            refs.append({"kind": "module", "name": plugin})
    return refs


def plugin_to_load(ref: dict[str, str]) -> str:
    """What the worker passes to ``load_plugin`` for a shipped reference."""
    if ref["kind"] == "module":
        return ref["name"]
    original = Path(ref["original"])
    if original.is_file() and file_sha256(original) == ref["sha256"]:
        return str(original)
    return ref["copy"]
