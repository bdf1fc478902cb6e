"""Generation: the token prior, the generative metrics, and the gen-* tasks through the runner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqbench.gen_metrics import cross_entropy_bits, emitted_codes, knn_radii, manifold_coverage, precision_recall
from vqbench.tasks.prior import TokenPrior, sample_logits


@pytest.fixture(autouse=True, scope="module")
def _private_classifier_cache(tmp_path_factory):
    """gen-digits trains its digits classifier once into $VQBENCH_CACHE: a folder of this module's, not ~/.cache."""
    from vqbench.tasks import digitsnet

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(digitsnet.CACHE_ENV, str(tmp_path_factory.mktemp("vqbench_cache")))
        yield


def tiny_prior(vocab: int = 11, seq_len: int = 6, **kw) -> TokenPrior:
    torch.manual_seed(0)
    return TokenPrior(vocab, seq_len, dim=16, layers=2, heads=2, **kw)


# -- prior ---------------------------------------------------------------------------------------------
def test_prior_shapes_and_raster_order():
    prior = tiny_prior(vocab=11, seq_len=6)
    grid = torch.randint(11, (3, 2, 3))
    logits = prior(grid)
    assert logits.shape == (3, 6, 11)
    # a (2, 3) grid is the row-major sequence of its 6 tokens
    torch.testing.assert_close(logits, prior(grid.reshape(3, 6)))
    loss = prior.nll(grid)
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="expects 6 tokens"):
        prior(torch.zeros(2, 5, dtype=torch.long))


def test_prior_is_causal():
    """Changing token j changes no logits at positions <= j (position i predicts token i from tokens < i)."""
    prior = tiny_prior(vocab=11, seq_len=6)
    prior.eval()
    seq = torch.randint(11, (4, 6))
    base = prior(seq)
    for j in range(6):
        changed = seq.clone()
        changed[:, j] = (changed[:, j] + 1 + torch.arange(4)) % 11
        out = prior(changed)
        torch.testing.assert_close(out[:, :j + 1], base[:, :j + 1], rtol=0, atol=1e-6)
        if j < 5:  # and later positions do see it
            assert (out[:, j + 1:] - base[:, j + 1:]).abs().max() > 1e-4


def test_cached_decoding_matches_teacher_forced_logits():
    """The key/value-cached decoder (used for sampling) computes the same conditionals as the full forward."""
    prior = tiny_prior(vocab=7, seq_len=5)
    prior.eval()
    seq = torch.randint(7, (4, 5))
    full = prior(seq)
    cache = [None] * len(prior.blocks)
    prev = torch.full((4,), prior.bos)
    for i in range(5):
        torch.testing.assert_close(prior.step(prev, i, cache), full[:, i], rtol=1e-5, atol=1e-6)
        prev = seq[:, i]
    samples = prior.sample(4, temperature=0.0)  # greedy: each token = argmax of its conditional
    assert samples.shape == (4, 5) and samples.dtype == torch.long
    torch.testing.assert_close(prior(samples).argmax(-1), samples)


def test_sampling_is_seeded_and_leaves_global_rng_alone():
    prior = tiny_prior(vocab=9, seq_len=4)
    state = torch.get_rng_state()
    a = prior.sample(16, generator=torch.Generator().manual_seed(5))
    b = prior.sample(16, generator=torch.Generator().manual_seed(5))
    c = prior.sample(16, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)
    assert prior.training  # restored after sampling
    assert int(a.min()) >= 0 and int(a.max()) < 9


def test_top_k_and_temperature():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    draws = sample_logits(logits, temperature=1.0, top_k=2, generator=g)
    assert set(draws.tolist()) == {1, 3}  # only the two largest logits survive
    p1 = (draws == 1).double().mean().item()
    assert abs(p1 - 1 / (1 + math.exp(-1.0))) < 0.04  # softmax over {5, 4}
    cold = sample_logits(logits, temperature=0.05, generator=g)
    assert (cold == 1).all()
    assert (sample_logits(logits, temperature=0.0) == 1).all()


