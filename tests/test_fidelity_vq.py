"""Fidelity over training steps, VQ presets and implicit quantizers: the registered method and its reference
(vector-quantize-pytorch where it implements the rule, else a transcription under ``tests/fidelity/``) start from
one state, see the same inputs for a few SGD steps, and must give the same indices, losses and codebooks.

Where the reference's loss weights differ only by a constant (vector-quantize-pytorch's learnable codebook takes one
``commitment_weight`` on both sides of ``||x - e||^2``, VQ-VAE weights the codebook side 1 and the encoder side
``beta``), the reference runs with ``commitment_weight = beta`` and a codebook learning rate of ``lr / beta``: with
plain SGD (and ``beta = 0.25``, a power of two) that is exactly the VQ-VAE update; its recorded loss is mapped onto
ours (``(1 + beta) / beta`` times the commitment term). The per-method tolerances, references and stated
differences are the table in ``tests/fidelity/table.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fidelity.deferred_ref import DeferredVQ
from fidelity.entropy_ref import prior_entropy_penalty
from fidelity.fsq_ref import PaperFSQ
from fidelity.harness import Side, compare, load_state, make_problem, ours_side, run_steps, start_codes
from fidelity.table import tolerance
from fidelity.vq_ref import TamingVectorQuantizer2
from torch import Tensor, nn

from vqbench.registry import create_method

vqp = pytest.importorskip("vector_quantize_pytorch")

STEPS, N, IN_DIM, DIM, K, LR, BETA = 5, 64, 6, 4, 16, 0.5, 0.25


def _vqp_side(ref: nn.Module, learnable: bool, lr: float = LR, beta: float = BETA,
              reported=None) -> Side:
    """vector-quantize-pytorch's ``VectorQuantize`` as a harness side; a learnable codebook steps at ``lr / beta``."""
    ref.train()

    def forward(z: Tensor):
        quantized, indices, loss, breakdown = ref(z[None], return_loss_breakdown=True)
        out = (quantized[0], indices[0], loss)
        return out if reported is None else (*out, reported(breakdown))

    def codebook() -> Tensor:
        return ref.project_out(ref.codebook)

    embed = ref._codebook.embed
    rest = [p for p in ref.parameters() if p is not embed and p.requires_grad]
    groups = [{"params": rest}]
    if learnable:
        groups.append({"params": [embed], "lr": lr / beta})
    return Side(forward, codebook, groups)


def _vq_vae_loss(breakdown) -> Tensor:
    """vector-quantize-pytorch's ``beta * ||x - e||^2`` as VQ-VAE's ``||sg[x] - e||^2 + beta ||x - sg[e]||^2``."""
    return breakdown.commitment * (1 + BETA)


# -- vq: taming-transformers VectorQuantizer2 ----------------------------------------------------------------------
def _ours_and_taming(name: str, problem) -> tuple[nn.Module, TamingVectorQuantizer2]:
    """Our ``name`` and taming's VectorQuantizer2, both starting from the same codes near the first batch."""
    codes = start_codes(problem, K)
    ours = create_method(name, dim=DIM, codebook_size=K)
    load_state(ours, embedding=codes)
    ref = TamingVectorQuantizer2(K, DIM, BETA)
    with torch.no_grad():
        ref.embedding.weight.copy_(codes)
    return ours, ref


def test_vq_follows_taming_vector_quantizer2():
    problem = make_problem(STEPS, N, IN_DIM, DIM)
    ours, ref = _ours_and_taming("vq", problem)
    ref_side = Side(ref, lambda: ref.embedding.weight, [{"params": list(ref.parameters())}])
    compare("vq", run_steps(ours_side(ours), problem, LR), run_steps(ref_side, problem, LR), tolerance("vq"))


# -- EMA, cosine EMA -----------------------------------------------------------------------------------------------
def test_vq_ema_follows_vector_quantize_pytorch_ema():
    problem = make_problem(STEPS, N, IN_DIM, DIM)
    codes = start_codes(problem, K)
    ours = create_method("vq-ema", dim=DIM, codebook_size=K)
    load_state(ours, embedding=codes, ema_sum=codes)
    ref = vqp.VectorQuantize(dim=DIM, codebook_size=K, decay=0.99, eps=1e-5, commitment_weight=BETA,
                             rotation_trick=False, threshold_ema_dead_code=0)
    with torch.no_grad():
        ref._codebook.embed.copy_(codes[None])
        ref._codebook.embed_avg.copy_(codes[None])
    compare("vq-ema", run_steps(ours_side(ours), problem, LR), run_steps(_vqp_side(ref, False), problem, LR),
            tolerance("vq-ema"))


