"""Gumbel-softmax quantizer as in taming-transformers (after karpathy/deep-vector-quantization), with DALL-E's
cosine temperature schedule.

CompVis/taming-transformers, ``taming/modules/vqvae/quantize.py``, ``GumbelQuantize.forward`` (no remap, the
VQ-interface return), commit 3ba01b241669f5ade541ce990f7650a3b8f65318; channel-last ``(N, num_hiddens)`` input, so
the 1x1 ``Conv2d`` projection is an ``nn.Linear`` and the softmax runs over the last dim. The temperature is set
from outside as in taming's ``GumbelVQ``; DALL-E (arXiv:2102.12092 App. A.2) anneals it from 1 to 1/16 with a
cosine schedule: ``cosine_temperature``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cosine_temperature(step: int, total_steps: int, start: float = 1.0, end: float = 1.0 / 16) -> float:
    """Cosine anneal from ``start`` at step 0 to ``end`` at the last step."""
    t = min(1.0, step / max(1, total_steps - 1))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


class GumbelQuantize(nn.Module):
    """``GumbelQuantize(num_hiddens, embedding_dim, n_embed, straight_through=True, kl_weight, temp_init)``."""

    def __init__(self, num_hiddens: int, embedding_dim: int, n_embed: int, straight_through: bool = True,
                 kl_weight: float = 5e-4, temp_init: float = 1.0) -> None:
        super().__init__()
        self.n_embed, self.straight_through = n_embed, straight_through
        self.temperature, self.kl_weight = temp_init, kl_weight
        self.proj = nn.Linear(num_hiddens, n_embed)
        self.embed = nn.Embedding(n_embed, embedding_dim)

    def forward(self, z: Tensor, temp: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        hard = self.straight_through if self.training else True
        temp = self.temperature if temp is None else temp
        logits = self.proj(z)
        soft_one_hot = F.gumbel_softmax(logits, tau=temp, dim=-1, hard=hard)
        z_q = torch.einsum("bn,nd->bd", soft_one_hot, self.embed.weight)
        qy = F.softmax(logits, dim=-1)
        diff = self.kl_weight * torch.sum(qy * torch.log(qy * self.n_embed + 1e-10), dim=-1).mean()
        ind = soft_one_hot.argmax(dim=-1)
        return z_q, ind, diff