def test_prior_learns_a_deterministic_sequence():
    """A few hundred steps drive the NLL of one fixed sequence towards 0 bits."""
    prior = tiny_prior(vocab=5, seq_len=4)
    seq = torch.tensor([[3, 1, 4, 1]]).repeat(8, 1)
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        prior.nll(seq).backward()
        opt.step()
    assert cross_entropy_bits(prior(seq), seq) / seq.numel() < 0.05
    assert torch.equal(prior.sample(3, temperature=0.0), seq[:3])


# -- metrics -------------------------------------------------------------------------------------------
def test_cross_entropy_bits_formula():
    # uniform over K codes: log2 K bits per token
    logits = torch.zeros(3, 5, 8)
    targets = torch.randint(8, (3, 5))
    assert cross_entropy_bits(logits, targets) / targets.numel() == pytest.approx(3.0)
    # hand example: logits (0, ln 3) -> p = (1/4, 3/4); targets 1 and 0 -> -log2(3/4) - log2(1/4) bits
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], dtype=torch.float64)
    expected = -math.log2(0.75) - math.log2(0.25)
    assert cross_entropy_bits(logits, torch.tensor([1, 0])) == pytest.approx(expected, rel=1e-12)
    # and agrees with torch's cross-entropy in nats / ln 2
    logits, targets = torch.randn(10, 6), torch.randint(6, (10,))
    nats = F.cross_entropy(logits.double(), targets).item()
    assert cross_entropy_bits(logits, targets) / 10 == pytest.approx(nats / math.log(2), rel=1e-9)


