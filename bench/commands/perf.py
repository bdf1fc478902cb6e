"""``vqbench perf``: speed and memory of the quantizers, next to vector-quantize-pytorch and ``torch.mm``.

Three measures, one row each per cell (``vqbench.store.PERF_SCHEMA``, one Parquet file per invocation):

* ``forward_backward``: one training-mode forward of a quantizer on ``N`` random vectors ``z`` (N, dim) plus the
  backward of ``loss + sum(z_q * g)`` (``g`` a fixed random upstream gradient), for vqbench's registered method
  and, on the same inputs, vector-quantize-pytorch's equivalent (:func:`vqp_equivalent`).
  ``time_ms`` is the median over at least ``repeats`` timed calls (more for short cells, until they add up to
  ``min_time_s``) after ``warmup`` untimed ones (the first call is in the note when it is a one-off cost such as
  k-means initialisation). A compared pair whose calls take at most ``INTERLEAVE_MAX_MS`` is then re-timed with
  the two implementations' calls alternating in one process (:func:`time_interleaved`), so that both see the same
  background load; the note keeps the time measured alone. The vqbench row's note carries the ratio
  ``time(vqbench) / time(vector-quantize-pytorch)`` and the same for memory (below 1: vqbench is better).
* ``nearest_code_search``: :func:`vqbench.methods.base.nearest_code` on (N, dim) x (K, dim); ``gflops`` is the achieved
  rate of its ``2 N K dim`` multiply-adds.
* ``matmul``: ``torch.mm`` on the same shapes, the faster of two tilings into a reused output buffer (row blocks
  whose output is at most 1 GiB, so K = 2^20 fits, and the search's own blocks, :func:`vqbench.methods.base.search_block`):
  the practical limit of the search. The search row's note says which fraction of that rate it achieves.

On CPU the measuring processes keep freed memory for reuse (:func:`keep_freed_memory`), as PyTorch's caching
allocator does on GPUs: otherwise page faults that depend on the allocation history move millisecond cells by up
to 2x between two runs.

Peak memory (``peak_memory_mb``) is everything the cell holds at its peak: inputs, module, activations, gradients.
On CUDA it is ``torch.cuda.max_memory_allocated`` above what was allocated before the cell. On CPU each cell runs
in a fresh subprocess (isolation also protects the machine) and the peak is the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs`` after the imports) minus its resident set before the cell
built anything: allocations torch makes outside Python (which ``tracemalloc`` cannot see) are counted.

Cells that cannot fit are not attempted: :func:`predict_bytes` estimates a cell's peak (e.g. the N x K one-hot
and distance matrices of vector-quantize-pytorch: 64 GiB each for N = 16384, K = 2^20) and a cell above the memory
cap (default 20 GiB) gets an ``out_of_memory`` row saying so. As a second guard, a CPU subprocess runs under an
address-space limit of cap + slack, so a wrong estimate ends as an ``out_of_memory`` row, not a swapping machine.
A method that is not registered (or has no vector-quantize-pytorch equivalent) gets an ``unsupported`` row; any
other failure an ``error`` row with the message; nothing stops the table.

This module imports only the standard library at import time (the CLI builds its parser cheaply; the tables
need only pandas); torch, the methods and vector-quantize-pytorch are imported where a cell is measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from vqbench.provenance import device_label, package_versions

if TYPE_CHECKING:
    import pandas as pd
    import torch

MAIN_METHODS = ("vq", "vq-ema", "vq-kmeans", "vq-rotation", "simvq", "fsq", "lfq", "bsq")
SIZES = (1024, 65536, 262144, 1048576)
DIMS = (8, 32, 256)
N_VECTORS = 16384
DEFAULT_MEMORY_CAP_GIB = 20.0
DEFAULT_REPEATS = 5
DEFAULT_CELL_TIMEOUT_S = 900.0
MIN_TIMED_S = 1.0  # short cells repeat until their timed calls add up to this (see _timed)
MAX_TIMED_CALLS = 1000
INTERLEAVE_MAX_MS = 2000.0  # compared pairs whose calls take at most this are re-timed interleaved (see _retime_pair)
MATMUL_BLOCK_BYTES = 2**30  # the torch.mm reference works in row blocks whose output is at most this
VQP = "vector-quantize-pytorch"
GIB = 2**30
_RESULT_TAG = "VQBENCH_PERF_RESULT "


@dataclass(frozen=True)
class Cell:
    """One measurement: an implementation of one method at one (K, dim, N)."""

    implementation: str  # "vqbench" | "vector-quantize-pytorch" | "torch.mm"
    method: str  # registered method name; "nearest_code" / "matmul" for the search cells
    codebook_size: int  # the requested K (the row records the quantizer's true K)
    dim: int
    n: int
    measure: str  # forward_backward | nearest_code_search | matmul
    repeats: int = DEFAULT_REPEATS
    warmup: int = 1
    min_time_s: float = MIN_TIMED_S


class Unsupported(Exception):
    """The cell cannot be measured by construction (no such method, no equivalent, bad size)."""


# -- sizes and parameters ------------------------------------------------------------------------------------------
def fsq_levels(codebook_size: int) -> list[int] | None:
    """Levels of 8 and 4 whose product is exactly ``codebook_size`` = 2^b (b >= 4), else None.

    ``b = 3a + 2c`` with ``c`` in {0, 1, 2}: ``[8] * a + [4] * c``; e.g. 2^10 -> [8, 8, 4, 4], 2^20 -> [8] * 6 + [4].
    Both implementations get these levels (vector-quantize-pytorch needs levels > 2).
    """
    if codebook_size < 16 or codebook_size & (codebook_size - 1):
        return None
    bits = codebook_size.bit_length() - 1
    for fours in range(3):
        if (bits - 2 * fours) % 3 == 0 and bits - 2 * fours >= 0:
            return [8] * ((bits - 2 * fours) // 3) + [4] * fours
    return None  # pragma: no cover - every b >= 4 has a solution


def cell_params(method: str, codebook_size: int) -> tuple[dict[str, Any], int]:
    """vqbench method parameter overrides for a requested K, and the K the quantizer will really have."""
    if method == "fsq":
        levels = fsq_levels(codebook_size)
        if levels is not None:
            return {"levels": levels}, codebook_size
        from vqbench.methods.fsq import recommended_levels

        return {}, math.prod(recommended_levels(codebook_size))
    if method in ("lfq", "bsq"):
        return {}, 2 ** int(math.floor(math.log2(max(codebook_size, 2)) + 1e-9))
    return {}, codebook_size


def matmul_block_rows(n: int, k: int) -> int:
    return max(1, min(n, MATMUL_BLOCK_BYTES // (4 * max(k, 1))))


# -- memory prediction ---------------------------------------------------------------------------------------------
#: N x K float32 matrices alive at the peak of vector-quantize-pytorch 1.32's training forward+backward, measured
#: on CPU (N=2048, K=16384, dim=8: 6.0 for VectorQuantize, 7.1 with k-means init, 7.0 for LFQ, 1.0 for SimVQ) plus
#: a margin: VectorQuantize holds the cdist intermediates, the int64 one-hot (two floats' worth) and its float copy.
VQP_NK_FACTORS = {"vq": 6.5, "vq-rotation": 6.5, "vq-ema": 6.5, "vq-kmeans": 7.5, "simvq": 1.5, "lfq": 7.5,
                  "bsq": 7.5, "fsq": 0.0}


def _search_chunk_bytes() -> int:
    from vqbench.methods.base import SEARCH_CHUNK_ELEMENTS

    return 4 * SEARCH_CHUNK_ELEMENTS


def predict_bytes(cell: Cell) -> int:
    """A generous estimate of a cell's peak memory (bytes), used to refuse cells above the cap without trying."""
    _, k = cell_params(cell.method, cell.codebook_size) if cell.measure == "forward_backward" else ({},
                                                                                                 cell.codebook_size)
    n, d = cell.n, cell.dim
    nd, kd, nk = 4 * n * d, 4 * k * d, 4 * n * k
    chunk = _search_chunk_bytes()
    if cell.measure == "nearest_code_search":
        return nd + kd + 2 * chunk + 8 * n + 4 * k
    if cell.measure == "matmul":
        return nd + kd + 4 * matmul_block_rows(n, k) * k
    bits = max(1, int(math.log2(max(k, 2))))
    if cell.implementation == "vqbench":
        if cell.method == "fsq":
            return 32 * 4 * n * max(d, 8)
        if cell.method in ("lfq", "bsq"):
            return 32 * 4 * n * max(d, bits) + 8 * chunk + 8 * 4 * k * bits
        # measured: 2 (vq, vq-rotation: weight + grad), 3 (simvq), 5 (vq-ema) copies of the K x dim codebook
        codebook_copies = {"vq-ema": 6, "simvq": 4, "vq-kmeans": 5}.get(cell.method, 3)
        return codebook_copies * kd + 32 * nd + 4 * chunk
    factor = VQP_NK_FACTORS.get(cell.method, 6.0)
    if cell.method in ("lfq", "bsq"):
        return int(factor * nk) + 32 * 4 * n * max(d, bits) + 8 * 4 * k * bits
    return int(factor * nk) + 3 * kd + 32 * nd


