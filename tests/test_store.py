import os
from datetime import datetime, timezone

import pandas as pd
import pytest

from vqbench.store import ResultStore, atomic_write_table, final_metrics


def record(run_id="r1", status="ok", task="gmm"):
    now = datetime.now(timezone.utc)
    return {"run_id": run_id, "task": task, "method": "vq", "seed": 0, "status": status, "tags": ["suite:x"],
            "started_at": now, "finished_at": now, "wall_time_s": 1.5, "git_dirty": False}


def test_round_trip_with_canonical_schema(tmp_path):
    store = ResultStore(tmp_path)
    store.write_run(record())
    store.write_metrics("gmm", "r1", [("eval", 0, "mse", 2.0), ("eval", 10, "mse", 1.0), ("train", 10, "loss", 3.0)])
    store.write_arrays("gmm", "r1", [("eval", 10, "usage_histogram", [3, 2, 0])])
    runs = store.load_runs()
    assert list(runs["run_id"]) == ["r1"] and runs["schema_version"].iloc[0] == 1
    assert list(runs["tags"].iloc[0]) == ["suite:x"]
    assert pd.isna(runs["method_params"].iloc[0])  # absent fields are null, columns always present
    metrics = store.load_metrics("gmm")
    assert len(metrics) == 3 and set(metrics.columns) == {"run_id", "split", "step", "metric", "value"}
    assert list(store.load_arrays()["values"].iloc[0]) == [3.0, 2.0, 0.0]
    final = final_metrics(runs, metrics)
    assert final["metric.mse"].iloc[0] == 1.0  # value at the last eval step


def test_completion_statuses(tmp_path):
    store = ResultStore(tmp_path)
    assert not store.is_complete("r1")
    store.write_run(record("r1", "failed"))
    assert not store.is_complete("r1")
    store.write_run(record("r1", "diverged"))
    assert store.is_complete("r1")
    with pytest.raises(ValueError, match="unknown run status"):
        store.write_run(record("r2", "weird"))


def test_damaged_file_is_skipped_with_a_warning_naming_it(tmp_path):
    store = ResultStore(tmp_path)
    store.write_run(record("good"))
    bad = store.run_path("bad")
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.warns(UserWarning, match=r"skipping damaged results file .*bad\.parquet"):
        runs = store.load_runs()
    assert list(runs["run_id"]) == ["good"]
    with pytest.warns(UserWarning):
        assert not store.is_complete("bad")


def test_atomic_write_leaves_old_file_intact_on_failure(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    atomic_write_table(pa.table({"a": [1]}), path)

    def explode(table, where):
        with open(where, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", explode)
    with pytest.raises(OSError):
        atomic_write_table(pa.table({"a": [2]}), path)
    monkeypatch.undo()
    assert pq.read_table(path).column("a").to_pylist() == [1]
    assert os.listdir(tmp_path) == ["x.parquet"]  # no temp file left behind


def test_empty_store_has_canonical_columns(tmp_path):
    store = ResultStore(tmp_path)
    assert "status" in store.load_runs().columns
    assert list(store.load_metrics().columns) == ["run_id", "split", "step", "metric", "value"]


def test_sweep_membership_adds_suites(tmp_path):
    import json as _json

    store = ResultStore(tmp_path)
    store.write_run(record("r1"))
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "b.json").write_text(_json.dumps({"name": "b", "run_ids": ["r1", "r9"]}))
    (tmp_path / "sweeps" / "broken.json").write_text("{not json")
    with pytest.warns(UserWarning, match="broken.json"):
        members = store.sweep_members()
    assert members == {"r1": {"b"}, "r9": {"b"}}
    from vqbench.leaderboard.data import load

    with pytest.warns(UserWarning, match="broken.json"):
        data = load(tmp_path)
    runs = data.runs if hasattr(data, "runs") else data
    assert sorted(runs.loc[runs.run_id == "r1", "suites"].iloc[0]) == ["b", "x"]  # tag suite:x + membership b


def test_a_store_written_before_a_column_existed_still_loads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vqbench.store import RUNS_SCHEMA

    store = ResultStore(tmp_path)
    old_schema = pa.schema([f for f in RUNS_SCHEMA if f.name != "method_differences"])
    row = {name: record("old").get(name) for name in old_schema.names}
    row["schema_version"] = 1
    atomic_write_table(pa.Table.from_pylist([row], schema=old_schema), store.run_path("old"))
    store.write_run({**record("new"), "method_differences": "no EMA warm-up"})
    assert "method_differences" not in pq.read_schema(store.run_path("old")).names
    runs = store.load_runs().set_index("run_id")
    assert pd.isna(runs.loc["old", "method_differences"]) and runs.loc["old", "status"] == "ok"
    assert runs.loc["new", "method_differences"] == "no EMA warm-up"
    assert store.is_complete("old")


def test_run_summary_shows_the_main_metric_then_the_collapse_metrics_it_has():
    from vqbench.store import format_run_summary

    final = {"psnr": 21.234567, "mse": 0.01, "utilization": 0.5, "dead_codes": 3.0}
    line = format_run_summary("abc", "vq", "digits", 1, "ok", final=final, main_metric="psnr", wall_time_s=2.5)
    assert line == "run abc (vq on digits, seed 1): ok | psnr=21.23, utilization=0.5 (2.5s)"
    line = format_run_summary("abc", "vq", "gmm", 0, "diverged", error="loss became nan at step 3 of stage x",
                              final={"mse": 2.0, "perplexity": 7.0}, main_metric="mse")
    assert line == "run abc (vq on gmm, seed 0): diverged: loss became nan at step 3 of stage x | mse=2, perplexity=7"
    assert format_run_summary("abc", "vq", "gmm", 0, "skipped") == "run abc (vq on gmm, seed 0): skipped"


def test_compacted_files_are_told_from_per_run_files(tmp_path):
    from vqbench.store import is_compacted_file, per_run_ids

    store = ResultStore(tmp_path)
    compacted = [store.compacted_path("runs"), store.compacted_path("perf"), store.compacted_path("metrics", "gmm"),
                 store.compacted_path("arrays", "gmm")]
    per_run = [store.run_path("r1"), store.metrics_path("gmm", "r2"), store.arrays_path("gmm", "task=x"),
               store.perf_path("p1")]
    assert [is_compacted_file(p) for p in compacted] == [True] * 4
    assert [is_compacted_file(p) for p in per_run] == [False] * 4
    assert per_run_ids(compacted + per_run) == {"r1", "r2", "task=x", "p1"}
    with pytest.raises(ValueError, match="per task"):
        store.compacted_path("metrics")
