"""Data-parallel runs of every method (issue 17): 2 ranks x B/2 rows train exactly like 1 process x B rows.

Each configuration is a linear encoder, the quantizer and a linear decoder, trained ``STEPS`` SGD steps on a fixed
random problem with a global batch of ``B`` sequences of ``T`` tokens (64 rows). One process with the whole batch
(this pytest process, no process group) is the reference; one spawn of 2 CPU processes (gloo, ``file://``) trains
every configuration with ``B/2`` sequences per rank, gradients averaged over ranks by ``all_reduce / world size``
as the runner does. After construction every rank reseeds its global generator differently (rank 0 as the
reference), so a random choice not drawn from the shared stream shows up as a mismatch.

Per configuration: the two ranks' states and codebooks are bitwise identical; the ranks' indices, concatenated in
rank order, equal the reference's at every step; the rank-averaged loss of every step and the final state (every
parameter and buffer of the quantizer) and ``codebook()`` are within ``FLOAT_ROUNDING + distributed_tolerance``
of the reference, relative to ``1 + |reference|`` (float rounding: sums over ranks in another order than one
process's); an eval-mode forward makes no collective. Four configurations have a sync removed on purpose (the EMA
all-reduce of vq-ema, the differentiable sum of LFQ's batch entropy, gumbel's shared random stream, vq-kmeans'
gathering of the batch) and must mismatch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import vqbench
from vqbench.quantizer import Quantizer, uses_undeclared_state

STEPS, B, T, IN, DIM, K = 30, 32, 2, 12, 8, 16
WORLD = 2
#: at 0.05 the sharp entropy terms of lfq (inv_temperature 100) and ibq (T 0.01) amplify float rounding ~3x per step
#: (any change of reduction order does: see their module docstrings); at 0.01 every run stays within 1.2e-5
LR = 0.01
#: float rounding after STEPS steps, relative to 1 + |reference| (measured: lfq 1.1e-5, every other run <= 4e-7)
FLOAT_ROUNDING = 1e-4
#: chunk budget that cuts the 64 global rows of a K = 16 soft assignment into chunks of 24, 24, 16 rows, so that
#: a rank holds a chunk's part (a window) and skips a chunk of the other rank's rows
SMALL_CHUNK = 24 * K



def _identity(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


def _no_stream(*args: Any, **kwargs: Any) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


#: a sync removed on purpose: (module, name, what replaces it)
Removed = tuple[str, str, Callable[..., Any]]
#: label -> (registered name, parameters, removed sync or None); parameters ``_k``: codebook size (default ``K``),
#: ``_chunk``: the soft-assignment chunk budget
Config = tuple[str, dict[str, Any], Removed | None]
CONFIGS: dict[str, Config] = {
    **{name: (name, {}, None) for name in vqbench.list_methods()},
    "vq[init=data]": ("vq", {"init": "data"}, None),
    "vq[ema+kmeans+restart]": ("vq", {"ema": True, "kmeans_init": True, "restart": True}, None),
    "vq-kmeans[2 batches]": ("vq-kmeans", {"kmeans_batches": 2}, None),
    "vq-restart[K=128]": ("vq-restart", {"_k": 128}, None),  # more dead codes than rows: a random subset restarts
    "cvq[random]": ("cvq", {"anchor": "random"}, None),
    "cvq[random,K=128]": ("cvq", {"anchor": "random", "_k": 128}, None),  # the pool fills, then random slots
    "cvq[probrandom,l2]": ("cvq", {"anchor": "probrandom", "distance": "l2"}, None),
    "vq-affine[running,alternating]": ("vq-affine", {"affine": "running", "alternating": True}, None),
    "vq-lc[first-batch k-means]": ("vq-lc", {"bank_warmup_steps": 0}, None),
    "gumbel[chunked]": ("gumbel", {"_chunk": SMALL_CHUNK}, None),
    "sqvae[chunked]": ("sqvae", {"_chunk": SMALL_CHUNK, "hard": True}, None),
}
SABOTAGED: dict[str, Config] = {
    "vq-ema[no all-reduce]": ("vq-ema", {}, ("vqbench.methods.vq", "all_reduce_sum_", _identity)),
    "lfq[no differentiable sum]": ("lfq", {}, ("vqbench.methods.lfq", "differentiable_sum", _identity)),
    "gumbel[no shared stream]": ("gumbel", {}, ("vqbench.methods.gumbel", "shared_random_stream", _no_stream)),
    "vq-kmeans[no gather]": ("vq-kmeans", {}, ("vqbench.methods.vq", "all_gather_rows", _identity)),
}


class _CollectiveInEval(RuntimeError):
    pass


@contextlib.contextmanager
def _no_collectives() -> Iterator[None]:
    """Any collective inside raises (eval-mode forwards must make none)."""
    names = ("all_reduce", "all_gather", "broadcast")
    saved = {name: getattr(dist, name) for name in names}

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise _CollectiveInEval("a collective in an eval-mode forward")

    for name in names:
        setattr(dist, name, refuse)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)


@contextlib.contextmanager
def _patched(config: Config) -> Iterator[dict[str, Any]]:
    """The configuration's small chunk budget and removed sync, undone on leaving; yields its parameters."""
    import importlib

    import vqbench.methods.ops as ops

    _, params, removed = config
    params = dict(params)
    chunk = params.pop("_chunk", None)
    params.setdefault("codebook_size", params.pop("_k", K))
    saved_chunk = ops.SEARCH_CHUNK_ELEMENTS
    target = importlib.import_module(removed[0]) if removed else None
    saved_fn = getattr(target, removed[1]) if removed else None
    if chunk:
        ops.SEARCH_CHUNK_ELEMENTS = chunk
    if removed:
        setattr(target, removed[1], removed[2])
    try:
        yield params
    finally:
        ops.SEARCH_CHUNK_ELEMENTS = saved_chunk
        if removed:
            setattr(target, removed[1], saved_fn)


