"""The digits classifier behind gen-digits' metrics (vqbench.tasks.digitsnet), its class figures
(vqbench.gen_metrics) and the task page's sentence about it (vqbench.leaderboard.page_task)."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timedelta, timezone

import pytest
import torch

from vqbench.gen_metrics import class_coverage, class_histogram, class_kl
from vqbench.tasks import digitsnet
from vqbench.tasks.digitsnet import DigitsNetRecipe, load_or_train, recipe_splits, train_digitsnet

#: the default recipe's hash: it names the cache file, so it moves only when the recipe does (then bump
#: RECIPE_VERSION or a field, and gen-digits' revision, since every gfd_digitsnet changes)
PINNED_HASH = "73fac60ee247"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache folder ($VQBENCH_CACHE) for this module, and the in-process memo emptied."""
    folder = tmp_path_factory.mktemp("vqbench_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(digitsnet.CACHE_ENV, str(folder))
        digitsnet._LOADED.clear()
        yield folder
    digitsnet._LOADED.clear()


@pytest.fixture(scope="module")
def trained(cache):
    """The default classifier, trained once into the module's cache."""
    return load_or_train()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- recipe and split --------------------------------------------------------------------------------
def test_recipe_hash_is_pinned_and_covers_every_field():
    recipe = DigitsNetRecipe()
    assert recipe.hash == PINNED_HASH and len(recipe.hash) == digitsnet.HASH_DIGITS
    assert json.loads(recipe.canonical_json())["version"] == digitsnet.RECIPE_VERSION
    changed = {"n_eval": 100, "split_seed": 1, "validation_fraction": 0.2, "channels": (16, 32, 64), "features": 32,
               "epochs": 21, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0, "seed": 1, "version": 99}
    assert set(changed) == {f.name for f in dataclasses.fields(DigitsNetRecipe)}
    hashes = {dataclasses.replace(recipe, **{name: value}).hash for name, value in changed.items()}
    assert len(hashes) == len(changed) and recipe.hash not in hashes


def test_the_classifier_splits_are_the_digits_tasks_train_and_eval_splits():
    from vqbench.registry import TASKS

    task = TASKS.create("digits")
    task.setup(torch.device("cpu"), 0)
    recipe = DigitsNetRecipe(n_eval=task.n_eval, split_seed=task.split_seed)
    assert recipe == DigitsNetRecipe()  # the default recipe is that of the registered digits task
    train, test = recipe_splits(recipe)
    assert torch.equal(train.images, task.train_data.images) and torch.equal(test.images, task.eval_data.images)
    assert len(test) == 297 and len(train) + len(task.validation_data) + len(test) == 1797


# -- training and cache --------------------------------------------------------------------------------
def test_training_is_deterministic():
    short = DigitsNetRecipe(epochs=3)  # the same code path as the full recipe, a seventh of the time
    deterministic_before = torch.are_deterministic_algorithms_enabled()  # (earlier tests may have set it)
    first, second = train_digitsnet(short), train_digitsnet(short)  # from scratch, bypassing the cache
    assert _same_weights(first.net, second.net) and first.test_accuracy == second.test_accuracy
    other_seed = train_digitsnet(dataclasses.replace(short, seed=1))
    assert not _same_weights(first.net, other_seed.net)  # (the comparison can fail)
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before  # the global settings are restored


def test_the_classifier_is_accurate_on_the_test_split(trained):
    _, test = recipe_splits(trained.recipe)
    assert trained.test_accuracy == digitsnet.accuracy(trained.net, test) >= 0.95
    assert trained.train_seconds < 60  # a few seconds on one CPU thread


def test_a_second_call_loads_the_cache_and_does_not_train(trained, cache, monkeypatch):
    path = cache / "digitsnet" / f"{PINNED_HASH}.pt"
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left

    def refuse(recipe):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(digitsnet, "train_digitsnet", refuse)
    digitsnet._LOADED.clear()  # a new process: only the file
    loaded = load_or_train()
    assert _same_weights(loaded.net, trained.net) and loaded.test_accuracy == trained.test_accuracy
    assert load_or_train() is loaded  # in-process memo


def test_a_damaged_or_foreign_cache_file_is_trained_again(tmp_path, monkeypatch, trained):
    monkeypatch.setenv(digitsnet.CACHE_ENV, str(tmp_path))
    recipe = DigitsNetRecipe(epochs=1)
    calls = []

    def fake_train(r):
        calls.append(r)
        return dataclasses.replace(trained, recipe=r)

    monkeypatch.setattr(digitsnet, "train_digitsnet", fake_train)
    path = digitsnet.cache_path(recipe)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"torn")
    load_or_train(recipe)
    digitsnet._LOADED.clear()
    payload = torch.load(path, weights_only=True)
    payload["recipe"] = DigitsNetRecipe(epochs=2).canonical_json()  # a hash collision, or a hand-copied file
    torch.save(payload, path)
    load_or_train(recipe)
    assert calls == [recipe, recipe]
    digitsnet._LOADED.clear()
    assert load_or_train(recipe).recipe == recipe and len(calls) == 2  # the rewritten file is used


