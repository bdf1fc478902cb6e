"""The leaderboard site, checked from its files (the browser tests are in test_leaderboard_browser.py)."""

from __future__ import annotations

import ast
import html
import json
import math
import shlex
import statistics
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from fixtures.synthetic_store import HOSTILE, HOSTILE_DIFFERENCES, HOSTILE_METRIC, HOSTILE_SUITE, HOSTILE_TASK
from test_leaderboard_helpers import (
    N_SYNTHETIC,
    crawl,
    expected_configs,
    parse_page,
    read_tables,
    store_table,
    suites,
    synthetic_site,
    write_finding,
)

from vqbench.commands.cli import main
from vqbench.errors import UserError
from vqbench.leaderboard import svg
from vqbench.leaderboard.build import build_site
from vqbench.leaderboard.data import slug
from vqbench.leaderboard.reproduce import cli_value, reproduce_command
from vqbench.leaderboard.stats import mean_ci, t975
from vqbench.spec import canonical_json, parse_value
from vqbench.store import RUNS_SCHEMA, ResultStore

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_site(tmp_path_factory)


def _num(cell: dict) -> float:
    v = cell["attrs"].get("data-v", "")
    return float(v) if v else math.nan


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def _two_digits_of(shown: float, exact: float) -> bool:
    """``shown`` is ``exact`` printed with 2 significant digits (exact from 3-decimal t tables)."""
    unit = 10 ** (math.floor(math.log10(abs(exact))) - 1)
    return abs(shown - exact) <= 0.5 * unit + 2e-3 * abs(exact)


# -- statistics -----------------------------------------------------------------------------------
def test_t_quantiles_match_printed_tables():
    printed = {1: 12.706, 2: 4.303, 5: 2.571, 10: 2.228, 20: 2.086, 30: 2.042, 40: 2.021, 60: 2.000,
               120: 1.980, 10**6: 1.960}
    for df, value in printed.items():
        assert abs(t975(df) - value) < 1.5e-3, df
    assert math.isnan(t975(0))


def test_mean_ci_by_hand():
    mean, half, n = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302652730 * 1.0 / math.sqrt(3))
    assert mean_ci([5.0])[1] != mean_ci([5.0])[1]  # one seed: no interval (NaN)
    assert mean_ci([])[2] == 0


def test_pareto_front_by_hand():
    # maximise x; y lower-is-better: (1, 5) and (0.5, 1) are on the front, (0.4, 2) is dominated by (0.5, 1)
    mask = svg.pareto_front([1.0, 0.5, 0.4, 0.9, float("nan")], [5.0, 1.0, 2.0, 6.0, 0.0], higher_y=False)
    assert mask == [True, True, False, False, False]
    assert svg.pareto_front([1.0, 1.0], [2.0, 2.0], higher_y=True) == [True, True]  # ties both stay


# -- the synthetic store --------------------------------------------------------------------------
def test_synthetic_store_is_realistic(synthetic):
    from vqbench.spec import RunSpec

    results, _, _ = synthetic
    runs = ResultStore(results).load_runs()
    assert len(runs) == N_SYNTHETIC
    assert all(RunSpec.from_json(s).run_id == r for s, r in zip(runs["spec"], runs["run_id"]))
    assert {"ok", "diverged", "failed"} <= set(runs["status"])
    names = {s for t in runs["tags"] for s in suites(t)}
    assert {"quick", "paper-v1", "collapse-v1", "adhoc"} <= names
    arrays = ResultStore(results).load_arrays("gmm")
    assert {"usage_histogram", "codebook_spectrum", "embedding_spectrum"} <= set(arrays["name"])


