"""Fast bulk reads of the result store for the site build.

``vqbench.store.ResultStore.load_*`` read one file at a time in threads; with one file per run, a
10,000-run store is 30,000 small Parquet files and the per-file cost (footer parsing, schema
resolution, Python overhead under the GIL) dominates: about 20 s for the runs table alone on
the 2-core reference machine. This module reads the same files, with the same canonical schemas
(``vqbench.store.RUNS_SCHEMA`` ...) and the same rule for damaged files (skipped with a warning that
names them), but in worker processes, each file through ``pyarrow.parquet.ParquetFile`` (the
cheapest path), and for arrays it keeps only what the site shows (each array's last eval step)
before sending anything back. A compacted store (``vqbench results compact``: one file per table) is
read in this process, file by file; in a mixed store a per-run file replaces its run's compacted rows.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vqbench.store import (
    ARRAYS_SCHEMA,
    METRICS_SCHEMA,
    PERF_SCHEMA,
    RUNS_SCHEMA,
    TABLES,
    ResultStore,
    damaged_message,
    is_compacted_file,
    per_run_ids,
    sort_by_key,
    without_ids,
)

#: the store's tables by kind (``perf``: `vqbench perf` measurements, results/perf/<perf_id>.parquet)
SCHEMAS = {"runs": RUNS_SCHEMA, "metrics": METRICS_SCHEMA, "arrays": ARRAYS_SCHEMA, "perf": PERF_SCHEMA}
#: below this many files a process pool costs more than it saves
PARALLEL_MIN_FILES = 400


def _read_one(path: str, schema: pa.Schema) -> tuple[pa.Table | None, str | None]:
    try:
        table = pq.ParquetFile(path, pre_buffer=True).read(use_threads=False)
        if not table.schema.equals(schema, check_metadata=False):
            table = pq.read_table(path, schema=schema)  # older/extra columns: let Arrow conform them
        return table.select(schema.names), None
    except Exception as exc:  # damaged, truncated, or an incompatible schema
        return None, damaged_message(path, exc)


def _last_steps(table: pa.Table) -> pa.Table:
    """Rows of an arrays table at the last ``eval`` step of each array name."""
    splits = table.column("split").to_pylist()
    names = table.column("name").to_pylist()
    steps = table.column("step").to_pylist()
    run_ids = table.column("run_id").to_pylist()
    best: dict[tuple[str, str], int] = {}
    for i, (split, name, step) in enumerate(zip(splits, names, steps)):
        if split != "eval":
            continue
        key = (run_ids[i], name)
        if key not in best or step >= steps[best[key]]:
            best[key] = i
    return table.take(pa.array(sorted(best.values()), type=pa.int64()))


def _read_chunk(args: tuple[list[str], str, bool]) -> tuple[pa.Table | None, list[str]]:
    paths, kind, last_only = args
    schema = SCHEMAS[kind]
    tables, problems = [], []
    for path in paths:
        table, problem = _read_one(path, schema)
        if problem:
            problems.append(problem)
            continue
        if last_only:
            table = _last_steps(table)
        tables.append(table)
    if not tables:
        return None, problems
    return pa.concat_tables(tables).combine_chunks(), problems


def read_tables(paths: Sequence[Path | str], kind: str, *, last_only: bool = False,
                workers: int | None = None) -> pd.DataFrame:
    """Read store files of one ``kind`` (runs | metrics | arrays | perf) into one DataFrame, ordered by key.

    ``paths`` may mix per-run and compacted files (:func:`store_files` gives both): a per-run file among
    ``paths`` replaces the compacted rows of its run (perf id).
    """
    schema, key = TABLES[kind]
    compacted = sorted(str(p) for p in paths if is_compacted_file(p))
    paths = sorted(str(p) for p in paths if not is_compacted_file(p))
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    if len(paths) < PARALLEL_MIN_FILES or workers == 1:
        results = [_read_chunk((paths, kind, last_only))]
    else:
        n_chunks = workers * 4
        chunks = [(paths[i::n_chunks], kind, last_only) for i in range(n_chunks)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_read_chunk, chunks))
    replaced = per_run_ids(paths)
    for path in compacted:
        table, problem = _read_compacted(path, schema)
        if table is not None:
            table = without_ids(table, key, replaced)
            results.append((_last_steps(table) if last_only else table, []))
        else:
            results.append((None, [problem]))
    tables = []
    for table, problems in results:
        for problem in problems:
            warnings.warn(problem, stacklevel=2)
        if table is not None and table.num_rows:
            tables.append(table)
    if not tables:
        return schema.empty_table().to_pandas()
    return sort_by_key(pa.concat_tables(tables), key).combine_chunks().to_pandas()


def _read_compacted(path: str, schema: pa.Schema, filters: list | None = None) -> tuple[pa.Table | None, str]:
    try:
        return pq.read_table(path, schema=schema, filters=filters).select(schema.names), ""
    except Exception as exc:  # damaged, truncated, or an incompatible schema
        return None, damaged_message(path, exc)


def store_files(store: ResultStore, kind: str) -> list[Path]:
    """All files of one table of the store, per-run and compacted (``vqbench.store.ResultStore.table_files``)."""
    per_run, compacted = store.table_files(kind)
    return compacted + per_run


def read_run_arrays(results: str | Path, task: str, run_ids: Sequence[str], *, last_only: bool = True) -> pd.DataFrame:
    """The arrays of some runs of one task (each array's last eval step when ``last_only``), read in this process.

    Per-run files are read where they exist; the other runs' rows come from the task's compacted file, of
    which pyarrow reads only the row groups that can hold them.
    """
    store = ResultStore(results)
    per_run = [p for p in (store.arrays_path(task, rid) for rid in run_ids) if p.exists()]
    frame = read_tables(per_run, "arrays", last_only=last_only, workers=1)
    rest = sorted(set(run_ids) - per_run_ids(per_run))
    target = store.compacted_path("arrays", task)
    if not rest or not target.is_file():
        return frame
    table, problem = _read_compacted(str(target), ARRAYS_SCHEMA, filters=[("run_id", "in", rest)])
    if table is None:
        warnings.warn(problem, stacklevel=2)
        return frame
    if last_only:
        table = _last_steps(table)
    if frame.empty:
        return table.to_pandas()
    both = pa.concat_tables([table, pa.Table.from_pandas(frame, schema=ARRAYS_SCHEMA, preserve_index=False)])
    return sort_by_key(both, "run_id").to_pandas()
