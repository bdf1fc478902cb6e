"""The fidelity table: for every registered method, its reference, what the fidelity test compares, the tolerance,
and what cannot be equal (with the reason). ``tests/test_fidelity_*.py`` read their tolerances from here and check
that every registered method has a row."""

from __future__ import annotations

from dataclasses import dataclass

from fidelity.harness import Tolerance

VQP = "lucidrains/vector-quantize-pytorch 1.32.0 (installed)"
TAMING = "CompVis/taming-transformers taming/modules/vqvae/quantize.py@3ba01b241669f5ade541ce990f7650a3b8f65318"
STEP_COMPARISON = "indices (exact), loss, z_q and codebook after each of 5-6 SGD steps"


@dataclass(frozen=True)
class Row:
    """One method: reference (repository/file@commit), what is compared, tolerance, stated differences, test."""

    method: str
    reference: str
    compared: str
    tolerance: Tolerance
    differences: str
    test: str


ROWS: list[Row] = [
    Row("vq", f"{TAMING} VectorQuantizer2(legacy=False)", STEP_COMPARISON, Tolerance(1e-6, 1e-6),
        "none", "test_fidelity_vq.py::test_vq_follows_taming_vector_quantizer2"),
    Row("vq-ema", f"{VQP} VectorQuantize(decay=0.99, eps=1e-5)", STEP_COMPARISON, Tolerance(1e-6, 1e-5),
        "none (also test_methods_vq.py::test_ema_update_matches_vector_quantize_pytorch_and_the_paper, 3 forwards)",
        "test_fidelity_vq.py::test_vq_ema_follows_vector_quantize_pytorch_ema"),
    Row("vq-l2", f"{VQP} VectorQuantize(codebook_dim=8, use_cosine_sim=True)", STEP_COMPARISON + " (ema=True)",
        Tolerance(1e-6, 1e-5),
        "compared with ema=True: vqp refuses a learnable codebook with cosine similarity and ViT-VQGAN's code is not "
        "public, so the default's gradient-learned normalised codebook has no reference (its lookup and loss are "
        "the ones compared here)",
        "test_fidelity_vq.py::test_vq_l2_ema_variant_follows_vector_quantize_pytorch_cosine_codebook"),
    Row("vq-rotation", f"{VQP} VectorQuantize(rotation_trick=True, learnable_codebook=True)",
        STEP_COMPARISON + "; reference codebook lr / beta", Tolerance(1e-6, 1e-5), "loss weights mapped (module doc)",
        "test_fidelity_vq.py::test_learnable_codebook_options_follow_vector_quantize_pytorch[vq-rotation]"),
    Row("vq-orthoreg", f"{VQP} VectorQuantize(orthogonal_reg_weight=10*beta, learnable_codebook=True)",
        STEP_COMPARISON + "; reference codebook lr / beta", Tolerance(1e-5, 1e-5), "loss weights mapped",
        "test_fidelity_vq.py::test_learnable_codebook_options_follow_vector_quantize_pytorch[vq-orthoreg]"),
    Row("vq-restart", f"{VQP} VectorQuantize(threshold_ema_dead_code=1, decay=0.99, learnable_codebook=True), "
        "reset_cluster_size=N/K (our usage-share rule mapped to its counts)",
        STEP_COMPARISON + " with restart_noise=0", Tolerance(1e-6, 1e-5),
        "ours adds N(0, (0.01/sqrt d)^2) noise to a restarted code, vqp none: compared with noise 0 (same batch "
        "rows drawn); the noisy draw is checked in test_methods_vq.py::"
        "test_restart_replaces_only_codes_below_the_threshold_share_with_noisy_batch_vectors",
        "test_fidelity_vq.py::test_learnable_codebook_options_follow_vector_quantize_pytorch[vq-restart]"),
    Row("vq-kmeans", f"{VQP} VectorQuantize(kmeans_init=True, kmeans_iters=10, learnable_codebook=True)",
        STEP_COMPARISON + " with kmeans_seeding='random'", Tolerance(1e-5, 1e-4),
        "vqp seeds k-means with random batch rows, our default is k-means++ (its effect: test_methods_vq_search.py::"
        "test_kmeans_init_lowers_initial_quantisation_error); vqp divides the centre sums by Laplace-smoothed "
        "counts (relative change ~K eps / N) and zeroes a centre whose last Lloyd cluster is empty (ours keeps it); "
        "vqp also initialises on an eval forward, ours on the first training forward",
        "test_fidelity_vq.py::test_vq_kmeans_random_seeding_follows_vector_quantize_pytorch_kmeans_init"),
    Row("vq-entropy", "no authors' code for 2303.06424: tests/fidelity/entropy_ref.py (dense equation) + "
        f"{TAMING}", STEP_COMPARISON, Tolerance(1e-5, 1e-5),
        "reference is the stated equation, not authors' code",
        "test_fidelity_vq.py::test_vq_entropy_follows_vq_vae_plus_the_prior_entropy_penalty"),
    Row("vq-deferred", "no authors' code for 2603.17052: tests/fidelity/deferred_ref.py (identity warm-up, "
        f"{VQP} kmeans, {TAMING})", STEP_COMPARISON + " with kmeans_seeding='random'", Tolerance(1e-5, 1e-5),
        "default seeding k-means++ vs the random-sample seeding compared",
        "test_fidelity_vq.py::test_vq_deferred_random_seeding_follows_identity_warmup_then_kmeans_then_vq"),
    Row("fsq", "arXiv:2309.15505 App. A.1 listing (tests/fidelity/fsq_ref.py); bound='atanh': "
        f"{VQP} FSQ", "indices, z_q and projected codebook after each of 5 SGD steps (no loss)",
        Tolerance(0.0, 1e-5), "none",
        "test_fidelity_vq.py::test_fsq_default_paper_bound_follows_the_paper_code (+ _atanh_)"),
    Row("lfq", f"{VQP} LFQ", STEP_COMPARISON + " at inv_temperature=1", Tolerance(1e-5, 1e-5),
        "vqp takes log(clamp(p, 1e-5)) in the per-sample entropy, ours the exact binary entropy: equal while every "
        "probability > 1e-5, so compared at inv_temperature 1 (default 100)",
        "test_fidelity_vq.py::test_lfq_and_bsq_follow_vector_quantize_pytorch_lfq[lfq]"),
    Row("bsq", f"{VQP} LFQ(spherical=True)", STEP_COMPARISON + " with entropy_group_size=None",
        Tolerance(1e-5, 1e-5),
        "default entropy_group_size=1 (factorised codebook entropy, the BSQ paper's approximation) vs vqp's exact "
        "one: compared with the exact one",
        "test_fidelity_vq.py::test_lfq_and_bsq_follow_vector_quantize_pytorch_lfq[bsq]"),
    Row("simvq", f"{VQP} SimVQ(codebook_transform=nn.Linear(dim, dim))", STEP_COMPARISON, Tolerance(1e-6, 1e-5),
        "none", "test_fidelity_vq.py::test_simvq_follows_vector_quantize_pytorch_simvq"),
]

_BY_NAME = {row.method: row for row in ROWS}


def tolerance(method: str) -> Tolerance:
    """The stated tolerance of ``method`` (fsq-atanh shares fsq's)."""
    return _BY_NAME[method].tolerance


def add_rows(rows: list[Row]) -> None:
    """Register the rows of the other fidelity module (methods with transcribed references)."""
    for row in rows:
        _BY_NAME[row.method] = row
        if row not in ROWS:
            ROWS.append(row)
