"""Leaderboard v1 before the published numbers: convergence flags, collapse (utilization) next to quality on
the index, and the Protocol page.

The expected states and ranks are recomputed here from the store with pandas (not through
``vqbench.leaderboard``), so a wrong rule on the site cannot agree with them by construction.
"""

from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from test_leaderboard_helpers import (
    crawl,
    expected_configs,
    parse_page,
    read_tables,
    store_table,
    suites,
    synthetic_site,
)

from vqbench.leaderboard.build import build_site
from vqbench.leaderboard.convergence import (
    CONVERGED,
    FEW_EVALS,
    NOT_CONVERGED,
    convergence_table,
    relative_change,
    run_convergence,
)
from vqbench.leaderboard.data import slug
from vqbench.leaderboard.page_task import budget_notes
from vqbench.spec import canonical_json
from vqbench.store import ResultStore


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_site(tmp_path_factory)


# -- the rule, by hand ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("steps", "values", "total", "state", "reference"), [
    ([0, 250, 500, 750, 1000], [9, 5, 2, 1.000, 1.005], 1000, CONVERGED, 750),  # 0.5% over the last quarter
    ([0, 250, 500, 750, 1000], [9, 5, 2, 1.000, 1.020], 1000, NOT_CONVERGED, 750),  # 2%
    ([0, 250, 500, 750, 1000], [9, 5, 2, 1.000, 0.980], 1000, NOT_CONVERGED, 750),  # either direction
    ([0, 200, 400, 600], [3, 2, 1.0, 1.001], 600, CONVERGED, 400),  # 450 is nearest to 400
    ([0, 200, 400], [3, 1.0, 1.5], 400, NOT_CONVERGED, 200),  # 300: a tie between 200 and 400 goes to 200
    ([0, 600], [3, 1.0], 600, FEW_EVALS, None),  # nearest to 450 is the last eval step itself
    ([0, 400, 1000], [3, 1.0, 1.0], 1000, FEW_EVALS, None),  # 750 is nearer 1000 than 400
    ([1000], [1.0], 1000, FEW_EVALS, None),
    ([], [], 1000, FEW_EVALS, None),
    ([0, 250, 500, 750, 1000], [9, 5, 2, float("nan"), 1.0], 1000, NOT_CONVERGED, 500),  # a NaN is no eval
    ([0, 5, 10, 15, 20], [4, 3, 2, 1.0, 1.0], None, CONVERGED, 15),  # no step count: the last eval step
    ([0, 5, 10, 15, 20], [4, 3, 2, 1.0, 1.0], 0, CONVERGED, 15),
])
def test_convergence_rule_by_hand(steps, values, total, state, reference):
    result = run_convergence(steps, values, total)
    assert result.state == state and result.reference_step == reference
    assert result.flagged == (state != CONVERGED)


def test_relative_change():
    assert relative_change(2.0, 2.02) == pytest.approx(0.01)
    assert relative_change(-4.0, -3.0) == pytest.approx(0.25)
    assert relative_change(0.0, 0.0) == 0.0 and relative_change(0.0, 1e-9) == math.inf
    unbounded = run_convergence([0, 75, 100], [1.0, 0.0, 0.5], 100)
    assert unbounded.state == NOT_CONVERGED and "unbounded" in unbounded.describe("mse")


def test_convergence_table_reads_the_main_metric_of_each_task():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "task": ["t", "u", "t"], "steps_done": [100, 100, None]})
    rows = [("a", "eval", s, "mse", v) for s, v in ((0, 5.0), (50, 1.1), (75, 1.0), (100, 1.0))]
    rows += [("a", "eval", s, "utilization", v) for s, v in ((75, 0.1), (100, 0.9))]  # not a's main metric
    rows += [("a", "validation", 100, "mse", 9.0)]  # the validation split is never read
    rows += [("b", "eval", s, "psnr", v) for s, v in ((0, 5.0), (75, 20.0), (100, 22.0))]
    rows += [("c", "eval", s, "mse", v) for s, v in ((0, 5.0), (10, 1.0), (20, 1.001))]  # no steps_done: 20
    metrics = pd.DataFrame(rows, columns=["run_id", "split", "step", "metric", "value"])
    table = convergence_table(runs, metrics, {"t": "mse", "u": "psnr"})
    assert list(table["state"]) == [CONVERGED, NOT_CONVERGED, CONVERGED]
    assert table.loc["b", "change"] == pytest.approx(0.1) and table.loc["b", "reference_step"] == 75
    assert table.loc["c", "reference_step"] == 10 and table.loc["c", "total_steps"] == 20
    empty = convergence_table(runs, metrics.iloc[:0], {"t": "mse", "u": "psnr"})
    assert set(empty["state"]) == {FEW_EVALS}