# -- building the two implementations ------------------------------------------------------------------------------
def vqp_equivalent(method: str) -> str | None:
    """What vector-quantize-pytorch runs for ``method`` (None: it has no equivalent)."""
    return {
        "vq": "VectorQuantize(learnable_codebook=True, ema_update=False, rotation_trick=False)",
        "vq-ema": "VectorQuantize(decay=0.99, eps=1e-5, rotation_trick=False)",
        "vq-kmeans": "VectorQuantize(kmeans_init=True, kmeans_iters=10, learnable_codebook=True, ema_update=False, "
                     "rotation_trick=False)",
        "vq-rotation": "VectorQuantize(learnable_codebook=True, ema_update=False, rotation_trick=True)",
        "simvq": "SimVQ(rotation_trick=False)",
        "fsq": "FSQ(levels=<the same levels>)",
        "lfq": "LFQ(entropy_loss_weight=0.1, commitment_loss_weight=0.25), inv_temperature=100",
        "bsq": "LFQ(spherical=True, entropy_loss_weight=0.1), inv_temperature=1 (its codebook entropy is exact over "
               "all K codes; vqbench's bsq factorises it per bit)",
    }.get(method)


def _build_vqbench(method: str, dim: int, codebook_size: int) -> tuple[Any, Callable[[Any], tuple[Any, Any]], int]:
    from vqbench.errors import UserError
    from vqbench.registry import METHODS

    if method not in METHODS:
        raise Unsupported(f"method {method!r} is not registered in this vqbench")
    params, _ = cell_params(method, codebook_size)
    try:
        module = METHODS.create(method, dim=dim, codebook_size=codebook_size, **params)
    except UserError as exc:
        raise Unsupported(str(exc)) from None

    def call(z):
        out = module(z)
        return out.z_q, out.loss

    return module, call, int(module.codebook_size)


