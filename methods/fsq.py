"""FSQ: finite scalar quantization (bounded per-channel rounding, straight-through estimator).

Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple", arXiv:2309.15505 (Sec. 3 and the code of
Appendix A.1). With ``d = len(levels)`` channels of ``L_i`` levels each:

1. ``u = W_in z + b_in`` projects ``dim -> d`` (identity when ``dim == d``);
2. bound each channel (Appendix A.1, ``eps = 1e-3``): ``half_l = (L - 1)(1 - eps) / 2``,
   ``offset = 0.5`` if ``L`` is even else ``0``, ``shift = tan(offset / half_l)``,
   ``b(u) = tanh(u + shift) * half_l - offset`` (``bound="paper"``). ``bound="atanh"`` is the variant of
   vector-quantize-pytorch: ``half_l = (L - 1)(1 + eps) / 2``, ``shift = atanh(offset / half_l)`` (so that
   ``b(0) = 0`` exactly); it picks the same level except in a thin band at the decision boundaries;
3. ``q = round_ste(b(u)) / floor(L / 2)`` (values in ``[-1, 1]``; round with a straight-through gradient);
4. ``z_q = W_out q + b_out`` projects back (identity when ``dim == d``).

Index = mixed-radix code of the level digits ``a_i = round(b(u_i)) + floor(L_i / 2)`` in ``[0, L_i)``:
``index = sum_i a_i * prod_{j < i} L_j`` (first channel least significant, as in Appendix A.1). There is
no auxiliary loss. ``K = prod(levels)``, the method's real codebook size (it may differ from the task's).
With ``levels=None``: at the sizes of the paper's table (Sec. 4.1) its levels, 2^8 [8,6,5], 2^10 [8,5,5,5],
2^12 [7,5,5,5,5], 2^14 [8,8,8,6,5], 2^16 [8,8,8,5,5,5]; at any other ``codebook_size`` the levels whose product is
closest to it (version 2; version 1 took the largest table entry not above it, e.g. 240 codes for 512), among
non-increasing level lists with every level in 5..8 (the table's range) from 2^8 codes on, in 2..8 below. Ties, in
order: the product not above ``codebook_size``, fewer channels, the smallest spread ``max - min``, the larger
levels first. E.g. 512 -> [8,8,8], 8192 -> [8,8,5,5,5] (8000), 100 -> [5,5,4], 16 -> [4,4].
No state at all besides the projections; memory is O(N d), no distance matrix.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from vqbench.quantizer import QuantizeOutput, Quantizer, check_last_dim
from vqbench.registry import register_method

#: Sec. 4.1 of 2309.15505: recommended levels per target codebook size
RECOMMENDED_LEVELS: tuple[tuple[int, ...], ...] = (
    (8, 6, 5), (8, 5, 5, 5), (7, 5, 5, 5, 5), (8, 8, 8, 6, 5), (8, 8, 8, 5, 5, 5))
EPS = 1e-3
MAX_ENUMERATED = 2**16


#: the table's target codebook size -> its levels
TABLE_LEVELS: dict[int, tuple[int, ...]] = dict(zip((2**8, 2**10, 2**12, 2**14, 2**16), RECOMMENDED_LEVELS))
#: below this many codes the closest-product search also allows levels 2 to 4
SMALL_CODEBOOK = 2**8


def _level_lists(low: int, high: int, max_channels: int) -> itertools.chain[tuple[int, ...]]:
    """Every non-increasing list of levels in ``low..high`` with 1..``max_channels`` channels."""
    return itertools.chain.from_iterable(
        itertools.combinations_with_replacement(range(high, low - 1, -1), d) for d in range(1, max_channels + 1))


def recommended_levels(codebook_size: int) -> list[int]:
    """The levels FSQ uses for a target ``codebook_size``: the paper's table, else the closest product (module doc)."""
    if codebook_size < 2:
        raise ValueError(f"FSQ needs codebook_size >= 2, got {codebook_size}")
    if codebook_size in TABLE_LEVELS:
        return list(TABLE_LEVELS[codebook_size])
    low = 5 if codebook_size >= SMALL_CODEBOOK else 2
    # more channels than this only give products far above codebook_size (every level is >= low)
    max_channels = int(math.log(codebook_size) / math.log(low)) + 1

    def rank(levels: tuple[int, ...]) -> tuple[int, bool, int, int, list[int]]:
        product = math.prod(levels)
        return (abs(product - codebook_size), product > codebook_size, len(levels), levels[0] - levels[-1],
                [-level for level in levels])

    return list(min(_level_lists(low, 8, max_channels), key=rank))


