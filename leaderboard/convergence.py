"""Convergence flags: whether a run's main metric had stopped moving when its budget ended.

The rule (stated on the Protocol page and in every flag's tooltip): take the eval-split main metric at the
run's last eval step and at the eval step nearest to 75% of the run's steps (ties go to the earlier step);
the run **converged** when the relative change between the two, ``|last - reference| / |reference|``, is
below :data:`TOLERANCE` (1%). When the step nearest to 75% is the last eval step itself, there are fewer
than two eval steps in that window and the run is **not enough evals**. Both "not converged" and "not
enough evals" are flagged on the board; a run with no eval value of its main metric is "not enough evals".

A run's steps are its ``steps_done`` (every stage of an ``ok`` run; where the store does not say, the last
step its main metric was evaluated at). The board reports the last eval step's value whatever the curve did
before it: a curve that peaked earlier is reported as it ended, never at its peak (tuning, which may select,
reads the validation split only). Computed from the metric rows with pandas alone (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vqbench.leaderboard.html import escape

#: a relative change of the main metric below this over the last 25% of steps counts as converged
TOLERANCE = 0.01
#: the reference step is the eval step nearest to this fraction of the run's steps
REFERENCE_FRACTION = 0.75
CONVERGED, NOT_CONVERGED, FEW_EVALS = "converged", "not converged", "not enough evals"
STATES = (CONVERGED, NOT_CONVERGED, FEW_EVALS)
RULE = ("a run counts as converged when its eval main metric changed by less than "
        f"{TOLERANCE:.0%} (relative) between the eval step nearest to {REFERENCE_FRACTION:.0%} of its steps "
        "and its last eval step")


@dataclass(frozen=True)
class Convergence:
    """The convergence of one run's main metric (see the module docstring for the rule)."""

    state: str
    change: float = math.nan  # |last - reference| / |reference| (NaN when not enough evals)
    reference_step: int | None = None
    last_step: int | None = None
    total_steps: int | None = None

    @property
    def flagged(self) -> bool:
        """Whether the board flags the run (not converged, or not enough evals to tell)."""
        return self.state != CONVERGED

    def describe(self, metric: str) -> str:
        """One sentence for a tooltip: the change and the steps it was measured between."""
        if self.state == FEW_EVALS:
            if self.last_step is None:
                return f"not enough evals: no eval value of {metric}"
            return (f"not enough evals: {metric} was evaluated only at step {self.last_step} in the last "
                    f"{1 - REFERENCE_FRACTION:.0%} of {self.total_steps} steps")
        return (f"{self.state}: {metric} changed {change_text(self.change)} between step {self.reference_step} "
                f"and step {self.last_step} (of {self.total_steps}; converged below {TOLERANCE:.0%})")


def change_text(change: float) -> str:
    """A relative change as a percentage (``0.42%``, ``1.02%``, ``12%``; unbounded from a zero reference): three
    significant digits below 10%, so a change just above the 1% tolerance never reads as 1%."""
    if not math.isfinite(change):
        return "an unbounded amount (from 0)"
    percent = 100 * change
    return f"{percent:.3g}%" if percent < 10 else f"{percent:.0f}%"


def relative_change(reference: float, last: float) -> float:
    """``|last - reference| / |reference|``; 0 when both are equal, infinite from a zero reference."""
    if last == reference:
        return 0.0
    return abs(last - reference) / abs(reference) if reference != 0 else math.inf


