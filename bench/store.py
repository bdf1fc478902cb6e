"""The Parquet result store: one file per run, written atomically, read with canonical schemas.

Layout under a results root::

    runs/<run_id>.parquet                    one row: spec, status, provenance
    metrics/task=<task>/<run_id>.parquet     long format: (run_id, split, step, metric, value)
    arrays/task=<task>/<run_id>.parquet      (run_id, split, step, name, values): histograms, spectra
    perf/<perf_id>.parquet                   the rows of one `vqbench perf` measurement
    checkpoints/<run_id>.pt                  the runner's resumable state (and final weights)

``vqbench results compact`` (:mod:`vqbench.compact`) rewrites the per-run files of each table as one file
(``runs.parquet``, ``metrics/task=<task>.parquet``, ``arrays/task=<task>.parquet``, ``perf.parquet``), rows
sorted by run id. Every reader accepts both layouts, mixed: a per-run file replaces the compacted rows of its
run in that table (a run rerun with ``--force`` after a compaction writes per-run files again).

Every file is written to a temporary name in the same folder and renamed into place, so concurrent
array jobs never share a file and a crash never leaves a half-written one. A damaged file is skipped
with a warning that names it. The run file is written last: its presence with a complete status is
what makes a run complete.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vqbench.errors import UserError

SCHEMA_VERSION = 1
COMPLETE_STATUSES = ("ok", "diverged")  # deterministic outcomes: rerunning would give the same
STATUSES = ("ok", "failed", "diverged", "timeout")

RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("task", pa.string()),
    ("task_version", pa.int64()),
    ("task_params", pa.string()),  # canonical JSON
    ("method", pa.string()),
    ("method_version", pa.int64()),
    ("method_params", pa.string()),  # canonical JSON
    ("method_family", pa.string()),
    ("method_source", pa.string()),  # "vqbench", "<dist>==<ver>", "file:<path>#sha256=..."
    ("method_paper", pa.string()),  # arXiv id
    ("method_description", pa.string()),
    ("method_differences", pa.string()),  # how the implementation differs from the authors' (null in old stores)
    ("method_defaults", pa.string()),  # canonical JSON of the registered defaults
    ("task_source", pa.string()),
    ("task_kind", pa.string()),  # synthetic | reconstruction | generation
    ("task_description", pa.string()),
    ("seed", pa.int64()),
    ("budget", pa.string()),  # canonical JSON
    ("tags", pa.list_(pa.string())),
    ("spec", pa.string()),  # the full RunSpec as canonical JSON (RunSpec.from_json reads it back)
    ("status", pa.string()),
    ("error", pa.string()),
    ("main_metric", pa.string()),
    ("higher_is_better", pa.bool_()),
    ("steps_done", pa.int64()),
    ("wall_time_s", pa.float64()),
    ("items_per_s", pa.float64()),
    ("device", pa.string()),
    ("world_size", pa.int64()),  # processes of a data-parallel run, one per device (null in old stores: 1)
    ("hostname", pa.string()),
    ("git_commit", pa.string()),
    ("git_dirty", pa.bool_()),
    ("versions", pa.string()),  # JSON: package -> version
    ("slurm_job_id", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("schema_version", pa.int64()),
])

METRICS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("split", pa.string()),
    ("step", pa.int64()),
    ("metric", pa.string()),
    ("value", pa.float64()),
])

ARRAYS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("split", pa.string()),
    ("step", pa.int64()),
    ("name", pa.string()),
    ("values", pa.list_(pa.float64())),
])

PERF_SCHEMA = pa.schema([
    ("perf_id", pa.string()),  # one id per `vqbench perf` invocation
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("device", pa.string()),  # e.g. "cpu (2 threads)", "cuda: NVIDIA H100 80GB HBM3"
    ("implementation", pa.string()),  # "vqbench" | "vector-quantize-pytorch" | "torch.mm"
    ("method", pa.string()),
    ("codebook_size", pa.int64()),
    ("dim", pa.int64()),
    ("n", pa.int64()),
    ("measure", pa.string()),  # forward_backward | nearest_code_search | matmul | train_step
    ("time_ms", pa.float64()),  # median over repeats
    ("peak_memory_mb", pa.float64()),
    ("gflops", pa.float64()),  # achieved rate where the op has a FLOP count
    ("status", pa.string()),  # ok | out_of_memory | unsupported | error
    ("note", pa.string()),
    ("versions", pa.string()),
])

_METADATA = {b"vqbench_schema_version": str(SCHEMA_VERSION).encode()}

#: the store's tables: kind -> (canonical schema, key column: the id a per-run file is named after)
TABLES: dict[str, tuple[pa.Schema, str]] = {
    "runs": (RUNS_SCHEMA, "run_id"),
    "metrics": (METRICS_SCHEMA, "run_id"),
    "arrays": (ARRAYS_SCHEMA, "run_id"),
    "perf": (PERF_SCHEMA, "perf_id"),
}
#: tables whose files are partitioned by task (``<kind>/task=<task>/...``)
PER_TASK = ("metrics", "arrays")


def is_compacted_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a compacted table file (``runs.parquet``, ``metrics/task=<t>.parquet`` ...).

    Per-run files always sit in a ``runs/``, ``perf/`` or ``task=<t>/`` folder; compacted ones never do.
    """
    path = Path(path)
    if path.name in ("runs.parquet", "perf.parquet"):
        return True
    return path.parent.name in PER_TASK and path.name.startswith("task=") and path.suffix == ".parquet"


