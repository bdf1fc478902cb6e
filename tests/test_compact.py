"""`vqbench results compact`: one Parquet file per table, lossless, idempotent, safe to interrupt; mixed layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from fixtures.synthetic_store import generate

import vqbench.compact as compact_module
from vqbench.commands.cli import main
from vqbench.compact import compact
from vqbench.errors import UserError
from vqbench.leaderboard.load import read_run_arrays, read_tables, store_files
from vqbench.store import COMPLETE_STATUSES, SCHEMA_VERSION, TABLES, ResultStore, load_perf

N_RUNS = 40


def tables(root: Path) -> dict[str, pd.DataFrame]:
    """Every table of the store as each reader sees it (ResultStore and the site's fast loader), sorted."""
    store = ResultStore(root)
    frames = {"runs": store.load_runs(), "metrics": store.load_metrics(), "arrays": store.load_arrays(),
              "perf": load_perf(root)}
    for kind in TABLES:
        frames[f"fast-{kind}"] = read_tables(store_files(store, kind), kind)
    frames["fast-arrays-last"] = read_tables(store_files(store, "arrays"), "arrays", last_only=True)
    sort = {"runs": ["run_id"], "perf": ["perf_id", "implementation", "method", "measure", "n"],
            "metrics": ["run_id", "split", "metric", "step"], "arrays": ["run_id", "split", "name", "step"]}
    for name, frame in frames.items():
        by = sort[name.removeprefix("fast-").removesuffix("-last")]
        frames[name] = frame.sort_values(by, kind="stable").reset_index(drop=True)
    return frames


def assert_same(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame]) -> None:
    assert before.keys() == after.keys()
    for name in before:
        assert len(before[name]), name  # the store has rows in every table
        pd.testing.assert_frame_equal(before[name], after[name], check_exact=True, obj=name)


