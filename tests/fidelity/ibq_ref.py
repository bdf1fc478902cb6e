"""IBQ's index-backpropagation quantizer and its entropy loss, transcribed from the authors' code.

TencentARC/SEED-Voken, ``src/IBQ/modules/vqvae/quantize.py``, ``IndexPropagationQuantize.forward`` and
``compute_entropy_loss``, commit b9a17eac8e2c0779c12a5429b0bfd6c502788484; channel-last input ``(N, e_dim)``. With
``use_entropy_loss`` the reference returns the terms and its loss module (``src/IBQ/modules/losses/
vqperceptual.py``, ``VQLPIPSWithDiscriminator.forward``) adds ``quant_loss_weight * quant_loss +
entropy_loss_weight * entropy_loss``; that sum (quant weight 1) is returned here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def compute_entropy_loss(logits: Tensor, temperature: float = 0.01, sample_minimization_weight: float = 1.0,
                         batch_maximization_weight: float = 1.0, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    probs = F.softmax(logits / temperature, -1)
    log_probs = F.log_softmax(logits / temperature + eps, -1)
    avg_probs = probs.mean(dim=0)
    avg_entropy = -torch.sum(avg_probs * torch.log(avg_probs + eps))
    sample_entropy = torch.mean(-torch.sum(probs * log_probs, -1))
    loss = (sample_minimization_weight * sample_entropy) - (batch_maximization_weight * avg_entropy)
    return sample_entropy, avg_entropy, loss


class IndexPropagationQuantize(nn.Module):
    """``IndexPropagationQuantize(n_e, e_dim, beta, use_entropy_loss, entropy_temperature)``."""

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, use_entropy_loss: bool = False,
                 entropy_temperature: float = 0.01, entropy_loss_weight: float = 0.0) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.use_entropy_loss, self.entropy_temperature = use_entropy_loss, entropy_temperature
        self.entropy_loss_weight = entropy_loss_weight
        self.embedding = nn.Embedding(n_e, e_dim)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = torch.einsum("nd,kd->nk", z, self.embedding.weight)
        soft_one_hot = F.softmax(logits, dim=1)
        ind = soft_one_hot.max(1, keepdim=True)[1]
        hard_one_hot = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(1, ind, 1.0)
        one_hot = hard_one_hot - soft_one_hot.detach() + soft_one_hot
        z_q = torch.einsum("nk,kd->nd", one_hot, self.embedding.weight)
        z_q_2 = torch.einsum("nk,kd->nd", hard_one_hot, self.embedding.weight)
        quant_loss = torch.mean((z_q - z) ** 2) + torch.mean((z_q_2.detach() - z) ** 2) + self.beta * \
            torch.mean((z_q_2 - z.detach()) ** 2)
        loss = quant_loss
        if self.use_entropy_loss:
            _, _, entropy_loss = compute_entropy_loss(logits, temperature=self.entropy_temperature)
            loss = quant_loss + self.entropy_loss_weight * entropy_loss
        return z_q, torch.flatten(ind), loss
