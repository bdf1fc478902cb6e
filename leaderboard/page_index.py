"""``index.html``: per suite its tables (method configs x task variants, mean rank and its uncertainty), then
tasks and methods.

A suite has a **defaults** table (its ``vqbench sweep run`` runs) and, once ``vqbench tune`` ran on it, a
**tuned** table: one row per method, each cell the configuration its tuning selected on that task (the
columns ignore the learning rate, which is tuned), with the selected parameters, a link to the trials and
the method's sensitivity (IQR of the validation metric over its trials) and its change against the defaults
track (:mod:`.vs_defaults`). Every table gets the mean rank's
95% bootstrap interval and "≈" marks between neighbours (:mod:`.rank_marks`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vqbench.leaderboard.context import SiteContext
from vqbench.leaderboard.data import ADHOC, natural_key, parse_json, slug, value_text, variant_labels
from vqbench.leaderboard.html import (
    data_value,
    direction_arrow,
    escape,
    filter_bar,
    format_number,
    is_finite,
    number_cell,
    paper_link,
    stat_cell,
    status_badges,
    url,
)
from vqbench.leaderboard.page_tuning import knobs_text
from vqbench.leaderboard.rank_marks import RANK_NOTE, TIE, rank_interval_cell, rank_marks
from vqbench.leaderboard.ranking import oriented
from vqbench.leaderboard.stats import ci_halfwidth
from vqbench.leaderboard.tracks import (
    TRACK_DEFAULTS,
    TRACK_TUNED,
    Tuning,
    budget_lr,
    selected_params_text,
    trials_anchor,
    without_lr,
)
from vqbench.leaderboard.vs_defaults import CellStat, Comparison, defaults_cells, summary_sentence

HOW_TO_READ = (
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
    'averaged away. Under each mean, <b>util</b> is the configuration\'s codebook utilization (fraction of '
    'codes used over the whole eval split, mean over the same seeds): collapse next to quality. '
    '<b>Utilization rank</b> is the same mean rank on utilization (higher is better; the same complete-rows '
    'rule, over the task columns that report utilization). A <span class="badge conv">not converged</span> '
    'badge counts the seeds whose main metric still moved by 1% or more over their last 25% of steps (or had '
    'too few evals there to tell; see the <a href="protocol.html#convergence">Protocol</a>); hover it for '
    'each seed\'s change. Click a number to see the configuration on its task page; click a column header '
    'to sort.')
TUNED_HOW_TO_READ = (
    'One row per method: each cell is the configuration its tuning selected on that task, rerun at fresh '
    'seeds (mean <span class="ci">± 95% CI</span> over them), with the selected parameters (those that '
    'differ from the method\'s defaults, and the lr) and a link to every trial. <b>Tuned</b> says what was '
    'searched; <b>Sensitivity</b> is the interquartile range of the validation main metric over the '
    'method\'s trials: small, the method works out of the box; large, it needs its tuning.')


def write_index(site: SiteContext) -> None:
    """Write ``index.html``."""
    data = site.data
    parts = ['<h1>vqbench leaderboard</h1>',
             '<p class="lead">Methods that prevent representation collapse in vector quantization, '
             'compared on the benchmark\'s tasks. Every number is derived from the result store.</p>']
    if data.runs.empty:
        parts.append('<p>No runs in this results folder yet. Run <code>vqbench quick</code> (or '
                     '<code>vqbench run --task gmm --method vq</code>) and build again.</p>')
    else:
        parts.append(f'<p class="note">{len(data.runs)} runs {status_badges(data.status_counts, skip_ok=False)}. '
                     f'{HOW_TO_READ}</p>')
        if len(data.suites) > 1:
            parts.append('<p>Suites: ' + " \u00b7 ".join(f'<a href="#suite-{url(slug(s))}">{escape(s)}</a>'
                                                           for s in data.suites) + "</p>")
        for suite in data.suites:
            parts.append(suite_section(site, suite))
    parts.append(tasks_section(site))
    parts.append(methods_section(site))
    site.write("index.html", site.page("Leaderboard", "".join(parts), ""))


def suite_section(site: SiteContext, suite: str) -> str:
    """The section of one suite: its defaults table and, when `vqbench tune` ran on it, its tuned table."""
    data = site.data
    runs = data.runs[[suite in names for names in data.runs["suites"]]]
    defaults = runs[[suite in names for names in runs["default_suites"]]]
    tuned = runs[[suite in names for names in runs["tuned_suites"]]]
    what = ("Runs without a <code>suite:NAME</code> tag (single runs, exploration): not a designed set of "
            "tasks, so this matrix is usually sparse; the task pages compare every configuration."
            if suite == ADHOC else f"Runs tagged <code>suite:{escape(suite)}</code>.")
    head = f'<section id="suite-{escape(slug(suite))}"><h2>Suite {escape(suite)}</h2>'
    if tuned.empty:
        summary, table = track_table(site, suite, defaults, TRACK_DEFAULTS)
        if suite == ADHOC and len(data.suites) > 1:  # folded away behind the designed suites
            table = f'<details><summary>Show the ad-hoc matrix ({summary})</summary>{table}</details>'
        return f'{head}<p class="note">{what} {summary}</p>{table}</section>'
    tuning = data.tunings.get(suite)
    counts = "/".join(str(n) for n in tuning.trial_counts) if tuning else ""
    parts = [head, f'<p class="note">Two tracks: the <b>defaults</b> (<code>vqbench sweep run {escape(suite)}'
             '</code>: each method as registered) and the <b>tuned</b> configurations (<code>vqbench tune '
             f'{escape(suite)}{" --trials " + escape(counts) if counts else ""}</code>: the same number of trials '
             'for every method, the best by its validation metric rerun at fresh seeds). Compare methods within '
             'a table.</p>']
    if not defaults.empty:
        summary, table = track_table(site, suite, defaults, TRACK_DEFAULTS)
        parts.append(f'<h3 id="suite-{escape(slug(suite))}-defaults">Defaults</h3><p class="note">Runs tagged '
                     f'<code>suite:{escape(suite)}</code> without <code>tuned:{escape(suite)}</code>. {summary}</p>'
                     f'{table}')
    baselines = defaults_cells(defaults, {m: info.defaults for m, info in data.methods.items()},
                               lambda key: CellStat(*site.config_stat(key, data.tasks[
                                   site.config_rows[key]["task"]].main_metric)))
    summary, table = track_table(site, suite, tuned, TRACK_TUNED, baselines)
    title = f"Tuned ({counts} trials)" if counts else "Tuned"
    parts.append(f'<h3 id="suite-{escape(slug(suite))}-tuned">{escape(title)}</h3>'
                 f'<p class="note">{TUNED_HOW_TO_READ} {summary}</p>{table}')
    return "".join(parts) + "</section>"


def _track_keys(runs: pd.DataFrame, track: str) -> pd.DataFrame:
    """``runs`` with the table's row key (``method_config``) and column key (``variant_key``) of ``track``:
    defaults: (method, version, params) x task variant; tuned: (method, version) x task variant without lr."""
    if track == TRACK_TUNED:
        return runs.assign(method_config=[json.dumps([m, int(v)]) for m, v in
                                          zip(runs["method"], runs["method_version"])],
                           variant_key=[without_lr(v) for v in runs["variant_key"]])
    return runs.assign(method_config=[json.dumps([m, int(v), p]) for m, v, p in
                                      zip(runs["method"], runs["method_version"], runs["method_params"])])


def track_table(site: SiteContext, suite: str, runs: pd.DataFrame, track: str,
                baselines: dict[tuple[str, int, str], CellStat] | None = None) -> tuple[str, str]:
    """(summary line, table html) of one track of a suite: a row per method config, a column per task
    variant, the mean rank with its bootstrap interval and the "≈" marks; a tuned cell also shows its change
    against its defaults-track cell (``baselines``, :mod:`.vs_defaults`), counted in the summary."""
    data = site.data
    tuned = track == TRACK_TUNED
    tuning = data.tunings.get(suite) if tuned else None
    runs = _track_keys(runs, track)
    ok = runs[runs["status"] == "ok"]
    grouped = ok.groupby("config_key")["main_value"]
    mean, std, n = grouped.mean(), grouped.std(ddof=1), grouped.count()
    ci = pd.Series(ci_halfwidth(std.to_numpy(), n.to_numpy()), index=std.index)
    status_counts = pd.crosstab(runs["config_key"], runs["status"]).to_dict("index")
    means, seed_counts, cis = mean.to_dict(), n.to_dict(), ci.to_dict()
    # columns: task variants; rows: method configs
    variants = runs.drop_duplicates("variant_key")[["variant_key", "task"]]
    labels: dict[str, str] = {}
    for _task, group in variants.groupby("task"):
        labels.update(variant_labels(list(group["variant_key"])))
    columns = sorted(variants.itertuples(index=False), key=lambda v: (v.task, natural_key(labels[v.variant_key])))
    if tuned:  # one configuration per cell: the one with the most ok seeds (a re-tuning can leave several)
        order_keys = sorted(runs["config_key"].unique(), key=lambda k: (seed_counts.get(k, 0), k))
        rank_of = {k: i for i, k in enumerate(order_keys)}
        runs = runs.iloc[np.argsort(runs["config_key"].map(rank_of).to_numpy(), kind="stable")]
    config_at = dict(zip(zip(runs["method_config"], runs["variant_key"]), runs["config_key"]))
    method_configs = runs.drop_duplicates("method_config")[["method_config", "config_key", "method", "method_family"]]
    if tuned:
        method_configs = method_configs.sort_values("method_config", kind="stable")
    matrix = _mean_matrix(list(method_configs["method_config"]), [c.variant_key for c in columns], config_at, means)
    complete = matrix.notna().all(axis=1) if len(matrix.columns) else pd.Series(False, index=matrix.index)
    ranks = pd.DataFrame(math.nan, index=matrix.index, columns=matrix.columns)
    for column in columns:
        higher = data.tasks[column.task].higher_is_better
        ranks[column.variant_key] = matrix.loc[complete, column.variant_key].rank(ascending=not higher,
                                                                                  method="average")
    mean_rank = ranks.mean(axis=1).where(complete)
    util = _utilization_ranks(site, list(method_configs["method_config"]), [c.variant_key for c in columns],
                              config_at, labels)
    n_columns = len(columns)
    order = sorted(method_configs.itertuples(index=False), key=lambda r: (
        not complete[r.method_config],
        mean_rank[r.method_config] if complete[r.method_config] else -matrix.loc[r.method_config].notna().sum(),
        r.method, r.method_config))
    marks = rank_marks(_rank_values(data, ok, config_at, columns, complete),
                       [r.method_config for r in order if complete[r.method_config]])
    table_id = f"suite-{slug(suite)}-{'tuned-' if tuned else ''}table"
    head = [f'<th>Method</th><th>Family</th><th>{"Tuned" if tuned else "Params"}</th>']
    for column in columns:
        task = data.tasks[column.task]
        label = labels[column.variant_key]
        head.append(f'<th class="num" data-type="num" title="{escape(task.main_metric)} on {escape(column.task)} '
                    f'{escape(label)}">{site.links.task(column.task, "")}'
                    f'{"<br><small>" + escape(label) + "</small>" if label else ""}'
                    f'<br><small>{escape(task.main_metric)} {direction_arrow(task.higher_is_better)}</small></th>')
    if tuned:
        head.append('<th class="nosort" title="interquartile range of the validation main metric over the '
                    'method\'s trials, per task: how much the result depends on the tuning">Sensitivity (IQR)</th>')
    head.append('<th class="num" data-type="num" title="mean rank over the suite\'s tasks (complete rows only)">'
                'Mean rank</th><th class="num" data-type="num" title="95% bootstrap interval of the mean rank; '
                f'{TIE}: not separated from the row above">Rank 95% CI</th>'
                '<th class="num" data-type="num" title="mean rank on codebook utilization (higher is better) over '
                'the task columns that report it (complete rows only)">Utilization rank</th>'
                '<th class="num" data-type="num">Tasks done</th>')
    body, records = [], []
    comparisons: list[Comparison] = []  # tuned cells against their defaults cells
    above_label = ""
    for row in order:
        record: dict[str, Any]
        if tuned:
            params_label = knobs_text(_union_knobs(tuning, [c.task for c in columns], row.method))
            info = data.methods.get(row.method)
            if info and len(info.versions) > 1:
                params_label = f"v{json.loads(row.method_config)[1]}; {params_label}"
            record = {"suite": suite, "track": "tuned", "method": row.method, "family": row.method_family,
                      "tuned": params_label}
        else:
            params = parse_json(json.loads(row.method_config)[2])
            params_label = site.params_labels.get(row.config_key, "")
            record = {"suite": suite, "method": row.method, "family": row.method_family,
                      "method_params": json.dumps(params, sort_keys=True), "params_label": params_label}
        cells, present, missing, spreads = [], 0, [], []
        for column in columns:
            key = config_at.get((row.method_config, column.variant_key))
            column_name = column.task + (f" [{labels[column.variant_key]}]" if labels[column.variant_key] else "")
            counts = status_counts.get(key, {}) if key is not None else {}
            cell_mean = float(means.get(key, math.nan))
            cell_n = int(seed_counts.get(key, 0))
            cell_ci = float(cis.get(key, math.nan))
            if is_finite(cell_mean):
                present += 1
            else:
                missing.append(column_name)
            href = (f"tasks/{data.tasks[column.task].slug}.html#{site.config_rows[key]['row_id']}"
                    if key is not None else None)
            extra = status_badges(counts) + (site.convergence_badge(key) if key is not None else "")
            cell_util = float(util.means.get(key, math.nan)) if key is not None else math.nan
            if is_finite(cell_mean) and is_finite(cell_util):
                extra += (f'<small class="util" title="codebook utilization over the eval split, mean over the '
                          f'{cell_n} ok seed(s)">util {format_number(cell_util, 3)}</small>')
            if tuned and key is not None:
                selected = _selected_text(site, key)
                trials = (f' <a href="{url(_trials_href(site, suite, column.task, row.method))}">trials</a>'
                          if tuning and tuning.has_trials(column.task, row.method) else "")
                extra += f'<small class="chosen" title="selected parameters">{escape(selected)}{trials}</small>'
                record[f"{column_name} selected"] = selected
                method, version = json.loads(row.method_config)
                base = (baselines or {}).get((method, int(version), column.variant_key))
                versus = (Comparison(CellStat(cell_mean, cell_ci, cell_n), base,
                                     data.tasks[column.task].higher_is_better)
                          if base is not None and is_finite(cell_mean) else None)
                if versus is not None:
                    extra += versus.html()
                    comparisons.append(versus)
                record[f"{column_name} defaults mean"] = versus.defaults.mean if versus else math.nan
                record[f"{column_name} vs defaults"] = versus.verdict if versus else ""
            cells.append(stat_cell(cell_mean, cell_ci, cell_n, href=href, extra=extra))
            record.update({f"{column_name} mean": cell_mean, f"{column_name} ci95": cell_ci,
                           f"{column_name} n_seeds": cell_n,
                           f"{column_name} n_not_ok": int(sum(v for s, v in counts.items() if s != "ok")),
                           f"{column_name} utilization": cell_util,
                           f"{column_name} n_unconverged": _flagged_seeds(site, key)})
            if tuned:
                spread, _, n_trials = tuning.spread(column.task, row.method) if tuning else (math.nan, 0, 0)
                record[f"{column_name} iqr"] = spread
                if n_trials and column.task not in {task for task, _ in spreads}:
                    spreads.append((column.task, spread))
        is_complete = bool(complete[row.method_config])
        row_mean_rank = float(mean_rank[row.method_config]) if is_complete else math.nan
        interval = marks.intervals.get(row.method_config)
        record.update({"complete": is_complete, "mean_rank": row_mean_rank,
                       "mean_rank_low": interval.low if interval else math.nan,
                       "mean_rank_high": interval.high if interval else math.nan,
                       "tied_with_above": bool(row.method_config in marks.above
                                               and not marks.above[row.method_config].separated),
                       "utilization_mean_rank": float(util.mean_rank.get(row.method_config, math.nan)),
                       "tasks_done": present, "tasks_total": n_columns})
        records.append(record)
        missing_text = escape("; ".join(missing))
        flag = ("" if is_complete else
                f'<span class="badge incomplete" title="missing: {missing_text}">incomplete</span>')
        rank_cell = (number_cell(row_mean_rank) if is_complete else
                     f'<td class="num incomplete" data-v="" title="not ranked: missing {missing_text}">\u2014</td>')
        family = site.family_of(row.method, row.method_family)
        sensitivity = _sensitivity_cell(spreads, len(columns)) if tuned else ""
        body.append(f'<tr data-family="{escape(family)}" class="{"" if is_complete else "is-incomplete"}">'
                    f'<td>{site.links.method(row.method, "")}{flag}</td><td>{escape(family)}</td>'
                    f'<td class="params">{escape(params_label)}</td>{"".join(cells)}{sensitivity}{rank_cell}'
                    f'{rank_interval_cell(marks, row.method_config, above_label)}'
                    f'{_utilization_rank_cell(util, row.method_config)}'
                    f'<td class="num" data-v="{present}">{present}/{n_columns}</td></tr>')
        above_label = row.method + ("" if tuned else f" ({params_label})")
    statuses = runs["status"].value_counts().to_dict()
    families = sorted({site.family_of(m) for m in method_configs["method"]})
    stem = f"suite-{slug(suite)}" + ("-tuned" if tuned else "")
    download = site.tables.add(stem, f"Suite {suite}" + (" (tuned)" if tuned else ""), "index.html",
                               pd.DataFrame(records), "")
    summary = (f'{len(runs)} runs {status_badges(statuses, skip_ok=False)}; {len(order)} '
               f'{"methods" if tuned else "method configurations"} '
               f'\u00d7 {n_columns} task column(s); {int(complete.sum())} complete, {int((~complete).sum())} '
               'incomplete.' + (" " + summary_sentence(comparisons) if comparisons else ""))
    table = (f'{filter_bar(table_id, families)}<div class="scroll"><table class="sortable" '
             f'id="{escape(table_id)}"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table>'
             f'</div>{RANK_NOTE if marks.any else ""}{download}')
    return summary, table


@dataclass(frozen=True)
class UtilizationRanks:
    """A table's utilization: per config key its mean over ok seeds; per row its mean rank (complete rows)."""

    means: dict[str, float]
    mean_rank: pd.Series  # row key -> mean rank on utilization (NaN: not ranked)
    missing: dict[str, list[str]]  # row key -> the ranked columns it has no utilization in
    ranked_columns: int