# -- the synthetic site ----------------------------------------------------------------------------------
def _expected_states(results) -> pd.DataFrame:
    """The rule, recomputed per run from the store (run_id -> state, change)."""
    store = ResultStore(results)
    runs = store.load_runs()
    metrics = store.load_metrics()
    main = {t: g.sort_values("finished_at")["main_metric"].iloc[-1] for t, g in runs.groupby("task")}
    out = {}
    for run in runs.itertuples():
        rows = metrics[(metrics["run_id"] == run.run_id) & (metrics["split"] == "eval")
                       & (metrics["metric"] == main[run.task])].dropna(subset=["value"]).sort_values("step")
        total = run.steps_done if run.steps_done and run.steps_done > 0 else (rows["step"].max() if len(rows) else 0)
        if len(rows) == 0:
            out[run.run_id] = (FEW_EVALS, math.nan)
            continue
        distance = (rows["step"] - 0.75 * total).abs().to_numpy()
        ref = rows.iloc[int(np.flatnonzero(distance == distance.min())[0])]
        last = rows.iloc[-1]
        if ref["step"] == last["step"]:
            out[run.run_id] = (FEW_EVALS, math.nan)
            continue
        change = abs(last["value"] - ref["value"]) / abs(ref["value"])
        out[run.run_id] = (CONVERGED if change < 0.01 else NOT_CONVERGED, change)
    return pd.DataFrame.from_dict(out, orient="index", columns=["state", "change"])


def test_every_run_gets_the_rule_and_the_store_has_each_case(synthetic):
    results, site, _ = synthetic
    expected = _expected_states(results)
    shown = pd.read_csv(site / "data" / "runs.csv").set_index("run_id")
    assert (shown.loc[expected.index, "convergence"] == expected["state"]).all()
    both = expected["change"].notna()
    assert np.allclose(shown.loc[expected.index[both], "convergence_change"], expected.loc[both, "change"])
    runs = ResultStore(results).load_runs().set_index("run_id")
    ok = expected[runs.loc[expected.index, "status"] == "ok"]
    assert {CONVERGED, NOT_CONVERGED} <= set(ok["state"])  # the fixture has runs still moving


def test_tables_count_the_flagged_seeds(synthetic):
    """Each task-page row's badge counts its ok seeds flagged by the rule; every run page says its state."""
    results, site, _ = synthetic
    expected = _expected_states(results)
    table = store_table(results)
    table = table[table["status"] == "ok"].assign(state=lambda t: expected.loc[t["run_id"], "state"].to_numpy())
    rows_checked = all_flagged = 0
    for task, group in table.groupby("task"):
        shown = sorted(_badge_counts(site / "tasks" / f"{slug(task)}.html"))
        keys = ["task_params", "budget", "method", "method_version", "method_params"]
        want = group.groupby(keys).agg(n=("state", "size"), flagged=("state", lambda s: int((s != CONVERGED).sum())))
        want = want.reindex(pd.MultiIndex.from_frame(
            store_table(results).loc[lambda t: t["task"] == task, keys].drop_duplicates()), fill_value=0)
        assert shown == sorted(zip(want["flagged"], want["n"])), task
        rows_checked += len(shown)
        all_flagged += int(((want["flagged"] == want["n"]) & (want["n"] > 1)).sum())
    assert rows_checked > 50 and all_flagged >= 1  # at least one cell says "all N seeds"
    measured = 0
    for run_id, (state, _) in expected.iterrows():
        text = (site / "runs" / f"{slug(run_id)}.html").read_text()
        if "No eval step was recorded" in text:  # a run that failed before measuring anything: no flag
            assert 'class="badge conv"' not in text
            continue
        measured += 1
        assert f"Convergence (<a href=\"../protocol.html#convergence\">rule</a>): {state}" in text
        assert ('class="badge conv"' in text.split("<h2>")[0]) == (state != CONVERGED)
    assert measured > 0.9 * len(expected)


