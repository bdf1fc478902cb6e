"""simvq, cvq, vq-lc, vq-affine, ibq, optvq: cross-checks against an outside implementation (SimVQ) or against
the papers' / reference code's equations on tiny hand-built examples, plus a short run through the runner."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vqbench.methods.ibq as ibq_module
from vqbench.errors import UserError
from vqbench.methods.base import CodebookQuantizer, nearest_code
from vqbench.methods.optvq import sinkhorn_assign
from vqbench.methods.vqlc import FROM_BANK, FROM_BATCH_DATA, FROM_BATCH_KMEANS, kmeans
from vqbench.quantizer import QuantizeOutput
from vqbench.registry import create_method

NEW_METHODS = ["simvq", "cvq", "vq-lc", "vq-affine", "ibq", "optvq"]


def _assert_same_forward_and_backward(ours: nn.Module, reference: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]],
                                      z: Tensor, weight: Tensor) -> QuantizeOutput:
    """``ours(z)`` and ``reference(z)`` (``(z_q, indices, loss)``) agree: indices exactly, ``z_q`` and loss to float
    tolerance, and the gradient w.r.t. ``z`` of ``sum(z_q * weight) + loss``; returns ours (parameters' grads set)."""
    z_ours, z_ref = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    out = ours(z_ours)
    z_q_ref, indices_ref, loss_ref = reference(z_ref)
    assert torch.equal(out.indices, indices_ref)
    torch.testing.assert_close(out.z_q, z_q_ref)
    torch.testing.assert_close(out.loss, loss_ref)
    ((out.z_q * weight).sum() + out.loss).backward()
    ((z_q_ref * weight).sum() + loss_ref).backward()
    torch.testing.assert_close(z_ours.grad, z_ref.grad)
    return out


# -- SimVQ -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_simvq_matches_vector_quantize_pytorch(bias):
    from vector_quantize_pytorch import SimVQ as ReferenceSimVQ

    torch.manual_seed(0)
    dim, k = 16, 64
    ours = create_method("simvq", dim=dim, codebook_size=k, bias=bias)
    theirs = ReferenceSimVQ(dim=dim, codebook_size=k, codebook_transform=nn.Linear(dim, dim, bias=bias),
                            rotation_trick=False, input_to_quantize_commit_loss_weight=0.25, commitment_weight=1.0)
    theirs.frozen_codebook.copy_(ours.basis)
    theirs.code_transform.load_state_dict(ours.proj.state_dict())
    z = torch.randn(2, 50, dim)
    out = _assert_same_forward_and_backward(ours, theirs, z, weight=torch.randn(2, 50, dim))
    torch.testing.assert_close(ours.proj.weight.grad, theirs.code_transform.weight.grad)
    if bias:
        torch.testing.assert_close(ours.proj.bias.grad, theirs.code_transform.bias.grad)
    torch.testing.assert_close(ours.decode_indices(out.indices), theirs.indices_to_codes(out.indices))


def test_simvq_basis_is_frozen_and_decodes_through_the_projection():
    torch.manual_seed(1)
    q = create_method("simvq", dim=8, codebook_size=32)
    assert sorted(n for n, p in q.named_parameters()) == ["proj.bias", "proj.weight"]
    assert "basis" in dict(q.named_buffers())
    std = float(q.basis.std())
    assert 0.7 * 8 ** -0.5 < std < 1.3 * 8 ** -0.5  # N(0, 1/dim)
    idx = torch.tensor([[0, 5], [31, 7]])
    expected = q.basis[idx] @ q.proj.weight.t() + q.proj.bias
    torch.testing.assert_close(q.decode_indices(idx), expected)
    torch.testing.assert_close(q.codebook()[idx], expected)


def test_simvq_data_init_draws_the_basis_and_starts_from_identity():
    torch.manual_seed(2)
    q = create_method("simvq", dim=4, codebook_size=512, init="data", init_scale=0.1, init_offset=2.0)
    z = torch.randn(256, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 5.0
    q.eval()
    q(z)
    assert not bool(q.data_initialised)  # eval mode never initialises
    q.train()
    q(z)
    assert bool(q.data_initialised)
    torch.testing.assert_close(q.codebook(), q.basis)  # W = I, b = 0
    mu, sigma = z.mean(0), z.std(0)
    torch.testing.assert_close(q.basis.mean(0), mu + 2.0 * sigma, atol=0.05, rtol=0.0)
    torch.testing.assert_close(q.basis.std(0), 0.1 * sigma, rtol=0.15, atol=0.0)


# -- CVQ-VAE ---------------------------------------------------------------------------------------
def _cos(a, b):
    return (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b))


def test_cvq_update_on_a_three_code_example():
    """One training step by hand: cosine lookup, EMA usage, alpha = exp(-10 K p / (1 - gamma) - 1e-3), closest."""
    q = create_method("cvq", dim=2, codebook_size=3, decay=0.99, beta=0.25, distance="cos", anchor="closest")
    codes = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)]
    z = [(2.0, 0.1), (1.5, -0.1), (0.1, 3.0)]
    with torch.no_grad():
        q.embedding.copy_(torch.tensor(codes))
    q.train()
    out = q(torch.tensor(z))
    # lookup: highest cosine
    expected_idx = [max(range(3), key=lambda k: _cos(zi, codes[k])) for zi in z]
    assert expected_idx == [0, 0, 1]
    assert out.indices.tolist() == expected_idx
    # loss with the codes before the update: beta * commitment + codebook, both the same MSE in value
    mse = sum((z[i][d] - codes[expected_idx[i]][d]) ** 2 for i in range(3) for d in range(2)) / 6
    assert float(out.loss.detach()) == pytest.approx(1.25 * mse, rel=1e-6)
    torch.testing.assert_close(out.z_q.detach(), torch.tensor([codes[k] for k in expected_idx]))
    # running usage and rates
    usage = [2 / 3, 1 / 3, 0.0]
    p = [0.01 * u for u in usage]
    assert q.embed_prob.tolist() == pytest.approx(p, rel=1e-6)
    alpha = [math.exp(-(pk * 3 * 10) / (1 - 0.99) - 1e-3) for pk in p]
    # closest anchors: for each code the batch feature of highest cosine
    anchors = [z[max(range(3), key=lambda i: _cos(z[i], codes[k]))] for k in range(3)]
    assert anchors == [z[0], z[2], z[2]]
    expected = [[(1 - alpha[k]) * codes[k][d] + alpha[k] * anchors[k][d] for d in range(2)] for k in range(3)]
    torch.testing.assert_close(q.embedding.detach(), torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert q.embedding[2].tolist() == pytest.approx([0.1 * 0.999 - 0.001, 3 * 0.999], rel=1e-3)  # dead code moved


def test_cvq_l2_closest_anchor_is_the_nearest_batch_point():
    q = create_method("cvq", dim=2, codebook_size=2, distance="l2", anchor="closest")
    codes = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    flat = torch.tensor([[1.0, 0.0], [3.0, 3.0], [-0.5, 0.2]])
    anchors = q.anchors(flat, codes)
    assert torch.equal(anchors, flat[[2, 1]])


def test_cvq_random_anchor_pool_follows_the_reference_feature_pool():
    torch.manual_seed(0)
    q = create_method("cvq", dim=2, codebook_size=3, anchor="random")
    initial = q.pool.clone()
    assert initial.abs().max() <= 1 / 3
    a, b = torch.tensor([[1.0, 1.0], [2.0, 2.0]]), torch.tensor([[3.0, 3.0], [4.0, 4.0]])
    pool = q._pool_query(a)
    assert pool[:2].tolist() == a.tolist() and torch.equal(pool[2], initial[2]) and int(q.pool_count) == 2
    pool = q._pool_query(b)
    assert pool[2].tolist() == [3.0, 3.0] and int(q.pool_count) == 3
    c = torch.tensor([[7.0, 7.0], [8.0, 8.0]])
    pool = q._pool_query(c)  # full: two random slots overwritten
    rows = {tuple(r) for r in pool.tolist()}
    assert {(7.0, 7.0), (8.0, 8.0)} <= rows
    big = torch.arange(20.0).view(10, 2)
    pool = q._pool_query(big)  # a batch larger than K replaces the pool by batch rows
    assert all(tuple(r) in {tuple(x) for x in big.tolist()} for r in pool.tolist())


def test_cvq_probrandom_anchors_are_batch_features():
    torch.manual_seed(3)
    q = create_method("cvq", dim=3, codebook_size=5, anchor="probrandom")
    flat = torch.randn(7, 3)
    anchors = q.anchors(flat, q.embedding.detach())
    assert all(any(torch.equal(a, f) for f in flat) for a in anchors)


# -- vq-affine --------------------------------------------------------------------------------------
def test_affine_running_statistics_reparameterise_the_codebook():
    torch.manual_seed(4)
    q = create_method("vq-affine", dim=3, codebook_size=50, affine="running", sync_nu=0.0)
    q.train()
    z1 = torch.randn(200, 3) * torch.tensor([0.5, 2.0, 4.0]) + torch.tensor([1.0, -2.0, 3.0])
    q(z1)
    raw = q.embedding.detach()
    torch.testing.assert_close(q.z_mean, z1.mean(0))
    torch.testing.assert_close(q.z_var, z1.var(0, unbiased=False))
    torch.testing.assert_close(q.c_mean, raw.mean(0))
    torch.testing.assert_close(q.c_var, raw.var(0, unbiased=False))
    # codes = (c - mean_c) / std_c * std_z + mean_z: the codebook now has the batch's mean and std per dim
    codes = q.codebook().detach()
    torch.testing.assert_close(codes.mean(0), z1.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(codes.std(0, unbiased=False), z1.std(0, unbiased=False), atol=1e-5, rtol=1e-5)
    z2 = torch.randn(100, 3) + 7.0
    q(z2)
    torch.testing.assert_close(q.z_mean, 0.9 * z1.mean(0) + 0.1 * z2.mean(0))
    torch.testing.assert_close(q.z_var, 0.9 * z1.var(0, unbiased=False) + 0.1 * z2.var(0, unbiased=False))
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.eval()
    q(torch.randn(10, 3))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_affine_synchronized_gradient_and_loss_weights():
    torch.manual_seed(5)
    nu, lr, beta = 0.2, 10.0, 0.98
    q = create_method("vq-affine", dim=4, codebook_size=8, sync_nu=nu, affine="learned", affine_lr=lr, beta=beta)
    q.train()
    z = torch.randn(30, 4, requires_grad=True)
    out = q(z)
    idx = out.indices
    codes = q.embedding.detach()[idx]  # scale 1, shift 0 at start
    torch.testing.assert_close(out.z_q.detach(), codes)
    mse = float(((z.detach() - codes) ** 2).mean())
    assert float(out.loss.detach()) == pytest.approx(((1 - beta) + beta) * mse, rel=1e-6)
    out.z_q.sum().backward()  # only the STE / sync path, no loss
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight-through to z
    counts = torch.bincount(idx, minlength=8).float()
    torch.testing.assert_close(q.embedding.grad, nu * counts[:, None].expand(8, 4))  # nu * decoder gradient
    torch.testing.assert_close(q.affine_scale.grad, nu * lr * codes.sum(0))
    torch.testing.assert_close(q.affine_bias.grad, torch.full((4,), nu * lr * 30))


def test_affine_alternating_step_is_an_inner_sgd_step_on_the_codebook():
    torch.manual_seed(6)
    alt_lr, mom = 0.5, 0.9
    q = create_method("vq-affine", dim=3, codebook_size=6, affine="none", sync_nu=0.0, alternating=True,
                      alt_lr=alt_lr, alt_momentum=mom)
    q.train()
    n = 40

    def grad_of_codebook_loss(c, z, idx):  # d/dc mean((c[idx] - z)^2)
        g = torch.zeros_like(c)
        g.index_add_(0, idx, 2 * (c[idx] - z) / (n * 3))
        return g

    z1, z2 = torch.randn(n, 3), torch.randn(n, 3)
    c0 = q.embedding.detach().clone()
    out1 = q(z1)
    idx1 = nearest_code(z1, c0)
    assert torch.equal(out1.indices, idx1)
    g1 = grad_of_codebook_loss(c0, z1, idx1)
    c1 = c0 - alt_lr * g1
    torch.testing.assert_close(q.embedding.detach(), c1)
    torch.testing.assert_close(out1.z_q.detach(), c1[idx1])  # codes re-read after the inner step
    q(z2)
    idx2 = nearest_code(z2, c1)
    velocity = mom * g1 + grad_of_codebook_loss(c1, z2, idx2)
    torch.testing.assert_close(q.embedding.detach(), c1 - alt_lr * velocity)


# -- IBQ -------------------------------------------------------------------------------------------
def _dense_ibq(z, codes, beta, entropy_weight=0.05, temperature=0.01):
    """The reference IndexPropagationQuantize with the reference configs' entropy loss (use_entropy_loss: True,
    entropy_loss_weight 0.05, entropy_temperature 0.01, compute_entropy_loss), written densely (N x K)."""
    logits = z @ codes.t()
    soft = torch.softmax(logits, dim=1)
    ind = soft.argmax(dim=1)
    hard = F.one_hot(ind, codes.shape[0]).to(z.dtype)
    one_hot = hard - soft.detach() + soft
    z_q, z_q2 = one_hot @ codes, hard @ codes
    loss = ((z_q - z) ** 2).mean() + ((z_q2.detach() - z) ** 2).mean() + beta * ((z_q2 - z.detach()) ** 2).mean()
    probs = torch.softmax(logits / temperature, dim=1)
    sample_entropy = (-(probs * torch.log_softmax(logits / temperature + 1e-5, dim=1)).sum(1)).mean()
    avg = probs.mean(0)
    batch_entropy = -(avg * torch.log(avg + 1e-5)).sum()
    return z_q, ind, loss + entropy_weight * (sample_entropy - batch_entropy)


@pytest.mark.parametrize("entropy_weight", [None, 0.0])  # None: the registered default (the reference configs')
def test_ibq_matches_the_dense_reference_and_reaches_unused_codes(monkeypatch, entropy_weight):
    monkeypatch.setattr(ibq_module, "SEARCH_CHUNK_ELEMENTS", 3 * 40)  # force 3-row chunks
    torch.manual_seed(7)
    n, dim, k = 20, 5, 40
    q = create_method("ibq", dim=dim, codebook_size=k,
                      **({} if entropy_weight is None else {"entropy_weight": entropy_weight}))
    assert q.entropy_weight == (0.05 if entropy_weight is None else 0.0) and q.entropy_temperature == 0.01
    q.train()
    codes_ref = q.embedding.detach().clone().requires_grad_(True)
    z = torch.randn(n, dim)
    out = _assert_same_forward_and_backward(q, lambda z_ref: _dense_ibq(z_ref, codes_ref, 0.25, q.entropy_weight),
                                            z, weight=torch.randn(n, dim))
    torch.testing.assert_close(q.embedding.grad, codes_ref.grad)
    unused = torch.ones(k, dtype=torch.bool)
    unused[out.indices] = False
    assert unused.sum() > 10
    assert (q.embedding.grad[unused].abs().sum(dim=1) > 0).all()  # every unused code gets gradient


def test_ibq_entropy_term_matches_the_magvit_formula(monkeypatch):
    monkeypatch.setattr(ibq_module, "SEARCH_CHUNK_ELEMENTS", 4 * 12)
    torch.manual_seed(8)
    z = torch.randn(10, 3, requires_grad=True)
    codes = torch.randn(12, 3, requires_grad=True)
    t = 0.5
    sample_h, batch_h = ibq_module.entropy_penalty(z, codes, t)
    logits = (z @ codes.t()) / t
    probs = torch.softmax(logits, dim=1)
    ref_sample = (-(probs * torch.log_softmax(logits + 1e-5, dim=1)).sum(1)).mean()
    avg = probs.mean(0)
    ref_batch = -(avg * torch.log(avg + 1e-5)).sum()
    torch.testing.assert_close(sample_h, ref_sample)
    torch.testing.assert_close(batch_h, ref_batch)
    grads = torch.autograd.grad(sample_h - batch_h, [z, codes])
    ref_grads = torch.autograd.grad(ref_sample - ref_batch, [z, codes])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_ibq_handles_a_65536_code_codebook():
    torch.manual_seed(9)
    q = create_method("ibq", dim=8, codebook_size=65536)
    q.train()
    z = torch.randn(256, 8, requires_grad=True)
    out = q(z)
    (out.z_q.pow(2).sum() + out.loss).backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(q.embedding.grad).all()
    assert (q.embedding.grad.abs().sum(dim=1) > 0).float().mean() > 0.99


# -- OptVQ -----------------------------------------------------------------------------------------
def _reference_sinkhorn(x, codes, epsilon, n_iters, guard=1e-8):
    """The reference OptVQ code path (normalize mode 'all', sinkhorn()), dense, in float64."""
    d = torch.cdist(x.double(), codes.double())
    a = (d - d.mean()) / (d.std() + 1e-6)
    a = a - a.min()
    q = torch.exp(-a * epsilon).t()
    k, b = q.shape
    q /= q.sum() + guard
    for _ in range(n_iters):
        q /= q.sum(dim=1, keepdim=True) + guard
        q /= k
        q /= q.sum(dim=0, keepdim=True) + guard
        q /= b
    q *= b
    return q.t()


@pytest.mark.parametrize("guard", [1e-8, 0.0])
def test_optvq_sinkhorn_matches_the_reference_algorithm(guard):
    torch.manual_seed(10)
    x, codes = torch.randn(30, 4), torch.randn(12, 4)
    idx, plan = sinkhorn_assign(x, codes, epsilon=10.0, n_iters=5, guard=guard, return_plan=True)
    ref = _reference_sinkhorn(x, codes, 10.0, 5, guard)
    torch.testing.assert_close(plan.double(), ref, rtol=1e-4, atol=1e-9)
    assert torch.equal(idx, ref.argmax(dim=1))
    if guard:  # the guards change the plan measurably here: the test would notice if they were dropped
        assert (ref - _reference_sinkhorn(x, codes, 10.0, 5, 0.0)).abs().max() > 1e-3
    # chunked passes (3 rows at a time) give the same plan
    idx_c, plan_c = sinkhorn_assign(x, codes, epsilon=10.0, n_iters=5, guard=guard, chunk_elements=3 * 12,
                                    return_plan=True)
    assert torch.equal(idx_c, idx)
    torch.testing.assert_close(plan_c, plan, rtol=1e-5, atol=1e-9)


def test_optvq_sinkhorn_marginals():
    torch.manual_seed(11)
    n, k = 48, 8
    x, codes = torch.randn(n, 3), torch.randn(k, 3)
    _, plan = sinkhorn_assign(x, codes, epsilon=3.0, n_iters=300, return_plan=True)
    torch.testing.assert_close(plan.sum(1), torch.ones(n))  # each sample's mass sums to 1
    torch.testing.assert_close(plan.sum(0), torch.full((k,), n / k), rtol=1e-3, atol=0.0)  # codes share equally


def test_optvq_spreads_a_collapsed_batch_over_codes_in_training_and_eval_as_the_reference():
    torch.manual_seed(12)
    k = 16
    q = create_method("optvq", dim=2, codebook_size=k, use_proj=False, n_iters=50)
    with torch.no_grad():
        q.embedding.copy_(torch.randn(k, 2))
        q.embedding[0] = torch.tensor([0.0, 0.0])
    z = torch.randn(k, 2) * 0.01  # every point is nearest to code 0
    assert nearest_code(z, q.embedding).unique().numel() == 1
    q.train()
    out = q(z)
    assert out.indices.unique().numel() > k // 2
    codes = q.embedding.detach()[out.indices]
    mse = float(((z - codes) ** 2).mean())
    assert float(out.loss.detach()) == pytest.approx(1.25 * mse, rel=1e-6)  # commitment 1 + beta 0.25 codebook
    q.eval()  # the reference assigns by Sinkhorn in every mode: the registered default does too
    assert q.eval_assign == "sinkhorn"
    assert torch.equal(q(z).indices, sinkhorn_assign(z, q.codebook(), q.epsilon, q.n_iters, q.guard))
    assert q(z).indices.unique().numel() > k // 2
    q.eval_assign = "nearest"  # the option: a batch-independent nearest-code tokenizer at eval
    assert torch.equal(q(z).indices, nearest_code(z, q.codebook()))


def test_optvq_data_init_sets_identity_projection():
    torch.manual_seed(13)
    q = create_method("optvq", dim=3, codebook_size=20, init="data", init_scale=0.5)
    q.train()
    q(torch.randn(64, 3))
    torch.testing.assert_close(q.codebook(), q.embedding)


# -- VQGAN-LC --------------------------------------------------------------------------------------
def _is_lloyd_fixed_point(x, centres):
    assign = nearest_code(x, centres)
    for j in assign.unique():
        torch.testing.assert_close(centres[j], x[assign == j].mean(0), rtol=1e-5, atol=1e-5)


def test_vqlc_codebook_from_feature_bank_kmeans():
    torch.manual_seed(14)
    dim, k, feat = 3, 4, 6
    centres = torch.randn(k, feat) * 10
    bank = centres.repeat_interleave(100, dim=0) + 0.05 * torch.randn(400, feat)
    q = create_method("vq-lc", dim=dim, codebook_size=k, kmeans_iters=20)
    q.init_from_feature_bank(bank)
    assert q.frozen_codes.shape == (k, feat) and q.projector.weight.shape == (dim, feat)
    assert int(q.init_source) == FROM_BANK
    _is_lloyd_fixed_point(bank, q.frozen_codes)
    assert sorted(n for n, p in q.named_parameters()) == ["projector.bias", "projector.weight"]
    q.train()
    z = torch.randn(32, dim, requires_grad=True)
    out = q(z)
    assert int(q.init_source) == FROM_BANK  # the bank codebook is kept
    ((out.z_q ** 2).sum() + out.loss).backward()
    assert q.projector.weight.grad is not None and z.grad is not None
    codes = q.codebook().detach()[out.indices]
    commit = float(((z.detach() - codes) ** 2).mean())
    assert float(out.loss.detach()) == pytest.approx(1.33 * commit, rel=1e-6)
    # a fresh instance (placeholder shapes) loads the state of a bank-initialised one
    fresh = create_method("vq-lc", dim=dim, codebook_size=k)
    fresh.load_state_dict(q.state_dict())
    torch.testing.assert_close(fresh.codebook(), q.codebook())
    with pytest.raises(ValueError, match="M >= K"):
        create_method("vq-lc", dim=dim, codebook_size=500).init_from_feature_bank(bank)


def test_vqlc_fallback_without_a_bank_is_first_batch_kmeans():
    torch.manual_seed(15)
    q = create_method("vq-lc", dim=2, codebook_size=8, bank_warmup_steps=0)  # no warm-up bank: first batch
    z = torch.randn(128, 2)
    q.eval()
    q(z)
    assert int(q.init_source) == 0
    q.train()
    out = q(z)
    assert int(q.init_source) == FROM_BATCH_KMEANS and float(out.stats["init_source"]) == FROM_BATCH_KMEANS
    torch.testing.assert_close(q.codebook(), q.frozen_codes)  # identity projector at start
    _is_lloyd_fixed_point(z, q.frozen_codes)
    d = create_method("vq-lc", dim=2, codebook_size=8, init="data", init_scale=0.1)
    d.init_from_feature_bank(torch.randn(100, 5))  # ignored: the restricted-init run draws from the batch
    d.train()
    d(z)
    assert int(d.init_source) == FROM_BATCH_DATA and d.frozen_codes.shape == (8, 2)


def test_kmeans_with_fewer_points_than_centres():
    torch.manual_seed(16)
    x = torch.randn(5, 2)
    centres = kmeans(x, 9, iters=5)
    assert centres.shape == (9, 2) and torch.isfinite(centres).all()


# -- the shared opening: CodebookQuantizer -----------------------------------------------------------
CODEBOOK_METHODS = ["simvq", "cvq", "vq-affine", "ibq", "optvq"]


@pytest.mark.parametrize("name", CODEBOOK_METHODS)
def test_codebook_methods_share_one_opening_and_data_init(name):
    """One base class owns forward's opening (dim check, flattening, first-batch data-relative init): eval does not
    initialise, the first training batch does (once), and the codes are drawn around that batch."""
    dim, k = 3, 24
    torch.manual_seed(27)
    q = create_method(name, dim=dim, codebook_size=k, init="data", init_scale=0.01, init_offset=0.0)
    assert isinstance(q, CodebookQuantizer) and type(q).forward is CodebookQuantizer.forward
    with pytest.raises(ValueError, match="last dim 3"):
        q(torch.randn(4, dim + 1))
    z = torch.randn(2, 40, dim) * 0.5 + torch.tensor([5.0, -3.0, 1.0])
    q.eval()
    q(z)
    assert not bool(q.data_initialised)
    q.train()
    q(torch.zeros(0, dim))  # an empty batch initialises nothing
    assert not bool(q.data_initialised)
    out = q(z)
    assert bool(q.data_initialised)
    assert out.z_q.shape == z.shape and out.indices.shape == z.shape[:-1]
    raw = q.raw_codes().detach().clone()
    flat = z.reshape(-1, dim)
    if name == "cvq":  # the same forward already pulled unused codes toward anchors (batch vectors)
        assert (raw.mean(0) - flat.mean(0)).abs().max() < 0.5
    else:
        assert (raw.mean(0) - flat.mean(0)).abs().max() < 0.05 and (raw.std(0) < 0.05 * flat.std(0)).all()
    q(z + 10.0)  # initialised once
    if name != "cvq":  # (cvq pulls its codes toward anchors during training forwards)
        assert torch.equal(q.raw_codes().detach(), raw)
    with pytest.raises(UserError, match="init must be one of"):
        create_method(name, dim=dim, codebook_size=k, init="kaiming")


# -- through the runner ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_METHODS)
def test_runs_on_gmm(name, tmp_path):
    from vqbench.runner import run
    from vqbench.spec import make_spec

    spec = make_spec("gmm", name, {"n_train": 1024}, {}, seed=0, budget={"steps": 30})
    result = run(spec, tmp_path / "results", progress=False)
    assert result.status == "ok", result.error
    assert math.isfinite(result.final["mse"])


@pytest.mark.parametrize("name, params", [("cvq", {"anchor": "random"}),
                                          ("vq-affine", {"affine": "running", "alternating": True})])
def test_resume_gives_the_same_numbers(name, params, tmp_path):
    from vqbench.runner import run
    from vqbench.spec import make_spec

    spec = make_spec("gmm", name, {"n_train": 512, "n_eval": 256}, params, seed=1,
                     budget={"steps": 20, "batch_size": 64, "eval_interval": 10})
    whole = run(spec, tmp_path / "a", progress=False)
    assert run(spec, tmp_path / "b", progress=False, stop_after_steps=7).status == "interrupted"
    resumed = run(spec, tmp_path / "b", progress=False)
    assert whole.status == resumed.status == "ok"
    assert whole.final == resumed.final
