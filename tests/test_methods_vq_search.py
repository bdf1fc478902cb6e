"""VectorQuantizer's searches and codebook initialisations: the blocked nearest-code search (exact, lowest index on
ties, cache-sized blocks, K = 2**20 on CPU), the chunked soft-assignment entropy, k-means (k-means++ seeding) and the
k-means / deferred / data-relative initialisations."""

from __future__ import annotations

import math
import time

import pytest
import torch
from vq_helpers import gmm_latents, naive_nearest

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
    soft_assignment_entropy,
)
from vqbench.registry import create_method


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