def per_run_ids(paths: Iterable[str | os.PathLike[str]]) -> set[str]:
    """The ids (run ids, perf ids) named by per-run files among ``paths``: their compacted rows are replaced."""
    return {Path(p).stem for p in paths if not is_compacted_file(p)}


def without_ids(table: pa.Table, key: str, ids: Iterable[str]) -> pa.Table:
    """``table`` less the rows whose ``key`` is in ``ids``."""
    ids = list(ids)
    if not ids or table.num_rows == 0:
        return table
    return table.filter(pc.invert(pc.is_in(table.column(key), value_set=pa.array(ids, pa.string()))))


def sort_by_key(table: pa.Table, key: str) -> pa.Table:
    """Rows ordered by ``key``, keeping the order of the rows of one key (a stable sort)."""
    if table.num_rows < 2:
        return table
    return table.take(pc.sort_indices(table, sort_keys=[(key, "ascending")]))


def _with_metadata(schema: pa.Schema) -> pa.Schema:
    return schema.with_metadata(_METADATA)


def atomic_write_table(table: pa.Table, path: Path, **write_options: Any) -> None:
    """Write ``table`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    ``write_options`` go to ``pyarrow.parquet.write_table`` (compression, row_group_size ...).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, **write_options)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def damaged_message(path: str | os.PathLike[str], exc: BaseException) -> str:
    """The warning for a results file that cannot be read (per-run or compacted)."""
    fix = ("restore it from where the store is published, or delete it and rerun those runs"
           if is_compacted_file(path) else "delete it and rerun that run")
    return f"skipping damaged results file {path}: {type(exc).__name__}: {exc} ({fix})"


def _read(path: Path, schema: pa.Schema, filters: list[tuple[str, str, Any]] | None = None) -> pa.Table | None:
    try:
        table = pq.read_table(path, schema=schema, filters=filters)
    except Exception as exc:  # damaged, truncated, or written by an incompatible schema
        warnings.warn(damaged_message(path, exc), stacklevel=3)
        return None
    return table


_COMPACT_RUNS_CACHE: dict[Path, tuple[tuple[int, int], pa.Table, dict[str, int]]] = {}


def _compacted_runs(path: Path) -> tuple[pa.Table, dict[str, int]] | None:
    """The compacted runs table at ``path`` and its run_id -> row index, cached while the file is unchanged."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _COMPACT_RUNS_CACHE.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1], cached[2]
    table = _read(path, RUNS_SCHEMA)
    if table is None:
        return None
    index = {rid: i for i, rid in enumerate(table.column("run_id").to_pylist())}
    _COMPACT_RUNS_CACHE[path] = (stamp, table, index)
    return table, index


# what reading a damaged (or hand-edited) membership file raises
MEMBERSHIP_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError)


