"""``vqbench results compact``: rewrite a store's per-run files as one Parquet file per table.

A run writes a few small files (about 30 KB in all); a published board of 10,000 runs would be 30,000 files.
Compaction merges, for each table, the compacted file already there and the per-run files into one file
(``runs.parquet``, ``metrics/task=<task>.parquet``, ``arrays/task=<task>.parquet``, ``perf.parquet``; canonical
schema, ``vqbench_schema_version`` metadata, rows sorted by run id with each run's rows in their written order),
written atomically. Only once every compacted file is in place are the per-run files it took in deleted, and a
file changed since it was read (a run rerun meanwhile) is kept: it then replaces its run's compacted rows, as
any per-run file does (see :mod:`vqbench.store`). So an interrupted compaction loses nothing and rerunning
it finishes the job; compacting a compacted store changes nothing. What the readers see is the same before and
after. Damaged per-run files are left in place (with a warning); a damaged compacted file stops the compaction
(rewriting it would lose its rows). Checkpoints are not compacted; ``drop_checkpoints`` deletes those of
complete runs. Do not run two compactions of one store at once.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vqbench.errors import UserError
from vqbench.store import (
    COMPLETE_STATUSES,
    PER_TASK,
    SCHEMA_VERSION,
    TABLES,
    ResultStore,
    atomic_write_table,
    damaged_message,
    per_run_ids,
    sort_by_key,
    without_ids,
)

#: rows per row group of a compacted file: small enough that a reader of a few runs (pyarrow ``filters`` on the
#: sorted run ids) skips most of the file
ROW_GROUP_ROWS = {"runs": 4096, "metrics": 65536, "arrays": 4096, "perf": 4096}
#: the schema metadata of a compacted file
COMPACT_METADATA = {b"vqbench_schema_version": str(SCHEMA_VERSION).encode(), b"vqbench_layout": b"compacted"}


@dataclass
class StoreSize:
    """How many files and bytes a store's tables (and checkpoints) hold."""

    files: int = 0
    bytes: int = 0

    @classmethod
    def of(cls, root: str | os.PathLike[str]) -> StoreSize:
        """Files and bytes under ``root`` in the tables' folders, the compacted files and checkpoints."""
        root = Path(root)
        paths = [p for kind in [*TABLES, "checkpoints"] for p in (root / kind).rglob("*") if p.is_file()]
        paths += [p for p in (root / "runs.parquet", root / "perf.parquet") if p.is_file()]
        return cls(len(paths), sum(p.stat().st_size for p in paths))


@dataclass
class CompactSummary:
    """What one compaction did."""

    before: StoreSize
    after: StoreSize
    written: list[Path] = field(default_factory=list)  # compacted files (re)written
    removed: int = 0  # per-run files deleted
    kept_changed: list[Path] = field(default_factory=list)  # per-run files changed while compacting (kept)
    kept_damaged: list[Path] = field(default_factory=list)  # per-run files that could not be read (kept)
    checkpoints_removed: int = 0

    def lines(self) -> list[str]:
        """The summary printed by ``vqbench results compact``."""
        out = [f"{len(self.written)} compacted file(s) written, {self.removed} per-run file(s) removed",
               f"before: {self.before.files} files, {self.before.bytes / 1e6:.1f} MB; "
               f"after: {self.after.files} files, {self.after.bytes / 1e6:.1f} MB"]
        if self.checkpoints_removed:
            out.append(f"{self.checkpoints_removed} checkpoint(s) of complete runs removed")
        if self.kept_damaged:
            out.append(f"{len(self.kept_damaged)} damaged file(s) kept in place (delete them and rerun those runs)")
        if self.kept_changed:
            out.append(f"{len(self.kept_changed)} file(s) changed while compacting were kept: compact again")
        return out


@dataclass
class _Part:
    """One compacted file to write and the per-run files (with their stat at read time) it takes in."""

    path: Path
    table: pa.Table
    sources: list[tuple[Path, tuple[int, int]]]


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _plan_table(store: ResultStore, kind: str, task: str | None, damaged: list[Path]) -> _Part | None:
    """Merge table ``kind`` (of ``task``): its compacted file less the runs of readable per-run files, plus those."""
    schema, key = TABLES[kind]
    per_run, _ = store.table_files(kind, task)
    if not per_run:
        return None
    target = store.compacted_path(kind, task)
    parts: list[pa.Table] = []
    sources = []
    for path in per_run:
        stamp = _stamp(path)
        try:
            table = pq.read_table(path, schema=schema)
        except Exception as exc:  # damaged: keep it (it still hides its run's compacted rows, as before)
            warnings.warn(damaged_message(path, exc), stacklevel=3)
            damaged.append(path)
            continue
        parts.append(table.select(schema.names))
        sources.append((path, stamp))
    if target.is_file():
        try:
            old = pq.read_table(target, schema=schema).select(schema.names)
        except Exception as exc:
            raise UserError(f"compacted file {target} is damaged ({type(exc).__name__}: {exc}): restore it or "
                            "move it away, then rerun `vqbench results compact`") from None
        parts.insert(0, without_ids(old, key, per_run_ids(p for p, _ in sources)))
    if not sources:
        return None
    merged = sort_by_key(pa.concat_tables([t.cast(schema) for t in parts]), key)
    return _Part(target, merged.replace_schema_metadata(COMPACT_METADATA), sources)


def _write(part: _Part, kind: str) -> None:
    path = part.path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_table(part.table, path, compression="zstd", row_group_size=ROW_GROUP_ROWS[kind])


def _remove_sources(part: _Part, summary: CompactSummary) -> None:
    for path, stamp in part.sources:
        try:
            if _stamp(path) != stamp:
                summary.kept_changed.append(path)
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        summary.removed += 1


def _tasks(store: ResultStore, kind: str) -> list[str]:
    base = store.root / kind
    return sorted(p.name.removeprefix("task=") for p in base.glob("task=*") if p.is_dir())


def compact(root: str | os.PathLike[str], drop_checkpoints: bool = False) -> CompactSummary:
    """Compact the store at ``root`` (see the module's docstring); returns what it did."""
    store = ResultStore(root)
    if not store.root.is_dir():
        raise UserError(f"no results folder {store.root}: pass the store with --results")
    summary = CompactSummary(before=StoreSize.of(store.root), after=StoreSize())
    planned: list[tuple[str, _Part]] = []
    for kind in TABLES:
        for task in _tasks(store, kind) if kind in PER_TASK else [None]:
            part = _plan_table(store, kind, task, summary.kept_damaged)
            if part is not None:
                planned.append((kind, part))
    for kind, part in planned:  # every compacted file is in place ...
        _write(part, kind)
        summary.written.append(part.path)
    for _, part in planned:  # ... before any per-run file goes
        _remove_sources(part, summary)
    if drop_checkpoints:
        summary.checkpoints_removed = _drop_checkpoints(store)
    summary.after = StoreSize.of(store.root)
    return summary


def _drop_checkpoints(store: ResultStore) -> int:
    """Delete the checkpoints of complete runs (kept for failed or timed-out runs, which can resume from them)."""
    paths = sorted((store.root / "checkpoints").glob("*.pt"))
    records = store.run_records([p.stem for p in paths], ["status"])
    removed = 0
    for path in paths:
        if records.get(path.stem, {}).get("status") in COMPLETE_STATUSES:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
