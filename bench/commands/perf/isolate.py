"""Measuring one cell in a fresh Python process: ``python -m vqbench.commands.perf --worker``.

The parent writes a JSON request on the worker's stdin and reads back one tagged result line. On CPU a fresh
process is the only place where the peak resident set is the cell's own, and isolation protects the machine: the
worker runs under an address-space limit of cap + slack, so an underestimated cell fails to allocate (an
``out_of_memory`` row) instead of swapping; a crash, kill or timeout is a row too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from vqbench.commands.perf.measure import keep_freed_memory, measure_cell, prewarm, resident_bytes
from vqbench.commands.perf.plan import DEFAULT_CELL_TIMEOUT_S, GIB, Cell
from vqbench.commands.perf.timing import time_interleaved

WORKER_MODULE = "vqbench.commands.perf"
RESULT_TAG = "VQBENCH_PERF_RESULT "


def worker_main() -> int:
    """``python -m vqbench.commands.perf --worker``: read {cell, device, cap} JSON on stdin, print one result line."""
    keep_freed_memory()
    request = json.loads(sys.stdin.read())
    import torch

    import vqbench.methods  # noqa: F401  - imported before the baseline so that its memory is not the cell's
    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError:
        pass
    cap = request.get("cap")
    device = torch.device(request["device"])
    if cap is not None and device.type == "cpu":
        import resource

        size = resident_bytes()[2]
        if size:  # second guard: an underestimated cell fails to allocate instead of exhausting the machine
            limit = size + int(cap) + 2 * GIB
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if "interleave" in request:
        cells = [Cell(**c) for c in request["interleave"]]
        try:
            result = {"status": "ok", "times_ms": time_interleaved(cells, device)}
        except Exception as exc:
            result = {"status": "error", "note": f"{type(exc).__name__}: {str(exc)[:300]}"}
    else:
        cell = Cell(**request["cell"])
        prewarm(cell, device)
        result = measure_cell(cell, device, cap)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def measure_cell_isolated(cell: Cell, device: str, memory_cap_bytes: int | None,
                          timeout_s: float | None = DEFAULT_CELL_TIMEOUT_S) -> dict[str, Any]:
    """:func:`measure_cell` in a fresh Python process (exact peak memory on CPU; a crash or kill is a row)."""
    return _run_worker({"cell": asdict(cell), "device": device, "cap": memory_cap_bytes}, cell, timeout_s)


def time_interleaved_isolated(cells: Sequence[Cell], device: str, memory_cap_bytes: int | None,
                              timeout_s: float | None = DEFAULT_CELL_TIMEOUT_S) -> dict[str, Any]:
    """:func:`time_interleaved` in a fresh Python process: ``{"status", "times_ms" | "note"}``."""
    request = {"interleave": [asdict(c) for c in cells], "device": device, "cap": memory_cap_bytes}
    return _run_worker(request, cells[0], timeout_s)


def _run_worker(request_data: dict[str, Any], cell: Cell, timeout_s: float | None) -> dict[str, Any]:
    request = json.dumps(request_data)
    try:
        proc = subprocess.run([sys.executable, "-m", WORKER_MODULE, "--worker"], input=request, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "error", "codebook_size": cell.codebook_size,
                "note": f"timed out after {timeout_s:.0f} s (the cell's time limit)"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    if proc.returncode < 0 and -proc.returncode == 9:
        return {"status": "out_of_memory", "codebook_size": cell.codebook_size,
                "note": "the worker was killed (SIGKILL): most likely out of memory"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "error", "codebook_size": cell.codebook_size,
            "note": f"worker exited with {proc.returncode}: {' | '.join(tail)[:300]}"}
