"""The building blocks of :mod:`vqbench.methods.vq`'s options, as pure functions tested directly.

k-means (``kmeans_init``, ``warmup_fraction``; k-means++ seeding, Arthur & Vassilvitskii 2007), the rotation trick
(``rotation``, Fifty et al. 2410.06424 sec. 4.2), the orthogonal codebook penalty (``orthoreg_weight``, Shin et al.
2112.00384 eq. 2) and the soft-assignment entropy (``entropy_weight``, Zhang et al. 2303.06424). Each rule is stated
in its docstring and in the module docstring of :mod:`vqbench.methods.vq`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from vqbench.distributed import differentiable_sum, global_rows
from vqbench.methods.base import SEARCH_CHUNK_ELEMENTS, nearest_code

NORM_EPS = 1e-6  # floor of vector norms in the rotation trick and in l2 normalisation


def unit_rows(x: Tensor) -> Tensor:
    """``x / max(||x||, 1e-6)`` along the last dim."""
    return F.normalize(x, dim=-1, eps=NORM_EPS)


def distinct_rows(rows: Tensor) -> int:
    """Number of distinct rows of ``rows`` (N, d)."""
    return int(torch.unique(rows, dim=0).shape[0]) if rows.shape[0] > 1 else rows.shape[0]


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int = 10, seeding: str = "kmeans++", spherical: bool = False) -> Tensor:
    """``k`` centres of the rows of ``x`` (N, d): seeding, then ``iters`` Lloyd iterations.

    ``seeding="kmeans++"``: first centre uniform, each next one drawn with probability proportional to the squared
    distance to the nearest centre so far (Arthur & Vassilvitskii 2007; O(k N d) time, sequential in k: use
    ``"random"`` for very large k). Once every distinct row is a centre (k >= N) the remaining centres are uniform
    rows, drawn at once (the same RNG stream as one at a time), so the sequential part is at most N steps.
    ``"random"``: k rows drawn without replacement, from the distinct rows when ``x`` repeats some and has at least
    k distinct ones (so the centres are distinct), with replacement when there are fewer than k. Lloyd: assign to
    the nearest centre (chunked search), move each non-empty cluster's centre to its mean (l2-normalised if
    ``spherical``); an empty cluster keeps its centre. Randomness from torch's global RNG (callers in a
    data-parallel run call it on the rows gathered from all ranks, inside
    :func:`vqbench.methods.sync.shared_random_stream`).
    """
    x = x.detach().float()
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one vector")
    if seeding == "random":
        pool = x
        if n >= k:
            distinct = torch.unique(x, dim=0)
            pool = distinct if k <= distinct.shape[0] < n else x
        m = pool.shape[0]
        pick = torch.randperm(m, device=x.device)[:k] if m >= k else torch.randint(m, (k,), device=x.device)
        centres = pool[pick].clone()
    elif seeding == "kmeans++":
        centres = torch.empty(k, x.shape[1], device=x.device)
        first = int(torch.randint(n, ()))
        centres[0] = x[first]
        d2 = (x - x[first]).pow(2).sum(dim=1)
        for i in range(1, k):
            total = float(d2.sum())
            if total == 0.0 or math.isnan(total):
                # every distinct row is a centre (K >= N) or the distances are NaN: d2 can no longer change, so each
                # remaining centre is a uniform row; one draw of K - i indices = the same RNG stream as K - i draws
                centres[i:] = x[torch.randint(n, (k - i,)).to(x.device)]
                break
            j = int(torch.multinomial(d2, 1)) if math.isfinite(total) else int(torch.randint(n, ()))
            centres[i] = x[j]
            d2 = torch.minimum(d2, (x - x[j]).pow(2).sum(dim=1))
    else:
        raise ValueError(f"unknown k-means seeding {seeding!r}: use 'kmeans++' or 'random'")
    for _ in range(iters):
        assign = nearest_code(x, centres)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        means = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        if spherical:
            means = unit_rows(means)
        centres = torch.where((counts > 0).unsqueeze(1), means, centres)
    return centres


def rotate_to(x: Tensor, e: Tensor) -> Tensor:
    """Rotation trick (2410.06424 sec. 4.2): ``sg[lambda R] x`` with ``lambda R x = e``, ``R`` and ``lambda`` constant.

    ``R x = x - 2 (x . r) r + 2 (x . x^) e^`` with ``r = l2(x^ + e^)``, ``lambda = ||e|| / ||x||`` (norms floored at
    1e-6). Rows are vectors (N, d).
    """
    x_norm = x.detach().norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    e_norm = e.detach().norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    u, q = x.detach() / x_norm, e.detach() / e_norm
    r = unit_rows(u + q)
    rotated = x - 2 * (x * r).sum(-1, keepdim=True) * r + 2 * (x * u).sum(-1, keepdim=True) * q
    return rotated * (e_norm / x_norm)


def orthogonal_penalty(codes: Tensor) -> Tensor:
    """``(1/K^2) sum_{i != j} (c^_i . c^_j)^2`` (2112.00384 eq. 2), exact in O(K d^2) time and O(d^2) memory.

    Uses ``sum_{i,j} (c^_i . c^_j)^2 = ||C^T C||_F^2`` for the unit-row matrix ``C`` (K, d) and subtracts the
    diagonal ``sum_i ||c^_i||^4``.
    """
    c = unit_rows(codes.float())
    k = c.shape[0]
    full = (c.t() @ c).pow(2).sum()
    diagonal = c.pow(2).sum(dim=1).pow(2).sum()
    return (full - diagonal) / (k * k)


def _soft_assignment_sum(x: Tensor, codes: Tensor, code_sq: Tensor, temperature: float) -> Tensor:
    # softmax_k(-||x - c_k||^2 / T): ||x||^2 is constant per row and cancels in the softmax
    logits = (2.0 * (x @ codes.t()) - code_sq) / temperature
    return torch.softmax(logits, dim=1).sum(dim=0)


def soft_assignment_entropy(x: Tensor, codes: Tensor, temperature: float,
                            chunk_elements: int = SEARCH_CHUNK_ELEMENTS, across_ranks: bool = False) -> Tensor:
    """``H(pbar)``, ``pbar = mean_i softmax_k(-||x_i - c_k||^2 / T)``, differentiable in ``x`` and ``codes``.

    Rows are processed in chunks of at most ``chunk_elements`` logits; with more than one chunk each is
    checkpointed, so the backward pass recomputes one chunk at a time (peak extra memory O(chunk + K), any N, K).
    ``across_ranks``: ``x`` is this rank's part of a data-parallel batch and ``pbar`` the global batch's (the sum
    of the soft assignments over ranks, differentiable, over the global row count): with gradients averaged over
    ranks the gradient is the single-process one.
    """
    n, k = x.shape[0], codes.shape[0]
    rows = max(1, min(n, chunk_elements // max(k, 1)))
    code_sq = codes.pow(2).sum(dim=1)
    total = x.new_zeros(k)
    for start in range(0, n, rows):
        xb = x[start:start + rows]
        if rows < n and torch.is_grad_enabled():
            part = checkpoint(_soft_assignment_sum, xb, codes, code_sq, temperature, use_reentrant=False)
        else:
            part = _soft_assignment_sum(xb, codes, code_sq, temperature)
        total = total + part
    if across_ranks:
        total, n = differentiable_sum(total), global_rows(n, x.device)
    p = total / max(n, 1)
    return -(p * p.clamp_min(1e-12).log()).sum()
