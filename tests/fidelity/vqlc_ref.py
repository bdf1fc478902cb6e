"""VQGAN-LC's quantizer with a frozen initialised codebook and a linear codebook projector.

zh460045050/VQGAN-LC, ``vqgan-gpt-lc/models/models_vq.py``, ``VQModel.__init__`` (``tuning_codebook == 0``: frozen
``tok_embeddings`` loaded from the k-means checkpoint; ``use_cblinear == 1``: ``codebook_projection =
nn.Linear(codebook_dim, embed_dim)`` with weight ``N(0, embed_dim^-1/2)``) and ``VQModel.quantize`` (non-EMA
branch), commit 4708958f2257f62a996fc5d42928fecbf4282986; channel-last ``(N, e_dim)`` input, no remap; the
``e_dim == 768`` input normalisation of ``encode`` does not apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VQGANLCQuantize(nn.Module):
    """Frozen ``tok_embeddings`` (K, F) seen through ``codebook_projection`` (F -> e_dim)."""

    def __init__(self, codes: Tensor, e_dim: int) -> None:
        super().__init__()
        self.e_dim = e_dim
        self.tok_embeddings = nn.Embedding(codes.shape[0], codes.shape[1])
        self.tok_embeddings.weight.data = codes.clone().float()
        self.tok_embeddings.weight.requires_grad = False
        self.codebook_projection = nn.Linear(codes.shape[1], e_dim)
        torch.nn.init.normal_(self.codebook_projection.weight, std=e_dim ** -0.5)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z_flattened = z.view(-1, self.e_dim)
        tok_embeddings_weight = self.codebook_projection(self.tok_embeddings.weight)
        d = torch.sum(z_flattened ** 2, dim=1, keepdim=True) + \
            torch.sum(tok_embeddings_weight ** 2, dim=1) - 2 * \
            torch.einsum("bd,dn->bn", z_flattened, tok_embeddings_weight.t())
        min_encoding_indices = torch.argmin(d, dim=1)
        z_q = F.embedding(min_encoding_indices, tok_embeddings_weight).view(z.shape)
        loss = torch.mean((z_q.detach() - z) ** 2) + 0.33 * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        return z_q, min_encoding_indices, loss

    def codebook(self) -> Tensor:
        return self.codebook_projection(self.tok_embeddings.weight)
