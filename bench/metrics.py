"""Collapse metrics: pure tensor functions (plus one accumulating metric) that know nothing of tasks.

Tokens collapse (codebook vectors converge onto a few values) shows in usage and in the codebook's
geometry; embeddings collapse (encoder outputs lose diversity) shows in the encoder outputs' rank.
Every function documents its formula. Usage-based metrics must be computed over a whole eval split:
accumulate with :class:`CodebookUsage`, never read them off one batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

# Codes (or embeddings) closer than MERGE_TOLERANCE * sigma_z are one "distinct" vector, where
# sigma_z = sqrt(trace Cov(z)) is the RMS distance of the encoder outputs to their mean: the scale
# at which a codebook has to resolve the data.
MERGE_TOLERANCE = 0.05
MAX_MERGE_POINTS = 8192  # single-linkage merging is O(n^2): above this, metrics are NaN (or sampled)


def code_counts(indices: Tensor, codebook_size: int) -> Tensor:
    """How often each code id occurs: ``counts[k] = #{i : indices_i = k}`` (float64, shape (K,))."""
    return torch.bincount(indices.reshape(-1).long().cpu(), minlength=codebook_size).double()


def utilization(counts: Tensor) -> float:
    """Fraction of the codebook used at least once: ``#{k : counts_k > 0} / K``."""
    return float((counts > 0).double().mean()) if counts.numel() else math.nan


def dead_codes(counts: Tensor) -> int:
    """Number of codes never used: ``#{k : counts_k = 0}``."""
    return int((counts == 0).sum())


