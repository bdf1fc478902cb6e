"""The leaderboard site in a real headless Chromium, used the way a person uses it.

Loaded over a local HTTP server (loopback) and from ``file://``: tables hold the store's rows and
numbers, clicking a header sorts, typing in the filter hides rows, links navigate, and the hostile
plugin strings render as text without running. Needs Debian's ``chromium`` + ``chromium-driver``
and ``selenium`` (a dev extra); a machine without them fails here with the command to install them.
Screenshots of the index and a task page are kept in a temporary folder (and copied to
``$VQBENCH_SCREENSHOTS`` when that is set).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pandas as pd
import pytest
from browser_helpers import severe_console
from fixtures.synthetic_store import HOSTILE, HOSTILE_METRIC, HOSTILE_SUITE, HOSTILE_TASK, TUNING, TUNING_METHODS
from test_leaderboard_helpers import expected_configs, parse_page, store_table, suites, synthetic_site, tuned_site

from vqbench.leaderboard.data import slug

pytestmark = pytest.mark.browser

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_site(tmp_path_factory)


@pytest.fixture(scope="module")
def http_root(synthetic) -> Iterator[str]:
    from vqbench.leaderboard.cli import make_server

    _, site, _ = synthetic
    server = make_server(site, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"
    try:
        yield f"http://{host}:{port}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module", params=["http", "file"])
def root(request, synthetic) -> str:
    """The site's base URL, over HTTP and from file://."""
    if request.param == "http":
        return request.getfixturevalue("http_root")
    return synthetic[1].resolve().as_uri() + "/"


def _by(css: str):
    from selenium.webdriver.common.by import By

    return By.CSS_SELECTOR, css


def _open(driver, url: str) -> None:
    driver.get(url)
    _no_alert(driver)
    # the page script filled every filter's row count: it ran (the CSP allows it from http and file)
    for count in driver.find_elements(*_by(".filters .count")):
        assert "rows shown" in count.get_attribute("textContent")


def _no_alert(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    text = alert.text
    alert.dismiss()
    pytest.fail(f"a script from the store ran: alert({text!r})")


def _values(driver, table: str, col: int) -> list[float | None]:
    cells = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.cells[arguments[1]].getAttribute('data-v'));", f"#{table}", col)
    return [float(v) if v not in (None, "") else None for v in cells]


def _header_index(driver, table: str, startswith: str) -> int:
    heads = driver.find_elements(*_by(f"#{table} thead th"))
    return next(i for i, th in enumerate(heads) if th.text.strip().startswith(startswith))


def _is_sorted(values: list[float | None], descending: bool) -> bool:
    present = [v for v in values if v is not None]
    missing_last = all(v is None for v in values[len(present):])
    return missing_last and present == sorted(present, reverse=descending)


# -- tables hold the store's rows and numbers ----------------------------------------------------------
def test_index_tables_hold_the_store_rows(driver, root, synthetic):
    results, _, _ = synthetic
    _open(driver, root + "index.html")
    assert driver.title.startswith("Leaderboard")
    table = store_table(results)
    table["suites"] = [suites(t) for t in table["tags"]]
    for suite in ("quick", "paper-v1", "collapse-v1"):
        runs = table[[suite in s for s in table["suites"]]]
        exp = expected_configs(runs)
        n_rows = len(exp.drop_duplicates(["method", "method_version", "method_params"]))
        table_id = f"suite-{slug(suite)}-table"
        rows = driver.find_elements(*_by(f"#{table_id} tbody tr"))
        assert len(rows) == n_rows, suite
        n_tasks = len(exp.drop_duplicates(["task", "task_params", "budget"]))
        shown = []
        for col in range(3, 3 + n_tasks):
            shown += [v for v in _values(driver, table_id, col) if v is not None]
        expected = sorted(v for v in exp["mean"] if v == v)
        assert sorted(shown) == pytest.approx(expected, rel=1e-12), suite
        # the visible text shows the mean to 4 significant digits and the seed count
        first = driver.find_element(*_by(f"#{table_id} tbody td.num[data-v]:not([data-v=''])"))
        value = float(first.get_attribute("data-v"))
        shown = f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
        assert first.text.startswith(shown) and "n=" in first.text


