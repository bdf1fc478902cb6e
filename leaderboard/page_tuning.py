"""The tuning sections of a task page: per ``vqbench tune`` name, a robustness plot and every trial.

The plot shows, per method, the final validation main metric of each trial that finished ``ok``
(:func:`vqbench.leaderboard.svg.strip_chart`): a short strip near the top means the method works out of
the box, a tall one that it needs its tuning. The listing below it has one block per method (the
anchor the index's tuned table links to), one row per trial with its parameters, status and validation
value, the selected trial marked; each row carries the id of the trial's configuration, so a trial's
run page links back to its row.
"""

from __future__ import annotations

import math

import pandas as pd

from vqbench.leaderboard import svg
from vqbench.leaderboard.context import SiteContext
from vqbench.leaderboard.data import params_diff, params_text, parse_json, slug, value_text
from vqbench.leaderboard.html import data_value, escape, format_number, url
from vqbench.leaderboard.tracks import Tuning, trials_anchor, tuning_anchor

ROOT = "../"


def trial_params_text(method_params: str, defaults: dict, lr: float) -> str:
    """A trial's parameters as shown: method params that differ from the registered defaults, then lr."""
    diff = params_diff(parse_json(method_params), defaults)
    parts = [params_text(diff)] if diff else []
    if math.isfinite(lr):
        parts.append(f"lr={value_text(lr)}")
    return ", ".join(parts) or "defaults"


def knobs_text(knobs: list[str] | None) -> str:
    """What a tuning searched: ``beta, ema_decay and lr``, or that it was the lr alone."""
    if knobs is None:
        return "no trials"
    if not knobs:
        return "lr only (the method declares no search space)"
    return ", ".join(knobs) + " and lr"


def tuning_sections(site: SiteContext, task_name: str) -> str:
    """Every tuning's section for task ``task_name`` (empty when no tuning ran trials on it)."""
    return "".join(_section(site, task_name, tuning) for _, tuning in sorted(site.data.tunings.items())
                   if (tuning.trials["task"] == task_name).any())


def _section(site: SiteContext, task_name: str, tuning: Tuning) -> str:
    data = site.data
    task = data.tasks[task_name]
    trials = tuning.trials[tuning.trials["task"] == task_name]
    metric = task.main_metric
    counts = "/".join(str(n) for n in tuning.trial_counts) or str(trials.groupby("method").size().max())
    strips, blocks = [], []
    for method, group in trials.groupby("method", sort=True):
        defaults = data.methods[method].defaults if method in data.methods else {}
        texts = [trial_params_text(p, defaults, lr) for p, lr in zip(group["method_params"], group["lr"])]
        ok = [(float(v), f"trial {t}: {text}: {metric} {format_number(v)}" + (" (selected)" if s else ""), s)
              for v, t, text, s, status in zip(group["value"], group["trial"], texts, group["selected"],
                                               group["status"]) if status == "ok" and math.isfinite(v)]
        highlight = next((i for i, item in enumerate(ok) if item[2]), None)
        strips.append(svg.Strip(method, [(v, tip) for v, tip, _ in ok], highlight))
        spread, n_ok, n_all = tuning.spread(task_name, method)
        spread_text = format_number(spread) or "\u2014"
        summary = (f'{site.links.method(method, ROOT)}: tuned {escape(knobs_text(tuning.knobs(task_name, method)))}; '
                   f'{n_ok} of {n_all} trials ok; IQR of validation {escape(metric)} '
                   f'{escape(spread_text)}')
        rows = [f'<tr class="group"><th colspan="6">{summary}</th></tr>']
        for row, text in zip(group.itertuples(index=False), texts):
            mark = '<span class="badge selected" title="best validation value">selected</span>' if row.selected \
                else ""
            run = url(ROOT + "runs/" + site.run_slugs[row.run_id] + ".html")
            css = ' class="is-selected"' if row.selected else ""
            rows.append(f'<tr id="{escape(row.row_id)}"{css}>'
                        f'<td class="num" data-v="{row.trial}">{row.trial if row.trial >= 0 else ""}</td>'
                        f'<td class="params">{escape(text)}</td>'
                        f'<td><span class="badge st-{escape(row.status)}">{escape(row.status)}</span></td>'
                        f'<td class="num" data-v="{data_value(row.value)}">{format_number(row.value)}</td>'
                        f'<td>{mark}</td><td class="runs"><a href="{run}">{escape(row.run_id)}</a></td></tr>')
        blocks.append(f'<tbody id="{escape(trials_anchor(tuning.name, method))}">{"".join(rows)}</tbody>')
    chart = svg.strip_chart(strips, f"validation {metric}", task.higher_is_better,
                            f"{task_name}: validation {metric} of every trial ({tuning.name})")
    table_id = f"trials-{slug(tuning.name)}"
    records = trials.assign(tuning=tuning.name, validation_metric=metric)
    download = site.tables.add(f"trials-{slug(tuning.name)}-{task.slug}", f"Trials of {tuning.name} on {task_name}",
                               f"tasks/{task.slug}.html#{tuning_anchor(tuning.name)}",
                               pd.DataFrame(records.drop(columns=["config_key", "row_id"])), ROOT)
    return (f'<section id="{escape(tuning_anchor(tuning.name))}"><h2>Tuning {escape(tuning.name)}: '
            f'{escape(counts)} trials per method</h2>'
            f'<p class="note"><code>vqbench tune {escape(tuning.name)}</code> ran the same number of trials for '
            'every method (quasi-random points over the method\'s declared search space and the learning rate; '
            'the lr alone for a method that declares none) and selected, per method, the trial with the best '
            f'final <b>validation</b> {escape(metric)} (ties to the lower trial index); the selected '
            'configuration then ran at fresh seeds: the tuned table of the suite. Each point of the plot is '
            'one trial that finished ok; the box spans its quartiles (the IQR is the sensitivity column of the '
            'tuned table), the line is the median, the outlined point the selected trial; better is up. A short '
            'strip near the top: the method works out of the box; a tall one: it needs its tuning.</p>'
            f'{chart}<div class="scroll"><table class="trials" id="{escape(table_id)}"><thead><tr>'
            '<th class="num">Trial</th><th>Parameters</th><th>Status</th>'
            f'<th class="num">validation {escape(metric)}</th><th>Selected</th><th>Run</th></tr></thead>'
            f'{"".join(blocks)}</table></div>{download}</section>')
