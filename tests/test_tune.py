"""`vqbench tune`: N trials per (method, task) through the sweep machinery, selection from the store."""

from __future__ import annotations

import dataclasses

import pytest

from vqbench.errors import UserError
from vqbench.registry import METHODS
from vqbench.slurm.launch import run_sweep
from vqbench.slurm.sweep import load_sweep
from vqbench.slurm.tune import TRIAL_SEED, trial_sweep, tune
from vqbench.spec import RunSpec
from vqbench.store import ResultStore
from vqbench.tuning import parse_space, select_trials

SWEEP = """\
name: tiny-tune
tasks:
  - name: gmm
    params: {n_train: 512, n_eval: 256, n_modes: 8, hidden: 32, codebook_size: 32}
methods: [vq, vq-ema, fsq]
seeds: 1
budget: {steps: 16, batch_size: 64, eval_interval: 8}
executor: {profile: cpu-debug, cluster: local}
"""


@pytest.fixture
def sweep(tmp_path):
    path = tmp_path / "tiny-tune.yaml"
    path.write_text(SWEEP)
    return load_sweep(path)


def test_every_method_gets_exactly_n_trials_inside_its_declared_bounds(sweep):
    trials = trial_sweep(sweep, 5)
    assert trials.name == "tiny-tune.trials"
    by_method: dict[str, list[RunSpec]] = {}
    for run in trials.runs:
        by_method.setdefault(run.spec.method, []).append(run.spec)
    assert {m: len(v) for m, v in by_method.items()} == {"vq": 5, "vq-ema": 5, "fsq": 5}
    base_lr = sweep.runs[0].spec.budget.lr
    for method, specs in by_method.items():
        knobs = parse_space(method, METHODS.get(method).search_space)
        assert all(s.seed == TRIAL_SEED for s in specs)
        assert sorted(int(t.split(":")[1]) for s in specs for t in s.tags if t.startswith("trial:")) == list(range(5))
        for spec in specs:
            assert 0.25 * base_lr * 0.999 <= spec.budget.lr <= 4.0 * base_lr * 1.001
            for knob in knobs:
                assert knob.contains(spec.method_params[knob.name]), (method, knob, spec.method_params)
    # fsq declares no space: its trials differ in the shared learning rate only
    assert {s.method_params["levels"] is None for s in by_method["fsq"]} == {True}
    assert len({s.budget.lr for s in by_method["fsq"]}) == 5
    assert trial_sweep(sweep, 5).run_ids() == trials.run_ids()  # deterministic


def test_bad_spaces_and_trial_counts_fail_before_anything_is_submitted(sweep, tmp_path):
    with pytest.raises(UserError, match="--trials"):
        tune(sweep, 0, tmp_path / "results", dry_run=True, log=None)
    entry = METHODS.get("vq")
    for space, message in [({"nope": (0.1, 1.0)}, "no such parameter"), ({"beta": (1.0, 0.5)}, "empty"),
                           ({"beta": (-1.0, 1.0, "log")}, "above zero")]:
        METHODS._entries["vq"] = dataclasses.replace(entry, search_space=space)
        try:
            with pytest.raises(UserError, match=message) as info:
                tune(sweep, 3, tmp_path / "results", dry_run=True, log=None)
            assert "'vq'" in str(info.value)
        finally:
            METHODS._entries["vq"] = entry
    assert not (tmp_path / "results").exists()
    grid = tmp_path / "grid.yaml"
    grid.write_text(SWEEP.replace("methods: [vq, vq-ema, fsq]",
                                  "methods:\n  - name: vq\n    params: {beta: [0.1, 0.5]}"))
    with pytest.raises(UserError, match="one configuration per"):
        tune(load_sweep(grid), 3, tmp_path / "results", dry_run=True, log=None)


def test_tune_runs_trials_then_the_selection_with_fresh_seeds(sweep, tmp_path):
    results = tmp_path / "results"
    summary = tune(sweep, 3, results, executor="debug", wait=True, log=None)
    assert summary.finals is not None and summary.trials.submitted == 9 and summary.finals.submitted == 9
    store = ResultStore(results)
    runs, metrics = store.load_runs(), store.load_metrics()
    assert (metrics["split"] == "validation").any()
    chosen = select_trials(runs, metrics, "tiny-tune").set_index("method")
    assert sorted(chosen.index) == ["fsq", "vq", "vq-ema"] and (chosen["trials"] == 3).all()
    finals = runs[runs["tags"].map(lambda t: "tuned:tiny-tune" in list(t))]
    assert len(finals) == 9 and sorted(set(finals["seed"])) == [1, 2, 3]  # at least 3 fresh seeds
    assert all("suite:tiny-tune" in list(t) and "trials:3" in list(t) for t in finals["tags"])
    for method, row in chosen.iterrows():
        trial = RunSpec.from_json(runs.set_index("run_id").loc[row["run_id"], "spec"])
        for _, final in finals[finals["method"] == method].iterrows():
            spec = RunSpec.from_json(final["spec"])
            assert spec.method_params == trial.method_params and spec.budget == trial.budget
    again = tune(sweep, 3, results, executor="debug", wait=True, log=None)
    assert again.trials.submitted == 0 and again.finals is not None and again.finals.submitted == 0


def test_interrupted_then_resumed_tuning_selects_the_same(sweep, tmp_path):
    whole = tmp_path / "whole"
    tune(sweep, 3, whole, executor="debug", wait=True, log=None)
    parts = tmp_path / "parts"
    trials = trial_sweep(sweep, 3)
    run_sweep(dataclasses.replace(trials, runs=trials.runs[:4]), parts, executor="debug", wait=True, log=None)
    first = tune(sweep, 3, parts, executor="debug", wait=True, log=None)
    assert first.trials.complete == 4 and first.trials.submitted == 5

    def selection(root):
        store = ResultStore(root)
        return select_trials(store.load_runs(), store.load_metrics(), "tiny-tune").sort_values("method")

    assert selection(whole)[["method", "run_id", "trial", "value"]].values.tolist() == \
        selection(parts)[["method", "run_id", "trial", "value"]].values.tolist()


def test_tune_command_line_dry_run(sweep, tmp_path, capsys):
    from vqbench.commands.cli import main

    path = tmp_path / "tiny-tune.yaml"
    path.write_text(SWEEP)
    assert main(["tune", str(path), "--trials", "2", "--dry-run", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "tiny-tune.trials: 6 runs" in out and "would submit 6" in out
    assert main(["tune", str(path), "--trials", "0", "--dry-run"]) == 2
    assert "--trials must be a positive integer" in capsys.readouterr().err
