import math

import pytest
import torch

from vqbench import metrics as M


def test_usage_metrics_formulas():
    counts = M.code_counts(torch.tensor([0, 0, 1, 3]), 5)
    assert counts.tolist() == [2, 1, 0, 1, 0]
    assert M.utilization(counts) == pytest.approx(3 / 5)
    assert M.dead_codes(counts) == 2
    p = torch.tensor([0.5, 0.25, 0.25])
    assert M.perplexity(counts) == pytest.approx(math.exp(float(-(p * p.log()).sum())))
    assert M.perplexity(torch.tensor([4.0, 4.0, 4.0, 4.0])) == pytest.approx(4.0)
    assert M.perplexity(torch.tensor([9.0, 0.0])) == pytest.approx(1.0)


def test_codebook_usage_accumulates_over_batches():
    metric = M.CodebookUsage(4)
    metric.update(torch.tensor([0, 0]))
    metric.update(torch.tensor([[1], [1]]))
    out = metric.compute()
    assert out["utilization"] == 0.5 and out["dead_codes"] == 2 and out["perplexity"] == pytest.approx(2.0)
    metric.reset()
    assert float(metric.counts.sum()) == 0


def test_effective_rank_extremes():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(4000, 8, generator=g)
    assert M.effective_rank(iso) == pytest.approx(8, rel=0.05)
    line = torch.randn(100, 1, generator=g) * torch.ones(1, 8)
    assert M.effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    # a translation does not change the (centred) rank
    assert M.effective_rank(iso + 100) == pytest.approx(M.effective_rank(iso), rel=1e-6)


def test_clusters_and_tokens_collapse_index():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 3, generator=g) * 10
    points = centers.repeat_interleave(20, dim=0) + 1e-3 * torch.randn(100, 3, generator=g)
    assert M.count_clusters(points, 0.1) == 5
    assert M.tokens_collapse_index(points, data_scale=1.0, tolerance=0.1) == pytest.approx(5 / 100)
    assert math.isnan(M.tokens_collapse_index(torch.zeros(M.MAX_MERGE_POINTS + 1, 2), 1.0))


def test_collapse_metrics_bundle():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(500, 4, generator=g)
    data = torch.randn(500, 8, generator=g)
    counts = M.code_counts(torch.randint(0, 10, (500,), generator=g), 16)
    ev = M.collapse_metrics(counts, torch.randn(16, 4, generator=g), emb, reference=data)
    assert ev.metrics["utilization"] == pytest.approx(10 / 16)
    assert ev.metrics["embeddings_collapse_index"] == pytest.approx(
        ev.metrics["embedding_rank"] / ev.metrics["data_rank"])
    assert ev.metrics["codebook_enumerable"] == 1.0
    assert len(ev.arrays["usage_histogram"]) == 16 and len(ev.arrays["codebook_spectrum"]) == 4
    implicit = M.collapse_metrics(counts, None, emb)
    assert implicit.metrics["codebook_enumerable"] == 0.0 and math.isnan(implicit.metrics["codebook_rank"])


