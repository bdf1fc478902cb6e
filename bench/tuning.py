"""Equal tuning budgets: search spaces, quasi-random trials, and a selection derived from the store.

Every method declares a search space next to its defaults (``@register_method(..., search_space={...})``):
``{"beta": (0.05, 2.0, "log"), "ema_decay": (0.8, 0.999, "linear"), "levels_scale": (2, 8, "int")}``.
A range is ``(low, high, scale)`` with scale ``log`` (uniform in log space, ``0 < low < high``),
``linear`` (uniform) or ``int`` (uniform over the integers ``low..high``). Every method is also tuned on the
shared knob :data:`SHARED_KNOBS` (the optimiser learning rate, as a factor of the task's budget lr), so a method
that declares no space still gets the same number of trials, on the shared knob only (the site says so).

Trials are the first ``N`` points of a scrambled Sobol sequence over the unit cube of the method's knobs,
seeded by (tuning name, task, method): the same count for every method, reproducible, spread evenly. Values
are rounded to 4 significant digits so that a trial's parameters read cleanly and hash stably.

Selection reads only the **validation** split: per (task, method), among the trials that finished ``ok``, the
one with the best final validation main metric; ties go to the lower trial index (the earlier Sobol point).
Eval-split numbers are never read here, so the board's reported numbers cannot leak into the choice.
This module imports no torch (the site uses the selection too).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vqbench.errors import UserError

SCALES = ("log", "linear", "int")
LR_KNOB = "budget.lr_factor"
TRIAL_TAG, TUNE_TAG, TUNED_TAG = "trial:", "tune:", "tuned:"
# `vqbench tune NAME` runs the sweeps NAME.trials (every trial) and NAME.tuned (the selected configurations, fresh
# seeds): the site shows NAME.tuned as the tuned track of suite NAME and NAME.trials only in its robustness plots
TRIALS_SUFFIX, TUNED_SUFFIX = ".trials", ".tuned"


@dataclass(frozen=True)
class Knob:
    """One tunable parameter: a range and how to sample it."""

    name: str
    low: float
    high: float
    scale: str = "linear"

    def value(self, u: float) -> float | int:
        """The parameter value at ``u`` in [0, 1)."""
        if self.scale == "log":
            x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        elif self.scale == "int":
            return int(min(self.high, math.floor(self.low + u * (self.high - self.low + 1))))
        else:
            x = self.low + u * (self.high - self.low)
        return float(f"{x:.4g}")

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


#: tuned for every method: the learning rate as a factor of the task's budget lr (a quarter to four times)
SHARED_KNOBS = (Knob(LR_KNOB, 0.25, 4.0, "log"),)


def parse_space(method: str, space: dict[str, Any] | None, parameters: set[str] | None = None) -> tuple[Knob, ...]:
    """The method's knobs from its declared ``search_space``; one-line errors name the method and parameter.

    ``parameters``: the method's accepted parameter names (None: accept any name).
    """
    knobs = []
    for name, spec in sorted((space or {}).items()):
        where = f"method {method!r}, search_space parameter {name!r}"
        if parameters is not None and name not in parameters:
            raise UserError(f"{where}: the method has no such parameter (its parameters: "
                            f"{', '.join(sorted(parameters)) or 'none'})")
        if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
            raise UserError(f"{where}: give a range as (low, high) or (low, high, scale), got {spec!r}")
        low, high, scale = (*spec, "linear") if len(spec) == 2 else spec
        if scale not in SCALES:
            raise UserError(f"{where}: unknown scale {scale!r}; use one of {', '.join(SCALES)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
            raise UserError(f"{where}: low and high must be finite numbers, got {low!r}, {high!r}")
        if not low < high:
            raise UserError(f"{where}: the range [{low}, {high}] is empty; give low < high")
        if scale == "log" and low <= 0:
            raise UserError(f"{where}: a log range must lie above zero, got [{low}, {high}]; use a linear scale "
                            "or a positive low")
        if scale == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise UserError(f"{where}: an int range needs integer bounds, got [{low}, {high}]")
        knobs.append(Knob(name, float(low), float(high), scale))
    return tuple(knobs)


def check_trials(trials: Any) -> int:
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UserError(f"--trials must be a positive integer, got {trials!r}")
    return trials


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "little")


def sobol_unit(dimensions: int, n: int, seed: int) -> np.ndarray:
    """The first ``n`` points of a scrambled Sobol sequence in [0, 1)^dimensions (SciPy's, seeded)."""
    from scipy.stats import qmc

    sampler = qmc.Sobol(d=dimensions, scramble=True, seed=np.random.default_rng(seed))
    with warnings.catch_warnings():  # n need not be a power of two: the balance warning does not apply here
        warnings.simplefilter("ignore", UserWarning)
        return sampler.random(n)


def trial_points(knobs: tuple[Knob, ...], n: int, *, name: str, task: str, method: str) -> list[dict[str, Any]]:
    """``n`` trials: dicts knob name -> value, over the shared knobs plus ``knobs``; deterministic."""
    every = (*SHARED_KNOBS, *knobs)
    unit = sobol_unit(len(every), check_trials(n), _seed(name, task, method))
    return [{k.name: k.value(float(u)) for k, u in zip(every, row)} for row in unit]


def split_trial(point: dict[str, Any], base_lr: float) -> tuple[dict[str, Any], float]:
    """(method params, budget lr) of a trial point."""
    params = {k: v for k, v in point.items() if k != LR_KNOB}
    return params, float(f"{base_lr * point.get(LR_KNOB, 1.0):.4g}")


def trial_index(tags: Any) -> int | None:
    for tag in list(tags) if tags is not None else []:
        if isinstance(tag, str) and tag.startswith(TRIAL_TAG):
            return int(tag[len(TRIAL_TAG):])
    return None


def has_tag(tags: Any, tag: str) -> bool:
    return tag in (list(tags) if tags is not None else [])


def select_trials(runs: pd.DataFrame, metrics: pd.DataFrame, name: str) -> pd.DataFrame:
    """Per (task, method), the selected trial of tuning ``name``; one row each, see the module docstring.

    ``runs``: the store's runs table; ``metrics``: its long metrics table (only ``split == "validation"``
    rows are read). Columns of the result: task, method, run_id, trial, value, metric, trials, trials_ok,
    spread (IQR of the validation main metric over the ok trials).
    """
    columns = ["task", "method", "run_id", "trial", "value", "metric", "trials", "trials_ok", "spread"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    tag = TUNE_TAG + name
    mine = runs[runs["tags"].map(lambda t: has_tag(t, tag))].copy()
    if mine.empty:
        return pd.DataFrame(columns=columns)
    mine["trial"] = mine["tags"].map(trial_index)
    validation = metrics[(metrics["split"] == "validation") & metrics["run_id"].isin(mine["run_id"])]
    last = validation.sort_values("step").groupby(["run_id", "metric"])["value"].last()
    rows = []
    for (task, method), group in mine.groupby(["task", "method"], sort=True):
        metric, higher = group["main_metric"].iloc[0], bool(group["higher_is_better"].iloc[0])
        ok = group[group["status"] == "ok"].copy()
        ok["value"] = [last.get((rid, metric), math.nan) for rid in ok["run_id"]]
        ok = ok[np.isfinite(ok["value"].astype(float))]
        if ok.empty:
            continue
        oriented = ok["value"] if higher else -ok["value"]
        best = ok.assign(_score=oriented).sort_values(["_score", "trial"], ascending=[False, True]).iloc[0]
        q75, q25 = np.percentile(ok["value"].astype(float), [75, 25])
        rows.append({"task": task, "method": method, "run_id": best["run_id"], "trial": int(best["trial"]),
                     "value": float(best["value"]), "metric": metric, "trials": len(group),
                     "trials_ok": len(ok), "spread": float(q75 - q25)})
    return pd.DataFrame(rows, columns=columns)
