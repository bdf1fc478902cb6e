"""``vqbench tune SUITE_OR_SWEEP --trials N``: the same tuning budget for every method, through the sweep machinery.

For each (task, task params, method, method params) point of the sweep, ``N`` trials are drawn
(:func:`vqbench.tuning.trial_points`: Sobol points over the method's declared ``search_space`` plus the shared
learning-rate knob) and run at seed :data:`TRIAL_SEED` as the sweep ``<name>.trials`` (tags ``tune:<name>``,
``trial:<i>``, ``trials:<N>``). Once every trial has finished, the selection (:func:`vqbench.tuning.select_trials`:
best final **validation** main metric, ties to the lower trial index) is derived from the store, and each selected
configuration runs with the sweep's seeds (at least three), shifted past the trial seed so they are fresh
(``seed + 1``), as the sweep ``<name>.tuned`` (tags ``suite:<name>``, ``tuned:<name>``, ``trials:<N>``): the
tuned track of suite ``<name>``, beside its defaults track (``vqbench sweep run <name>``).

Everything goes through :func:`vqbench.slurm.launch.run_sweep`: Slurm arrays, skip-done, resume, local and
debug executors. On Slurm, run the command again once the trials are done: it selects and submits the finals;
completed runs are never redone, so an interrupted tuning resumes and selects the same configurations.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vqbench.errors import UserError
from vqbench.registry import METHODS
from vqbench.slurm.launch import SweepSummary, run_sweep, sweep_status
from vqbench.slurm.sweep import Sweep, SweepRun
from vqbench.spec import RunSpec, canonical_json, make_spec
from vqbench.store import ResultStore
from vqbench.tuning import (
    TRIAL_TAG,
    TRIALS_SUFFIX,
    TUNE_TAG,
    TUNED_SUFFIX,
    TUNED_TAG,
    check_trials,
    parse_space,
    select_trials,
    split_trial,
    trial_points,
)

TRIAL_SEED = 0
MIN_FINAL_SEEDS = 3


@dataclass
class TuneSummary:
    """What :func:`tune` did: the trials' sweep, and the finals' once the trials were complete."""

    name: str
    trials: SweepSummary
    finals: SweepSummary | None = None
    waiting: int = 0  # trials not finished yet
    selected: list[str] = field(default_factory=list)  # one line per selected configuration

    def format(self) -> str:
        lines = [self.trials.format()]
        if self.trials.dry_run:
            lines.append(f"tune {self.name}: once the trials finish, the best trial per (method, task) on the "
                         "validation split runs again at the sweep's seeds (fresh: seed + 1) as the tuned track")
        elif self.finals is None:
            lines.append(f"tune {self.name}: {self.waiting} trial(s) not finished; run `vqbench tune` again when they "
                         "are, to select and launch the tuned configurations")
        else:
            lines += [f"selected: {line}" for line in self.selected]
            lines.append(self.finals.format())
        return "\n".join(lines)


def _knobs(method: str) -> tuple:
    entry = METHODS.get(method)
    names = None if entry.accepts_any_kwargs() else set(entry.parameters())
    return parse_space(method, entry.search_space, names)


def trial_sweep(sweep: Sweep, trials: int) -> Sweep:
    """The sweep of every trial of ``sweep`` (deterministic; validates every search space first)."""
    check_trials(trials)
    _one_configuration_per_task_and_method(sweep)
    knobs = {m: _knobs(m) for m in sorted({r.spec.method for r in sweep.runs})}
    runs: list[SweepRun] = []
    seen: set[str] = set()
    for run in sweep.runs:
        spec = run.spec
        for i, point in enumerate(trial_points(knobs[spec.method], trials, name=sweep.name, task=spec.task,
                                               method=spec.method)):
            params, lr = split_trial(point, spec.budget.lr)
            tags = (f"{TUNE_TAG}{sweep.name}", f"{TRIAL_TAG}{i}", f"trials:{trials}")
            try:
                trial = make_spec(spec.task, spec.method, spec.task_params, {**spec.method_params, **params},
                                  seed=TRIAL_SEED, budget=replace(spec.budget, lr=lr), tags=tags)
            except UserError as exc:
                raise UserError(f"tune {sweep.name}: trial {i} of {spec.method} on {spec.task}: {exc}") from None
            if trial.run_id not in seen:
                seen.add(trial.run_id)
                runs.append(SweepRun(trial, run.profile))
    return replace(sweep, name=sweep.name + TRIALS_SUFFIX, runs=runs, tags=())


def _one_configuration_per_task_and_method(sweep: Sweep) -> None:
    """Selection is per (task, method): a sweep with parameter grids would pool different configurations."""
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for run in sweep.runs:
        s = run.spec
        config = (canonical_json(s.task_params), canonical_json(s.method_params))
        if seen.setdefault((s.task, s.method), config) != config:
            raise UserError(f"tune {sweep.name}: {s.method} on {s.task} appears with several parameter settings (a "
                            "grid); tuning selects one configuration per (task, method): give each setting its own "
                            "sweep (or task/method name)")


def final_sweep(sweep: Sweep, trials: int, selected_specs: list[RunSpec]) -> Sweep:
    """The selected configurations at the sweep's seeds shifted past the trial seed (fresh seeds), at least
    :data:`MIN_FINAL_SEEDS` of them (a sweep of fewer seeds gets the next ones)."""
    seeds = sorted({r.spec.seed for r in sweep.runs})
    while len(seeds) < MIN_FINAL_SEEDS:
        seeds.append(seeds[-1] + 1)
    profile = {(r.spec.task, r.spec.method): r.profile for r in sweep.runs}
    tags = (f"suite:{sweep.name}", f"{TUNED_TAG}{sweep.name}", f"trials:{trials}", *sweep.tags)
    runs = []
    for chosen in selected_specs:
        for seed in seeds:
            spec = replace(chosen, seed=seed + TRIAL_SEED + 1, tags=tags)
            runs.append(SweepRun(spec, profile[(chosen.task, chosen.method)]))
    return replace(sweep, name=sweep.name + TUNED_SUFFIX, runs=runs)


def tune(sweep: Sweep, trials: int, results: str | os.PathLike[str] = "results", executor: str | None = None,
         dry_run: bool = False, wait: bool = False, *, device: str | None = None, workers: int = 1,
         log: Callable[[str], None] | None = print) -> TuneSummary:
    """Run the trials of ``sweep``, then (once all are finished) the selected configurations; see the module doc."""
    trial_runs = trial_sweep(sweep, trials)
    summary = TuneSummary(sweep.name, run_sweep(trial_runs, results, executor, dry_run, wait, device=device,
                                                 log=log, workers=workers))
    if dry_run:
        return summary
    status = sweep_status(trial_runs, results)
    summary.waiting = len(status.of("pending", "running", "unsubmitted", "unknown"))
    if summary.waiting:
        return summary
    store = ResultStore(results)
    runs = store.load_runs()
    runs = runs[runs["run_id"].isin(trial_runs.run_ids())]
    metrics = store.load_metrics(run_ids=list(runs["run_id"]))
    chosen = select_trials(runs, metrics, sweep.name)
    specs = {r["run_id"]: RunSpec.from_json(r["spec"]) for _, r in runs.iterrows()}
    selected = [specs[run_id] for run_id in chosen["run_id"]]
    summary.selected = [f"{r.method} on {r.task}: trial {r.trial} ({r.metric} {r.value:.4g} on validation; "
                        f"{r.trials_ok}/{r.trials} trials ok) {_params(specs[r.run_id])}"
                        for r in chosen.itertuples()]
    summary.finals = run_sweep(final_sweep(sweep, trials, selected), results, executor, False, wait, device=device,
                               log=log, workers=workers)
    return summary


def _params(spec: RunSpec) -> str:
    items: dict[str, Any] = {**spec.method_params, "lr": spec.budget.lr}
    return ", ".join(f"{k}={v}" for k, v in sorted(items.items()))


def tune_command(source: str | Path, trials: int, results: str, executor: str | None, dry_run: bool,
                 wait: bool, device: str | None, workers: int) -> int:
    """``vqbench tune``: load the suite or sweep file, tune it, print what happened."""
    from vqbench.slurm.sweep import load_sweep

    summary = tune(load_sweep(source), trials, results, executor, dry_run, wait, device=device, workers=workers)
    print(summary.format())
    return 1 if summary.trials.failed or (summary.finals is not None and summary.finals.failed) else 0
