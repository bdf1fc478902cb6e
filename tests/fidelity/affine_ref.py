"""Affine-reparameterised VQ with synchronized commitment and in-place alternating updates, from vqtorch.

minyoungg/vqtorch, commit 02e60a19bd742c17b0bf3e1925f23796d54cbeac: ``vqtorch/nn/vq.py`` (``VectorQuant``:
``straight_through_approximation``, ``compute_loss``, ``quantize`` incl. the ``inplace_codebook_optimizer`` branch),
``vqtorch/nn/affine.py`` (``AffineTransform`` with learned parameters, one group), ``vqtorch/dists.py``
(``euclidean_distance``; the lookup ``euclidean_cdist_topk`` with topk 1 is ``argmin cdist``). Input ``(N, F)``
(vqtorch's ``dim=-1`` layout with one group), no feature or codebook normalisation, no k-means init or replacement.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AffineTransform(nn.Module):
    """Learned ``scale``, ``bias`` (one group): codes ``(1 + lr_scale * scale) c + lr_scale * bias``."""

    def __init__(self, feature_size: int, lr_scale: float = 1) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(1, feature_size))
        self.bias = nn.Parameter(torch.zeros(1, feature_size))
        self.lr_scale = lr_scale

    def forward(self, codebook: Tensor) -> Tensor:
        return (1. + self.lr_scale * self.scale) * codebook + self.lr_scale * self.bias


class VectorQuant(nn.Module):
    """``VectorQuant(feature_size, num_codes, beta, sync_nu, affine_lr, inplace_optimizer)``."""

    def __init__(self, feature_size: int, num_codes: int, beta: float = 0.95, sync_nu: float = 0.0,
                 affine_lr: float = 0.0, inplace_optimizer: Callable | None = None) -> None:
        super().__init__()
        self.beta, self.nu = beta, sync_nu
        self.codebook = nn.Embedding(num_codes, feature_size)
        if inplace_optimizer is not None:
            if beta != 1.0:
                raise ValueError("inplace_optimizer can only be used with beta=1.0")
            self.inplace_codebook_optimizer = inplace_optimizer(self.codebook.parameters())
        if affine_lr > 0:
            self.affine_transform = AffineTransform(feature_size, lr_scale=affine_lr)

    def straight_through_approximation(self, z: Tensor, z_q: Tensor) -> Tensor:
        if self.nu > 0:
            return z + (z_q - z).detach() + (self.nu * z_q) + (-self.nu * z_q).detach()
        return z + (z_q - z).detach()

    def compute_loss(self, z_e: Tensor, z_q: Tensor) -> Tensor:
        def euclidean_distance(a: Tensor, b: Tensor) -> Tensor:
            return ((b - a) ** 2).reshape(a.size(0), -1).mean(1)
        return (1.0 - self.beta) * euclidean_distance(z_e, z_q.detach()) + \
            self.beta * euclidean_distance(z_e.detach(), z_q)

    def quantize(self, codebook: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        if hasattr(self, "affine_transform"):
            codebook = self.affine_transform(codebook)
        with torch.no_grad():
            q = torch.cdist(z, codebook).topk(1, largest=False, dim=-1)[1].view(-1)
        z_q = F.embedding(q, codebook)
        if self.training and hasattr(self, "inplace_codebook_optimizer"):
            ((z_q - z.detach()) ** 2).mean().backward()
            self.inplace_codebook_optimizer.step()
            self.inplace_codebook_optimizer.zero_grad()
            z_q = F.embedding(q, codebook)
        return z_q, q

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z_q, q = self.quantize(self.codebook.weight, z)
        loss = self.compute_loss(z, z_q).mean()
        return self.straight_through_approximation(z, z_q), q, loss

    @torch.no_grad()
    def get_codebook(self) -> Tensor:
        cb = self.codebook.weight
        if hasattr(self, "affine_transform"):
            cb = self.affine_transform(cb)
        return cb