def per_run_files(root: Path) -> list[Path]:
    return sorted(p for kind in TABLES for p in (root / kind).rglob("*/*.parquet") if p.parent.name != kind) + \
        sorted(p for kind in ("runs", "perf") for p in (root / kind).glob("*.parquet"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compact") / "results"
    generate(root, N_RUNS, seed=5, workers=1)
    return root


@pytest.fixture
def store_copy(synthetic, tmp_path) -> Path:
    root = tmp_path / "results"
    shutil.copytree(synthetic, root)
    return root


def test_compaction_is_lossless_and_writes_one_file_per_table(store_copy):
    before = tables(store_copy)
    summary = compact(store_copy)
    assert per_run_files(store_copy) == []
    tasks = sorted(set(before["runs"]["task"]))
    expected = {store_copy / "runs.parquet", store_copy / "perf.parquet"}
    expected |= {store_copy / kind / f"task={t}.parquet" for kind in ("metrics", "arrays") for t in tasks}
    assert set(summary.written) == expected
    assert summary.after.files == len(expected) < summary.before.files
    assert summary.removed == summary.before.files
    for path in expected:
        meta = pq.read_schema(path).metadata
        assert meta[b"vqbench_schema_version"] == str(SCHEMA_VERSION).encode()
    assert_same(before, tables(store_copy))
    runs = pq.read_table(store_copy / "runs.parquet").column("run_id").to_pylist()
    assert runs == sorted(runs)


def test_compaction_is_idempotent(store_copy):
    compact(store_copy)
    once = tables(store_copy)
    stamps = {p: p.stat().st_mtime_ns for p in store_copy.rglob("*.parquet")}
    summary = compact(store_copy)
    assert summary.written == [] and summary.removed == 0
    assert {p: p.stat().st_mtime_ns for p in store_copy.rglob("*.parquet")} == stamps
    assert_same(once, tables(store_copy))


def test_failure_between_write_and_delete_loses_nothing(store_copy, monkeypatch):
    before = tables(store_copy)
    files = per_run_files(store_copy)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compact_module, "_remove_sources", crash)
    with pytest.raises(KeyboardInterrupt):
        compact(store_copy)
    assert per_run_files(store_copy) == files and (store_copy / "runs.parquet").is_file()
    assert_same(before, tables(store_copy))  # both layouts hold every run: each read once
    monkeypatch.undo()
    compact(store_copy)  # rerunning finishes the job
    assert per_run_files(store_copy) == []
    assert_same(before, tables(store_copy))


def test_failure_while_writing_loses_nothing(store_copy, monkeypatch):
    before = tables(store_copy)
    real = compact_module._write
    written = []

    def write_one_then_fail(part, kind):
        if written:
            raise OSError("disk full")
        real(part, kind)
        written.append(part.path)

    monkeypatch.setattr(compact_module, "_write", write_one_then_fail)
    with pytest.raises(OSError, match="disk full"):
        compact(store_copy)
    assert len(written) == 1 and not list(store_copy.rglob("*.tmp"))
    assert_same(before, tables(store_copy))


def _rerun(store: ResultStore, row: dict, task: str) -> None:
    """What `vqbench run --force` leaves: new per-run files for a run already compacted."""
    store.write_metrics(task, row["run_id"], [("eval", 0, "mse", 9.0), ("eval", 5, "mse", 7.0)])
    store.write_arrays(task, row["run_id"], [("eval", 5, "usage_histogram", [1.0, 2.0])])
    store.write_run({**row, "status": "failed", "error": "rerun"})


def test_mixed_layout_per_run_files_replace_compacted_rows(store_copy):
    compact(store_copy)
    store = ResultStore(store_copy)
    runs = store.load_runs()
    rows = pq.read_table(store_copy / "runs.parquet").to_pylist()
    old = rows[0]
    task = old["task"]
    _rerun(store, old, task)
    new_row = {**rows[1], "run_id": "zz-new-run"}
    store.write_run(new_row)
    store.write_metrics(new_row["task"], "zz-new-run", [("eval", 3, "mse", 1.5)])

    for loaded in (store.load_runs(), read_tables(store_files(store, "runs"), "runs")):
        assert len(loaded) == len(runs) + 1 and loaded["run_id"].is_unique
        assert loaded.set_index("run_id").loc[old["run_id"], "status"] == "failed"
    for metrics in (store.load_metrics(), read_tables(store_files(store, "metrics"), "metrics")):
        mine = metrics[metrics["run_id"] == old["run_id"]]
        assert sorted(mine["value"]) == [7.0, 9.0]  # the compacted rows of that run are gone
        assert list(metrics.loc[metrics["run_id"] == "zz-new-run", "value"]) == [1.5]
    some = store.load_metrics(task, run_ids=[old["run_id"], runs.iloc[2]["run_id"]])
    assert set(some["run_id"]) <= {old["run_id"], runs.iloc[2]["run_id"]} and (some["value"] == 9.0).any()
    arrays = store.load_arrays(task, run_ids=[old["run_id"]])
    assert [list(v) for v in arrays["values"]] == [[1.0, 2.0]]
    other = runs[runs["task"] == task].iloc[-1]["run_id"]
    site_arrays = read_run_arrays(store_copy, task, [old["run_id"], other])
    assert set(site_arrays["run_id"]) == {old["run_id"], other} and len(site_arrays)
    assert store.run_status(old["run_id"]) == "failed" and not store.is_complete(old["run_id"])

    mixed = tables(store_copy)
    summary = compact(store_copy)  # compacting again takes the new per-run files in
    assert summary.removed == 5 and per_run_files(store_copy) == []
    assert_same(mixed, tables(store_copy))


def test_is_complete_and_run_records_on_compacted_runs(store_copy):
    runs = ResultStore(store_copy).load_runs()
    compact(store_copy)
    store = ResultStore(store_copy)
    assert not store.run_path(runs["run_id"].iloc[0]).exists()
    for rid, status in zip(runs["run_id"], runs["status"]):
        assert store.run_status(rid) == status
        assert store.is_complete(rid) == (status in COMPLETE_STATUSES)
    assert store.run_status("no-such-run") is None
    records = store.run_records([*runs["run_id"], "no-such-run"], ["status", "seed"])
    assert set(records) == set(runs["run_id"]) and records[runs["run_id"].iloc[3]]["seed"] == runs["seed"].iloc[3]


def test_damaged_compacted_file_is_skipped_with_a_warning_naming_it(store_copy):
    compact(store_copy)
    store = ResultStore(store_copy)
    rid = store.load_runs()["run_id"].iloc[0]
    (store_copy / "runs.parquet").write_bytes(b"PAR1 not parquet")
    store.write_run({"run_id": "fresh", "status": "ok"})
    with pytest.warns(UserWarning, match=r"skipping damaged results file .*runs\.parquet"):
        assert list(store.load_runs()["run_id"]) == ["fresh"]
    with pytest.warns(UserWarning, match=r"runs\.parquet"):
        assert list(read_tables(store_files(store, "runs"), "runs")["run_id"]) == ["fresh"]
    with pytest.warns(UserWarning, match=r"runs\.parquet"):
        assert store.run_status(rid) is None
    with pytest.raises(UserError, match=r"compacted file .*runs\.parquet is damaged"):
        compact(store_copy)
    assert store.run_path("fresh").exists()  # nothing was deleted


def test_damaged_per_run_file_is_kept_and_still_hides_its_run(store_copy):
    compact(store_copy)
    store = ResultStore(store_copy)
    rid = store.load_runs()["run_id"].iloc[0]
    store.run_path(rid).write_bytes(b"PAR1 not parquet")
    with pytest.warns(UserWarning, match=rid):
        before = store.load_runs()
    with pytest.warns(UserWarning, match=rid):
        summary = compact(store_copy)
    assert summary.kept_damaged == [store.run_path(rid)] and store.run_path(rid).exists()
    with pytest.warns(UserWarning, match=rid):
        pd.testing.assert_frame_equal(before, store.load_runs())


def test_site_builds_the_same_from_a_compacted_store(synthetic, tmp_path):
    from vqbench.leaderboard.build import build_site

    build_site(synthetic, tmp_path / "site-a")
    results = tmp_path / "results"
    shutil.copytree(synthetic, results)
    compact(results)
    build_site(results, tmp_path / "site-b")
    pages_a = {p.relative_to(tmp_path / "site-a"): p.read_bytes() for p in (tmp_path / "site-a").rglob("*")
               if p.is_file()}
    pages_b = {p.relative_to(tmp_path / "site-b"): p.read_bytes() for p in (tmp_path / "site-b").rglob("*")
               if p.is_file()}
    assert pages_a.keys() == pages_b.keys()
    assert [k for k in pages_a if pages_a[k] != pages_b[k]] == []


def test_runner_and_command_line_on_a_compacted_store(tmp_path, tiny_spec, capsys):
    from vqbench.runner import run

    spec = tiny_spec()
    assert run(spec, tmp_path, progress=False).status == "ok"
    store = ResultStore(tmp_path)
    assert store.checkpoint_path(spec.run_id).is_file()
    assert main(["results", "compact", "--results", str(tmp_path)]) == 0
    assert "per-run file(s) removed" in capsys.readouterr().out
    assert not store.run_path(spec.run_id).exists() and store.checkpoint_path(spec.run_id).is_file()
    assert run(spec, tmp_path, progress=False).status == "skipped"  # complete, read from runs.parquet
    assert main(["results", "--results", str(tmp_path)]) == 0
    assert spec.run_id in capsys.readouterr().out
    assert main(["results", "compact", "--results", str(tmp_path), "--drop-checkpoints"]) == 0
    assert not store.checkpoint_path(spec.run_id).exists()
    assert main(["results", "compact", "--results", str(tmp_path), "--task", "gmm"]) == 2
    assert main(["results", "--results", str(tmp_path), "--drop-checkpoints"]) == 2
