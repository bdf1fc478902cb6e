"""Tensor helpers shared by the soft-assignment quantizers (gumbel, sqvae, lfq): no quantizer lives here.

* :func:`map_row_chunks`: evaluate a per-row function over row chunks bounded by ``SEARCH_CHUNK_ELEMENTS``
  entries, checkpointed when gradients are on, so no ``N x K`` matrix exists beyond one chunk;
* :func:`gumbel_noise_like`, :func:`sample_codes`: Gumbel-softmax draws (Jang et al., arXiv:1611.01144);
* :func:`kl_to_uniform`: ``sum_n KL(softmax(l_n) || Uniform(K))``;
* :func:`neg_sq_distances`: ``-||x_n - c_k||^2`` logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from vqbench.methods.base import SEARCH_CHUNK_ELEMENTS


def map_row_chunks(fn: Callable[[Tensor], tuple[Tensor, ...]], x: Tensor, row_cost: int,
                   reduce: Sequence[str], *, chunk_elements: int | None = None) -> tuple[Tensor, ...]:
    """Apply ``fn`` to row chunks of ``x`` (N, d) holding at most ``chunk_elements // row_cost`` rows each.

    ``fn`` returns a tuple; ``reduce[i]`` says how output ``i`` is combined over chunks: ``"cat"`` (per-row
    outputs, concatenated along dim 0) or ``"sum"`` (added). With gradients enabled and more than one chunk
    each chunk runs under non-reentrant activation checkpointing, so backward also holds one chunk at a time
    (the RNG state is preserved, so random draws inside ``fn`` are identical in the recomputation).
    ``chunk_elements`` defaults to this module's ``SEARCH_CHUNK_ELEMENTS`` (read at call time).
    """
    budget = SEARCH_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    rows = max(1, budget // max(int(row_cost), 1))
    n = x.shape[0]
    if n <= rows:
        return tuple(fn(x))
    use_checkpoint = torch.is_grad_enabled()
    parts = []
    for start in range(0, n, rows):
        xb = x[start:start + rows]
        parts.append(checkpoint(fn, xb, use_reentrant=False) if use_checkpoint else fn(xb))
    out = []
    for how, chunks in zip(reduce, zip(*parts)):
        out.append(torch.cat(chunks) if how == "cat" else torch.stack(chunks).sum(0))
    return tuple(out)


def gumbel_noise_like(logits: Tensor) -> Tensor:
    """Gumbel(0, 1) noise ``-log(E)``, ``E ~ Exp(1)``, drawn as ``F.gumbel_softmax`` draws it."""
    return -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_().log()


def sample_codes(logits: Tensor, codebook: Tensor, tau: float, hard: bool) -> tuple[Tensor, Tensor]:
    """One Gumbel-softmax sample per row: ``(z_q, index)``; ``hard`` gives the straight-through sample.

    ``y = softmax((logits + g) / tau)``, ``index = argmax y``; ``hard=False``: ``z_q = y @ codebook``;
    ``hard=True``: value ``codebook[index]`` exactly, gradient of ``(onehot - sg[y] + y) @ codebook``.
    """
    y = F.softmax((logits + gumbel_noise_like(logits)) / tau, dim=-1)
    index = y.argmax(dim=-1)
    if not hard:
        return y @ codebook, index
    soft = y @ codebook.detach()
    return codebook[index] + (soft - soft.detach()), index


def kl_to_uniform(logits: Tensor) -> Tensor:
    """Sum over rows of ``KL(softmax(l) || Uniform(K)) = sum_k q_k log q_k + log K``."""
    log_q = F.log_softmax(logits, dim=-1)
    return (log_q.exp() * log_q).sum() + logits.shape[0] * math.log(logits.shape[-1])


def neg_sq_distances(x: Tensor, codes: Tensor) -> Tensor:
    """``-||x_n - c_k||^2`` for rows ``x`` (n, d) and codes (K, d)."""
    return -(x.pow(2).sum(1, keepdim=True) - 2 * x @ codes.t() + codes.pow(2).sum(1))