# -- numbers on the pages equal the store ----------------------------------------------------------
def test_task_pages_show_the_store_numbers(synthetic):
    results, site, _ = synthetic
    table = store_table(results)
    checked = 0
    for task, group in table.groupby("task"):
        expected = expected_configs(group)
        page = site / "tasks" / f"{slug(task)}.html"
        rows = read_tables(page)["task-table"]["rows"]
        assert len(rows) == len(expected), task  # one row per method x params x task variant
        head = read_tables(page)["task-table"]["head"]
        main = group["main_metric"].iloc[0]
        col = next(i for i, h in enumerate(head) if h.startswith(main))
        seeds_col = head.index("Seeds")
        shown = sorted((_num(r["cells"][col]), int(r["cells"][seeds_col]["attrs"]["data-v"])) for r in rows)
        want = sorted(zip(expected["mean"], expected["n"]))
        for (got_mean, got_n), (exp_mean, exp_n) in zip(shown, want):
            assert _close(got_mean, exp_mean) and got_n == exp_n, (task, got_mean, exp_mean)
            checked += 1
        # the CI printed next to each mean is the t interval over ok seeds
        for r in rows:
            cell = r["cells"][col]
            if "\u00b1" in cell["text"]:
                m = _num(cell)
                match = expected.loc[(expected["mean"] - m).abs() < 1e-12 * max(1, abs(m))]
                half = float(cell["text"].split("\u00b1")[1].split("n=")[0].replace(",", ""))
                assert _two_digits_of(half, match["ci"].iloc[0])
    assert checked >= 50


def test_suite_tables_mean_rank_and_incomplete_rows(synthetic):
    results, site, _ = synthetic
    table = store_table(results)
    table["suites"] = [suites(t) for t in table["tags"]]
    tables = read_tables(site / "index.html")
    for suite in ("quick", "paper-v1", "collapse-v1", "adhoc"):
        runs = table[[suite in s for s in table["suites"]]]
        exp = expected_configs(runs)
        exp["row"] = [json.dumps(list(k)) for k in zip(exp["method"], exp["method_version"], exp["method_params"])]
        exp["col"] = [json.dumps(list(k)) for k in zip(exp["task"], exp["task_params"], exp["budget"])]
        matrix = pd.DataFrame(math.nan, index=sorted(set(exp["row"])), columns=sorted(set(exp["col"])))
        for row, col, mean in zip(exp["row"], exp["col"], exp["mean"]):
            matrix.loc[row, col] = mean
        complete = matrix.notna().all(axis=1)
        higher = {t: bool(g["higher_is_better"].iloc[0]) for t, g in runs.groupby("task")}
        ranks = pd.DataFrame({c: matrix.loc[complete, c].rank(ascending=not higher[json.loads(c)[0]])
                              for c in matrix.columns})
        mean_rank = ranks.mean(axis=1)
        shown = tables[f"suite-{slug(suite)}-table"]
        assert len(shown["rows"]) == len(matrix), suite
        head = shown["head"]
        rank_col, done_col = head.index("Mean rank"), head.index("Tasks done")
        got = sorted(_num(r["cells"][rank_col]) for r in shown["rows"] if _num(r["cells"][rank_col]) == _num(
            r["cells"][rank_col]))
        assert got == pytest.approx(sorted(mean_rank.dropna().tolist())), suite
        n_incomplete = sum(1 for r in shown["rows"] if "incomplete" in r["cells"][0]["text"])
        assert n_incomplete == int((~complete).sum()), suite
        for r in shown["rows"]:
            done, total = r["cells"][done_col]["text"].split("/")
            is_incomplete = "incomplete" in r["cells"][0]["text"]
            assert (int(done) < int(total)) == is_incomplete
            assert math.isnan(_num(r["cells"][rank_col])) == is_incomplete  # never averaged over missing tasks
        cell_text = " ".join(c["text"] for r in shown["rows"] for c in r["cells"])
        assert "n=" in cell_text  # seed count per cell


