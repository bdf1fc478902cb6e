"""Data-parallel runs: 2 processes (gloo, CPU) x batch B/2 against 1 process x batch B, same spec and seed
(gmm with vq and fsq, digits and gen-digits with vq), resumption, and the one-line refusals.

One ``torch.multiprocessing.spawn`` of 2 ranks runs every job of this module in order (process start-up and
imports cost more than the tiny runs), and the single-process references run in the test process. Each test
then compares the files the jobs left.

Why not bit-exact: the two ranks each average the loss over B/2 rows and the gradients are then averaged over
ranks, where one process averages over B rows in one reduction; the per-row forward may also round differently
in a smaller batch (another BLAS blocking). Those float32 roundings (~1e-7 relative) grow a little over the
steps; the tolerances below state how much. Counts (utilization, dead codes) and batches are exact.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from vqbench.errors import UserError
from vqbench.runner import RunResult, run
from vqbench.store import ResultStore

TINY_GMM = {"n_train": 512, "n_eval": 250, "n_modes": 8, "hidden": 32, "codebook_size": 32}
GMM_BUDGET = {"steps": 24, "batch_size": 64, "eval_interval": 8}
TINY_DIGITS = {"channels": 8, "codebook_size": 32, "latent_dim": 8, "n_eval": 101, "eval_batch_size": 64}
DIGITS_BUDGET = {"steps": 12, "batch_size": 32, "eval_interval": 6}
TINY_GEN = {**TINY_DIGITS, "n_eval": 48, "prior_dim": 32, "prior_layers": 1, "n_samples": 24, "prior_steps": 6,
            "prior_batch_size": 32}
#: tolerances (relative, with an absolute floor of 1) of 2 ranks against 1 process; measured: <= 6e-8 at step 0,
#: <= 1.3e-6 over all rows (the digits' fd_randcnn/gfd_randcnn and grad_norm), codebooks <= 1.5e-7 apart
EVAL_RTOL_STEP0 = 1e-6  # before training: only the evaluation's own sums differ in rounding
EVAL_RTOL = 1e-5  # after a few dozen steps of float32 training
CODEBOOK_ATOL = 1e-6

UNDECLARED_PLUGIN = '''
import torch
from vqbench.quantizer import Quantizer, QuantizeOutput
from vqbench.registry import register_method


@register_method("test-stateful-undeclared", family="test", description="keeps a step counter, declares nothing")
class Counting(Quantizer):
    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.codes = torch.nn.Parameter(torch.randn(codebook_size, dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("usage", torch.zeros(codebook_size))

    def forward(self, z):
        idx = torch.cdist(z.reshape(-1, self.dim), self.codes).argmin(-1).reshape(z.shape[:-1])
        z_q = self.codes[idx]
        return QuantizeOutput(z + (z_q - z).detach(), idx, (z_q - z.detach()).pow(2).mean())
'''


def _spec(task: str, method: str, **budget: Any):
    from vqbench.spec import make_spec

    params, base = {"gmm": (TINY_GMM, GMM_BUDGET), "digits": (TINY_DIGITS, DIGITS_BUDGET),
                    "gen-digits": (TINY_GEN, {**DIGITS_BUDGET, "steps": 6})}[task]
    return make_spec(task, method, params, {}, seed=3, budget={**base, **budget})


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One job on this rank: a run (its result, or the UserError's text) or the sampler's shards."""
    if job["kind"] == "sampler":
        from vqbench.tasks.base import EpochSampler

        sampler = EpochSampler(100, 8, seed=5)
        return {"local": [sampler.local_indices(s) for s in range(30)], "global": [sampler.indices(s) for s in
                                                                                    range(30)]}
    if job["kind"] == "collectives":
        return _collectives()
    try:
        result = run(job["spec"], job["results"], progress=False, **job.get("kwargs", {}))
    except UserError as exc:
        return {"error": str(exc)}
    return {"result": dataclasses.asdict(result)}


