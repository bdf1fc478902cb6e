"""The Quantizer contract (see ``shared/DESIGN.md``) and small pieces every quantizer shares.

A quantizer is an ``nn.Module`` whose ``forward(z)`` takes channel-last ``z`` of shape ``(..., dim)``
and returns a :class:`QuantizeOutput`. Everything a method does to its codebook (EMA, restarts,
k-means init, schedules) happens inside the module, so the runner stays generic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

# Largest number of distance entries (rows x codes) one chunk of the nearest-code search may hold:
# 2**24 float32 = 64 MiB, so K = 1,048,576 codes works without an N x K matrix.
SEARCH_CHUNK_ELEMENTS = 2**24


@dataclass
class QuantizeOutput:
    """What ``Quantizer.forward`` returns.

    ``z_q``: same shape as ``z``, carrying the method's gradient path to ``z``;
    ``indices``: ``z.shape[:-1]`` long tensor in ``[0, codebook_size)``;
    ``loss``: scalar auxiliary loss, already weighted;
    ``stats``: scalar tensors the method wants logged.
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class Quantizer(nn.Module):
    """Base class: subclasses set ``dim`` and ``codebook_size`` and implement ``forward``."""

    dim: int
    codebook_size: int

    def forward(self, z: Tensor) -> QuantizeOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def codebook(self) -> Tensor | None:
        """The effective code vectors in z-space, ``(codebook_size, dim)``; ``None`` if not enumerable."""
        return None

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code vectors (in z-space) for ``indices`` of shape ``(...)`` -> ``(..., dim)``."""
        codes = self.codebook()
        if codes is None:
            raise ValueError(f"{type(self).__name__} cannot decode indices: its codebook is not enumerable")
        return codes[indices]

    def on_step(self, step: int, total_steps: int) -> None:
        """Called by the runner before each optimizer step (schedules, restarts, deferred switches)."""


def check_last_dim(z: Tensor, dim: int) -> None:
    if z.shape[-1] != dim:
        raise ValueError(f"quantizer expects channel-last input with last dim {dim}, got shape {tuple(z.shape)}")


@torch.no_grad()
def nearest_code(x: Tensor, codes: Tensor, *, chunk_elements: int = SEARCH_CHUNK_ELEMENTS) -> Tensor:
    """Index of the nearest row of ``codes`` (K, d) for each row of ``x`` (N, d), squared L2.

    ``argmin_k ||x - c_k||^2 = argmin_k (||c_k||^2 - 2 x.c_k)``, evaluated in row chunks so that no
    more than ``chunk_elements`` distances exist at once (memory O(chunk + N + K), not O(N K)).
    """
    x = x.detach()
    codes = codes.detach().to(x.dtype)
    n, k = x.shape[0], codes.shape[0]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    if n == 0:
        return out
    code_sq = codes.pow(2).sum(dim=1)  # (K,)
    rows = max(1, min(n, chunk_elements // max(k, 1)))
    for start in range(0, n, rows):
        xb = x[start:start + rows]
        # ||c||^2 - 2 x c^T  (||x||^2 is constant per row and does not change the argmin)
        dist = torch.addmm(code_sq.unsqueeze(0), xb, codes.t(), beta=1.0, alpha=-2.0)
        out[start:start + rows] = dist.argmin(dim=1)
    return out


def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
    """Forward value ``z_q``, gradient identity to ``z`` (Bengio et al. 2013; VQ-VAE eq. 3)."""
    return z + (z_q - z).detach()


def data_relative_codes(z: Tensor, codebook_size: int, scale: float, offset: float) -> Tensor:
    """Codes drawn relative to the statistics of a batch of inputs ``z`` (N, d): the restricted-init knob.

    ``c_k = mu + offset * sigma + scale * sigma * eps_k``, ``eps_k ~ N(0, I)``, with ``mu`` and ``sigma`` the
    per-dimension mean and std of ``z``. ``scale=1, offset=0`` spreads the codes like the data; a small
    ``scale`` squeezes them into a ball much narrower than the data and ``offset`` moves them away from the
    data's mean (tokens collapse appears when either restricts the initial codebook).
    """
    z = z.detach().reshape(-1, z.shape[-1]).float()
    mu = z.mean(dim=0)
    sigma = z.std(dim=0).clamp_min(1e-6) if z.shape[0] > 1 else torch.ones_like(mu)
    eps = torch.randn(codebook_size, z.shape[-1], device=z.device)
    return mu + offset * sigma + scale * sigma * eps