def test_mean_rank_excludes_incomplete_rows(tmp_path):
    """Hand-made store: C is best on t1 but has no t2; ranking it would change A's and B's ranks. The same rule
    ranks utilization (higher is better): B uses more codes than A on both tasks."""
    store = ResultStore(tmp_path / "results")
    values = {("A", "t1"): [1.0, 1.2], ("A", "t2"): [5.0, 5.2], ("B", "t1"): [2.0, 2.2], ("B", "t2"): [4.0, 4.4],
              ("C", "t1"): [0.5, 0.6]}
    utilization = {"A": 0.25, "B": 0.75, "C": 1.0}
    for (method, task), vals in values.items():
        for seed, v in enumerate(vals):
            rid = f"{method}{task}{seed}"
            metric = "mse" if task == "t1" else "psnr"
            spec = {"task": task, "method": method, "seed": seed, "task_params": {}, "method_params": {},
                    "budget": {"steps": 10}, "tags": ["suite:s"], "task_version": 1, "method_version": 1}
            store.write_metrics(task, rid, [("eval", 10, metric, v), ("eval", 10, "utilization", utilization[method])])
            store.write_run({"run_id": rid, "task": task, "task_version": 1, "task_params": "{}", "method": method,
                             "method_version": 1, "method_params": "{}", "method_family": "f", "seed": seed,
                             "budget": '{"steps":10}', "tags": ["suite:s"], "spec": canonical_json(spec),
                             "status": "ok", "main_metric": metric, "higher_is_better": task == "t2"})
    site = tmp_path / "site"
    build_site(tmp_path / "results", site)
    table = read_tables(site / "index.html")["suite-s-table"]
    rows = table["rows"]
    rank, util_rank = table["head"].index("Mean rank"), table["head"].index("Utilization rank")
    by_method = {r["cells"][0]["text"].replace("incomplete", "").strip(): r for r in rows}
    assert _num(by_method["A"]["cells"][rank]) == 1.0 and _num(by_method["B"]["cells"][rank]) == 2.0
    assert math.isnan(_num(by_method["C"]["cells"][rank])) and "incomplete" in by_method["C"]["cells"][0]["text"]
    assert _num(by_method["A"]["cells"][util_rank]) == 2.0 and _num(by_method["B"]["cells"][util_rank]) == 1.0
    assert math.isnan(_num(by_method["C"]["cells"][util_rank]))
    assert "missing utilization: t2" in by_method["C"]["cells"][util_rank]["attrs"]["title"]
    assert "util 0.25" in by_method["A"]["cells"][3]["text"] and "util 0.75" in by_method["B"]["cells"][4]["text"]
    assert [r["cells"][0]["text"].split("incomplete")[0].strip() for r in rows] == ["A", "B", "C"]
    a_t1 = by_method["A"]["cells"][3]
    assert _num(a_t1) == pytest.approx(1.1) and "n=2" in a_t1["text"]
    half = 12.706 * statistics.stdev([1.0, 1.2]) / math.sqrt(2)
    assert _two_digits_of(float(a_t1["text"].split("\u00b1")[1].split("n=")[0]), half)


# -- escaping ---------------------------------------------------------------------------------------
ALLOWED_TAGS = {"html", "head", "meta", "title", "link", "body", "header", "nav", "main", "footer", "a", "h1",
                "h2", "h3", "p", "span", "b", "i", "code", "pre", "small", "br", "section", "div", "label",
                "select", "option", "input", "table", "thead", "tbody", "tr", "th", "td", "dl", "dt", "dd",
                "details", "summary", "figure", "figcaption", "img", "svg", "text", "rect", "line", "path",
                "circle", "g", "script"}


def test_every_string_from_a_run_is_escaped(synthetic):
    results, site, _ = synthetic
    pages = list(site.rglob("*.html"))
    assert len(pages) > N_SYNTHETIC
    raw_hostile = [HOSTILE, HOSTILE_TASK, HOSTILE_SUITE, HOSTILE_METRIC, HOSTILE_DIFFERENCES, "<b>plugin</b>",
                   "</script><b>"]
    seen_text = set()
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for bad in raw_hostile:
            assert bad not in text, (page, bad)
        parsed = parse_page(page)
        for tag, attrs in parsed.tags:
            assert tag in ALLOWED_TAGS, (page, tag)
            assert not any(name.startswith("on") for name in attrs), (page, tag, attrs)
            if tag == "script":
                assert attrs.get("src", "").endswith("assets/site.js"), page
            if tag == "img":
                assert attrs["src"].startswith("findings/"), page
        for bad in raw_hostile:
            if html.escape(bad) in text:
                seen_text.add(bad)
    shown = {HOSTILE, HOSTILE_TASK, HOSTILE_SUITE, HOSTILE_METRIC}
    if "method_differences" in RUNS_SCHEMA.names:
        shown.add(HOSTILE_DIFFERENCES)
    assert shown <= seen_text  # shown, as text


def test_every_internal_link_resolves(synthetic):
    _, site, _ = synthetic
    checked, problems = crawl(site)
    assert not problems, problems[:10]
    assert checked > 5 * N_SYNTHETIC


