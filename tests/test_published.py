"""The published leaderboard, ``published/results``: what it holds, and CI's re-check of the publication.

Default suite (no system software): the store is compacted, holds no checkpoints and no per-run files, every run
is ``ok``, and every stored spec is exactly the spec this code makes today (so it carries the current task and
method versions: bumping a version without republishing fails here); the ``standard`` suite ran every method on
its tasks at their ``standard`` budgets with 3 seeds.

Marked suites (``.ci/run`` runs them):

* ``browser``: the site builds from the committed store and every one of its pages opens in Chromium with no
  console error;
* ``slow``: one published run, chosen at random (``VQBENCH_RERUN=<run id>`` picks it; the choice is printed), is
  re-run from the reproduce command on its site page, on the CPU with the published run's thread count, and its
  final eval metrics must match the published ones within :data:`RERUN_RTOL` (the README states it).
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import shlex
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
from browser_helpers import severe_console

from vqbench.store import ResultStore, final_metrics

PUBLISHED = Path(__file__).resolve().parent.parent / "published" / "results"
#: the suites of the published board (sweep names in ``published/results/sweeps``)
STANDARD = "standard"
STANDARD_SEEDS = 3
#: relative tolerance of a CPU re-run against the published number (same torch build and thread count: the
#: runs are deterministic, so the re-run is expected bit-identical; the tolerance absorbs a different CPU's
#: vector instructions only)
RERUN_RTOL = 1e-3
RERUN_ATOL = 1e-6


@pytest.fixture(scope="module")
def store() -> ResultStore:
    if not (PUBLISHED / "runs.parquet").is_file():
        pytest.fail(f"{PUBLISHED} holds no compacted runs table: the published store must be committed "
                    "(see published/README.md for the commands that produce it)")
    return ResultStore(PUBLISHED)


@pytest.fixture(scope="module")
def runs(store) -> pd.DataFrame:
    return store.load_runs()


# -- what the committed store is ----------------------------------------------------------------------------------
def test_store_is_compacted_without_checkpoints_or_per_run_files(store):
    assert not (PUBLISHED / "checkpoints").exists(), "published/results must not hold checkpoints"
    per_run = [p for kind in ("runs", "metrics", "arrays", "perf") for p in (PUBLISHED / kind).rglob("*.parquet")
               if (PUBLISHED / kind).is_dir() and "task=" not in p.name]
    assert not per_run, f"per-run files left: run `vqbench results compact --results {PUBLISHED}` ({per_run[:3]})"


def test_every_run_is_ok_and_its_spec_is_todays(runs):
    """Same task, method, params, seed and budget made by today's registry give the stored spec, versions
    included: a published number always belongs to the code that would rerun it."""
    import vqbench.methods  # noqa: F401 (registers)
    import vqbench.tasks  # noqa: F401
    from vqbench.spec import Budget, make_spec

    assert set(runs["status"]) == {"ok"}, runs.loc[runs["status"] != "ok", ["run_id", "status", "error"]]
    stale = []
    for row in runs.itertuples():
        spec = json.loads(row.spec)
        today = make_spec(spec["task"], spec["method"], spec["task_params"], spec["method_params"],
                          seed=spec["seed"], budget=Budget.from_dict(spec["budget"]))
        if today.run_id != row.run_id:
            stale.append(f"{row.run_id} ({row.task}/{row.method} v{row.method_version}, task v{row.task_version})")
    assert not stale, (f"{len(stale)} published run(s) no longer match today's specs (a version was bumped): "
                       f"rerun and republish them; e.g. {stale[:3]}")


def test_standard_suite_covers_its_tasks_at_standard_budgets(store, runs):
    import vqbench.methods  # noqa: F401
    import vqbench.tasks  # noqa: F401
    from vqbench.registry import METHODS
    from vqbench.spec import task_budget

    members = store.sweep_members()
    standard = runs[runs["run_id"].map(lambda rid: STANDARD in members.get(rid, set()))]
    assert len(standard), "the published store holds no run of the standard suite"
    builtin = sorted(name for name in METHODS.list() if METHODS.get(name).source == "vqbench")
    for task, rows in standard.groupby("task"):
        expected = asdict(task_budget(task, "standard"))
        budgets = {json.dumps(json.loads(b), sort_keys=True) for b in rows["budget"]}
        assert budgets == {json.dumps(expected, sort_keys=True)}, f"{task}: not at its standard budget"
        seeds = rows.groupby("method")["seed"].nunique()
        assert sorted(seeds.index) == builtin, f"{task}: methods missing {sorted(set(builtin) - set(seeds.index))}"
        assert (seeds >= STANDARD_SEEDS).all(), f"{task}: fewer than {STANDARD_SEEDS} seeds: {seeds[seeds < 3]}"


# -- the site, in a browser -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory, store) -> Path:
    from vqbench.leaderboard.build import build_site

    out = tmp_path_factory.mktemp("published") / "site"
    build_site(PUBLISHED, out)
    return out


@pytest.mark.browser
def test_every_page_opens_without_console_errors(driver, site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    problems = []
    for page in pages:
        driver.get(page.resolve().as_uri())
        errors = severe_console(driver)
        if errors:
            problems.append(f"{page.relative_to(site)}: {errors[0]}")
    print(f"opened {len(pages)} pages of the published site")
    assert not problems, f"{len(problems)} page(s) logged console errors: {problems[:5]}"


# -- one published run, re-run --------------------------------------------------------------------------------------
def page_command(site: Path, run_id: str) -> list[str]:
    """The reproduce command on the run's site page, as argv."""
    page = (site / "runs" / f"{run_id}.html").read_text(encoding="utf-8")
    found = re.search(r'<pre class="cmd">(.*?)</pre>', page, re.S)
    assert found, f"runs/{run_id}.html shows no reproduce command"
    lines = [line for line in html.unescape(found.group(1)).splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1 and lines[0].startswith("vqbench run "), lines
    return shlex.split(lines[0])


def final_eval_metrics(store: ResultStore, task: str, run_id: str) -> dict[str, float]:
    """The run's metrics at their last eval step (:func:`vqbench.store.final_metrics`)."""
    row = final_metrics(pd.DataFrame({"run_id": [run_id]}), store.load_metrics(task, [run_id])).iloc[0]
    return {name[len("metric."):]: float(value) for name, value in row.items()
            if name.startswith("metric.") and pd.notna(value)}


def threads_of(device: str) -> int:
    found = re.fullmatch(r"cpu \((\d+) threads?\)", device)
    assert found, f"the published run did not run on a CPU ({device}): a CPU re-run cannot check it"
    return int(found.group(1))


@pytest.mark.slow
def test_a_random_published_run_reruns_from_its_page(site, store, runs, tmp_path):
    chosen = os.environ.get("VQBENCH_RERUN") or random.SystemRandom().choice(sorted(runs["run_id"]))
    run = runs.set_index("run_id").loc[chosen]
    print(f"re-running published run {chosen} ({run['task']} / {run['method']}, seed {run['seed']}); "
          f"VQBENCH_RERUN={chosen} picks it again")
    argv = page_command(site, chosen)
    exe = shutil.which("vqbench")
    assert exe, "the vqbench command is not installed (pip install -e .)"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_of(run["device"])), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([exe, *argv[1:], "--results", str(tmp_path / "rerun"), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rerun = ResultStore(tmp_path / "rerun")
    assert list(rerun.load_runs()["run_id"]) == [chosen], "the page's command made a different run id"
    published = final_eval_metrics(store, run["task"], chosen)
    again = final_eval_metrics(rerun, run["task"], chosen)
    assert published and set(again) == set(published)
    off = {name: (published[name], again[name]) for name in published
           if not (published[name] == again[name] or abs(published[name] - again[name])
                   <= RERUN_ATOL + RERUN_RTOL * abs(published[name]))}
    exact = sum(published[name] == again[name] for name in published)
    print(f"{exact}/{len(published)} final metrics bit-identical; tolerance rtol {RERUN_RTOL}")
    assert not off, f"re-run of {chosen} differs beyond rtol {RERUN_RTOL}: {off}"

