"""Shared pieces of the leaderboard tests (no tests here): a built synthetic site, an independent
recomputation of its numbers from the store, an HTML table reader and a link crawler.

The expected numbers are recomputed with pandas straight from ``vqbench.store`` (not through
``vqbench.leaderboard.data``), so a wrong aggregation in the site cannot agree with them by construction.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd

from vqbench.store import ResultStore, final_metrics

N_SYNTHETIC = 200
N_TUNING_TRIALS = 6
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # printed Student t tables, 2-sided 95%

_CACHE: dict[str, object] = {}


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A valid RGB PNG (grey pixels), written by hand."""
    raw = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_finding(results: Path, name: str, title: str, caption: str, command: str) -> Path:
    folder = results / "findings" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "figure.png").write_bytes(tiny_png())
    (folder / "data.csv").write_text("x,utilization\n0.1,0.2\n1.0,0.9\n")
    (folder / "meta.json").write_text(json.dumps({"title": title, "caption": caption, "command": command}))
    return folder


def synthetic_site(tmp_path_factory) -> tuple[Path, Path, float]:
    """(results, site, build seconds) for a 200-run synthetic store with hostile plugin strings and a
    finding; built once per test process."""
    if "site" not in _CACHE:
        from fixtures.synthetic_store import HOSTILE, generate

        from vqbench.leaderboard.build import build_site

        base = tmp_path_factory.mktemp("lb_synthetic")
        results, site = base / "results", base / "site"
        generate(results, N_SYNTHETIC, seed=3, workers=1, hostile=True)
        write_finding(results, "tokens-collapse", f"Tokens collapse {HOSTILE}", "caption <b>not bold</b>",
                      "vqbench reproduce tokens-collapse")
        t0 = time.perf_counter()
        build_site(results, site)
        _CACHE["site"] = (results, site, time.perf_counter() - t0)
    return _CACHE["site"]  # type: ignore[return-value]


def tuned_site(tmp_path_factory) -> tuple[Path, Path]:
    """(results, site) for a synthetic store with a tuning of the quick suite (N_TUNING_TRIALS trials per
    task and method, hostile plugin strings included); built once per test process."""
    if "tuned" not in _CACHE:
        from fixtures.synthetic_store import generate

        from vqbench.leaderboard.build import build_site

        base = tmp_path_factory.mktemp("lb_tuned")
        results, site = base / "results", base / "site"
        generate(results, 120, seed=3, workers=1, hostile=True, tuning_trials=N_TUNING_TRIALS)
        build_site(results, site)
        _CACHE["tuned"] = (results, site)
    return _CACHE["tuned"]  # type: ignore[return-value]


# -- independent recomputation ---------------------------------------------------------------------
CONFIG_COLS = ["task", "task_version", "task_params", "budget", "method", "method_version", "method_params"]


def store_table(results: Path) -> pd.DataFrame:
    store = ResultStore(results)
    runs = store.load_runs()
    return final_metrics(runs, store.load_metrics())


def suites(tags) -> list[str]:
    names = [t[6:] for t in (list(tags) if tags is not None else []) if t.startswith("suite:") and len(t) > 6]
    return sorted(set(names)) or ["adhoc"]


def expected_configs(table: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Per config: mean, 95% t half-width and n over ok seeds of ``metric`` (default: the task's main)."""
    rows = []
    for key, group in table.groupby(CONFIG_COLS):
        ok = group[group["status"] == "ok"]
        name = metric or group["main_metric"].iloc[0]
        col = f"metric.{name}"
        values = ok[col].to_numpy(dtype=float) if col in ok else np.array([])
        values = values[np.isfinite(values)]
        n = len(values)
        mean = values.mean() if n else math.nan
        half = T975[n - 1] * values.std(ddof=1) / math.sqrt(n) if 2 <= n <= 6 else math.nan
        rows.append(dict(zip(CONFIG_COLS, key), mean=mean, ci=half, n=n, n_runs=len(group),
                         n_not_ok=int((group["status"] != "ok").sum())))
    return pd.DataFrame(rows)


# -- reading the built HTML -------------------------------------------------------------------------
class _Tables(HTMLParser):
    """Collects every <table id=...>: header texts and rows of cells (attrs + text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self.current: dict | None = None
        self.row: dict | None = None
        self.cell: dict | None = None
        self.in_head = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self.current = {"head": [], "rows": []}
            self.tables[a["id"]] = self.current
        elif self.current is None:
            return
        elif tag == "thead":
            self.in_head = True
        elif tag == "tbody":
            self.in_head = False
        elif tag == "tr":
            self.row = {"attrs": a, "cells": []}
        elif tag in ("td", "th") and self.row is not None:
            self.cell = {"attrs": a, "text": "", "links": []}
        elif tag == "a" and self.cell is not None:
            self.cell["links"].append(a.get("href", ""))

    def handle_endtag(self, tag):
        if self.current is None:
            return
        if tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.row["cells"].append(self.cell)
            self.cell = None
        elif tag == "tr" and self.row is not None:
            if self.in_head:
                self.current["head"] = [c["text"].strip() for c in self.row["cells"]]
            else:
                self.current["rows"].append(self.row)
            self.row = None
        elif tag == "table":
            self.current = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data


def read_tables(path: Path) -> dict[str, dict]:
    parser = _Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.tables


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []  # (tag.attr, url)
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        for attr in ("href", "src"):
            if a.get(attr) is not None:
                self.links.append((f"{tag}.{attr}", a[attr]))


def parse_page(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def crawl(site: Path, pages: list[Path] | None = None) -> tuple[int, list[str]]:
    """Follow every link of ``pages`` (default: every page of ``site``): (internal links checked, problems).
    A link must resolve to a file inside the site and its fragment to an element id of that page."""
    site = site.resolve()
    parsed: dict[Path, _Links] = {}

    def parse(path: Path) -> _Links:
        if path not in parsed:
            parsed[path] = parse_page(path)
        return parsed[path]

    problems, checked = [], 0
    for page in [p.resolve() for p in (pages if pages is not None else site.rglob("*.html"))]:
        for where, link in parse(page).links:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https"):
                if not link.startswith("https://arxiv.org/abs/"):
                    problems.append(f"{page}: unexpected external link {link}")
                continue
            if link == "data:,":  # the empty favicon (stops a favicon request)
                continue
            if parts.scheme or parts.netloc:
                problems.append(f"{page}: non-relative link {link}")
                continue
            checked += 1
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if site not in target.parents or not target.is_file():
                problems.append(f"{page}: {where} -> {link}: missing file (or outside the site)")
                continue
            if parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parse(target).ids:
                problems.append(f"{page}: {where} -> {link}: no element with id {parts.fragment!r}")
    return checked, problems