def test_vq_l2_ema_variant_follows_vector_quantize_pytorch_cosine_codebook():
    dim = 16
    problem = make_problem(STEPS, N, IN_DIM, dim)
    ours = create_method("vq-l2", dim=dim, codebook_size=K, ema=True, ema_decay=0.99, ema_eps=1e-5)
    ref = vqp.VectorQuantize(dim=dim, codebook_size=K, codebook_dim=8, use_cosine_sim=True, decay=0.99, eps=1e-5,
                             commitment_weight=BETA, rotation_trick=False, threshold_ema_dead_code=0)
    with torch.no_grad():
        low = F.normalize(ours.proj_in(problem.encoder(problem.inputs[0])), dim=1)
        codes = F.normalize(low[:K] + 0.05 * torch.randn(K, 8, generator=torch.Generator().manual_seed(3)), dim=1)
    load_state(ours, embedding=codes, ema_sum=codes)
    ref.project_in.load_state_dict(ours.proj_in.state_dict())
    ref.project_out.load_state_dict(ours.proj_out.state_dict())
    with torch.no_grad():
        ref._codebook.embed.copy_(codes[None])
        ref._codebook.embed_avg.copy_(codes[None])
    compare("vq-l2", run_steps(ours_side(ours), problem, LR), run_steps(_vqp_side(ref, False), problem, LR),
            tolerance("vq-l2"))


# -- learnable-codebook options of vector-quantize-pytorch -----------------------------------------------------------
@pytest.mark.parametrize("name", ["vq-rotation", "vq-orthoreg", "vq-restart"])
def test_learnable_codebook_options_follow_vector_quantize_pytorch(name):
    problem = make_problem(STEPS, N, IN_DIM, DIM)
    codes = start_codes(problem, K, far=4 if name == "vq-restart" else 0)
    # vqp restarts without noise. Its rule in counts (EMA count < T, counts start at 1, a restart resets to R) is ours
    # in shares at N vectors a step (share < r / K, shares start at r / K, a restart resets to 1 / K) when
    # r = T K / N and R = N / K: with T = 1 that is our default r = 0.25 at N / K = 4, and R = 4.
    overrides = {"restart_noise": 0.0, "restart_threshold": K / N} if name == "vq-restart" else {}
    ours = create_method(name, dim=DIM, codebook_size=K, **overrides)
    load_state(ours, embedding=codes)
    options = {"vq-rotation": {"rotation_trick": True},
               "vq-orthoreg": {"rotation_trick": False, "orthogonal_reg_weight": 10.0 * BETA},
               "vq-restart": {"rotation_trick": False, "threshold_ema_dead_code": 1.0, "decay": 0.99}}[name]
    ref = vqp.VectorQuantize(dim=DIM, codebook_size=K, learnable_codebook=True, ema_update=False,
                             commitment_weight=BETA, **options)
    with torch.no_grad():
        ref._codebook.embed.copy_(codes[None])
    if name == "vq-restart":
        ref._codebook.reset_cluster_size = N / K  # see the mapping above

    def reported(breakdown) -> Tensor:
        return _vq_vae_loss(breakdown) + 10.0 * breakdown.orthogonal_reg if name == "vq-orthoreg" \
            else _vq_vae_loss(breakdown)

    ours_trace = run_steps(ours_side(ours), problem, LR)
    compare(name, ours_trace, run_steps(_vqp_side(ref, True, reported=reported), problem, LR), tolerance(name))
    if name == "vq-restart":  # the dead codes were replaced by batch vectors
        assert (ours_trace.codebooks[0][-4:] - codes[-4:]).abs().max() > 10


def test_vq_kmeans_random_seeding_follows_vector_quantize_pytorch_kmeans_init():
    """vqp seeds k-means by a random sample of the batch; ``kmeans_seeding="random"`` draws the same rows."""
    problem = make_problem(STEPS, 256, IN_DIM, DIM)
    ours = create_method("vq-kmeans", dim=DIM, codebook_size=K, kmeans_seeding="random")
    ref = vqp.VectorQuantize(dim=DIM, codebook_size=K, kmeans_init=True, kmeans_iters=10, learnable_codebook=True,
                             ema_update=False, commitment_weight=BETA, rotation_trick=False)
    trace = run_steps(ours_side(ours), problem, LR)
    compare("vq-kmeans", trace, run_steps(_vqp_side(ref, True, reported=_vq_vae_loss), problem, LR),
            tolerance("vq-kmeans"))


# -- regulariser and schedule without authors' code: the stated equations ---------------------------------------
def test_vq_entropy_follows_vq_vae_plus_the_prior_entropy_penalty():
    problem = make_problem(STEPS, N, IN_DIM, DIM)
    ours, ref = _ours_and_taming("vq-entropy", problem)

    def forward(z: Tensor):
        z_q, indices, loss = ref(z)
        return z_q, indices, loss + 0.1 * prior_entropy_penalty(z, ref.embedding.weight, temperature=1.0)

    ref_side = Side(forward, lambda: ref.embedding.weight, [{"params": list(ref.parameters())}])
    compare("vq-entropy", run_steps(ours_side(ours), problem, LR), run_steps(ref_side, problem, LR),
            tolerance("vq-entropy"))


