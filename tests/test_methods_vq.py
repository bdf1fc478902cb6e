"""VectorQuantizer and its presets: paper equations by hand, cross-checks against vector-quantize-pytorch,
behavioural tests per option (each able to fail), resume safety and tiny end-to-end runs."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import orthogonal_loss_fn
from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to as vqpt_rotate_to

from vqbench.errors import UserError
from vqbench.methods.base import (
    blocked_argmin,
    data_relative_codes,
    max_inner_product,
    nearest_code,
    search_block,
)
from vqbench.methods.vq import (
    VectorQuantizer,
    kmeans,
    orthogonal_penalty,
    rotate_to,
    soft_assignment_entropy,
    unit_rows,
)
from vqbench.registry import METHODS, create_method
from vqbench.runner import run
from vqbench.spec import make_spec
from vqbench.store import ResultStore

PRESETS = ["vq", "vq-ema", "vq-kmeans", "vq-restart", "vq-l2", "vq-rotation", "vq-orthoreg", "vq-entropy",
           "vq-deferred"]


def gmm_latents(n: int, dim: int, modes: int, seed: int, spread: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(modes, dim, generator=g) * spread
    return centres[torch.randint(modes, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)


def naive_nearest(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.double(), codes.double()).argmin(dim=1)


# -- nearest-code search -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [None, (1, 1), (3, 5), (7, 16), (64, 3), (1000, 1000)])
def test_blocked_search_equals_brute_force_for_any_block_shape(block):
    g = torch.Generator().manual_seed(3)
    x, codes = torch.randn(37, 6, generator=g), torch.randn(23, 6, generator=g)
    assert torch.equal(nearest_code(x, codes, block=block), naive_nearest(x, codes))
    assert torch.equal(max_inner_product(x, codes, block=block), (x.double() @ codes.double().t()).argmax(dim=1))


def test_blocked_search_breaks_ties_to_the_lowest_index_across_blocks():
    codes = torch.tensor([[5.0, 5.0], [1.0, 0.0], [0.0, 3.0], [1.0, 0.0], [1.0, 0.0]])  # codes 1, 3, 4 identical
    x = torch.tensor([[1.0, 0.1], [0.9, -0.2]])
    for block in [(1, 1), (2, 2), (1, 3), (2, 5)]:
        assert nearest_code(x, codes, block=block).tolist() == [1, 1]
    dots = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    query, bias = torch.tensor([[2.0, 1.0]]), torch.tensor([9.0, 0, 0, 0])
    for block in [(1, 1), (1, 2), (1, 4)]:
        assert max_inner_product(query, dots, block=block).tolist() == [0]
        assert blocked_argmin(query, dots, bias, -1.0, block).tolist() == [2]
    assert nearest_code(x[:0], codes).shape == (0,)


@pytest.mark.parametrize("offset", [10.0, 100.0, 1000.0])
def test_nearest_code_is_exact_when_codes_and_inputs_share_a_large_mean(offset):
    """||c||^2 - 2 x.c in float32 cancels catastrophically at a shared offset (offset 100, spread 0.01: ~0% of the
    answers right); the search centres both sides on the codebook mean and agrees with float64."""
    g = torch.Generator().manual_seed(26)
    codes = offset + 0.01 * torch.randn(512, 32, generator=g)
    x = offset + 0.01 * torch.randn(2000, 32, generator=g)
    expected = naive_nearest(x, codes)
    assert torch.equal(nearest_code(x, codes), expected)
    assert torch.equal(nearest_code(x, codes, block=(64, 100)), expected)  # any block shape
    uncentred = blocked_argmin(x, codes, codes.pow(2).sum(1), -2.0)
    if offset >= 100:  # the test can fail: the plain expansion is wrong here
        assert float((uncentred == expected).float().mean()) < 0.5


def test_search_blocks_are_cache_sized_on_cpu_and_never_hold_n_by_k():
    rows, width = search_block(torch.device("cpu"), 16384, 2**20)
    assert rows * width <= 2**20 and width <= 2**20
    assert search_block(torch.device("cpu"), 5, 3) == (5, 3)


@pytest.mark.parametrize("name,overrides", [
    ("vq-ema", {}), ("vq-restart", {"restart_threshold": 1e9}), ("vq-ema", {"restart": True, "restart_threshold": 1e9}),
    ("vq-l2", {"restart": True, "restart_threshold": 1e9}), ("vq-l2", {"ema": True}),
    ("vq-restart", {"restart_threshold": 1e9, "entropy_weight": 0.1}), ("vq-ema", {"entropy_weight": 0.1}),
    ("vq-restart", {"restart_threshold": 1e9, "orthoreg_weight": 0.5}), ("vq-rotation", {"ema": True})])
def test_in_place_codebook_updates_leave_this_steps_gradients_as_without_them(name, overrides):
    """EMA / restart rewrite the codebook in place after the lookup; the step's gradients must not see it."""
    torch.manual_seed(0)
    updated = create_method(name, dim=6, codebook_size=16, **overrides).train()
    frozen = create_method(name, dim=6, codebook_size=16, **overrides).train()
    frozen.load_state_dict(updated.state_dict())
    frozen._update_state = lambda x, indices: {}  # the same forward with no state update
    z = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(64, 6, generator=torch.Generator().manual_seed(2))
    grads = []
    for module in (updated, frozen):
        torch.manual_seed(3)
        zz = z.clone().requires_grad_(True)
        out = module(zz)
        (out.loss + (out.z_q * upstream).sum()).backward()
        grads.append((zz.grad, [p.grad for p in module.parameters() if p.requires_grad]))
    assert not torch.equal(updated.embedding, frozen.embedding)  # the update did happen
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- registry -----------------------------------------------------------------------------------------------------
def test_presets_are_registered_with_metadata_and_defaults():
    papers = {"vq": "1711.00937", "vq-ema": "1711.00937", "vq-kmeans": "2107.03312", "vq-restart": "2005.00341",
              "vq-l2": "2110.04627", "vq-rotation": "2410.06424", "vq-orthoreg": "2112.00384",
              "vq-entropy": "2303.06424", "vq-deferred": "2603.17052"}
    for name, paper in papers.items():
        entry = METHODS.get(name)
        # vq-ema 2: the EMA update runs in place (same equations, different float rounding than version 1);
        # every preset +1 (issue 13): share-based restart, k-means from >= K distinct vectors, centred search
        assert entry.builder is VectorQuantizer and entry.version == (3 if name == "vq-ema" else 2)
        assert entry.differences, f"{name}: say how it differs from the reference"
        assert entry.paper == paper
        assert entry.family == "vq" and entry.description and entry.defaults["beta"] == 0.25
    assert METHODS.get("vq").defaults == {"beta": 0.25}
    assert METHODS.get("vq-ema").defaults["ema_decay"] == 0.99 and METHODS.get("vq-ema").defaults["ema_eps"] == 1e-5
    assert METHODS.get("vq-l2").defaults["code_dim"] == 8
    q = create_method("vq-l2", dim=16, codebook_size=32)
    assert q.proj_in is not None and q.l2_normalize and q.codebook().shape == (32, 16)