def _utilization_ranks(site: SiteContext, rows: list[str], columns: list[str],
                       config_at: dict[tuple[str, str], str], labels: dict[str, str]) -> UtilizationRanks:
    """Mean rank on utilization (higher is better) over the columns where some row reports it; a row missing
    any of those columns is not ranked (the complete-rows rule of the main mean rank)."""
    means = {key: site.config_stat(key, "utilization")[0] for key in set(config_at.values())}
    matrix = _mean_matrix(rows, columns, config_at, {k: v for k, v in means.items() if is_finite(v)})
    reported = [c for c in matrix.columns if matrix[c].notna().any()]
    if not reported:
        return UtilizationRanks(means, pd.Series(math.nan, index=matrix.index), {}, 0)
    complete = matrix[reported].notna().all(axis=1)
    ranks = matrix.loc[complete, reported].rank(ascending=False, method="average")
    mean_rank = ranks.mean(axis=1).reindex(matrix.index)
    missing = {row: [_column_text(c, labels.get(c, "")) for c in reported if not is_finite(matrix.at[row, c])]
               for row in matrix.index[~complete]}
    return UtilizationRanks(means, mean_rank, missing, len(reported))


def _column_text(variant_key: str, label: str) -> str:
    task = json.loads(variant_key)[0]
    return task + (f" [{label}]" if label else "")


