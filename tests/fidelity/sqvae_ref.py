"""SQ-VAE's Gaussian stochastic quantizer (``param_var_q="gaussian_1"``), transcribed from the authors' code.

sony/sqvae, commit dc88ab1a48f7596b3650e19de65e81b8f0498ee4: ``vision/quantizer.py`` (``GaussianVectorQuantizer.
_quantize``, ``calc_distance``, ``gumbel_softmax_sample``, ``sample_gumbel``), ``vision/model.py`` (``SQVAE.__init__``:
codebook ``N(0, 1)``, ``log_param_q_scalar``; ``SQVAE.forward``: for gaussian_1 ``param_q = exp(0) +
exp(log_param_q_scalar)``) and ``vision/trainer_base.py`` (``_set_temperature``). Input channel-last
``(bs, positions, dim)`` instead of ``(bs, dim, width, height)``; the reductions keep the reference's per-image
sums (``kld_discrete``: sum over positions and codes / bs; ``kld_continuous``: sum per image, mean over images).
``gumbel_noise`` defaults to the reference's ``-log(-log(U + eps) + eps)``; a test may pass another Gumbel(0, 1)
source so that both implementations see the same draws.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sample_gumbel(shape: torch.Size, eps: float = 1e-10) -> Tensor:
    U = torch.rand(shape)  # noqa: N806 (the reference's name; it draws on "cuda")
    return -torch.log(-torch.log(U + eps) + eps)


def set_temperature(step: int, init: float, decay: float, minimum: float) -> float:
    """``trainer_base._set_temperature``."""
    return float(np.max([init * np.exp(-decay * step), minimum]))


class GaussianSQVAEQuantizer(nn.Module):
    """Codebook, the scalar variance parameter and ``GaussianVectorQuantizer`` (gaussian_1) in one module."""

    def __init__(self, size_dict: int, dim_dict: int, log_param_q_init: float, temperature: float = 1.0,
                 gumbel_noise: Callable[[torch.Size], Tensor] = sample_gumbel) -> None:
        super().__init__()
        self.size_dict, self.dim_dict, self.temperature = size_dict, dim_dict, temperature
        self.codebook = nn.Parameter(torch.randn(size_dict, dim_dict))
        self.log_param_q_scalar = nn.Parameter(torch.tensor(log_param_q_init))
        self.gumbel_noise = gumbel_noise

    def variance(self) -> Tensor:
        """``SQVAE.forward`` for gaussian_1: ``log_var_q = 0``, ``param_q = exp(log_var_q) + exp(scalar)``."""
        return torch.tensor([0.0]).exp() + self.log_param_q_scalar.exp()

    def forward(self, z_from_encoder: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        bs = z_from_encoder.shape[0]
        var_q = self.variance()
        precision_q = 1. / torch.clamp(var_q, min=1e-10)
        z_flat = z_from_encoder.reshape(-1, self.dim_dict)
        distances = (torch.sum(z_flat ** 2, dim=1, keepdim=True) + torch.sum(self.codebook ** 2, dim=1)
                     - 2 * torch.matmul(z_flat, self.codebook.t()))
        logit = -(0.5 * precision_q) * distances
        probabilities = torch.softmax(logit, dim=-1)
        log_probabilities = torch.log_softmax(logit, dim=-1)
        if self.training:
            encodings = F.softmax((logit + self.gumbel_noise(logit.size())) / self.temperature, dim=-1)
        else:
            encodings = F.one_hot(torch.argmax(logit, dim=1), self.size_dict).type_as(self.codebook)
        z_quantized = torch.mm(encodings, self.codebook).view(z_from_encoder.shape)
        kld_discrete = torch.sum(probabilities * log_probabilities, dim=(0, 1)) / bs
        kld_continuous = torch.sum((z_from_encoder - z_quantized) ** 2 * (0.5 * precision_q), dim=(1, 2)).mean()
        return z_quantized, encodings.argmax(dim=-1), kld_discrete + kld_continuous
