"""Rank uncertainty in a suite table: the mean rank's 95% bootstrap interval and "≈" between neighbours.

The numbers come from :mod:`vqbench.leaderboard.ranking` (the lead's statistics): per complete row, the
two-level bootstrap interval of its mean rank over the table's task columns and seeds; between each row
and the one above it (in the table's order), Wilcoxon's signed-rank test over their paired (task, seed)
values. A pair the test cannot separate (p > 0.05) is marked "≈" on the lower row, with p and the
number of pairs in its tooltip; the note under the table says how to read the marks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from vqbench.leaderboard.html import escape, format_number
from vqbench.leaderboard.ranking import ALPHA, NeighbourTest, RankSummary, neighbour_tests, rank_intervals

TIE = "\u2248"
RANK_NOTE = (
    '<p class="note rank-note"><b>Rank 95% CI</b>: the 2.5\u201397.5% percentiles of the mean rank over 1,000 '
    'bootstrap resamples of the task columns and, within each, of the seeds (complete rows only). '
    f'<span class="tie">{TIE}</span> marks a row that the paired Wilcoxon signed-rank test over the '
    '(task column, seed) values of the two rows (differences scaled per column) cannot separate from the row '
    f'above it (p &gt; {ALPHA:g}): the data do not support their order, read them as tied. Hover a mark for p '
    'and the number of pairs; the marks follow the default order (best mean rank first).</p>')


@dataclass(frozen=True)
class RankMarks:
    """Per row key of a table: its rank interval, and its test against the row above (in ``order``)."""

    intervals: dict[str, RankSummary] = field(default_factory=dict)
    above: dict[str, NeighbourTest] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.intervals)


def rank_marks(values: pd.DataFrame, order: list[str]) -> RankMarks:
    """``values``: one row per (config, task, seed) with ``value`` oriented (higher is better), complete
    configs only; ``order``: those configs in the table's order (best first)."""
    if values.empty:
        return RankMarks()
    intervals = {r.config: r for r in rank_intervals(values)}
    ranked = [key for key in order if key in intervals]
    return RankMarks(intervals, {test.worse: test for test in neighbour_tests(values, ranked)})


def rank_interval_cell(marks: RankMarks, key: str, above_label: str) -> str:
    """The ``<td>`` of a row's rank interval, with the "≈" mark when it is not separated from the row above."""
    summary = marks.intervals.get(key)
    if summary is None:
        return '<td class="num missing" data-v="" title="not ranked (incomplete row)">\u2014</td>'
    text = f"{format_number(summary.low, 3)}\u2013{format_number(summary.high, 3)}"
    tip = "95% bootstrap interval of the mean rank"
    mark = ""
    test = marks.above.get(key)
    if test is not None:
        detail = (f"Wilcoxon signed-rank p = {format_number(test.p_value, 2)} over {test.pairs} paired "
                  f"(task, seed) values")
        if test.separated:
            tip += f"; separated from the row above ({above_label}): {detail}"
        else:
            mark = (f'<span class="tie" title="{escape(f"not separated from the row above ({above_label}): {detail}")}"'
                    f'>{TIE}</span> ')
            tip += f"; not separated from the row above: {detail}"
    return f'<td class="num" data-v="{summary.low!r}" title="{escape(tip)}">{mark}{text}</td>'
