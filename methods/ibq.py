"""IBQ: index backpropagation quantization, a straight-through estimator over the one-hot code index.

Shi et al., "Scalable Image Tokenization with Index Backpropagation Quantization", arXiv:2412.02692; the update
follows the reference ``IndexPropagationQuantize`` (TencentARC/SEED-Voken, ``src/IBQ/modules/vqvae/quantize.py``)
with the settings of every IBQ config of that repository (``configs/IBQ/gpu/*.yaml``: ``use_entropy_loss: True``,
``entropy_loss_weight: 0.05``, ``entropy_temperature: 0.01``, ``beta: 0.25``). With logits ``l_ik = z_i . c_k``
(inner product, temperature 1):

* index ``k_i = argmax_k l_ik`` (= argmax of ``softmax(l_i)``), hard one-hot ``h_i``;
* ``one_hot_i = h_i - sg[s_i] + s_i`` with ``s_i = softmax(l_i)``, and ``z_q_i = one_hot_i C``: the value is the code
  ``c_{k_i}``, the gradient reaches *every* code (and ``z``) through ``s_i``;
* ``L = ||z_q - z||^2 + ||sg[c_k] - z||^2 + beta ||c_k - sg[z]||^2`` (the paper's double quantization loss; means
  over elements, ``beta = 0.25``);
* MAGVIT-style entropy term, on by default as in the reference configs: with ``p_i = softmax(l_i / T)``,
  ``entropy_weight * (mean_i H(p_i) - H(mean_i p_i))``, ``entropy_weight = 0.05``, ``T = 0.01``, ``log(p + 1e-5)``
  in the batch entropy (``entropy_weight=0`` turns it off, the reference module's own default).

Differences from the reference: no EMA copy of the tokenizer's weights (the reference configs' ``use_ema``, a
property of the training loop, not of the quantizer) and no index remapping (``remap``).

Memory: the soft one-hot is N x K. It is never materialised whole: rows are processed in chunks of at most
``SEARCH_CHUNK_ELEMENTS`` logits under activation checkpointing, so the backward pass recomputes one chunk at a
time (peak extra memory O(chunk), any K; K = 65536 with N = 16384 needs 64 chunks of 256 rows).

Data-parallel runs: the batch entropy ``H(mean_i p_i)`` is the global batch's (``sum_i p_i`` summed over ranks by a
differentiable all-reduce, divided by the global row count; with the runner's gradient average the gradient is the
single-process one); every other term is a mean over rows. Exact up to float rounding, which the sharp default
temperature (0.01) amplifies during training like any change of reduction order (thread count, device): in
tests/test_distributed_methods.py at SGD learning rate 0.05 two runs drift apart from step ~10 (at 0.01, or at
T = 1, they stay within 1e-6 for 30 steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vqbench.distributed import differentiable_sum, global_rows
from vqbench.methods.base import DATA_INIT_SYNC, SEARCH_CHUNK_ELEMENTS, CodebookQuantizer, max_inner_product
from vqbench.quantizer import QuantizeOutput
from vqbench.registry import register_method


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


def entropy_penalty(x: Tensor, codes: Tensor, temperature: float, eps: float = 1e-5,
                    across_ranks: bool = False) -> tuple[Tensor, Tensor]:
    """(mean per-sample entropy, entropy of the mean distribution), chunked and checkpointed.

    ``across_ranks``: ``x`` is this rank's part of a data-parallel batch; the mean distribution is the global
    batch's (probabilities summed over ranks with a differentiable all-reduce, over the global row count). The
    per-sample mean stays this rank's: its average over ranks (the runner averages gradients) is the global one.
    """
    t = torch.tensor(float(temperature), device=x.device)
    prob_sum, sample_sum = x.new_zeros(codes.shape[0]), x.new_zeros(())
    for a, b in _row_chunks(x.shape[0], codes.shape[0]):
        p, h = checkpoint(_entropy_sums, x[a:b], codes, t, use_reentrant=False)
        prob_sum, sample_sum = prob_sum + p, sample_sum + h
    n = max(x.shape[0], 1)
    if across_ranks:
        avg = differentiable_sum(prob_sum) / max(global_rows(x.shape[0], x.device), 1)
    else:
        avg = prob_sum / n
    return sample_sum / n, -(avg * torch.log(avg + eps)).sum()


# version 2: the reference configs' entropy term on by default (weight 0.05, T 0.01)
@register_method("ibq", version=2,
                 search_space={"beta": (0.05, 1.0, "log"), "entropy_weight": (0.01, 0.5, "log")},
                 paper="2412.02692", family="all-code-gradient",
                 description="IBQ: straight-through over the soft one-hot index so every code gets gradient; "
                             "double quantization loss + entropy term (weight 0.05, T 0.01)",
                 differences="no EMA copy of the tokenizer weights (use_ema) and no index remap; soft one-hot "
                             "and entropy in checkpointed row chunks (same values)",
                 beta=0.25, entropy_weight=0.05, entropy_temperature=0.01, init="normal")
class IndexBackpropQuantizer(CodebookQuantizer):
    """IBQ with a learnable codebook ``C`` (K, dim), initialised N(0, 1) like the reference ``nn.Embedding``.

    Restricted-init knob (:class:`vqbench.methods.base.CodebookQuantizer`): ``init="normal"|"uniform"|"data"``;
    ``"uniform"`` is U(-1/K, 1/K), both scaled by ``init_scale`` and shifted by ``init_offset``; ``"data"`` draws
    the codes with :func:`vqbench.methods.base.data_relative_codes` from the first training batch.

    ``distributed_sync``: the class lists every entry, an instance those of its settings.
    """

    ENTROPY_SYNC = "entropy term: the batch-averaged distribution summed over ranks (differentiable all-reduce)"
    distributed_sync = (ENTROPY_SYNC, DATA_INIT_SYNC)

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, entropy_weight: float = 0.05,
                 entropy_temperature: float = 0.01, init: str = "normal", init_scale: float = 1.0,
                 init_offset: float = 0.0) -> None:
        super().__init__(dim, codebook_size, init, init_scale, init_offset)
        self.distributed_sync = (self.ENTROPY_SYNC,) * bool(entropy_weight) + (DATA_INIT_SYNC,) * (init == "data")
        if entropy_temperature <= 0:
            raise ValueError("entropy_temperature must be > 0")
        self.beta, self.entropy_weight, self.entropy_temperature = beta, entropy_weight, entropy_temperature
        self.embedding = nn.Parameter(self.initial_codes())

    def codebook(self) -> Tensor:
        return self.embedding

    def quantize(self, flat: Tensor) -> QuantizeOutput:
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
            sample_h, batch_h = entropy_penalty(flat, codes, self.entropy_temperature, across_ranks=self.training)
            loss = loss + self.entropy_weight * (sample_h - batch_h)
            stats.update(sample_entropy=sample_h.detach(), batch_entropy=batch_h.detach())
        return QuantizeOutput(z_q, indices, loss, stats)
