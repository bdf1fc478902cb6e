"""What ``vqbench perf`` measures: the cells, their configuration, and a prediction of each cell's peak memory.

Standard library only at import time (the methods' constants are imported where a prediction needs them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vqbench.errors import UserError

MAIN_METHODS = ("vq", "vq-ema", "vq-kmeans", "vq-rotation", "simvq", "fsq", "lfq", "bsq")
SIZES = (1024, 65536, 262144, 1048576)
DIMS = (8, 32, 256)
N_VECTORS = 16384
DEFAULT_MEMORY_CAP_GIB = 20.0
DEFAULT_REPEATS = 5
DEFAULT_CELL_TIMEOUT_S = 900.0
MIN_TIMED_S = 1.0  # short cells repeat until their timed calls add up to this (see timing.timed)
MAX_TIMED_CALLS = 1000
INTERLEAVE_MAX_MS = 2000.0  # compared pairs whose calls take at most this are re-timed interleaved (run.retime_pair)
MATMUL_BLOCK_BYTES = 2**30  # the torch.mm reference works in row blocks whose output is at most this
VQP = "vector-quantize-pytorch"
GIB = 2**30


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


@dataclass(frozen=True)
class PerfConfig:
    """Everything one ``vqbench perf`` invocation is asked to do: which cells, how they are timed, where, limits.

    ``isolate`` (None: on CPU) runs each cell in a subprocess; ``interleave`` re-times each compared pair with the
    two implementations' calls alternating in one process; ``memory_cap_gib`` (None: no cap) refuses cells
    predicted above it; ``cell_timeout_s`` bounds an isolated cell. Bad sizes raise :class:`UserError`.
    """

    results: str | os.PathLike[str] = "results"  # rows go to RESULTS/perf/<perf_id>.parquet
    methods: Sequence[str] = MAIN_METHODS
    sizes: Sequence[int] = SIZES
    dims: Sequence[int] = DIMS
    n: int = N_VECTORS
    repeats: int = DEFAULT_REPEATS
    warmup: int = 1
    min_time_s: float = MIN_TIMED_S
    device: str = "auto"
    compare: bool = True
    search: bool = True
    memory_cap_gib: float | None = DEFAULT_MEMORY_CAP_GIB
    cell_timeout_s: float | None = DEFAULT_CELL_TIMEOUT_S
    isolate: bool | None = None
    interleave: bool = True

    def __post_init__(self) -> None:
        if (self.n < 1 or self.repeats < 1 or self.warmup < 0 or self.min_time_s < 0
                or not self.sizes or not self.dims or min([*self.sizes, *self.dims]) < 1):
            raise UserError("--n, --repeats, --sizes and --dims must be positive (--warmup and --min-time >= 0)")

    @property
    def memory_cap_bytes(self) -> int | None:
        """The memory cap in bytes (None: no cap)."""
        return None if self.memory_cap_gib is None else int(self.memory_cap_gib * GIB)

    def cell(self, implementation: str, method: str, codebook_size: int, dim: int, measure: str) -> Cell:
        """A cell at this configuration's N and timing settings."""
        return Cell(implementation, method, codebook_size, dim, self.n, measure, self.repeats, self.warmup,
                    self.min_time_s)


def plan_cells(config: PerfConfig) -> list[Cell]:
    """All cells of ``config``, smallest K first (so a deadline cuts the largest ones)."""
    cells = []
    for k in config.sizes:
        for d in config.dims:
            if config.search:
                cells.append(config.cell("vqbench", "nearest_code", k, d, "nearest_code_search"))
                cells.append(config.cell("torch.mm", "matmul", k, d, "matmul"))
            for method in config.methods:
                cells.append(config.cell("vqbench", method, k, d, "forward_backward"))
                if config.compare:
                    cells.append(config.cell(VQP, method, k, d, "forward_backward"))
    return cells


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
    """Rows of the torch.mm reference's row blocks: an output block of at most ``MATMUL_BLOCK_BYTES``."""
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
    k = cell_params(cell.method, cell.codebook_size)[1] if cell.measure == "forward_backward" else cell.codebook_size
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