def _build_vqp(method: str, dim: int, codebook_size: int) -> tuple[Any, Callable[[Any], tuple[Any, Any]], int]:
    if vqp_equivalent(method) is None:
        raise Unsupported(f"vector-quantize-pytorch has no equivalent of {method!r}")
    try:
        import vector_quantize_pytorch as vqp
    except ImportError:
        raise Unsupported("vector-quantize-pytorch is not installed (pip install vector-quantize-pytorch)") from None
    k = codebook_size
    if method in ("vq", "vq-rotation", "vq-kmeans", "vq-ema"):
        kwargs: dict[str, Any] = dict(dim=dim, codebook_size=k, commitment_weight=0.25, rotation_trick=False)
        if method == "vq-ema":
            kwargs.update(decay=0.99, eps=1e-5)
        else:
            kwargs.update(learnable_codebook=True, ema_update=False)
        if method == "vq-rotation":
            kwargs["rotation_trick"] = True
        if method == "vq-kmeans":
            kwargs.update(kmeans_init=True, kmeans_iters=10)
        module = vqp.VectorQuantize(**kwargs)

        def call(z):
            q, _, loss = module(z)
            return q, loss
    elif method == "simvq":
        module = vqp.SimVQ(dim=dim, codebook_size=k, rotation_trick=False)

        def call(z):
            q, _, loss = module(z)
            return q, loss
    elif method == "fsq":
        levels = fsq_levels(k)
        if levels is None:
            from vqbench.methods.fsq import recommended_levels

            levels = recommended_levels(k)
        if min(levels) < 3:
            raise Unsupported(f"vector-quantize-pytorch's FSQ needs levels > 2 by default, got {levels}")
        module = vqp.FSQ(levels=levels, dim=dim)
        k = math.prod(levels)

        def call(z):
            q, _ = module(z)
            return q, None
    else:  # lfq, bsq
        if k < 2 or k & (k - 1):
            raise Unsupported(f"vector-quantize-pytorch's LFQ needs a power-of-two codebook size, got {k}")
        spherical = method == "bsq"
        module = vqp.LFQ(dim=dim, codebook_size=k, entropy_loss_weight=0.1, diversity_gamma=1.0,
                         commitment_loss_weight=0.0 if spherical else 0.25, spherical=spherical)
        inv_temperature = 1.0 if spherical else 100.0

        def call(z):
            ret = module(z, inv_temperature=inv_temperature)
            return ret.quantized, ret.entropy_aux_loss
    return module, call, k


# -- measuring one cell (in this process) --------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int,
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


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text
                                              or "out of memory" in text)


