"""The site is a pure function of the store: same store, same bytes, however the pages are rendered.

Also pins the shared formatting (one escaper, one number formatter for pages and charts) and the
method pages' "Differences from the reference implementation" section (stores with and without it).
"""

from __future__ import annotations

import ast
import filecmp
import html
import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_leaderboard_helpers import synthetic_site

from vqbench.leaderboard import svg
from vqbench.leaderboard.build import build_site
from vqbench.leaderboard.context import SiteContext
from vqbench.leaderboard.data import MethodInfo, load, slug
from vqbench.leaderboard.html import escape, format_ci, format_number
from vqbench.leaderboard.page_method import DIFFERENCES_HEADING, differences_section
from vqbench.leaderboard.page_run import render_run_chunk, run_chunks
from vqbench.spec import canonical_json
from vqbench.store import RUNS_SCHEMA, ResultStore

REPO = Path(__file__).resolve().parent.parent
HAS_DIFFERENCES_COLUMN = "method_differences" in RUNS_SCHEMA.names


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_site(tmp_path_factory)


def _differing_files(a: Path, b: Path) -> list[str]:
    """Relative paths that exist on one side only or whose bytes differ."""
    problems = []
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    problems += [f"only in {a}: {p}" for p in sorted(files_a - files_b)]
    problems += [f"only in {b}: {p}" for p in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        if not filecmp.cmp(a / rel, b / rel, shallow=False):
            problems.append(f"differs: {rel}")
    return problems


def test_same_store_builds_the_same_site(synthetic, tmp_path):
    """A second build of the same store (run pages in worker processes) gives the same files, byte for byte."""
    results, site, _ = synthetic
    again = tmp_path / "again"
    build_site(results, again)
    assert _differing_files(site, again) == []


def test_run_pages_do_not_depend_on_chunks_or_processes(synthetic, tmp_path):
    """Run pages rendered in-process, in chunks of 7 runs, equal those the build wrote in worker processes:
    a worker receives everything it renders in its chunk."""
    results, site, _ = synthetic
    out = tmp_path / "runs-only"
    context = SiteContext(load(results), out)
    chunks = run_chunks(context, chunk_size=7)
    assert len(chunks) > 20 and all(len({r["task"] for r in c.records}) == 1 for c in chunks)
    assert sum(render_run_chunk(chunk) for chunk in chunks) == len(list((site / "runs").glob("*.html")))
    assert _differing_files(site / "runs", out / "runs") == []


# -- one escaper, one number formatter ------------------------------------------------------------------
@pytest.mark.parametrize(("value", "digits", "text"), [
    # table cells (4 digits): grouped from 10,000; four significant digits below
    (0.0, 4, "0"), (1.0, 4, "1"), (0.123456, 4, "0.1235"), (1024, 4, "1024"), (9999.0, 4, "9999"),
    (65536, 4, "65,536"), (16384.7, 4, "16,385"), (-123456.0, 4, "-123,456"), (3.5e12, 4, "3.5e+12"),
    (np.float32(0.5), 4, "0.5"), (np.int64(7), 4, "7"),
    # axis ticks (3 digits): whole thousands grouped, small values in g form
    (1000.0, 3, "1,000"), (1500.0, 3, "1,500"), (20000.0, 3, "20,000"), (0.0001, 3, "0.0001"),
    (1e-08, 3, "1e-08"), (0.30000000000000004, 3, "0.3"), (250.0, 3, "250"),
    # missing values
    (math.nan, 4, ""), (math.inf, 4, ""), (None, 4, ""), ("1.5", 4, ""),
])
def test_format_number(value, digits, text):
    assert format_number(value, digits) == text


def test_format_ci():
    assert [format_ci(v) for v in (0.01234, 1.26, 123.4, 5678.0, math.nan)] == ["0.012", "1.3", "120", "5,700", ""]


def test_escape_matches_the_standard_library():
    for text in ("<script>alert(1)</script>", "a \"b\" 'c' & d", "x" * 500, "plain"):
        assert escape(text) == html.escape(text, quote=True)
    assert escape(12) == "12"


def test_one_escaper_and_one_number_formatter():
    """Only leaderboard/html.py escapes (stdlib html) or formats numbers; the charts use the same functions."""
    for path in (REPO / "leaderboard").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imports = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imports += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        if path.name != "html.py":
            assert "html" not in imports, path
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not names & {"e", "esc", "fmt", "fmt_ci", "_cli_parses_to"}, (path, names)
    assert svg.escape is escape and svg.format_number is format_number


# -- differences from the reference implementation --------------------------------------------------------
def _method(differences: str) -> MethodInfo:
    return MethodInfo(name="m", slug="m", family="f", paper="", description="", defaults={}, source="vqbench",
                      versions=[1], differences=differences)


def test_differences_section_is_escaped_and_omitted_when_empty():
    section = differences_section(_method("Uses <b>EMA</b> & no warmup.\n\nSecond point."))
    assert section.startswith(f'<h2 id="differences">{DIFFERENCES_HEADING}</h2>')
    assert "<p>Uses &lt;b&gt;EMA&lt;/b&gt; &amp; no warmup.</p><p>Second point.</p>" in section
    assert differences_section(_method("")) == differences_section(_method("  \n ")) == ""


@pytest.mark.skipif(not HAS_DIFFERENCES_COLUMN, reason="the store's runs table has no method_differences column")
def test_method_pages_show_the_stored_differences(synthetic):
    _, site, _ = synthetic
    text = (site / "methods" / "vq-lc.html").read_text()
    assert f"<h2 id=\"differences\">{DIFFERENCES_HEADING}</h2>" in text
    assert "<p>The projector is one linear layer.</p>" in text
    assert DIFFERENCES_HEADING not in (site / "methods" / "vq.html").read_text()


def test_a_store_without_the_differences_column_builds(tmp_path):
    """Runs written before the column existed: every run is read, no method page has the section."""
    store = ResultStore(tmp_path / "results")
    for seed in (0, 1):
        rid = f"old{seed}"
        spec = {"task": "t", "method": "m", "seed": seed, "task_params": {}, "method_params": {},
                "budget": {"steps": 10}, "tags": [], "task_version": 1, "method_version": 1}
        store.write_metrics("t", rid, [("eval", 10, "mse", 0.5 + seed)])
        path = store.write_run({"run_id": rid, "task": "t", "task_version": 1, "task_params": "{}", "method": "m",
                                "method_version": 1, "method_params": "{}", "method_family": "f", "seed": seed,
                                "budget": '{"steps":10}', "tags": [], "spec": canonical_json(spec), "status": "ok",
                                "main_metric": "mse", "higher_is_better": False,
                                "method_differences": "written by a newer vqbench"})
        table = pq.read_table(path)
        if "method_differences" in table.column_names:
            table = table.drop_columns(["method_differences"])
        pq.write_table(table, path)
    site = tmp_path / "site"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no file may be skipped as damaged
        build_site(tmp_path / "results", site)
    assert len(list((site / "runs").glob("*.html"))) == 2
    assert DIFFERENCES_HEADING not in (site / "methods" / f"{slug('m')}.html").read_text()
