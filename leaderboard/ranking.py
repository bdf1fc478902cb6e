"""Rank uncertainty: how sure the board is of its order.

Input: one row per (config, task, seed) with the task's main metric, oriented so that higher is better
(:func:`oriented`). Three things are derived, all with numpy alone (the Pages build has no SciPy):

* **Mean rank** of each config over the tasks: per task, configs are ranked by their mean over seeds
  (1 = best, ties get the average rank); the mean rank averages those ranks over the tasks. Only configs
  with a value on every task are ranked.
* **A 95% interval on the mean rank**, by a two-level bootstrap: ``B`` times, draw the tasks with
  replacement and, inside each (config, task), the seeds with replacement; recompute the mean rank. The
  interval is the 2.5% and 97.5% percentiles of the ``B`` mean ranks (seeded, so the site is reproducible).
* **A paired test between neighbours** in the order: Wilcoxon's signed-rank test on the differences
  ``d = (a - b) / scale_task`` paired over (task, seed), where ``scale_task`` is the standard deviation of the
  task's values over all configs and seeds (so tasks of different units weigh alike). The p-value is exact
  (the full null distribution of the signed-rank statistic, ties averaged) for up to
  :data:`EXACT_MAX_PAIRS` non-zero pairs, and from the normal approximation with tie correction above.
  Pairs with ``p > 0.05`` are ones the data cannot separate: the index marks them instead of implying an order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

EXACT_MAX_PAIRS = 200
BOOTSTRAP_SAMPLES = 1000
ALPHA = 0.05


def oriented(values: pd.Series, higher_is_better: bool) -> pd.Series:
    """Values turned so that higher is better (the metric negated when lower is better)."""
    return values if higher_is_better else -values


#: up to this many rows, ranks are computed by comparing every pair of rows, all columns at once
PAIRWISE_MAX_ROWS = 64


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks of ``scores`` along axis 0 (1 = highest score), ties get their average rank; shape kept.

    A value's average rank is ``1 + (number of greater values) + (number of other equal values) / 2``.
    Few rows (a table's configs, ranked in thousands of bootstrap columns): by comparing every pair of
    rows, vectorised over the columns; many rows (the pairs of a signed-rank test): by sorting each column.
    """
    scores = np.asarray(scores, dtype=float)
    ranks = np.empty_like(scores, dtype=float)
    rows = scores.shape[0]
    if rows <= PAIRWISE_MAX_ROWS:
        step = max(1, 4_000_000 // max(rows * rows, 1))
        for start in range(0, scores.shape[1], step):
            block = scores[:, start:start + step]
            greater = (block[None, :, :] > block[:, None, :]).sum(axis=1)  # [i, m]: rows j above row i
            equal = (block[None, :, :] == block[:, None, :]).sum(axis=1)  # includes row i itself
            ranks[:, start:start + step] = greater + (equal + 1) / 2
        return ranks
    order = np.argsort(-scores, axis=0, kind="stable")
    for column in range(scores.shape[1]):
        col = scores[order[:, column], column]
        position = np.arange(1, len(col) + 1, dtype=float)
        # average the positions of equal values
        _, first, counts = np.unique(-col, return_index=True, return_counts=True)
        for start, count in zip(first, counts):
            position[start:start + count] = position[start:start + count].mean()
        ranks[order[:, column], column] = position
    return ranks


@dataclass(frozen=True)
class RankSummary:
    config: str
    mean_rank: float
    low: float  # 2.5% bootstrap percentile
    high: float  # 97.5% bootstrap percentile


def _complete_cube(table: pd.DataFrame) -> tuple[list[str], list[str], list[list[np.ndarray]]]:
    """configs, tasks and per (config, task) the seed values, for configs with a value on every task."""
    tasks = sorted(table["task"].unique())
    cells = table.groupby(["config", "task"])["value"].apply(lambda s: s.to_numpy(dtype=float))
    configs = sorted(c for c in table["config"].unique() if all((c, t) in cells.index for t in tasks))
    return configs, tasks, [[cells[(c, t)] for t in tasks] for c in configs]


def rank_intervals(table: pd.DataFrame, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> list[RankSummary]:
    """Mean rank and its 95% bootstrap interval per complete config, best first.

    ``table`` has columns ``config``, ``task``, ``value`` (oriented: higher is better), one row per seed.
    """
    configs, tasks, cube = _complete_cube(table)
    if not configs:
        return []
    means = np.array([[values.mean() for values in row] for row in cube])  # configs x tasks
    observed = average_ranks(means).mean(axis=1)
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(tasks), size=(samples, len(tasks)))  # the tasks of each resample
    resampled = np.empty((len(configs), samples, len(tasks)))  # config x resample x drawn task: a seed mean
    for t in range(len(tasks)):
        where = picked == t  # every position that drew task t gets its own resample of each config's seeds
        for c, row in enumerate(cube):
            values = row[t]
            draws = rng.integers(0, len(values), size=(int(where.sum()), len(values)))
            resampled[c][where] = values[draws].mean(axis=1)
    boot = average_ranks(resampled.reshape(len(configs), -1)).reshape(resampled.shape).mean(axis=2).T
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    out = [RankSummary(c, float(m), float(lo), float(hi)) for c, m, lo, hi in zip(configs, observed, low, high)]
    return sorted(out, key=lambda r: (r.mean_rank, r.config))


def paired_differences(table: pd.DataFrame, a: str, b: str) -> np.ndarray:
    """(a - b) / scale_task over the (task, seed) pairs both configs have; see the module docstring."""
    scale = table.groupby("task")["value"].std(ddof=0)
    left = table[table["config"] == a].set_index(["task", "seed"])["value"]
    right = table[table["config"] == b].set_index(["task", "seed"])["value"]
    joined = pd.concat([left.rename("a"), right.rename("b")], axis=1, join="inner").dropna()
    task_scale = scale.reindex(joined.index.get_level_values("task")).to_numpy()
    task_scale = np.where(task_scale > 0, task_scale, 1.0)
    return (joined["a"].to_numpy() - joined["b"].to_numpy()) / task_scale


def wilcoxon_signed_rank(differences: np.ndarray) -> tuple[float, float]:
    """(W+, two-sided p) of Wilcoxon's signed-rank test; zero differences are dropped (Wilcoxon's rule).

    W+ is the sum of the ranks of ``|d|`` over the positive ``d`` (ties get average ranks). Exact p for up
    to :data:`EXACT_MAX_PAIRS` pairs (the null distribution enumerated over the actual, possibly tied, ranks
    by dynamic programming on doubled ranks), normal approximation with tie correction above. p = 1 when
    no pair differs.
    """
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d) & (d != 0)]
    n = d.size
    if n == 0:
        return 0.0, 1.0
    ranks = average_ranks(-np.abs(d).reshape(-1, 1)).ravel()  # rank 1 = the smallest |d|
    w_plus = float(ranks[d > 0].sum())
    total = float(ranks.sum())
    if n <= EXACT_MAX_PAIRS:
        doubled = np.rint(2 * ranks).astype(int)
        counts = np.zeros(int(doubled.sum()) + 1)
        counts[0] = 1.0
        for r in doubled:  # each rank is in W+ or not, with probability 1/2 (r >= 2: ranks are >= 1)
            counts[r:] = counts[r:] + counts[:-r]
        probabilities = counts / counts.sum()
        observed = int(round(2 * w_plus))
        mirrored = int(round(2 * (total - w_plus)))
        lower, upper = min(observed, mirrored), max(observed, mirrored)
        p = probabilities[:lower + 1].sum() + probabilities[upper:].sum()
        return w_plus, float(min(1.0, p)) if lower != upper else 1.0
    mean = n * (n + 1) / 4
    _, tie_counts = np.unique(ranks, return_counts=True)
    variance = n * (n + 1) * (2 * n + 1) / 24 - float(((tie_counts**3 - tie_counts) / 48).sum())
    if variance <= 0:
        return w_plus, 1.0
    z = (abs(w_plus - mean) - 0.5) / math.sqrt(variance)  # continuity correction
    return w_plus, float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2))))


@dataclass(frozen=True)
class NeighbourTest:
    better: str
    worse: str
    pairs: int
    p_value: float

    @property
    def separated(self) -> bool:
        return self.p_value <= ALPHA


def neighbour_tests(table: pd.DataFrame, order: list[str]) -> list[NeighbourTest]:
    """The paired test between each config and the next one in ``order`` (best first)."""
    tests = []
    for better, worse in zip(order, order[1:]):
        d = paired_differences(table, better, worse)
        tests.append(NeighbourTest(better, worse, int(np.count_nonzero(d)), wilcoxon_signed_rank(d)[1]))
    return tests
