"""Helpers shared by the sweep tests (in-process, local executor and real Slurm); not a test module."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqbench.methods.base import nearest_code
from vqbench.quantizer import QuantizeOutput, Quantizer
from vqbench.registry import METHODS
from vqbench.runner import run
from vqbench.slurm import jobs
from vqbench.spec import RunSpec
from vqbench.store import ResultStore, final_metrics

GMM = "{n_train: 1024, n_eval: 256, hidden: 32, n_modes: 8, codebook_size: 32}"


def sweep_file(tmp_path: Path, name: str, methods: str, budget: str, executor: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        tasks:
          - name: gmm
            params: {GMM}
        methods: {methods}
        seeds: 1
        budget: {budget}
        executor: {executor}
        """) + extra)
    return path


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5, show=None):
    """Poll ``predicate`` until it returns something true; on timeout say what ``show()`` says."""
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {show()}" if show else ""))


def starts(results: Path) -> dict[str, list[dict]]:
    return {rid: [e for e in events if e["event"] == "start"] for rid, events in jobs.load_attempts(results).items()}


def run_in_one_process(spec: RunSpec, results: Path) -> None:
    """Run ``spec`` here, in one process with one torch thread (the jobs' setting), into ``results``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = run(spec, results, progress=False).status
    finally:
        torch.set_num_threads(threads)
    assert status == "ok", f"the run in one process ended {status}"


def final(results: Path) -> dict[str, float]:
    """The final metrics of the one run stored in ``results``, by column (``metric.<name>``)."""
    store = ResultStore(results)
    table = final_metrics(store.load_runs(), store.load_metrics())
    cols = sorted(c for c in table.columns if c.startswith("metric."))
    assert len(table) == 1 and cols
    return {c: float(table[c].iloc[0]) for c in cols}


# -- the in-process sweep tests (test_sweep_files.py, test_sweep_run.py) -----------------------------------
TINY_GMM = "{n_train: 256, n_eval: 128, hidden: 16, n_modes: 4, codebook_size: 16}"
TINY_BUDGET = "{steps: 20, batch_size: 32, eval_interval: 10}"


class ToyQuantizer(Quantizer):
    """Nearest code + straight-through; ``mode`` "fail" raises in training, "diverge" adds 1e12 to the loss,
    "nobuild" cannot be built (the runner raises before writing anything)."""

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, levels: tuple[int, ...] = (4, 4),
                 mode: str = "ok") -> None:
        super().__init__()
        if mode == "nobuild":
            raise ValueError("toy refuses to build")
        self.dim, self.codebook_size, self.beta, self.mode = dim, codebook_size, beta, mode
        self.levels = list(levels)
        self.embed = nn.Parameter(torch.randn(codebook_size, dim))

    def forward(self, z: torch.Tensor) -> QuantizeOutput:
        if self.mode == "fail" and self.training:
            raise RuntimeError("toy failure")
        idx = nearest_code(z.reshape(-1, self.dim), self.embed).reshape(z.shape[:-1])
        e = self.embed[idx]
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        if self.mode == "diverge":
            loss = loss + 1e12
        return QuantizeOutput(z + (e - z).detach(), idx, loss)

    def codebook(self) -> torch.Tensor:
        return self.embed.detach()

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embed[indices]


TOYS = {"swt-a": ("swt", {}), "swt-b": ("swt", {"beta": 0.5}), "swt-c": ("swt-other", {}),
        "swt-fail": ("swt-bad", {"mode": "fail"}), "swt-diverge": ("swt-bad", {"mode": "diverge"}),
        "swt-nobuild": ("swt-bad", {"mode": "nobuild"})}


def registered_toys() -> Iterator[None]:
    """Register the ``TOYS`` methods for the duration of a module (a test module's autouse fixture yields from it)."""
    for name, (family, defaults) in TOYS.items():
        METHODS.register(name, version=1, family=family, description="test toy", **defaults)(ToyQuantizer)
    yield
    for name in TOYS:
        METHODS.remove(name)


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def base_yaml(**overrides: str) -> str:
    parts = {
        "name": "t",
        "tasks": f"\n  - name: gmm\n    params: {TINY_GMM}",
        "methods": "[swt-a]",
        "seeds": "1",
        "budget": TINY_BUDGET,
        "executor": "{cluster: debug}",
    }
    parts.update(overrides)
    return "".join(f"{k}: {v}\n" for k, v in parts.items() if v is not None)


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the test YAML")


# a file plugin (``PLUGIN.format(name=...)``) for the sweeps that load, ship and run one
PLUGIN = '''
"""A file plugin for the sweep tests: a nearest-code quantizer with a straight-through estimator."""
import torch
import torch.nn.functional as F
from torch import nn

from vqbench.registry import register_method
from vqbench.methods.base import nearest_code
from vqbench.quantizer import QuantizeOutput, Quantizer


@register_method("{name}", version=1, family="plugin-test", description="file plugin for the sweep tests",
                 beta=0.25)
class PluginQuantizer(Quantizer):
    def __init__(self, dim, codebook_size, beta=0.25):
        super().__init__()
        self.dim, self.codebook_size, self.beta = dim, codebook_size, beta
        self.embed = nn.Parameter(torch.randn(codebook_size, dim))

    def forward(self, z):
        idx = nearest_code(z.reshape(-1, self.dim), self.embed).reshape(z.shape[:-1])
        e = self.embed[idx]
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        return QuantizeOutput(z + (e - z).detach(), idx, loss)

    def codebook(self):
        return self.embed.detach()

    def decode_indices(self, indices):
        return self.embed[indices]
'''
