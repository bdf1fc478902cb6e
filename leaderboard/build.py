"""Build the static leaderboard site from a result store (reads Parquet only; never imports torch).

``build_site(results, out, suite=None)`` writes::

    index.html              per suite a defaults table (method configs x task variants, mean rank with its
                            bootstrap interval, "≈" between neighbours the data cannot separate) and, after
                            `vqbench tune`, a tuned table (selected parameters, sensitivity); tasks, methods
    tasks/<task>.html       every config with mean +/- 95% CI over seeds, quality + collapse metrics, Pareto plot;
                            per tuning, a robustness plot (validation metric of every trial) and the trials
    methods/<method>.html   description, citation, differences from the reference, defaults, results across tasks
    runs/<run_id>.html      spec, provenance, curves, usage histogram, spectra, the command that reproduces it
    findings.html           figures of the collapse reproductions (results/findings/<name>/)
    performance.html        `vqbench perf` measurements (results/perf/), with the ratios they are read for
    protocol.html           budgets, seeds, the convergence rule, tuning, metric definitions, rank uncertainty
    downloads.html          CSV + Parquet of every table shown (files under data/)
    assets/site.css, assets/site.js

One module writes each page (``page_index``, ``page_task`` with ``page_tuning``, ``page_method``, ``page_run``,
``page_findings``, ``page_performance``, ``page_protocol``, ``page_downloads``); they share :mod:`.context` (page frame,
links, lookups) and :mod:`.html` (escaping, number formats, cells). :mod:`.tracks` tells the defaults and
tuned tracks and the trials apart; :mod:`.ranking` and :mod:`.rank_marks` give the rank uncertainty;
:mod:`.convergence` flags the runs whose main metric had not settled.
Pages link with relative URLs only, so the folder works from ``file://`` and from any static host.
Every string that comes from a run or a plugin is HTML-escaped; no data is embedded in ``<script>``;
each page carries a Content-Security-Policy that allows only the site's own script and stylesheet,
so even a missed escape could not run an inline script. The site is built in a temporary sibling
folder and swapped into place, so a failed build never leaves a half-written site behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from vqbench.errors import UserError
from vqbench.leaderboard.context import SiteContext
from vqbench.leaderboard.data import load
from vqbench.leaderboard.page_downloads import write_downloads
from vqbench.leaderboard.page_findings import write_findings
from vqbench.leaderboard.page_index import write_index
from vqbench.leaderboard.page_method import write_method_page
from vqbench.leaderboard.page_performance import write_performance
from vqbench.leaderboard.page_protocol import write_protocol
from vqbench.leaderboard.page_run import write_run_pages
from vqbench.leaderboard.page_task import write_task_page

SITE_MARKER = ".vqbench-site"
ASSETS = Path(__file__).resolve().parent

#: seconds per phase of the last build_site call (for the benchmark and `leaderboard build`)
timings: dict[str, float] = {}


def build_site(results: str | os.PathLike[str], out: str | os.PathLike[str], suite: str | None = None) -> Path:
    """Write the whole site for the store under ``results`` into ``out``; return ``out/index.html``.

    ``suite`` restricts every page to the runs of that suite (``adhoc`` = untagged runs).
    """
    results, out = Path(results), Path(out).resolve()
    timings.clear()
    start = time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = time.perf_counter() - start - sum(timings.values())

    if not results.is_dir():
        raise UserError(f"results folder {results} does not exist: pass the folder your runs wrote to "
                        "(--results), or run `vqbench quick` first")
    data = load(results, suite)
    lap("load store")
    tmp = _prepare(out)
    try:
        site = SiteContext(data, tmp)
        (tmp / "assets").mkdir()
        for name in ("site.css", "site.js"):
            shutil.copyfile(ASSETS / name, tmp / "assets" / name)
        write_index(site)
        lap("index")
        for name in data.tasks:
            write_task_page(site, name)
        for name in data.methods:
            write_method_page(site, name)
        lap("task + method pages")
        write_run_pages(site)
        lap("run pages")
        write_findings(site, results)
        write_performance(site)
        write_protocol(site)
        write_downloads(site)
        lap("findings + downloads")
        (tmp / SITE_MARKER).write_text("built by vqbench leaderboard build; this folder is replaced on rebuild\n")
        (tmp / ".nojekyll").write_text("")  # GitHub Pages: serve files as they are
        tmp.chmod(0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap(tmp, out)
    return out / "index.html"


def _prepare(out: Path) -> Path:
    """A fresh temporary folder next to ``out``; refuses to replace a folder vqbench did not build."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder: pass another --out")
        entries = list(out.iterdir())
        legacy = [p.name for p in entries] == ["index.html"] and \
            "vqbench leaderboard" in (out / "index.html").read_text(encoding="utf-8", errors="replace")[:2000]
        if entries and not (out / SITE_MARKER).exists() and not legacy:
            raise UserError(f"--out {out} is a non-empty folder that was not built by vqbench: refusing to "
                            "replace it; pass an empty or new folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    except OSError as exc:
        raise UserError(f"cannot write the site next to {out} ({exc.strerror}): pass another --out") from None


def _swap(tmp: Path, out: Path) -> None:
    """Put the finished site ``tmp`` in place of ``out`` (the old site removed after the rename)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
