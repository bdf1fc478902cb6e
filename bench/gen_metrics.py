"""Metrics of generative priors over tokens: likelihood, emitted codes, precision/recall, gFID.

Pure tensor functions, like :mod:`vqbench.metrics`; formulas in each docstring.

* :func:`cross_entropy_bits`: the prior's negative log-likelihood in bits,
  ``-sum_i log2 p(s_i | s_<i)``; divided by the number of tokens it is the NLL in bits per token
  (``nats / ln 2``), 0 for a perfect predictor and ``log2 K`` for a uniform one over K codes.
* :func:`emitted_codes`: which codes the prior actually emits when sampling, as a fraction of K.
* :func:`precision_recall`: improved precision and recall of Kynkaanniemi et al., "Improved
  Precision and Recall Metric for Assessing Generative Models", arXiv:1904.06991, eq. 1-3, with
  k-NN hyperspheres as manifold estimate (default k = 3, as the paper and its reference code).
* :func:`generative_extractors`: the feature extractors of the gFID (Frechet distance of samples to
  real images), computed by :class:`vqbench.image_metrics.FrechetDistance` with prefix ``g`` and so
  named by the same rule as the reconstruction FID: ``gfid_inception`` only with the real Inception
  weights, else ``gfd_<extractor>``. ``gfd_randcnn`` is always among them (a gFD every machine can
  compute, hence comparable across all runs); the best available extractor is added when it differs.
* :class:`SampleClassifier`: a task's own trained classifier (e.g. ``digitsnet`` for the digits): its
  penultimate features give one more gFD and precision/recall, and its predicted classes give
  :func:`class_coverage` and :func:`class_kl` (mode dropping and mode imbalance of the samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.image_metrics import ImageFeatures, fd_metric_name, resolve_extractor
from vqbench.metrics import code_counts, perplexity

#: at most this many pairwise distances exist at once in the k-NN computations (64 MiB of float32)
DISTANCE_CHUNK_ELEMENTS = 2**24
#: the extractor whose gFD every generation run logs
BASE_EXTRACTOR = "randcnn"
#: the name of that always-present gFD (the main metric of the generation tasks without a sample classifier)
BASE_GFD = fd_metric_name(BASE_EXTRACTOR, "g")


def cross_entropy_bits(logits: Tensor, targets: Tensor) -> float:
    """Summed negative log-likelihood in bits: ``sum_n -log2 softmax(logits_n)[targets_n]``.

    ``logits`` (..., K), ``targets`` (...) long. Bits per token = this sum / ``targets.numel()``
    (equivalently the mean cross-entropy in nats divided by ``ln 2``). Accumulated in float64.
    """
    nats = F.cross_entropy(logits.detach().reshape(-1, logits.shape[-1]).double(), targets.reshape(-1).long(),
                           reduction="sum")
    return float(nats) / math.log(2.0)


def emitted_codes(tokens: Tensor, codebook_size: int) -> dict[str, float]:
    """Codes a prior emits in its samples ``tokens`` (any shape, ids in ``[0, K)``).

    ``emitted_code_frac = #{k : k occurs in tokens} / K`` and ``emitted_perplexity = exp(H(p))`` of
    the emitted-code histogram ``p_k = count_k / #tokens`` (:func:`vqbench.metrics.perplexity`).
    """
    counts = code_counts(tokens, codebook_size)
    return {"emitted_code_frac": float((counts > 0).double().mean()), "emitted_perplexity": perplexity(counts)}


def class_histogram(predicted: Tensor, num_classes: int) -> Tensor:
    """Shares ``p_c = #{i : predicted_i = c} / N`` of the predicted classes ``predicted`` (N,) in ``[0, C)``
    (float64, sums to 1)."""
    if predicted.numel() == 0:
        raise ValueError("no predictions")
    counts = torch.bincount(predicted.reshape(-1).long().cpu(), minlength=num_classes)
    if counts.numel() > num_classes:
        raise ValueError(f"predicted classes must be in [0, {num_classes})")
    return counts.double() / predicted.numel()


def class_coverage(predicted: Tensor, num_classes: int, min_share: float | None = None) -> float:
    """Fraction of the ``C = num_classes`` classes that at least ``min_share`` of the samples are assigned to.

    ``coverage = (1/C) #{c : p_c >= tau}`` with ``p`` = :func:`class_histogram` of the classifier's argmax
    predictions and ``tau = min_share``, by default ``1 / (2 C)`` (half a uniform share: 5% for 10 classes), so a
    class that a few stray samples land in does not count as generated. 1 when every class gets at least half
    its fair share; ``k / C`` when the samples concentrate on ``k`` classes.
    """
    tau = 1.0 / (2 * num_classes) if min_share is None else min_share
    if not 0 < tau <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {tau}")
    return float((class_histogram(predicted, num_classes) >= tau).double().mean())


def class_kl(predicted: Tensor, reference: Tensor, num_classes: int) -> float:
    """``KL(p || q) = sum_c p_c ln(p_c / q_c)`` (nats, terms with ``p_c = 0`` are 0) between the predicted-class
    histograms of the samples (``predicted``) and of the real images (``reference``): 0 when the samples spread over
    the classes as the real images do; grows with imbalance, ``ln(1/q_c)`` when every sample is one class ``c``.
    Infinite only if the samples have a class the real images never get.
    """
    p, q = class_histogram(predicted, num_classes), class_histogram(reference, num_classes)
    support = p > 0
    if bool((q[support] == 0).any()):
        return math.inf
    return float((p[support] * (p[support] / q[support]).log()).sum())


@dataclass
class SampleClassifier:
    """A fixed classifier of a task's images: ``features`` (an :class:`ImageFeatures` over its penultimate layer,
    named after it) and ``head`` (features -> ``num_classes`` logits); ``info``: figures about the classifier
    itself (e.g. its test accuracy) that every evaluation using it logs alongside."""

    features: ImageFeatures
    head: nn.Module
    num_classes: int
    info: dict[str, float] = field(default_factory=dict)

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """Argmax classes (N,) of penultimate ``features`` (N, F)."""
        return self.head(features).argmax(dim=1)


def _sq_distances(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``||a_i - b_j||^2 = |a_i|^2 - 2 a_i.b_j + |b_j|^2`` (clamped at 0)."""
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.t() + b.pow(2).sum(1)[None]).clamp_min_(0)