def _run_cell(cell: Cell, device: torch.device) -> dict[str, Any]:
    """Build and time ``cell``; returns status, time_ms, gflops, note, codebook_size (memory is measured outside)."""
    import torch

    torch.manual_seed(0)
    g = torch.Generator(device="cpu").manual_seed(1234)
    n, d, k = cell.n, cell.dim, cell.codebook_size
    if cell.measure in ("nearest_code_search", "matmul"):
        x = torch.randn(n, d, generator=g).to(device)
        codes = torch.randn(k, d, generator=g).to(device)
        if cell.measure == "nearest_code_search":
            from vqbench.methods.base import nearest_code

            fn: Callable[[], Any] = lambda: nearest_code(x, codes)
            note = ""
        else:  # the faster of two tilings of the same product: the practical limit on this device
            from vqbench.methods.base import search_block

            best = None
            for rows, width in dict.fromkeys([(matmul_block_rows(n, k), k), search_block(device, n, k)]):
                tiled = _tiled_matmul(x, codes, rows, width)
                _, tiled_times = _timed(tiled, device, cell.repeats, cell.warmup, cell.min_time_s)
                if best is None or statistics.median(tiled_times) < statistics.median(best[0]):
                    best = (tiled_times, rows, width)
            times, rows, width = best
            note = (f"torch.mm in blocks of {rows} x {width} outputs (the faster of row blocks of <= "
                    f"{MATMUL_BLOCK_BYTES // 2**20} MiB and the search's blocks)")
        if cell.measure == "nearest_code_search":
            _, times = _timed(fn, device, cell.repeats, cell.warmup, cell.min_time_s)
        median = statistics.median(times)
        return {"status": "ok", "time_ms": 1e3 * median, "gflops": 2.0 * n * k * d / median / 1e9, "note": note,
                "codebook_size": k}
    step, true_k = _training_step(cell, device)
    first, times = _timed(step, device, cell.repeats, cell.warmup, cell.min_time_s)
    median = statistics.median(times)
    note = ""
    if first and first[0] > 2 * median and first[0] - median > 0.05:
        note = f"first call {1e3 * first[0]:.0f} ms (one-off initialisation)"
    return {"status": "ok", "time_ms": 1e3 * median, "gflops": None, "note": note, "codebook_size": true_k}


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


def _training_step(cell: Cell, device: torch.device) -> tuple[Callable[[], None], int]:
    """(one forward+backward of ``cell``'s quantizer on fixed random inputs, the quantizer's true K)."""
    import torch

    torch.manual_seed(0)
    g = torch.Generator(device="cpu").manual_seed(1234)
    build = _build_vqbench if cell.implementation == "vqbench" else _build_vqp
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
    steps = [_training_step(cell, device)[0] for cell in cells]
    for cell, step in zip(cells, steps):
        _timed(step, device, 0, cell.warmup, 0.0)
    times: list[list[float]] = [[] for _ in cells]
    min_repeats, min_total = max(c.repeats for c in cells), sum(c.min_time_s for c in cells)
    while len(times[0]) < min_repeats or (sum(map(sum, times)) < min_total and len(times[0]) < MAX_TIMED_CALLS):
        for step, slot in zip(steps, times):
            _, (elapsed,) = _timed(step, device, 1, 0, 0.0)
            slot.append(elapsed)
    return [1e3 * statistics.median(t) for t in times]