def test_vq_deferred_random_seeding_follows_identity_warmup_then_kmeans_then_vq():
    steps, warmup_fraction = 6, 0.5  # identity for steps 0-2, k-means on their latents before step 3
    problem = make_problem(steps, N, IN_DIM, DIM)
    codes = start_codes(problem, K)
    ours = create_method("vq-deferred", dim=DIM, codebook_size=K, warmup_fraction=warmup_fraction,
                         kmeans_seeding="random")
    load_state(ours, embedding=codes)
    ref = DeferredVQ(TamingVectorQuantizer2(K, DIM, BETA), switch_step=int(warmup_fraction * steps))
    with torch.no_grad():
        ref.vq.embedding.weight.copy_(codes)

    def ours_hook(step: int) -> None:
        torch.manual_seed(500 + step)
        ours.on_step(step, steps)

    def ref_hook(step: int) -> None:
        torch.manual_seed(500 + step)
        ref.before_step(step)

    ref_side = Side(ref, lambda: ref.vq.embedding.weight, [{"params": list(ref.parameters())}], ref_hook)
    trace = run_steps(ours_side(ours, ours_hook), problem, LR)
    compare("vq-deferred", trace, run_steps(ref_side, problem, LR), tolerance("vq-deferred"))
    assert torch.equal(trace.losses[0], torch.zeros(())) and trace.losses[-1] > 0


# -- implicit codebooks -----------------------------------------------------------------------------------------
def _implicit_side(ref: nn.Module, call, codebook) -> Side:
    ref.train()
    return Side(call, codebook, [{"params": [p for p in ref.parameters() if p.requires_grad]}])


def test_fsq_atanh_bound_follows_vector_quantize_pytorch_fsq():
    levels, dim = [5, 4, 3], 6
    problem = make_problem(STEPS, N, IN_DIM, dim)
    ours = create_method("fsq", dim=dim, codebook_size=0, levels=levels, bound="atanh")
    ref = vqp.FSQ(levels=levels, dim=dim)
    ref.project_in.load_state_dict(ours.project_in.state_dict())
    ref.project_out.load_state_dict(ours.project_out.state_dict())

    def call(z: Tensor):
        out, indices = ref(z[None])
        return out[0], indices[0], z.new_zeros(())

    side = _implicit_side(ref, call, lambda: ref.indices_to_codes(torch.arange(ref.codebook_size)))
    compare("fsq-atanh", run_steps(ours_side(ours), problem, LR), run_steps(side, problem, LR), tolerance("fsq"))


def test_fsq_default_paper_bound_follows_the_paper_code():
    levels, dim = [5, 4, 3], 6
    problem = make_problem(STEPS, N, IN_DIM, dim)
    ours = create_method("fsq", dim=dim, codebook_size=0, levels=levels)
    ref = PaperFSQ(levels, dim)
    ref.project_in.load_state_dict(ours.project_in.state_dict())
    ref.project_out.load_state_dict(ours.project_out.state_dict())
    side = _implicit_side(ref, lambda z: (*ref(z), z.new_zeros(())), ref.codebook)
    compare("fsq", run_steps(ours_side(ours), problem, LR), run_steps(side, problem, LR), tolerance("fsq"))


@pytest.mark.parametrize("name", ["lfq", "bsq"])
def test_lfq_and_bsq_follow_vector_quantize_pytorch_lfq(name):
    """At ``inv_temperature = 1`` every soft probability stays above vqp's 1e-5 log clamp (see the table)."""
    dim = 6
    problem = make_problem(STEPS, N, IN_DIM, dim, spread=0.5)
    ours = create_method(name, dim=dim, codebook_size=K, inv_temperature=1.0, entropy_group_size=None)
    ref = vqp.LFQ(dim=dim, codebook_size=K, entropy_loss_weight=0.1, diversity_gamma=1.0, spherical=name == "bsq",
                  commitment_loss_weight=0.25 if name == "lfq" else 0.0)
    ref.project_in.load_state_dict(ours.project_in.state_dict())
    ref.project_out.load_state_dict(ours.project_out.state_dict())

    def call(z: Tensor):
        out = ref(z[None], inv_temperature=1.0)
        return out.quantized[0], out.indices[0], out.entropy_aux_loss

    side = _implicit_side(ref, call, lambda: ref.indices_to_codes(torch.arange(K)))
    compare(name, run_steps(ours_side(ours), problem, LR), run_steps(side, problem, LR), tolerance(name))


def test_simvq_follows_vector_quantize_pytorch_simvq():
    problem = make_problem(STEPS, N, IN_DIM, DIM)
    ours = create_method("simvq", dim=DIM, codebook_size=K)
    ref = vqp.SimVQ(dim=DIM, codebook_size=K, codebook_transform=nn.Linear(DIM, DIM), rotation_trick=False,
                    input_to_quantize_commit_loss_weight=BETA, commitment_weight=1.0)
    with torch.no_grad():
        ref.frozen_codebook.copy_(ours.basis)
    ref.code_transform.load_state_dict(ours.proj.state_dict())
    side = _implicit_side(ref, lambda z: tuple(t[0] if t.dim() else t for t in ref(z[None])), lambda: ref.codebook)
    compare("simvq", run_steps(ours_side(ours), problem, LR), run_steps(side, problem, LR), tolerance("simvq"))
