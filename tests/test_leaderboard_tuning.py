"""Equal tuning budgets on the leaderboard: the defaults and tuned tracks of a suite, the robustness plots and
trial listings of the task pages, and the rank uncertainty (bootstrap interval, "≈" marks) of every suite table.

The expected numbers (selected trial, IQR over trials, validation values) are recomputed with pandas straight
from the store, not through ``vqbench.leaderboard`` or ``vqbench.tuning``.
"""

from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from fixtures.synthetic_store import (
    HOSTILE,
    HOSTILE_SUITE,
    HOSTILE_TASK,
    TUNING,
    TUNING_METHODS,
    TUNING_SEEDS,
    TUNING_TASKS,
    TUNING_TWINS,
)
from test_leaderboard_helpers import N_TUNING_TRIALS, crawl, parse_page, read_tables, tuned_site

from vqbench.leaderboard.build import build_site
from vqbench.leaderboard.data import slug
from vqbench.leaderboard.rank_marks import TIE
from vqbench.leaderboard.tracks import run_roles, trials_anchor, tuning_anchor, without_lr
from vqbench.spec import canonical_json
from vqbench.store import ResultStore


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    return tuned_site(tmp_path_factory)


def _tags(tags) -> list[str]:
    return [str(t) for t in tags] if tags is not None else []


def _store_trials(results) -> pd.DataFrame:
    """Every trial of the store with its final validation main metric, trial index and parameters."""
    store = ResultStore(results)
    runs = store.load_runs()
    runs = runs[[f"tune:{TUNING}" in _tags(t) for t in runs["tags"]]].copy()
    metrics = store.load_metrics()
    validation = metrics[metrics["split"] == "validation"].sort_values("step")
    last = validation.groupby(["run_id", "metric"])["value"].last()
    runs["value"] = [last.get((r, m), math.nan) for r, m in zip(runs["run_id"], runs["main_metric"])]
    runs["trial"] = [next(int(t[6:]) for t in _tags(tags) if t.startswith("trial:")) for tags in runs["tags"]]
    return runs


