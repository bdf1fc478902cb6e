"""`vqbench perf` and the GPU check: rows with the schema, ratios, refused/failed cells as status rows.

Tiny sizes only; no assertion is about how fast anything is.
"""

from __future__ import annotations

import argparse
import math
import platform
import types

import pandas as pd
import pytest
import torch

from vqbench.commands import perf
from vqbench.commands.perf import VQP, Cell, PerfConfig, timing
from vqbench.errors import UserError
from vqbench.store import PERF_SCHEMA, load_perf

GIB = 2**30


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("perf")
    config = PerfConfig(results=root, methods=["vq", "fsq", "no-such-method"], sizes=[64], dims=[4], n=32, repeats=1,
                        device="cpu", isolate=False, min_time_s=0.0)
    perf_id = perf.run_perf(config, log=None)
    rows = load_perf(root)
    assert set(rows["perf_id"]) == {perf_id}
    return rows


def _row(rows: pd.DataFrame, implementation: str, method: str, measure: str = "forward_backward") -> pd.Series:
    sel = rows[(rows["implementation"] == implementation) & (rows["method"] == method) & (rows["measure"] == measure)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_rows_have_the_store_schema(table):
    assert list(table.columns) == PERF_SCHEMA.names
    assert set(table["status"]) <= {"ok", "out_of_memory", "unsupported", "error"}
    # 2 search cells + 3 methods x 2 implementations
    assert len(table) == 8
    assert table["device"].str.startswith("cpu").all()
    assert table["versions"].str.contains('"torch"').all()


def test_measured_cells_are_ok_with_time_and_memory(table):
    for implementation in ("vqbench", VQP):
        for method in ("vq", "fsq"):
            row = _row(table, implementation, method)
            assert row["status"] == "ok", row["note"]
            assert row["time_ms"] > 0
            assert math.isnan(row["peak_memory_mb"])  # in-process on CPU: not measurable exactly, left empty
            assert row["codebook_size"] == 64 and row["dim"] == 4 and row["n"] == 32
    search = _row(table, "vqbench", "nearest_code", "nearest_code_search")
    mm = _row(table, "torch.mm", "matmul", "matmul")
    for row in (search, mm):
        assert row["status"] == "ok"
        # gflops is the 2 N K d flop count over the measured time
        assert row["gflops"] == pytest.approx(2 * 32 * 64 * 4 / (row["time_ms"] / 1e3) / 1e9, rel=1e-9)


def test_compared_pairs_are_re_timed_interleaved_and_keep_the_time_alone(table):
    for method in ("vq", "fsq"):
        for implementation in ("vqbench", VQP):
            note = _row(table, implementation, method)["note"]
            assert "interleaved with the other implementation" in note and "alone:" in note
    assert "interleaved" not in _row(table, "vqbench", "nearest_code", "nearest_code_search")["note"]


def test_time_interleaved_alternates_the_calls(monkeypatch):
    calls = []

    def fake_step(cell, device):
        return (lambda: calls.append(cell.implementation)), cell.codebook_size

    monkeypatch.setattr(timing, "training_step", fake_step)
    cells = [Cell("vqbench", "vq", 8, 4, 16, "forward_backward", repeats=3, warmup=2, min_time_s=0.0),
             Cell(VQP, "vq", 8, 4, 16, "forward_backward", repeats=3, warmup=1, min_time_s=0.0)]
    times = perf.time_interleaved(cells, torch.device("cpu"))
    assert len(times) == 2 and all(t >= 0 for t in times)
    assert calls == ["vqbench", "vqbench", VQP] + ["vqbench", VQP] * 3  # warm-ups, then one call each per round


def test_unknown_method_is_an_unsupported_row(table):
    ours = _row(table, "vqbench", "no-such-method")
    theirs = _row(table, VQP, "no-such-method")
    assert ours["status"] == theirs["status"] == "unsupported"
    assert "not registered" in ours["note"]
    assert "no equivalent" in theirs["note"]
    assert math.isnan(ours["time_ms"]) or ours["time_ms"] is None


def test_ratios_are_computed_from_the_rows(table):
    ours, theirs = _row(table, "vqbench", "vq"), _row(table, VQP, "vq")
    ratios = perf.ratio_table(table)
    r = ratios[(ratios["method"] == "vq")].iloc[0]
    assert r["time_ratio"] == pytest.approx(ours["time_ms"] / theirs["time_ms"])
    assert f"time x{ours['time_ms'] / theirs['time_ms']:.2f}" in ours["note"]
    search = perf.search_table(table).iloc[0]
    assert search["fraction"] == pytest.approx(search["gflops"] / search["gflops_mm"])
    assert "of torch.mm's rate" in _row(table, "vqbench", "nearest_code", "nearest_code_search")["note"]
    assert "vq" in perf.summary_text(table)


def test_ratio_table_on_hand_made_rows():
    base = {"device": "d", "codebook_size": 8, "dim": 2, "n": 4, "status": "ok"}
    rows = pd.DataFrame([
        {**base, "implementation": "vqbench", "method": "vq", "measure": "forward_backward", "time_ms": 2.0,
         "peak_memory_mb": 10.0},
        {**base, "implementation": VQP, "method": "vq", "measure": "forward_backward", "time_ms": 8.0,
         "peak_memory_mb": 40.0},
        {**base, "implementation": "vqbench", "method": "simvq", "measure": "forward_backward", "time_ms": 3.0,
         "peak_memory_mb": 5.0},
    ])
    t = perf.ratio_table(rows).set_index("method")
    assert t.loc["vq", "time_ratio"] == 0.25 and t.loc["vq", "memory_ratio"] == 0.25
    assert math.isnan(t.loc["simvq", "time_ratio"])  # no counterpart: no ratio
    # every counterpart refused (no numbers at all, as in rows built from dicts): NaN ratios, no failure
    refused = pd.DataFrame([
        {**base, "implementation": "vqbench", "method": "vq", "measure": "forward_backward", "time_ms": 2.0,
         "peak_memory_mb": 10.0},
        {**base, "implementation": VQP, "method": "vq", "measure": "forward_backward", "time_ms": None,
         "peak_memory_mb": None, "status": "out_of_memory"},
    ]).astype({"time_ms": object, "peak_memory_mb": object})
    assert math.isnan(perf.ratio_table(refused)["time_ratio"].iloc[0])


def test_cell_over_the_memory_cap_is_refused_without_trying(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a refused cell must not be run")

    monkeypatch.setattr(timing, "run_cell", boom)

    cell = Cell(VQP, "vq", 1048576, 256, 16384, "forward_backward")
    result = perf.measure_cell(cell, torch.device("cpu"), 20 * GIB)
    assert result["status"] == "out_of_memory"
    assert "predicted" in result["note"] and "20.0 GiB cap" in result["note"]


def test_predictions_bounded_search_vs_one_hot():
    n, k, d = 16384, 1048576, 256
    for method in ("vq", "vq-ema", "vq-rotation", "simvq", "lfq", "bsq", "fsq"):
        assert perf.predict_bytes(Cell("vqbench", method, k, d, n, "forward_backward")) < 24 * GIB, method
        if method != "fsq":  # every distance-matrix implementation needs at least one N x K float matrix
            assert perf.predict_bytes(Cell(VQP, method, k, d, n, "forward_backward")) >= 4 * n * k, method
    assert perf.predict_bytes(Cell("torch.mm", "matmul", k, d, n, "matmul")) < 4 * GIB


@pytest.mark.parametrize("message, status", [
    ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes", "out_of_memory"),
    ("some other failure", "error"),
])
def test_failures_become_status_rows(monkeypatch, message, status):

    def fail(cell, device):
        raise RuntimeError(message)

    monkeypatch.setattr(timing, "run_cell", fail)
    result = perf.measure_cell(Cell("vqbench", "vq", 16, 4, 8, "forward_backward"), torch.device("cpu"), GIB)
    assert result["status"] == status
    assert message[:40] in result["note"]


def test_isolated_worker_sees_torch_allocations_and_times_out():
    n, k = 512, 4096
    cell = Cell(VQP, "vq", k, 8, n, "forward_backward", repeats=1, min_time_s=0.0)
    result = perf.measure_cell_isolated(cell, "cpu", GIB, timeout_s=300)
    assert result["status"] == "ok", result
    assert result["time_ms"] > 0
    # the one-hot implementation holds at least one N x K float32 matrix: the peak must show it
    assert result["peak_memory_mb"] >= 4 * n * k / 2**20
    slow = perf.measure_cell_isolated(cell, "cpu", GIB, timeout_s=0.05)
    assert slow["status"] == "error" and "timed out" in slow["note"]


def test_fsq_levels_make_exactly_k_codes():
    for bits in range(4, 21):
        levels = perf.fsq_levels(2**bits)
        assert math.prod(levels) == 2**bits and set(levels) <= {4, 8}
    assert perf.fsq_levels(1000) is None
    params, k = perf.cell_params("fsq", 1000)
    assert params == {} and k <= 1000
    assert perf.cell_params("lfq", 1000) == ({}, 512)


def test_cli_arguments_parse():
    parser = argparse.ArgumentParser()
    perf.add_perf_arguments(parser)
    args = parser.parse_args(["--sizes", "1024,65536", "--dims", "8", "--methods", "vq,simvq", "--no-compare"])
    assert args.sizes == [1024, 65536] and args.dims == [8] and args.methods == ["vq", "simvq"]
    assert args.compare is False and args.search is True and args.isolate is None
    defaults = parser.parse_args([])
    assert defaults.sizes == list(perf.SIZES) and defaults.n == perf.N_VECTORS


def test_gpu_check_runs_on_cpu_at_tiny_sizes(tmp_path):
    from vqbench.commands import gpu_check

    assert gpu_check.skipped(Cell("vqbench", "vq-kmeans", 262144, 8, 131072, "forward_backward"))
    assert gpu_check.skipped(Cell("vqbench", "vq-kmeans", 1048576, 8, 16384, "forward_backward")) is None  # N steps
    assert gpu_check.skipped(Cell(VQP, "vq-kmeans", 262144, 8, 131072, "forward_backward")) is None
    code = gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--sizes", "64", "--dims", "4", "--n", "32",
                           "--repeats", "1", "--methods", "vq,no-such-method", "--tasks", "gmm,no-such-task",
                           "--image-methods", "vq", "--image-steps", "2,24"])  # 2 and 4 steps: within the timing noise
    assert code == 0
    rows = load_perf(tmp_path)
    assert list(rows.columns) == PERF_SCHEMA.names
    assert rows["perf_id"].nunique() == 1
    train = rows[rows["measure"] == "train_step"].set_index("note")
    assert len(train) == 2
    ok = train[train["status"] == "ok"].iloc[0]
    assert ok["time_ms"] > 0 and ok["n"] == 1024  # gmm's paper batch size
    assert (train["status"] == "unsupported").sum() == 1  # the unknown task, with the reason
    table = rows[rows["measure"] != "train_step"]
    assert set(table["status"]) == {"ok", "unsupported"}
    assert (tmp_path / "summary.txt").read_text().startswith("python -m vqbench.commands.gpu_check --out")


