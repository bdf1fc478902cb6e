"""Equal tuning budgets on the site: which track each run belongs to, and the trials of each tuning.

``vqbench tune NAME --trials N`` (see :mod:`vqbench.slurm.tune` and :mod:`vqbench.tuning`) writes two kinds
of runs beside the suite's own (``vqbench sweep run NAME``, the **defaults** track):

- *trials*: tags ``tune:NAME``, ``trial:<i>``, ``trials:<N>``, seed 0, sweep membership ``NAME.trials``.
  They never enter a suite table: the task pages show them (a robustness plot and a listing per method).
- *finals*: tags ``suite:NAME``, ``tuned:NAME``, ``trials:<N>``, membership ``NAME.tuned``: the **tuned**
  track of suite ``NAME``, a table of its own beside the defaults one.

A membership (or ``suite:`` tag) named ``NAME.trials`` or ``NAME.tuned`` never makes a suite of its own.
The selection of each (task, method) is :func:`vqbench.tuning.select_trials`, the function ``vqbench tune``
selected with: best final validation main metric, ties to the lower trial index; its spread (the IQR of
the validation main metric over the ok trials) is the tuned table's sensitivity column.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from vqbench.tuning import (
    TRIAL_TAG,
    TRIALS_SUFFIX,
    TUNE_TAG,
    TUNED_SUFFIX,
    TUNED_TAG,
    select_trials,
    trial_index,
)

ADHOC = "adhoc"
SUITE_PREFIX = "suite:"
TRIALS_COUNT_TAG = "trials:"
#: the config-key marker of a run that is only a trial (so a selected trial and the finals of the same
#: parameters, at other seeds, never share a configuration)
TRIAL_MARK = "trial"
TRACK_DEFAULTS, TRACK_TUNED, TRACK_TRIAL = "defaults", "tuned", "trial"


@dataclass(frozen=True)
class RunRoles:
    """What one run is: a member of suites' defaults tracks, of tuned tracks, and/or a trial of tunings."""

    default_suites: list[str]
    tuned_suites: list[str]
    trial_of: list[str]

    @property
    def suites(self) -> list[str]:
        """Every suite whose section shows the run (either track)."""
        return sorted(set(self.default_suites) | set(self.tuned_suites))

    @property
    def track(self) -> str:
        """``trial`` (only a trial), ``tuned`` (only in tuned tracks) or ``defaults``."""
        if not self.suites:
            return TRACK_TRIAL
        return TRACK_TUNED if self.tuned_suites and not self.default_suites else TRACK_DEFAULTS

    @property
    def labels(self) -> list[str]:
        """The suites as shown in the tables: ``NAME`` for the defaults track, ``NAME (tuned)``, and for a
        run that is only a trial ``NAME (trial)``."""
        labels = list(self.default_suites) + [f"{s} (tuned)" for s in self.tuned_suites]
        return labels or [f"{s} (trial)" for s in self.trial_of]


def tags_of(tags: Any) -> list[str]:
    """A run's tags as strings (none when the cell is missing)."""
    return [str(t) for t in tags] if tags is not None and not isinstance(tags, str) else []


def _names(tags: list[str], prefix: str) -> set[str]:
    return {t[len(prefix):] for t in tags if t.startswith(prefix) and len(t) > len(prefix)}


def run_roles(tags: list[str], memberships: set[str]) -> RunRoles:
    """The roles of a run from its tags and sweep memberships (see the module docstring).

    A run tagged ``suite:S`` and ``tuned:S`` is in the tuned track of ``S`` only; a membership ``S`` (a
    ``sweep run``) puts it in the defaults track whatever its tags. A run with no role is ``adhoc``.
    """
    tuned = _names(tags, TUNED_TAG)
    trials = _names(tags, TUNE_TAG) if any(t.startswith(TRIAL_TAG) for t in tags) else set()
    plain: set[str] = set()
    tagged = _names(tags, SUITE_PREFIX) - {ADHOC}
    for name, from_tag in [(n, True) for n in sorted(tagged)] + [(n, False) for n in sorted(memberships)]:
        if name.endswith(TRIALS_SUFFIX) and len(name) > len(TRIALS_SUFFIX):
            trials.add(name[:-len(TRIALS_SUFFIX)])
        elif name.endswith(TUNED_SUFFIX) and len(name) > len(TUNED_SUFFIX):
            tuned.add(name[:-len(TUNED_SUFFIX)])
        elif not (from_tag and name in _names(tags, TUNED_TAG)):
            plain.add(name)
    if not plain and not tuned and not trials:
        plain = {ADHOC}
    return RunRoles(sorted(plain), sorted(tuned), sorted(trials))


def restrict_roles(roles: RunRoles, suite: str) -> RunRoles:
    """The roles of a run kept by the ``--suite`` filter: only those of ``suite``."""
    return RunRoles(*([suite] if suite in names else [] for names in
                      (roles.default_suites, roles.tuned_suites, roles.trial_of)))


def without_lr(variant_key: str) -> str:
    """A variant key with the budget's learning rate removed: the tuned track's columns (lr is tuned)."""
    task, version, task_params, budget = json.loads(variant_key)
    try:
        parsed = json.loads(budget) if budget else {}
    except (TypeError, ValueError):
        parsed = {}
    if isinstance(parsed, dict):
        parsed.pop("lr", None)
        budget = json.dumps(parsed, sort_keys=True, separators=(",", ":"))
    return json.dumps([task, version, task_params, budget])


def trials_anchor(tuning: str, method: str) -> str:
    """The HTML id, on a task page, of the listing of ``method``'s trials in ``tuning``."""
    return "trials-" + hashlib.sha1(json.dumps([tuning, method]).encode()).hexdigest()[:12]


