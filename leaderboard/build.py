"""Build the static leaderboard site from a result store (reads Parquet only; never imports torch).

``build_site(results, out, suite=None)`` writes::

    index.html              one table per suite (method configs x task variants, mean rank), tasks, methods
    tasks/<task>.html       every config with mean +/- 95% CI over seeds, quality + collapse metrics, Pareto plot
    methods/<method>.html   description, citation, defaults, results across tasks
    runs/<run_id>.html      spec, provenance, curves, usage histogram, spectra, the command that reproduces it
    findings.html           figures of the collapse reproductions (results/findings/<name>/)
    performance.html        `vqbench perf` measurements (results/perf/), with the ratios they are read for
    downloads.html          CSV + Parquet of every table shown (files under data/)
    assets/site.css, assets/site.js

Pages link with relative URLs only, so the folder works from ``file://`` and from any static host.
Every string that comes from a run or a plugin is HTML-escaped; no data is embedded in ``<script>``;
each page carries a Content-Security-Policy that allows only the site's own script and stylesheet,
so even a missed escape could not run an inline script. The site is built in a temporary sibling
folder and swapped into place, so a failed build never leaves a half-written site behind.
"""

from __future__ import annotations

import html
import json
import math
import multiprocessing as mp
import os
import shlex
import shutil
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from vqbench.errors import UserError
from vqbench.leaderboard import svg
from vqbench.leaderboard.data import (
    ADHOC,
    COLLAPSE_METRICS,
    SiteData,
    config_params_label,
    load,
    metric_direction,
    natural_key,
    parse_json,
    slug,
    variant_labels,
)
from vqbench.leaderboard.load import _SCHEMAS as PERF_KINDS
from vqbench.leaderboard.load import read_tables, store_files
from vqbench.leaderboard.stats import ci_halfwidth

SITE_MARKER = ".vqbench-site"
ASSETS = Path(__file__).resolve().parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'")
RUN_CHUNK = 500  # runs whose arrays are read and pages written together
CHART_METRICS = ("utilization", "perplexity", "codebook_rank", "embedding_rank")


# -- small helpers --------------------------------------------------------------------------------
_ESCAPED: dict[str, str] = {}


def e(value: Any) -> str:
    """HTML-escape anything for text or a quoted attribute (memoised: names and labels repeat a lot)."""
    text = value if isinstance(value, str) else str(value)
    out = _ESCAPED.get(text)
    if out is None:
        out = html.escape(text, quote=True)
        if len(_ESCAPED) < 200_000 and len(text) < 200:
            _ESCAPED[text] = out
    return out


def url(path: str) -> str:
    """A relative URL (percent-encoded, fragment kept), escaped for an attribute."""
    base, sep, frag = path.partition("#")
    return e(quote(base, safe="/._-~") + (sep + quote(frag, safe="._-~") if sep else ""))


def finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value))


def fmt(value: Any) -> str:
    """Four significant digits, thousands grouped for large values; empty for missing."""
    if not finite(value):
        return ""
    v = float(value)
    if v == 0:
        return "0"
    if abs(v) >= 1e4 and abs(v) < 1e12:
        return f"{v:,.0f}"
    if abs(v) < 1e-3:
        return f"{v:.3e}"
    return f"{v:.4g}"


def fmt_ci(value: Any) -> str:
    """Two significant digits, never in exponent form for values of 100 and more."""
    if not finite(value):
        return ""
    v = float(f"{float(value):.2g}")
    return f"{v:,.0f}" if 100 <= abs(v) < 1e12 else f"{v:.2g}"


def datav(value: Any) -> str:
    return repr(float(value)) if finite(value) else ""


def arrow(higher: bool | None) -> str:
    if higher is None:
        return ""
    return ('<span class="dir" title="higher is better">\u2191</span>' if higher else
            '<span class="dir" title="lower is better">\u2193</span>')


def status_badges(counts: dict[str, int], skip_ok: bool = True) -> str:
    out = []
    for status in ("ok", "diverged", "failed", "timeout"):
        k = int(counts.get(status, 0))
        if k and not (skip_ok and status == "ok"):
            out.append(f'<span class="badge st-{status}" title="{k} run(s) {status}">{k} {status}</span>')
    return "".join(out)


def stat_cell(mean: float, ci: float, n: int, *, href: str | None = None, show_n: bool = True,
              extra: str = "", n_expected: int | None = None) -> str:
    if not finite(mean):
        return f'<td class="num missing" data-v="">\u2014{extra}</td>'
    text = fmt(mean)
    if href:
        text = f'<a href="{url(href)}">{text}</a>'
    ci_html = f'<span class="ci" title="95% confidence interval half-width over {n} seeds">\u00b1{fmt_ci(ci)}</span>' \
        if finite(ci) else ""
    if show_n or (n_expected is not None and n != n_expected):
        n_html = f'<span class="n" title="{n} ok seed(s) with a finite value">n={n}</span>'
    else:
        n_html = ""
    return f'<td class="num" data-v="{datav(mean)}">{text}{ci_html}{n_html}{extra}</td>'