def test_task_page_rows_and_pareto(driver, root, synthetic):
    results, _, _ = synthetic
    table = store_table(results)
    task = table["task"].value_counts().index[0]
    exp = expected_configs(table[table["task"] == task])
    _open(driver, root + f"tasks/{slug(task)}.html")
    assert driver.find_element(*_by("h1")).text == f"Task: {task}"
    rows = driver.find_elements(*_by("#task-table tbody tr"))
    assert len(rows) == len(exp)
    main = table[table["task"] == task]["main_metric"].iloc[0]
    col = _header_index(driver, "task-table", main)
    shown = sorted(v for v in _values(driver, "task-table", col) if v is not None)
    assert shown == pytest.approx(sorted(v for v in exp["mean"] if v == v), rel=1e-12)
    points = driver.find_elements(*_by("svg a[data-row]"))
    with_util = expected_configs(table[table["task"] == task], "utilization")
    def keys(frame):
        return {json.dumps([r.method, r.method_params, r.task_params, r.budget]) for r in frame.itertuples()
                if r.mean == r.mean}

    both = keys(exp) & keys(with_util)
    assert len(points) == len(both)
    assert driver.find_elements(*_by("svg path[stroke-dasharray]"))  # the Pareto front is drawn


# -- sorting and filtering -------------------------------------------------------------------------------
def test_click_header_sorts(driver, root, synthetic):
    results, _, _ = synthetic
    table = store_table(results)
    task = table["task"].value_counts().index[0]
    main = table[table["task"] == task]["main_metric"].iloc[0]
    _open(driver, root + f"tasks/{slug(task)}.html")
    col = _header_index(driver, "task-table", main)
    header = driver.find_elements(*_by("#task-table thead th"))[col]
    before = _values(driver, "task-table", col)
    header.click()
    ascending = _values(driver, "task-table", col)
    assert header.get_attribute("aria-sort") == "ascending"
    assert _is_sorted(ascending, descending=False) and sorted(map(str, ascending)) == sorted(map(str, before))
    header.click()
    descending = _values(driver, "task-table", col)
    assert header.get_attribute("aria-sort") == "descending" and _is_sorted(descending, descending=True)
    assert descending != ascending
    # a text column sorts by its text
    method_header = driver.find_elements(*_by("#task-table thead th"))[0]
    method_header.click()
    names = [r.text.split("\n")[0].lower() for r in driver.find_elements(*_by("#task-table tbody tr td:first-child"))]
    assert names == sorted(names)
    assert header.get_attribute("aria-sort") is None
    # the index's aggregate column: complete rows by mean rank, incomplete (no rank) last either way
    _open(driver, root + "index.html")
    table_id = "suite-collapse-v1-table"
    rank_col = _header_index(driver, table_id, "Mean rank")
    rank_header = driver.find_elements(*_by(f"#{table_id} thead th"))[rank_col]
    rank_header.click()
    assert _is_sorted(_values(driver, table_id, rank_col), descending=False)
    rank_header.click()
    assert _is_sorted(_values(driver, table_id, rank_col), descending=True)


def test_filter_by_family_and_text_hides_rows(driver, root, synthetic):
    from selenium.webdriver.support.ui import Select

    results, _, _ = synthetic
    table = store_table(results)
    task = table.groupby("task")["method_family"].nunique().idxmax()  # the task with the most families
    exp = expected_configs(table[table["task"] == task])
    family_of = dict(zip(table["method"], table["method_family"]))
    _open(driver, root + f"tasks/{slug(task)}.html")
    total = len(exp)
    family = pd.Series([family_of[m] for m in exp["method"]]).value_counts().index[-1]  # a rare one
    Select(driver.find_element(*_by(".filters select"))).select_by_value(family)
    visible = [r for r in driver.find_elements(*_by("#task-table tbody tr")) if r.is_displayed()]
    assert len(visible) == sum(family_of[m] == family for m in exp["method"]) < total
    assert all(r.get_attribute("data-family") == family for r in visible)
    assert driver.find_element(*_by(".filters .count")).text == f"{len(visible)} of {total} rows shown"
    dimmed = driver.find_elements(*_by("svg a.dim"))
    assert dimmed and all(driver.find_element(*_by(f"tr[id='{a.get_attribute('data-row')}']")).get_attribute(
        "data-family") != family for a in dimmed[:20])
    Select(driver.find_element(*_by(".filters select"))).select_by_value("")
    search = driver.find_element(*_by(".filters input"))
    word = exp["method"].value_counts().index[-1]  # a rare method name
    search.send_keys(word)
    visible = [r for r in driver.find_elements(*_by("#task-table tbody tr")) if r.is_displayed()]
    assert 0 < len(visible) < total and all(word in r.text for r in visible)
    search.send_keys(" zz-no-such-text")
    assert not [r for r in driver.find_elements(*_by("#task-table tbody tr")) if r.is_displayed()]
    assert driver.find_element(*_by(".filters .count")).text == f"0 of {total} rows shown"
    search.clear()
    search.send_keys(" ")
    assert len([r for r in driver.find_elements(*_by("#task-table tbody tr")) if r.is_displayed()]) == total