def _train(config: Config, rank: int, size: int) -> dict[str, Any]:
    """Train one configuration on this rank's shard; the record the comparisons read."""
    name = config[0]
    with _patched(config) as params:
        torch.manual_seed(0)
        q = vqbench.create_method(name, dim=DIM, **params)
        enc, dec = torch.nn.Linear(IN, DIM), torch.nn.Linear(DIM, IN)
        torch.manual_seed(1000 + rank)  # per-rank streams from here on; rank 0's is the reference's
        parameters = [*enc.parameters(), *dec.parameters(), *q.parameters()]
        opt = torch.optim.SGD(parameters, lr=LR)
        data = torch.randn(STEPS, B, T, IN, generator=torch.Generator().manual_seed(1))
        per = B // size
        losses, indices = [], []
        q.train()
        for step in range(STEPS):
            q.on_step(step, STEPS)
            x = data[step, rank * per:(rank + 1) * per]
            out = q(enc(x))
            rec = F.mse_loss(dec(out.z_q), x)
            loss = rec + out.loss
            opt.zero_grad()
            loss.backward()
            if size > 1:
                for p in parameters:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= size
                dist.all_reduce(loss := loss.detach().clone())
                loss /= size
            opt.step()
            q.observe_reconstruction(rec.detach(), IN)
            losses.append(float(loss.detach()))
            indices.append(out.indices.clone())
        q.eval()
        eval_error = ""
        with torch.no_grad(), _no_collectives():
            try:
                q(enc(data[0, rank * per:(rank + 1) * per]))
            except _CollectiveInEval as error:
                eval_error = str(error)
        with torch.no_grad():
            codebook = q.codebook()
        return {"losses": losses, "indices": indices, "eval_error": eval_error,
                "state": {k: v.detach().clone() for k, v in q.state_dict().items()},
                "codebook": codebook.detach().clone() if codebook is not None else None,
                "tolerance": float(q.distributed_tolerance)}


