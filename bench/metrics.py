"""Collapse metrics: pure tensor functions (plus accumulating metrics) that know nothing of tasks.

Tokens collapse (codebook vectors converge onto a few values) shows in usage and in the codebook's
geometry; embeddings collapse (encoder outputs lose diversity) shows in the encoder outputs' rank.
Every function documents its formula, and each formula has one implementation here: the streaming
``torchmetrics`` metric :class:`vqbench.collapse.CollapseMetrics` and :func:`collapse_metrics` both end in
:func:`summarize`. Usage-based metrics must be computed over a whole eval split: accumulate with
:class:`CodebookUsage` (or ``CollapseMetrics``), never read them off one batch.
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


def usage_metrics(counts: Tensor) -> dict[str, float]:
    """``utilization``, ``perplexity`` and ``dead_codes`` of a usage histogram (formulas above)."""
    return {"utilization": utilization(counts), "perplexity": perplexity(counts),
            "dead_codes": float(dead_codes(counts))}


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
    return spectrum_effective_rank(singular_values(matrix))


def spectrum_effective_rank(s: Tensor) -> float:
    """``exp(H(p))`` with ``p = s / sum(s)`` for singular values ``s``; 1.0 for an all-zero spectrum."""
    s = s.double()
    total = s.sum()
    if total <= 1e-12:
        return 1.0 if s.numel() else math.nan
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass
class Moments:
    """Streaming first and second moments of a set of row vectors, enough for their centred spectrum.

    ``n`` rows, ``total = sum_i x_i`` (d,), ``outer = sum_i x_i x_i^T`` (d, d), all float64. The centred
    scatter matrix is ``S = outer - total total^T / n = Xc^T Xc`` (``Xc`` the centred rows), so the singular
    values of ``Xc`` are ``sqrt(eig(S))`` and the RMS radius is ``sqrt(trace(S) / n)``: no row is kept.
    """

    n: float
    total: Tensor
    outer: Tensor

    @classmethod
    def of(cls, matrix: Tensor) -> Moments:
        x = matrix.detach().reshape(-1, matrix.shape[-1]).double().cpu()
        return cls(float(x.shape[0]), x.sum(dim=0), x.t() @ x)

    def scatter(self) -> Tensor:
        """``S = outer - total total^T / n`` (symmetrised), float64 on the CPU."""
        total, outer = self.total.double().cpu(), self.outer.double().cpu()
        s = outer - torch.outer(total, total) / self.n
        return (s + s.t()) / 2

    def spectrum(self) -> Tensor:
        """Singular values (descending, length d) of the centred matrix: ``sqrt(eig(S))``.

        Eigenvalues below ``8 d eps64 trace(outer)`` are float64 rounding of the centring and count as 0
        (a direction whose spread is ~1e-7 of the rows' RMS norm or less is not resolvable from moments).
        """
        if self.n < 1:
            return torch.full((self.total.numel(),), math.nan, dtype=torch.float64)
        eig = torch.linalg.eigvalsh(self.scatter()).flip(0)
        d = eig.numel()
        floor = 8 * d * torch.finfo(torch.float64).eps * float(torch.diagonal(self.outer.double()).sum())
        return torch.where(eig > floor, eig, torch.zeros_like(eig)).sqrt()

    def effective_rank(self) -> float:
        """:func:`spectrum_effective_rank` of :meth:`spectrum`; NaN for fewer than 2 rows."""
        return spectrum_effective_rank(self.spectrum()) if self.n >= 2 else math.nan

    def rms_radius(self) -> float:
        """``sqrt(trace(S) / n)``: :func:`rms_radius` of the rows, from the moments."""
        if self.n < 1:
            return math.nan
        return math.sqrt(max(float(torch.diagonal(self.scatter()).sum()), 0.0) / self.n)

    def principal_axes(self, k: int = 2) -> tuple[Tensor, Tensor]:
        """(mean (d,), the top-``k`` eigenvectors of S as columns (d, k)): a PCA of the rows."""
        _, vectors = torch.linalg.eigh(self.scatter())
        return self.total.double().cpu() / max(self.n, 1.0), vectors.flip(1)[:, :k]


def rms_radius(matrix: Tensor) -> float:
    """``sigma = sqrt(trace Cov(X)) = sqrt(mean_i ||x_i - mean(X)||^2)``: the spread of a point set."""
    x = matrix.detach().double().cpu()
    return float((x - x.mean(dim=0, keepdim=True)).pow(2).sum(dim=1).mean().sqrt())


def count_clusters(points: Tensor, radius: float, *, chunk: int = 1024) -> int:
    """Connected components of the graph linking points closer than ``radius`` (single linkage).

    Exact: the edges are found from chunked pairwise distances (O(n^2 d) time, O(chunk n) memory for the
    distances) and the components by ``scipy.sparse.csgraph.connected_components``.
    """
    labels = cluster_labels(points, radius, chunk=chunk)
    return int(labels.max()) + 1 if len(labels) else 0


def cluster_labels(points: Tensor, radius: float, *, chunk: int = 1024):
    """Component label (numpy int array, shape (n,)) of each point in :func:`count_clusters`' graph."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x = points.detach().float().cpu()
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
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
    rows_np, cols_np = np.concatenate(rows_all), np.concatenate(cols_all)
    graph = coo_matrix((np.ones(len(rows_np), dtype=np.int8), (rows_np, cols_np)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


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


def embedding_clusters_frac(embeddings: Tensor, rms_radius: float, *, max_points: int = 2048, seed: int = 0) -> float:
    """Distinct embeddings at ``MERGE_TOLERANCE x rms_radius`` (single linkage) over a fixed sample of at most
    ``max_points`` rows, as a fraction of the sample (NaN for a zero radius or no rows)."""
    emb = sample_rows(embeddings.detach().reshape(-1, embeddings.shape[-1]), max_points, seed)
    if not rms_radius > 0 or emb.shape[0] == 0:
        return math.nan
    return count_clusters(emb, MERGE_TOLERANCE * rms_radius) / emb.shape[0]


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
        return usage_metrics(self.counts.cpu())

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


def summarize(counts: Tensor, codebook: Tensor | None, latents: Moments | None,
              reference: Moments | None = None, *, tolerance: float = MERGE_TOLERANCE) -> Evaluation:
    """The collapse metrics from accumulated statistics: the one place their definitions are combined.

    ``counts`` (K,): code usage; ``codebook`` (K, d) or None (not enumerable); ``latents``: moments of the
    encoder outputs (None: no latents seen); ``reference``: moments of the data's own representation.

    Metrics: utilization, perplexity, dead_codes (:func:`usage_metrics`); embedding_rank = effective rank of
    the centred latents (:meth:`Moments.effective_rank`); data_rank and embeddings_collapse_index =
    embedding_rank / data_rank when ``reference`` is given; codebook_enumerable; codebook_rank
    (:func:`effective_rank` of the codebook) and tokens_collapse_index (:func:`tokens_collapse_index` at
    ``tolerance`` x the latents' RMS radius). Arrays: usage_histogram (counts sorted descending),
    embedding_spectrum, codebook_spectrum.
    """
    ev = Evaluation()
    counts = counts.detach().double().cpu()
    ev.metrics.update(usage_metrics(counts))
    ev.arrays["usage_histogram"] = counts.sort(descending=True).values.tolist()
    scale = math.nan
    if latents is not None:
        scale = latents.rms_radius()
        ev.metrics["embedding_rank"] = latents.effective_rank()
        ev.arrays["embedding_spectrum"] = latents.spectrum().tolist()
    if reference is not None:
        ref_rank = reference.effective_rank()
        ev.metrics["data_rank"] = ref_rank
        ev.metrics["embeddings_collapse_index"] = ev.metrics.get("embedding_rank", math.nan) / ref_rank
    if codebook is None:
        ev.metrics["codebook_enumerable"] = 0.0
        ev.metrics["codebook_rank"] = math.nan
        ev.metrics["tokens_collapse_index"] = math.nan
    else:
        ev.metrics["codebook_enumerable"] = 1.0
        cb = codebook.detach().float().cpu()
        ev.metrics["codebook_rank"] = effective_rank(cb)
        ev.arrays["codebook_spectrum"] = singular_values(cb).tolist()
        ev.metrics["tokens_collapse_index"] = tokens_collapse_index(cb, scale, tolerance=tolerance)
    return ev


def collapse_metrics(counts: Tensor, codebook: Tensor | None, embeddings: Tensor,
                     reference: Tensor | None = None, *, max_points: int = 2048,
                     seed: int = 0) -> Evaluation:
    """All collapse metrics of one eval split, from a fixed sample of ``max_points`` embeddings.

    ``counts``: code usage over the split (:func:`code_counts` / :class:`CodebookUsage`);
    ``codebook``: effective codes (K, d) or None when not enumerable (codebook metrics are then NaN
    and ``codebook_enumerable`` is 0); ``embeddings``: encoder outputs (n, d) from the split;
    ``reference``: the data's own representation (n, D) for the embeddings-collapse index.

    The metrics and arrays of :func:`summarize` on the moments of the sampled rows, plus
    embedding_clusters_frac (distinct embeddings at the merge tolerance over the sample, as a fraction of
    the sample). :class:`vqbench.collapse.CollapseMetrics` computes the same over every row, streaming.
    """
    emb = sample_rows(embeddings.detach().reshape(-1, embeddings.shape[-1]), max_points, seed)
    ref = None
    if reference is not None:
        ref = Moments.of(sample_rows(reference.detach().reshape(reference.shape[0], -1), max_points, seed))
    latents = Moments.of(emb)
    ev = summarize(counts, codebook, latents, ref)
    scale = latents.rms_radius()
    ev.metrics["embedding_clusters_frac"] = (
        count_clusters(emb, MERGE_TOLERANCE * scale) / emb.shape[0] if scale > 0 else math.nan)
    return ev