def test_timed_repeats_short_calls_until_min_time_and_long_calls_only_repeats_times(monkeypatch):
    """On a fake clock each call advances by a set time (the real one makes the counts depend on the load)."""
    clock = [0.0]
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = []

    def taking(seconds: float):
        def call() -> None:
            calls.append(1)
            clock[0] += seconds
        return call

    first, times = timing.timed(taking(0.001), torch.device("cpu"), repeats=3, warmup=2, min_time_s=0.05)
    assert first == pytest.approx([0.001, 0.001]) and 50 <= len(times) <= 51 and sum(times) >= 0.05
    assert len(calls) == len(first) + len(times)
    _, times = timing.timed(taking(0.01), torch.device("cpu"), repeats=3, warmup=0, min_time_s=0.0)
    assert len(times) == 3
    _, times = timing.timed(taking(0.5), torch.device("cpu"), repeats=3, warmup=0, min_time_s=0.05)
    assert len(times) == 3  # long calls: only the repeats
    _, times = timing.timed(taking(0.0), torch.device("cpu"), repeats=1, warmup=0, min_time_s=1e9)
    assert len(times) == perf.MAX_TIMED_CALLS


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_applies_on_glibc():
    assert perf.keep_freed_memory()


def test_vqp_adapters_build_the_documented_equivalents():
    pytest.importorskip("vector_quantize_pytorch")
    assert set(perf.VQP_ADAPTERS) == set(perf.MAIN_METHODS)
    expected = {  # method -> (rotation_trick, learnable_codebook, ema_update, k-means init pending)
        "vq": (False, True, False, False), "vq-ema": (False, False, True, False),
        "vq-kmeans": (False, True, False, True), "vq-rotation": (True, True, False, False),
    }
    z = torch.randn(1, 16, 4)
    for method in perf.MAIN_METHODS:
        module, call, k = perf.build_vqp(method, 4, 64)
        assert k == 64 and type(module).__name__ in perf.vqp_equivalent(method), method
        if method in expected:
            book = module._codebook
            got = (module.rotation_trick, module.learnable_codebook, book.ema_update, not bool(book.initted))
            assert got == expected[method], method
        z_q, _ = call(z)
        assert z_q.shape == z.shape, method
    assert perf.build_vqp("bsq", 4, 64)[0].spherical and not perf.build_vqp("lfq", 4, 64)[0].spherical
    with pytest.raises(perf.Unsupported, match="power-of-two"):
        perf.build_vqp("lfq", 4, 100)
    assert perf.vqp_equivalent("no-such-method") is None


