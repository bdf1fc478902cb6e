"""Pieces every codebook quantizer shares: the blocked nearest-code and inner-product searches, the
data-relative init, and :class:`CodebookQuantizer`, the base class that owns the opening of ``forward``.

The Quantizer contract itself lives in :mod:`vqbench.quantizer` (see ARCHITECTURE.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vqbench.distributed import all_reduce_sum_, global_rows
from vqbench.methods.sync import distributed, shared_random_stream
from vqbench.quantizer import QuantizeOutput, Quantizer, check_last_dim

# Largest number of distance entries (rows x codes) one chunk of the nearest-code search may hold:
# 2**24 float32 = 64 MiB, so K = 1,048,576 codes works without an N x K matrix.
SEARCH_CHUNK_ELEMENTS = 2**24
# The CPU nearest-code search works in cache-sized blocks of distances (see ``search_block``).
CPU_SEARCH_BLOCK_CODES = 1024
CPU_SEARCH_BLOCK_ELEMENTS = 2**20
ROW_MIN_GROUP = 64  # columns per group of the two-level row minimum on CPU (see ``_row_min``)

__all__ = ["CODEBOOK_INITS", "DATA_INIT_SYNC", "SEARCH_CHUNK_ELEMENTS", "CodebookQuantizer", "blocked_argmin",
           "data_relative_codes", "max_inner_product", "nearest_code", "search_block", "squared_norms",
           "straight_through"]


def search_block(device: torch.device, n: int, k: int) -> tuple[int, int]:
    """(rows, codes) of one block of the nearest-code search on ``device`` for ``n`` queries and ``k`` codes.

    On CPU a block of 1024 x 1024 distances (4 MiB) stays in the L2/L3 cache between the matmul that writes it and
    the min that reads it; with N x K blocks of 64 MiB that round trip through DRAM (plus the page faults of a
    fresh allocation per chunk) cost 3-4x the matmul itself at dim 8-32. On GPUs large blocks keep the device busy:
    up to ``SEARCH_CHUNK_ELEMENTS`` distances, at most 16384 codes wide.
    """
    if device.type == "cpu":
        codes_per_block, elements = CPU_SEARCH_BLOCK_CODES, CPU_SEARCH_BLOCK_ELEMENTS
    else:
        codes_per_block, elements = 16384, SEARCH_CHUNK_ELEMENTS
    codes_per_block = max(1, min(k, codes_per_block))
    return max(1, min(n, elements // codes_per_block)), codes_per_block


@torch.no_grad()
def blocked_argmin(x: Tensor, codes: Tensor, code_bias: Tensor | None, alpha: float,
                   block: tuple[int, int] | None = None, centre: Tensor | None = None) -> Tensor:
    """``argmin_k (code_bias_k + alpha * (x_i - m) . (c_k - m))`` for each row of ``x`` (N, d) over ``codes`` (K, d).

    ``m`` is ``centre`` (d,), or zero. Evaluated in blocks of ``block = (rows, codes)`` (default
    :func:`search_block`) written into one reused buffer, with a running minimum over the code blocks: memory
    O(rows * (codes + K / codes) + (rows + codes) * d), never O(N K). A centre is subtracted from each block of rows
    and of codes as it is used (no centred copy of the codebook). Ties resolve to the lowest index within a block and
    to the first block across blocks.
    """
    x = x.detach()
    codes = codes.detach().to(x.dtype)
    n, k = x.shape[0], codes.shape[0]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    if n == 0:
        return out
    rows, width = block if block is not None else search_block(x.device, n, k)
    rows, width = max(1, min(rows, n)), max(1, min(width, k))
    bias = code_bias.detach().to(x.dtype) if code_bias is not None else torch.zeros(k, dtype=x.dtype, device=x.device)
    centre = centre.detach().to(x.dtype) if centre is not None else None
    n_blocks = -(-k // width)
    buffer = torch.empty(rows, width, dtype=x.dtype, device=x.device)
    code_buffer = torch.empty(width, codes.shape[1], dtype=x.dtype, device=x.device) if centre is not None else None
    best_values = torch.empty(n_blocks, rows, dtype=x.dtype, device=x.device)  # per code block: its row minima
    best_indices = torch.empty(n_blocks, rows, dtype=torch.long, device=x.device)
    for start in range(0, n, rows):
        xb = x[start:start + rows]
        if centre is not None:
            xb = xb - centre
        r = xb.shape[0]
        for j, c0 in enumerate(range(0, k, width)):
            c1 = min(k, c0 + width)
            cb = codes[c0:c1]
            if code_buffer is not None:
                cb = torch.sub(cb, centre, out=code_buffer[:c1 - c0])
            dist = buffer[:r, :c1 - c0]
            torch.addmm(bias[c0:c1], xb, cb.t(), beta=1.0, alpha=alpha, out=dist)
            _row_min(dist, best_values[j, :r], best_indices[j, :r])
        if n_blocks == 1:
            out[start:start + r] = best_indices[0, :r]
        else:
            block_of_min = best_values[:, :r].argmin(dim=0, keepdim=True)  # (1, r)
            within = best_indices[:, :r].gather(0, block_of_min).squeeze(0)
            out[start:start + r] = within + block_of_min.squeeze(0) * width
    return out


def _row_min(dist: Tensor, values: Tensor, indices: Tensor) -> None:
    """``values, indices = dist.min(dim=1)`` written into the given tensors (ties: the lowest index).

    On CPU ``min`` with indices is ~12x slower per element than ``amin`` (it is not vectorised), so a contiguous
    block whose width is a multiple of 64 is reduced in two levels: ``amin`` over groups of 64 columns (vectorised,
    every element), then ``min`` with indices over the group minima and ``argmin`` inside each row's winning group
    (1/64 of the elements each): the same values and indices, the min pass 2.2x faster (dim 8-32 searches 1.3x).
    """
    r, w = dist.shape
    if dist.device.type != "cpu" or w % ROW_MIN_GROUP or w < 2 * ROW_MIN_GROUP or not dist.is_contiguous():
        torch.min(dist, dim=1, out=(values, indices))
        return
    groups = dist.view(r, w // ROW_MIN_GROUP, ROW_MIN_GROUP)
    group = torch.empty(r, dtype=torch.long, device=dist.device)
    torch.min(groups.amin(dim=2), dim=1, out=(values, group))
    winners = groups.gather(1, group.view(r, 1, 1).expand(r, 1, ROW_MIN_GROUP)).squeeze(1)
    torch.add(winners.argmin(dim=1), group, alpha=ROW_MIN_GROUP, out=indices)


def nearest_code(x: Tensor, codes: Tensor, *, block: tuple[int, int] | None = None) -> Tensor:
    """Index of the nearest row of ``codes`` (K, d) for each row of ``x`` (N, d), squared L2.

    The distance is translation-invariant, so both sides are first centred on the codebook mean ``m``:
    ``argmin_k ||x - c_k||^2 = argmin_k (||c_k - m||^2 - 2 (x - m).(c_k - m))`` (``||x - m||^2`` is constant per
    row). Without the centring, codes and inputs that share a large mean lose the answer to float32 cancellation
    (offset 100, spread 0.01: 0.2% of the answers exact; centred: as float64). One matmul per block of
    :func:`blocked_argmin`, the centring done block by block: memory O(block + N + K), so K = 1,048,576 codes works
    without an N x K matrix (or a centred copy of the codebook).
    """
    codes = codes.detach().to(x.dtype)
    centre = codes.mean(dim=0) if codes.shape[0] > 0 else None
    return blocked_argmin(x, codes, squared_norms(codes, centre=centre), -2.0, block, centre=centre)


def max_inner_product(x: Tensor, codes: Tensor, *, block: tuple[int, int] | None = None) -> Tensor:
    """``argmax_k x_i . c_k`` for each row of ``x`` (N, d) over ``codes`` (K, d), in bounded blocks.

    The lookup of IBQ (inner-product logits) and of cosine-similarity quantizers (on unit rows); an inner product is
    not translation-invariant, so nothing is centred.
    """
    return blocked_argmin(x, codes, None, -1.0, block)


def squared_norms(rows: Tensor, chunk_rows: int = 65536, centre: Tensor | None = None) -> Tensor:
    """``(rows - centre).pow(2).sum(dim=1)`` (``centre`` zero if ``None``) without a temporary copy of ``rows``
    (1 GiB at K = 2^20, dim 256): chunks of ``chunk_rows`` rows."""
    def part(chunk: Tensor) -> Tensor:
        return (chunk - centre if centre is not None else chunk).pow(2).sum(dim=1)
    if rows.shape[0] <= chunk_rows:
        return part(rows)
    return torch.cat([part(rows[i:i + chunk_rows]) for i in range(0, rows.shape[0], chunk_rows)])


def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
    """Forward value ``z_q``, gradient identity to ``z`` (Bengio et al. 2013; VQ-VAE eq. 3)."""
    return z + (z_q - z).detach()


def data_relative_codes(z: Tensor, codebook_size: int, scale: float, offset: float) -> Tensor:
    """Codes drawn relative to the statistics of a batch of inputs ``z`` (N, d): the restricted-init knob.

    ``c_k = mu + offset * sigma + scale * sigma * eps_k``, ``eps_k ~ N(0, I)``, with ``mu`` and ``sigma`` the
    per-dimension mean and std of ``z``. ``scale=1, offset=0`` spreads the codes like the data; a small
    ``scale`` squeezes them into a ball much narrower than the data and ``offset`` moves them away from the
    data's mean (tokens collapse appears when either restricts the initial codebook).

    In a data-parallel run ``z`` is this rank's part of the batch: ``mu`` and ``sigma`` are those of the global
    batch (sums over ranks) and ``eps`` comes from rank 0's random stream, so every rank draws the same codes.
    """
    z = z.detach().reshape(-1, z.shape[-1]).float()
    if distributed():
        mu, sigma = _global_mean_std(z)
    else:
        mu = z.mean(dim=0)
        sigma = z.std(dim=0).clamp_min(1e-6) if z.shape[0] > 1 else torch.ones_like(mu)
    with shared_random_stream(z.device):
        eps = torch.randn(codebook_size, z.shape[-1], device=z.device)
    return mu + offset * sigma + scale * sigma * eps


def _global_mean_std(z: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and unbiased std (floored at 1e-6; ones for a single row) of the rows of all ranks."""
    n = global_rows(z.shape[0], z.device)
    mu = all_reduce_sum_(z.sum(dim=0)) / max(n, 1)
    if n <= 1:
        return mu, torch.ones_like(mu)
    squares = all_reduce_sum_((z - mu).pow(2).sum(dim=0))
    return mu, (squares / (n - 1)).sqrt().clamp_min(1e-6)