def test_invalid_options_fail_loudly():
    with pytest.raises(ValueError, match="orthoreg"):
        VectorQuantizer(4, 8, ema=True, orthoreg_weight=1.0)
    with pytest.raises(ValueError, match="init"):
        VectorQuantizer(4, 8, init="normal")
    with pytest.raises(ValueError, match="seeding"):
        VectorQuantizer(4, 8, kmeans_seeding="greedy")


# -- vq: the VQ-VAE equation ----------------------------------------------------------------------------------------
def test_vq_matches_vqvae_equation_and_reference_init():
    torch.manual_seed(3)
    q = VectorQuantizer(dim=6, codebook_size=10)
    torch.manual_seed(3)
    expected_init = torch.empty(10, 6).uniform_(-0.1, 0.1)
    assert torch.equal(q.embedding.detach(), expected_init)
    with torch.no_grad():
        q.embedding.copy_(torch.randn(10, 6))
    z = torch.randn(3, 5, 6, requires_grad=True)
    out = q(z)
    idx = naive_nearest(z.detach().reshape(-1, 6), q.embedding.detach())
    assert torch.equal(out.indices.reshape(-1), idx)
    e = q.embedding.detach()[idx].reshape(3, 5, 6)
    assert torch.equal(out.z_q, e)  # value exactly the code
    sq = (z.detach() - e).pow(2).mean()
    assert torch.allclose(out.loss, sq + 0.25 * sq)
    (out.z_q * 2.0).sum().backward()
    assert torch.equal(z.grad, torch.full_like(z, 2.0))  # straight-through: the gradient of z_q is the identity
    # the commitment term adds beta * 2 (z - e) / n
    z2 = z.detach().clone().requires_grad_(True)
    out2 = q(z2)
    (out2.z_q.sum() + out2.loss).backward()
    assert torch.allclose(z2.grad, 1.0 + 0.25 * 2 * (z2.detach() - e) / z.numel(), atol=1e-6)
    # the codebook gets only the codebook-loss gradient: 2 (e - z) / n summed per code
    q.embedding.grad = None
    out3 = q(z.detach())
    out3.loss.backward()
    expected = torch.zeros(10, 6).index_add_(0, idx, 2 * (e - z.detach()).reshape(-1, 6) / z.numel())
    assert torch.allclose(q.embedding.grad, expected, atol=1e-6)


# -- EMA ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1e-5, 0.5])  # 0.5: large enough that the Laplace smoothing shows
def test_ema_update_matches_vector_quantize_pytorch_and_the_paper(eps):
    dim, k = 8, 16
    torch.manual_seed(0)
    ours = VectorQuantizer(dim, k, ema=True, ema_decay=0.99, ema_eps=eps)
    codes = torch.randn(k, dim)
    ours._set_codebook(codes)
    ref = VectorQuantize(dim=dim, codebook_size=k, decay=0.99, eps=eps, commitment_weight=0.25,
                         rotation_trick=False, threshold_ema_dead_code=0, kmeans_init=False)
    with torch.no_grad():
        ref._codebook.embed.copy_(codes[None])
        ref._codebook.embed_avg.copy_(codes[None])
    assert torch.equal(ref._codebook.cluster_size, torch.ones(1, k))
    ours.train()
    ref.train()
    count, total = torch.ones(k), codes.clone()
    for _ in range(3):
        z = torch.randn(2, 40, dim) * 1.5
        before = ours.embedding.detach().clone()
        out = ours(z)
        ref_q, ref_idx, ref_loss = ref(z)
        assert torch.equal(out.indices, ref_idx)
        assert torch.allclose(out.loss, ref_loss, rtol=1e-5)
        assert torch.allclose(out.z_q, ref_q, atol=1e-5)
        assert torch.allclose(ours.ema_count, ref._codebook.cluster_size[0], atol=1e-6)
        assert torch.allclose(ours.ema_sum, ref._codebook.embed_avg[0], atol=1e-5)
        assert torch.allclose(ours.embedding, ref._codebook.embed[0], atol=1e-5)
        # the paper's equations, by hand
        flat = z.reshape(-1, dim)
        idx = naive_nearest(flat, before)
        onehot = F.one_hot(idx, k).float()
        count = 0.99 * count + 0.01 * onehot.sum(0)
        total = 0.99 * total + 0.01 * onehot.t() @ flat
        n = count.sum()
        smoothed = (count + eps) / (n + k * eps) * n
        assert torch.allclose(ours.embedding, total / smoothed[:, None], atol=1e-5)
        assert "codebook_loss" not in out.stats
        assert torch.allclose(out.loss, 0.25 * (flat - before[idx]).pow(2).mean())
    assert not ours.embedding.requires_grad