# -- links --------------------------------------------------------------------------------------------------
def test_real_clicks_navigate(driver, root, synthetic):
    results, _, _ = synthetic
    _open(driver, root + "index.html")
    link = driver.find_element(*_by("#methods-table tbody tr td:first-child a"))
    name = link.text
    link.click()
    assert driver.find_element(*_by("h1")).text == f"Method: {name}" and not severe_console(driver)
    driver.back()
    driver.find_element(*_by("#suite-collapse-v1-table thead th a")).click()
    assert driver.find_element(*_by("h1")).text.startswith("Task: gmm-")
    run_link = driver.find_element(*_by("#task-table td.runs a"))
    run_link.click()
    assert driver.find_element(*_by("h1")).text.startswith("Run ")
    assert "vqbench run" in driver.find_element(*_by("pre.cmd")).text
    driver.find_element(*_by("p.lead a[href*='#r']")).click()
    target = driver.execute_script("return document.querySelector(':target') && document.querySelector(':target').id")
    assert target and target.startswith("r") and urlsplit(driver.current_url).fragment == target
    driver.find_element(*_by("header.top a[href$='findings.html']")).click()
    img = driver.find_element(*_by("figure img"))
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 4
    driver.find_element(*_by("header.top a[href$='downloads.html']")).click()
    assert len(driver.find_elements(*_by("#downloads-table tbody tr"))) > 10
    assert not severe_console(driver)


def test_every_link_of_the_main_pages_answers_over_http(http_root, synthetic):
    """Every link on the index, task and method pages fetched from the local server (the file crawler in
    test_leaderboard.py covers every page's links on disk)."""
    _, site, _ = synthetic
    pages = [site / "index.html", site / "findings.html", site / "downloads.html",
             *site.glob("tasks/*.html"), *site.glob("methods/*.html")]
    seen: set[str] = set()
    for page in pages:
        page_url = urljoin(http_root, page.relative_to(site).as_posix())
        for _, link in parse_page(page).links:
            if link.startswith(("https://", "data:")):
                continue
            target = urljoin(page_url, link).split("#")[0]
            if target in seen:
                continue
            seen.add(target)
            with urllib.request.urlopen(target, timeout=10) as response:
                assert response.status == 200, target
    assert len(seen) > 100


def test_index_shows_collapse_next_to_quality_and_links_the_protocol(driver, root, synthetic):
    """Each index cell holds the mean and, on a line of its own, the utilization; the not-converged badges carry
    their change in a tooltip; the Protocol page is one click away and explains the rule."""
    _open(driver, root + "index.html")
    table = "suite-collapse-v1-table"
    util = driver.find_element(*_by(f"#{table} td.num small.util"))
    cell = driver.execute_script("return arguments[0].parentNode", util)
    link = cell.find_element(*_by("a"))
    assert util.text.startswith("util ") and util.location["y"] > link.location["y"]  # a second line
    badge = driver.find_element(*_by(f"#{table} .badge.conv"))
    assert "not converged" in badge.text and "changed" in badge.get_attribute("title")
    column = _header_index(driver, table, "Utilization rank")
    header = driver.find_elements(*_by(f"#{table} thead th"))[column]
    header.click()
    assert _is_sorted(_values(driver, table, column), descending=False)
    driver.find_element(*_by("header.top a[href$='protocol.html']")).click()
    assert driver.find_element(*_by("h1")).text == "Protocol"
    section = driver.find_element(*_by("#convergence"))
    assert "less than 1% (relative)" in section.text and "validation split" in section.text
    assert len(driver.find_elements(*_by("#budgets-table tbody tr"))) >= 3
    assert not severe_console(driver)


