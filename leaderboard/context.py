"""What every page of one build shares: the page frame, links between pages, lookups over the configs,
and the tables offered as downloads.

:class:`PageFrame` and :class:`Links` are small and picklable: the run pages, rendered in worker
processes, receive them as explicit inputs (see :mod:`vqbench.leaderboard.page_run`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vqbench.leaderboard.convergence import STATES, Convergence, from_row, seeds_badge
from vqbench.leaderboard.data import SiteData, config_params_label, slug, variant_labels
from vqbench.leaderboard.html import escape, url
from vqbench.leaderboard.tracks import TRACK_TRIAL, TRACK_TUNED, without_lr

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'")
NAV = (("index.html#tasks", "Tasks"), ("index.html#methods", "Methods"), ("findings.html", "Findings"),
       ("performance.html", "Performance"), ("protocol.html", "Protocol"), ("downloads.html", "Downloads"))


@dataclass(frozen=True)
class PageFrame:
    """The header, footer and ``<head>`` around every page's body."""

    run_count: int
    suite_filter: str | None = None
    data_as_of: str = ""

    def render(self, title: str, body: str, root: str, script: bool = True) -> str:
        """A whole page; ``root`` is the relative path back to the site's top folder (``""`` or ``"../"``)."""
        nav = "".join(f'<a href="{root}{href}">{escape(text)}</a>' for href, text in NAV)
        scope = f" (suite {escape(self.suite_filter)} only)" if self.suite_filter else ""
        foot = (f"Built by vqbench from {self.run_count} runs{scope}"
                + (f", data as of {escape(self.data_as_of)}" if self.data_as_of else "") + ". Every value is "
                "derived from the result store; means and 95% CIs are over seeds that finished with status ok.")
        js = f'<script src="{root}assets/site.js"></script>' if script else ""
        return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<title>{escape(title)} \u2014 vqbench leaderboard</title>'
                f'<link rel="icon" href="data:,"><link rel="stylesheet" href="{root}assets/site.css"></head><body>'
                f'<header class="top"><a class="brand" href="{root}index.html">vqbench leaderboard</a>{nav}</header>'
                f'<main>{body}</main><footer>{foot}</footer>{js}</body></html>\n')


@dataclass(frozen=True)
class Links:
    """Links to the method and task pages (names without a page are shown as plain text)."""

    method_slugs: dict[str, str]
    task_slugs: dict[str, str]

    def method(self, name: str, root: str) -> str:
        """``<a>`` to a method's page, or its escaped name when it has none."""
        method_slug = self.method_slugs.get(name)
        if method_slug is None:
            return escape(name)
        return f'<a href="{url(root + "methods/" + method_slug + ".html")}">{escape(name)}</a>'

    def task(self, name: str, root: str, fragment: str = "") -> str:
        """``<a>`` to a task's page (at the element ``fragment`` when given)."""
        target = root + "tasks/" + self.task_slugs[name] + ".html" + (("#" + fragment) if fragment else "")
        return f'<a href="{url(target)}">{escape(name)}</a>'


def write_page(out: Path, relative_path: str, text: str) -> None:
    """Write one file of the site (its folder created when needed)."""
    path = out / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@dataclass(frozen=True)
class DownloadTable:
    """A table shown on a page, offered as CSV + Parquet under ``data/``."""

    stem: str
    title: str
    page: str
    frame: pd.DataFrame


@dataclass(frozen=True)
class WrittenTable:
    """A download written to disk, with its file sizes."""

    stem: str
    title: str
    page: str
    csv_bytes: int
    parquet_bytes: int


@dataclass
class DownloadTables:
    """Every table shown, kept for the downloads (CSV + Parquet under data/)."""

    items: list[DownloadTable] = field(default_factory=list)

    def add(self, stem: str, title: str, page: str, frame: pd.DataFrame, root: str) -> str:
        """Keep ``frame`` for the downloads; returns the "Download this table" line for its page."""
        self.items.append(DownloadTable(stem, title, page, frame))
        return (f'<p class="downloads">Download this table: <a href="{url(root + "data/" + stem + ".csv")}">CSV</a>'
                f' \u00b7 <a href="{url(root + "data/" + stem + ".parquet")}">Parquet</a></p>')

    def write(self, out: Path) -> list[WrittenTable]:
        """Write every kept table as ``out/data/<stem>.csv`` and ``.parquet``."""
        (out / "data").mkdir(exist_ok=True)
        written = []
        for item in self.items:
            frame = item.frame.reset_index(drop=True)
            csv_path, parquet_path = out / "data" / f"{item.stem}.csv", out / "data" / f"{item.stem}.parquet"
            frame.to_csv(csv_path, index=False)
            for column in frame.columns:  # lists/dicts -> JSON text so Parquet has one type per column
                if frame[column].dtype == object and frame[column].map(lambda v: isinstance(v, (list, dict))).any():
                    frame[column] = frame[column].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
            frame.to_parquet(parquet_path, index=False)
            written.append(WrittenTable(item.stem, item.title, item.page, csv_path.stat().st_size,
                                        parquet_path.stat().st_size))
        return written


@dataclass(frozen=True)
class ConfigRun:
    """One seed of a config, as linked from the tables."""

    run_id: str
    seed: int
    status: str


