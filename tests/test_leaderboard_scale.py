"""The leaderboard at scale: a realistic 10,000-run synthetic store builds in under a minute (slow)."""

from __future__ import annotations

import resource
import time

import pytest
from fixtures.synthetic_store import generate
from test_leaderboard_helpers import crawl, read_tables

from vqbench.leaderboard.build import build_site, timings
from vqbench.store import ResultStore

N_RUNS = 10_000
LIMIT_S = 60.0


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.mark.slow
def test_build_10k_runs_under_a_minute(tmp_path):
    results, site = tmp_path / "results", tmp_path / "site"
    assert generate(results, N_RUNS, seed=0, workers=2) == N_RUNS
    cpu0, t0 = _cpu_s(), time.perf_counter()
    index = build_site(results, site)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    print(f"built {N_RUNS} runs in {wall:.1f}s wall, {cpu:.1f}s CPU (all processes): {phases}")
    assert wall < LIMIT_S, f"{N_RUNS} runs took {wall:.1f}s (CPU {cpu:.1f}s): {phases}"
    assert len(list((site / "runs").glob("*.html"))) == N_RUNS
    runs = ResultStore(results).load_runs()
    tables = read_tables(index)
    assert {f"suite-{s}-table" for s in ("quick", "paper-v1", "collapse-v1", "adhoc")} <= set(tables)
    for name in runs["task"].unique():
        rows = read_tables(site / "tasks" / f"{name}.html")["task-table"]["rows"]
        assert len(rows) == len(runs[runs["task"] == name].drop_duplicates(
            ["task_params", "budget", "method", "method_params"]))
    # every link of the pages a reader starts from (every page's links are crawled at 200 runs in test_leaderboard.py)
    front = [index, site / "findings.html", site / "downloads.html", *site.glob("tasks/*.html"),
             *site.glob("methods/*.html")]
    checked, problems = crawl(site, front)
    assert not problems, problems[:10]
    assert checked > N_RUNS