def _utilization_rank_cell(util: UtilizationRanks, row: str) -> str:
    """The ``<td>`` of a row's mean rank on utilization (an em dash, with what is missing, when not ranked)."""
    value = float(util.mean_rank.get(row, math.nan))
    if is_finite(value):
        return number_cell(value)
    why = ("no task column reports utilization" if not util.ranked_columns else
           "missing utilization: " + "; ".join(util.missing.get(row, [])))
    return f'<td class="num missing" data-v="" title="not ranked on utilization ({escape(why)})">\u2014</td>'


def _flagged_seeds(site: SiteContext, key: str | None) -> int:
    """How many ok seeds of config ``key`` the board flags (not converged, or too few evals)."""
    return sum(c.flagged for _, c in site.convergence.get(key, [])) if key is not None else 0


def _rank_values(data: Any, ok: pd.DataFrame, config_at: dict[tuple[str, str], str], columns: list[Any],
                 complete: pd.Series) -> pd.DataFrame:
    """(config = row key, task = column key, seed, value oriented so higher is better) of the complete rows."""
    higher = {c.variant_key: data.tasks[c.task].higher_is_better for c in columns}
    row_of = {key: (row, column) for (row, column), key in config_at.items() if complete.get(row, False)}
    values = ok[ok["config_key"].isin(row_of.keys()) & np.isfinite(ok["main_value"].to_numpy(dtype=float))]
    if values.empty:
        return pd.DataFrame(columns=["config", "task", "seed", "value"])
    cells = [row_of[k] for k in values["config_key"]]
    table = pd.DataFrame({"config": [c[0] for c in cells], "task": [c[1] for c in cells],
                          "seed": values["seed"].to_numpy(), "value": values["main_value"].to_numpy(dtype=float)})
    turned = [oriented(group["value"], higher[column]) for column, group in table.groupby("task")]
    return table.assign(value=pd.concat(turned))