def _worker(rank: int, size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        records = {label: _train(config, rank, size) for label, config in {**CONFIGS, **SABOTAGED}.items()}
        torch.save(records, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{"reference": one process's records, "ranks": [rank 0's, rank 1's]} for every configuration."""
    out = tmp_path_factory.mktemp("distributed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.spawn(_worker, args=(WORLD, str(out / "init"), str(out)), nprocs=WORLD, join=True)
        reference = {label: _train(config, 0, 1) for label, config in {**CONFIGS, **SABOTAGED}.items()}
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    return {"reference": reference, "ranks": ranks}


def _largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / (1 + |b|)`` (inf for different shapes)."""
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    a, b = a.double(), b.double()
    return float(((a - b).abs() / (1 + b.abs())).max())


def mismatches(reference: dict[str, Any], ranks: list[dict[str, Any]]) -> list[str]:
    """What differs between one process's record and the ranks' (empty: the run is the same)."""
    problems = []
    first = ranks[0]
    for other in ranks[1:]:
        for key, value in first["state"].items():
            if not torch.equal(value, other["state"][key]):
                problems.append(f"ranks differ in {key}")
        if first["codebook"] is not None and not torch.equal(first["codebook"], other["codebook"]):
            problems.append("ranks differ in codebook()")
    tol = FLOAT_ROUNDING + reference["tolerance"]
    for step, expected in enumerate(reference["indices"]):
        got = torch.cat([r["indices"][step] for r in ranks])
        if not torch.equal(got, expected):
            problems.append(f"indices differ at step {step} ({int((got != expected).sum())} of {expected.numel()})")
            break
    losses = _largest_difference(torch.tensor(first["losses"]), torch.tensor(reference["losses"]))
    if losses > tol:
        problems.append(f"losses differ by {losses:.2e} > {tol:.0e}")
    for key, value in reference["state"].items():
        difference = _largest_difference(first["state"][key], value)
        if difference > tol:
            problems.append(f"{key} differs by {difference:.2e} > {tol:.0e}")
    if reference["codebook"] is not None:
        difference = _largest_difference(first["codebook"], reference["codebook"])
        if difference > tol:
            problems.append(f"codebook() differs by {difference:.2e} > {tol:.0e}")
    problems += [f"rank {i}: {r['eval_error']}" for i, r in enumerate(ranks) if r["eval_error"]]
    return problems


@pytest.mark.parametrize("label", list(CONFIGS))
def test_two_ranks_equal_one_process(runs: dict[str, Any], label: str) -> None:
    problems = mismatches(runs["reference"][label], [r[label] for r in runs["ranks"]])
    assert not problems, f"{label}: " + "; ".join(problems[:6])


@pytest.mark.parametrize("label", list(SABOTAGED))
def test_removed_sync_is_caught(runs: dict[str, Any], label: str) -> None:
    assert mismatches(runs["reference"][label], [r[label] for r in runs["ranks"]]), \
        f"{label}: removing the sync went unnoticed"


def test_every_method_declares_its_sync() -> None:
    for name in vqbench.list_methods():
        q = vqbench.create_method(name, dim=DIM, codebook_size=K)
        assert isinstance(type(q).distributed_sync, tuple), f"{name}: the class declares no distributed_sync"
        assert isinstance(q.distributed_sync, tuple) and all(isinstance(s, str) for s in q.distributed_sync), name
        assert uses_undeclared_state(q) == [], name
        assert q.distributed_tolerance >= 0, name


class _Counter(Quantizer):
    """A plugin that keeps state in buffers (one in a submodule) and declares nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.dim, self.codebook_size = 4, 8
        self.register_buffer("seen", torch.zeros(()))
        self.register_buffer("constant", torch.ones(4), persistent=False)
        self.norm = torch.nn.BatchNorm1d(4)


def test_uses_undeclared_state() -> None:
    plugin = _Counter()
    assert uses_undeclared_state(plugin) == ["seen", "norm.running_mean", "norm.running_var",
                                             "norm.num_batches_tracked"]
    plugin.distributed_sync = ("seen: summed over ranks",)
    assert uses_undeclared_state(plugin) == []
    stateless = Quantizer()
    stateless.register_buffer("constant", torch.ones(2), persistent=False)
    assert uses_undeclared_state(stateless) == []