def _row_chunk(n_cols: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, n_cols))


def knn_radii(features: Tensor, k: int = 3, *, chunk_elements: int = DISTANCE_CHUNK_ELEMENTS) -> Tensor:
    """Squared k-NN radius of every point of ``features`` (N, D) within its own set.

    ``r_i^2 = ||phi_i - NN_k(phi_i)||^2``, the k-th smallest of ``{||phi_i - phi_j||^2 : j}`` counting
    ``phi_i`` itself as the 0-th (so the k-th nearest *other* point; duplicates count as
    neighbours at distance 0), exactly as the paper's reference code. Needs ``N > k``.
    """
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"k-NN radii need more than k={k} points, got {n}")
    x = features.reshape(n, -1)
    radii = torch.empty(n, dtype=x.dtype, device=x.device)
    step = _row_chunk(n, chunk_elements)
    for start in range(0, n, step):
        d2 = _sq_distances(x[start:start + step], x)
        rows = torch.arange(d2.shape[0], device=x.device)
        d2[rows, rows + start] = 0.0  # the point itself, exactly (rounding can make it slightly positive)
        radii[start:start + step] = torch.kthvalue(d2, k + 1, dim=1).values
    return radii


def manifold_coverage(queries: Tensor, reference: Tensor, reference_radii: Tensor, *,
                      chunk_elements: int = DISTANCE_CHUNK_ELEMENTS) -> float:
    """Fraction of ``queries`` inside the k-NN manifold of ``reference`` (Kynkaanniemi et al. eq. 1-2).

    ``f(phi, Phi) = 1`` if ``||phi - phi'||^2 <= r(phi')^2`` for some ``phi'`` in ``Phi`` (``r`` from
    :func:`knn_radii`), else 0; returns ``(1/|queries|) sum_phi f(phi, reference)``.
    """
    q, ref = queries.reshape(queries.shape[0], -1), reference.reshape(reference.shape[0], -1)
    inside = 0
    step = _row_chunk(ref.shape[0], chunk_elements)
    for start in range(0, q.shape[0], step):
        d2 = _sq_distances(q[start:start + step], ref)
        inside += int((d2 <= reference_radii[None]).any(dim=1).sum())
    return inside / q.shape[0]


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (arXiv:1904.06991, eq. 3) of features ``fake`` against ``real``.

    ``precision = (1/|Phi_g|) sum_{phi_g} f(phi_g, Phi_r)``: the fraction of generated samples inside
    the real manifold (quality); ``recall = (1/|Phi_r|) sum_{phi_r} f(phi_r, Phi_g)``: the fraction of
    real samples inside the generated manifold (coverage). Manifolds are unions of balls around
    each point with its k-NN radius (:func:`knn_radii`, :func:`manifold_coverage`). Computed in
    float64 (the features are cast).
    """
    real, fake = real.reshape(real.shape[0], -1).double(), fake.reshape(fake.shape[0], -1).double()
    return {"precision": manifold_coverage(fake, real, knn_radii(real, k)),
            "recall": manifold_coverage(real, fake, knn_radii(fake, k))}


def generative_extractors(fd: bool | str | None = "auto",
                          device: torch.device | str = "cpu") -> tuple[list[ImageFeatures], ImageFeatures]:
    """(extractors whose gFD is logged, the one precision/recall use).

    ``fd`` is the reconstruction task's setting: ``"auto"``/True picks the best available extractor
    (:func:`vqbench.image_metrics.resolve_extractor`: Inception when its weights are local), a name picks
    that one, ``False``/``"off"`` none beyond the base. The list is ``[randcnn]`` plus that extractor
    when it differs; precision/recall use the last (the best) one.
    """
    if fd in (True, "auto"):
        best = resolve_extractor()
    elif fd in (False, None, "none", "off"):
        best = BASE_EXTRACTOR
    else:
        best = str(fd)
    names = [BASE_EXTRACTOR] + ([best] if best != BASE_EXTRACTOR else [])
    features = [ImageFeatures(name, device) for name in names]
    return features, features[-1]