def test_pages_exist_for_every_run_task_method(synthetic):
    results, site, _ = synthetic
    runs = ResultStore(results).load_runs()
    for rid in runs["run_id"]:
        assert (site / "runs" / f"{slug(rid)}.html").is_file()
    for task in runs["task"].unique():
        assert (site / "tasks" / f"{slug(task)}.html").is_file()
    for method in runs["method"].unique():
        assert (site / "methods" / f"{slug(method)}.html").is_file()


def test_run_page_has_spec_provenance_plots(synthetic):
    results, site, _ = synthetic
    runs = ResultStore(results).load_runs()
    r = runs[(runs["status"] == "ok") & runs["slurm_job_id"].notna()].iloc[0]
    text = (site / "runs" / f"{slug(r['run_id'])}.html").read_text()
    for needle in (r["git_commit"], r["slurm_job_id"], r["device"], "git dirty", "Provenance", "Spec",
                   "training loss", "utilization (eval)", "perplexity (eval)", "codebook usage",
                   "singular values", f"{r['wall_time_s']:.1f} s", "vqbench run"):
        assert html.escape(str(needle)) in text, needle
    assert text.count("<svg") == 7 and "not logged" not in text


def test_method_page_has_citation_defaults_results(synthetic):
    results, site, _ = synthetic
    runs = ResultStore(results).load_runs()
    method = runs["method"].value_counts().index[0]
    row = runs[runs["method"] == method].iloc[0]
    page = site / "methods" / f"{slug(method)}.html"
    text = page.read_text()
    assert f'href="https://arxiv.org/abs/{row["method_paper"]}"' in text and "Defaults" in text
    for key in json.loads(row["method_defaults"]):
        assert f"<code>{html.escape(key)}</code>" in text
    rows = read_tables(page)["method-table"]["rows"]
    mine = runs[runs["method"] == method]
    assert len(rows) == len(mine.drop_duplicates(["task", "task_params", "budget", "method_params"]))


def test_findings_page_copies_figure_and_data(synthetic):
    _, site, _ = synthetic
    text = (site / "findings.html").read_text()
    assert html.escape(f"Tokens collapse {HOSTILE}") in text and "&lt;b&gt;not bold&lt;/b&gt;" in text
    assert (site / "findings" / "tokens-collapse" / "figure.png").read_bytes()[:4] == b"\x89PNG"
    assert (site / "findings" / "tokens-collapse" / "data.csv").read_text().startswith("x,utilization")
    assert "vqbench reproduce tokens-collapse" in text


def test_downloads_hold_the_tables_shown(synthetic):
    _, site, _ = synthetic
    page = read_tables(site / "tasks" / "gmm-init.html")["task-table"]
    csv = pd.read_csv(site / "data" / "task-gmm-init.csv")
    parquet = pd.read_parquet(site / "data" / "task-gmm-init.parquet")
    assert len(csv) == len(parquet) == len(page["rows"])
    col = next(i for i, h in enumerate(page["head"]) if h.startswith("mse"))
    assert sorted(_num(r["cells"][col]) for r in page["rows"]) == pytest.approx(sorted(csv["mse mean"]))
    listed = (site / "downloads.html").read_text()
    method = slug(pd.read_csv(site / "data" / "methods.csv")["method"].iloc[0])
    for stem in ("runs", "tasks", "methods", "suite-quick", "task-gmm-init", f"method-{method}"):
        assert f"data/{stem}.csv" in listed and f"data/{stem}.parquet" in listed
        assert (site / "data" / f"{stem}.parquet").is_file()
    runs = pd.read_parquet(site / "data" / "runs.parquet")
    assert len(runs) == N_SYNTHETIC and "metric.utilization" in runs


