"""FSQ with the paper's bound, transcribed from the reference code printed in the paper.

Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple", arXiv:2309.15505, Appendix A.1 (the JAX listing
``class FSQ``: ``bound``, ``quantize``, ``codes_to_indexes``); the authors' repository google-research/
google-research ``fsq/`` holds the same listing. Ported to PyTorch with ``nn.Linear`` projections around it
(as vector-quantize-pytorch does), ``round_ste`` as ``z + sg[round(z) - z]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def round_ste(z: Tensor) -> Tensor:
    """Round with straight-through gradients."""
    return z + (torch.round(z) - z).detach()


class PaperFSQ(nn.Module):
    """``project_out(quantize(project_in(z)))`` with the Appendix A.1 ``bound`` (``tan`` shift, ``1 - eps``)."""

    def __init__(self, levels: list[int], dim: int) -> None:
        super().__init__()
        self._levels = torch.tensor(levels, dtype=torch.float64)
        self._basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.float64), dim=0)
        self.project_in = nn.Linear(dim, len(levels))
        self.project_out = nn.Linear(len(levels), dim)

    def bound(self, z: Tensor) -> Tensor:
        eps = 1e-3
        half_l = (self._levels - 1) * (1 - eps) / 2
        offset = torch.where(self._levels % 2 == 1, 0.0, 0.5)
        shift = torch.tan(offset / half_l)
        return torch.tanh(z + shift.float()) * half_l.float() - offset.float()

    def quantize(self, z: Tensor) -> Tensor:
        quantized = round_ste(self.bound(z))
        half_width = (self._levels // 2).float()
        return quantized / half_width

    def codes_to_indexes(self, zhat: Tensor) -> Tensor:
        half_width = (self._levels // 2).float()
        zhat = zhat * half_width + half_width
        return (zhat * self._basis.float()).sum(dim=-1).round().long()

    def indexes_to_codes(self, indices: Tensor) -> Tensor:
        digits = (indices[..., None].double() // self._basis) % self._levels
        half_width = self._levels // 2
        return ((digits - half_width) / half_width).float()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        codes = self.quantize(self.project_in(z))
        return self.project_out(codes), self.codes_to_indexes(codes.detach())

    def codebook(self) -> Tensor:
        k = int(self._levels.prod())
        return self.project_out(self.indexes_to_codes(torch.arange(k)))
