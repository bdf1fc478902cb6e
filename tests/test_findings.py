"""The seed paper's two findings, pinned at small scale with fixed seeds (the numbers are computed here)."""

import json

import pytest

from vqbench.commands.findings import FINDINGS, draw_finding, finding_table
from vqbench.runner import run
from vqbench.spec import make_spec

SMALL_MANIFOLD = {"n_train": 2048, "n_eval": 1024}
SMALL_BUDGET = {"steps": 300, "batch_size": 128, "eval_interval": 300}


def final(spec, results):
    result = run(spec, results, progress=False)
    assert result.status == "ok", result.error
    return result.final


def test_embedding_rank_grows_with_encoder_width(tmp_path):
    ranks = {}
    for width in (2, 64):
        spec = make_spec("manifold", "vq", {**SMALL_MANIFOLD, "hidden": width}, seed=0, budget=SMALL_BUDGET)
        ranks[width] = final(spec, tmp_path)["embedding_rank"]
    assert ranks[64] > 2 * ranks[2], ranks


def test_restricted_init_collapses_vq_but_not_kmeans_init(tmp_path):
    task = {"n_train": 4096, "n_eval": 1024}
    budget = {"steps": 300, "batch_size": 256, "eval_interval": 300}
    restricted = {"init": "data", "init_scale": 0.01, "init_offset": 0.0}
    vq = final(make_spec("gmm-codebook", "vq", task, restricted, budget=budget), tmp_path)
    healthy = final(make_spec("gmm-codebook", "vq", task, {**restricted, "init_scale": 1.0}, budget=budget), tmp_path)
    kmeans = final(make_spec("gmm-codebook", "vq-kmeans", task, restricted, budget=budget), tmp_path)
    far = final(make_spec("gmm-codebook", "vq", task, {**restricted, "init_scale": 1.0, "init_offset": 8.0},
                          budget=budget), tmp_path)
    assert vq["utilization"] < 0.5 * kmeans["utilization"], (vq, kmeans)
    assert vq["utilization"] < 0.5 * healthy["utilization"], (vq, healthy)
    assert vq["tokens_collapse_index"] < 0.5 * kmeans["tokens_collapse_index"]
    assert far["utilization"] < 0.2 * healthy["utilization"] and far["mse"] > 10 * healthy["mse"]


def test_finding_figure_data_and_meta_come_from_the_store(tmp_path):
    import dataclasses

    for width in (2, 8):
        for seed in (0, 1):
            spec = make_spec("manifold", "vq", {**SMALL_MANIFOLD, "hidden": width}, seed=seed,
                             budget={"steps": 40, "eval_interval": 40}, tags=("suite:embeddings-collapse",))
            final(spec, tmp_path)
    # an untagged run is not part of the finding
    final(dataclasses.replace(make_spec("manifold", "vq", {**SMALL_MANIFOLD, "hidden": 4},
                                        budget={"steps": 40, "eval_interval": 40})), tmp_path)
    table = finding_table(tmp_path, FINDINGS["embeddings-collapse"])
    ranks = table[table.metric == "embedding_rank"].sort_values("x")
    assert list(ranks.x) == [2.0, 8.0] and list(ranks.seeds) == [2, 2]
    folder = draw_finding(tmp_path, "embeddings-collapse")
    assert (folder / "figure.png").stat().st_size > 10_000
    assert json.loads((folder / "meta.json").read_text())["command"] == "vqbench reproduce embeddings-collapse"
    assert "embedding_rank" in (folder / "data.csv").read_text()


def test_missing_runs_say_what_to_do(tmp_path):
    from vqbench.errors import UserError

    with pytest.raises(UserError, match="vqbench reproduce tokens-collapse"):
        draw_finding(tmp_path, "tokens-collapse")
