"""VectorQuantizer and its presets: paper equations by hand, cross-checks against vector-quantize-pytorch,
behavioural tests per option (each able to fail), resume safety and tiny end-to-end runs. The searches, k-means and
the codebook initialisations are tested in test_methods_vq_search.py."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import orthogonal_loss_fn
from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to as vqpt_rotate_to
from vq_helpers import gmm_latents, naive_nearest

from vqbench.methods.vq import (
    VectorQuantizer,
    orthogonal_penalty,
    rotate_to,
    unit_rows,
)
from vqbench.registry import METHODS, create_method
from vqbench.runner import run
from vqbench.spec import make_spec
from vqbench.store import ResultStore

PRESETS = ["vq", "vq-ema", "vq-kmeans", "vq-restart", "vq-l2", "vq-rotation", "vq-orthoreg", "vq-entropy",
           "vq-deferred"]


# -- in-place codebook updates --------------------------------------------------------------------------------------
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