def _selected(trials: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method): the ok trial with the best validation value, ties to the lower trial index."""
    rows = []
    for (_task, _method), group in trials.groupby(["task", "method"]):
        ok = group[(group["status"] == "ok") & np.isfinite(group["value"])]
        score = ok["value"] if bool(ok["higher_is_better"].iloc[0]) else -ok["value"]
        rows.append(ok.assign(score=score).sort_values(["score", "trial"], ascending=[False, True]).iloc[0])
    return pd.DataFrame(rows)


def _tuned_table(site) -> dict:
    return read_tables(site / "index.html")[f"suite-{slug(TUNING)}-tuned-table"]


def _row_of(table: dict, method: str) -> dict:
    return next(r for r in table["rows"] if r["cells"][0]["text"].replace("incomplete", "").strip() == method)


# -- roles of runs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tags", "members", "defaults", "tuned", "trials"), [
    ([], set(), ["adhoc"], [], []),
    (["suite:s"], set(), ["s"], [], []),
    (["suite:s", "tuned:s", "trials:8"], set(), [], ["s"], []),
    (["suite:s", "tuned:s", "trials:8"], {"s.tuned"}, [], ["s"], []),
    (["tune:s", "trial:3", "trials:8"], {"s.trials"}, [], [], ["s"]),
    ([], {"s.trials"}, [], [], ["s"]),  # a membership alone never makes a suite named s.trials
    (["suite:s.tuned"], set(), [], ["s"], []),
    (["suite:s"], {"s", "s.tuned"}, ["s"], ["s"], []),  # a run both sweeps listed is in both tracks
])
def test_run_roles(tags, members, defaults, tuned, trials):
    roles = run_roles(tags, members)
    assert (roles.default_suites, roles.tuned_suites, roles.trial_of) == (defaults, tuned, trials)
    assert not any(s.endswith((".trials", ".tuned")) for s in roles.suites)


def test_tuned_columns_ignore_the_learning_rate():
    a = json.dumps(["gmm", 1, "{}", canonical_json({"lr": 0.002, "steps": 10})])
    b = json.dumps(["gmm", 1, "{}", canonical_json({"lr": 0.0031, "steps": 10})])
    c = json.dumps(["gmm", 1, "{}", canonical_json({"lr": 0.002, "steps": 20})])
    assert without_lr(a) == without_lr(b) != without_lr(c)


# -- the two tracks ------------------------------------------------------------------------------------------
def test_suite_has_a_defaults_and_a_tuned_table_with_n(tuned):
    results, site = tuned
    text = (site / "index.html").read_text()
    tables = read_tables(site / "index.html")
    assert f"suite-{slug(TUNING)}-table" in tables and f"suite-{slug(TUNING)}-tuned-table" in tables
    assert f'<h3 id="suite-{slug(TUNING)}-tuned">Tuned ({N_TUNING_TRIALS} trials)</h3>' in text
    assert f"vqbench tune {TUNING} --trials {N_TUNING_TRIALS}" in text
    table = _tuned_table(site)
    assert sorted(r["cells"][0]["text"].strip() for r in table["rows"]) == sorted(TUNING_METHODS)
    for task in TUNING_TASKS:
        assert any(h.startswith(task) for h in table["head"])
    assert "Sensitivity (IQR)" in table["head"] and "Rank 95% CI" in table["head"]
    # the tuned cells hold the finals' means over their fresh seeds
    runs = ResultStore(results).load_runs()
    finals = runs[[f"tuned:{TUNING}" in _tags(t) for t in runs["tags"]]]
    assert sorted(set(finals["seed"])) == list(TUNING_SEEDS)
    assert all("n=3" in c["text"] for r in table["rows"] for c in r["cells"][3:3 + len(TUNING_TASKS)])


def test_trials_never_enter_a_suite_table(tuned):
    results, site = tuned
    tables = read_tables(site / "index.html")
    assert not [k for k in tables if ".trials" in k or ".tuned" in k]
    text = (site / "index.html").read_text()
    assert "Suite quick.trials" not in text and "Suite quick.tuned" not in text
    trials = _store_trials(results)
    suite_links = {link for k, t in tables.items() if k.startswith("suite-") for r in t["rows"]
                   for c in r["cells"] for link in c["links"]}
    trial_rows = {f"#{rid}" for rid in trials["run_id"]}
    assert not [link for link in suite_links if any(link.endswith(r) for r in trial_rows)]
    # the defaults table of the tuned suite holds the suite's own runs only (one row per method config)
    runs = ResultStore(results).load_runs()
    own = runs[[f"suite:{TUNING}" in _tags(t) and f"tuned:{TUNING}" not in _tags(t) for t in runs["tags"]]]
    assert len(tables[f"suite-{slug(TUNING)}-table"]["rows"]) == own.drop_duplicates(
        ["method", "method_params"]).shape[0]
    # the task tables list no trial (trials have their own listing below them)
    for task in TUNING_TASKS:
        shown = {r["attrs"]["id"] for r in read_tables(site / "tasks" / f"{slug(task)}.html")["task-table"]["rows"]}
        listing = {r["attrs"]["id"] for r in read_tables(site / "tasks" / f"{slug(task)}.html")[
            f"trials-{slug(TUNING)}"]["rows"] if "id" in r["attrs"]}
        assert len(listing) == (trials["task"] == task).sum() and not shown & listing


def test_tuned_rows_show_the_selected_parameters_and_link_their_trials(tuned):
    results, site = tuned
    selected = _selected(_store_trials(results))
    table = _tuned_table(site)
    head = table["head"]
    for row in selected.itertuples():
        cell = _row_of(table, row.method)["cells"][next(i for i, h in enumerate(head) if h.startswith(row.task))]
        params = json.loads(row.method_params)
        lr = json.loads(row.budget)["lr"]
        assert f"lr={lr!r}" in cell["text"], (row.task, row.method, cell["text"])
        space = TUNING_METHODS[row.method][0]
        for knob in space:
            assert f"{knob}={params[knob]!r}" in cell["text"]
        anchor = trials_anchor(TUNING, row.method)
        assert f"tasks/{slug(row.task)}.html#{anchor}" in cell["links"]
        page = parse_page(site / "tasks" / f"{slug(row.task)}.html")
        assert anchor in page.ids and row.run_id in {a.get("href", "").split("/")[-1][:-5] for t, a in page.tags
                                                     if t == "a"}
    # the lr-only method says so; the others name their knobs
    assert "lr only" in _row_of(table, "bsq")["cells"][2]["text"]
    assert _row_of(table, "vq")["cells"][2]["text"].strip() == "beta and lr"


def test_trial_listing_marks_the_selected_trial(tuned):
    results, site = tuned
    trials = _store_trials(results)
    selected = _selected(trials)
    diverged = 0
    for task in TUNING_TASKS:
        rows = [r for r in read_tables(site / "tasks" / f"{slug(task)}.html")[f"trials-{slug(TUNING)}"]["rows"]
                if "id" in r["attrs"]]
        marked = {r["cells"][-1]["text"].strip() for r in rows if "selected" in r["cells"][4]["text"]}
        assert marked == set(selected[selected["task"] == task]["run_id"])
        shown = sorted(float(r["cells"][3]["attrs"]["data-v"]) for r in rows if r["cells"][3]["attrs"]["data-v"])
        want = trials[trials["task"] == task]["value"]
        assert shown == pytest.approx(sorted(want[np.isfinite(want)]), rel=1e-12)
        diverged += sum("diverged" in r["cells"][2]["text"] for r in rows)
    assert diverged == (trials["status"] == "diverged").sum() > 0  # failed trials are listed, never selected


def test_sensitivity_is_the_iqr_over_the_ok_trials(tuned):
    results, site = tuned
    trials = _store_trials(results)
    table = _tuned_table(site)
    column = table["head"].index("Sensitivity (IQR)")
    for method in TUNING_METHODS:
        text = _row_of(table, method)["cells"][column]["text"]
        for task in TUNING_TASKS:
            mine = trials[(trials["task"] == task) & (trials["method"] == method) & (trials["status"] == "ok")]
            q75, q25 = np.percentile(mine["value"].dropna(), [75, 25])
            shown = float(re.search(rf"{re.escape(task)} ([0-9.e+-]+)", text).group(1))
            assert shown == pytest.approx(q75 - q25, rel=1e-3), (method, task)


def test_robustness_plot_on_every_tuned_task_page(tuned):
    results, site = tuned
    trials = _store_trials(results)
    for task in TUNING_TASKS:
        text = (site / "tasks" / f"{slug(task)}.html").read_text()
        section = text.split(f'<section id="{tuning_anchor(TUNING)}">')[1].split("</section>")[0]
        chart = section.split("<svg")[1].split("</svg>")[0]
        mine = trials[(trials["task"] == task) & (trials["status"] == "ok") & np.isfinite(trials["value"])]
        assert chart.count("<circle") == len(mine)  # one point per ok trial
        assert chart.count('stroke="#000"') == len(TUNING_METHODS)  # the selected trial of each method
        assert chart.count("<rect") == 1 + len(TUNING_METHODS)  # the plot area + a quartile box per method
        for method in TUNING_METHODS:
            assert f">{method}<title>{method}</title></text>" in chart
    # a task without trials has no tuning section
    assert "<section id=\"tuning-" not in (site / "tasks" / f"{slug('gmm-init')}.html").read_text()


def test_tie_marks_where_the_data_cannot_separate_and_not_where_one_dominates(tuned):
    """The fixture simulates bsq's tuned runs as lfq's: the two are marked tied; every other neighbour pair
    differs on every (task, seed) pair and is not."""
    _, site = tuned
    table = _tuned_table(site)
    column = table["head"].index("Rank 95% CI")
    order = [r["cells"][0]["text"].strip() for r in table["rows"]]
    marked = [name for name, r in zip(order, table["rows"]) if TIE in r["cells"][column]["text"]]
    twins = {*TUNING_TWINS, *TUNING_TWINS.values()}
    assert len(marked) == 1 and marked[0] in twins
    above = order[order.index(marked[0]) - 1]
    assert above in twins  # the twins are neighbours, the lower one carries the mark
    text = (site / "index.html").read_text()
    tip = re.search(r'<span class="tie" title="([^"]*)">', text.split('id="suite-quick-tuned-table"')[1]).group(1)
    p, pairs = re.search(r"p = ([0-9.e-]+) over (\d+) paired", html.unescape(tip)).groups()
    assert float(p) > 0.05 and int(pairs) == len(TUNING_TASKS) * len(TUNING_SEEDS)
    assert "rank-note" in text  # the sentence explaining the marks
    for row in table["rows"]:
        low, high = (float(x) for x in row["cells"][column]["text"].replace(TIE, "").split("\u2013"))
        assert 1 <= low <= high <= len(order)


def _write(store: ResultStore, method: str, task: str, seed: int, value: float, tags: tuple[str, ...] = ("suite:s",),
           lr: float = 0.001) -> None:
    rid = f"{method}-{task}-{seed}-{lr}"
    budget = {"steps": 10, "lr": lr}
    spec = {"task": task, "method": method, "seed": seed, "task_params": {}, "method_params": {},
            "budget": budget, "tags": list(tags), "task_version": 1, "method_version": 1}
    store.write_metrics(task, rid, [("eval", 10, "mse", value)])
    store.write_run({"run_id": rid, "task": task, "task_version": 1, "task_params": "{}", "method": method,
                     "method_version": 1, "method_params": "{}", "method_family": "f", "seed": seed,
                     "budget": canonical_json(budget), "tags": list(tags), "spec": canonical_json(spec),
                     "status": "ok", "main_metric": "mse", "higher_is_better": False})


def test_rank_interval_and_tie_marks_by_hand(tmp_path):
    """A beats everyone on every task and seed; B and C are the same noise: only C (below B) is marked."""
    store = ResultStore(tmp_path / "results")
    rng = np.random.default_rng(0)
    for task in ("t1", "t2", "t3"):
        for seed in range(4):
            _write(store, "A", task, seed, 0.1 + 0.001 * seed)
            _write(store, "B", task, seed, 1.0 + rng.normal(0, 0.1))
            _write(store, "C", task, seed, 1.0 + rng.normal(0, 0.1))
            _write(store, "D", task, seed, 5.0 + 0.001 * seed)
    build_site(tmp_path / "results", tmp_path / "site")
    table = read_tables(tmp_path / "site" / "index.html")["suite-s-table"]
    column = table["head"].index("Rank 95% CI")
    cells = {r["cells"][0]["text"].strip(): r["cells"][column] for r in table["rows"]}
    order = [r["cells"][0]["text"].strip() for r in table["rows"]]
    assert order[0] == "A" and order[-1] == "D" and set(order[1:3]) == {"B", "C"}
    assert cells["A"]["text"] == "1\u20131" and cells["D"]["text"] == "4\u20134"
    assert TIE in cells[order[2]]["text"] and not [n for n in ("A", order[1], "D") if TIE in cells[n]["text"]]
    assert "separated from the row above" in cells[order[1]]["attrs"]["title"]


def test_a_suite_with_only_tuned_runs(tmp_path):
    """`vqbench tune s` without `vqbench sweep run s`, trials not kept: a tuned table, one column per task
    whatever lr each method selected, no defaults table, no link to missing trials."""
    store = ResultStore(tmp_path / "results")
    for method, base, lr in (("A", 1.0, 0.001), ("B", 2.0, 0.004)):
        for task in ("t1", "t2"):
            for seed in (1, 2, 3):
                _write(store, method, task, seed, base + 0.01 * seed, ("suite:s", "tuned:s", "trials:4"), lr)
    build_site(tmp_path / "results", tmp_path / "site")
    text = (tmp_path / "site" / "index.html").read_text()
    tables = read_tables(tmp_path / "site" / "index.html")
    assert [k for k in tables if k.startswith("suite-")] == ["suite-s-tuned-table"]
    assert '<h3 id="suite-s-tuned">Tuned (4 trials)</h3>' in text and 'id="suite-s-defaults"' not in text
    table = tables["suite-s-tuned-table"]
    assert [h[:2] for h in table["head"][3:5]] == ["t1", "t2"]
    assert [r["cells"][0]["text"].strip() for r in table["rows"]] == ["A", "B"]
    assert "lr=0.004" in table["rows"][1]["cells"][3]["text"] and ">trials<" not in text
    assert "vs defaults" not in text  # no defaults track to compare with
    assert not crawl(tmp_path / "site")[1]


def test_tuned_cells_state_their_change_against_the_defaults(tmp_path):
    """t1: tuning clearly better, t2: clearly worse, t3: within the seeds' spread (lower is better); the verdicts,
    the signed change and the summary's counts follow from the two tracks' means and 95% intervals."""
    store = ResultStore(tmp_path / "results")
    cases = {"t1": (1.0, 0.5, 0.01), "t2": (1.0, 2.0, 0.01), "t3": (1.0, 1.05, 0.1)}  # defaults, tuned, step
    for task, (base, tuned_base, step) in cases.items():
        for seed in (0, 1, 2):
            _write(store, "A", task, seed, base + step * seed)
        for seed in (1, 2, 3):
            _write(store, "A", task, seed, tuned_base + step * seed, ("suite:s", "tuned:s", "trials:4"), 0.004)
    build_site(tmp_path / "results", tmp_path / "site")
    text = (tmp_path / "site" / "index.html").read_text()
    table = read_tables(tmp_path / "site" / "index.html")["suite-s-tuned-table"]
    assert [h[:2] for h in table["head"][3:6]] == list(cases)
    tuned_html = text[text.index('id="suite-s-tuned-table"'):]
    found = re.findall(r'<small class="vsdef (\w+)" title="([^"]*)">vs defaults (.)([^<]*)</small>',
                       tuned_html[:tuned_html.index("</table>")])
    expected = [("better", "\u2212", 0.52 - 1.01), ("worse", "+", 2.02 - 1.01), ("within", "+", 1.25 - 1.1)]
    assert len(found) == len(expected)
    for (verdict, title, sign, value), (want, want_sign, change) in zip(found, expected):
        assert (verdict, sign) == (want, want_sign)
        assert float(value) == pytest.approx(abs(change), rel=1e-3)
        assert "3 seed(s)" in html.unescape(title)
    assert ("of 3 cells, tuning made 1 better and 1 worse beyond both 95% intervals; 1 stay within them"
            in re.sub(r"<[^>]+>", "", text))
    # a defaults track at two learning rates on t3 has no one cell to compare with: t3 drops out
    _write(store, "A", "t3", 0, 1.0, lr=0.002)
    build_site(tmp_path / "results", tmp_path / "site2")
    text = re.sub(r"<[^>]+>", "", (tmp_path / "site2" / "index.html").read_text())
    assert "of 2 cells, tuning made 1 better and 1 worse beyond both 95% intervals; 0 stay within them" in text


def test_every_link_resolves_and_every_string_is_escaped(tuned):
    _, site = tuned
    checked, problems = crawl(site)
    assert not problems, problems[:10]
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for bad in (HOSTILE, HOSTILE_SUITE, HOSTILE_TASK):
            assert bad not in text, (page, bad)


def test_trial_run_pages_link_back_to_their_listing(tuned):
    results, site = tuned
    trial = _store_trials(results).iloc[0]
    text = (site / "runs" / f"{slug(trial['run_id'])}.html").read_text()
    anchor = trials_anchor(TUNING, trial["method"])
    assert f'href="../tasks/{slug(trial["task"])}.html#{anchor}">trial {trial["trial"]} of tuning {TUNING}' in text
    runs = ResultStore(results).load_runs()
    final = runs[[f"tuned:{TUNING}" in _tags(t) for t in runs["tags"]]].iloc[0]
    text = (site / "runs" / f"{slug(final['run_id'])}.html").read_text()
    assert f'href="../index.html#suite-{slug(TUNING)}-tuned">{TUNING} (tuned)</a>' in text


def test_suite_filter_keeps_both_tracks_and_the_trials(tuned, tmp_path):
    results, _ = tuned
    site = tmp_path / "site"
    build_site(results, site, suite=TUNING)
    tables = read_tables(site / "index.html")
    assert [k for k in tables if k.startswith("suite-")] == [f"suite-{slug(TUNING)}-table",
                                                              f"suite-{slug(TUNING)}-tuned-table"]
    assert f'id="{tuning_anchor(TUNING)}"' in (site / "tasks" / "gmm.html").read_text()
    assert not crawl(site)[1]
