"""VQ-VAE / VQGAN quantizer as in taming-transformers (the ``legacy=False`` loss: beta on the commitment side).

Transcribed from CompVis/taming-transformers, ``taming/modules/vqvae/quantize.py``, class ``VectorQuantizer2``
(``forward``), commit 3ba01b241669f5ade541ce990f7650a3b8f65318; channel-last input ``(N, e_dim)`` instead of
``(B, C, H, W)`` (the rearranges dropped), no index remapping.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TamingVectorQuantizer2(nn.Module):
    """``VectorQuantizer2(n_e, e_dim, beta, legacy=False)``: nearest code,
    ``beta ||sg[e] - z||^2 + ||e - sg[z]||^2``."""

    def __init__(self, n_e: int, e_dim: int, beta: float) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z_flattened = z.view(-1, self.e_dim)
        d = torch.sum(z_flattened ** 2, dim=1, keepdim=True) + \
            torch.sum(self.embedding.weight ** 2, dim=1) - 2 * \
            torch.einsum("bd,dn->bn", z_flattened, self.embedding.weight.t())
        min_encoding_indices = torch.argmin(d, dim=1)
        z_q = self.embedding(min_encoding_indices).view(z.shape)
        loss = self.beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        return z_q, min_encoding_indices, loss
