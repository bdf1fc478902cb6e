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
no auxiliary loss. ``K = prod(levels)``; with ``levels=None`` the paper's recommended set (Sec. 4.1) is
used: the largest of 2^8 [8,6,5], 2^10 [8,5,5,5], 2^12 [7,5,5,5,5], 2^14 [8,8,8,6,5], 2^16 [8,8,8,5,5,5]
whose product does not exceed the task's ``codebook_size`` (note [7,5,5,5,5] has 4375 > 4096 codes, so
``codebook_size=4096`` gets [8,5,5,5]); below 240 codes (no recommended set fits) ``d`` equal levels
``L^d <= codebook_size`` with ``3 <= L <= 8`` and the largest product are used (ties: larger ``L``).
No state at all besides the projections; memory is O(N d), no distance matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from vqbench.methods.base import QuantizeOutput, Quantizer, check_last_dim
from vqbench.registry import register_method

#: Sec. 4.1 of 2309.15505: recommended levels per target codebook size
RECOMMENDED_LEVELS: tuple[tuple[int, ...], ...] = (
    (8, 6, 5), (8, 5, 5, 5), (7, 5, 5, 5, 5), (8, 8, 8, 6, 5), (8, 8, 8, 5, 5, 5))
EPS = 1e-3
MAX_ENUMERATED = 2**16


def recommended_levels(codebook_size: int) -> list[int]:
    """The levels FSQ uses for a target ``codebook_size`` (see the module docstring)."""
    fitting = [lv for lv in RECOMMENDED_LEVELS if math.prod(lv) <= codebook_size]
    if fitting:
        return list(max(fitting, key=math.prod))
    if codebook_size < 2:
        raise ValueError(f"FSQ needs codebook_size >= 2, got {codebook_size}")
    best: tuple[int, int, int] | None = None  # (product, L, d)
    for L in range(3, 9):
        d = int(math.floor(math.log(codebook_size) / math.log(L) + 1e-9))
        if d >= 1 and (best is None or (L**d, L) > best[:2]):
            best = (L**d, L, d)
    if best is None:  # codebook_size 2
        return [codebook_size]
    return [best[1]] * best[2]


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


@register_method("fsq", version=1, paper="2309.15505", family="implicit",
                 description="FSQ: project to len(levels) channels, tanh bound, round with STE, project back; "
                             "recommended levels for the task's codebook size",
                 levels=None, bound="paper")
class FSQuantizer(Quantizer):
    """Finite scalar quantization; ``codebook_size`` becomes ``prod(levels)``."""

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