CODEBOOK_INITS = ("normal", "uniform", "data")
#: the ``distributed_sync`` sentence of the restricted-init knob's ``init="data"`` (see :func:`data_relative_codes`)
DATA_INIT_SYNC = "init='data': the first batch's mean and std summed over ranks; the draws from rank 0's stream"


class CodebookQuantizer(Quantizer):
    """Base of the quantizers with one explicit codebook and the restricted-init knob (simvq, optvq, ibq,
    vq-affine, cvq): it owns the opening of ``forward`` and the data-relative init.

    ``forward(z)``: check the last dim, then with autocast off flatten ``z`` to float32 rows (N, dim); on the first
    training forward with ``init="data"`` (a non-empty batch) call :meth:`init_from_data` on those rows and set the
    flag buffer ``data_initialised``; then :meth:`quantize` the rows and reshape its ``z_q`` to ``z.shape`` and its
    indices to ``z.shape[:-1]``.

    The knob: ``init="normal"`` draws N(0, ``normal_std``^2), ``"uniform"`` U(-1/K, 1/K), both times ``init_scale``
    plus ``init_offset`` (:meth:`initial_codes`); ``"data"`` keeps an unscaled placeholder draw until the first
    training batch replaces it by :func:`data_relative_codes` of that batch (:meth:`init_from_data`).
    """

    def __init__(self, dim: int, codebook_size: int, init: str, init_scale: float, init_offset: float,
                 inits: tuple[str, ...] = CODEBOOK_INITS) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError("dim and codebook_size must be >= 1")
        if init not in inits:
            raise ValueError(f"init must be one of {', '.join(map(repr, inits))}, got {init!r}")
        self.dim, self.codebook_size = dim, codebook_size
        self.init, self.init_scale, self.init_offset = init, init_scale, init_offset
        self.register_buffer("data_initialised", torch.tensor(init != "data"))

    def initial_codes(self, normal_std: float = 1.0, placeholder: str = "normal") -> Tensor:
        """(K, dim) construction-time codes of the knob; with ``init="data"`` the ``placeholder`` draw, unscaled."""
        k, kind = self.codebook_size, self.init if self.init != "data" else placeholder
        if kind == "uniform":
            weight = torch.empty(k, self.dim).uniform_(-1.0 / k, 1.0 / k)
        else:
            weight = torch.randn(k, self.dim) * normal_std if normal_std != 1.0 else torch.randn(k, self.dim)
        return weight if self.init == "data" else weight * self.init_scale + self.init_offset

    def raw_codes(self) -> Tensor:
        """The tensor that the data-relative init overwrites (default: the ``embedding`` parameter)."""
        return self.embedding

    @torch.no_grad()
    def init_from_data(self, flat: Tensor) -> None:
        """Overwrite :meth:`raw_codes` by ``data_relative_codes(flat, K, init_scale, init_offset)``."""
        self.raw_codes().copy_(data_relative_codes(flat, self.codebook_size, self.init_scale, self.init_offset))

    def quantize(self, flat: Tensor) -> QuantizeOutput:  # pragma: no cover - abstract
        """Quantize float32 rows ``flat`` (N, dim): ``z_q`` (N, dim), indices (N,), loss, stats."""
        raise NotImplementedError

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        with torch.autocast(z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()
            if self.training and not bool(self.data_initialised) and flat.shape[0] > 0:
                self.init_from_data(flat)
                self.data_initialised.fill_(True)
            out = self.quantize(flat)
        return QuantizeOutput(out.z_q.reshape(z.shape), out.indices.reshape(z.shape[:-1]), out.loss, out.stats)