def perplexity(counts: Tensor) -> float:
    """Codebook perplexity ``exp(H(p))``, ``p_k = counts_k / sum(counts)``, ``H = -sum p log p``.

    Equals K for uniform usage and 1 when one code takes every input.
    """
    total = counts.sum()
    if total <= 0:
        return math.nan
    p = counts[counts > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def singular_values(matrix: Tensor) -> Tensor:
    """Singular values (descending) of the *centred* matrix ``X - mean(X, 0)`` (rows are vectors)."""
    x = matrix.detach().double().cpu()
    x = x - x.mean(dim=0, keepdim=True)
    return torch.linalg.svdvals(x)


def effective_rank(matrix: Tensor) -> float:
    """Effective rank (Roy & Vetterli 2007): ``exp(H(s / sum s))`` of the centred singular values.

    Between 1 (all vectors on one line) and min(n, d) (isotropic); NaN for fewer than 2 rows or a
    zero matrix.
    """
    if matrix.shape[0] < 2:
        return math.nan
    s = singular_values(matrix)
    total = s.sum()
    if total <= 1e-12:
        return 1.0 if matrix.shape[0] else math.nan
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def rms_radius(matrix: Tensor) -> float:
    """``sigma = sqrt(trace Cov(X)) = sqrt(mean_i ||x_i - mean(X)||^2)``: the spread of a point set."""
    x = matrix.detach().double().cpu()
    return float((x - x.mean(dim=0, keepdim=True)).pow(2).sum(dim=1).mean().sqrt())


def count_clusters(points: Tensor, radius: float, *, chunk: int = 1024) -> int:
    """Connected components of the graph linking points closer than ``radius`` (single linkage).

    Exact: the edges are found from chunked pairwise distances (O(n^2 d) time, O(chunk n) memory for the
    distances) and the components by ``scipy.sparse.csgraph.connected_components``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x = points.detach().float().cpu()
    n = x.shape[0]
    if n == 0:
        return 0
    r2 = radius * radius
    sq = x.pow(2).sum(dim=1)
    rows_all, cols_all = [], []
    for start in range(0, n, chunk):
        block = x[start:start + chunk]
        d2 = sq[start:start + chunk, None] - 2 * block @ x.t() + sq[None, :]
        rows, cols = torch.nonzero(d2 <= r2, as_tuple=True)
        keep = (rows + start) < cols
        rows_all.append((rows[keep] + start).numpy())
        cols_all.append(cols[keep].numpy())
    import numpy as np

    rows_np, cols_np = np.concatenate(rows_all), np.concatenate(cols_all)
    graph = coo_matrix((np.ones(len(rows_np), dtype=np.int8), (rows_np, cols_np)), shape=(n, n))
    n_components, _ = connected_components(graph, directed=False)
    return int(n_components)


def tokens_collapse_index(codes: Tensor, data_scale: float, *, tolerance: float = MERGE_TOLERANCE) -> float:
    """Distinct code vectors as a fraction of K: ``clusters(C, tolerance * data_scale) / K``.

    Codes closer than ``tolerance * data_scale`` (single linkage) count as one vector, with
    ``data_scale`` the RMS radius of the encoder outputs (:func:`rms_radius`). 1 means every code is
    distinct at the data's resolution; 1/K means the codebook has collapsed onto one point.
    NaN when K > MAX_MERGE_POINTS (too costly to compute exactly) or the data scale is zero.
    """
    k = codes.shape[0]
    if k > MAX_MERGE_POINTS or not data_scale > 0:
        return math.nan
    return count_clusters(codes, tolerance * data_scale) / k


def sample_rows(x: Tensor, n: int, seed: int = 0) -> Tensor:
    """At most ``n`` rows of ``x``, a fixed random subset (deterministic for a seed)."""
    if x.shape[0] <= n:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:n]]


class CodebookUsage:
    """Accumulates code counts over a whole split; ``compute()`` gives utilization, perplexity, dead codes.

    torchmetrics-style (``update`` / ``compute`` / ``reset``) without its import cost: ``update(indices)``
    with an any-shaped long tensor of code ids; counts stay on the indices' device until ``compute``.
    Across processes, sum ``counts`` (e.g. ``torch.distributed.all_reduce``) before ``compute``.
    """

    def __init__(self, codebook_size: int) -> None:
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.float64)

    def to(self, device: torch.device | str) -> CodebookUsage:
        self.counts = self.counts.to(device)
        return self

    def update(self, indices: Tensor) -> None:
        if self.counts.device != indices.device:
            self.counts = self.counts.to(indices.device)
        self.counts += torch.bincount(indices.reshape(-1).long(), minlength=self.codebook_size).double()

    def compute(self) -> dict[str, float]:
        counts = self.counts.cpu()
        return {"utilization": utilization(counts), "perplexity": perplexity(counts),
                "dead_codes": float(dead_codes(counts))}

    def reset(self) -> None:
        self.counts = torch.zeros(self.codebook_size, dtype=torch.float64, device=self.counts.device)


@dataclass
class Evaluation:
    """One evaluation of a model: scalar metrics and arrays (histograms, spectra) for plots."""

    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, list[float]] = field(default_factory=dict)

    def update(self, other: Evaluation) -> None:
        self.metrics.update(other.metrics)
        self.arrays.update(other.arrays)


def collapse_metrics(counts: Tensor, codebook: Tensor | None, embeddings: Tensor,
                     reference: Tensor | None = None, *, max_points: int = 2048,
                     seed: int = 0) -> Evaluation:
    """All collapse metrics of one eval split.

    ``counts``: code usage over the split (:func:`code_counts` / :class:`CodebookUsage`);
    ``codebook``: effective codes (K, d) or None when not enumerable (codebook metrics are then NaN
    and ``codebook_enumerable`` is 0); ``embeddings``: encoder outputs (n, d) from the split;
    ``reference``: the data's own representation (n, D) for the embeddings-collapse index.

    Metrics: utilization, perplexity, dead_codes, codebook_rank (effective rank of the codebook),
    tokens_collapse_index, embedding_rank, embedding_clusters_frac (distinct embeddings at the merge
    tolerance over a fixed sample, as a fraction of the sample), and embeddings_collapse_index =
    embedding_rank / effective_rank(reference) (1: the encoder keeps the data's diversity).
    Arrays: usage_histogram (counts sorted descending), codebook_spectrum, embedding_spectrum.
    """
    ev = Evaluation()
    ev.metrics["utilization"] = utilization(counts)
    ev.metrics["perplexity"] = perplexity(counts)
    ev.metrics["dead_codes"] = float(dead_codes(counts))
    ev.arrays["usage_histogram"] = counts.sort(descending=True).values.tolist()
    emb = sample_rows(embeddings.detach().reshape(-1, embeddings.shape[-1]), max_points, seed)
    scale = rms_radius(emb)
    ev.metrics["embedding_rank"] = effective_rank(emb)
    ev.arrays["embedding_spectrum"] = singular_values(emb).tolist()
    ev.metrics["embedding_clusters_frac"] = (
        count_clusters(emb, MERGE_TOLERANCE * scale) / emb.shape[0] if scale > 0 else math.nan)
    if reference is not None:
        ref = sample_rows(reference.detach().reshape(reference.shape[0], -1), max_points, seed)
        ref_rank = effective_rank(ref)
        ev.metrics["data_rank"] = ref_rank
        ev.metrics["embeddings_collapse_index"] = ev.metrics["embedding_rank"] / ref_rank
    if codebook is None:
        ev.metrics["codebook_enumerable"] = 0.0
        ev.metrics["codebook_rank"] = math.nan
        ev.metrics["tokens_collapse_index"] = math.nan
    else:
        ev.metrics["codebook_enumerable"] = 1.0
        cb = codebook.detach().float().cpu()
        ev.metrics["codebook_rank"] = effective_rank(cb)
        ev.arrays["codebook_spectrum"] = singular_values(cb).tolist()
        ev.metrics["tokens_collapse_index"] = tokens_collapse_index(cb, scale)
    return ev