def _union_knobs(tuning: Tuning | None, tasks: list[str], method: str) -> list[str] | None:
    """The knobs tuned for ``method`` over the table's tasks (None: no trials found)."""
    found = [tuning.knobs(task, method) for task in tasks] if tuning else []
    found = [k for k in found if k is not None]
    return sorted({k for knobs in found for k in knobs}) if found else None


def _selected_text(site: SiteContext, config_key: str) -> str:
    """The selected parameters of a tuned configuration: method params that differ from the defaults, and lr."""
    config = site.config_rows[config_key]
    info = site.data.methods.get(config["method"])
    return selected_params_text(parse_json(config["method_params"]), info.defaults if info else {},
                                budget_lr(config["budget"]), value_text)


def _trials_href(site: SiteContext, suite: str, task: str, method: str) -> str:
    return f"tasks/{site.data.tasks[task].slug}.html#{trials_anchor(suite, method)}"


def _sensitivity_cell(spreads: list[tuple[str, float]], n_columns: int) -> str:
    """The IQR of the validation main metric over the trials, per task of the row."""
    if not spreads:
        return '<td class="num missing" data-v="">\u2014</td>'
    if n_columns == 1:
        value = spreads[0][1]
        return f'<td class="num" data-v="{data_value(value)}">{format_number(value)}</td>'
    lines = "<br>".join(f"<small>{escape(task)}</small> {format_number(value)}" for task, value in spreads)
    return f'<td class="num">{lines}</td>'