def _badge_counts(page) -> list[tuple[int, int]]:
    """(flagged, ok seeds) of each row of a task page's table, read from its Seeds cell's HTML."""
    body = page.read_text().split('id="task-table"')[1].split("</tbody>")[0]
    counts = []
    for row in body.split("<tr ")[1:]:
        n_ok = int(re.search(r'title="(\d+) ok of \d+ runs"', row).group(1))
        badge = re.search(r'class="badge conv( all)?" title="[^"]*">([^<]*)</span>', row)
        if badge is None:
            counts.append((0, n_ok))
        elif badge.group(1):  # every seed: "all N seeds ..." (a single seed: the bare label)
            assert re.fullmatch(rf"(all {n_ok} seeds )?(not converged|few evals)", badge.group(2)), badge.group(2)
            counts.append((n_ok, n_ok))
        else:
            flagged, total = re.fullmatch(r"(\d+)/(\d+) (?:not converged|few evals)", badge.group(2)).groups()
            assert int(total) == n_ok
            counts.append((int(flagged), n_ok))
    return counts


def test_index_cells_show_utilization_and_its_mean_rank(synthetic):
    results, site, _ = synthetic
    table = store_table(results)
    table["suites"] = [suites(t) for t in table["tags"]]
    tables = read_tables(site / "index.html")
    for suite in ("quick", "paper-v1", "collapse-v1"):
        runs = table[[suite in s for s in table["suites"]]]
        main, util = expected_configs(runs), expected_configs(runs, "utilization")
        key = ["method", "method_version", "method_params", "task", "task_params", "budget"]
        merged = main.merge(util, on=key, suffixes=("", "_util"))
        shown = tables[f"suite-{slug(suite)}-table"]
        cells = [c for r in shown["rows"] for c in r["cells"][3:shown["head"].index("Mean rank")]]
        lines = sorted(float(m.group(1)) for c in cells for m in [re.search(r"util ([0-9.e-]+)", c["text"])] if m)
        want = sorted(float(f"{v:.3g}") for v, m in zip(merged["mean_util"], merged["mean"]) if v == v and m == m)
        assert lines == pytest.approx(want, rel=1e-12), suite
        # the utilization mean rank: complete rows ranked per column (higher is better), averaged
        merged["row"] = [json.dumps(list(k)) for k in zip(merged["method"], merged["method_version"],
                                                          merged["method_params"])]
        merged["col"] = [json.dumps(list(k)) for k in zip(merged["task"], merged["task_params"], merged["budget"])]
        matrix = merged.pivot(index="row", columns="col", values="mean_util")
        complete = matrix.notna().all(axis=1)
        ranks = matrix.loc[complete].rank(ascending=False).mean(axis=1)
        column = shown["head"].index("Utilization rank")
        got = sorted(float(r["cells"][column]["attrs"]["data-v"]) for r in shown["rows"]
                     if r["cells"][column]["attrs"]["data-v"])
        assert got == pytest.approx(sorted(ranks)), suite
    download = pd.read_csv(site / "data" / "suite-collapse-v1.csv")
    assert "utilization_mean_rank" in download and any(c.endswith(" utilization") for c in download.columns)


# -- hand-made store: each badge ----------------------------------------------------------------------------
def _write(store: ResultStore, method: str, seed: int, curve: list[tuple[int, float]], task: str = "t") -> str:
    rid = f"{method}-{task}-{seed}"
    budget = {"steps": 100, "eval_interval": 25}
    spec = {"task": task, "method": method, "seed": seed, "task_params": {}, "method_params": {},
            "budget": budget, "tags": ["suite:s"], "task_version": 1, "method_version": 1}
    store.write_metrics(task, rid, [("eval", s, "mse", v) for s, v in curve]
                        + [("eval", s, "utilization", 0.5) for s, _ in curve])
    store.write_run({"run_id": rid, "task": task, "task_version": 1, "task_params": "{}", "method": method,
                     "method_version": 1, "method_params": "{}", "method_family": "f", "seed": seed,
                     "budget": canonical_json(budget), "tags": ["suite:s"], "spec": canonical_json(spec),
                     "status": "ok", "main_metric": "mse", "higher_is_better": False, "steps_done": 100,
                     "device": "cpu", "wall_time_s": 30.0})
    return rid


