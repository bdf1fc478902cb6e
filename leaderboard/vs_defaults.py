"""Tuned against defaults: what tuning changed, per cell of a suite's tuned table.

A tuned cell (method and version, task variant without the lr) is compared with the defaults track's cell of the
same method and version at its **registered defaults** (method params equal to the method's defaults; any lr) on
the same task variant: ``change = tuned mean - defaults mean`` over each cell's ok seeds. Its verdict:

* **better** / **worse**: the two 95% intervals (Student t, :func:`vqbench.leaderboard.stats.ci_halfwidth`) do not
  overlap, ``|change| > ci_tuned + ci_defaults``, both cells with at least 2 seeds; better or worse by the task's
  direction;
* **within**: the intervals overlap (or a cell has one seed): the data cannot tell the two apart.

The tuning selects on one seed's validation metric and reports fresh seeds on the eval split, so a cell can end
worse than the defaults: this is shown, not hidden. Pure pandas (no torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from vqbench.leaderboard.data import params_diff, parse_json
from vqbench.leaderboard.html import escape, format_ci, format_number, is_finite
from vqbench.leaderboard.tracks import without_lr

BETTER, WORSE, WITHIN = "better", "worse", "within"


@dataclass(frozen=True)
class CellStat:
    """A cell's mean over its ok seeds, the 95% CI half-width (NaN for one seed) and the seed count."""

    mean: float
    ci: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """One tuned cell against its defaults cell."""

    tuned: CellStat
    defaults: CellStat
    higher_is_better: bool

    @property
    def change(self) -> float:
        return self.tuned.mean - self.defaults.mean

    @property
    def verdict(self) -> str:
        if not (self.tuned.n >= 2 and self.defaults.n >= 2 and is_finite(self.tuned.ci)
                and is_finite(self.defaults.ci)):
            return WITHIN
        if abs(self.change) <= self.tuned.ci + self.defaults.ci:
            return WITHIN
        return BETTER if (self.change > 0) == self.higher_is_better else WORSE

    def html(self) -> str:
        """The line under a tuned cell's mean: the change, with the defaults cell in its tooltip."""
        d = self.defaults
        ci = f" \u00b1 {format_ci(d.ci)}" if is_finite(d.ci) else ""
        title = (f"tuned mean \u2212 defaults mean; defaults (registered parameters): {format_number(d.mean)}{ci}, "
                 f"{d.n} seed(s). {self.verdict_text()}")
        sign = "+" if self.change > 0 else ("\u2212" if self.change < 0 else "\u00b1")
        return (f'<small class="vsdef {self.verdict}" title="{escape(title)}">vs defaults {sign}'
                f'{format_number(abs(self.change))}</small>')

    def verdict_text(self) -> str:
        if self.verdict == WITHIN:
            return "Within the two 95% intervals: not separated from the defaults."
        return f"{self.verdict.capitalize()} than the defaults beyond both 95% intervals."


def registered_defaults(runs: pd.DataFrame, defaults_of: dict[str, dict]) -> pd.DataFrame:
    """The runs of ``runs`` whose method params are the method's registered defaults."""
    keep = [not params_diff(parse_json(p) or {}, defaults_of.get(m, {}))
            for m, p in zip(runs["method"], runs["method_params"])]
    return runs[keep]


def defaults_cells(defaults: pd.DataFrame, defaults_of: dict[str, dict],
                   stat: Callable[[str], CellStat]) -> dict[tuple[str, int, str], CellStat]:
    """(method, method version, task variant without lr) -> the defaults track's cell at the registered parameters,
    ``stat(config_key)`` (the site's per-configuration mean, interval and seeds). A key whose runs form several
    configurations (the defaults track ran the method at several learning rates) has no one cell to compare with
    and is left out."""
    if defaults.empty:
        return {}
    runs = registered_defaults(defaults, defaults_of)
    configs: dict[tuple[str, int, str], set[str]] = {}
    for method, version, variant, config in zip(runs["method"], runs["method_version"], runs["variant_key"],
                                                runs["config_key"]):
        configs.setdefault((method, int(version), without_lr(variant)), set()).add(config)
    return {key: stat(next(iter(keys))) for key, keys in configs.items() if len(keys) == 1}


def summary_sentence(comparisons: list[Comparison]) -> str:
    """One sentence over a tuned table's cells: how many tuning moved beyond both intervals, each way."""
    if not comparisons:
        return ""
    verdicts = [c.verdict for c in comparisons]
    return (f'Against the defaults track (each method at its registered parameters, same task): of '
            f'{len(verdicts)} cells, tuning made {verdicts.count(BETTER)} better and {verdicts.count(WORSE)} worse '
            f'beyond both 95% intervals; {verdicts.count(WITHIN)} stay within them (<b>vs defaults</b> under each '
            'mean; the selection reads one seed\'s validation metric, the cell reports fresh seeds on eval).')