def read_membership_file(path: Path) -> dict[str, Any]:
    """A sweep membership file ``sweeps/<name>.json`` with ``name`` (str), ``run_ids`` (str, in order) and
    ``run_tasks`` (run id -> task; {} in files older than it) normalised; raises one of :data:`MEMBERSHIP_ERRORS`
    if it is damaged (FileNotFoundError if absent)."""
    data = json.loads(path.read_text())
    name, run_ids = str(data["name"]), [str(r) for r in data["run_ids"]]
    run_tasks = {str(k): str(v) for k, v in (data.get("run_tasks") or {}).items()}
    return {**data, "name": name, "run_ids": run_ids, "run_tasks": run_tasks}


class ResultStore:
    """A results folder. All reads return pandas DataFrames with the canonical columns."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- paths ----------------------------------------------------------------------------------
    def run_path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{run_id}.parquet"

    def metrics_path(self, task: str, run_id: str) -> Path:
        return self.root / "metrics" / f"task={task}" / f"{run_id}.parquet"

    def arrays_path(self, task: str, run_id: str) -> Path:
        return self.root / "arrays" / f"task={task}" / f"{run_id}.parquet"

    def perf_path(self, perf_id: str) -> Path:
        return self.root / "perf" / f"{perf_id}.parquet"

    def checkpoint_path(self, run_id: str) -> Path:
        return self.root / "checkpoints" / f"{run_id}.pt"

    def compacted_path(self, kind: str, task: str | None = None) -> Path:
        """The compacted file of table ``kind`` (of ``task`` for metrics and arrays)."""
        if kind in PER_TASK:
            if task is None:
                raise ValueError(f"the compacted {kind} files are per task: pass task")
            return self.root / kind / f"task={task}.parquet"
        return self.root / f"{kind}.parquet"

    def table_files(self, kind: str, task: str | None = None) -> tuple[list[Path], list[Path]]:
        """(per-run files, compacted files) of table ``kind``, of one task or (None) all, each sorted."""
        if kind in PER_TASK:
            base = self.root / kind
            pattern = f"task={task or '*'}"
            per_run = base.glob(f"{pattern}/*.parquet")
            compacted = [p for p in base.glob(f"{pattern}.parquet") if p.is_file()]
        else:
            per_run = (self.root / kind).glob("*.parquet")
            compacted = [p for p in [self.compacted_path(kind)] if p.is_file()]
        return sorted(per_run), sorted(compacted)

    def ensure_writable(self) -> None:
        """Fail with a clear message if results cannot be written here."""
        try:
            (self.root / "runs").mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.root / "runs", prefix=".probe", delete=True)
            probe.close()
        except OSError as exc:
            raise UserError(f"results folder {self.root} is not writable ({exc.strerror}): "
                            "pass another with --results") from None

    # -- writing --------------------------------------------------------------------------------
    def write_run(self, record: dict[str, Any]) -> Path:
        row = {name: record.get(name) for name in RUNS_SCHEMA.names}
        row["schema_version"] = SCHEMA_VERSION
        if row["status"] not in STATUSES:
            raise ValueError(f"unknown run status {row['status']!r}")
        table = pa.Table.from_pylist([row], schema=_with_metadata(RUNS_SCHEMA))
        path = self.run_path(row["run_id"])
        atomic_write_table(table, path)
        return path

    def write_metrics(self, task: str, run_id: str, rows: Iterable[tuple[str, int, str, float]]) -> Path:
        """Write all metric rows ``(split, step, metric, value)`` of one run (replaces earlier ones)."""
        rows = list(rows)
        table = pa.table({
            "run_id": [run_id] * len(rows),
            "split": [r[0] for r in rows],
            "step": [int(r[1]) for r in rows],
            "metric": [r[2] for r in rows],
            "value": [float(r[3]) for r in rows],
        }, schema=_with_metadata(METRICS_SCHEMA))
        path = self.metrics_path(task, run_id)
        atomic_write_table(table, path)
        return path

    def write_arrays(self, task: str, run_id: str, rows: Iterable[tuple[str, int, str, list[float]]]) -> Path:
        rows = list(rows)
        table = pa.table({
            "run_id": [run_id] * len(rows),
            "split": [r[0] for r in rows],
            "step": [int(r[1]) for r in rows],
            "name": [r[2] for r in rows],
            "values": [[float(v) for v in r[3]] for r in rows],
        }, schema=_with_metadata(ARRAYS_SCHEMA))
        path = self.arrays_path(task, run_id)
        atomic_write_table(table, path)
        return path

    def write_perf(self, perf_id: str, rows: list[dict[str, Any]]) -> Path:
        """Write the rows of one performance measurement (``PERF_SCHEMA``) atomically."""
        table = pa.Table.from_pylist([{n: r.get(n) for n in PERF_SCHEMA.names} for r in rows],
                                     schema=_with_metadata(PERF_SCHEMA))
        path = self.perf_path(perf_id)
        atomic_write_table(table, path)
        return path

    # -- reading --------------------------------------------------------------------------------
    def run_records(self, run_ids: Iterable[str], columns: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """run_id -> its stored runs row (only ``columns``, default all) for those of ``run_ids`` in the store.

        A per-run file stands for its run (a damaged one, skipped with a warning, makes the run absent);
        runs without one are looked up in the compacted ``runs.parquet``.
        """
        names = list(columns) if columns is not None else list(RUNS_SCHEMA.names)
        wanted = list(dict.fromkeys(run_ids))

        def read(run_id: str) -> tuple[str, dict[str, Any] | None, bool]:
            path = self.run_path(run_id)
            if not path.exists():
                return run_id, None, False
            table = _read(path, RUNS_SCHEMA)
            if table is None or table.num_rows != 1:
                return run_id, None, True
            return run_id, table.select(names).to_pylist()[0], True

        if len(wanted) > 64:
            with ThreadPoolExecutor(max_workers=8) as pool:
                found = list(pool.map(read, wanted))
        else:
            found = [read(r) for r in wanted]
        records = {rid: row for rid, row, _ in found if row is not None}
        rest = [rid for rid, _, has_file in found if not has_file]
        compacted = _compacted_runs(self.compacted_path("runs")) if rest else None
        if compacted is not None:
            table, index = compacted
            present = [rid for rid in rest if rid in index]
            if present:
                taken = table.select(names).take(pa.array([index[rid] for rid in present], pa.int64()))
                records.update(zip(present, taken.to_pylist()))
        return records

    def run_status(self, run_id: str) -> str | None:
        """The stored status of ``run_id`` (either layout), None when it has no readable row."""
        row = self.run_records([run_id], ["run_id", "status"]).get(run_id)
        return None if row is None else row["status"]

    def is_complete(self, run_id: str) -> bool:
        """Whether ``run_id`` is stored with a complete status (``ok`` or ``diverged``)."""
        return self.run_status(run_id) in COMPLETE_STATUSES

    def _read_all(self, paths: list[Path], schema: pa.Schema, filters: list | None = None) -> list[pa.Table]:
        if len(paths) > 64:
            with ThreadPoolExecutor(max_workers=8) as pool:
                tables = list(pool.map(lambda p: _read(p, schema, filters), paths))
        else:
            tables = [_read(p, schema, filters) for p in paths]
        return [t for t in tables if t is not None]

    def load_table(self, kind: str, task: str | None = None, ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Rows of table ``kind`` (runs | metrics | arrays | perf) from both layouts, ordered by key.

        ``task``: only that task's files (metrics, arrays); ``ids``: only those run (perf) ids. A per-run
        file replaces the compacted rows of its id; damaged files are skipped with a warning naming them.
        """
        schema, key = TABLES[kind]
        per_run, compacted = self.table_files(kind, task if kind in PER_TASK else None)
        wanted = None if ids is None else set(ids)
        if wanted is not None:
            per_run = [p for p in per_run if p.stem in wanted]
        replaced = per_run_ids(per_run)
        filters = None if wanted is None else [(key, "in", sorted(wanted - replaced))]
        if filters is not None and not filters[0][2]:
            compacted = []
        parts = [without_ids(t, key, replaced) for t in self._read_all(compacted, schema, filters)]
        parts += self._read_all(per_run, schema)
        parts = [t.select(schema.names).cast(schema) for t in parts if t.num_rows]
        if not parts:
            return schema.empty_table().to_pandas()
        return sort_by_key(pa.concat_tables(parts), key).to_pandas()

    def sweep_files(self) -> dict[str, dict[str, Any]]:
        """sweep name -> its membership file ``sweeps/<name>.json`` (written by ``sweep run``), damaged files left
        out with a warning. ``run_ids`` lists every run the sweep planned; ``run_tasks`` (files written since
        membership files carry it) maps each to its task."""
        files: dict[str, dict[str, Any]] = {}
        for path in sorted((self.root / "sweeps").glob("*.json")):
            try:
                data = read_membership_file(path)
            except MEMBERSHIP_ERRORS as exc:
                warnings.warn(f"skipping damaged sweep membership file {path}: {exc}", stacklevel=2)
                continue
            files[data["name"]] = data
        return files

    def sweep_members(self) -> dict[str, set[str]]:
        """run_id -> names of the sweeps (suites) it belongs to, from ``sweeps/<name>.json``.

        A run already complete when a second sweep lists it keeps the tags of the sweep that ran it; the
        membership files written by every ``sweep run`` say which suites it belongs to as well.
        """
        members: dict[str, set[str]] = {}
        for name, data in self.sweep_files().items():
            for run_id in data["run_ids"]:
                members.setdefault(run_id, set()).add(name)
        return members

    def load_runs(self) -> pd.DataFrame:
        """One row per run (the ``runs`` table); ``spec`` holds the full RunSpec JSON."""
        return self.load_table("runs")

    def load_metrics(self, task: str | None = None, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Long-format metric rows, optionally for one task and/or some runs."""
        return self.load_table("metrics", task, run_ids)

    def load_arrays(self, task: str | None = None, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Array rows (histograms, spectra), optionally for one task and/or some runs."""
        return self.load_table("arrays", task, run_ids)

    def load_perf(self) -> pd.DataFrame:
        """The rows of every ``vqbench perf`` measurement."""
        return self.load_table("perf")


def load_perf(root: str | os.PathLike[str]) -> pd.DataFrame:
    """The ``perf`` table of the store at ``root`` (both layouts)."""
    return ResultStore(root).load_perf()


def load_runs(root: str | os.PathLike[str]) -> pd.DataFrame:
    return ResultStore(root).load_runs()


def load_metrics(root: str | os.PathLike[str], task: str | None = None) -> pd.DataFrame:
    return ResultStore(root).load_metrics(task)


def final_metrics(runs: pd.DataFrame, metrics: pd.DataFrame, split: str = "eval") -> pd.DataFrame:
    """One row per run: ``runs`` columns plus each metric's value at the run's last ``split`` step."""
    m = metrics[metrics["split"] == split]
    if m.empty:
        return runs.copy()
    last = m.loc[m.groupby(["run_id", "metric"])["step"].idxmax()]
    wide = last.pivot(index="run_id", columns="metric", values="value")
    wide.columns = [f"metric.{c}" for c in wide.columns]
    return runs.merge(wide, left_on="run_id", right_index=True, how="left")



#: the collapse metrics a one-line run summary shows after the task's main metric, when the run measured them
SUMMARY_COLLAPSE_METRICS = ("utilization", "perplexity")


def format_run_summary(run_id: str, method: str, task: str, seed: int, status: str, *, error: str = "",
                       final: Mapping[str, float] | None = None, main_metric: str | None = None,
                       wall_time_s: float | None = None) -> str:
    """The one-line summary of a finished run that ``vqbench run`` and sweep drivers print.

    ``run <id> (<method> on <task>, seed <s>): <status>[: <error>] | <main>=..., utilization=..., perplexity=...
    (<wall>s)``: the task's main metric first, then the :data:`SUMMARY_COLLAPSE_METRICS` present in ``final``
    (the last eval value of each metric).
    """
    line = f"run {run_id} ({method} on {task}, seed {seed}): {status}"
    if error:
        line += f": {error}"
    final = final or {}
    keys = [main_metric] if main_metric else []
    keys += [k for k in SUMMARY_COLLAPSE_METRICS if k not in keys]
    shown = [k for k in keys if k in final]
    if shown:
        line += " | " + ", ".join(f"{k}={final[k]:.4g}" for k in shown)
    if wall_time_s is not None:
        line += f" ({wall_time_s:.1f}s)"
    return line
