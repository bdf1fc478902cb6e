"""OptVQ's Sinkhorn assignment, transcribed from the authors' code.

zbr17/OptVQ, ``src/optvq/models/quantizer.py``, ``VectorQuantizer`` (``forward``, ``compute_codebook_loss`` with
``loss_q_type="l2"``), ``sinkhorn`` and ``VectorQuantizerSinkhorn`` (``normalize(mode="all")``,
``quantize_input`` with ``use_prob=False``), commit b71895cc931bd898b2fb5ff968d9340a4946e882; one head, no
distributed reduction, no logging; input ``(N, e_dim)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sinkhorn(cost: Tensor, n_iters: int = 3, epsilon: float = 1) -> Tensor:
    Q = torch.exp(- cost * epsilon).t()  # noqa: N806 (the reference's names)
    B, K = Q.size(1), Q.size(0)  # noqa: N806
    sum_Q = torch.sum(Q)  # noqa: N806
    Q /= (sum_Q + 1e-8)
    for _ in range(n_iters):
        sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
        Q /= (sum_of_rows + 1e-8)
        Q /= K
        Q /= (torch.sum(Q, dim=0, keepdim=True) + 1e-8)
        Q /= B
    Q *= B
    return Q.t()


class VectorQuantizerSinkhorn(nn.Module):
    """``VectorQuantizerSinkhorn(epsilon, n_iters, normalize_mode="all", use_prob=False, n_e, e_dim, beta,
    use_proj=True, loss_q_type="l2", num_head=1)``."""

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, epsilon: float = 10.0, n_iters: int = 5) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.epsilon, self.n_iters = n_e, e_dim, beta, epsilon, n_iters
        self.embedding = nn.Embedding(num_embeddings=n_e, embedding_dim=e_dim)
        self.proj = nn.Linear(e_dim, e_dim)
        torch.nn.init.normal_(self.proj.weight, std=e_dim ** -0.5)

    @staticmethod
    def normalize(A: Tensor) -> Tensor:  # noqa: N803
        A = (A - A.mean()) / (A.std() + 1e-6)  # noqa: N806
        return A - A.min()

    def quantize_input(self, query: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        query2ref = torch.cdist(query, reference, p=2.0)
        with torch.no_grad():
            Q = sinkhorn(self.normalize(query2ref), n_iters=self.n_iters, epsilon=self.epsilon)  # noqa: N806
        indices = torch.argmax(Q, dim=-1)
        return indices, reference[indices]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        embed = self.proj(self.embedding.weight)
        indices, x_q = self.quantize_input(x, embed)
        loss = torch.mean((x - x_q.detach()).pow(2)) + torch.mean((x_q - x.detach()).pow(2)) * self.beta
        return x + (x_q - x).detach(), indices, loss

    def codebook(self) -> Tensor:
        return self.proj(self.embedding.weight)