FLAT = [(0, 5.0), (25, 2.0), (50, 1.2), (75, 1.0), (100, 1.001)]
MOVING = [(0, 5.0), (25, 2.0), (50, 1.2), (75, 1.0), (100, 0.9)]
SPARSE = [(0, 5.0), (100, 1.0)]


def test_badges_by_hand(tmp_path):
    store = ResultStore(tmp_path / "results")
    for seed in (0, 1):
        _write(store, "flat", seed, FLAT)
        _write(store, "moving", seed, MOVING)
        _write(store, "sparse", seed, SPARSE)
        _write(store, "mixed", seed, MOVING if seed else FLAT)
    build_site(tmp_path / "results", tmp_path / "site")
    index = read_tables(tmp_path / "site" / "index.html")["suite-s-table"]
    cell = {r["cells"][0]["text"].strip(): r["cells"][3]["text"] for r in index["rows"]}
    assert "converged" not in cell["flat"] and "evals" not in cell["flat"]
    assert "all 2 seeds not converged" in cell["moving"] and "all 2 seeds few evals" in cell["sparse"]
    assert "1/2 not converged" in cell["mixed"]
    text = (tmp_path / "site" / "index.html").read_text()
    tip = html.unescape(re.search(r'<span class="badge conv" title="([^"]*)">1/2 not converged', text).group(1))
    assert tip == ("seed 1: not converged: mse changed 10% between step 75 and step 100 (of 100; converged below "
                   "1%)")
    task = read_tables(tmp_path / "site" / "tasks" / "t.html")["task-table"]
    seeds = {r["cells"][0]["text"].strip(): r["cells"][task["head"].index("Seeds")]["text"] for r in task["rows"]}
    assert seeds["moving"] == "2/2all 2 seeds not converged" and seeds["flat"] == "2/2"
    csv = pd.read_csv(tmp_path / "site" / "data" / "task-t.csv").set_index("method")
    assert csv.loc["mixed", ["n_ok_converged", "n_ok_not_converged", "n_ok_few_evals"]].tolist() == [1, 1, 0]
    run = (tmp_path / "site" / "runs" / "sparse-t-0.html").read_text()
    assert ">few evals</span>" in run and "mse was evaluated only at step 100 in the last 25% of 100 steps" in run
    method = read_tables(tmp_path / "site" / "methods" / "moving.html")["method-table"]
    assert "all 2 seeds not converged" in method["rows"][0]["cells"][4]["text"]
    page = (tmp_path / "site" / "tasks" / "t.html").read_text()
    match = re.search(r'<p class="note" id="convergence">(.*?)</p>', page)
    note = html.unescape(re.sub(r"<[^>]+>", "", match.group(1)))
    assert note.startswith("At 100 steps: 3 of 8 ok runs converged by the rule (mse moved less than 1% over their "
                           "last 25% of steps); 3 still moved (median change 10%, largest 10%); 2 had too few evals")
    assert "Most of these runs had not converged" in note


def test_budget_notes_group_runs_by_length_and_say_when_most_did_not_converge():
    def budget(steps, lr=2e-3):
        return canonical_json({"steps": steps, "batch_size": 32, "lr": lr})

    runs = pd.DataFrame({
        "budget": [budget(2000), budget(2000, lr=1e-3), budget(2000), budget(500), budget(500)],
        "convergence": [CONVERGED, CONVERGED, NOT_CONVERGED, NOT_CONVERGED, NOT_CONVERGED],
        "convergence_change": [0.001, 0.002, 0.0102, 0.05, 0.25]})
    short, long = budget_notes(runs, "psnr")
    assert short.startswith("At 500 steps (batch 32): 0 of 2 ok runs converged") and "Most of these" in short
    assert "median change 15%, largest 25%" in short
    # a tuned learning rate shares its suite's group; 1.02% never reads as the 1% tolerance
    assert long.startswith("At 2,000 steps (batch 32): 2 of 3 ok runs converged") and "Most" not in long
    assert "1 still moved (median change 1.02%, largest 1.02%)" in long


