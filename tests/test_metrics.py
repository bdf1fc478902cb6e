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
