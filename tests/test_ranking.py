"""Rank uncertainty (leaderboard/ranking.py) against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vqbench.leaderboard.ranking import (
    average_ranks,
    neighbour_tests,
    paired_differences,
    rank_intervals,
    wilcoxon_signed_rank,
)


def _table(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = [(c, t, s, v) for (c, t), vs in values.items() for s, v in enumerate(vs)]
    return pd.DataFrame(rows, columns=["config", "task", "seed", "value"])


def test_average_ranks_give_ties_their_mean_rank():
    ranks = average_ranks(np.array([[3.0], [1.0], [3.0], [2.0]]))
    assert ranks.ravel().tolist() == [1.5, 4.0, 1.5, 3.0]


def test_wilcoxon_exact_by_hand():
    # |d| ranks 1..5, W+ = 1 + 3 + 4 + 5 = 13; P(W+ <= 2) = 3/32 ({}, {1}, {2}); two-sided: 6/32
    w_plus, p = wilcoxon_signed_rank(np.array([1.0, -2.0, 3.0, 4.0, 5.0]))
    assert w_plus == 13.0 and p == pytest.approx(6 / 32)
    # all positive, n = 4: only the full set reaches W+ = 10, two-sided p = 2/16
    assert wilcoxon_signed_rank(np.array([0.1, 0.2, 0.3, 0.4]))[1] == pytest.approx(2 / 16)
    assert wilcoxon_signed_rank(np.array([0.0, 0.0]))[1] == 1.0


def test_wilcoxon_matches_scipy_without_ties():
    stats = pytest.importorskip("scipy.stats")
    d = np.random.default_rng(0).normal(0.3, 1.0, 30)
    assert wilcoxon_signed_rank(d)[1] == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-9)


def test_paired_differences_are_scaled_per_task_and_paired_by_seed():
    table = _table({("a", "t1"): [1.0, 3.0], ("b", "t1"): [0.0, 1.0], ("a", "t2"): [10.0], ("b", "t2"): [30.0]})
    d = paired_differences(table, "a", "b")
    scale1, scale2 = np.std([1, 3, 0, 1]), np.std([10, 30])
    assert sorted(d.tolist()) == pytest.approx(sorted([1 / scale1, 2 / scale1, -20 / scale2]))


def test_a_config_best_on_every_task_and_seed_has_rank_one_for_sure():
    values = {("best", t): [5.0, 5.1, 5.2] for t in ("t1", "t2", "t3")}
    values |= {("mid", t): [3.0, 3.1, 2.9] for t in ("t1", "t2", "t3")}
    values |= {("low", t): [1.0, 1.1, 0.9] for t in ("t1", "t2", "t3")}
    values[("partial", "t1")] = [9.0]  # incomplete: not ranked
    summary = rank_intervals(_table(values), samples=200)
    assert [r.config for r in summary] == ["best", "mid", "low"]
    assert (summary[0].mean_rank, summary[0].low, summary[0].high) == (1.0, 1.0, 1.0)
    assert (summary[2].low, summary[2].high) == (3.0, 3.0)


def test_overlapping_configs_get_a_wide_interval_and_an_unseparated_pair():
    rng = np.random.default_rng(1)
    values = {(c, t): list(rng.normal(0.0, 1.0, 3)) for c in ("x", "y") for t in ("t1", "t2", "t3", "t4")}
    table = _table(values)
    summary = rank_intervals(table, samples=300)
    assert summary[0].high > summary[1].low and all(r.high - r.low >= 0.5 for r in summary)  # overlapping
    (test,) = neighbour_tests(table, [r.config for r in summary])
    assert test.pairs == 12 and not test.separated


def test_a_consistent_small_advantage_is_separated():
    values = {("x", f"t{i}"): [1.0 + 0.1 * s + 0.01 for s in range(3)] for i in range(4)}
    values |= {("y", f"t{i}"): [1.0 + 0.1 * s for s in range(3)] for i in range(4)}
    (test,) = neighbour_tests(_table(values), ["x", "y"])
    assert test.separated and test.p_value == pytest.approx(2 / 2**12)


def test_average_ranks_pairwise_and_sorted_paths_agree():
    from vqbench.leaderboard import ranking

    scores = np.random.default_rng(2).integers(0, 4, size=(9, 300)).astype(float)  # many ties
    pairwise = average_ranks(scores)
    threshold = ranking.PAIRWISE_MAX_ROWS
    try:
        ranking.PAIRWISE_MAX_ROWS = 0  # every call sorts
        assert np.array_equal(average_ranks(scores), pairwise)
    finally:
        ranking.PAIRWISE_MAX_ROWS = threshold
    assert np.allclose(pairwise.sum(axis=0), 9 * 10 / 2)  # ranks 1..9 sum to 45 in every column


def _reference_intervals(table: pd.DataFrame, samples: int, seed: int) -> dict[str, tuple[float, float]]:
    """The two-level bootstrap written out one resample at a time (the definition in the module docstring)."""
    tasks = sorted(table["task"].unique())
    configs = sorted(table["config"].unique())
    cells = {(c, t): g["value"].to_numpy() for (c, t), g in table.groupby(["config", "task"])}
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(samples):
        picked = rng.integers(0, len(tasks), size=len(tasks))
        means = np.array([[rng.choice(cells[(c, tasks[t])], size=len(cells[(c, tasks[t])])).mean() for t in picked]
                          for c in configs])
        boot.append(average_ranks(means).mean(axis=1))
    low, high = np.percentile(np.array(boot), [2.5, 97.5], axis=0)
    return {c: (lo, hi) for c, lo, hi in zip(configs, low, high)}


def test_vectorised_bootstrap_matches_the_one_at_a_time_definition():
    rng = np.random.default_rng(5)
    values = {(c, t): list(rng.normal(mu + 0.3 * i, 0.5, 3)) for c, mu in (("x", 0.0), ("y", 0.4), ("z", 0.8))
              for i, t in enumerate(("t1", "t2", "t3", "t4", "t5"))}
    table = _table(values)
    fast = {r.config: (r.low, r.high) for r in rank_intervals(table, samples=4000, seed=1)}
    slow = _reference_intervals(table, samples=4000, seed=2)
    for config, (low, high) in slow.items():
        assert fast[config][0] == pytest.approx(low, abs=0.21) and fast[config][1] == pytest.approx(high, abs=0.21)