# -- the Protocol page ------------------------------------------------------------------------------------
def test_protocol_page_is_linked_and_derived_from_the_store(synthetic):
    results, site, _ = synthetic
    page = site / "protocol.html"
    text = page.read_text()
    for other in (site / "index.html", site / "tasks" / "gmm.html", next((site / "runs").glob("*.html"))):
        assert any(link.endswith("protocol.html") for _, link in parse_page(other).links), other
    assert not crawl(site, [page])[1]
    ids = parse_page(page).ids
    assert {"budgets", "seeds", "convergence", "tuning", "metrics", "ranks", "cpu-scale"} <= ids
    assert "vqbench sweep run paper" in text and "validation split" in text and "last eval step" in text
    runs = ResultStore(results).load_runs()
    budgets = read_tables(page)["budgets-table"]
    assert len(budgets["rows"]) == len(runs.drop_duplicates(["task", "budget"]))
    steps = budgets["head"].index("steps")
    assert sorted({int(r["cells"][steps]["text"]) for r in budgets["rows"]}) == sorted(
        {json.loads(b)["steps"] for b in runs["budget"]})
    seeds = read_tables(page)["seeds-table"]
    assert {r["cells"][0]["text"] for r in seeds["rows"]} >= {"quick", "paper-v1", "collapse-v1", "adhoc"}
    expected = _expected_states(results)
    ok = expected[runs.set_index("run_id").loc[expected.index, "status"] == "ok"]["state"].value_counts()
    tally = (f"of {int(ok.sum())} ok runs (trials aside): {ok.get(CONVERGED, 0)} converged, "
             f"{ok.get(NOT_CONVERGED, 0)} not converged")
    assert tally in text
    converged = budgets["head"].index("Converged")  # per budget row: its converged ok runs, summing to the tally
    assert sum(int(r["cells"][converged]["text"].split(" of ")[0]) for r in budgets["rows"]) == ok.get(CONVERGED, 0)
    devices = runs["device"].str.split(":").str[0].value_counts()
    assert ", ".join(f"{n} on {kind}" for kind, n in sorted(devices.items())) in text


def test_protocol_page_of_an_empty_store(tmp_path):
    (tmp_path / "results").mkdir()
    build_site(tmp_path / "results", tmp_path / "site")
    text = (tmp_path / "site" / "protocol.html").read_text()
    assert "No runs yet." in text and "No tuning on this board yet" in text
    assert not crawl(tmp_path / "site")[1]


def test_protocol_coverage_counts_planned_runs_per_suite_and_task(synthetic, tmp_path):
    """The Coverage table: a suite's membership file against the store (ok, not ok, missing), per task."""
    results, _, _ = synthetic
    runs = ResultStore(results).load_runs()
    gmm = runs[(runs["task"] == "gmm") & (runs["status"] == "ok")].head(3)
    failed = runs[(runs["task"] == "gmm") & (runs["status"] != "ok")].head(1)
    assert len(gmm) == 3 and len(failed) == 1
    planned = {**dict(zip(gmm["run_id"], gmm["task"])), **dict(zip(failed["run_id"], failed["task"])),
               "0000000000000000": "gmm", "1111111111111111": "patches", "2222222222222222": "patches"}
    (results / "sweeps").mkdir(exist_ok=True)
    membership = results / "sweeps" / "plan.json"
    membership.write_text(json.dumps({"name": "plan", "run_ids": list(planned), "run_tasks": planned}))
    try:
        build_site(results, tmp_path / "site")
    finally:
        membership.unlink()
    table = read_tables(tmp_path / "site" / "protocol.html")["coverage-table"]
    rows = {(r["cells"][0]["text"], r["cells"][1]["text"]): [c["text"] for c in r["cells"][2:]] for r in table["rows"]}
    assert rows[("plan", "gmm")] == ["5", "3", "1", "1", "partial"]
    assert rows[("plan", "patches")] == ["2", "0", "0", "2", "not run here"]