def test_performance_page_shows_the_perf_rows_and_ratios(synthetic):
    results, site, _ = synthetic
    from vqbench.store import load_perf

    perf = load_perf(results)
    page = read_tables(site / "performance.html")["perf-table"]
    assert len(page["rows"]) == len(perf) > 0
    head = page["head"]
    time_col, ratio_col = head.index("time ms \u2193"), head.index("ratio to vqp \u2193")
    fb = perf[perf["measure"] == "forward_backward"]
    ours = fb[(fb["implementation"] == "vqbench") & (fb["status"] == "ok")]
    ref = fb[fb["implementation"] == "vector-quantize-pytorch"]
    expected = []
    for r in ours.itertuples():
        match = ref[(ref["method"] == r.method) & (ref["codebook_size"] == r.codebook_size) & (ref["dim"] == r.dim)]
        if match["time_ms"].notna().any():
            expected.append(r.time_ms / match["time_ms"].iloc[0])
    shown = [_num(row["cells"][ratio_col]) for row in page["rows"]]
    assert sorted(v for v in shown if v == v) == pytest.approx(sorted(expected))
    assert sorted(v for v in (_num(row["cells"][time_col]) for row in page["rows"]) if v == v) == pytest.approx(
        sorted(perf["time_ms"].dropna()))
    assert "out_of_memory" in (site / "performance.html").read_text()


def test_small_build_is_fast(synthetic):
    _, _, seconds = synthetic
    assert seconds < 30, f"building {N_SYNTHETIC} runs took {seconds:.1f}s"


# -- the reproduce command --------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "true", "1", "1.5", "null", "[1, 2]", '"q"', "{x", "", " a b ",
                                   True, False, None, 0, -3, 1.0, 2.5e-7, [8, 5, 5], {"a": [1, {"b": "c"}]}])
def test_cli_value_round_trips_through_the_cli_parser(value):
    assert parse_value(cli_value(value)) == value
    assert type(parse_value(cli_value(value))) is type(value)


