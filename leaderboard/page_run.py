"""``runs/<run_id>.html``: one page per run (spec, provenance, curves, usage histogram, spectra, command).

Runs are rendered in chunks of one task (a chunk's arrays files are read together), in worker
processes where ``fork`` exists. Each worker receives everything it renders as one explicit,
picklable :class:`RunChunk` (the runs' records, their curves, the page frame and links): no state
is shared through module globals.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vqbench.leaderboard import svg
from vqbench.leaderboard.context import Links, PageFrame, SiteContext, write_page
from vqbench.leaderboard.convergence import from_row, run_badge
from vqbench.leaderboard.data import TaskInfo, metric_direction, parse_json, slug, tag_list
from vqbench.leaderboard.html import direction_arrow, escape, format_number, is_finite, url
from vqbench.leaderboard.load import read_run_arrays
from vqbench.leaderboard.page_task import RECIPE_HEX_DIGITS, RECIPE_SUFFIX
from vqbench.leaderboard.reproduce import reproduce_command
from vqbench.leaderboard.tracks import trials_anchor
from vqbench.tuning import trial_index

ROOT = "../"
RUN_CHUNK = 500  # runs whose arrays are read and pages written together
CHART_METRICS = ("utilization", "perplexity", "codebook_rank", "embedding_rank")

Curves = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class CurveRows:
    """Metric rows of some runs, sorted by (run, split, metric, step), as flat arrays.

    ``codes[i]`` indexes ``names`` (the (split, metric) pair of row ``i``); ``bounds[run_id]`` is the
    half-open range of that run's rows.
    """

    names: list[tuple[str, str]]
    codes: np.ndarray
    steps: np.ndarray
    values: np.ndarray
    bounds: dict[str, tuple[int, int]]

    @classmethod
    def from_metrics(cls, metrics: pd.DataFrame) -> CurveRows:
        """From long metric rows (``run_id``, ``split``, ``metric``, ``step``, ``value``)."""
        metrics = metrics.sort_values(["run_id", "split", "metric", "step"], kind="stable")
        run_ids = metrics["run_id"].to_numpy()
        unique, starts = np.unique(run_ids, return_index=True)
        ends = np.append(starts[1:], len(run_ids))
        split_codes, splits = pd.factorize(metrics["split"])
        metric_codes, metric_names = pd.factorize(metrics["metric"])
        codes = split_codes.astype(np.int64) * len(metric_names) + metric_codes
        return cls(names=[(split, name) for split in splits for name in metric_names], codes=codes,
                   steps=metrics["step"].to_numpy(dtype=float), values=metrics["value"].to_numpy(dtype=float),
                   bounds=dict(zip(unique.tolist(), zip(starts.tolist(), ends.tolist()))))

    def subset(self, run_ids: list[str]) -> CurveRows:
        """The rows of ``run_ids`` only (what one chunk of run pages needs)."""
        ranges = [(run_id, self.bounds[run_id]) for run_id in run_ids if run_id in self.bounds]
        index = (np.concatenate([np.arange(a, b) for _, (a, b) in ranges]) if ranges
                 else np.empty(0, dtype=np.int64))
        bounds, start = {}, 0
        for run_id, (a, b) in ranges:
            bounds[run_id] = (start, start + b - a)
            start += b - a
        return CurveRows(self.names, self.codes[index], self.steps[index], self.values[index], bounds)

    def curves(self, run_id: str) -> Curves:
        """(split, metric) -> (steps, values) of one run."""
        if run_id not in self.bounds:
            return {}
        a, b = self.bounds[run_id]
        codes = self.codes[a:b]
        cuts = [0, *(np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist(), b - a]
        return {self.names[codes[i]]: (self.steps[a + i:a + j], self.values[a + i:a + j])
                for i, j in zip(cuts[:-1], cuts[1:]) if j > i}


@dataclass(frozen=True)
class RunChunk:
    """Everything needed to write the pages of some runs of one task (sent to a worker process)."""

    out: Path
    frame: PageFrame
    links: Links
    task: TaskInfo
    records: list[dict[str, Any]]
    params_labels: dict[str, str]  # config key -> params label, for these runs' configs
    curves: CurveRows
    last_eval_steps: dict[str, Any]  # run id -> its last eval step
    metric_columns: list[str]  # the runs table's ``metric.*`` columns
    results: Path  # the store's root: the runs' arrays are read from it (per-run or compacted files)


def write_run_pages(site: SiteContext, workers: int | None = None) -> None:
    """Write one page per run of the site."""
    chunks = run_chunks(site)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if workers > 1 and len(chunks) > 1 and "fork" in mp.get_all_start_methods():
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
            list(pool.map(render_run_chunk, chunks))
    else:
        for chunk in chunks:
            render_run_chunk(chunk)


def run_chunks(site: SiteContext, chunk_size: int = RUN_CHUNK) -> list[RunChunk]:
    """The site's runs cut into chunks of at most ``chunk_size`` runs of one task each."""
    data = site.data
    runs = data.runs
    if runs.empty:
        return []
    wanted_eval = set(CHART_METRICS) | {task.main_metric for task in data.tasks.values()}
    metrics = data.metrics
    shown = ((metrics["split"] == "train") & (metrics["metric"] == "loss")) | \
        ((metrics["split"] == "eval") & metrics["metric"].isin(wanted_eval))
    curve_rows = CurveRows.from_metrics(metrics.loc[shown, ["run_id", "split", "metric", "step", "value"]])
    last_eval_steps = metrics[metrics["split"] == "eval"].groupby("run_id")["step"].max().to_dict()
    metric_columns = [c for c in runs.columns if c.startswith("metric.")]
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in runs.to_dict("records"):
        by_task[record["task"]].append(record)
    chunks = []
    for task_name, records in by_task.items():
        for start in range(0, len(records), chunk_size):
            part = records[start:start + chunk_size]
            run_ids = [r["run_id"] for r in part]
            chunks.append(RunChunk(
                out=site.out, frame=site.frame, links=site.links, task=data.tasks[task_name], records=part,
                params_labels={r["config_key"]: site.params_labels.get(r["config_key"], "") for r in part},
                curves=curve_rows.subset(run_ids),
                last_eval_steps={rid: last_eval_steps[rid] for rid in run_ids if rid in last_eval_steps},
                metric_columns=metric_columns,
                results=data.store.root))
    return chunks