class RoundSTE(torch.autograd.Function):
    """``round(x)`` forward, identity gradient backward (the straight-through estimator of FSQ eq. 1).

    One autograd node instead of ``x + (round(x) - x).detach()``'s three elementwise ops.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        return x.round()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        return grad


@register_method("fsq", version=2, paper="2309.15505", family="implicit",
                 description="FSQ: project to len(levels) channels, tanh bound, round with STE, project back; "
                             "the paper's levels at its table sizes, else the closest product to the task's K",
                 differences="Levels at codebook sizes outside the paper's table (2^8..2^16, even powers) are chosen "
                             "here by the closest product (the paper gives none); the bound follows Appendix A.1 "
                             "(tan, 1 - eps) by default, with vector-quantize-pytorch's atanh bound as an option.",
                 levels=None, bound="paper")
class FSQuantizer(Quantizer):
    """Finite scalar quantization; ``codebook_size`` becomes ``prod(levels)``.

    Stateless (its buffers are constants of the levels): nothing to keep in sync across ranks.
    """

    distributed_sync: tuple[str, ...] = ()

    def __init__(self, dim: int, codebook_size: int, levels: list[int] | None = None, bound: str = "paper") -> None:
        super().__init__()
        if dim < 1:
            raise ValueError("dim must be >= 1")
        levels = list(levels) if levels is not None else recommended_levels(codebook_size)
        if not levels or any(int(L) != L or L < 2 for L in levels):
            raise ValueError(f"levels must be integers >= 2, got {levels}")
        if bound not in ("paper", "atanh"):
            raise ValueError(f"bound must be 'paper' or 'atanh', got {bound!r}")
        self.levels = [int(L) for L in levels]
        self.dim, self.codebook_size, self.bound_rule = dim, math.prod(self.levels), bound
        d = len(self.levels)
        lv = torch.tensor(self.levels, dtype=torch.float64)
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        if bound == "paper":
            half_l = (lv - 1) * (1 - EPS) / 2
            shift = torch.tan(offset / half_l)
        else:
            half_l = (lv - 1) * (1 + EPS) / 2
            shift = torch.atanh(offset / half_l)
        # constants derived from levels (not state): non-persistent buffers so they follow .to(device)
        self.register_buffer("_half_l", half_l.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", shift.float(), persistent=False)
        self.register_buffer("_half_width", torch.tensor([L // 2 for L in self.levels], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.long), persistent=False)
        self.register_buffer("_max_digit", torch.tensor(self.levels, dtype=torch.float32) - 1, persistent=False)
        basis = [math.prod(self.levels[:i]) for i in range(d)]
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.long), persistent=False)
        # float32 represents every index exactly below 2^24: one small matmul computes the mixed-radix index
        self._float_index = self.codebook_size <= 2**24
        self.register_buffer("_basis_float", torch.tensor(basis, dtype=torch.float32), persistent=False)
        self.project_in: nn.Module = nn.Linear(dim, d) if dim != d else nn.Identity()
        self.project_out: nn.Module = nn.Linear(d, dim) if dim != d else nn.Identity()

    def bound(self, u: Tensor) -> Tensor:
        return torch.tanh(u + self._shift) * self._half_l - self._offset

    def quantize(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Codes in ``[-1, 1]^d`` (straight-through) and their indices for ``u`` (..., d)."""
        rounded = RoundSTE.apply(self.bound(u.float()))
        with torch.no_grad():
            # level digits a_i in [0, L_i) (clamped: the atanh bound can reach L_i at very large L_i)
            digits = torch.clamp(rounded + self._half_width, min=torch.zeros_like(self._max_digit), max=self._max_digit)
            if self._float_index:  # elementwise, not a matmul: autocast would run a matmul in bf16 (inexact > 256)
                indices = (digits * self._basis_float).sum(dim=-1).long()
            else:
                indices = (digits.long() * self._basis).sum(dim=-1)
            indices.clamp_(0, self.codebook_size - 1)  # a NaN input gives index 0, never an out-of-range index
        return rounded / self._half_width, indices

    def index_to_codes(self, indices: Tensor) -> Tensor:
        """Codes in ``[-1, 1]^d`` (before ``project_out``) for indices (...)."""
        digits = torch.div(indices.long().unsqueeze(-1), self._basis, rounding_mode="floor") % self._levels
        return (digits.float() - self._half_width) / self._half_width

    def codebook(self) -> Tensor | None:
        if self.codebook_size > MAX_ENUMERATED:
            return None
        return self.decode_indices(torch.arange(self.codebook_size, device=self._basis.device))

    def decode_indices(self, indices: Tensor) -> Tensor:
        return self.project_out(self.index_to_codes(indices))

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        codes, indices = self.quantize(self.project_in(z))
        return QuantizeOutput(self.project_out(codes), indices, z.new_zeros(()), {})