def test_sample_classifier_features_head_and_figures(trained):
    classifier = digitsnet.sample_classifier(297, 0)
    assert classifier.features.metric_name("g") == digitsnet.DIGITSNET_GFD == "gfd_digitsnet"
    assert classifier.info == {"digitsnet_test_accuracy": trained.test_accuracy,
                               "digitsnet_recipe_hash": float(int(PINNED_HASH, 16))}
    _, test = recipe_splits(trained.recipe)
    x01 = test.images.float() / 255
    feats = classifier.features(x01)
    assert feats.shape == (len(test), trained.recipe.features)
    predicted = classifier.predict(feats)
    assert float((predicted == test.labels).double().mean()) == trained.test_accuracy
    assert class_coverage(predicted, 10) == 1.0 and class_kl(predicted, test.labels, 10) < 0.01


# -- class figures ---------------------------------------------------------------------------------------
def test_class_coverage_and_kl_on_hand_made_predictions():
    predicted = torch.tensor([0] * 50 + [1] * 45 + [2] * 5)  # shares 0.5, 0.45, 0.05 of 10 classes
    assert class_histogram(predicted, 10).tolist() == [0.5, 0.45, 0.05] + [0.0] * 7
    assert class_coverage(predicted, 10) == 0.3  # default share 1/(2*10) = 0.05: class 2 just counts
    assert class_coverage(predicted, 10, min_share=0.06) == 0.2
    assert class_coverage(torch.arange(10).repeat(3), 10) == 1.0
    with pytest.raises(ValueError):
        class_coverage(predicted, 10, min_share=0.0)
    # KL(p || q) = 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5)
    assert class_kl(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 0, 1]), 2) == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert class_kl(torch.tensor([1, 0]), torch.tensor([0, 1, 1, 0]), 2) == 0.0
    assert class_kl(torch.tensor([0, 0]), torch.tensor([0, 1, 1, 1]), 2) == pytest.approx(math.log(4))
    assert class_kl(torch.tensor([2]), torch.tensor([0, 1]), 3) == math.inf  # a class the real images never get


# -- the task page -------------------------------------------------------------------------------------------
def _write_gen_digits_runs(results) -> None:
    from vqbench.store import ResultStore

    store = ResultStore(results)
    start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    runs = [("a1", "vq", 0, "ok", 12.0), ("a2", "vq", 1, "ok", 14.0), ("a3", "fsq", 0, "ok", 30.0),
            ("a4", "fsq", 1, "failed", None)]
    for i, (rid, method, seed, status, gfd) in enumerate(runs):
        store.write_run({
            "run_id": rid, "task": "gen-digits", "task_version": 3002, "task_params": "{}", "method": method,
            "method_version": 1, "method_params": "{}", "method_family": "codebook", "task_kind": "generation",
            "task_description": "digits tokens and a prior", "seed": seed, "budget": "{}", "tags": ["suite:s"],
            "status": status, "main_metric": "gfd_digitsnet", "higher_is_better": False, "steps_done": 10,
            "started_at": start + timedelta(minutes=i), "finished_at": start + timedelta(minutes=i, seconds=30)})
        if gfd is not None:
            store.write_metrics("gen-digits", rid, [
                ("eval", 10, "gfd_digitsnet", gfd), ("eval", 10, "gfd_randcnn", gfd / 10),
                ("eval", 10, "digitsnet_test_accuracy", 0.98653), ("eval", 10, "utilization", 0.5),
                ("eval", 10, "digitsnet_recipe_hash", float(int(PINNED_HASH, 16)))])


def test_the_task_page_states_the_classifiers_accuracy_and_recipe(tmp_path):
    from vqbench.leaderboard.build import build_site

    _write_gen_digits_runs(tmp_path / "results")
    build_site(tmp_path / "results", tmp_path / "site")
    page = (tmp_path / "site" / "tasks" / "gen-digits.html").read_text()
    assert (f"Features of gfd_digitsnet and of the other <code>*_digitsnet</code> figures: the classifier "
            f"<code>digitsnet</code>, trained once on the training split of this task's data; its test accuracy on "
            f"the eval split: 98.7% (recipe hash <code>{PINNED_HASH}</code>, 3 runs).") in page  # the failed run: not
    table = page[page.index('id="task-table"'):]
    assert "gfd_digitsnet" in table and "gfd_randcnn" in table
    assert "digitsnet_test_accuracy" not in table and "digitsnet_recipe_hash" not in table  # stated, not columns
    run_page = (tmp_path / "site" / "runs" / "a1.html").read_text()  # the run page spells the hash in hex
    assert f'<td class="num"><code>{PINNED_HASH}</code></td>' in run_page


def test_no_classifier_note_without_its_metric_rows():
    import pandas as pd

    from vqbench.leaderboard.page_task import classifier_note, task_classifiers

    assert task_classifiers(["gfd_randcnn", "gfd_digitsnet", "digitsnet_test_accuracy"]) == ["digitsnet"]
    assert task_classifiers(["gfd_randcnn", "precision_randcnn"]) == []
    runs = pd.DataFrame({"task": ["gen-digits"], "status": ["ok"], "metric.gfd_digitsnet": [1.0]})
    assert classifier_note(runs, "gen-digits", "digitsnet") == ""
    runs["metric.digitsnet_test_accuracy"] = [0.5]
    assert "eval split: 50.0% (1 run)." in classifier_note(runs, "gen-digits", "digitsnet")