# -- rotation trick --------------------------------------------------------------------------------------------
def test_rotation_trick_gradient_matches_vector_quantize_pytorch_and_the_explicit_matrix():
    torch.manual_seed(1)
    x = torch.randn(32, 6, requires_grad=True)
    e = torch.randn(32, 6)
    g = torch.randn(32, 6)
    ours = rotate_to(x, e)
    assert torch.allclose(ours, e, atol=1e-5)  # lambda R x = e
    (ours * g).sum().backward()
    ours_grad = x.grad.clone()
    x.grad = None
    (vqpt_rotate_to(x, e) * g).sum().backward()
    assert torch.allclose(ours_grad, x.grad, atol=1e-5)
    # explicit construction from the paper: R = I - 2 r r^T + 2 q^ e^^T, grad = lambda R^T g
    for i in range(4):
        xi, ei = x[i].detach().double(), e[i].double()
        u, qh = xi / xi.norm(), ei / ei.norm()
        r = (u + qh) / (u + qh).norm()
        rot = torch.eye(6, dtype=torch.double) - 2 * torch.outer(r, r) + 2 * torch.outer(qh, u)
        assert torch.allclose(rot.t() @ rot, torch.eye(6, dtype=torch.double), atol=1e-10)  # a rotation
        assert torch.allclose(rot @ u, qh, atol=1e-10)
        lam = ei.norm() / xi.norm()
        assert torch.allclose(ours_grad[i].double(), lam * rot.t() @ g[i].double(), atol=1e-5)
    # it differs from the straight-through gradient (the identity)
    assert not torch.allclose(ours_grad, g, atol=1e-2)


def test_rotation_preset_quantizes_with_the_rotated_gradient():
    torch.manual_seed(2)
    q = create_method("vq-rotation", dim=5, codebook_size=12)
    with torch.no_grad():
        q.embedding.copy_(torch.randn(12, 5))
    z = torch.randn(20, 5, requires_grad=True)
    out = q(z)
    e = q.embedding.detach()[out.indices]
    assert torch.equal(out.z_q, e)
    assert torch.equal(q.decode_indices(out.indices), out.z_q.detach())
    g = torch.randn(20, 5)
    (out.z_q * g).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (vqpt_rotate_to(z2, e) * g).sum().backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-5)


# -- l2 / factorized codes ----------------------------------------------------------------------------------------
def test_cosine_lookup_matches_vector_quantize_pytorch_use_cosine_sim():
    dim, k = 16, 64
    torch.manual_seed(4)
    ours = create_method("vq-l2", dim=dim, codebook_size=k).eval()
    with torch.no_grad():
        ours.embedding.copy_(torch.randn(k, 8))
    ref = VectorQuantize(dim=dim, codebook_size=k, codebook_dim=8, use_cosine_sim=True, rotation_trick=False).eval()
    with torch.no_grad():
        ref.project_in.weight.copy_(ours.proj_in.weight)
        ref.project_in.bias.copy_(ours.proj_in.bias)
        ref.project_out.weight.copy_(ours.proj_out.weight)
        ref.project_out.bias.copy_(ours.proj_out.bias)
        ref._codebook.embed.copy_(unit_rows(ours.embedding)[None])
    z = torch.randn(3, 50, dim)
    with torch.no_grad():
        out = ours(z)
        ref_q, ref_idx, _ = ref(z)
    assert torch.equal(out.indices, ref_idx)
    assert torch.allclose(out.z_q, ref_q, atol=1e-5)
    # by hand: argmax cosine similarity in the projected space
    low = z.reshape(-1, dim) @ ours.proj_in.weight.t().detach() + ours.proj_in.bias.detach()
    cos = F.normalize(low, dim=1) @ F.normalize(ours.embedding.detach(), dim=1).t()
    assert torch.equal(out.indices.reshape(-1), cos.argmax(dim=1))
    e = F.normalize(ours.embedding.detach(), dim=1)[cos.argmax(dim=1)]
    assert torch.allclose(out.stats["commitment_loss"], (F.normalize(low, dim=1) - e).pow(2).mean(), atol=1e-6)
    # codebook() holds the effective z-space codes and decode_indices agrees with z_q
    with torch.no_grad():
        codes = ours.codebook()
        assert codes.shape == (k, dim)
        assert torch.allclose(codes, ours.proj_out(F.normalize(ours.embedding, dim=1)), atol=1e-6)
        assert torch.allclose(ours.decode_indices(out.indices), out.z_q, atol=1e-6)
        assert torch.allclose(codes[out.indices], out.z_q, atol=1e-5)


