"""Helpers shared by the VectorQuantizer tests (test_methods_vq.py, test_methods_vq_search.py); not a test module."""

from __future__ import annotations

import torch


def gmm_latents(n: int, dim: int, modes: int, seed: int, spread: float = 4.0) -> torch.Tensor:
    """``n`` rows of a Gaussian mixture: ``modes`` centres N(0, spread^2) plus N(0, 0.3^2) noise, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(modes, dim, generator=g) * spread
    return centres[torch.randint(modes, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)


def naive_nearest(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The nearest code of each row by brute force in float64 (``cdist`` then ``argmin``: ties to the lowest index)."""
    return torch.cdist(x.double(), codes.double()).argmin(dim=1)