class Tables:
    """Every table shown, kept for the downloads (CSV + Parquet under data/)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, pd.DataFrame]] = []  # (file stem, title, page, frame)

    def add(self, stem: str, title: str, page: str, frame: pd.DataFrame, root: str) -> str:
        self.items.append((stem, title, page, frame))
        return (f'<p class="downloads">Download this table: <a href="{url(root + "data/" + stem + ".csv")}">CSV</a>'
                f' \u00b7 <a href="{url(root + "data/" + stem + ".parquet")}">Parquet</a></p>')

    def write(self, out: Path) -> list[tuple[str, str, str, int, int]]:
        (out / "data").mkdir(exist_ok=True)
        written = []
        for stem, title, page, frame in self.items:
            frame = frame.reset_index(drop=True)
            csv_path, pq_path = out / "data" / f"{stem}.csv", out / "data" / f"{stem}.parquet"
            frame.to_csv(csv_path, index=False)
            for col in frame.columns:  # lists/dicts -> JSON text so Parquet has one type per column
                if frame[col].dtype == object and frame[col].map(lambda v: isinstance(v, (list, dict))).any():
                    frame[col] = frame[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
            frame.to_parquet(pq_path, index=False)
            written.append((stem, title, page, csv_path.stat().st_size, pq_path.stat().st_size))
        return written


class Site:
    """Page rendering for one build."""

    def __init__(self, data: SiteData, out: Path) -> None:
        self.data = data
        self.out = out
        self.tables = Tables()
        runs = data.runs
        self.run_slug = {rid: slug(rid) for rid in runs["run_id"]}
        self.config_runs: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
        for key, rid, seed, status in zip(runs["config_key"], runs["run_id"], runs["seed"], runs["status"]):
            self.config_runs[key].append((rid, int(seed), status))
        for lst in self.config_runs.values():
            lst.sort(key=lambda t: (t[1], t[0]))
        self.families = sorted({m.family for m in data.methods.values()})
        self.variant_label_all = {}
        for task in data.tasks.values():
            self.variant_label_all.update(variant_labels(task.variants))
        configs = data.configs
        self.cfg: dict[str, dict[str, Any]] = configs.to_dict("index")
        self.key_pos = {k: i for i, k in enumerate(data.mean.index)}
        self.metric_pos = {m: j for j, m in enumerate(data.mean.columns)}
        self.M = data.mean.to_numpy(dtype=float)
        self.C = data.ci.to_numpy(dtype=float)
        self.N = data.n.to_numpy(dtype=float)
        self.params_label = {key: config_params_label(row, data.methods) for key, row in
                             zip(configs.index, configs[["method", "method_version", "method_params"]]
                                 .to_dict("records"))}
        # rank of each config within its task variant by the main metric
        main = data.mean["main_value"] if "main_value" in data.mean else pd.Series(dtype=float)
        self.variant_rank: dict[str, tuple[float, int]] = {}
        for _vk, keys in configs.groupby("variant_key").groups.items():
            task = data.tasks[configs.at[keys[0], "task"]]
            vals = main.reindex(keys)
            ranks = vals.rank(ascending=not task.higher_is_better, method="min")
            total = int(vals.notna().sum())
            for key in keys:
                self.variant_rank[key] = (float(ranks.get(key, math.nan)), total)

    # -- page frame -------------------------------------------------------------------------------
    def page(self, title: str, body: str, root: str, script: bool = True) -> str:
        d = self.data
        nav = "".join(f'<a href="{root}{h}">{e(t)}</a>' for h, t in (
            ("index.html#tasks", "Tasks"), ("index.html#methods", "Methods"), ("findings.html", "Findings"),
            ("performance.html", "Performance"), ("downloads.html", "Downloads")))
        scope = f" (suite {e(d.suite_filter)} only)" if d.suite_filter else ""
        foot = (f"Built by vqbench from {len(d.runs)} runs{scope}"
                + (f", data as of {e(d.data_as_of)}" if d.data_as_of else "") + ". Every value is derived from "
                "the result store; means and 95% CIs are over seeds that finished with status ok.")
        js = f'<script src="{root}assets/site.js"></script>' if script else ""
        return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<title>{e(title)} \u2014 vqbench leaderboard</title>'
                f'<link rel="icon" href="data:,"><link rel="stylesheet" href="{root}assets/site.css"></head><body>'
                f'<header class="top"><a class="brand" href="{root}index.html">vqbench leaderboard</a>{nav}</header>'
                f'<main>{body}</main><footer>{foot}</footer>{js}</body></html>\n')

    def write(self, rel: str, text: str) -> None:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def filters(self, table_id: str, families: list[str], label: str = "family") -> str:
        options = "".join(f'<option value="{e(f)}">{e(f)}</option>' for f in families)
        return (f'<div class="filters" data-table="{e(table_id)}"><label>{e(label.capitalize())} '
                f'<select aria-label="{e(label)}"><option value="">all</option>{options}</select></label>'
                f'<label>Search <input type="search" placeholder="method, params, suite\u2026" '
                f'aria-label="search rows"></label><span class="count" aria-live="polite"></span></div>')

    def method_link(self, name: str, root: str) -> str:
        info = self.data.methods.get(name)
        if info is None:
            return e(name)
        return f'<a href="{url(root + "methods/" + info.slug + ".html")}">{e(name)}</a>'

    def task_link(self, name: str, root: str, frag: str = "") -> str:
        info = self.data.tasks[name]
        return f'<a href="{url(root + "tasks/" + info.slug + ".html" + (("#" + frag) if frag else ""))}">{e(name)}</a>'

    def run_links(self, key: str, root: str) -> str:
        parts = []
        for rid, seed, status in self.config_runs.get(key, []):
            cls = "" if status == "ok" else f' class="st-{status}"'
            tip = f"run {rid}, seed {seed}: {status}"
            parts.append(f'<a{cls} href="{url(root + "runs/" + self.run_slug[rid] + ".html")}" '
                         f'title="{e(tip)}">s{seed}</a>')
        return f'<td class="runs">{"".join(parts)}</td>'

    # -- index -----------------------------------------------------------------------------------
    def suite_section(self, suite: str) -> str:
        d = self.data
        runs = d.runs[[suite in ss for ss in d.runs["suites"]]]
        ok = runs[runs["status"] == "ok"]
        grouped = ok.groupby("config_key")["main_value"]
        mean, std, n = grouped.mean(), grouped.std(ddof=1), grouped.count()
        ci = pd.Series(ci_halfwidth(std.to_numpy(), n.to_numpy()), index=std.index)
        counts = pd.crosstab(runs["config_key"], runs["status"]).to_dict("index")
        mean_d, n_d, ci_d = mean.to_dict(), n.to_dict(), ci.to_dict()
        # columns: task variants; rows: method configs
        variants = runs.drop_duplicates("variant_key")[["variant_key", "task"]]
        labels: dict[str, str] = {}
        for _task, group in variants.groupby("task"):
            labels.update(variant_labels(list(group["variant_key"])))
        columns = sorted(variants.itertuples(index=False), key=lambda v: (v.task, natural_key(labels[v.variant_key])))
        runs = runs.assign(mconf=[json.dumps([m, int(v), p]) for m, v, p in
                                  zip(runs["method"], runs["method_version"], runs["method_params"])])
        cells = dict(zip(zip(runs["mconf"], runs["variant_key"]), runs["config_key"]))
        mconfs = runs.drop_duplicates("mconf")[["mconf", "config_key", "method", "method_family"]]
        matrix = pd.DataFrame(math.nan, index=list(mconfs["mconf"]), columns=[c.variant_key for c in columns])
        row_pos = {mc: i for i, mc in enumerate(matrix.index)}
        col_pos = {vk: j for j, vk in enumerate(matrix.columns)}
        values = matrix.to_numpy(copy=True)
        for (mc, vk), key in cells.items():
            if key in mean_d:
                values[row_pos[mc], col_pos[vk]] = mean_d[key]
        matrix = pd.DataFrame(values, index=matrix.index, columns=matrix.columns)
        complete = matrix.notna().all(axis=1) if len(matrix.columns) else pd.Series(False, index=matrix.index)
        ranks = pd.DataFrame(math.nan, index=matrix.index, columns=matrix.columns)
        for c in columns:
            higher = d.tasks[c.task].higher_is_better
            ranks[c.variant_key] = matrix.loc[complete, c.variant_key].rank(ascending=not higher, method="average")
        mean_rank = ranks.mean(axis=1).where(complete)
        n_cols = len(columns)
        order = sorted(mconfs.itertuples(index=False), key=lambda r: (
            not complete[r.mconf], mean_rank[r.mconf] if complete[r.mconf] else -matrix.loc[r.mconf].notna().sum(),
            r.method, r.mconf))
        table_id = f"suite-{slug(suite)}-table"
        head = ['<th>Method</th><th>Family</th><th>Params</th>']
        for c in columns:
            task = d.tasks[c.task]
            lab = labels[c.variant_key]
            head.append(f'<th class="num" data-type="num" title="{e(task.main_metric)} on {e(c.task)} {e(lab)}">'
                        f'{self.task_link(c.task, "")}{"<br><small>" + e(lab) + "</small>" if lab else ""}'
                        f'<br><small>{e(task.main_metric)} {arrow(task.higher_is_better)}</small></th>')
        head.append('<th class="num" data-type="num" title="mean rank over the suite\'s tasks (complete rows only)">'
                    'Mean rank</th><th class="num" data-type="num">Tasks done</th>')
        body, records = [], []
        for r in order:
            params = parse_json(json.loads(r.mconf)[2])
            info = d.methods.get(r.method)
            plabel = self.params_label.get(r.config_key, "")
            row_cells, present, missing = [], 0, []
            rec: dict[str, Any] = {"suite": suite, "method": r.method, "family": r.method_family,
                                   "method_params": json.dumps(params, sort_keys=True), "params_label": plabel}
            for c in columns:
                key = cells.get((r.mconf, c.variant_key))
                col_name = c.task + (f" [{labels[c.variant_key]}]" if labels[c.variant_key] else "")
                cnt = counts.get(key, {}) if key is not None else {}
                m = float(mean_d.get(key, math.nan))
                k = int(n_d.get(key, 0))
                h = float(ci_d.get(key, math.nan))
                if finite(m):
                    present += 1
                else:
                    missing.append(col_name)
                rid = self.cfg[key]["row_id"] if key is not None else ""
                href = f"tasks/{d.tasks[c.task].slug}.html#{rid}" if key is not None else None
                row_cells.append(stat_cell(m, h, k, href=href, extra=status_badges(cnt)))
                rec.update({f"{col_name} mean": m, f"{col_name} ci95": h, f"{col_name} n_seeds": k,
                            f"{col_name} n_not_ok": int(sum(v for s, v in cnt.items() if s != "ok"))})
            is_complete = bool(complete[r.mconf])
            mr = float(mean_rank[r.mconf]) if is_complete else math.nan
            rec.update({"complete": is_complete, "mean_rank": mr, "tasks_done": present, "tasks_total": n_cols})
            records.append(rec)
            flag = "" if is_complete else (f'<span class="badge incomplete" title="missing: {e("; ".join(missing))}">'
                                           f'incomplete</span>')
            agg = (f'<td class="num" data-v="{datav(mr)}">{fmt(mr)}</td>' if is_complete else
                   f'<td class="num incomplete" data-v="" title="not ranked: missing {e("; ".join(missing))}">'
                   f'\u2014</td>')
            fam = info.family if info else r.method_family
            body.append(f'<tr data-family="{e(fam)}" class="{"" if is_complete else "is-incomplete"}">'
                        f'<td>{self.method_link(r.method, "")}{flag}</td><td>{e(fam)}</td>'
                        f'<td class="params">{e(plabel)}</td>{"".join(row_cells)}{agg}'
                        f'<td class="num" data-v="{present}">{present}/{n_cols}</td></tr>')
        st = runs["status"].value_counts().to_dict()
        families = sorted({(d.methods[m].family if m in d.methods else "other") for m in mconfs["method"]})
        dl = self.tables.add(f"suite-{slug(suite)}", f"Suite {suite}", "index.html", pd.DataFrame(records), "")
        what = ("Runs without a <code>suite:NAME</code> tag (single runs, exploration): not a designed set of "
                "tasks, so this matrix is usually sparse; the task pages compare every configuration."
                if suite == ADHOC else f"Runs tagged <code>suite:{e(suite)}</code>.")
        summary = (f'{len(runs)} runs {status_badges(st, skip_ok=False)}; {len(order)} method configurations '
                   f'\u00d7 {n_cols} task column(s); {int(complete.sum())} complete, {int((~complete).sum())} '
                   'incomplete.')
        table = (f'{self.filters(table_id, families)}<div class="scroll"><table class="sortable" '
                 f'id="{e(table_id)}"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table>'
                 f'</div>{dl}')
        if suite == ADHOC and len(d.suites) > 1:  # folded away behind the designed suites
            table = f'<details><summary>Show the ad-hoc matrix ({summary})</summary>{table}</details>'
        return (f'<section id="suite-{e(slug(suite))}"><h2>Suite {e(suite)}</h2>'
                f'<p class="note">{what} {summary}</p>{table}</section>')

    def index(self) -> None:
        d = self.data
        parts = ['<h1>vqbench leaderboard</h1>',
                 '<p class="lead">Methods that prevent representation collapse in vector quantization, '
                 'compared on the benchmark\'s tasks. Every number is derived from the result store.</p>']
        if d.runs.empty:
            parts.append('<p>No runs in this results folder yet. Run <code>vqbench quick</code> (or '
                         '<code>vqbench run --task gmm --method vq</code>) and build again.</p>')
        else:
            parts.append(
                f'<p class="note">{len(d.runs)} runs {status_badges(d.status_counts, skip_ok=False)}. '
                'How to read a suite table: one row per method configuration (registered name + parameters; '
                'parameters shown where they differ from the method\'s defaults), one column per task '
                '(with its parameters where the suite has several variants) showing the task\'s main metric '
                '(\u2191 higher is better, \u2193 lower is better) as <b>mean</b> <span class="ci">\u00b1 95% CI'
                '</span> <span class="n">n = seeds</span> over the seeds that finished with status ok '
                '(Student t interval, t(0.975, n\u22121)\u00b7s/\u221an; no interval for one seed). Diverged, '
                'failed and timed-out runs never enter a mean; they are counted in red/amber badges in their cell.'
                '</p><p class="note"><b>Mean rank</b> (the aggregate column): within each task column the '
                '<i>complete</i> rows are ranked by the column\'s mean (1 = best; ties share the average rank); '
                'a row\'s mean rank is the average of its ranks over all the suite\'s task columns. '
                'A row missing any column (no ok seed there) is flagged <span class="badge incomplete">incomplete'
                '</span>, gets no mean rank, and is listed after the complete rows: missing results are never '
                'averaged away. Click a number to see the configuration on its task page; click a column header '
                'to sort.</p>')
            if len(d.suites) > 1:
                parts.append('<p>Suites: ' + " \u00b7 ".join(f'<a href="#suite-{url(slug(s))}">{e(s)}</a>'
                                                               for s in d.suites) + "</p>")
            for suite in d.suites:
                parts.append(self.suite_section(suite))
        parts.append(self.tasks_section())
        parts.append(self.methods_section())
        self.write("index.html", self.page("Leaderboard", "".join(parts), ""))

    def tasks_section(self) -> str:
        rows, recs = [], []
        for t in self.data.tasks.values():
            rows.append(f'<tr><td>{self.task_link(t.name, "")}</td><td>{e(t.kind)}</td>'
                        f'<td>{e(t.main_metric)} {arrow(t.higher_is_better)}</td><td>{e(t.description)}</td>'
                        f'<td class="num" data-v="{len(t.variants)}">{len(t.variants)}</td>'
                        f'<td class="num" data-v="{t.n_runs}">{t.n_runs}</td><td>{e(t.source)}</td></tr>')
            recs.append({"task": t.name, "kind": t.kind, "main_metric": t.main_metric,
                         "higher_is_better": t.higher_is_better, "description": t.description,
                         "variants": len(t.variants), "runs": t.n_runs, "source": t.source})
        dl = self.tables.add("tasks", "Tasks", "index.html#tasks", pd.DataFrame(recs), "")
        return ('<section id="tasks"><h2>Tasks</h2><div class="scroll"><table class="sortable" id="tasks-table">'
                '<thead><tr><th>Task</th><th>Kind</th><th>Main metric</th><th>Description</th>'
                '<th class="num" data-type="num">Variants</th><th class="num" data-type="num">Runs</th>'
                f'<th>Source</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>{dl}</section>')

    def paper_link(self, paper: str) -> str:
        if not paper:
            return ""
        return (f'<a href="https://arxiv.org/abs/{e(quote(paper, safe="./"))}" rel="noopener noreferrer">'
                f'arXiv:{e(paper)}</a>')

    def methods_section(self) -> str:
        rows, recs = [], []
        for m in self.data.methods.values():
            rows.append(f'<tr data-family="{e(m.family)}"><td>{self.method_link(m.name, "")}</td><td>{e(m.family)}</td>'
                        f'<td>{self.paper_link(m.paper)}</td><td>{e(m.description)}</td>'
                        f'<td class="num" data-v="{m.n_runs}">{m.n_runs}</td><td>{e(m.source)}</td></tr>')
            recs.append({"method": m.name, "family": m.family, "paper": m.paper, "description": m.description,
                         "defaults": json.dumps(m.defaults, sort_keys=True), "runs": m.n_runs, "source": m.source})
        dl = self.tables.add("methods", "Methods", "index.html#methods", pd.DataFrame(recs), "")
        return ('<section id="methods"><h2>Methods</h2>' + self.filters("methods-table", self.families) +
                '<div class="scroll"><table class="sortable" id="methods-table"><thead><tr><th>Method</th>'
                '<th>Family</th><th>Paper</th><th>Description</th><th class="num" data-type="num">Runs</th>'
                f'<th>Source</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>{dl}</section>')

    # -- task pages --------------------------------------------------------------------------------
    def task_page(self, name: str) -> None:
        d = self.data
        task = d.tasks[name]
        root = "../"
        configs = d.configs[d.configs["task"] == name]
        keys = list(configs.index)
        metrics = task.metrics
        mean = d.mean.reindex(index=keys, columns=metrics).to_numpy(dtype=float)
        ci = d.ci.reindex(index=keys, columns=metrics).to_numpy(dtype=float)
        nn = d.n.reindex(index=keys, columns=metrics).fillna(0).to_numpy(dtype=int)
        multi_variant = len(task.variants) > 1
        # default order: best main metric first, missing last
        main_idx = metrics.index(task.main_metric) if task.main_metric in metrics else None
        if main_idx is not None:
            vals = mean[:, main_idx]
            order = np.argsort(np.where(np.isfinite(vals), vals if not task.higher_is_better else -vals, np.inf),
                               kind="stable")
        else:
            order = np.arange(len(keys))
        head = ["<th>Method</th><th>Family</th><th>Params</th>"]
        if multi_variant:
            head.append("<th>Task variant</th>")
        head.append('<th>Suites</th><th class="num" data-type="num" title="ok seeds / runs">Seeds</th>')
        for i, m in enumerate(metrics):
            group = "main metric" if i == main_idx else ("collapse" if m in COLLAPSE_METRICS else "quality")
            higher = task.higher_is_better if i == main_idx else metric_direction(m)
            cls = "num main" if i == main_idx else "num"
            head.append(f'<th class="{cls}" data-type="num" title="{e(group)}">{e(m)} {arrow(higher)}'
                        f'<br><small>{e(group)}</small></th>')
        head.append('<th class="nosort">Runs (seeds)</th>')
        rows, recs, points = [], [], []
        for i in order:
            key = keys[i]
            c = self.cfg[key]
            counts = {s: int(c[f"n_{s}"]) for s in ("ok", "diverged", "failed", "timeout")}
            fam = d.methods[c["method"]].family if c["method"] in d.methods else str(c["method_family"])
            plabel = self.params_label[key]
            vlabel = self.variant_label_all.get(c["variant_key"], "")
            suites = ", ".join(c["suites"])
            cells = []
            for j in range(len(metrics)):
                cells.append(stat_cell(mean[i, j], ci[i, j], int(nn[i, j]), show_n=False, n_expected=counts["ok"]))
            n_ok, n_all = counts["ok"], int(c["n_runs"])
            seeds = (f'<td class="num" data-v="{n_ok}" title="{n_ok} ok of {n_all} runs">{n_ok}/{n_all}'
                     f'{status_badges(counts)}</td>')
            rows.append(f'<tr id="{e(c["row_id"])}" data-family="{e(fam)}"><td>{self.method_link(c["method"], root)}'
                        f'</td><td>{e(fam)}</td><td class="params">{e(plabel)}</td>'
                        + (f'<td class="params">{e(vlabel)}</td>' if multi_variant else "")
                        + f'<td>{e(suites)}</td>{seeds}{"".join(cells)}{self.run_links(key, root)}</tr>')
            rec = {"task": name, "method": c["method"], "family": fam, "method_params": c["method_params"],
                   "params_label": plabel, "task_params": c["task_params"], "budget": c["budget"],
                   "variant_label": vlabel, "suites": suites, "n_ok": n_ok, "n_runs": n_all,
                   **{f"n_{s}": counts[s] for s in ("diverged", "failed", "timeout")}}
            for j, m in enumerate(metrics):
                rec[f"{m} mean"], rec[f"{m} ci95"], rec[f"{m} n"] = mean[i, j], ci[i, j], int(nn[i, j])
            recs.append(rec)
            if "utilization" in metrics and main_idx is not None:
                points.append({"x": mean[i, metrics.index("utilization")], "y": mean[i, main_idx],
                               "label": f'{c["method"]} ({plabel}{"; " + vlabel if vlabel else ""})',
                               "family": fam, "href": f'#{c["row_id"]}', "row": c["row_id"]})
        table_id = "task-table"
        families = sorted({p for p in (d.methods[m].family if m in d.methods else "other"
                                       for m in configs["method"])})
        dl = self.tables.add(f"task-{task.slug}", f"Task {name}", f"tasks/{task.slug}.html", pd.DataFrame(recs), root)
        parts = [f'<h1>Task: {e(name)}</h1>', f'<p class="lead">{e(task.description)}</p>',
                 '<dl class="meta">'
                 f'<dt>Kind</dt><dd>{e(task.kind)}</dd>'
                 f'<dt>Main metric</dt><dd>{e(task.main_metric)} ({"higher" if task.higher_is_better else "lower"}'
                 ' is better)</dd>'
                 f'<dt>Source</dt><dd>{e(task.source)}</dd>'
                 f'<dt>Runs</dt><dd>{task.n_runs} in {len(keys)} configurations, {len(task.variants)} variant(s)</dd>'
                 '</dl>']
        if multi_variant:
            vrows = "".join(f'<tr><td>{e(self.variant_label_all.get(vk, ""))}</td>'
                            f'<td><code>{e(json.loads(vk)[2])}</code></td><td><code>{e(json.loads(vk)[3])}</code>'
                            f'</td></tr>' for vk in sorted(task.variants, key=lambda v: natural_key(
                                self.variant_label_all.get(v, ""))))
            parts.append('<details><summary>Task variants (parameters and budgets)</summary><div class="scroll">'
                         '<table><thead><tr><th>Variant</th><th>Task params</th><th>Budget</th></tr></thead>'
                         f'<tbody>{vrows}</tbody></table></div></details>')
        if points:
            parts.append('<h2>Codebook utilization vs main metric</h2><p class="note">One point per row of the table '
                         'below (mean over ok seeds); colour = method family; outlined points are on the Pareto '
                         'front (no other row has both higher utilization and a better main metric). The y axis is '
                         'oriented so that better is up. Click a point to jump to its row.</p>')
            parts.append(svg.pareto_chart(points, "utilization", task.main_metric, task.higher_is_better,
                                          families, f"{name}: utilization vs {task.main_metric}"))
        parts.append('<h2>All configurations</h2><p class="note">Each cell: mean over the ok seeds '
                     '<span class="ci">\u00b1 95% CI half-width</span> (n shown where fewer seeds than the row\'s have '
                     'a value). Final values are taken at each run\'s last eval step. Click a header to sort; filter '
                     'by family or search any text.</p>')
        parts.append(self.filters(table_id, families))
        parts.append(f'<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>{"".join(head)}</tr>'
                     f'</thead><tbody>{"".join(rows)}</tbody></table></div>{dl}')
        self.write(f"tasks/{task.slug}.html", self.page(f"Task {name}", "".join(parts), root))

    # -- method pages -----------------------------------------------------------------------------
    def method_page(self, name: str) -> None:
        d = self.data
        info = d.methods[name]
        root = "../"
        configs = d.configs[d.configs["method"] == name]
        rows, recs = [], []
        for key in configs.sort_values(["task", "variant_key", "method_params"]).index:
            c = self.cfg[key]
            task = d.tasks[c["task"]]
            main, util, perp = (self._cell(key, m) for m in ("main_value", "utilization", "perplexity"))
            rank, total = self.variant_rank.get(key, (math.nan, 0))
            counts = {s: int(c[f"n_{s}"]) for s in ("ok", "diverged", "failed", "timeout")}
            vlabel = self.variant_label_all.get(c["variant_key"], "")
            rows.append(f'<tr data-family="{e(info.family)}"><td>{self.task_link(c["task"], root, c["row_id"])}</td>'
                        f'<td class="params">{e(vlabel)}</td><td class="params">{e(self.params_label[key])}</td>'
                        f'<td>{e(", ".join(c["suites"]))}</td>'
                        f'<td class="num" data-v="{counts["ok"]}">{counts["ok"]}/{int(c["n_runs"])}'
                        f'{status_badges(counts)}</td><td>{e(task.main_metric)} {arrow(task.higher_is_better)}</td>'
                        + stat_cell(*main, show_n=False) + stat_cell(*util, show_n=False)
                        + stat_cell(*perp, show_n=False)
                        + (f'<td class="num" data-v="{datav(rank)}">{int(rank)} of {total}</td>' if finite(rank)
                           else '<td class="num missing" data-v="">\u2014</td>')
                        + self.run_links(key, root) + "</tr>")
            recs.append({"method": name, "task": c["task"], "variant_label": vlabel, "task_params": c["task_params"],
                         "method_params": c["method_params"], "params_label": self.params_label[key],
                         "suites": ", ".join(c["suites"]), "n_ok": counts["ok"], "n_runs": int(c["n_runs"]),
                         "main_metric": task.main_metric, "main mean": main[0], "main ci95": main[1],
                         "utilization mean": util[0], "utilization ci95": util[1], "perplexity mean": perp[0],
                         "perplexity ci95": perp[1], "rank_in_variant": rank, "configs_in_variant": total})
        defaults = "".join(f"<tr><td><code>{e(k)}</code></td><td><code>{e(json.dumps(v))}</code></td></tr>"
                           for k, v in sorted(info.defaults.items()))
        dl = self.tables.add(f"method-{info.slug}", f"Method {name}", f"methods/{info.slug}.html",
                             pd.DataFrame(recs), root)
        parts = [f'<h1>Method: {e(name)}</h1>', f'<p class="lead">{e(info.description)}</p>', '<dl class="meta">',
                 f'<dt>Family</dt><dd>{e(info.family)}</dd>',
                 f'<dt>Paper</dt><dd>{self.paper_link(info.paper) or "not given"}</dd>',
                 f'<dt>Source</dt><dd>{e(info.source)}'
                 + (' (plugin)' if info.source and info.source != "vqbench" else "") + '</dd>',
                 f'<dt>Version(s)</dt><dd>{e(", ".join(str(v) for v in info.versions))}</dd>',
                 f'<dt>Runs</dt><dd>{info.n_runs}</dd></dl>',
                 '<h2>Defaults</h2>' + (f'<table><thead><tr><th>Parameter</th><th>Default</th></tr></thead><tbody>'
                                        f'{defaults}</tbody></table>' if defaults else '<p>No parameters.</p>'),
                 '<h2>Results across tasks</h2><p class="note">Main metric, utilization and perplexity: mean over ok '
                 'seeds \u00b1 95% CI. Rank: position of this configuration among all configurations of the same '
                 'task variant by the main metric.</p>',
                 '<div class="scroll"><table class="sortable" id="method-table"><thead><tr><th>Task</th>'
                 '<th>Task variant</th><th>Params</th><th>Suites</th><th class="num" data-type="num">Seeds</th>'
                 '<th>Main metric</th><th class="num" data-type="num">Main mean</th>'
                 '<th class="num" data-type="num">utilization \u2191</th>'
                 '<th class="num" data-type="num">perplexity \u2191</th><th class="num" data-type="num">Rank</th>'
                 f'<th class="nosort">Runs</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>{dl}']
        self.write(f"methods/{info.slug}.html", self.page(f"Method {name}", "".join(parts), root))

    def _cell(self, key: str, metric: str) -> tuple[float, float, int]:
        i, j = self.key_pos.get(key), self.metric_pos.get(metric)
        if i is None or j is None:
            return math.nan, math.nan, 0
        n = self.N[i, j]
        return float(self.M[i, j]), float(self.C[i, j]), int(n) if math.isfinite(n) else 0

    # -- run pages ---------------------------------------------------------------------------------
    def run_pages(self, workers: int | None = None) -> None:
        """One page per run. Runs are rendered in chunks (a chunk's arrays are read together), in
        worker processes where ``fork`` exists (the workers inherit this object; no pickling)."""
        d = self.data
        runs = d.runs
        if runs.empty:
            return
        main_names = {t.main_metric for t in d.tasks.values()}
        m = d.metrics
        wanted_eval = set(CHART_METRICS) | main_names
        mask = ((m["split"] == "train") & (m["metric"] == "loss")) | \
            ((m["split"] == "eval") & m["metric"].isin(wanted_eval))
        m = m.loc[mask, ["run_id", "split", "metric", "step", "value"]].sort_values(
            ["run_id", "split", "metric", "step"], kind="stable")
        rid_arr = m["run_id"].to_numpy()
        uniq, starts = np.unique(rid_arr, return_index=True)
        self._bounds = dict(zip(uniq.tolist(), zip(starts.tolist(), np.append(starts[1:], len(rid_arr)).tolist())))
        self._keys = list(zip(m["split"].to_numpy().tolist(), m["metric"].to_numpy().tolist()))
        self._steps, self._values = m["step"].to_numpy(dtype=float), m["value"].to_numpy(dtype=float)
        self._last_eval = d.metrics[d.metrics["split"] == "eval"].groupby("run_id")["step"].max().to_dict()
        self._metric_cols = [c for c in runs.columns if c.startswith("metric.")]
        by_task: dict[str, list[dict]] = defaultdict(list)
        for rec in runs.to_dict("records"):
            by_task[rec["task"]].append(rec)
        self._jobs = [(task, recs[i:i + RUN_CHUNK]) for task, recs in by_task.items()
                      for i in range(0, len(recs), RUN_CHUNK)]
        workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        global _RENDERING
        if workers > 1 and len(self._jobs) > 1 and "fork" in mp.get_all_start_methods():
            _RENDERING = self
            try:
                with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
                    list(pool.map(_render_job, range(len(self._jobs))))
            finally:
                _RENDERING = None
        else:
            for i in range(len(self._jobs)):
                self.render_job(i)

    def curves(self, rid: str) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
        if rid not in self._bounds:
            return {}
        a, b = self._bounds[rid]
        out: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        keys = self._keys
        i = a
        while i < b:
            j = i
            while j < b and keys[j] == keys[i]:
                j += 1
            out[keys[i]] = (self._steps[i:j], self._values[i:j])
            i = j
        return out

    def render_job(self, index: int) -> int:
        task_name, chunk = self._jobs[index]
        paths = [self.data.store.arrays_path(task_name, r["run_id"]) for r in chunk]
        arrays = read_tables([p for p in paths if p.exists()], "arrays", last_only=True, workers=1)
        arr: dict[str, dict[str, Any]] = defaultdict(dict)
        for rid, name, values in zip(arrays["run_id"], arrays["name"], arrays["values"]):
            arr[rid][name] = values
        for rec in chunk:
            rid = rec["run_id"]
            self.write(f"runs/{self.run_slug[rid]}.html",
                       self.run_page(rec, self.curves(rid), arr.get(rid, {}), self._metric_cols,
                                     self._last_eval.get(rid)))
        return len(chunk)

    def run_page(self, r: dict, curves: dict, arrays: dict, metric_cols: list[str], last_step: Any) -> str:
        d = self.data
        root = "../"
        task = d.tasks[r["task"]]
        status = r["status"]
        rid = r["run_id"]
        plabel = self.params_label.get(r["config_key"], "")
        parts = [f'<h1>Run {e(rid)}</h1>',
                 f'<p class="lead">{self.method_link(r["method"], root)} <span class="params">({e(plabel)})</span> on '
                 f'{self.task_link(r["task"], root)}, seed {int(r["seed"])} '
                 f'<span class="badge st-{e(status)}">{e(status)}</span> \u00b7 suite(s): '
                 + ", ".join(f'<a href="../index.html#suite-{url(slug(s))}">{e(s)}</a>' for s in r["suites"])
                 + f' \u00b7 <a href="{url(root + "tasks/" + task.slug + ".html#" + r["row_id"])}">this configuration'
                 ' on the task page</a></p>']
        if r.get("error"):
            parts.append(f'<p class="error"><b>{e(status)}:</b> {e(r["error"])}</p>')
        cmd = reproduce_command(r)
        parts.append('<h2>Reproduce</h2>' + (f'<pre class="cmd">{e(cmd)}</pre>' if cmd else
                                              '<p>The stored spec cannot be read; no command.</p>'))
        # final metrics
        finals = [(c[len("metric."):], r[c]) for c in metric_cols if finite(r.get(c))]
        order = {m: i for i, m in enumerate(task.metrics)}
        finals.sort(key=lambda t: (order.get(t[0], len(order)), t[0]))
        step_note = f" (step {int(last_step)})" if last_step is not None and finite(last_step) else ""
        if finals:
            frows = "".join(f'<tr><td>{e(name)} {arrow(_direction(task, name))}</td><td class="num">{fmt(v)}</td></tr>'
                            for name, v in finals)
            parts.append(f'<h2>Final metrics{e(step_note)}</h2><p class="note">Values at the run\'s last eval step'
                         + ("; this run did not finish, so they are not in any mean" if status != "ok" else "") +
                         f'.</p><table><thead><tr><th>Metric</th><th>Value</th></tr></thead><tbody>{frows}'
                         '</tbody></table>')
        else:
            parts.append('<h2>Final metrics</h2><p>No eval step was recorded.</p>')
        # charts
        charts = []
        loss = curves.get(("train", "loss"))
        charts.append(svg.line_chart([("loss", *_thin(*loss))] if loss else [], "training loss", "step", "loss"))
        main = task.main_metric
        if main:
            s = curves.get(("eval", main))
            charts.append(svg.line_chart([(main, *s)] if s else [], f"{main} (eval)", "step", main))
        for name in ("utilization", "perplexity"):
            s = curves.get(("eval", name))
            charts.append(svg.line_chart([(name, *s)] if s else [], f"{name} (eval)", "step", name))
        ranks = [(n, *curves[("eval", n)]) for n in ("codebook_rank", "embedding_rank") if ("eval", n) in curves]
        charts.append(svg.line_chart(ranks, "effective ranks (eval)", "step", "effective rank"))
        hist = arrays.get("usage_histogram")
        charts.append(svg.usage_chart(hist if hist is not None else []))
        spectra = [(n.replace("_spectrum", ""), np.arange(1, len(arrays[n]) + 1), arrays[n])
                   for n in ("codebook_spectrum", "embedding_spectrum") if arrays.get(n) is not None]
        charts.append(svg.line_chart(spectra, "singular values (last eval)", "index", "singular value", logy=True))
        parts.append('<h2>Training curves and codebook</h2><div class="charts">' + "".join(charts) + '</div>')
        # spec + provenance
        try:
            spec_text = json.dumps(json.loads(r["spec"]), indent=2, sort_keys=True)
        except (TypeError, ValueError):
            spec_text = str(r.get("spec") or "")
        versions = parse_json(r.get("versions"))
        prov = [("run id", rid), ("status", status), ("steps done", r.get("steps_done")),
                ("wall time", f'{r["wall_time_s"]:.1f} s' if finite(r.get("wall_time_s")) else ""),
                ("items / s", fmt(r.get("items_per_s"))), ("device", r.get("device")), ("hostname", r.get("hostname")),
                ("git commit", r.get("git_commit")),
                ("git dirty", "" if r.get("git_dirty") is None or pd.isna(r.get("git_dirty")) else
                 ("yes: uncommitted changes" if r.get("git_dirty") else "no")),
                ("Slurm job id", r.get("slurm_job_id")), ("started", r.get("started_at")),
                ("finished", r.get("finished_at")), ("method source", r.get("method_source")),
                ("task source", r.get("task_source")), ("method version", r.get("method_version")),
                ("task version", r.get("task_version")), ("tags", ", ".join(_tags(r.get("tags")))),
                ("schema version", r.get("schema_version"))]
        prov += [(f"version: {k}", v) for k, v in sorted(versions.items())] if isinstance(versions, dict) else []
        prow = "".join(f"<tr><th>{e(k)}</th><td>{'' if v is None or (isinstance(v, float) and math.isnan(v)) else e(v)}"
                       f"</td></tr>" for k, v in prov)
        parts.append(f'<h2>Provenance</h2><table class="prov"><tbody>{prow}</tbody></table>')
        parts.append(f'<h2>Spec</h2><pre>{e(spec_text)}</pre>')
        return self.page(f"Run {rid}", "".join(parts), root, script=False)

    # -- findings + downloads ----------------------------------------------------------------------
    def findings(self, results: Path) -> None:
        base = results / "findings"
        items = []
        folders = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        for folder in folders:
            meta: dict[str, Any] = {}
            meta_path = folder / "meta.json"
            if meta_path.exists():
                try:
                    loaded = json.loads(meta_path.read_text(encoding="utf-8"))
                    meta = loaded if isinstance(loaded, dict) else {}
                except (OSError, ValueError):
                    meta = {"caption": "meta.json could not be read"}
            name = folder.name
            fslug = slug(name)
            target = self.out / "findings" / fslug
            target.mkdir(parents=True, exist_ok=True)
            fig = csv = ""
            if (folder / "figure.png").is_file():
                shutil.copyfile(folder / "figure.png", target / "figure.png")
                fig = (f'<img src="{url("findings/" + fslug + "/figure.png")}" '
                       f'alt="{e(meta.get("title") or name)}">')
            else:
                fig = '<p class="missing">figure.png is missing in this findings folder.</p>'
            if (folder / "data.csv").is_file():
                shutil.copyfile(folder / "data.csv", target / "data.csv")
                csv = f'<a href="{url("findings/" + fslug + "/data.csv")}">data (CSV)</a>'
            title = meta.get("title") or name
            command = meta.get("command")
            items.append(f'<section id="{e(fslug)}"><h2>{e(title)}</h2><figure>{fig}<figcaption>'
                         f'{e(meta.get("caption") or "")}</figcaption></figure>'
                         + (f'<p>Reproduce: <code>{e(command)}</code></p>' if command else "")
                         + (f'<p class="downloads">{csv}</p>' if csv else "") + '</section>')
        body = ['<h1>Findings</h1><p class="lead">The benchmark\'s reproductions of the two collapses (tokens '
                'collapse and embeddings collapse) and of their cures. Each figure comes with the data it plots '
                'and the command that regenerates it.</p>']
        body += items or ['<p>No findings yet: run <code>vqbench reproduce tokens-collapse</code> or '
                          '<code>vqbench reproduce embeddings-collapse</code>, then build the site again.</p>']
        self.write("findings.html", self.page("Findings", "".join(body), ""))

    def performance(self) -> None:
        """``vqbench perf`` measurements: every row, newest measurement first, with the derived ratios."""
        store = self.data.store
        perf = read_tables(store_files(store, "perf"), "perf") if "perf" in PERF_KINDS else pd.DataFrame()
        body = ['<h1>Performance</h1><p class="lead">Speed and memory of the quantizers as measured by '
                '<code>vqbench perf</code> (forward + backward on N input vectors, next to vector-quantize-pytorch '
                'where it has an equivalent; nearest-code search next to <code>torch.mm</code> on the same shapes, '
                'the practical limit). Ratio = our time / vector-quantize-pytorch\'s time (below 1: we are faster); '
                'fraction of mm = achieved GFLOP/s of the search / GFLOP/s of torch.mm.</p>']
        if perf.empty:
            body.append('<p>No measurements in this results folder: run <code>vqbench perf</code>.</p>')
        else:
            perf = perf.copy()
            key = ["perf_id", "device", "method", "codebook_size", "dim", "n"]
            fb = perf[perf["measure"] == "forward_backward"]
            ref = fb[fb["implementation"] == "vector-quantize-pytorch"].set_index(key)["time_ms"]
            mm = perf[perf["measure"] == "matmul"].drop_duplicates(["perf_id", "device", "codebook_size", "dim", "n"])
            mm = mm.set_index(["perf_id", "device", "codebook_size", "dim", "n"])["gflops"]
            ratio, frac = [], []
            for r in perf.itertuples(index=False):
                k = (r.perf_id, r.device, r.method, r.codebook_size, r.dim, r.n)
                ok = r.status == "ok"
                ratio.append(r.time_ms / ref[k] if ok and r.measure == "forward_backward" and
                             r.implementation == "vqbench" and k in ref.index and finite(ref[k]) else math.nan)
                k2 = (r.perf_id, r.device, r.codebook_size, r.dim, r.n)
                frac.append(r.gflops / mm[k2] if ok and r.measure == "nearest_code_search" and k2 in mm.index
                            and finite(mm[k2]) and mm[k2] > 0 else math.nan)
            perf["ratio_to_vqp"], perf["fraction_of_mm"] = ratio, frac
            perf = perf.sort_values(["created_at", "perf_id", "measure", "method", "codebook_size", "dim",
                                     "implementation"], ascending=[False, True, True, True, True, True, True])
            rows = []
            for r in perf.itertuples(index=False):
                when = r.created_at.strftime("%Y-%m-%d %H:%M") if hasattr(r.created_at, "strftime") else r.created_at
                rows.append(f'<tr data-family="{e(r.implementation)}"><td>{e(when)}</td><td>{e(r.device)}</td>'
                            f'<td>{e(r.implementation)}</td><td>{e(r.method)}</td><td>{e(r.measure)}</td>'
                            + "".join(f'<td class="num" data-v="{datav(v)}">{fmt(v)}</td>' for v in (
                                r.codebook_size, r.dim, r.n, r.time_ms, r.peak_memory_mb, r.gflops, r.ratio_to_vqp,
                                r.fraction_of_mm))
                            + f'<td class="st-{e(r.status)}">{e(r.status)}</td><td>{e(r.note or "")}</td></tr>')
            implementations = sorted({str(i) for i in perf["implementation"]})
            frame = perf.copy()
            frame["created_at"] = frame["created_at"].astype(str)
            dl = self.tables.add("performance", "Performance measurements", "performance.html", frame, "")
            body.append(f'{self.filters("perf-table", implementations, "implementation")}<div class="scroll">'
                        '<table class="sortable" id="perf-table"><thead><tr><th>Measured</th><th>Device</th>'
                        '<th>Implementation</th><th>Method</th><th>Measure</th>'
                        + "".join(f'<th class="num" data-type="num">{h}</th>' for h in (
                            "K", "dim", "N", "time ms \u2193", "peak MB \u2193", "GFLOP/s \u2191",
                            "ratio to vqp \u2193", "fraction of mm \u2191"))
                        + f'<th>Status</th><th>Note</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>{dl}')
        self.write("performance.html", self.page("Performance", "".join(body), ""))

    def downloads(self) -> None:
        runs = self.data.runs
        cols = [c for c in runs.columns if c not in ("suites", "variant_key", "config_key", "row_id", "main_value")]
        frame = runs[cols].copy()
        frame.insert(1, "suites", [", ".join(s) for s in runs["suites"]])
        frame["tags"] = [", ".join(_tags(t)) for t in frame["tags"]]
        for c in ("started_at", "finished_at"):
            frame[c] = frame[c].astype(str)
        self.tables.add("runs", "All runs (one row per run: spec, status, provenance, final metrics as shown "
                        "on the run pages)", "index.html", frame, "")
        written = self.tables.write(self.out)
        rows = "".join(
            f'<tr><td>{e(title)}</td><td><a href="{url(page)}">page</a></td>'
            f'<td><a href="{url("data/" + stem + ".csv")}">{e(stem)}.csv</a> <small>({_size(a)})</small></td>'
            f'<td><a href="{url("data/" + stem + ".parquet")}">{e(stem)}.parquet</a> <small>({_size(b)})</small></td>'
            '</tr>' for stem, title, page, a, b in written)
        body = ('<h1>Downloads</h1><p class="lead">Every table shown on this site as CSV and Parquet. Numeric cells '
                'are split into <code>mean</code>, <code>ci95</code> (half-width of the 95% t interval) and '
                '<code>n</code> columns. The raw store (one Parquet file per run) is the source of all of them.</p>'
                '<div class="scroll"><table class="sortable" id="downloads-table"><thead><tr><th>Table</th>'
                '<th class="nosort">Shown on</th><th class="nosort">CSV</th><th class="nosort">Parquet</th></tr>'
                f'</thead><tbody>{rows}</tbody></table></div>')
        self.write("downloads.html", self.page("Downloads", body, ""))


_RENDERING: Site | None = None  # the Site whose run pages forked workers render


def _render_job(index: int) -> int:
    assert _RENDERING is not None
    return _RENDERING.render_job(index)


def _tags(tags: Any) -> list[str]:
    return [str(t) for t in tags] if tags is not None and not isinstance(tags, str) else []


def _direction(task: Any, metric: str) -> bool | None:
    return task.higher_is_better if metric == task.main_metric else metric_direction(metric)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _thin(steps: np.ndarray, values: np.ndarray, max_points: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a long curve (evenly spaced, last point kept)."""
    if len(steps) <= max_points:
        return steps, values
    idx = np.unique(np.linspace(0, len(steps) - 1, max_points).round().astype(int))
    return steps[idx], values[idx]


# -- the reproduce command ----------------------------------------------------------------------------
def _cli_parses_to(text: str) -> Any:
    """What ``vqbench run --set key=TEXT`` makes of TEXT (the rule of ``vqbench.commands.cli.parse_value``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if text[:1] in "[{\"":
            raise ValueError(text) from None
        return text


def cli_value(value: Any) -> str:
    """The ``--set`` text that the CLI parses back to exactly ``value``."""
    if isinstance(value, str):
        try:
            if _cli_parses_to(value) == value and type(_cli_parses_to(value)) is str:
                return value
        except ValueError:
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _plugin_hint(source: Any) -> tuple[list[str], str]:
    """(``--plugin`` args, a comment line) for a method/task that came from a plugin."""
    if not isinstance(source, str) or not source or source == "vqbench":
        return [], ""
    if source.startswith("file:"):
        path, _, digest = source[len("file:"):].partition("#")
        return ["--plugin", path], (f"# plugin file {path} ({digest})" if digest else "")
    return [], f"# needs the plugin distribution: pip install '{source}'"


def reproduce_command(run: dict) -> str:
    """``vqbench run ...`` with every resolved parameter of the run's spec, so the same run id comes out."""
    try:
        spec = json.loads(run["spec"])
        task, method, seed = spec["task"], spec["method"], int(spec["seed"])
    except (TypeError, ValueError, KeyError):
        return ""
    args = ["vqbench", "run"]
    comments = []
    seen_plugins: set[str] = set()
    for source in (run.get("method_source"), run.get("task_source")):
        plug, comment = _plugin_hint(source)
        if plug and plug[1] not in seen_plugins:
            seen_plugins.add(plug[1])
            args += plug
        if comment:
            comments.append(comment)
    args += ["--task", task, "--method", method, "--seed", str(seed)]
    for scope, params in (("task", spec.get("task_params") or {}), ("method", spec.get("method_params") or {}),
                          ("budget", spec.get("budget") or {})):
        for key, value in sorted(params.items()):
            args += ["--set", f"{scope}.{key}={cli_value(value)}"]
    line = " ".join(shlex.quote(a) for a in args)
    return "\n".join(comments + [line])


# -- output folder handling ------------------------------------------------------------------------
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
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


#: seconds per phase of the last build_site call (for the benchmark and `leaderboard build`)
timings: dict[str, float] = {}


def build_site(results: str | os.PathLike[str], out: str | os.PathLike[str], suite: str | None = None) -> Path:
    """Write the whole site for the store under ``results`` into ``out``; return ``out/index.html``.

    ``suite`` restricts every page to the runs of that suite (``adhoc`` = untagged runs).
    """
    results, out = Path(results), Path(out).resolve()
    timings.clear()
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = time.perf_counter() - t0 - sum(timings.values())

    if not results.is_dir():
        raise UserError(f"results folder {results} does not exist: pass the folder your runs wrote to "
                        "(--results), or run `vqbench quick` first")
    data = load(results, suite)
    lap("load store")
    tmp = _prepare(out)
    try:
        site = Site(data, tmp)
        (tmp / "assets").mkdir()
        for name in ("site.css", "site.js"):
            shutil.copyfile(ASSETS / name, tmp / "assets" / name)
        site.index()
        lap("index")
        for name in data.tasks:
            site.task_page(name)
        for name in data.methods:
            site.method_page(name)
        lap("task + method pages")
        site.run_pages()
        lap("run pages")
        site.findings(results)
        site.performance()
        site.downloads()
        lap("findings + downloads")
        (tmp / SITE_MARKER).write_text("built by vqbench leaderboard build; this folder is replaced on rebuild\n")
        (tmp / ".nojekyll").write_text("")  # GitHub Pages: serve files as they are
        tmp.chmod(0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap(tmp, out)
    return out / "index.html"