def test_l2_gradients_reach_projections_and_codebook():
    torch.manual_seed(5)
    q = create_method("vq-l2", dim=10, codebook_size=16)
    z = torch.randn(40, 10, requires_grad=True)
    out = q(z)
    (out.z_q.pow(2).sum() + out.loss).backward()
    for p in (z, q.proj_in.weight, q.proj_out.weight, q.embedding):
        assert p.grad is not None and p.grad.abs().sum() > 0


# -- orthogonal regulariser ---------------------------------------------------------------------------------------
def test_orthogonal_penalty_matches_paper_and_vector_quantize_pytorch():
    torch.manual_seed(6)
    codes = torch.randn(40, 7)
    ours = orthogonal_penalty(codes)
    c = F.normalize(codes.double(), dim=1)
    gram = c @ c.t()
    by_hand = ((gram - torch.eye(40, dtype=torch.double)) ** 2).sum() / 40**2
    assert torch.allclose(ours.double(), by_hand, atol=1e-6)
    assert torch.allclose(ours, orthogonal_loss_fn(codes[None]), atol=1e-6)
    # zero for orthogonal codes (any norms), larger otherwise; a tight frame reaches the bound 1/d - 1/K
    ortho = torch.linalg.qr(torch.randn(7, 7))[0].t()[:5] * torch.tensor([[1.0], [3.0], [0.5], [2.0], [7.0]])
    assert float(orthogonal_penalty(ortho)) < 1e-6
    correlated = torch.randn(1, 7) + 0.1 * torch.randn(5, 7)
    assert float(orthogonal_penalty(correlated)) > 0.3
    frame = torch.cat([torch.eye(4), -torch.eye(4)])  # K = 8, d = 4: sum of squares is K^2/d
    assert math.isclose(float(orthogonal_penalty(frame)), 1 / 4 - 1 / 8, rel_tol=1e-6)


def test_orthoreg_preset_adds_weighted_penalty_and_pushes_codes_apart():
    torch.manual_seed(7)
    q = create_method("vq-orthoreg", dim=6, codebook_size=4)
    base = create_method("vq", dim=6, codebook_size=4)
    base.load_state_dict(q.state_dict())
    z = torch.randn(16, 6)
    out, out_base = q(z), base(z)
    assert torch.allclose(out.loss - out_base.loss, 10.0 * orthogonal_penalty(q.embedding), atol=1e-5)
    opt = torch.optim.SGD(q.parameters(), lr=0.01)
    start = float(orthogonal_penalty(q.embedding.detach()))
    for _ in range(50):
        opt.zero_grad()
        (10.0 * orthogonal_penalty(q.embedding)).backward()
        opt.step()
    assert float(orthogonal_penalty(q.embedding.detach())) < 0.5 * start


# -- entropy penalty ------------------------------------------------------------------------------------------
def test_soft_assignment_entropy_matches_dense_formula_when_chunked():
    torch.manual_seed(8)
    x = torch.randn(50, 5, requires_grad=True)
    codes = torch.randn(12, 5, requires_grad=True)
    dense_p = torch.softmax(-torch.cdist(x, codes).pow(2) / 0.7, dim=1).mean(0)
    dense = -(dense_p * dense_p.log()).sum()
    gx, gc = torch.autograd.grad(dense, (x, codes))
    chunked = soft_assignment_entropy(x, codes, 0.7, chunk_elements=12 * 7)  # 8 chunks of 7 rows
    cx, cc = torch.autograd.grad(chunked, (x, codes))
    assert torch.allclose(chunked, dense, atol=1e-5)
    assert torch.allclose(cx, gx, atol=1e-5) and torch.allclose(cc, gc, atol=1e-5)