def _collectives() -> dict[str, Any]:
    """The runner's collectives on this rank: gradient averaging with parameters some ranks did not use."""
    from vqbench.distributed import average_step_, gather_rows, local_range, sum_floats, world

    rank = world().rank
    both, one, neither = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    both.grad = torch.full((3,), float(rank + 1))  # 1 and 2 -> 1.5
    if rank == 1:
        one.grad = torch.full((3,), 4.0)  # None (a zero) and 4 -> 2
    logs = average_step_([both, one, neither], {"loss": torch.tensor(float(10 * rank)), "n": 1.0})
    first, stop = local_range(5)
    rows = torch.arange(first, stop, dtype=torch.float32)[:, None].expand(-1, 2)
    return {"grads": [None if p.grad is None else p.grad.tolist() for p in (both, one, neither)],
            "logs": {k: float(v) for k, v in logs.items()}, "range": (first, stop),
            "sum": sum_floats(0.5 + rank, 2.0), "gathered": gather_rows(rows, 2).tolist()}


def _worker(rank: int, world_size: int, init_file: str, jobs: list[dict[str, Any]], out: str) -> None:
    import torch.distributed as dist

    from vqbench.registry import load_plugin

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for i, job in enumerate(jobs):
            if "plugin" in job:
                load_plugin(job["plugin"])
            torch.save(_run_job(job), Path(out) / f"{i}.{rank}.pt")
    finally:
        dist.destroy_process_group()


