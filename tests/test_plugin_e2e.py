"""A newcomer's path: scaffold a plugin, fill in a real quantizer, install, list, check, run, find its row."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from vqbench.commands.cli import main
from vqbench.errors import UserError
from vqbench.registry import METHODS, load_plugin

# A small real method the "researcher" fills in: cosine-similarity lookup with l2-normalised codes.
FILLED_IN = '''
import torch
import torch.nn.functional as F
from torch import nn

import vqbench


@vqbench.register_method("{name}", version=1, paper="2110.04627", family="vq", description="cosine VQ (e2e test)",
                         beta=0.25)
class CosineQuantizer(vqbench.Quantizer):
    def __init__(self, dim, codebook_size, beta=0.25):
        super().__init__()
        self.dim, self.codebook_size, self.beta = dim, codebook_size, beta
        self.codes = nn.Parameter(torch.randn(codebook_size, dim))

    def codebook(self):
        return F.normalize(self.codes, dim=-1)

    def forward(self, z):
        flat = F.normalize(z.reshape(-1, self.dim), dim=-1)
        idx = (flat.detach() @ self.codebook().detach().t()).argmax(dim=1)  # unit vectors: nearest = most similar
        codes = self.codebook()[idx]
        loss = F.mse_loss(codes, flat.detach()) + self.beta * F.mse_loss(flat, codes.detach())
        z_q = flat + (codes - flat).detach()
        return vqbench.QuantizeOutput(z_q.reshape(z.shape), idx.reshape(z.shape[:-1]), loss, {{}})
'''
PUBLIC_API = {"vqbench", "vqbench.testing"}  # what a plugin (the scaffold's files) may import of vqbench


def _vqbench_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n == "vqbench" or n.startswith("vqbench.")}


def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=300)


def test_scaffold_install_check_run_leaderboard(tmp_path, capsys):
    import importlib.metadata as md

    name = "e2e-cosine-vq"
    root = tmp_path / "plugin"
    assert main(["new", "method", name, "--dir", str(root)]) == 0
    method_py = root / "vqbench_e2e_cosine_vq" / "method.py"
    assert "class E2eCosineVqQuantizer(Quantizer)" in method_py.read_text()
    for path in root.rglob("*.py"):  # the scaffold uses only the flat public API, never vqbench's internals
        assert _vqbench_imports(path) <= PUBLIC_API, path
    assert _vqbench_imports(method_py) == {"vqbench"}
    # the skeleton as written passes the conformance kit (a fresh process: nothing registered here)
    as_is = subprocess.run([sys.executable, "-m", "vqbench.commands.cli", "check", "method", name, "--plugin",
                            str(method_py)], capture_output=True, text=True, timeout=300)
    assert as_is.returncode == 0 and "0 failed" in as_is.stdout, as_is.stdout + as_is.stderr
    method_py.write_text(FILLED_IN.format(name=name))
    installed = pip("install", "--no-deps", "--no-build-isolation", "-e", str(root))
    assert installed.returncode == 0, installed.stderr
    try:
        # a fresh process sees the entry point, as a user's next command would
        listed = subprocess.run([sys.executable, "-m", "vqbench.commands.cli", "list", "methods", "e2e*"],
                                capture_output=True, text=True, timeout=120)
        assert name in listed.stdout and "vqbench-e2e-cosine-vq==0.1.0" in listed.stdout, listed.stderr
        checked = subprocess.run([sys.executable, "-m", "vqbench.commands.cli", "check", "method", name],
                                 capture_output=True, text=True, timeout=300)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "0 failed" in checked.stdout
        results, site = tmp_path / "results", tmp_path / "site"
        ran = subprocess.run([sys.executable, "-m", "vqbench.commands.cli", "run", "--task", "gmm", "--method", name,
                              "--results", str(results), "--set", "task.n_train=512", "--set", "task.n_eval=256",
                              "--set", "budget.steps=20", "--set", "budget.eval_interval=10"],
                             capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0 and ": ok" in ran.stdout, ran.stdout + ran.stderr
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                               capture_output=True, text=True, timeout=300, cwd=root)
        assert tests.returncode == 0, tests.stdout
        assert main(["leaderboard", "build", "--results", str(results), "--out", str(site)]) == 0
        pages = "".join(p.read_text() for p in site.rglob("*.html"))
        assert name in pages and "vqbench-e2e-cosine-vq" in pages  # its row, with its source
        from vqbench.store import ResultStore

        row = ResultStore(results).load_runs().iloc[0]
        assert row.method == name and row.method_source == "vqbench-e2e-cosine-vq==0.1.0"
    finally:
        pip("uninstall", "-y", "vqbench-e2e-cosine-vq")
        md.distributions.cache_clear() if hasattr(md.distributions, "cache_clear") else None


def test_plugin_cannot_replace_a_builtin(tmp_path):
    plugin = tmp_path / "steal.py"
    plugin.write_text("from vqbench.registry import register_method\n"
                      "register_method('vq', family='vq', description='impostor')(lambda dim, codebook_size: None)\n")
    with pytest.raises(UserError, match=r"'vq' is registered twice: by vqbench .* and by file:.*steal\.py"):
        load_plugin(str(plugin))
    assert METHODS.get("vq").source == "vqbench"


def test_broken_plugin_on_the_command_line_is_one_line(tmp_path, capsys):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("import no_such_dependency_xyz\n")
    assert main(["list", "methods", "--plugin", str(plugin)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: plugin") and "broken_plugin.py" in err and "no_such_dependency_xyz" in err
    assert main(["list", "methods", "vq"]) == 0  # everything else keeps working


def test_scaffold_refuses_bad_names_and_non_empty_dirs(tmp_path):
    with pytest.raises(UserError, match="lowercase"):
        main_args = ["new", "method", "Bad Name", "--dir", str(tmp_path / "x")]
        from vqbench.commands.scaffold import scaffold_method

        scaffold_method(main_args[2], tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        from vqbench.commands.scaffold import scaffold_method

        scaffold_method("ok-name", tmp_path / "full")
    assert Path(tmp_path / "x").exists() is False