def test_emitted_codes():
    out = emitted_codes(torch.tensor([[0, 0, 3], [3, 0, 0]]), 8)
    assert out["emitted_code_frac"] == pytest.approx(2 / 8)
    p = np.array([4 / 6, 2 / 6])
    assert out["emitted_perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_precision_recall_hand_example():
    """1-D example with k = 1, worked out by hand.

    real = {0, 1, 2, 10}: nearest-neighbour radii 1, 1, 1, 8.
    fake = {0.5, 5, 20, 21}: radii 4.5, 4.5, 1, 1.
    precision: 0.5 is in the ball of 0 (0.5 <= 1), 5 in the ball of 10 (5 <= 8), 20 and 21 are not
    (10 > 8, 11 > 8) -> 2/4. recall: 0, 1, 2 are in the ball of 0.5 (0.5, 0.5, 1.5 <= 4.5); 10 is
    not (5 > 4.5 from 5, 10 > 1 from 20) -> 3/4.
    """
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    fake = torch.tensor([[0.5], [5.0], [20.0], [21.0]])
    torch.testing.assert_close(knn_radii(real, 1), torch.tensor([1.0, 1.0, 1.0, 64.0]))  # squared
    out = precision_recall(real, fake, k=1)
    assert out == {"precision": 0.5, "recall": 0.75}
    # the boundary counts as inside (<=): 18 lies exactly on the ball of 10 (radius 8), 18.5 outside it
    radii = knn_radii(real.double(), 1)
    assert manifold_coverage(torch.tensor([[18.0]]).double(), real.double(), radii) == 1.0
    assert manifold_coverage(torch.tensor([[18.5]]).double(), real.double(), radii) == 0.0


def test_precision_recall_matches_brute_force_and_chunking():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(60, 5, generator=g, dtype=torch.float64)
    fake = torch.randn(45, 5, generator=g, dtype=torch.float64) * 1.5 + 0.5
    k = 3

    def brute(a, b):  # fraction of a inside the k-NN balls of b, from full distance matrices
        d_bb = torch.cdist(b, b)
        radii = d_bb.sort(dim=1).values[:, k]  # index 0 is the point itself
        return (torch.cdist(a, b) <= radii[None]).any(dim=1).double().mean().item()

    expected = {"precision": brute(fake, real), "recall": brute(real, fake)}
    assert precision_recall(real, fake, k) == pytest.approx(expected)
    assert 0 < expected["precision"] < 1 and 0 < expected["recall"] < 1  # the example discriminates
    radii = knn_radii(real, k)
    assert torch.allclose(knn_radii(real, k, chunk_elements=7), radii)  # several rows per chunk
    assert manifold_coverage(fake, real, radii, chunk_elements=1) == pytest.approx(expected["precision"])
    # identical sets: everything covers itself
    assert precision_recall(real, real, k) == {"precision": 1.0, "recall": 1.0}


def test_gfd_naming_rule(monkeypatch):
    """gfd_randcnn always; the best extractor's gFD named like the reconstruction FID (g prefix), never mixed."""
    import vqbench.gen_metrics as gm
    from vqbench.image_metrics import INCEPTION_WEIGHTS_ENV

    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")  # no Inception weights in the hub cache
    features, pr = gm.generative_extractors("auto")
    assert [f.metric_name("g") for f in features] == ["gfd_randcnn"] == [gm.BASE_GFD] and pr is features[0]
    assert [f.name for f in gm.generative_extractors("off")[0]] == ["randcnn"]

    class Stub:  # stands in for an extractor whose weights this machine does not have
        def __init__(self, name, device):
            from vqbench.image_metrics import fd_metric_name

            self.name, self.metric_name = name, lambda prefix="": fd_metric_name(name, prefix)

    monkeypatch.setattr(gm, "ImageFeatures", Stub)
    monkeypatch.setattr(gm, "resolve_extractor", lambda: "inception")
    features, pr = gm.generative_extractors("auto")
    assert [f.metric_name("g") for f in features] == ["gfd_randcnn", "gfid_inception"] and pr.name == "inception"
    features, pr = gm.generative_extractors("vit_small.dino")
    assert [f.metric_name("g") for f in features] == ["gfd_randcnn", "gfd_vit_small_dino"]


# -- gen-* tasks through the runner --------------------------------------------------------------------
TOY_DIGITS = {"latent_dim": 4, "codebook_size": 16, "channels": 8, "num_res_blocks": 0, "n_eval": 100,
              "eval_batch_size": 128, "fd": False}
TOY_PRIOR = {"prior_dim": 16, "prior_layers": 1, "prior_heads": 2, "prior_steps": 6, "prior_lr": 3e-3,
             "n_samples": 40, "sample_batch_size": 32}
TOY_BUDGET = {"steps": 6, "batch_size": 32, "eval_interval": 6}
PRIOR_METRICS = ("nll_bits_per_token", "gfd_randcnn", "precision_randcnn", "recall_randcnn", "emitted_code_frac",
                 "emitted_perplexity", "gfd_digitsnet", "precision_digitsnet", "recall_digitsnet",
                 "class_coverage_digitsnet", "class_kl_digitsnet", "digitsnet_test_accuracy", "digitsnet_recipe_hash")
TOKENIZER_METRICS = ("psnr", "ssim", "mse", "utilization", "perplexity", "dead_codes", "codebook_rank")


def recon_spec(seed: int = 0, **method_params):
    from vqbench.spec import make_spec

    return make_spec("digits", "vq", TOY_DIGITS, method_params, seed=seed, budget=TOY_BUDGET)


def gen_spec(seed: int = 0, prior=None, **method_params):
    from vqbench.spec import make_spec

    return make_spec("gen-digits", "vq", {**TOY_DIGITS, **TOY_PRIOR, **(prior or {})}, method_params, seed=seed,
                     budget=TOY_BUDGET)


def test_gen_tasks_are_registered_with_the_reconstruction_params():
    from vqbench.errors import UserError
    from vqbench.registry import TASKS
    from vqbench.spec import make_spec
    from vqbench.tasks.generation import GEN_VERSION

    gen, recon = TASKS.get("gen-digits"), TASKS.get("digits")
    assert gen.kind == "generation" and gen.offline and gen.main_metric == "gfd_digitsnet" and not gen.higher_is_better
    # revision 1 (the digitsnet metrics): only gen-digits' version moved
    assert gen.version == 1000 * (GEN_VERSION + 1) + recon.version == 3002 and gen.budgets == recon.budgets
    assert {k: gen.defaults[k] for k in recon.defaults} == recon.defaults
    assert {"prior_dim", "prior_steps", "n_samples", "temperature", "top_k", "pr_k"} <= set(gen.defaults)
    for name, data in (("gen-cifar10", "cifar10"), ("gen-imagenet128", "imagenet128")):
        entry = TASKS.get(name)
        assert entry.kind == "generation" and not entry.offline and entry.main_metric == "gfd_randcnn"
        assert entry.version == 1000 * GEN_VERSION + TASKS.get(data).version
    with pytest.raises(UserError, match="prior_dim"):
        make_spec("gen-digits", "vq", {"prior_dimm": 8})
    spec = gen_spec()
    assert spec.task_params["codebook_size"] == 16 and spec.task_params["split_seed"] == 0  # fully resolved
    with pytest.raises(UserError, match="pr_k"):  # k-NN precision/recall needs more than k samples
        TASKS.create("gen-digits", n_samples=3, pr_k=3)


def test_prior_vocabulary_is_the_methods_real_codebook_size():
    """FSQ with levels [3, 3] has 9 codes on a 16-code task: the prior predicts 9 ids, samples only those, and the
    emitted-code figures are over 9 (version 1 sized everything by the task's 16)."""
    from vqbench.registry import TASKS, create_method
    from vqbench.spec import Budget

    task = TASKS.create("gen-digits", **{**TOY_DIGITS, **TOY_PRIOR})
    task.setup(torch.device("cpu"), 0)
    quantizer = create_method("fsq", dim=task.latent_dim, codebook_size=task.codebook_size, levels=[3, 3])
    assert quantizer.codebook_size == 9 and task.codebook_size == 16
    stages = task.stages(quantizer, Budget(steps=2, batch_size=16, eval_interval=2))
    assert task.prior.vocab_size == 9 and task.prior.head.out_features == 9
    samples = task.sample(64, torch.Generator().manual_seed(0))
    assert samples.shape == (64, *task.token_grid) and int(samples.max()) < 9
    ev = stages[1].evaluate()
    assert ev.metrics["codebook_size"] == 9 and len(ev.arrays["emitted_histogram"]) == 9
    used = sum(1 for c in ev.arrays["emitted_histogram"] if c > 0)
    assert ev.metrics["emitted_code_frac"] == pytest.approx(used / 9)


def test_reused_tokenizer_run_id_is_the_reconstruction_run_id():
    from vqbench.registry import TASKS

    spec = gen_spec(seed=3, beta=0.3)
    task = TASKS.create(spec.task, **spec.task_params)
    task.run_spec = spec
    assert task.recon_spec().run_id == recon_spec(seed=3, beta=0.3).run_id
    other = gen_spec(seed=3, prior={"prior_dim": 32}, beta=0.3)  # prior params do not change the tokenizer
    task.run_spec = other
    assert task.recon_spec().run_id == recon_spec(seed=3, beta=0.3).run_id
    task.run_spec = gen_spec(seed=4, beta=0.3)
    assert task.recon_spec().run_id != recon_spec(seed=3, beta=0.3).run_id


def _write_recon_run(root, run_id: str, status: str, models) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "runs").mkdir(parents=True, exist_ok=True)
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"run_id": [run_id], "status": [status]}), root / "runs" / f"{run_id}.parquet")
    torch.save({"models": models, "complete": True}, root / "checkpoints" / f"{run_id}.pt")


