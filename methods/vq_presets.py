"""The registered presets of :class:`vqbench.methods.vq.VectorQuantizer`: one name per codebook option.

Each preset is the one class with other defaults (the options compose: ``vq-ema`` with ``restart=True`` is a valid
spec whose run id carries vq-ema's version); the rules are stated in the module docstring of
:mod:`vqbench.methods.vq`. The base method ``vq`` is registered on the class itself.

Versions: a change of an option's rule bumps every preset (vq-ema 3, the others 2): share-based dead-code threshold,
k-means init from >= K distinct vectors, nearest-code search centred on the codebook mean (issue 13).
"""

from __future__ import annotations

from typing import Any

from vqbench.methods.vq import VectorQuantizer
from vqbench.registry import register_method

#: the commitment weight's search range, shared by every preset
BETA_SPACE = (0.05, 1.0, "log")


def register_preset(name: str, version: int, paper: str, description: str, differences: str,
                    search_space: dict[str, tuple[Any, ...]] | None = None, **options: Any) -> None:
    """Register ``name`` as :class:`VectorQuantizer` with ``beta=0.25`` and ``options`` as its defaults.

    Its search space is ``beta`` (:data:`BETA_SPACE`) followed by ``search_space``; its family is ``"vq"``.
    """
    register_method(name, version=version, search_space={"beta": BETA_SPACE, **(search_space or {})},
                    paper=paper, family="vq", description=description, differences=differences,
                    beta=0.25, **options)(VectorQuantizer)


register_preset("vq-ema", 3, "1711.00937",
                "VQ-VAE with an EMA codebook (cluster sizes/sums, decay 0.99, Laplace eps 1e-5); "
                "loss = beta*commitment only",
                "none: the update of vector-quantize-pytorch (N starts at 1, m at the initial codes)",
                {"ema_decay": (0.8, 0.999, "linear")},
                ema=True, ema_decay=0.99, ema_eps=1e-5)
register_preset("vq-kmeans", 2, "2107.03312",
                "VQ-VAE whose codebook is initialised by k-means (k-means++ seeding, 10 Lloyd "
                "iterations) on the first training batch(es), at least K distinct vectors",
                "buffers batches until >= K distinct vectors (the reference runs k-means on the first "
                "batch and duplicates codes); k-means++ seeding instead of random rows",
                {"kmeans_iters": (2, 20, "int")},
                kmeans_init=True, kmeans_iters=10, kmeans_seeding="kmeans++", kmeans_batches=1, kmeans_max_batches=64)
register_preset("vq-restart", 2, "2005.00341",
                "VQ-VAE with dead-code restart: codes whose EMA usage share (decay 0.99) falls below "
                "0.25 x the uniform share 1/K are replaced by random batch vectors plus noise",
                "threshold on the EMA usage share (x 1/K), not on raw EMA counts, and a replaced code "
                "restarts at the uniform share: the same rule at any batch size",
                {"restart_threshold": (0.05, 1.0, "log"), "restart_decay": (0.9, 0.999, "linear")},
                restart=True, restart_threshold=0.25, restart_decay=0.99, restart_noise=0.01, restart_interval=1)
register_preset("vq-l2", 2, "2110.04627",
                "ViT-VQGAN factorized codes: project to 8 dims, l2-normalise inputs and codes "
                "(cosine lookup), project back",
                "the quantizer only (the paper's factorized lookup), trained with the VQ-VAE losses",
                code_dim=8, l2_normalize=True)
register_preset("vq-rotation", 2, "2410.06424",
                "VQ-VAE with the rotation trick: gradients pass through the constant rotation + "
                "rescaling that maps z onto its code",
                "none: the rotation of vector-quantize-pytorch (rotate_to), tested against it",
                rotation=True)
register_preset("vq-orthoreg", 2, "2112.00384",
                "VQ-VAE + orthogonal codebook regulariser 10 * sum_{i!=j} cos(c_i, c_j)^2 / K^2",
                "penalty over the whole codebook (vector-quantize-pytorch can subsample codes)",
                {"orthoreg_weight": (1.0, 100.0, "log")},
                orthoreg_weight=10.0)
register_preset("vq-entropy", 2, "2303.06424",
                "VQ-VAE + batch codebook-entropy penalty weight * (log K - H(mean softmax(-d^2/T)))",
                "the prior-distribution (batch entropy) term only: no stochastic mask or contrastive "
                "regulariser of the paper",
                {"entropy_weight": (0.01, 1.0, "log"), "entropy_temperature": (0.1, 10.0, "log")},
                entropy_weight=0.1, entropy_temperature=1.0)
register_preset("vq-deferred", 2, "2603.17052",
                "Deferred quantisation: identity for the first 10% of steps while buffering latents, "
                "then k-means init on the buffer and VQ",
                "not cross-checked against the authors' code: the switch as stated in the docstring "
                "(k-means++ on the newest 16384 latents)",
                {"warmup_fraction": (0.02, 0.3, "linear")},
                warmup_fraction=0.1, warmup_buffer_size=16384)