def test_reproduce_command_reruns_the_same_run(tmp_path):
    """Run the real runner, take the command from the run page, run it: same run id, same numbers."""
    from vqbench.runner import run
    from vqbench.spec import make_spec

    first = tmp_path / "first"
    spec = make_spec("gmm", "vq", {"n_train": 512, "n_eval": 256, "hidden": 32, "codebook_size": 32},
                     {"beta": 0.3}, seed=2, budget={"steps": 12, "eval_interval": 6, "batch_size": 64},
                     tags=("suite:demo",))
    result = run(spec, first)
    assert result.status == "ok"
    site = tmp_path / "site"
    build_site(first, site)
    text = (site / "runs" / f"{spec.run_id}.html").read_text()
    assert text.count("<svg") == 7 and "not logged" not in text  # every plot has data from the real runner
    page = read_tables(site / "tasks" / "gmm.html")["task-table"]
    mse_col = next(i for i, h in enumerate(page["head"]) if h.startswith("mse"))
    assert _num(page["rows"][0]["cells"][mse_col]) == result.final["mse"]
    command = html.unescape(text.split('<pre class="cmd">')[1].split("</pre>")[0])
    argv = shlex.split(command)
    assert argv[:2] == ["vqbench", "run"] and "--set" in argv
    second = tmp_path / "second"
    assert main(argv[1:] + ["--results", str(second)]) == 0
    again = ResultStore(second).load_runs()
    assert list(again["run_id"]) == [spec.run_id]
    m1 = ResultStore(first).load_metrics().sort_values(["split", "step", "metric"]).reset_index(drop=True)
    m2 = ResultStore(second).load_metrics().sort_values(["split", "step", "metric"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(m1, m2)


def test_reproduce_command_names_plugins():
    spec = {"task": "gmm", "method": "my vq", "seed": 1, "task_params": {"k": "a b"}, "method_params": {"x": [1]},
            "budget": {"steps": 5}}
    cmd = reproduce_command({"spec": json.dumps(spec), "method_source": "file:/p/my plugin.py#sha256=ab",
                             "task_source": "vqbench"})
    argv = shlex.split(cmd.splitlines()[-1])
    assert argv[2:4] == ["--plugin", "/p/my plugin.py"] and argv[argv.index("--method") + 1] == "my vq"
    assert "task.k=a b" in argv and "method.x=[1]" in argv and "budget.steps=5" in argv
    dist = reproduce_command({"spec": json.dumps(spec), "method_source": "vqbench-x==0.2", "task_source": ""})
    assert dist.splitlines()[0] == "# needs the plugin distribution: pip install 'vqbench-x==0.2'"
    assert reproduce_command({"spec": "not json"}) == ""


# -- CLI, suites, output folder ---------------------------------------------------------------------
def test_cli_build_suite_filter_and_errors(synthetic, tmp_path, capsys):
    results, _, _ = synthetic
    out = tmp_path / "quick-site"
    assert main(["leaderboard", "build", "--results", str(results), "--out", str(out), "--suite", "quick"]) == 0
    assert "leaderboard written to" in capsys.readouterr().out
    index = read_tables(out / "index.html")
    assert [k for k in index if k.startswith("suite-")] == ["suite-quick-table"]
    runs = ResultStore(results).load_runs()
    n_quick = sum("suite:quick" in list(t) for t in runs["tags"])
    assert len(list((out / "runs").glob("*.html"))) == n_quick
    assert main(["leaderboard", "build", "--results", str(results), "--out", str(out), "--suite", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no runs in suite 'nope'") and "quick" in err
    assert main(["leaderboard", "build", "--results", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_out_folder_is_replaced_only_when_it_is_a_site(tmp_path, synthetic):
    results, _, _ = synthetic
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not built by vqbench"):
        build_site(results, foreign, suite="quick")
    assert (foreign / "notes.txt").read_text() == "mine"
    site = tmp_path / "site"
    build_site(results, site, suite="quick")
    (site / "runs" / "stale.html").write_text("old")
    build_site(results, site, suite="quick")  # a rebuild replaces the whole folder
    assert not (site / "runs" / "stale.html").exists() and (site / "index.html").is_file()
    assert not list(tmp_path.glob(".site.*"))  # no temporary folders left behind


def test_empty_store_builds_a_page(tmp_path):
    (tmp_path / "results").mkdir()
    index = build_site(tmp_path / "results", tmp_path / "site")
    assert "No runs in this results folder yet" in index.read_text()
    assert crawl(tmp_path / "site")[1] == []


def test_serve_serves_the_site(synthetic, capsys):
    from vqbench.leaderboard.cli import make_server

    _, site, _ = synthetic
    server = make_server(site, port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/tasks/gmm.html", timeout=10) as response:
            assert response.status == 200 and b"Task: gmm" in response.read()
    finally:
        server.shutdown()
        server.server_close()
    assert main(["leaderboard", "serve", "--out", str(site.parent / "nothing-here")]) == 2
    assert "build it first" in capsys.readouterr().err


def test_findings_without_meta_or_figure(tmp_path):
    results = tmp_path / "results"
    write_finding(results, "ok-one", "T", "C", "vqbench reproduce x")
    (results / "findings" / "bare").mkdir()
    (results / "findings" / "bare" / "meta.json").write_text("{not json")
    build_site(results, tmp_path / "site")
    text = (tmp_path / "site" / "findings.html").read_text()
    assert "figure.png is missing" in text and "meta.json could not be read" in text and ">T<" in text


def test_leaderboard_imports_only_the_store():
    """leaderboard/ may import vqbench.store, .errors, .spec and .tuning (the selection `vqbench tune` made),
    nothing else of vqbench, and never torch."""
    ours = {"vqbench"}
    for path in (REPO / "leaderboard").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                top = name.split(".")[0]
                assert top != "torch", path
                if top in ours:
                    allowed = ("vqbench.store", "vqbench.errors", "vqbench.spec", "vqbench.tuning")
                    assert name in allowed or name.startswith("vqbench.leaderboard"), (path, name)


def test_publishing_build_needs_no_torch(synthetic, tmp_path):
    """The workflow's command, `python -m vqbench.leaderboard build`, builds the site without importing torch."""
    import yaml

    results, _, _ = synthetic
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "leaderboard.yml").read_text())
    steps = workflow["jobs"]["build"]["steps"]
    script = next(s["run"] for s in steps if s.get("name") == "Build the site")
    assert "python -m vqbench.leaderboard" in script and "_site" in script
    assert any(s.get("uses", "").startswith("actions/upload-pages-artifact") for s in steps)
    assert workflow["jobs"]["deploy"]["steps"][0]["uses"].startswith("actions/deploy-pages")
    code = ("import sys; from vqbench.leaderboard.__main__ import main; "
            f"rc = main(['build', '--results', {str(results)!r}, '--out', {str(tmp_path / '_site')!r}]); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('vqbench.methods', 'vqbench.tasks', "
            "'vqbench.runner'))];"
            "print(rc, bad); sys.exit(rc or (1 if bad else 0))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "_site" / "index.html").is_file()
