"""Running a perf table: each planned cell measured (here or in a worker), rows written after every cell."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from vqbench.commands.perf.isolate import measure_cell_isolated, time_interleaved_isolated
from vqbench.commands.perf.measure import keep_freed_memory, measure_cell, prewarm
from vqbench.commands.perf.plan import INTERLEAVE_MAX_MS, VQP, Cell, PerfConfig, plan_cells, predict_bytes
from vqbench.commands.perf.report import annotate_ratios, format_row
from vqbench.commands.perf.timing import time_interleaved
from vqbench.provenance import device_label, package_versions

if TYPE_CHECKING:
    import torch

Log = Callable[[str], None]


def versions() -> str:
    """The ``versions`` column: vqbench, torch, vector-quantize-pytorch, Python, and whether TF32 matmuls are on."""
    import torch

    out: dict[str, Any] = {"vqbench": None, "torch": None, "vector-quantize-pytorch": None,
                           **package_versions(("vqbench", "torch", "vector-quantize-pytorch"))}
    out["allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return json.dumps(out, sort_keys=True)


def new_perf_id() -> str:
    """A fresh perf id: UTC time and 6 random hex digits."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def perf_row(perf_id: str, device: str, versions_json: str, cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
    """The stored row (``vqbench.store.PERF_SCHEMA``, plus ``_requested_k``) of ``cell``'s ``result``."""
    return {"perf_id": perf_id, "created_at": datetime.now(timezone.utc), "device": device,
            "implementation": cell.implementation, "method": cell.method,
            "codebook_size": int(result.get("codebook_size") or cell.codebook_size), "dim": cell.dim,
            "n": cell.n, "measure": cell.measure, "time_ms": result.get("time_ms"),
            "peak_memory_mb": result.get("peak_memory_mb"), "gflops": result.get("gflops"),
            "status": result["status"], "note": result.get("note") or "", "versions": versions_json,
            "_requested_k": cell.codebook_size}


@dataclass(frozen=True)
class Measurer:
    """Where cells are measured: in this process, or each in a fresh worker process (``isolate``)."""

    device: torch.device
    isolate: bool
    cap: int | None  # memory cap in bytes
    timeout_s: float | None  # per isolated cell

    def measure(self, cell: Cell) -> dict[str, Any]:
        """One cell's result dict (see :func:`measure_cell`)."""
        if self.isolate:
            return measure_cell_isolated(cell, str(self.device), self.cap, self.timeout_s)
        prewarm(cell, self.device)  # lazily created kernels and library workspaces are not this cell's memory
        return measure_cell(cell, self.device, self.cap, cpu_memory=False)

    def interleave(self, cells: list[Cell]) -> dict[str, Any]:
        """``{"status": "ok", "times_ms": [...]}`` of :func:`time_interleaved`, or ``{"status", "note"}``."""
        if self.isolate:
            return time_interleaved_isolated(cells, str(self.device), self.cap, self.timeout_s)
        try:
            return {"status": "ok", "times_ms": time_interleaved(cells, self.device)}
        except Exception as exc:
            return {"status": "error", "note": f"{type(exc).__name__}: {str(exc)[:300]}"}


def run_perf(config: PerfConfig, cells: Iterable[Cell] | None = None, *, deadline: float | None = None,
             perf_id: str | None = None, rows: list[dict[str, Any]] | None = None, log: Log | None = print) -> str:
    """Measure ``cells`` (default: :func:`plan_cells` of ``config``) and write the rows, rewritten after every cell,
    to ``<config.results>/perf/<perf_id>.parquet``. Returns the perf id.

    ``deadline`` (a ``time.monotonic()`` value) stops starting new cells. ``rows`` (a list, extended in place) holds
    rows measured earlier under the same ``perf_id`` that the file keeps.
    """
    from vqbench.runner import select_device
    from vqbench.store import ResultStore

    dev = select_device(config.device)
    isolate = dev.type == "cpu" if config.isolate is None else config.isolate
    if dev.type == "cpu" and not isolate:
        keep_freed_memory()  # (the isolated workers do it themselves)
    measurer = Measurer(dev, isolate, config.memory_cap_bytes, config.cell_timeout_s)
    perf_id = perf_id or new_perf_id()
    store = ResultStore(config.results)
    label, vers = device_label(dev), versions()
    todo = list(cells) if cells is not None else plan_cells(config)
    rows = [] if rows is None else rows
    for i, cell in enumerate(todo):
        if deadline is not None and time.monotonic() > deadline:
            if log:
                log(f"time budget spent: {len(todo) - i} cell(s) not measured")
            break
        row = perf_row(perf_id, label, vers, cell, measurer.measure(cell))
        rows.append(row)
        if config.interleave and cell.implementation == VQP and cell.measure == "forward_backward":
            retime_pair(rows, cell, measurer, log)
        annotate_ratios(rows)
        store.write_perf(perf_id, rows)
        if log:
            log(format_row(row))
    return perf_id


def retime_pair(rows: list[dict[str, Any]], theirs_cell: Cell, measurer: Measurer, log: Log | None) -> None:
    """Re-time a measured (vqbench, vector-quantize-pytorch) pair with their calls interleaved in one process.

    Only for pairs that both ran, whose calls take at most ``INTERLEAVE_MAX_MS`` (longer calls average out the
    background load by themselves) and whose predicted peaks fit the cap together. Both rows' ``time_ms`` become the
    interleaved medians; their peak memory stays the one measured alone.
    """
    theirs = rows[-1]
    same = [r for r in rows[:-1] if r["implementation"] == "vqbench" and r["measure"] == "forward_backward"
            and (r["method"], r["dim"], r["n"]) == (theirs["method"], theirs["dim"], theirs["n"])
            and r.get("_requested_k") == theirs_cell.codebook_size]
    if not same or same[-1]["status"] != "ok" or theirs["status"] != "ok":
        return
    ours = same[-1]
    if max(ours["time_ms"], theirs["time_ms"]) > INTERLEAVE_MAX_MS:
        return
    ours_cell = Cell("vqbench", theirs_cell.method, theirs_cell.codebook_size, theirs_cell.dim, theirs_cell.n,
                     "forward_backward", theirs_cell.repeats, theirs_cell.warmup, theirs_cell.min_time_s)
    if measurer.cap is not None and predict_bytes(ours_cell) + predict_bytes(theirs_cell) > measurer.cap:
        return
    result = measurer.interleave([ours_cell, theirs_cell])
    if result["status"] != "ok":
        if log:
            log(f"interleaved timing of {theirs_cell.method} failed ({result.get('note', '')}); kept the times alone")
        return
    for row, ms in zip((ours, theirs), result["times_ms"]):
        alone = row["time_ms"]
        row["time_ms"] = ms
        note = f"time interleaved with the other implementation in one process (alone: {alone:.3g} ms)"
        row["note"] = "; ".join(p for p in (row["note"], note) if p)