@dataclasses.dataclass
class Outcome:
    jobs: list[dict[str, Any]]
    outputs: list[list[dict[str, Any]]]  # per job, per rank
    single: dict[str, RunResult]  # the single-process references, by job name
    root: Path

    def job(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        index = next(i for i, j in enumerate(self.jobs) if j["name"] == name)
        return self.jobs[index], self.outputs[index]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> Outcome:
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("ddp")
    plugin = root / "undeclared_plugin.py"
    plugin.write_text(UNDECLARED_PLUGIN)
    specs = {"gmm-vq": _spec("gmm", "vq"), "gmm-fsq": _spec("gmm", "fsq"), "digits-vq": _spec("digits", "vq"),
             "gen-digits-vq": _spec("gen-digits", "vq")}
    jobs: list[dict[str, Any]] = [{"name": "sampler", "kind": "sampler"},
                                  {"name": "collectives", "kind": "collectives"}]
    for name, spec in specs.items():
        jobs.append({"name": name, "kind": "run", "spec": spec, "results": root / "two" / name})
    resumed = root / "two-resumed"
    jobs += [
        {"name": "killed", "kind": "run", "spec": specs["gmm-vq"], "results": resumed,
         "kwargs": {"stop_after_steps": 13}},
        {"name": "resumed", "kind": "run", "spec": specs["gmm-vq"], "results": resumed},
        {"name": "bad-batch", "kind": "run", "spec": _spec("gmm", "vq", batch_size=63), "results": root / "bad"},
        {"name": "undeclared", "kind": "run", "spec": None, "results": root / "bad", "plugin": str(plugin)},
        {"name": "other-world", "kind": "run", "spec": specs["gmm-fsq"], "results": root / "one-killed"},
    ]
    single: dict[str, RunResult] = {}
    torch.set_num_threads(1)
    for name, spec in specs.items():
        single[name] = run(spec, root / "one" / name, progress=False)
    # a checkpoint of 1 process for the world-size check
    run(specs["gmm-fsq"], root / "one-killed", progress=False, stop_after_steps=5)
    from vqbench.registry import METHODS, load_plugin

    load_plugin(str(plugin))  # (registered here too, so that its spec can be made)
    try:
        from vqbench.spec import make_spec

        undeclared = next(j for j in jobs if j["name"] == "undeclared")
        undeclared["spec"] = make_spec("gmm", "test-stateful-undeclared", TINY_GMM, {}, seed=3, budget=GMM_BUDGET)
        out = root / "out"
        out.mkdir()
        mp.spawn(_worker, args=(2, str(root / "init"), jobs, str(out)), nprocs=2, join=True)
    finally:
        METHODS.remove("test-stateful-undeclared")
    outputs = [[torch.load(out / f"{i}.{r}.pt", weights_only=False) for r in range(2)] for i in range(len(jobs))]
    return Outcome(jobs, outputs, single, root)


def _rows(results: Path, spec) -> pd.DataFrame:
    df = ResultStore(results).load_metrics(spec.task)
    return df.set_index(["split", "step", "metric"])["value"].sort_index()


def _assert_close(a: pd.Series, b: pd.Series, rtol: float, what: str) -> None:
    assert list(a.index) == list(b.index), what
    for key, x, y in zip(a.index, a.to_numpy(), b.to_numpy()):
        if math.isnan(x) and math.isnan(y):
            continue
        assert abs(x - y) <= rtol * max(1.0, abs(x), abs(y)), f"{what} {key}: {x} vs {y}"


def test_ranks_take_contiguous_shards_of_the_same_global_batches(outcome):
    _, (r0, r1) = outcome.job("sampler")
    for step in range(30):
        assert torch.equal(r0["global"][step], r1["global"][step])  # one global stream on every rank
        assert torch.equal(torch.cat([r0["local"][step], r1["local"][step]]), r0["global"][step])


def test_gradients_and_logs_are_averaged_and_evaluation_parts_cover_the_split(outcome):
    _, (r0, r1) = outcome.job("collectives")
    for r in (r0, r1):
        assert r["grads"] == [[1.5] * 3, [2.0] * 3, None]  # a parameter no rank used keeps no gradient
        assert r["logs"] == {"loss": 5.0, "n": 1.0}
        assert r["sum"] == (2.0, 4.0)
        assert r["gathered"] == [[float(i)] * 2 for i in range(5)]  # uneven parts, in rank order
    assert (r0["range"], r1["range"]) == ((0, 2), (2, 5))


@pytest.mark.parametrize("name", ["gmm-vq", "gmm-fsq", "digits-vq", "gen-digits-vq"])
def test_two_ranks_at_half_batch_equal_one_process_at_the_whole_batch(outcome, name):
    job, (r0, r1) = outcome.job(name)
    spec, two, one = job["spec"], job["results"], outcome.root / "one" / name
    assert r0 == r1 and r0["result"]["status"] == "ok"  # every rank returns rank 0's result
    rows_two, rows_one = _rows(two, spec), _rows(one, spec)
    for split in ("eval", "validation"):
        # before training both evaluate the same weights: evaluation split over ranks == one process
        _assert_close(rows_two.loc[split, 0], rows_one.loc[split, 0], EVAL_RTOL_STEP0, f"{name} {split} step 0")
        _assert_close(rows_two.loc[split], rows_one.loc[split], EVAL_RTOL, f"{name} {split}")
    for metric in ("utilization", "dead_codes"):
        assert rows_two.loc["eval", 0, metric] == rows_one.loc["eval", 0, metric]
    _assert_close(rows_two.loc["train"], rows_one.loc["train"], EVAL_RTOL, f"{name} train")
    store_two, store_one = ResultStore(two), ResultStore(one)
    runs = store_two.load_runs()
    assert len(runs) == 1 and runs.iloc[0].world_size == 2 and store_one.load_runs().iloc[0].world_size == 1
    models = [torch.load(s.checkpoint_path(spec.run_id), weights_only=False)["models"][0] for s in (store_two,
                                                                                                   store_one)]
    assert models[0].keys() == models[1].keys()
    # the codebook (every quantizer tensor); not every weight: a conv bias right before a per-channel GroupNorm
    # has a gradient of pure rounding noise, which Adam scales up to lr-sized steps in either run alike
    for key in [k for k in models[0] if k.startswith("quantizer.") or spec.task == "gmm"]:
        assert torch.allclose(models[0][key].float(), models[1][key].float(), atol=CODEBOOK_ATOL), key
    assert not [p for p in two.rglob("*.tmp")]


def test_killed_then_resumed_two_rank_run_equals_uninterrupted(outcome):
    _, killed = outcome.job("killed")
    job, resumed = outcome.job("resumed")
    assert [k["result"]["status"] for k in killed] == ["interrupted"] * 2
    assert [r["result"]["status"] for r in resumed] == ["ok"] * 2
    spec = job["spec"]
    pd.testing.assert_series_equal(_rows(job["results"], spec), _rows(outcome.root / "two" / "gmm-vq", spec))


def test_bad_world_size_and_undeclared_state_are_one_line_errors(outcome):
    _, errors = outcome.job("bad-batch")
    for e in errors:
        assert e["error"] == ("budget.batch_size = 63 does not divide over 2 processes: use a batch size that is "
                              "a multiple of 2, or another number of processes")
    _, errors = outcome.job("undeclared")
    for e in errors:
        assert e["error"].startswith("method test-stateful-undeclared keeps state (buffers seen, usage) but "
                                     "declares no distributed_sync:") and "\n" not in e["error"]
    _, errors = outcome.job("other-world")
    for e in errors:
        assert "checkpointed by 1 process(es) and cannot resume on 2" in e["error"] and "\n" not in e["error"]