def test_only_a_complete_ok_reconstruction_run_is_reused(tmp_path):
    from vqbench.registry import TASKS

    spec = gen_spec()
    task = TASKS.create(spec.task, **spec.task_params)
    task.run_spec, task.results_root = spec, tmp_path
    rid = task.recon_spec().run_id
    assert task._find_tokenizer() is None  # nothing there
    weights = {"encoder.w": torch.ones(2)}
    _write_recon_run(tmp_path, rid, "failed", [weights])
    assert task._find_tokenizer() is None
    _write_recon_run(tmp_path, rid, "ok", [weights])
    assert torch.equal(task._find_tokenizer()["encoder.w"], weights["encoder.w"])
    # a run of this generation spec that started by training its own tokenizer resumes that way
    torch.save({"models": [weights]}, tmp_path / "checkpoints" / f"{spec.run_id}.pt")
    assert task._find_tokenizer() is None
    torch.save({"models": [{"pos_emb": torch.zeros(1)}]}, tmp_path / "checkpoints" / f"{spec.run_id}.pt")
    assert task._find_tokenizer() is not None


def _train_rows(root, spec):
    from vqbench.store import ResultStore

    df = ResultStore(root).load_metrics(spec.task)
    return df[df.split == "train"]


def test_generation_end_to_end_and_reuse_of_a_finished_tokenizer(tmp_path):
    """Full run (tokenizer + prior) vs a run that reuses the finished reconstruction run's tokenizer."""
    from vqbench.runner import run
    from vqbench.store import ResultStore

    spec = gen_spec()
    tok_steps, prior_steps = TOY_BUDGET["steps"], TOY_PRIOR["prior_steps"]

    full = run(spec, tmp_path / "full", progress=False)
    assert full.status == "ok", full.error
    row = ResultStore(tmp_path / "full").load_runs().iloc[0]
    assert row.steps_done == tok_steps + prior_steps and row.task_kind == "generation"
    train = _train_rows(tmp_path / "full", spec)
    assert "rec_loss" in set(train.metric) and "nll_bits_per_token" in set(train.metric)
    metrics = ResultStore(tmp_path / "full").load_metrics(spec.task)
    evals = metrics[metrics.split == "eval"]
    nll = evals[evals.metric == "nll_bits_per_token"].sort_values("step")
    assert nll.step.tolist() == [tok_steps, tok_steps + prior_steps]  # prior evaluations after the tokenizer's
    assert nll.value.iloc[-1] < nll.value.iloc[0]  # the prior learned something
    assert sorted(evals[evals.metric == "psnr"].step) == [0, tok_steps]
    for name in PRIOR_METRICS + TOKENIZER_METRICS:
        assert math.isfinite(full.final[name]), name
    assert 0 <= full.final["precision_randcnn"] <= 1 and 0 <= full.final["recall_randcnn"] <= 1
    assert 0 <= full.final["precision_digitsnet"] <= 1 and 0 <= full.final["recall_digitsnet"] <= 1
    assert full.final["class_coverage_digitsnet"] in {c / 10 for c in range(11)} and full.final["gfd_digitsnet"] > 0
    assert full.final["digitsnet_test_accuracy"] >= 0.95  # the classifier of this split (n_eval=100)
    assert row.main_metric == "gfd_digitsnet"
    assert {"gfd_digitsnet", "class_coverage_digitsnet"} <= set(metrics[metrics.split == "validation"].metric)
    assert 0 < full.final["emitted_code_frac"] <= 1 and full.final["gfd_randcnn"] >= 0
    assert 0 < full.final["nll_bits_per_token"] < math.log2(16) + 1
    ckpt = torch.load(ResultStore(tmp_path / "full").checkpoint_path(spec.run_id), weights_only=False)
    assert len(ckpt["models"]) == 2  # tokenizer and prior

    shared = tmp_path / "shared"
    assert run(recon_spec(), shared, progress=False).status == "ok"
    reused = run(spec, shared, progress=False)
    assert reused.status == "ok", reused.error
    rows = ResultStore(shared).load_runs().set_index("task")
    assert rows.loc["gen-digits", "steps_done"] == prior_steps  # stage 1 was not trained again
    train = _train_rows(shared, spec)
    assert "rec_loss" not in set(train.metric) and train.step.max() == prior_steps
    ckpt = torch.load(ResultStore(shared).checkpoint_path(spec.run_id), weights_only=False)
    assert len(ckpt["models"]) == 1 and "pos_emb" in ckpt["models"][0]
    # same tokenizer, same prior init, batches and sampling generator: the same numbers as the full run
    for name in PRIOR_METRICS + TOKENIZER_METRICS:
        assert reused.final[name] == pytest.approx(full.final[name], rel=1e-6, abs=1e-9), name


def test_generation_run_resumes_inside_the_prior_stage(tmp_path):
    from vqbench.runner import run
    from vqbench.store import ResultStore

    spec = gen_spec(prior={"prior_steps": 4})
    reference = run(spec, tmp_path / "ref", progress=False)
    partial = run(spec, tmp_path / "resumed", progress=False, stop_after_steps=TOY_BUDGET["steps"] + 2)
    assert partial.status == "interrupted"
    resumed = run(spec, tmp_path / "resumed", progress=False)
    assert resumed.status == reference.status == "ok"

    def rows(root):
        df = ResultStore(root).load_metrics(spec.task)
        return df.sort_values(["split", "step", "metric"]).reset_index(drop=True)

    import pandas as pd

    pd.testing.assert_frame_equal(rows(tmp_path / "ref"), rows(tmp_path / "resumed"))