@pytest.mark.parametrize("field, value", [("n", 0), ("repeats", 0), ("warmup", -1), ("sizes", [64, 0]), ("dims", [])])
def test_perf_config_refuses_bad_sizes(field, value):
    with pytest.raises(UserError, match="must be positive"):
        PerfConfig(**{field: value})


def test_perf_command_bad_size_is_one_line(tmp_path, capsys):
    assert perf.main(["--results", str(tmp_path), "--n", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --n, --repeats") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "perf").exists()


def test_plan_cells_follow_the_config():
    config = PerfConfig(methods=["vq", "fsq"], sizes=[64, 16], dims=[4], n=8, repeats=2, warmup=0, min_time_s=0.5)
    cells = perf.plan_cells(config)
    assert [c.codebook_size for c in cells] == [64] * 6 + [16] * 6  # in the given order, search cells first
    assert [(c.implementation, c.measure) for c in cells[:2]] == [("vqbench", "nearest_code_search"),
                                                                    ("torch.mm", "matmul")]
    assert {(c.n, c.repeats, c.warmup, c.min_time_s) for c in cells} == {(8, 2, 0, 0.5)}
    lean = PerfConfig(methods=["vq"], sizes=[64], dims=[4], compare=False, search=False)
    assert [(c.implementation, c.method) for c in perf.plan_cells(lean)] == [("vqbench", "vq")]


# -- vqbench perf --overhead: the runner against a bare loop of the same model and data -----------------------------
TINY_GMM = ["--set", "task.n_train=256", "--set", "task.n_eval=64", "--set", "budget.batch_size=32",
            "--set", "budget.eval_interval=4"]


def test_overhead_mode_prints_a_ratio_per_task_and_method(capsys):
    import vqbench.runner

    build_stages = vqbench.runner._build_stages
    code = perf.main(["--overhead", "--task", "gmm", "--method", "vq", "--steps", "6", "--repeats", "1",
                      "--warmup", "0", "--device", "cpu", "--threads", "1", *TINY_GMM])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("runner overhead on cpu (1 torch threads")
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("task "))
    names = [n.strip() for n in lines[at].split("  ") if n.strip()]  # (the names are separated by 2+ spaces)
    cells = dict(zip(names, lines[at + 1].split()))
    assert len(cells) == len(names) == 12
    assert cells["task"] == "gmm" and cells["method"] == "vq" and cells["steps"] == "6"
    assert float(cells["bare ms/step"]) > 0 and float(cells["runner ms/step"]) > 0
    bare, runner = float(cells["bare ms/step"]), float(cells["runner ms/step"])
    # The printed overhead is computed before rounding: it must lie within what the rounded (3-decimal) times
    # allow, widened by its own 1-decimal rounding.
    low, high = 100 * ((runner - 5e-4) / (bare + 5e-4) - 1), 100 * ((runner + 5e-4) / (bare - 5e-4) - 1)
    assert low - 0.05 <= float(cells["overhead"].rstrip("%")) <= high + 0.05
    assert cells["same weights"] == "yes"  # the bare loop trained exactly what the runner trained
    assert "target: overhead <= 10%" in out
    assert vqbench.runner._build_stages is build_stages  # the runner is left as it was


def test_overhead_rows_separate_training_from_evaluation(tmp_path):
    from vqbench.commands.perf.overhead import OverheadConfig, measure_overhead

    config = OverheadConfig(tasks=["gmm"], methods=["vq"], steps=4, task_params={"n_train": 256, "n_eval": 64},
                            budget_overrides={"batch_size": 32, "eval_interval": 2})
    row = measure_overhead(config.spec("gmm", "vq"), torch.device("cpu"), repeats=2, warmup=0, scratch=tmp_path)
    assert row.steps == 4 and not row.error
    assert len(row.pair_overheads) == 2 and row.overhead == pytest.approx(row.runner_ms / row.bare_ms - 1)
    assert len(row.bare_runs_ms) == len(row.runner_runs_ms) == 2
    assert row.overhead_of_minima == pytest.approx(min(row.runner_runs_ms) / min(row.bare_runs_ms) - 1)
    assert row.eval_s > 0  # 3 evaluations, each with a validation pass, measured apart from training
    assert row.loop_ms > 0 and row.loop_ms <= row.runner_ms + 1e-9  # the runner's own loop is part of its run
    assert row.outside_s == pytest.approx(1e-3 * (row.runner_ms - row.loop_ms) * row.steps, abs=1e-3)


def test_overhead_failures_are_rows_or_one_line_errors(tmp_path, capsys, monkeypatch):
    from vqbench.commands.perf import overhead

    assert perf.main(["--overhead", "--task", "gmm", "--method", "no-such-method", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-such-method" in err and len(err.strip().splitlines()) == 1
    assert perf.main(["--overhead", "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(overhead, "measure_overhead", broken)
    assert perf.main(["--overhead", "--task", "gmm", "--method", "vq,fsq", "--steps", "2", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert out.count("error: RuntimeError: boom") == 4  # each pair as it came, then in the table
