"""Deferred quantisation (vq-deferred): identity while warming up, then k-means init on the warm-up latents, then VQ.

arXiv:2603.17052 names the schedule; no authors' code was found. This composes two public references: during
the first ``switch_step`` steps the layer is the identity (zero loss, indices = nearest code) and keeps the
latents; before step ``switch_step`` the codebook becomes vector-quantize-pytorch's ``kmeans`` (random-sample
seeding, Lloyd iterations; ``vector_quantize_pytorch/vector_quantize_pytorch.py``, ``kmeans``, version 1.32.0 as
installed) of those latents; afterwards it is taming-transformers' ``VectorQuantizer2`` (see ``vq_ref``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from vector_quantize_pytorch.vector_quantize_pytorch import kmeans

from fidelity.vq_ref import TamingVectorQuantizer2


class DeferredVQ(nn.Module):
    """Identity for ``switch_step`` steps (buffering latents), then k-means init and taming VQ."""

    def __init__(self, vq: TamingVectorQuantizer2, switch_step: int, kmeans_iters: int = 10) -> None:
        super().__init__()
        self.vq, self.switch_step, self.kmeans_iters = vq, switch_step, kmeans_iters
        self.step = 0
        self.buffer: list[Tensor] = []

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        self.step = step
        if step == self.switch_step:
            means, _ = kmeans(torch.cat(self.buffer)[None], self.vq.n_e, self.kmeans_iters)
            self.vq.embedding.weight.copy_(means[0])
            self.buffer = []

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.step < self.switch_step:
            self.buffer.append(z.detach().clone())
            with torch.no_grad():
                indices = torch.cdist(z, self.vq.embedding.weight).argmin(dim=1)
            return z, indices, z.new_zeros(())
        return self.vq(z)
