"""``CollapseMetrics``: every collapse metric of a whole epoch as one ``torchmetrics.Metric``.

Kept out of :mod:`vqbench.metrics` because importing torchmetrics costs seconds; the formulas live there
(:func:`vqbench.metrics.summarize`), so this class, :func:`vqbench.metrics.collapse_metrics` and the runner's
tasks compute each number with the same code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from vqbench.errors import UserError
from vqbench.metrics import MERGE_TOLERANCE, Evaluation, Moments, embedding_clusters_frac, summarize


class CollapseMetrics(Metric):
    """Codebook usage and the spectra of codes and latents, exact over a whole epoch, in bounded memory.

    ``CollapseMetrics(K, dim=d)``; ``update(indices, latents=None, codebook=None, reference=None)`` per batch;
    ``compute()`` -> dict of 0-d float64 tensors. State (summed across processes by torchmetrics'
    ``dist_reduce_fx="sum"``): ``counts`` (K,), and for the latents ``n``, ``sum z`` (d,) and
    ``sum z z^T`` (d, d) in float64 (the same three for ``reference`` rows of width ``reference_dim``).
    No latent is stored. ``codebook`` is not summed: the last one passed is used (under DDP every rank
    holds the same codebook; pass it on every rank).

    Formulas, with ``p_k = counts_k / sum(counts)`` and the centred scatter ``S = sum z z^T - n mu mu^T``:

    - ``utilization = #{k : counts_k > 0} / K``; ``dead_codes = #{k : counts_k = 0}``;
      ``perplexity = exp(-sum_k p_k log p_k)``;
    - ``embedding_rank = exp(H(s / sum s))`` with ``s = sqrt(eig(S))`` the singular values of the centred
      latent matrix (Roy & Vetterli's effective rank), in float64;
    - ``codebook_rank``: the same of the centred codebook (its SVD);
    - ``tokens_collapse_index = clusters(C, tolerance * sigma_z) / K``: codes closer than ``tolerance``
      x ``sigma_z = sqrt(trace(S) / n)`` (the latents' RMS radius) are merged by single linkage;
    - ``embeddings_collapse_index = embedding_rank / data_rank``, ``data_rank`` the effective rank of the
      ``reference`` rows (the data's own representation); NaN without them.

    With Lightning: ``self.collapse.update(out.indices, z, quantizer.codebook())`` in ``validation_step``,
    then ``self.log_dict(self.collapse.compute()); self.collapse.reset()`` in ``on_validation_epoch_end``
    (torchmetrics syncs the states across processes before ``compute``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, codebook_size: int, dim: int | None = None, *, reference_dim: int | None = None,
                 tolerance: float = MERGE_TOLERANCE, **kwargs) -> None:
        super().__init__(**kwargs)
        if codebook_size < 1 or (dim is not None and dim < 1) or (reference_dim is not None and reference_dim < 1):
            raise UserError(f"CollapseMetrics needs codebook_size >= 1 and dims >= 1, got K={codebook_size}, "
                            f"dim={dim}, reference_dim={reference_dim}")
        self.codebook_size, self.dim, self.reference_dim, self.tolerance = codebook_size, dim, reference_dim, tolerance
        f64 = torch.float64
        self.add_state("counts", torch.zeros(codebook_size, dtype=f64), dist_reduce_fx="sum")
        for prefix, width in (("latent", dim), ("reference", reference_dim)):
            if width is not None:
                self.add_state(f"{prefix}_n", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
                self.add_state(f"{prefix}_sum", torch.zeros(width, dtype=f64), dist_reduce_fx="sum")
                self.add_state(f"{prefix}_outer", torch.zeros(width, width, dtype=f64), dist_reduce_fx="sum")
        self._codebook: Tensor | None = None

    def update(self, indices: Tensor, latents: Tensor | None = None, codebook: Tensor | None = None,
               reference: Tensor | None = None) -> None:
        """Add a batch: ``indices`` (...) code ids in [0, K); ``latents`` (..., dim) the quantizer's inputs;
        ``codebook`` (K, dim) the current codes; ``reference`` (..., reference_dim) the data's own rows."""
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise UserError(f"indices must be an integer tensor of code ids, got {indices.dtype}: pass the "
                            "quantizer's indices, not its outputs")
        idx = indices.reshape(-1).long()
        if idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.codebook_size:
                raise UserError(f"code indices span [{lo}, {hi}] but the codebook has K={self.codebook_size} codes "
                                f"(valid: 0..{self.codebook_size - 1}): pass the right codebook size or indices")
        self.counts += torch.bincount(idx.to(self.counts.device), minlength=self.codebook_size).double()
        if latents is not None:
            self._add_rows("latent", latents, self.dim, "latents")
        if reference is not None:
            self._add_rows("reference", reference, self.reference_dim, "reference")
        if codebook is not None:
            if codebook.ndim != 2 or codebook.shape[0] != self.codebook_size:
                raise UserError(f"codebook must have shape (K={self.codebook_size}, dim), got {tuple(codebook.shape)}")
            if self.dim is not None and codebook.shape[1] != self.dim:
                raise UserError(f"the codebook's dimension {codebook.shape[1]} disagrees with the latents' "
                                f"{self.dim}: pass the codebook in the latents' space (after any projection)")
            self._codebook = codebook.detach()

    def _add_rows(self, prefix: str, rows: Tensor, width: int | None, what: str) -> None:
        if width is None:
            raise UserError(f"{what} passed to CollapseMetrics.update, but the metric was made without their "
                            f"width: CollapseMetrics(K, dim=..., reference_dim=...)")
        if rows.ndim < 1 or rows.shape[-1] != width:
            raise UserError(f"{what} must have shape (..., {width}) (channel-last), got {tuple(rows.shape)}")
        x = rows.detach().reshape(-1, width).to(device=self.counts.device, dtype=torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise UserError(f"{what} contain NaN or infinite values: check the model (diverged?) or the file")
        setattr(self, f"{prefix}_n", getattr(self, f"{prefix}_n") + x.shape[0])
        setattr(self, f"{prefix}_sum", getattr(self, f"{prefix}_sum") + x.sum(dim=0))
        setattr(self, f"{prefix}_outer", getattr(self, f"{prefix}_outer") + x.t() @ x)

    def moments(self, prefix: str = "latent") -> Moments | None:
        """The accumulated :class:`vqbench.metrics.Moments` of ``latent`` or ``reference`` rows (None if none)."""
        width = self.dim if prefix == "latent" else self.reference_dim
        if width is None or float(getattr(self, f"{prefix}_n")) == 0:
            return None
        return Moments(float(getattr(self, f"{prefix}_n")), getattr(self, f"{prefix}_sum"),
                       getattr(self, f"{prefix}_outer"))

    @property
    def codebook(self) -> Tensor | None:
        """The last codebook passed to :meth:`update` (None if none)."""
        return self._codebook

    def _summary(self) -> Evaluation:
        return summarize(self.counts, self._codebook, self.moments("latent"), self.moments("reference"),
                         tolerance=self.tolerance)

    def compute(self) -> dict[str, Tensor]:
        """Every scalar of :func:`vqbench.metrics.summarize` as a 0-d float64 tensor (NaN: not measurable)."""
        metrics = self._summary().metrics
        for name in ("embedding_rank", "data_rank", "embeddings_collapse_index"):
            metrics.setdefault(name, math.nan)
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in metrics.items()}

    def evaluation(self) -> Evaluation:
        """Metrics (floats) and arrays (usage histogram, spectra) after syncing across processes."""
        with self.sync_context():
            return self._summary()

    def reset(self) -> None:
        """Zero the counts and moments and forget the codebook (call at the start of each epoch)."""
        super().reset()
        self._codebook = None


def split_evaluation(metric: CollapseMetrics, embedding_sample: Tensor, *, max_points: int = 2048,
                     seed: int = 0) -> Evaluation:
    """What a task reports for one split: ``metric.evaluation()`` (exact over every row of the split, summed
    across processes) plus ``embedding_clusters_frac`` over a fixed sample of the split's embeddings (the one
    number that needs rows; the radius is the whole split's)."""
    ev = metric.evaluation()
    latents = metric.moments("latent")
    radius = latents.rms_radius() if latents is not None else math.nan
    ev.metrics["embedding_clusters_frac"] = embedding_clusters_frac(embedding_sample, radius, max_points=max_points,
                                                                    seed=seed)
    return ev
