"""The codebook-entropy (prior distribution) regulariser of vq-entropy, written densely from its stated equation.

Zhang et al., "Regularized Vector Quantization for Tokenized Image Synthesis", arXiv:2303.06424 (CVPR 2023). No
authors' code was found (searched GitHub for the paper and its regulariser, 2026), so this is the equation the
registry entry states, ``weight * (log K - H(mean_i softmax_k(-||x_i - c_k||^2 / T)))``, with the full N x K
matrix and no chunking or checkpointing: an independent transcription of the definition, not of the authors' code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def prior_entropy_penalty(x: Tensor, codes: Tensor, temperature: float) -> Tensor:
    """``log K - H(pbar)``, ``pbar = mean_i softmax_k(-||x_i - c_k||^2 / T)`` (KL of the batch usage to uniform)."""
    d2 = torch.cdist(x, codes).pow(2)
    pbar = torch.softmax(-d2 / temperature, dim=1).mean(dim=0)
    return math.log(codes.shape[0]) + (pbar * torch.log(pbar)).sum()