def render_run_chunk(chunk: RunChunk) -> int:
    """Write the pages of one chunk; returns how many."""
    arrays = read_run_arrays(chunk.results, chunk.task.name, [r["run_id"] for r in chunk.records])
    arrays_of: dict[str, dict[str, Any]] = defaultdict(dict)
    for run_id, name, values in zip(arrays["run_id"], arrays["name"], arrays["values"]):
        arrays_of[run_id][name] = values
    for record in chunk.records:
        run_id = record["run_id"]
        write_page(chunk.out, f"runs/{slug(run_id)}.html",
                   run_page(chunk, record, chunk.curves.curves(run_id), arrays_of.get(run_id, {}),
                            chunk.last_eval_steps.get(run_id)))
    return len(chunk.records)


def run_page(chunk: RunChunk, run: dict[str, Any], curves: Curves, arrays: dict[str, Any], last_step: Any) -> str:
    """The whole page of one run."""
    task = chunk.task
    status = run["status"]
    run_id = run["run_id"]
    params_label = chunk.params_labels.get(run["config_key"], "")
    suite_links = ", ".join(
        [f'<a href="../index.html#suite-{url(slug(s))}">{escape(s)}</a>' for s in run["default_suites"]]
        + [f'<a href="../index.html#suite-{url(slug(s))}-tuned">{escape(s)} (tuned)</a>' for s in run["tuned_suites"]]
        + [f'<a href="{url(ROOT + "tasks/" + task.slug + ".html#" + trials_anchor(s, run["method"]))}">'
           f'{escape(_trial_text(run))} of tuning {escape(s)}</a>' for s in run["trial_of"]])
    parts = [f'<h1>Run {escape(run_id)}</h1>',
             f'<p class="lead">{chunk.links.method(run["method"], ROOT)} <span class="params">({escape(params_label)})'
             f'</span> on {chunk.links.task(run["task"], ROOT)}, seed {int(run["seed"])} '
             f'<span class="badge st-{escape(status)}">{escape(status)}</span>'
             f'{run_badge(from_row(run), task.main_metric or "the main metric")} \u00b7 suite(s): {suite_links}'
             f' \u00b7 <a href="{url(ROOT + "tasks/" + task.slug + ".html#" + run["row_id"])}">this configuration'
             ' on the task page</a></p>']
    if run.get("error"):
        parts.append(f'<p class="error"><b>{escape(status)}:</b> {escape(run["error"])}</p>')
    command = reproduce_command(run)
    parts.append('<h2>Reproduce</h2>' + (f'<pre class="cmd">{escape(command)}</pre>' if command else
                                          '<p>The stored spec cannot be read; no command.</p>'))
    parts.append(_final_metrics(task, run, chunk.metric_columns, last_step))
    parts.append('<h2>Training curves and codebook</h2><div class="charts">' + "".join(_charts(task, curves, arrays))
                 + '</div>')
    parts.append(f'<h2>Provenance</h2><table class="prov"><tbody>{_provenance_rows(run)}</tbody></table>')
    parts.append(f'<h2>Spec</h2><pre>{escape(_spec_text(run))}</pre>')
    return chunk.frame.render(f"Run {run_id}", "".join(parts), ROOT, script=False)


def _trial_text(run: dict[str, Any]) -> str:
    """``trial 3`` (the run's ``trial:3`` tag), or ``a trial`` without one."""
    index = trial_index(tag_list(run["tags"]))
    return "a trial" if index is None else f"trial {index}"