def _mean_matrix(rows: list[str], columns: list[str], config_at: dict[tuple[str, str], str],
                 means: dict[str, float]) -> pd.DataFrame:
    """method config x task variant -> mean of the main metric (NaN where the config has no ok seed)."""
    values = pd.DataFrame(math.nan, index=rows, columns=columns).to_numpy(copy=True)
    row_position = {name: i for i, name in enumerate(rows)}
    column_position = {name: j for j, name in enumerate(columns)}
    for (row, column), key in config_at.items():
        if key in means:
            values[row_position[row], column_position[column]] = means[key]
    return pd.DataFrame(values, index=rows, columns=columns)


def tasks_section(site: SiteContext) -> str:
    """The table of tasks."""
    rows, records = [], []
    for task in site.data.tasks.values():
        rows.append(f'<tr><td>{site.links.task(task.name, "")}</td><td>{escape(task.kind)}</td>'
                    f'<td>{escape(task.main_metric)} {direction_arrow(task.higher_is_better)}</td>'
                    f'<td>{escape(task.description)}</td>'
                    f'<td class="num" data-v="{len(task.variants)}">{len(task.variants)}</td>'
                    f'<td class="num" data-v="{task.n_runs}">{task.n_runs}</td><td>{escape(task.source)}</td></tr>')
        records.append({"task": task.name, "kind": task.kind, "main_metric": task.main_metric,
                        "higher_is_better": task.higher_is_better, "description": task.description,
                        "variants": len(task.variants), "runs": task.n_runs, "source": task.source})
    download = site.tables.add("tasks", "Tasks", "index.html#tasks", pd.DataFrame(records), "")
    return ('<section id="tasks"><h2>Tasks</h2><div class="scroll"><table class="sortable" id="tasks-table">'
            '<thead><tr><th>Task</th><th>Kind</th><th>Main metric</th><th>Description</th>'
            '<th class="num" data-type="num">Variants</th><th class="num" data-type="num">Runs</th>'
            f'<th>Source</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>{download}</section>')


def methods_section(site: SiteContext) -> str:
    """The table of methods."""
    rows, records = [], []
    for method in site.data.methods.values():
        rows.append(f'<tr data-family="{escape(method.family)}"><td>{site.links.method(method.name, "")}</td>'
                    f'<td>{escape(method.family)}</td><td>{paper_link(method.paper)}</td>'
                    f'<td>{escape(method.description)}</td>'
                    f'<td class="num" data-v="{method.n_runs}">{method.n_runs}</td><td>{escape(method.source)}</td>'
                    '</tr>')
        records.append({"method": method.name, "family": method.family, "paper": method.paper,
                        "description": method.description, "defaults": json.dumps(method.defaults, sort_keys=True),
                        "runs": method.n_runs, "source": method.source})
    download = site.tables.add("methods", "Methods", "index.html#methods", pd.DataFrame(records), "")
    return ('<section id="methods"><h2>Methods</h2>' + filter_bar("methods-table", site.families) +
            '<div class="scroll"><table class="sortable" id="methods-table"><thead><tr><th>Method</th>'
            '<th>Family</th><th>Paper</th><th>Description</th><th class="num" data-type="num">Runs</th>'
            f'<th>Source</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>{download}</section>')
