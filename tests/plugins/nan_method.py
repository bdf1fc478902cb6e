"""A test plugin: a VQ whose loss turns NaN once it has seen ``nan_after`` training batches."""

import torch

from vqbench.methods.vq import VectorQuantizer
from vqbench.registry import register_method


@register_method("test-nan-vq", family="test", description="VQ that diverges on purpose", nan_after=10)
class NanAfterVQ(VectorQuantizer):
    def __init__(self, dim: int, codebook_size: int, nan_after: int = 10) -> None:
        super().__init__(dim, codebook_size)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.nan_after = nan_after

    def forward(self, z):
        out = super().forward(z)
        if self.training:
            self.seen += 1
            if int(self.seen) > self.nan_after:
                out.loss = out.loss * float("nan")
        return out


@register_method("test-crash-vq", family="test", description="VQ that raises on purpose")
class CrashVQ(VectorQuantizer):
    def forward(self, z):
        if self.training:
            raise RuntimeError("deliberate crash")
        return super().forward(z)
