"""IBQ: index backpropagation quantization, a straight-through estimator over the one-hot code index.

Shi et al., "Scalable Image Tokenization with Index Backpropagation Quantization", arXiv:2412.02692; the update
follows the reference ``IndexPropagationQuantize`` (TencentARC/SEED-Voken, ``IBQ/modules/vqvae/quantize.py``).
With logits ``l_ik = z_i . c_k`` (inner product, temperature 1):

* index ``k_i = argmax_k l_ik`` (= argmax of ``softmax(l_i)``), hard one-hot ``h_i``;
* ``one_hot_i = h_i - sg[s_i] + s_i`` with ``s_i = softmax(l_i)``, and ``z_q_i = one_hot_i C``: the value is the code
  ``c_{k_i}``, the gradient reaches *every* code (and ``z``) through ``s_i``;
* ``L = ||z_q - z||^2 + ||sg[c_k] - z||^2 + beta ||c_k - sg[z]||^2`` (the paper's double quantization loss; means
  over elements, ``beta = 0.25``);
* optional MAGVIT-style entropy term (off in the reference module by default): with ``p_i = softmax(l_i / T)``,
  ``entropy_weight * (mean_i H(p_i) - H(mean_i p_i))``, ``T = 0.01``, ``log(p + 1e-5)`` in the batch entropy.

Memory: the soft one-hot is N x K. It is never materialised whole: rows are processed in chunks of at most
``SEARCH_CHUNK_ELEMENTS`` logits under activation checkpointing, so the backward pass recomputes one chunk at a
time (peak extra memory O(chunk), any K; K = 65536 with N = 16384 needs 64 chunks of 256 rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from vqbench.methods.base import (
    SEARCH_CHUNK_ELEMENTS,
    QuantizeOutput,
    Quantizer,
    blocked_argmin,
    check_last_dim,
    data_relative_codes,
)
from vqbench.registry import register_method


def max_inner_product(x: Tensor, codes: Tensor, *, block: tuple[int, int] | None = None) -> Tensor:
    """``argmax_k x_i . c_k`` for each row of ``x`` (N, d) over ``codes`` (K, d), in bounded blocks."""
    return blocked_argmin(x, codes, None, -1.0, block)


def _row_chunks(n: int, k: int) -> list[tuple[int, int]]:
    rows = max(1, min(n, SEARCH_CHUNK_ELEMENTS // max(k, 1)))
    return [(s, min(n, s + rows)) for s in range(0, n, rows)]


def _soft_path(x: Tensor, codes: Tensor) -> Tensor:
    """``(s - sg[s]) C`` with ``s = softmax(x C^T)``: zero in value, carries the index gradient."""
    soft = torch.softmax(x @ codes.t(), dim=1)
    return (soft - soft.detach()) @ codes


def _entropy_sums(x: Tensor, codes: Tensor, temperature: Tensor) -> tuple[Tensor, Tensor]:
    """(sum_i p_i over the rows, sum_i H(p_i)) with ``p_i = softmax(x_i C^T / T)``."""
    logits = (x @ codes.t()) / temperature
    probs = torch.softmax(logits, dim=1)
    sample_entropy = -(probs * torch.log_softmax(logits, dim=1)).sum()
    return probs.sum(dim=0), sample_entropy


def soft_one_hot_path(x: Tensor, codes: Tensor) -> Tensor:
    """Chunked, checkpointed :func:`_soft_path` over the rows of ``x`` (memory O(chunk) in both passes)."""
    parts = [checkpoint(_soft_path, x[a:b], codes, use_reentrant=False)
             for a, b in _row_chunks(x.shape[0], codes.shape[0])]
    return torch.cat(parts) if parts else x * 0


def entropy_penalty(x: Tensor, codes: Tensor, temperature: float, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(mean per-sample entropy, entropy of the mean distribution), chunked and checkpointed."""
    t = torch.tensor(float(temperature), device=x.device)
    prob_sum, sample_sum = x.new_zeros(codes.shape[0]), x.new_zeros(())
    for a, b in _row_chunks(x.shape[0], codes.shape[0]):
        p, h = checkpoint(_entropy_sums, x[a:b], codes, t, use_reentrant=False)
        prob_sum, sample_sum = prob_sum + p, sample_sum + h
    n = max(x.shape[0], 1)
    avg = prob_sum / n
    return sample_sum / n, -(avg * torch.log(avg + eps)).sum()


@register_method("ibq", version=1, paper="2412.02692", family="all-code-gradient",
                 description="IBQ: straight-through over the soft one-hot index so every code gets gradient; "
                             "double quantization loss",
                 beta=0.25, entropy_weight=0.0, entropy_temperature=0.01, init="normal")
class IndexBackpropQuantizer(Quantizer):
    """IBQ with a learnable codebook ``C`` (K, dim), initialised N(0, 1) like the reference ``nn.Embedding``.

    Restricted-init knob: ``init="normal"|"uniform"|"data"``; ``"uniform"`` is U(-1/K, 1/K), both scaled by
    ``init_scale`` and shifted by ``init_offset``; ``"data"`` draws the codes with
    :func:`vqbench.methods.base.data_relative_codes` from the first training batch (flag buffer ``data_initialised``).
    """

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, entropy_weight: float = 0.0,
                 entropy_temperature: float = 0.01, init: str = "normal", init_scale: float = 1.0,
                 init_offset: float = 0.0) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError("dim and codebook_size must be >= 1")
        if init not in ("normal", "uniform", "data"):
            raise ValueError(f"init must be 'normal', 'uniform' or 'data', got {init!r}")
        if entropy_temperature <= 0:
            raise ValueError("entropy_temperature must be > 0")
        self.dim, self.codebook_size = dim, codebook_size
        self.beta, self.entropy_weight, self.entropy_temperature = beta, entropy_weight, entropy_temperature
        self.init, self.init_scale, self.init_offset = init, init_scale, init_offset
        if init == "uniform":
            weight = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        else:
            weight = torch.randn(codebook_size, dim)
        if init != "data":
            weight = weight * init_scale + init_offset
        self.embedding = nn.Parameter(weight)
        self.register_buffer("data_initialised", torch.tensor(init != "data"))

    def codebook(self) -> Tensor:
        return self.embedding

    @torch.no_grad()
    def _init_from_data(self, flat: Tensor) -> None:
        self.embedding.copy_(data_relative_codes(flat, self.codebook_size, self.init_scale, self.init_offset))
        self.data_initialised.fill_(True)

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        with torch.autocast(z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()
            if self.training and not bool(self.data_initialised):
                self._init_from_data(flat)
            codes = self.embedding
            indices = max_inner_product(flat, codes)
            hard = codes[indices]
            z_q = hard + soft_one_hot_path(flat, codes)
            soft_loss = F.mse_loss(z_q, flat)
            commitment_loss = F.mse_loss(flat, hard.detach())
            codebook_loss = F.mse_loss(hard, flat.detach())
            loss = soft_loss + commitment_loss + self.beta * codebook_loss
            stats = {"soft_loss": soft_loss.detach(), "commitment_loss": commitment_loss.detach(),
                     "codebook_loss": codebook_loss.detach()}
            if self.entropy_weight:
                sample_h, batch_h = entropy_penalty(flat, codes, self.entropy_temperature)
                loss = loss + self.entropy_weight * (sample_h - batch_h)
                stats.update(sample_entropy=sample_h.detach(), batch_entropy=batch_h.detach())
        return QuantizeOutput(z_q.reshape(z.shape), indices.reshape(z.shape[:-1]), loss, stats)