# -- CollapseMetrics (torchmetrics) ------------------------------------------------------------------
def _split(seed: int = 0, n: int = 3000, k: int = 48, d: int = 6, ref_dim: int = 10):
    """Latents of rank 3 (offset far from 0), codes, nearest-code indices and reference rows."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    latents = torch.randn(n, 3, generator=g, dtype=f64) @ torch.randn(3, d, generator=g, dtype=f64) + 40
    codebook = latents[torch.randperm(n, generator=g)[:k]] + 0.01 * torch.randn(k, d, generator=g, dtype=f64)
    codebook[k // 2:] = codebook[0]  # half the codes merged onto one
    indices = torch.cdist(latents, codebook).argmin(dim=1)
    reference = torch.randn(n, ref_dim, generator=g)
    return latents, codebook, indices, reference


def _whole_split_metrics(latents, codebook, indices, reference) -> dict[str, float]:
    """The same numbers computed directly on the whole split (SVDs of the centred matrices, no streaming)."""
    k = codebook.shape[0]
    counts = M.code_counts(indices, k)
    scale = M.rms_radius(latents)
    emb_rank, data_rank = M.effective_rank(latents), M.effective_rank(reference)
    return {**M.usage_metrics(counts), "embedding_rank": emb_rank, "data_rank": data_rank,
            "embeddings_collapse_index": emb_rank / data_rank, "codebook_rank": M.effective_rank(codebook),
            "tokens_collapse_index": M.count_clusters(codebook, M.MERGE_TOLERANCE * scale) / k,
            "codebook_enumerable": 1.0}


def test_collapse_metric_over_batches_equals_the_whole_split():
    from vqbench.collapse import CollapseMetrics

    latents, codebook, indices, reference = _split()
    metric = CollapseMetrics(codebook.shape[0], dim=latents.shape[1], reference_dim=reference.shape[1])
    for start in range(0, len(latents), 257):  # uneven batches
        sl = slice(start, start + 257)
        metric.update(indices[sl], latents[sl], codebook, reference=reference[sl])
    out = {k: float(v) for k, v in metric.compute().items()}
    expected = _whole_split_metrics(latents, codebook, indices, reference)
    assert set(expected) <= set(out)
    for name, value in expected.items():
        assert out[name] == pytest.approx(value, rel=1e-6), name
    assert out["embedding_rank"] < 3.5 and out["tokens_collapse_index"] < 0.6  # the split's own structure
    ev = metric.evaluation()
    assert ev.arrays["usage_histogram"] == sorted(M.code_counts(indices, 48).tolist(), reverse=True)
    assert ev.arrays["embedding_spectrum"][:3] == pytest.approx(M.singular_values(latents)[:3].tolist(), rel=1e-6)
    # the legacy bundle is the same computation on (here: all of) the rows
    legacy = M.collapse_metrics(M.code_counts(indices, 48), codebook, latents, reference, max_points=10**6)
    for name in expected:
        assert legacy.metrics[name] == pytest.approx(out[name], rel=1e-9), name
    metric.reset()
    assert float(metric.counts.sum()) == 0 and metric.codebook is None and metric.moments() is None


def test_moment_spectrum_matches_svd_and_floors_rounding():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 7, generator=g) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.1, 0.01]) + 1e3
    # centring 1e3-offset rows in float64 costs ~1e-6 relative on the smallest value (0.01 x 500**0.5)
    assert M.Moments.of(x).spectrum().tolist() == pytest.approx(M.singular_values(x).tolist(), rel=1e-5)
    assert M.Moments.of(x - 1e3).spectrum().tolist() == pytest.approx(M.singular_values(x).tolist(), rel=1e-9)
    line = torch.randn(100, 1, generator=g) * torch.ones(1, 8) + 7.0
    assert M.Moments.of(line).effective_rank() == pytest.approx(1.0, abs=1e-9)
    assert M.Moments.of(x).rms_radius() == pytest.approx(M.rms_radius(x), rel=1e-9)


def test_collapse_metric_bad_input_is_a_user_error():
    from vqbench.collapse import CollapseMetrics
    from vqbench.errors import UserError

    metric = CollapseMetrics(8, dim=4)
    with pytest.raises(UserError, match="K=8"):
        metric.update(torch.tensor([0, 8]))
    with pytest.raises(UserError, match="K=8"):
        metric.update(torch.tensor([-1, 2]))
    with pytest.raises(UserError, match="integer"):
        metric.update(torch.tensor([0.0, 1.0]))
    with pytest.raises(UserError, match=r"\(\.\.\., 4\)"):
        metric.update(torch.tensor([0, 1]), torch.zeros(2, 5))
    with pytest.raises(UserError, match="NaN"):
        metric.update(torch.tensor([0, 1]), torch.tensor([[0.0, 1, 2, math.nan], [0, 0, 0, 0]]))
    with pytest.raises(UserError, match="disagrees"):
        metric.update(torch.tensor([0, 1]), codebook=torch.zeros(8, 3))
    with pytest.raises(UserError, match="dim="):
        CollapseMetrics(8).update(torch.tensor([0]), torch.zeros(1, 4))


def _distributed_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from vqbench.collapse import CollapseMetrics

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        latents, codebook, indices, reference = _split()
        metric = CollapseMetrics(codebook.shape[0], dim=latents.shape[1], reference_dim=reference.shape[1])
        for start in range(rank * 300, len(latents), 300 * world):  # this rank's share of the batches
            sl = slice(start, start + 300)
            metric.update(indices[sl], latents[sl], codebook, reference=reference[sl])
        out = {k: float(v) for k, v in metric.compute().items()}
        arrays = metric.evaluation().arrays
        if rank == 0:
            torch.save({"metrics": out, "arrays": arrays}, out_file)
    finally:
        dist.destroy_process_group()


def test_collapse_metric_two_processes_equal_one(tmp_path):
    import torch.multiprocessing as mp

    from vqbench.collapse import CollapseMetrics

    out_file = tmp_path / "rank0.pt"
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    two = torch.load(out_file)
    latents, codebook, indices, reference = _split()
    single = CollapseMetrics(codebook.shape[0], dim=latents.shape[1], reference_dim=reference.shape[1])
    single.update(indices, latents, codebook, reference=reference)
    one = {k: float(v) for k, v in single.compute().items()}
    assert two["metrics"].keys() == one.keys()
    for name, value in one.items():
        assert two["metrics"][name] == pytest.approx(value, rel=1e-9, nan_ok=True), name
    assert two["arrays"]["usage_histogram"] == single.evaluation().arrays["usage_histogram"]
