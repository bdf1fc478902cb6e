"""Tensor helpers shared by the soft-assignment quantizers (gumbel, sqvae, lfq): no quantizer lives here.

* :func:`map_row_chunks`: evaluate a per-row function over row chunks bounded by ``SEARCH_CHUNK_ELEMENTS``
  entries, checkpointed when gradients are on, so no ``N x K`` matrix exists beyond one chunk;
  :func:`map_global_row_chunks`: the same over the chunks of the global batch of a data-parallel run (so that
  random draws per chunk are those of one process with the whole batch);
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
from vqbench.methods.sync import distributed, row_offset

#: rows of a global chunk before and after this rank's part of it (``(0, 0)``: the whole chunk is here)
Window = tuple[int, int]


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


def map_global_row_chunks(fn: Callable[[Tensor, Window], tuple[Tensor, ...]], x: Tensor, row_cost: int,
                          reduce: Sequence[str], skip: Callable[[int], object], *,
                          chunk_elements: int | None = None) -> tuple[Tensor, ...]:
    """:func:`map_row_chunks` over the chunks the GLOBAL batch would be cut into, for per-chunk random draws.

    ``x`` is this rank's part of the global batch (ranks in order, :func:`vqbench.methods.sync.row_offset`). The
    global batch is cut into chunks exactly as one process holding it would cut it; ``fn(rows, window)`` runs on
    this rank's rows of each chunk that has some, ``window = (before, after)`` the chunk's rows on other ranks (so
    ``fn`` can draw the whole chunk's noise and keep its own rows); ``skip(rows)`` runs, without gradients, for each
    chunk of ``rows`` rows that holds none of this rank's rows, and must make the draws ``fn`` would make, so the
    (shared) random stream advances as in one process. Without a process group: ``map_row_chunks`` with
    ``window = (0, 0)``.
    """
    if not distributed():
        return map_row_chunks(lambda rows: fn(rows, (0, 0)), x, row_cost, reduce, chunk_elements=chunk_elements)
    budget = SEARCH_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    per_chunk = max(1, budget // max(int(row_cost), 1))
    n = x.shape[0]
    offset, total = row_offset(n, x.device)
    spans = [(a, min(total, a + per_chunk)) for a in range(0, total, per_chunk)]
    use_checkpoint = len(spans) > 1 and torch.is_grad_enabled()
    parts = []
    for a, b in spans:
        lo, hi = max(a, offset), min(b, offset + n)
        if lo >= hi:
            with torch.no_grad():
                skip(b - a)
            continue
        rows, window = x[lo - offset:hi - offset], (lo - a, b - hi)
        parts.append(checkpoint(fn, rows, window, use_reentrant=False) if use_checkpoint else fn(rows, window))
    if not parts:  # no rows here: outputs of the right kind, empty
        parts.append(fn(x, (0, 0)))
    if len(parts) == 1:
        return tuple(parts[0])
    return tuple(torch.cat(chunks) if how == "cat" else torch.stack(chunks).sum(0)
                 for how, chunks in zip(reduce, zip(*parts)))


def gumbel_noise_like(logits: Tensor, window: Window = (0, 0)) -> Tensor:
    """Gumbel(0, 1) noise ``-log(E)``, ``E ~ Exp(1)``, drawn as ``F.gumbel_softmax`` draws it.

    With a ``window = (before, after)`` (see :func:`map_global_row_chunks`) the noise of the whole chunk,
    ``before + rows + after`` rows, is drawn and the rows of ``logits`` kept.
    """
    before, after = window
    if before == 0 and after == 0:
        return -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_().log()
    rows = logits.shape[0]
    whole = logits.new_empty((before + rows + after, *logits.shape[1:])).exponential_()
    return -whole[before:before + rows].log()


def sample_codes(logits: Tensor, codebook: Tensor, tau: float, hard: bool,
                 window: Window = (0, 0)) -> tuple[Tensor, Tensor]:
    """One Gumbel-softmax sample per row: ``(z_q, index)``; ``hard`` gives the straight-through sample.

    ``y = softmax((logits + g) / tau)``, ``index = argmax y``; ``hard=False``: ``z_q = y @ codebook``;
    ``hard=True``: value ``codebook[index]`` exactly, gradient of ``(onehot - sg[y] + y) @ codebook``.
    ``window``: the noise is this part of a chunk's draw (:func:`gumbel_noise_like`).
    """
    y = F.softmax((logits + gumbel_noise_like(logits, window)) / tau, dim=-1)
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
