"""VQ-VAE: nearest-code vector quantization with a straight-through estimator.

van den Oord et al., "Neural Discrete Representation Learning", arXiv:1711.00937, eq. 3:
``L = ||sg[z] - e||^2 + beta ||z - sg[e]||^2`` with ``e`` the nearest code, and the decoder input
``z_q = z + sg[e - z]`` (straight-through: the decoder's gradient is copied to the encoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.registry import register_method
from methods.base import QuantizeOutput, Quantizer, check_last_dim, nearest_code, straight_through


@register_method("vq", version=1, paper="1711.00937", family="vq",
                 description="VQ-VAE: nearest code, straight-through estimator, codebook + beta*commitment loss",
                 beta=0.25)
class VectorQuantizer(Quantizer):
    """Nearest-code VQ with a learnable codebook trained by the codebook loss (VQ-VAE eq. 3).

    The codebook is initialised U(-1/K, 1/K) as in the reference implementation; ``init_scale``
    multiplies that range (``init_scale`` and ``init_offset`` are the restricted-initialisation knobs).
    """

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, init_scale: float = 1.0,
                 init_offset: float = 0.0) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError("dim and codebook_size must be >= 1")
        self.dim, self.codebook_size, self.beta = dim, codebook_size, beta
        weight = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.embedding = nn.Parameter(weight * init_scale + init_offset)

    def codebook(self) -> Tensor:
        return self.embedding

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        flat = z.reshape(-1, self.dim)
        indices = nearest_code(flat, self.embedding)
        codes = self.embedding[indices]
        codebook_loss = F.mse_loss(codes, flat.detach())
        commitment_loss = F.mse_loss(flat, codes.detach())
        loss = codebook_loss + self.beta * commitment_loss
        z_q = straight_through(flat, codes).reshape(z.shape)
        return QuantizeOutput(z_q, indices.reshape(z.shape[:-1]), loss,
                              {"codebook_loss": codebook_loss.detach(),
                               "commitment_loss": commitment_loss.detach()})