def run_convergence(steps: Any, values: Any, total_steps: int | None = None) -> Convergence:
    """The convergence of one run from its eval main-metric curve (``steps``, ``values``; NaNs ignored).

    ``total_steps``: the run's steps (default, or when not positive: its last eval step).
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(steps) & np.isfinite(values)
    steps, values = steps[keep], values[keep]
    if steps.size == 0:
        return Convergence(FEW_EVALS)
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    last = int(steps[-1])
    total = int(total_steps) if total_steps is not None and total_steps > 0 else last
    target = REFERENCE_FRACTION * total
    reference = int(np.argmin(np.abs(steps - target)))  # first of equals: ties go to the earlier step
    if reference == steps.size - 1 or steps[reference] == steps[-1]:
        return Convergence(FEW_EVALS, last_step=last, total_steps=total)
    change = relative_change(float(values[reference]), float(values[-1]))
    return Convergence(CONVERGED if change < TOLERANCE else NOT_CONVERGED, change, int(steps[reference]), last,
                       total)


def convergence_table(runs: pd.DataFrame, metrics: pd.DataFrame, main_metric: dict[str, str]) -> pd.DataFrame:
    """One row per run of ``runs`` (index ``run_id``): ``state``, ``change``, ``reference_step``, ``last_step``,
    ``total_steps`` of its eval ``main_metric[task]`` curve in the long ``metrics`` rows."""
    run_main = dict(zip(runs["run_id"], [main_metric.get(t, "") for t in runs["task"]]))
    done = runs["steps_done"] if "steps_done" in runs else pd.Series(np.nan, index=runs.index)
    totals = dict(zip(runs["run_id"], pd.to_numeric(done, errors="coerce").to_numpy(dtype=float)))
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if len(metrics):
        rows = metrics[metrics["split"] == "eval"]
        rows = rows[rows["metric"].to_numpy() == rows["run_id"].map(run_main).to_numpy()]
        rows = rows.sort_values(["run_id", "step"], kind="stable")
        run_ids = rows["run_id"].to_numpy()
        if len(run_ids):
            unique, starts = np.unique(run_ids, return_index=True)
            ends = np.append(starts[1:], len(run_ids))
            steps, values = rows["step"].to_numpy(dtype=float), rows["value"].to_numpy(dtype=float)
            curves = {rid: (steps[a:b], values[a:b]) for rid, a, b in zip(unique, starts, ends)}
    records = []
    for run_id in runs["run_id"]:
        total = totals.get(run_id, math.nan)
        steps, values = curves.get(run_id, (np.empty(0), np.empty(0)))
        result = run_convergence(steps, values, int(total) if math.isfinite(total) else None)
        records.append({"run_id": run_id, "state": result.state, "change": result.change,
                        "reference_step": result.reference_step, "last_step": result.last_step,
                        "total_steps": result.total_steps})
    frame = pd.DataFrame.from_records(records, columns=["run_id", "state", "change", "reference_step", "last_step",
                                                        "total_steps"])
    for column in ("change", "reference_step", "last_step", "total_steps"):  # steps: floats, NaN when unknown
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame.set_index("run_id")


def from_row(row: dict[str, Any]) -> Convergence:
    """The :class:`Convergence` stored in a runs-table record (its ``convergence*`` columns)."""

    def step(value: Any) -> int | None:
        return int(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else None

    change = row.get("convergence_change")
    return Convergence(str(row.get("convergence") or FEW_EVALS), math.nan if change is None else float(change),
                       step(row.get("convergence_reference_step")), step(row.get("convergence_last_step")),
                       step(row.get("convergence_total_steps")))


def flag_label(flagged: list[Convergence]) -> str:
    """``not converged`` when any flagged run moved too much, else ``few evals``."""
    return "not converged" if any(c.state == NOT_CONVERGED for c in flagged) else "few evals"


def seeds_badge(seeds: list[tuple[int, Convergence]], metric: str) -> str:
    """The badge of a configuration's ok seeds (those in its mean): nothing when every seed converged,
    ``2/3 not converged`` when some did not, ``all 3 seeds not converged`` (``not converged`` for a single
    seed) when none did; the tooltip gives each flagged seed's change."""
    flagged = [(seed, c) for seed, c in seeds if c.flagged]
    if not flagged:
        return ""
    label = flag_label([c for _, c in flagged])
    n = len(seeds)
    if len(flagged) < n:
        text, css = f"{len(flagged)}/{n} {label}", "badge conv"
    else:
        text, css = (f"all {n} seeds {label}" if n > 1 else label), "badge conv all"
    tip = "; ".join(f"seed {seed}: {c.describe(metric)}" for seed, c in flagged)
    return f'<span class="{css}" title="{escape(tip)}">{escape(text)}</span>'


def run_badge(convergence: Convergence, metric: str) -> str:
    """The badge of one run (nothing when it converged, or when its main metric was never evaluated)."""
    if not convergence.flagged or convergence.last_step is None:
        return ""
    return (f'<span class="badge conv" title="{escape(convergence.describe(metric))}">'
            f'{escape(flag_label([convergence]))}</span>')

