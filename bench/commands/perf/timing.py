"""Timing one cell in this process: the training step, the nearest-code search, the tiled ``torch.mm`` reference,
and two implementations' calls interleaved. torch is imported inside each function.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from vqbench.commands.perf.adapters import build_vqbench, build_vqp
from vqbench.commands.perf.plan import MATMUL_BLOCK_BYTES, MAX_TIMED_CALLS, MIN_TIMED_S, Cell, matmul_block_rows

if TYPE_CHECKING:
    import torch


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int,
          min_time_s: float = MIN_TIMED_S) -> tuple[list[float], list[float]]:
    """(warmup call times, timed call times) in seconds.

    At least ``repeats`` timed calls, and more (up to ``MAX_TIMED_CALLS``) until they add up to ``min_time_s``:
    a millisecond cell is the median of hundreds of calls, not of a handful that one scheduler hiccup can move.
    """
    first, times = [], []
    for _ in range(warmup):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        first.append(time.perf_counter() - t0)
    while len(times) < repeats or (sum(times) < min_time_s and len(times) < MAX_TIMED_CALLS):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return first, times


def run_cell(cell: Cell, device: torch.device) -> dict[str, Any]:
    """Build and time ``cell``; returns status, time_ms, gflops, note, codebook_size (memory is measured outside)."""
    if cell.measure in ("nearest_code_search", "matmul"):
        return _run_search_cell(cell, device)
    step, true_k = training_step(cell, device)
    first, times = timed(step, device, cell.repeats, cell.warmup, cell.min_time_s)
    median = statistics.median(times)
    note = ""
    if first and first[0] > 2 * median and first[0] - median > 0.05:
        note = f"first call {1e3 * first[0]:.0f} ms (one-off initialisation)"
    return {"status": "ok", "time_ms": 1e3 * median, "gflops": None, "note": note, "codebook_size": true_k}


def _run_search_cell(cell: Cell, device: torch.device) -> dict[str, Any]:
    """The nearest-code search, or ``torch.mm`` on the same shapes: the faster of two tilings into a reused buffer."""
    import torch

    torch.manual_seed(0)
    g = torch.Generator(device="cpu").manual_seed(1234)
    n, d, k = cell.n, cell.dim, cell.codebook_size
    x = torch.randn(n, d, generator=g).to(device)
    codes = torch.randn(k, d, generator=g).to(device)
    if cell.measure == "nearest_code_search":
        from vqbench.methods.base import nearest_code

        _, times = timed(lambda: nearest_code(x, codes), device, cell.repeats, cell.warmup, cell.min_time_s)
        note = ""
    else:  # the faster of two tilings of the same product: the practical limit on this device
        from vqbench.methods.base import search_block

        best = None
        for rows, width in dict.fromkeys([(matmul_block_rows(n, k), k), search_block(device, n, k)]):
            tiled = _tiled_matmul(x, codes, rows, width)
            _, tiled_times = timed(tiled, device, cell.repeats, cell.warmup, cell.min_time_s)
            if best is None or statistics.median(tiled_times) < statistics.median(best[0]):
                best = (tiled_times, rows, width)
        times, rows, width = best
        note = (f"torch.mm in blocks of {rows} x {width} outputs (the faster of row blocks of <= "
                f"{MATMUL_BLOCK_BYTES // 2**20} MiB and the search's blocks)")
    median = statistics.median(times)
    return {"status": "ok", "time_ms": 1e3 * median, "gflops": 2.0 * n * k * d / median / 1e9, "note": note,
            "codebook_size": k}


def _tiled_matmul(x: torch.Tensor, codes: torch.Tensor, rows: int, width: int) -> Callable[[], None]:
    """``x @ codes.T`` computed block by block (``rows`` x ``width`` outputs) into one reused buffer."""
    import torch

    out = torch.empty(rows, width, device=x.device, dtype=x.dtype)

    def fn() -> None:
        for start in range(0, x.shape[0], rows):
            xb = x[start:start + rows]
            for c0 in range(0, codes.shape[0], width):
                cb = codes[c0:c0 + width]
                torch.mm(xb, cb.t(), out=out[:xb.shape[0], :cb.shape[0]])

    return fn


def training_step(cell: Cell, device: torch.device) -> tuple[Callable[[], None], int]:
    """(one forward+backward of ``cell``'s quantizer on fixed random inputs, the quantizer's true K)."""
    import torch

    torch.manual_seed(0)
    g = torch.Generator(device="cpu").manual_seed(1234)
    build = build_vqbench if cell.implementation == "vqbench" else build_vqp
    module, call, true_k = build(cell.method, cell.dim, cell.codebook_size)
    module.to(device).train()
    shape = (cell.n, cell.dim) if cell.implementation == "vqbench" else (1, cell.n, cell.dim)
    z = torch.randn(shape, generator=g).to(device).requires_grad_(True)
    upstream = torch.randn(shape, generator=g).to(device)

    def step() -> None:
        module.zero_grad(set_to_none=True)
        z.grad = None
        z_q, loss = call(z)
        total = (z_q * upstream).sum()
        if loss is not None and loss.requires_grad:
            total = total + loss
        total.backward()

    return step, true_k


def time_interleaved(cells: Sequence[Cell], device: torch.device) -> list[float]:
    """Median ms per call of each cell's training step, the cells' calls alternating in this one process.

    Every implementation sees the same background load (another job's memory traffic on a shared machine moves
    a millisecond cell by tens of percent between two processes run one after the other), so the ratio of the
    medians is what the comparison reports. Each cell gets its ``warmup`` calls first; then rounds of one call per
    cell until every cell has ``repeats`` calls and the rounds add up to the cells' summed ``min_time_s``.
    """
    steps = [training_step(cell, device)[0] for cell in cells]
    for cell, step in zip(cells, steps):
        timed(step, device, 0, cell.warmup, 0.0)
    times: list[list[float]] = [[] for _ in cells]
    min_repeats, min_total = max(c.repeats for c in cells), sum(c.min_time_s for c in cells)
    while len(times[0]) < min_repeats or (sum(map(sum, times)) < min_total and len(times[0]) < MAX_TIMED_CALLS):
        for step, slot in zip(steps, times):
            _, (elapsed,) = timed(step, device, 1, 0, 0.0)
            slot.append(elapsed)
    return [1e3 * statistics.median(t) for t in times]
