"""Measuring one cell in this process: time (:mod:`.timing`) plus peak memory, every failure as a status.

Peak memory is everything the cell holds at its peak: on CUDA ``torch.cuda.max_memory_allocated`` above what was
allocated before the cell; on CPU the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``) minus its resident set before the cell, exact only in a fresh process (:mod:`.isolate`).
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

from vqbench.commands.perf import timing
from vqbench.commands.perf.plan import GIB, Cell, Unsupported, predict_bytes

if TYPE_CHECKING:
    import torch


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA, CPU allocator or an address-space limit)."""
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text
                                              or "out of memory" in text)


def resident_bytes() -> tuple[int, int, int]:
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


def _failure(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, Unsupported):
        return {"status": "unsupported", "note": str(exc)}
    status = "out_of_memory" if is_oom(exc) else "error"
    return {"status": status, "note": f"{type(exc).__name__}: {str(exc)[:300]}"}


def measure_cell(cell: Cell, device: torch.device, memory_cap_bytes: int | None = None,
                 cpu_memory: bool = True) -> dict[str, Any]:
    """Measure ``cell`` in this process: a result dict (status, time_ms, peak_memory_mb, gflops, note, codebook_size).

    On CPU the peak is read from the process's resident set, which is exact only in a fresh process (see
    :func:`vqbench.commands.perf.isolate.measure_cell_isolated`); with ``cpu_memory=False`` (in-process
    measurements) it is left empty.

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
        base = resident_bytes()[0]
        peak_resettable = _reset_peak_rss()
    result: dict[str, Any]
    try:
        result = timing.run_cell(cell, device)
    except Exception as exc:  # every failure becomes a row; the table goes on
        result = _failure(exc)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        import resource

        hwm = resident_bytes()[1] if peak_resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = hwm - base
    if result["status"] == "ok" and (device.type == "cuda" or cpu_memory):
        result["peak_memory_mb"] = peak / 2**20
    result.setdefault("codebook_size", cell.codebook_size)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def prewarm(cell: Cell, device: torch.device) -> None:
    """Run a tiny version of ``cell`` once so that lazily loaded code and thread pools are not counted as its memory."""
    tiny = Cell(cell.implementation, cell.method, min(cell.codebook_size, 64), min(cell.dim, 8), min(cell.n, 64),
                cell.measure, repeats=1, warmup=0, min_time_s=0.0)
    try:
        timing.run_cell(tiny, device)
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
