"""CVQ-VAE's online clustered codebook, transcribed from the authors' code.

lyndonzheng/CVQ-VAE, ``quantise.py``, classes ``VectorQuantiser`` (``forward``) and ``FeaturePool``, commit
04864b721665729c304d2f7e3098f9d91e9c81e1; channel-last input ``(N, embed_dim)`` (the rearranges dropped), the
perplexity bookkeeping and the off-by-default ``contras_loss`` / ``first_batch`` branches left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeaturePool:
    """The reference's feature pool (``random`` anchors)."""

    def __init__(self, pool_size: int, dim: int = 64) -> None:
        self.pool_size = pool_size
        self.nums_features = 0
        self.features = (torch.rand((pool_size, dim)) * 2 - 1) / pool_size

    def query(self, features: Tensor) -> Tensor:
        if self.nums_features < self.pool_size:
            if features.size(0) > self.pool_size:
                random_feat_id = torch.randint(0, features.size(0), (int(self.pool_size),))
                self.features = features[random_feat_id]
                self.nums_features = self.pool_size
            else:
                num = self.nums_features + features.size(0)
                self.features[self.nums_features:num] = features
                self.nums_features = num
        else:
            if features.size(0) > int(self.pool_size):
                random_feat_id = torch.randint(0, features.size(0), (int(self.pool_size),))
                self.features = features[random_feat_id]
            else:
                random_id = torch.randperm(self.pool_size)
                self.features[random_id[:features.size(0)]] = features
        return self.features


class CVQVectorQuantiser(nn.Module):
    """``VectorQuantiser(num_embed, embed_dim, beta, distance, anchor)``; decay 0.99 as in the reference."""

    def __init__(self, num_embed: int, embed_dim: int, beta: float, distance: str = "cos",
                 anchor: str = "closest") -> None:
        super().__init__()
        self.num_embed, self.embed_dim, self.beta = num_embed, embed_dim, beta
        self.distance, self.anchor, self.decay = distance, anchor, 0.99
        self.pool = FeaturePool(num_embed, embed_dim)
        self.embedding = nn.Embedding(num_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / num_embed, 1.0 / num_embed)
        self.register_buffer("embed_prob", torch.zeros(num_embed))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z_flattened = z.view(-1, self.embed_dim)
        if self.distance == "l2":
            d = - torch.sum(z_flattened.detach() ** 2, dim=1, keepdim=True) - \
                torch.sum(self.embedding.weight ** 2, dim=1) + \
                2 * torch.einsum("bd, dn-> bn", z_flattened.detach(), self.embedding.weight.t())
        else:
            normed_z_flattened = F.normalize(z_flattened, dim=1).detach()
            normed_codebook = F.normalize(self.embedding.weight, dim=1)
            d = torch.einsum("bd,dn->bn", normed_z_flattened, normed_codebook.t())
        sort_distance, indices = d.sort(dim=1)
        encoding_indices = indices[:, -1]
        encodings = torch.zeros(encoding_indices.unsqueeze(1).shape[0], self.num_embed, device=z.device)
        encodings.scatter_(1, encoding_indices.unsqueeze(1), 1)
        z_q = torch.matmul(encodings, self.embedding.weight).view(z.shape)
        loss = self.beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        avg_probs = torch.mean(encodings, dim=0)
        if self.training:
            self.embed_prob.mul_(self.decay).add_(avg_probs, alpha=1 - self.decay)
            if self.anchor == "closest":
                sort_distance, indices = d.sort(dim=0)
                random_feat = z_flattened.detach()[indices[-1, :]]
            elif self.anchor == "random":
                random_feat = self.pool.query(z_flattened.detach())
            else:  # probrandom
                norm_distance = F.softmax(d.t(), dim=1)
                prob = torch.multinomial(norm_distance, num_samples=1).view(-1)
                random_feat = z_flattened.detach()[prob]
            decay = torch.exp(-(self.embed_prob * self.num_embed * 10) / (1 - self.decay) - 1e-3).unsqueeze(1) \
                .repeat(1, self.embed_dim)
            self.embedding.weight.data = self.embedding.weight.data * (1 - decay) + random_feat * decay
        return z_q, encoding_indices, loss