def _resident_bytes() -> tuple[int, int, int]:
    """(VmRSS, VmHWM, VmSize) of this process in bytes (Linux), zeros elsewhere."""
    values = {"VmRSS": 0, "VmHWM": 0, "VmSize": 0}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in values:
                    values[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"], values["VmSize"]


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure_cell(cell: Cell, device: torch.device, memory_cap_bytes: int | None = None,
                 cpu_memory: bool = True) -> dict[str, Any]:
    """Measure ``cell`` in this process: a result dict (status, time_ms, peak_memory_mb, gflops, note, codebook_size).

    On CPU the peak is read from the process's resident set, which is exact only in a fresh process (see
    :func:`measure_cell_isolated`); with ``cpu_memory=False`` (in-process measurements) it is left empty.

    Refuses (``out_of_memory``) a cell whose :func:`predict_bytes` exceeds ``memory_cap_bytes``; catches out-of-memory
    as an ``out_of_memory`` result and :class:`Unsupported` as ``unsupported``; other failures are ``error`` results.
    """
    import torch

    predicted = predict_bytes(cell)
    if memory_cap_bytes is not None and predicted > memory_cap_bytes:
        return {"status": "out_of_memory", "codebook_size": cell.codebook_size,
                "note": f"not attempted: needs about {predicted / GIB:.1f} GiB (predicted), over the "
                        f"{memory_cap_bytes / GIB:.1f} GiB cap"}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _resident_bytes()[0]
        peak_resettable = _reset_peak_rss()
    result: dict[str, Any]
    try:
        result = _run_cell(cell, device)
    except Unsupported as exc:
        result = {"status": "unsupported", "note": str(exc)}
    except Exception as exc:  # every failure becomes a row; the table goes on
        if _is_oom(exc):
            result = {"status": "out_of_memory", "note": f"{type(exc).__name__}: {str(exc)[:300]}"}
        else:
            result = {"status": "error", "note": f"{type(exc).__name__}: {str(exc)[:300]}"}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        import resource

        hwm = _resident_bytes()[1] if peak_resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = hwm - base
    if result["status"] == "ok" and (device.type == "cuda" or cpu_memory):
        result["peak_memory_mb"] = peak / 2**20
    result.setdefault("codebook_size", cell.codebook_size)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# -- measuring one cell in a subprocess (CPU) ---------------------------------------------------------------------
def _prewarm(cell: Cell, device: torch.device) -> None:
    """Run a tiny version of ``cell`` once so that lazily loaded code and thread pools are not counted as its memory."""
    tiny = Cell(cell.implementation, cell.method, min(cell.codebook_size, 64), min(cell.dim, 8), min(cell.n, 64),
                cell.measure, repeats=1, warmup=0, min_time_s=0.0)
    try:
        _run_cell(tiny, device)
    except Exception:  # the real cell reports the failure
        pass


def keep_freed_memory() -> bool:
    """Make glibc's allocator keep and reuse freed memory: allocations up to 32 MiB come from the heap, which is
    trimmed only above 2 GiB of free space (``mallopt``). Returns whether it applied (glibc only).

    By default glibc maps each large block fresh from the kernel and unmaps it on free, so a millisecond call that
    allocates a few 16 MiB activations pays page faults whose number depends on the process's allocation history:
    the same FSQ cell measured 0.97x and 1.84x of vector-quantize-pytorch in two runs. With freed memory reused
    (what PyTorch's caching allocator does on GPUs) it measured 0.95-0.99x in repeated runs.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (malloc.h)
        return bool(libc.mallopt(mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def _worker_main() -> int:
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

        size = _resident_bytes()[2]
        if size:  # second guard: an underestimated cell fails to allocate instead of exhausting the machine
            limit = size + int(cap) + 2 * GIB
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if "interleave" in request:
        cells = [Cell(**c) for c in request["interleave"]]
        try:
            result = {"status": "ok", "times_ms": time_interleaved(cells, device)}
        except Exception as exc:
            result = {"status": "error", "note": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(_RESULT_TAG + json.dumps(result), flush=True)
        return 0
    cell = Cell(**request["cell"])
    _prewarm(cell, device)
    result = measure_cell(cell, device, cap)
    print(_RESULT_TAG + json.dumps(result), flush=True)
    return 0


def time_interleaved_isolated(cells: Sequence[Cell], device: str, memory_cap_bytes: int | None,
                              timeout_s: float | None = DEFAULT_CELL_TIMEOUT_S) -> dict[str, Any]:
    """:func:`time_interleaved` in a fresh Python process: ``{"status", "times_ms" | "note"}``."""
    request = {"interleave": [asdict(c) for c in cells], "device": device, "cap": memory_cap_bytes}
    return _run_worker(request, cells[0], timeout_s)


def measure_cell_isolated(cell: Cell, device: str, memory_cap_bytes: int | None,
                          timeout_s: float | None = DEFAULT_CELL_TIMEOUT_S) -> dict[str, Any]:
    """:func:`measure_cell` in a fresh Python process (exact peak memory on CPU; a crash or kill is a row)."""
    return _run_worker({"cell": asdict(cell), "device": device, "cap": memory_cap_bytes}, cell, timeout_s)


def _run_worker(request_data: dict[str, Any], cell: Cell, timeout_s: float | None) -> dict[str, Any]:
    request = json.dumps(request_data)
    try:
        proc = subprocess.run([sys.executable, "-m", "vqbench.commands.perf", "--worker"], input=request, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "error", "codebook_size": cell.codebook_size,
                "note": f"timed out after {timeout_s:.0f} s (the cell's time limit)"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG):])
    if proc.returncode < 0 and -proc.returncode == 9:
        return {"status": "out_of_memory", "codebook_size": cell.codebook_size,
                "note": "the worker was killed (SIGKILL): most likely out of memory"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "error", "codebook_size": cell.codebook_size,
            "note": f"worker exited with {proc.returncode}: {' | '.join(tail)[:300]}"}


# -- planning, running, storing ------------------------------------------------------------------------------------
def plan_cells(methods: Sequence[str] = MAIN_METHODS, sizes: Sequence[int] = SIZES, dims: Sequence[int] = DIMS,
               n: int = N_VECTORS, repeats: int = DEFAULT_REPEATS, warmup: int = 1, compare: bool = True,
               search: bool = True, min_time_s: float = MIN_TIMED_S) -> list[Cell]:
    """All cells, smallest K first (so a deadline cuts the largest ones)."""
    cells = []
    timing = dict(repeats=repeats, warmup=warmup, min_time_s=min_time_s)
    for k in sizes:
        for d in dims:
            if search:
                cells.append(Cell("vqbench", "nearest_code", k, d, n, "nearest_code_search", **timing))
                cells.append(Cell("torch.mm", "matmul", k, d, n, "matmul", **timing))
            for method in methods:
                cells.append(Cell("vqbench", method, k, d, n, "forward_backward", **timing))
                if compare:
                    cells.append(Cell(VQP, method, k, d, n, "forward_backward", **timing))
    return cells


def versions() -> str:
    import torch

    out: dict[str, Any] = {"vqbench": None, "torch": None, "vector-quantize-pytorch": None,
                           **package_versions(("vqbench", "torch", "vector-quantize-pytorch"))}
    out["allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return json.dumps(out, sort_keys=True)


def new_perf_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def annotate_ratios(rows: list[dict[str, Any]]) -> None:
    """Append to each vqbench row's note its ratio to the matching vector-quantize-pytorch / torch.mm row."""
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["device"], r["codebook_size"], r["dim"], r["n"]

    theirs = {(*key(r), r["method"]): r for r in rows
              if r["implementation"] == VQP and r["status"] == "ok"}
    mm = {key(r): r for r in rows if r["measure"] == "matmul" and r["status"] == "ok"}
    for r in rows:
        if r["implementation"] != "vqbench" or r["status"] != "ok":
            continue
        extra = ""
        if r["measure"] == "forward_backward" and (*key(r), r["method"]) in theirs:
            t = theirs[(*key(r), r["method"])]
            extra = f"time x{r['time_ms'] / t['time_ms']:.2f}"
            if r["peak_memory_mb"] and t["peak_memory_mb"]:
                extra += f", memory x{r['peak_memory_mb'] / t['peak_memory_mb']:.2f}"
            extra += f" of {VQP}"
        elif r["measure"] == "nearest_code_search" and key(r) in mm and mm[key(r)]["gflops"]:
            extra = f"{100 * r['gflops'] / mm[key(r)]['gflops']:.0f}% of torch.mm's rate"
        if extra and extra not in (r["note"] or ""):
            r["note"] = "; ".join(p for p in (r["note"], extra) if p)


def run_perf(results: str | os.PathLike[str] = "results", methods: Sequence[str] = MAIN_METHODS,
             sizes: Sequence[int] = SIZES, dims: Sequence[int] = DIMS, n: int = N_VECTORS,
             repeats: int = DEFAULT_REPEATS, device: str = "auto", compare: bool = True, search: bool = True, *,
             warmup: int = 1, min_time_s: float = MIN_TIMED_S, memory_cap_gib: float | None = DEFAULT_MEMORY_CAP_GIB,
             cell_timeout_s: float | None = DEFAULT_CELL_TIMEOUT_S, isolate: bool | None = None,
             cells: Iterable[Cell] | None = None, deadline: float | None = None, perf_id: str | None = None,
             rows: list[dict[str, Any]] | None = None, log: Callable[[str], None] | None = print,
             interleave: bool = True) -> str:
    """Measure the table and write it (rewritten after every cell) to ``results/perf/<perf_id>.parquet``.

    ``isolate`` (default: on CPU) runs each cell in a subprocess; ``interleave`` re-times each compared pair with
    the two implementations' calls alternating in one process (:func:`time_interleaved`); ``deadline`` (a
    ``time.monotonic()`` value) stops starting new cells. ``rows`` (a list, extended in place) holds rows measured
    earlier under the same ``perf_id`` that the file keeps. Returns the perf id.
    """
    from vqbench.runner import select_device
    from vqbench.store import ResultStore

    dev = select_device(device)
    isolate = dev.type == "cpu" if isolate is None else isolate
    if dev.type == "cpu" and not isolate:
        keep_freed_memory()  # (the isolated workers do it themselves)
    cap = None if memory_cap_gib is None else int(memory_cap_gib * GIB)
    perf_id = perf_id or new_perf_id()
    store = ResultStore(results)
    label, vers = device_label(dev), versions()
    todo = list(cells) if cells is not None else plan_cells(methods, sizes, dims, n, repeats, warmup, compare, search,
                                                                       min_time_s)
    rows = [] if rows is None else rows
    for i, cell in enumerate(todo):
        if deadline is not None and time.monotonic() > deadline:
            if log:
                log(f"time budget spent: {len(todo) - i} cell(s) not measured")
            break
        if isolate:
            result = measure_cell_isolated(cell, str(dev), cap, cell_timeout_s)
        else:
            _prewarm(cell, dev)  # lazily created kernels and library workspaces are not this cell's memory
            result = measure_cell(cell, dev, cap, cpu_memory=False)
        row = {"perf_id": perf_id, "created_at": datetime.now(timezone.utc), "device": label,
               "implementation": cell.implementation, "method": cell.method,
               "codebook_size": int(result.get("codebook_size") or cell.codebook_size), "dim": cell.dim,
               "n": cell.n, "measure": cell.measure, "time_ms": result.get("time_ms"),
               "peak_memory_mb": result.get("peak_memory_mb"), "gflops": result.get("gflops"),
               "status": result["status"], "note": result.get("note") or "", "versions": vers,
               "_requested_k": cell.codebook_size}
        rows.append(row)
        if interleave and cell.implementation == VQP and cell.measure == "forward_backward":
            _retime_pair(rows, cell, dev, isolate, cap, cell_timeout_s, log)
        annotate_ratios(rows)
        store.write_perf(perf_id, rows)
        if log:
            log(format_row(row))
    return perf_id


def _retime_pair(rows: list[dict[str, Any]], theirs_cell: Cell, dev: torch.device, isolate: bool, cap: int | None,
                 timeout_s: float | None, log: Callable[[str], None] | None) -> None:
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
    if cap is not None and predict_bytes(ours_cell) + predict_bytes(theirs_cell) > cap:
        return
    if isolate:
        result = time_interleaved_isolated([ours_cell, theirs_cell], str(dev), cap, timeout_s)
    else:
        try:
            result = {"status": "ok", "times_ms": time_interleaved([ours_cell, theirs_cell], dev)}
        except Exception as exc:
            result = {"status": "error", "note": f"{type(exc).__name__}: {str(exc)[:300]}"}
    if result["status"] != "ok":
        if log:
            log(f"interleaved timing of {theirs_cell.method} failed ({result.get('note', '')}); kept the times alone")
        return
    for row, ms in zip((ours, theirs), result["times_ms"]):
        alone = row["time_ms"]
        row["time_ms"] = ms
        note = f"time interleaved with the other implementation in one process (alone: {alone:.3g} ms)"
        row["note"] = "; ".join(p for p in (row["note"], note) if p)


def format_row(row: dict[str, Any]) -> str:
    time_s = f"{row['time_ms']:10.2f} ms" if row.get("time_ms") is not None else f"{'':13}"
    mem = f"{row['peak_memory_mb']:9.1f} MB" if row.get("peak_memory_mb") is not None else f"{'':12}"
    rate = f"{row['gflops']:8.1f} GFLOP/s" if row.get("gflops") is not None else ""
    return (f"{row['method']:<12} K={row['codebook_size']:<8} dim={row['dim']:<4} N={row['n']:<6} "
            f"{row['implementation']:<24} {row['measure']:<19} {row['status']:<13} {time_s} {mem} {rate} "
            f"{row['note']}").rstrip()


# -- tables from stored rows (pandas only) -------------------------------------------------------------------------
def _keys(rows: pd.DataFrame, keys: list[str]) -> list[str]:
    return (["perf_id"] if "perf_id" in rows.columns else []) + keys


def _numeric(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    table = table.copy()
    for c in columns:
        table[c] = pd.to_numeric(table[c], errors="coerce")
    return table


def ratio_table(rows: pd.DataFrame) -> pd.DataFrame:
    """vqbench vs vector-quantize-pytorch per cell: times, peaks, and ratios vqbench / theirs (< 1: vqbench wins)."""
    keys = _keys(rows, ["device", "method", "codebook_size", "dim", "n"])
    fb = _numeric(rows[rows["measure"] == "forward_backward"], ["time_ms", "peak_memory_mb"])
    cols = keys + ["time_ms", "peak_memory_mb", "status"]
    ours = fb[fb["implementation"] == "vqbench"][cols]
    theirs = fb[fb["implementation"] == VQP][cols]
    table = ours.merge(theirs, on=keys, how="left", suffixes=("", "_vqp"))
    table["time_ratio"] = table["time_ms"] / table["time_ms_vqp"]
    table["memory_ratio"] = table["peak_memory_mb"] / table["peak_memory_mb_vqp"]
    return table.sort_values(keys).reset_index(drop=True)


def search_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Nearest-code search rate vs torch.mm's on the same shapes: ``fraction`` = search GFLOP/s / mm GFLOP/s."""
    keys = _keys(rows, ["device", "codebook_size", "dim", "n"])
    rows = _numeric(rows, ["time_ms", "gflops"])
    search = rows[rows["measure"] == "nearest_code_search"][keys + ["time_ms", "gflops", "status"]]
    mm = rows[rows["measure"] == "matmul"][keys + ["time_ms", "gflops", "status"]]
    table = search.merge(mm, on=keys, how="left", suffixes=("", "_mm"))
    table["fraction"] = table["gflops"] / table["gflops_mm"]
    return table.sort_values(keys).reset_index(drop=True)


def summary_text(rows: pd.DataFrame) -> str:
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.width", 250, "display.float_format", "{:.3g}".format):
        parts = []
        ratios = ratio_table(rows)
        if not ratios.empty:
            parts.append("forward+backward, vqbench vs vector-quantize-pytorch (ratio < 1: vqbench faster/smaller)\n"
                         + ratios.drop(columns=["device", "perf_id"], errors="ignore").to_string(index=False))
        search = search_table(rows)
        if not search.empty:
            parts.append("nearest-code search vs torch.mm on the same shapes\n"
                         + search.drop(columns=["device", "perf_id"], errors="ignore").to_string(index=False))
    return "\n\n".join(parts)


# -- command line --------------------------------------------------------------------------------------------------
def int_list(text: str) -> list[int]:
    try:
        return [int(float(v)) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def str_list(text: str) -> list[str]:
    return [v for v in text.replace(" ", "").split(",") if v]


def add_perf_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vqbench perf``; the CLI: ``add_perf_arguments(p); p.set_defaults(func=cmd_perf)``."""
    parser.add_argument("--results", default="results", help="results folder (rows go to RESULTS/perf/)")
    parser.add_argument("--methods", type=str_list, default=list(MAIN_METHODS),
                        help=f"comma-separated method names (default: {','.join(MAIN_METHODS)})")
    parser.add_argument("--sizes", type=int_list, default=list(SIZES),
                        help="comma-separated codebook sizes K (default: 1024,65536,262144,1048576)")
    parser.add_argument("--dims", type=int_list, default=list(DIMS), help="comma-separated dims (default: 8,32,256)")
    parser.add_argument("--n", type=int, default=N_VECTORS, help=f"input vectors per call (default: {N_VECTORS})")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed calls per cell (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--min-time", type=float, default=MIN_TIMED_S,
                        help=f"seconds of timed calls per cell at least: short cells repeat more than --repeats "
                             f"times (default: {MIN_TIMED_S})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--memory-cap-gib", type=float, default=DEFAULT_MEMORY_CAP_GIB,
                        help="cells predicted to need more are recorded as out_of_memory without trying")
    parser.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT_S,
                        help="seconds per cell in a subprocess (CPU) before it is recorded as an error")
    parser.add_argument("--in-process", dest="isolate", action="store_false", default=None,
                        help="measure every cell in this process (the CUDA default; on CPU peak memory is then not "
                             "recorded, since only a fresh process shows it exactly)")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip vector-quantize-pytorch")
    parser.add_argument("--no-interleave", dest="interleave", action="store_false",
                        help="keep each implementation's time measured alone (default: compared pairs whose calls "
                             f"take <= {INTERLEAVE_MAX_MS:.0f} ms are re-timed with their calls alternating)")
    parser.add_argument("--no-search", dest="search", action="store_false",
                        help="skip the nearest-code search vs torch.mm cells")


def cmd_perf(args: argparse.Namespace) -> int:
    from vqbench.errors import UserError
    from vqbench.store import load_perf

    if (args.n < 1 or args.repeats < 1 or args.warmup < 0 or args.min_time < 0
            or min(args.sizes + args.dims, default=0) < 1):
        raise UserError("--n, --repeats, --sizes and --dims must be positive (--warmup and --min-time >= 0)")
    perf_id = run_perf(args.results, args.methods, args.sizes, args.dims, args.n, args.repeats, args.device,
                       args.compare, args.search, warmup=args.warmup, min_time_s=args.min_time,
                       memory_cap_gib=args.memory_cap_gib, cell_timeout_s=args.cell_timeout, isolate=args.isolate,
                       interleave=args.interleave)
    rows = load_perf(args.results)
    print(summary_text(rows[rows["perf_id"] == perf_id]))
    print(f"perf {perf_id}: rows in {args.results}/perf/{perf_id}.parquet")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker_main()
    parser = argparse.ArgumentParser(prog="python -m vqbench.commands.perf", description=__doc__.split("\n")[0])
    add_perf_arguments(parser)
    return cmd_perf(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