# -- the XSS case, in the browser ----------------------------------------------------------------------------
def test_hostile_strings_render_as_text(driver, root, synthetic):
    results, _, _ = synthetic
    table = store_table(results)
    hostile_run = table[table["method"] == HOSTILE]["run_id"].iloc[0]
    pages = {"index.html": [HOSTILE, HOSTILE_SUITE, HOSTILE_TASK],
             f"methods/{slug(HOSTILE)}.html": [HOSTILE, "<b>plugin</b>\"family", "</script><b>x</b>"],
             f"tasks/{slug(HOSTILE_TASK)}.html": [HOSTILE_TASK, HOSTILE_METRIC.strip("\"'")],
             f"tasks/{slug('gmm')}.html": [HOSTILE, "\"><b>key</b>=<i>v</i>"],
             f"runs/{slug(hostile_run)}.html": [HOSTILE, "<i>v</i>"]}
    for page, texts in pages.items():
        _open(driver, root + page)
        body = driver.find_element(*_by("body")).text
        for text in texts:
            assert text in body, (page, text)
        scripts = driver.execute_script("return Array.from(document.scripts).map(s => s.src)")
        assert all(s.endswith("assets/site.js") for s in scripts), (page, scripts)
        injected = driver.execute_script(
            "return document.querySelectorAll('img[src=x], svg svg').length + Array.from("
            "document.querySelectorAll('b, i')).filter(el => ['key', 'plugin', 'x', 'v'].includes(el.textContent))"
            ".length")
        assert injected == 0, page
        assert not driver.execute_script(
            "return Array.from(document.querySelectorAll('*')).some(el => Array.from(el.attributes)"
            ".some(a => a.name.startsWith('on')))"), page
        _no_alert(driver)
    assert not severe_console(driver)


# -- equal tuning budgets ------------------------------------------------------------------------------------
def test_tuned_table_marks_ties_and_links_to_the_trials(driver, tmp_path_factory):
    _, site = tuned_site(tmp_path_factory)
    _open(driver, site.resolve().as_uri() + "/index.html")
    table = f"suite-{slug(TUNING)}-tuned-table"
    assert len(driver.find_elements(*_by(f"#{table} tbody tr"))) == len(TUNING_METHODS)
    (tie,) = driver.find_elements(*_by(f"#{table} .tie"))
    assert tie.text == "\u2248" and "p = " in tie.get_attribute("title")
    ci_col = _header_index(driver, table, "Rank 95% CI")
    driver.find_elements(*_by(f"#{table} thead th"))[ci_col].click()
    assert _is_sorted(_values(driver, table, ci_col), descending=False)
    driver.find_element(*_by(f"#{table} small.chosen a")).click()
    target = driver.execute_script("return document.querySelector(':target') && document.querySelector(':target').id")
    assert target and target.startswith("trials-") and urlsplit(driver.current_url).fragment == target
    listing = driver.find_element(*_by(f"tbody[id='{target}']"))
    assert "selected" in listing.text and listing.is_displayed()
    chart = driver.find_element(*_by("section[id^='tuning-'] svg.chart"))
    assert len(chart.find_elements(*_by("circle"))) > len(TUNING_METHODS)
    assert not severe_console(driver)


# -- screenshots -------------------------------------------------------------------------------------------
def test_screenshots_of_index_and_task_page(driver, http_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("leaderboard_screens")
    shots = []
    for page, name in (("index.html", "index.png"), ("tasks/gmm-init.html", "task.png")):
        driver.set_window_size(1400, 1000)
        _open(driver, http_root + page)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(max(height, 800), 6000))
        path = folder / name
        assert driver.save_screenshot(str(path))
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 20_000
        shots.append(path)
    driver.set_window_size(1400, 1000)
    keep = os.environ.get("VQBENCH_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for path in shots:
            shutil.copyfile(path, Path(keep) / path.name)
    print(f"screenshots in {folder}")
    assert math.isfinite(len(shots))
