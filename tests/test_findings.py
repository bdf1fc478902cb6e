"""The seed paper's two findings, pinned at small scale with fixed seeds (the numbers are computed here)."""

import json

import pandas as pd
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


# -- captions come from the data (a store written by hand: no training, fast) ---------------------------------
def _store_run(store, method, params, seed, finals, task="gmm-codebook", suite="tokens-collapse"):
    from vqbench.spec import canonical_json

    rid = f"{method}-{canonical_json(params)}-{seed}"
    store.write_metrics(task, rid, [("eval", 100, name, value) for name, value in finals.items()])
    store.write_run({"run_id": rid, "task": task, "task_version": 1, "task_params": "{}", "method": method,
                     "method_version": 1, "method_params": canonical_json(params), "method_family": "f",
                     "seed": seed, "budget": '{"steps":100}', "tags": [f"suite:{suite}"], "spec": "{}",
                     "status": "ok", "main_metric": "mse", "higher_is_better": False})


def _tokens_store(root, kmeans_low: float = 0.92):
    """vq collapses at init scale 0.01, vq-kmeans keeps ``kmeans_low`` there (2 seeds), fsq has no knob."""
    from vqbench.store import ResultStore

    store = ResultStore(root)
    values = {("vq", 0.01): (0.21, 0.004), ("vq", 1.0): (0.80, 0.7), ("vq-kmeans", 0.01): (kmeans_low, 0.6),
              ("vq-kmeans", 1.0): (0.95, 0.75)}
    for (method, scale), (util, tci) in values.items():
        for seed in (0, 1, 2) if method == "vq" else (0, 1):
            params = {"init": "data", "init_scale": scale, "init_offset": 0.0}
            _store_run(store, method, params, seed, {"utilization": util, "tokens_collapse_index": tci,
                                                     "mse": 0.1 / util})
    for seed in (0, 1, 2):
        _store_run(store, "fsq", {"levels": [8, 5, 5, 5]}, seed, {"utilization": 0.995,
                                                                  "tokens_collapse_index": 1.0, "mse": 0.05})
    # a run with the offset knob set is not part of this figure
    _store_run(store, "vq", {"init": "data", "init_scale": 0.01, "init_offset": 8.0}, 0,
               {"utilization": 0.01, "tokens_collapse_index": 0.01, "mse": 9.0})


def test_caption_sentences_come_from_the_data(tmp_path):
    from vqbench.commands.findings import caption_sentences, claim_sentences

    _tokens_store(tmp_path)
    finding = FINDINGS["tokens-collapse"]
    folder = draw_finding(tmp_path, "tokens-collapse")
    meta = json.loads((folder / "meta.json").read_text())
    sentences = caption_sentences(finding, pd.read_csv(folder / "data.csv"))
    claim = claim_sentences(finding, pd.read_csv(folder / "data.csv"))
    assert meta["caption"] == " ".join([finding.caption, *sentences, *claim])
    assert claim == ["Against the paper (arXiv:2411.16550: restricted codebook initialisation causes tokens collapse): "
                     "utilization at init scale 0.01 vs 1: the claim holds for 2 of 2 methods with the knob "
                     "(vq 21% vs 80%, vq-kmeans 92% vs 95%)."]
    assert len(sentences) == 4  # the knob values, then one per panel
    assert sentences.pop(0) == ("Worst and best init scale by mean codebook utilization over the methods with that "
                                "knob: 0.01 and 1.")
    assert sentences[0] == ("At init scale 0.01 (worst), vq uses 21% of its codes (3 seeds), vq-kmeans 92% "
                            "(2 seeds); at init scale 1 (best), vq uses 80% of its codes (3 seeds), vq-kmeans 95% "
                            "(2 seeds); without the knob, fsq uses 100% of its codes (3 seeds).")
    assert sentences[1].startswith("At init scale 0.01 (worst), tokens-collapse index: vq 0.004 (3 seeds), "
                                   "vq-kmeans 0.6 (2 seeds)")
    assert sentences[2].startswith("At init scale 0.01 (worst), reconstruction MSE: vq 0.476 (3 seeds)")
    # other data, other caption: nothing is written by hand
    other = tmp_path / "other"
    _tokens_store(other, kmeans_low=0.3)
    again = json.loads((draw_finding(other, "tokens-collapse") / "meta.json").read_text())["caption"]
    assert "vq-kmeans 30% (2 seeds)" in again and "vq-kmeans 92%" not in again


def test_caption_with_equal_seeds_and_one_knob_value():
    from vqbench.commands.findings import caption_sentences

    data = pd.DataFrame({"method": ["vq", "vq-restart", "vq", "vq-restart"], "x": [2.0, 2.0, 2.0, 2.0],
                         "metric": ["embedding_rank", "embedding_rank", "utilization", "utilization"],
                         "mean": [1.5, 1.6, 0.2, 0.88], "std": [0.1] * 4, "seeds": [3] * 4})
    finding = FINDINGS["embeddings-collapse"]
    knob, rank, utilization = caption_sentences(finding, data)
    assert knob == "One encoder width was run: 2."
    assert rank == "At encoder width 2 (only), embedding effective rank: vq 1.5, vq-restart 1.6 (3 seeds each)."
    assert utilization == "At encoder width 2 (only), vq uses 20% of its codes, vq-restart 88% (3 seeds each)."


def test_no_finding_states_a_result_by_hand():
    for finding in FINDINGS.values():
        for claim in ("immune", "whatever", "never selected", "few codes can"):
            assert claim not in finding.caption, (finding.name, claim)


def test_claim_sentence_compares_with_the_paper_from_the_data():
    """A method shows the collapse only when its restricted-end mean is lower by more than both seed spreads."""
    from vqbench.commands.findings import claim_sentences

    rows = [("vq", 0.01, 0.2, 0.02), ("vq", 1.0, 0.9, 0.01),           # clear drop: shows the collapse
            ("simvq", 0.01, 0.95, 0.05), ("simvq", 1.0, 1.0, 0.01),     # within the spread: resists
            ("fsq", None, 0.7, 0.0)]                                     # no knob: not counted
    data = pd.DataFrame([{"method": m, "x": x, "metric": "utilization", "mean": v, "std": sd, "seeds": 3}
                         for m, x, v, sd in rows])
    (sentence,) = claim_sentences(FINDINGS["tokens-collapse"], data)
    assert sentence.startswith("Against the paper (arXiv:2411.16550: restricted codebook initialisation causes "
                               "tokens collapse): utilization at init scale 0.01 vs 1")
    assert "the claim holds for 1 of 2 methods with the knob (vq 20% vs 90%)" in sentence
    assert "; not lower by more than the seeds' spread, so not shown, for simvq 95% vs 100%" in sentence
    assert "fsq" not in sentence
    offset = data.assign(x=data["x"].map({0.01: 8.0, 1.0: 0.0}))  # the offset's restricted end is its largest
    assert "init offset 8 vs 0: the claim holds for 1 of 2" in claim_sentences(FINDINGS["tokens-collapse-offset"],
                                                                                offset)[0]
    assert claim_sentences(FINDINGS["tokens-collapse"], data[data["method"] == "fsq"]) == []