def tuning_anchor(tuning: str) -> str:
    """The HTML id, on a task page, of the section of ``tuning`` (robustness plot and trials)."""
    return "tuning-" + hashlib.sha1(tuning.encode()).hexdigest()[:12]


def trials_count(tags: list[str]) -> int | None:
    """N of a ``trials:N`` tag (None without one)."""
    for tag in tags:
        if tag.startswith(TRIALS_COUNT_TAG) and tag[len(TRIALS_COUNT_TAG):].isdigit():
            return int(tag[len(TRIALS_COUNT_TAG):])
    return None


def budget_lr(budget: str) -> float:
    """The learning rate of a stored budget (NaN when it has none)."""
    try:
        value = json.loads(budget).get("lr") if budget else None
    except (TypeError, ValueError, AttributeError):
        value = None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


@dataclass
class Tuning:
    """Everything the site shows of one tuning ``name``.

    ``trials``: one row per trial run (task, method, run_id, trial, status, method_params, lr, value = final
    validation main metric, selected, config_key, row_id). ``selection``: :func:`vqbench.tuning.select_trials`
    plus ``knobs`` (the method params that vary over the trials; empty: tuned on the lr only).
    ``trial_counts``: the N of the finals' (or else the trials') ``trials:N`` tags.
    """

    name: str
    trials: pd.DataFrame
    selection: pd.DataFrame
    trial_counts: list[int] = field(default_factory=list)

    def knobs(self, task: str, method: str) -> list[str] | None:
        """The method params tuned for (task, method) (empty: lr only); None when it has no trials."""
        rows = self.selection[(self.selection["task"] == task) & (self.selection["method"] == method)]
        return list(rows["knobs"].iloc[0]) if len(rows) else None

    def has_trials(self, task: str, method: str) -> bool:
        """Whether the store holds trials of (task, method) (their listing exists on the task page)."""
        return bool(((self.trials["task"] == task) & (self.trials["method"] == method)).any())

    def spread(self, task: str, method: str) -> tuple[float, int, int]:
        """(IQR of the validation main metric over ok trials, ok trials, trials) of (task, method)."""
        rows = self.selection[(self.selection["task"] == task) & (self.selection["method"] == method)]
        if not len(rows):
            return math.nan, 0, 0
        row = rows.iloc[0]
        return float(row["spread"]), int(row["trials_ok"]), int(row["trials"])


def _parse(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {}


def _knobs(params: list[dict[str, Any]], defaults: dict[str, Any]) -> list[str]:
    """Method params that vary over the trials (one trial: those that differ from the defaults)."""
    if len(params) == 1:
        return sorted(k for k, v in params[0].items() if k not in defaults or defaults[k] != v)
    keys = sorted({k for p in params for k in p})
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in params}) > 1]


def load_tunings(runs: pd.DataFrame, metrics: pd.DataFrame, defaults: dict[str, dict[str, Any]]) -> dict[str, Tuning]:
    """The tunings present in ``runs`` (the site's runs table: ``trial_of``, ``tuned_suites``, ``tags`` ...).

    ``defaults``: method -> registered defaults (for a tuning of one trial, to tell what was tuned).
    """
    names = sorted({n for ns in runs["trial_of"] for n in ns} | {n for ns in runs["tuned_suites"] for n in ns})
    if not names:
        return {}
    tag_lists = pd.Series([tags_of(t) for t in runs["tags"]], index=runs.index, dtype=object)
    validation = metrics[metrics["split"] == "validation"]
    last = validation.sort_values("step", kind="stable").groupby(["run_id", "metric"])["value"].last()
    tunings = {}
    for name in names:
        trial_runs = runs[[name in ns for ns in runs["trial_of"]]]
        chosen = select_trials(trial_runs, metrics, name)
        selected = set(chosen["run_id"])
        rows = []
        for run in trial_runs.itertuples():
            index = trial_index(tag_lists[run.Index])
            rows.append({"task": run.task, "method": run.method, "run_id": run.run_id,
                         "trial": -1 if index is None else index, "status": run.status,
                         "method_params": run.method_params, "lr": budget_lr(run.budget),
                         "value": float(last.get((run.run_id, run.main_metric), math.nan)),
                         "selected": run.run_id in selected, "config_key": run.config_key, "row_id": run.row_id})
        trials = pd.DataFrame(rows, columns=["task", "method", "run_id", "trial", "status", "method_params", "lr",
                                             "value", "selected", "config_key", "row_id"])
        trials = trials.sort_values(["task", "method", "trial", "run_id"], kind="stable").reset_index(drop=True)
        knobs = []
        for task, method in zip(chosen["task"], chosen["method"]):
            mine = trials[(trials["task"] == task) & (trials["method"] == method)]
            knobs.append(_knobs([_parse(p) for p in mine["method_params"]], defaults.get(method, {})))
        chosen = chosen.assign(knobs=knobs)
        finals = runs[[name in ns for ns in runs["tuned_suites"]]]
        counts = {trials_count(tag_lists[i]) for i in finals.index} - {None} or \
            {trials_count(tag_lists[i]) for i in trial_runs.index} - {None}
        tunings[name] = Tuning(name, trials, chosen, sorted(int(c) for c in counts if c is not None))
    return tunings


def selected_params_text(method_params: dict[str, Any], defaults: dict[str, Any], lr: float,
                         value_text: Any) -> str:
    """``k=v, ..., lr=x``: the method params of a tuned configuration that differ from the defaults, and lr."""
    items = [f"{k}={value_text(v)}" for k, v in sorted(method_params.items())
             if k not in defaults or defaults[k] != v]
    if math.isfinite(lr):
        items.append(f"lr={value_text(lr)}")
    return ", ".join(items) or "defaults"