class SiteContext:
    """The store's data and the lookups the pages of one build share (built once, read by every page)."""

    def __init__(self, data: SiteData, out: Path) -> None:
        self.data = data
        self.out = out
        self.tables = DownloadTables()
        self.frame = PageFrame(len(data.runs), data.suite_filter, data.data_as_of)
        self.links = Links({name: info.slug for name, info in data.methods.items()},
                           {name: info.slug for name, info in data.tasks.items()})
        runs, configs = data.runs, data.configs
        self.run_slugs: dict[str, str] = {run_id: slug(run_id) for run_id in runs["run_id"]}
        self.config_runs: dict[str, list[ConfigRun]] = defaultdict(list)
        for key, run_id, seed, status in zip(runs["config_key"], runs["run_id"], runs["seed"], runs["status"]):
            self.config_runs[key].append(ConfigRun(run_id, int(seed), status))
        for seeds in self.config_runs.values():
            seeds.sort(key=lambda run: (run.seed, run.run_id))
        #: config key -> (seed, convergence) of its ok runs (the seeds in its mean), by seed
        self.convergence: dict[str, list[tuple[int, Convergence]]] = defaultdict(list)
        ok_runs = runs[runs["status"] == "ok"]
        columns = [c for c in ok_runs.columns if c.startswith("convergence")]
        for key, seed, record in zip(ok_runs["config_key"], ok_runs["seed"], ok_runs[columns].to_dict("records")):
            self.convergence[key].append((int(seed), from_row(record)))
        for seeds in self.convergence.values():
            seeds.sort(key=lambda item: item[0])
        self.families = sorted({info.family for info in data.methods.values()})
        self.variant_labels: dict[str, str] = {}
        for task in data.tasks.values():
            self.variant_labels.update(variant_labels(task.variants))
        self.config_rows: dict[str, dict[str, Any]] = configs.to_dict("index")
        self.params_labels: dict[str, str] = {
            key: config_params_label(row, data.methods) for key, row in
            zip(configs.index, configs[["method", "method_version", "method_params"]].to_dict("records"))}
        self._config_position = {key: i for i, key in enumerate(data.mean.index)}
        self._metric_position = {name: j for j, name in enumerate(data.mean.columns)}
        self._means = data.mean.to_numpy(dtype=float)
        self._cis = data.ci.to_numpy(dtype=float)
        self._seed_counts = data.n.to_numpy(dtype=float)
        self.variant_ranks = self._variant_ranks()

    def _variant_ranks(self) -> dict[str, tuple[float, int]]:
        """config key -> (rank by the main metric within its task variant, configs ranked there)."""
        data, configs = self.data, self.data.configs
        main = data.mean["main_value"] if "main_value" in data.mean else pd.Series(dtype=float)
        ranks: dict[str, tuple[float, int]] = {}
        # a trial is ranked nowhere; a tuned configuration among the tuned ones of its variant (lr aside: tuned)
        shown = configs[configs["track"] != TRACK_TRIAL]
        group_key = pd.Series([without_lr(v) + "\0tuned" if track == TRACK_TUNED else v
                               for v, track in zip(shown["variant_key"], shown["track"])], index=shown.index,
                              dtype=object)
        for _variant, keys in shown.groupby(group_key).groups.items():
            task = data.tasks[configs.at[keys[0], "task"]]
            values = main.reindex(keys)
            ranked = values.rank(ascending=not task.higher_is_better, method="min")
            total = int(values.notna().sum())
            for key in keys:
                ranks[key] = (float(ranked.get(key, math.nan)), total)
        return ranks

    def config_stat(self, key: str, metric: str) -> tuple[float, float, int]:
        """(mean, 95% CI half-width, ok seeds) of ``metric`` for config ``key``; NaNs and 0 when absent."""
        i, j = self._config_position.get(key), self._metric_position.get(metric)
        if i is None or j is None:
            return math.nan, math.nan, 0
        n = self._seed_counts[i, j]
        return float(self._means[i, j]), float(self._cis[i, j]), int(n) if math.isfinite(n) else 0

    def page(self, title: str, body: str, root: str, script: bool = True) -> str:
        """A whole page in this build's frame."""
        return self.frame.render(title, body, root, script)

    def write(self, relative_path: str, text: str) -> None:
        """Write one file of this build's site."""
        write_page(self.out, relative_path, text)

    def run_links(self, key: str, root: str) -> str:
        """A ``<td>`` of links to the runs (seeds) of config ``key``, coloured by status."""
        parts = []
        for run in self.config_runs.get(key, []):
            css = "" if run.status == "ok" else f' class="st-{run.status}"'
            tip = f"run {run.run_id}, seed {run.seed}: {run.status}"
            parts.append(f'<a{css} href="{url(root + "runs/" + self.run_slugs[run.run_id] + ".html")}" '
                         f'title="{escape(tip)}">s{run.seed}</a>')
        return f'<td class="runs">{"".join(parts)}</td>'

    def convergence_badge(self, key: str) -> str:
        """The convergence badge of config ``key``'s ok seeds (empty when every one converged)."""
        seeds = self.convergence.get(key)
        if not seeds:
            return ""
        task = self.data.tasks.get(self.config_rows[key]["task"])
        return seeds_badge(seeds, task.main_metric if task else "the main metric")

    def convergence_counts(self, key: str) -> dict[str, int]:
        """How many ok seeds of config ``key`` are in each convergence state."""
        counts = {state: 0 for state in STATES}
        for _, convergence in self.convergence.get(key, []):
            counts[convergence.state] += 1
        return counts

    def family_of(self, method: str, fallback: str = "other") -> str:
        """The registered family of ``method`` (``fallback`` for a method without metadata)."""
        info = self.data.methods.get(method)
        return info.family if info else fallback