def test_soft_assignment_entropy_keeps_no_row_by_code_tensor_for_backward():
    saved: list[torch.Size] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.shape)
        return t

    x = torch.randn(50, 5, requires_grad=True)
    codes = torch.randn(12, 5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = soft_assignment_entropy(x, codes, 0.7, chunk_elements=12 * 7)
    assert saved and not [shape for shape in saved if len(shape) == 2 and shape[1] == 12]
    h.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(codes.grad).all()


def test_entropy_penalty_is_zero_for_uniform_use_and_large_for_collapse():
    k = 8
    angles = torch.arange(k) * 2 * math.pi / k
    codes = torch.stack([angles.cos(), angles.sin()], dim=1)  # equal norms
    q = VectorQuantizer(2, k, entropy_weight=1.0, entropy_temperature=0.1)
    q._set_codebook(codes)
    uniform = q(torch.zeros(32, 2))  # every code equally far
    assert float(uniform.stats["assignment_entropy"]) == pytest.approx(math.log(k), abs=1e-5)
    collapsed = q(codes[0].repeat(32, 1) * 3)  # every input deep in code 0's cell
    h = float(collapsed.stats["assignment_entropy"])
    assert h < 0.1 * math.log(k)
    # the loss carries weight * (log K - H): ~0 vs ~log K on top of the VQ terms
    vq_terms = collapsed.stats["codebook_loss"] + 0.25 * collapsed.stats["commitment_loss"]
    assert float(collapsed.loss.detach() - vq_terms) == pytest.approx(math.log(k) - h, abs=1e-5)
    assert float(uniform.loss.detach() - uniform.stats["codebook_loss"] - 0.25 * uniform.stats["commitment_loss"]) \
        == pytest.approx(0.0, abs=1e-5)


# -- k-means init -----------------------------------------------------------------------------------------------
def test_kmeans_recovers_separated_clusters():
    torch.manual_seed(9)
    g = torch.Generator().manual_seed(9)
    centres = torch.randn(6, 4, generator=g) * 10
    x = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(300, 4, generator=g)
    found = kmeans(x, 6, iters=10, seeding="kmeans++")
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.1


@pytest.mark.parametrize("seeding", ["kmeans++", "random"])
def test_kmeans_init_lowers_initial_quantisation_error(seeding):
    x = gmm_latents(512, 8, modes=24, seed=10)
    errors = {}
    for label, params in {"uniform": {}, "random-sample": {"kmeans_init": True, "kmeans_iters": 0,
                                                           "kmeans_seeding": "random"},
                          "kmeans": {"kmeans_init": True, "kmeans_seeding": seeding}}.items():
        torch.manual_seed(0)
        q = VectorQuantizer(8, 32, **params)
        q.train()
        q(x)  # first training batch: the init happens here
        q.eval()
        with torch.no_grad():
            errors[label] = float(q(x).stats["commitment_loss"])
    assert errors["kmeans"] < errors["random-sample"] < errors["uniform"]
    assert errors["kmeans"] < 0.5 * errors["random-sample"]


def test_kmeans_over_several_batches_uses_their_union():
    x = gmm_latents(300, 4, modes=10, seed=11)
    torch.manual_seed(0)
    q = VectorQuantizer(4, 8, kmeans_init=True, kmeans_batches=3)
    initial = q.embedding.detach().clone()
    q.train()
    q(x[:100])
    q(x[100:200])
    assert torch.equal(q.embedding.detach(), initial) and q.latent_buffer.shape == (200, 4)
    torch.manual_seed(42)
    q(x[200:])
    torch.manual_seed(42)
    expected = kmeans(x, 8, iters=10, seeding="kmeans++")
    assert torch.allclose(q.embedding.detach(), expected)
    assert bool(q.kmeans_done) and q.latent_buffer.shape[0] == 0
    q(x[:100])  # done once
    assert torch.allclose(q.embedding.detach(), expected)


@pytest.mark.parametrize("seeding", ["kmeans++", "random"])
def test_kmeans_init_waits_for_as_many_distinct_vectors_as_codes(seeding):
    """K = 512 from batches of 256 rows: k-means of one batch would duplicate half the codes (at most 256 distinct);
    the init buffers batches, quantizing with the provisional codebook meanwhile, until 512 distinct vectors."""
    x = gmm_latents(2048, 8, modes=20, seed=23)
    torch.manual_seed(0)
    q = VectorQuantizer(8, 512, kmeans_init=True, kmeans_seeding=seeding)
    provisional = q.embedding.detach().clone()
    q.train()
    out = q(x[:256])
    assert not bool(q.kmeans_done) and torch.equal(q.embedding.detach(), provisional)
    assert torch.equal(out.indices, naive_nearest(x[:256], provisional))  # quantized, by the provisional codes
    q(x[:256])  # the same rows again: still 256 distinct vectors
    assert not bool(q.kmeans_done)
    q(x[256:512])
    assert bool(q.kmeans_done) and q.latent_buffer.shape[0] == 0
    assert torch.unique(q.embedding.detach(), dim=0).shape[0] == 512


def test_kmeans_init_fails_clearly_when_the_task_cannot_supply_enough_vectors():
    x = gmm_latents(64, 4, modes=4, seed=24)
    q = VectorQuantizer(4, 128, kmeans_init=True, kmeans_max_batches=3)
    q.train()
    q(x)
    q(x)
    with pytest.raises(UserError, match="128 distinct latent vectors.*3 training batches gave 64.*kmeans_max_batches"):
        q(x)


def test_kmeans_init_from_one_large_enough_batch_is_unchanged():
    """The first batch has >= K distinct rows: k-means on it at once, as before (same draws, same codes)."""
    x = gmm_latents(300, 4, modes=10, seed=25)
    torch.manual_seed(3)
    q = VectorQuantizer(4, 16, kmeans_init=True)
    q.train()
    torch.manual_seed(4)
    q(x)
    torch.manual_seed(4)
    assert torch.equal(q.embedding.detach(), kmeans(x, 16, iters=10))


# -- dead-code restart ----------------------------------------------------------------------------------------
def _collapsed(q: VectorQuantizer, x: torch.Tensor) -> None:
    codes = torch.full((q.codebook_size, q.code_dim), 100.0)
    codes[0] = x.mean(0)
    q._set_codebook(codes)


def test_restart_revives_dead_codes():
    x = gmm_latents(1024, 6, modes=16, seed=12)
    usage = {}
    for restart in (False, True):
        torch.manual_seed(0)
        q = VectorQuantizer(6, 32, restart=restart)
        _collapsed(q, x)
        q.eval()
        assert q(x).indices.unique().numel() == 1
        q.train()
        for i in range(3):
            out = q(x[i * 256:(i + 1) * 256])
        q.eval()
        usage[restart] = q(x).indices.unique().numel()
    assert usage[False] == 1 and usage[True] >= 24
    assert float(out.stats["restarted"]) >= 0


@pytest.mark.parametrize("ema", [False, True])
def test_restart_replaces_only_codes_below_the_threshold_share_with_noisy_batch_vectors(ema):
    torch.manual_seed(13)
    x = torch.randn(64, 4)
    q = VectorQuantizer(4, 8, restart=True, restart_threshold=0.5, restart_decay=0.9, restart_noise=0.01, ema=ema)
    codes = torch.randn(8, 4)
    codes[[4, 5, 7]] += 50.0  # never used by this batch
    q._set_codebook(codes)
    q.usage.copy_(torch.tensor([5.0, 5, 5, 5, 0.1, 0.1, 5, 0.5]) / 26.7)  # shares
    before = q.embedding.detach().clone()
    idx = naive_nearest(x, before)
    counts = torch.bincount(idx, minlength=8).float()
    expected_usage = 0.9 * q.usage.clone() + 0.1 * counts / 64
    expected_count = 0.99 + 0.01 * counts  # the EMA cluster sizes after this batch (start 1, ema_decay 0.99)
    q.train()
    out = q(x)
    dead = expected_usage < 0.5 / 8  # below half the uniform share
    assert dead.tolist() == [False, False, False, False, True, True, False, True]
    assert float(out.stats["restarted"]) == 3
    if not ema:
        assert torch.equal(q.embedding.detach()[~dead], before[~dead])
    new = q.embedding.detach()[dead]
    assert torch.cdist(new, x).min(dim=1).values.max() < 0.1  # a batch vector + noise of std 0.01/sqrt(4)
    assert torch.cdist(new, x).argmin(dim=1).unique().numel() == 3  # three different batch vectors
    torch.testing.assert_close(q.usage[dead], torch.full((3,), 1 / 8))  # restarted at the uniform share
    torch.testing.assert_close(q.usage[~dead], expected_usage[~dead])
    if ema:  # the cluster sizes of restarted codes: the mean cluster size, sums consistent with the new codes
        torch.testing.assert_close(q.ema_count[dead], torch.full((3,), float(expected_count.mean())))
        torch.testing.assert_close(q.ema_sum[dead], new * expected_count.mean())


def _train_restart(q: VectorQuantizer, x: torch.Tensor, batch: int, steps: int, seed: int) -> list[float]:
    """Adam on the codebook alone (the gmm-codebook setting: identity encoder); restarts per step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(q.parameters(), lr=2e-3)
    q.train()
    restarts = []
    for _ in range(steps):
        xb = x[torch.randint(0, x.shape[0], (batch,), generator=g)]
        out = q(xb)
        loss = (xb - out.z_q).pow(2).mean() + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        restarts.append(float(out.stats.get("restarted", 0.0)))
    return restarts


@pytest.mark.parametrize("batch", [32, 64, 256])  # N/K = 0.5, 1, 4
def test_restart_rule_means_the_same_at_any_batch_size(batch):
    """A healthy codebook is left alone at convergence whatever N/K (raw-count thresholds re-randomised about half
    of it every step at N <= K); codes nobody uses are still revived."""
    k = 64
    x = gmm_latents(8192, 4, modes=16, seed=21, spread=2.0)
    torch.manual_seed(0)
    q = VectorQuantizer(4, k, restart=True)
    restarts = _train_restart(q, x, batch, 400, seed=1)
    assert sum(restarts[:5]) >= k // 2  # the uninformed initial codes the first batches leave unused
    late = sum(restarts[-100:]) / 100
    assert late < 0.05 * k / 4, f"{late:.2f} restarts per step at convergence (N={batch}, K={k})"
    q.eval()
    assert q(x).indices.unique().numel() >= 0.9 * k


def test_restart_revives_codes_of_a_restricted_init_at_small_batches():
    x = gmm_latents(4096, 4, modes=16, seed=22, spread=2.0)
    used = {}
    for restart in (False, True):
        torch.manual_seed(0)
        q = VectorQuantizer(4, 64, restart=restart, init="data", init_scale=0.01, init_offset=3.0)
        _train_restart(q, x, 32, 150, seed=2)  # N/K = 0.5
        q.eval()
        used[restart] = q(x).indices.unique().numel()
    assert used[False] <= 4 and used[True] >= 56, used


@pytest.mark.parametrize("ema", [False, True])
def test_state_updates_do_not_change_this_steps_gradients(ema):
    """Restart/EMA rewrite the codebook after the loss is built: gradients must be those of the pre-update codes."""
    torch.manual_seed(16)
    codes = torch.randn(8, 4)
    z = torch.randn(64, 4)
    grads = []
    for restart in (True, False):
        q = VectorQuantizer(4, 8, restart=restart, restart_threshold=0.5, ema=ema, entropy_weight=0.5)
        q._set_codebook(codes)
        if restart:
            q.usage.fill_(1 / 8)
            q.usage[5:] = 0.0  # codes 5..7 are dead (though near the data): restarted during the forward
        zz = z.clone().requires_grad_(True)
        out = q(zz)
        (out.z_q.pow(2).sum() + out.loss).backward()
        grads.append((zz.grad, q.embedding.grad))
        if restart:
            assert float(out.stats["restarted"]) == 3
            assert not torch.equal(q.embedding.detach()[5:], codes[5:])
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    if not ema:
        assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


# -- deferred quantisation ------------------------------------------------------------------------------------------
def test_deferred_is_identity_before_switch_and_quantizes_after():
    x = gmm_latents(640, 4, modes=6, seed=14)
    torch.manual_seed(0)
    q = create_method("vq-deferred", dim=4, codebook_size=8, warmup_fraction=0.5, warmup_buffer_size=100)
    initial = q.embedding.detach().clone()
    q.eval()
    assert torch.equal(q(x[:64]).z_q, initial[q(x[:64]).indices])  # not driven by on_step: plain VQ
    q.train()
    for step in range(5):
        q.on_step(step, 10)
        z = x[step * 64:(step + 1) * 64].clone().requires_grad_(True)
        out = q(z)
        assert torch.equal(out.z_q, z) and float(out.loss) == 0.0
        assert torch.equal(out.indices, naive_nearest(z.detach(), initial))
        out.z_q.sum().backward()
        assert torch.equal(z.grad, torch.ones_like(z))
    assert torch.equal(q.embedding.detach(), initial)
    assert q.latent_buffer.shape == (100, 4) and int(q.latents_written) == 320
    assert set(map(tuple, q.latent_buffer.tolist())) == set(map(tuple, x[220:320].tolist()))  # the newest 100
    q.eval()
    assert torch.equal(q(x[:64]).z_q, x[:64])  # eval during warm-up: identity too, state untouched
    q.train()
    buffered = q.latent_buffer.clone()
    torch.manual_seed(5)
    q.on_step(5, 10)  # the switch
    torch.manual_seed(5)
    expected = kmeans(buffered, 8, iters=10)
    assert torch.allclose(q.embedding.detach(), expected, atol=1e-6)
    assert bool(q.deferred_done) and q.latent_buffer.shape[0] == 0
    out = q(x[320:384])
    assert not torch.equal(out.z_q, x[320:384]) and float(out.loss.detach()) > 0
    assert torch.allclose(out.z_q, q.decode_indices(out.indices))


def test_deferred_ring_buffer_keeps_the_newest_rows():
    q = VectorQuantizer(2, 4, warmup_fraction=0.5, warmup_buffer_size=5)
    q.on_step(0, 10)
    q.train()
    rows = torch.arange(26.0).reshape(13, 2)
    for part in (rows[:3], rows[3:6], rows[6:]):  # 3 + 3 + 7 rows
        assert torch.equal(q(part).z_q, part)
    assert int(q.latents_written) == 13 and q.latent_buffer.shape == (5, 2)
    assert sorted(q.latent_buffer[:, 0].tolist()) == rows[8:, 0].tolist()


# -- data-relative init -----------------------------------------------------------------------------------------
def test_data_init_happens_once_on_the_first_training_forward_and_survives_resume():
    x = gmm_latents(128, 5, modes=4, seed=15)
    torch.manual_seed(0)
    q = VectorQuantizer(5, 16, init="data", init_scale=0.1, init_offset=2.0)
    initial = q.embedding.detach().clone()
    q.eval()
    q(x)
    assert torch.equal(q.embedding.detach(), initial)  # eval: nothing
    q.train()
    torch.manual_seed(1)
    q(x)
    torch.manual_seed(1)
    expected = data_relative_codes(x, 16, 0.1, 2.0)
    assert torch.allclose(q.embedding.detach(), expected)
    fresh = VectorQuantizer(5, 16, init="data", init_scale=0.1, init_offset=2.0)
    fresh.load_state_dict(q.state_dict())
    fresh.train()
    fresh(x * 3)
    assert torch.equal(fresh.embedding.detach(), expected)


def test_uniform_init_knobs_scale_and_shift():
    torch.manual_seed(0)
    q = VectorQuantizer(3, 50, init_scale=4.0, init_offset=1.0)
    torch.manual_seed(0)
    assert torch.equal(q.embedding.detach(), torch.empty(50, 3).uniform_(-1 / 50, 1 / 50) * 4.0 + 1.0)


# -- composition, state, eval purity --------------------------------------------------------------------------------
COMBINED = {"kmeans_init": True, "kmeans_batches": 2, "restart": True, "rotation": True, "ema": True,
            "code_dim": 4, "l2_normalize": True, "entropy_weight": 0.1, "warmup_fraction": 0.3,
            "warmup_buffer_size": 96, "init": "data"}


def _drive(q: VectorQuantizer, steps: range, total: int, seed: int) -> list:
    outs = []
    q.train()
    for step in steps:
        q.on_step(step, total)
        torch.manual_seed(seed + step)
        outs.append(q(gmm_latents(64, 6, modes=5, seed=100 + step)))
    return outs


@pytest.mark.parametrize("params", [COMBINED, {"kmeans_init": True, "kmeans_batches": 6, "restart": True},
                                    {**COMBINED, "warmup_fraction": 0.6, "warmup_buffer_size": 100},
                                    {"orthoreg_weight": 1.0, "entropy_weight": 0.5, "rotation": True}])
def test_state_dict_round_trip_mid_training_continues_identically(params):
    torch.manual_seed(0)
    a = VectorQuantizer(6, 16, **params)
    _drive(a, range(0, 4), 10, seed=0)
    torch.manual_seed(99)
    b = VectorQuantizer(6, 16, **params)
    b.load_state_dict(a.state_dict())
    outs_a = _drive(a, range(4, 10), 10, seed=0)
    outs_b = _drive(b, range(4, 10), 10, seed=0)
    for oa, ob in zip(outs_a, outs_b):
        assert torch.equal(oa.indices, ob.indices) and torch.equal(oa.z_q, ob.z_q) and torch.equal(oa.loss, ob.loss)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_combined_options_eval_forward_changes_no_state():
    torch.manual_seed(0)
    q = VectorQuantizer(6, 16, **COMBINED)
    _drive(q, range(0, 5), 10, seed=0)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.eval()
    q(gmm_latents(64, 6, modes=5, seed=1))
    after = q.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert bool(q.deferred_done) and bool(q.kmeans_done) and bool(q.data_init_done)


# -- memory: K = 2**20 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{}, {"code_dim": 8, "l2_normalize": True, "ema": True},
                                    {"entropy_weight": 0.1, "restart": True}])
def test_million_code_codebook_forward_backward_on_cpu(params):
    k = 2**20
    torch.manual_seed(0)
    q = VectorQuantizer(8, k, **params)
    with torch.no_grad():
        q.embedding.copy_(torch.randn(k, 8))
    z = torch.randn(16, 8, requires_grad=True)
    t0 = time.perf_counter()
    out = q(z)
    (out.z_q.sum() + out.loss).backward()
    assert time.perf_counter() - t0 < 20
    assert out.indices.max() < k and z.grad is not None and torch.isfinite(z.grad).all()
    if not params:
        assert torch.equal(out.indices, naive_nearest(z.detach(), q.embedding.detach()))


# -- end to end: every preset trains in the runner; resume is exact -------------------------------------------------
TINY_TASK = {"n_train": 1024, "n_eval": 256}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_in_the_runner(tmp_path, name):
    spec = make_spec("gmm", name, TINY_TASK, {}, budget={"steps": 30, "batch_size": 128, "eval_interval": 15})
    result = run(spec, tmp_path, progress=False)
    assert result.status == "ok", result.error
    assert math.isfinite(result.final["mse"])


@pytest.mark.parametrize("name,params", [("vq-deferred", {"warmup_fraction": 0.5, "restart": True}),
                                         ("vq-ema", {"kmeans_init": True, "restart": True, "rotation": True})])
def test_resumed_run_matches_uninterrupted(tmp_path, name, params):
    spec = make_spec("gmm", name, TINY_TASK, params, budget={"steps": 20, "batch_size": 64, "eval_interval": 5})
    assert run(spec, tmp_path / "ref", progress=False).status == "ok"
    assert run(spec, tmp_path / "res", progress=False, stop_after_steps=7).status == "interrupted"
    assert run(spec, tmp_path / "res", progress=False).status == "ok"

    def metrics(root):
        return ResultStore(root).load_metrics("gmm").sort_values(["split", "step", "metric"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(metrics(tmp_path / "ref"), metrics(tmp_path / "res"))


def _reference_kmeans_pp_seeding(x: torch.Tensor, k: int) -> torch.Tensor:
    """k-means++ seeding one centre at a time, no shortcut (the definition)."""
    n = x.shape[0]
    centres = torch.empty(k, x.shape[1])
    first = int(torch.randint(n, ()))
    centres[0] = x[first]
    d2 = (x - x[first]).pow(2).sum(dim=1)
    for i in range(1, k):
        total = float(d2.sum())
        j = int(torch.multinomial(d2, 1)) if total > 0 and math.isfinite(total) else int(torch.randint(n, ()))
        centres[i] = x[j]
        d2 = torch.minimum(d2, (x - x[j]).pow(2).sum(dim=1))
    return centres


@pytest.mark.parametrize("n,k", [(40, 300), (25, 25), (300, 64)])
def test_kmeans_pp_seeding_with_more_codes_than_rows_is_the_same_draw_as_one_at_a_time(n, k):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    x[:6] = x[6]  # duplicated rows: their distance is 0 once one of them is a centre
    torch.manual_seed(1)
    expected, after = _reference_kmeans_pp_seeding(x, k), torch.rand(())
    torch.manual_seed(1)
    assert torch.equal(kmeans(x, k, iters=0), expected)
    assert torch.equal(torch.rand(()), after)  # the global RNG stream continues identically


@pytest.mark.parametrize("width", [64, 128, 1024, 100])
def test_two_level_row_min_equals_min_with_indices(width):
    from vqbench.methods.base import _row_min

    dist = torch.randn(300, width, generator=torch.Generator().manual_seed(width)).round(decimals=1)  # many ties
    values, indices = torch.empty(300), torch.empty(300, dtype=torch.long)
    _row_min(dist, values, indices)
    expected = dist.min(dim=1)
    assert torch.equal(values, expected.values)
    first_minimum = (dist == expected.values[:, None]).int().argmax(dim=1)  # ties: the lowest index
    assert torch.equal(indices, first_minimum)


def test_squared_norms_in_chunks_are_the_plain_values():
    from vqbench.methods.base import squared_norms

    rows = torch.randn(1000, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(squared_norms(rows, chunk_rows=64), rows.pow(2).sum(dim=1))