def _final_metrics(task: TaskInfo, run: dict[str, Any], metric_columns: list[str], last_step: Any) -> str:
    """The table of the run's values at its last eval step."""
    finals = [(c[len("metric."):], run[c]) for c in metric_columns if is_finite(run.get(c))]
    order = {name: i for i, name in enumerate(task.metrics)}
    finals.sort(key=lambda item: (order.get(item[0], len(order)), item[0]))
    if not finals:
        return '<h2>Final metrics</h2><p>No eval step was recorded.</p>'
    step_note = f" (step {int(last_step)})" if last_step is not None and is_finite(last_step) else ""
    rows = "".join(f'<tr><td>{escape(name)} {direction_arrow(_direction(task, name))}</td>'
                   f'<td class="num">{_value_text(name, value)}</td></tr>' for name, value in finals)
    unfinished = "; this run did not finish, so they are not in any mean" if run["status"] != "ok" else ""
    convergence = from_row(run).describe(task.main_metric or "the main metric")
    return (f'<h2>Final metrics{escape(step_note)}</h2><p class="note">Values at the run\'s last eval step'
            f'{unfinished}.</p><p class="note convergence">Convergence (<a href="{ROOT}protocol.html#convergence">'
            f'rule</a>): {escape(convergence)}.</p><table><thead><tr><th>Metric</th><th>Value</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>')


def _value_text(name: str, value: float) -> str:
    """A final metric's cell: a classifier's recipe hash in hex (the integer it is logged as), else the number."""
    if name.endswith(RECIPE_SUFFIX):
        return f'<code>{int(value):0{RECIPE_HEX_DIGITS}x}</code>'
    return format_number(value)


def _charts(task: TaskInfo, curves: Curves, arrays: dict[str, Any]) -> list[str]:
    """Loss, main metric, utilization, perplexity, effective ranks, usage histogram, spectra."""
    charts = []
    loss = curves.get(("train", "loss"))
    charts.append(svg.line_chart([("loss", *_thin(*loss))] if loss else [], "training loss", "step", "loss"))
    main = task.main_metric
    if main:
        series = curves.get(("eval", main))
        charts.append(svg.line_chart([(main, *series)] if series else [], f"{main} (eval)", "step", main))
    for name in ("utilization", "perplexity"):
        series = curves.get(("eval", name))
        charts.append(svg.line_chart([(name, *series)] if series else [], f"{name} (eval)", "step", name))
    ranks = [(n, *curves[("eval", n)]) for n in ("codebook_rank", "embedding_rank") if ("eval", n) in curves]
    charts.append(svg.line_chart(ranks, "effective ranks (eval)", "step", "effective rank"))
    histogram = arrays.get("usage_histogram")
    charts.append(svg.usage_chart(histogram if histogram is not None else []))
    spectra = [(n.replace("_spectrum", ""), np.arange(1, len(arrays[n]) + 1), arrays[n])
               for n in ("codebook_spectrum", "embedding_spectrum") if arrays.get(n) is not None]
    charts.append(svg.line_chart(spectra, "singular values (last eval)", "index", "singular value", logy=True))
    return charts


def _provenance_rows(run: dict[str, Any]) -> str:
    """Rows of the provenance table: status, timing, host, git, Slurm, sources, versions."""
    git_dirty = run.get("git_dirty")
    rows = [("run id", run["run_id"]), ("status", run["status"]), ("steps done", run.get("steps_done")),
            ("wall time", f'{run["wall_time_s"]:.1f} s' if is_finite(run.get("wall_time_s")) else ""),
            ("items / s", format_number(run.get("items_per_s"))), ("device", run.get("device")),
            ("hostname", run.get("hostname")), ("git commit", run.get("git_commit")),
            ("git dirty", "" if git_dirty is None or pd.isna(git_dirty) else
             ("yes: uncommitted changes" if git_dirty else "no")),
            ("Slurm job id", run.get("slurm_job_id")), ("started", run.get("started_at")),
            ("finished", run.get("finished_at")), ("method source", run.get("method_source")),
            ("task source", run.get("task_source")), ("method version", run.get("method_version")),
            ("task version", run.get("task_version")), ("tags", ", ".join(tag_list(run.get("tags")))),
            ("schema version", run.get("schema_version"))]
    versions = parse_json(run.get("versions"))
    rows += [(f"version: {k}", v) for k, v in sorted(versions.items())] if isinstance(versions, dict) else []
    return "".join(f"<tr><th>{escape(k)}</th><td>{_provenance_value(v)}</td></tr>" for k, v in rows)


def _provenance_value(value: Any) -> str:
    """A provenance cell: escaped text, empty for a missing value."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else escape(value)


def _spec_text(run: dict[str, Any]) -> str:
    """The stored spec, pretty-printed (as stored when it is not JSON)."""
    try:
        return json.dumps(json.loads(run["spec"]), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        return str(run.get("spec") or "")


def _direction(task: TaskInfo, metric: str) -> bool | None:
    return task.higher_is_better if metric == task.main_metric else metric_direction(metric)


def _thin(steps: np.ndarray, values: np.ndarray, max_points: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a long curve (evenly spaced, last point kept)."""
    if len(steps) <= max_points:
        return steps, values
    index = np.unique(np.linspace(0, len(steps) - 1, max_points).round().astype(int))
    return steps[index], values[index]
