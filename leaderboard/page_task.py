"""``tasks/<task>.html``: every config of one task with mean +/- 95% CI over seeds, and a Pareto plot.

A task whose generation metrics use a trained classifier's features (``gfd_<x>`` with ``<x>_test_accuracy`` and
``<x>_recipe_hash`` logged by every evaluation, e.g. ``digitsnet`` of ``gen-digits``) says which classifier that
was, from those metric rows: :func:`classifier_note`. Those two figures describe the classifier, not the method, so
they are stated there and left out of the table.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from vqbench.leaderboard import svg
from vqbench.leaderboard.context import SiteContext
from vqbench.leaderboard.convergence import (
    CONVERGED,
    FEW_EVALS,
    NOT_CONVERGED,
    REFERENCE_FRACTION,
    STATES,
    TOLERANCE,
    change_text,
)
from vqbench.leaderboard.data import COLLAPSE_METRICS, metric_direction, natural_key, parse_json
from vqbench.leaderboard.html import STATUS_ORDER, direction_arrow, escape, filter_bar, stat_cell, status_badges
from vqbench.leaderboard.page_tuning import tuning_sections
from vqbench.leaderboard.tracks import TRACK_TRIAL

ROOT = "../"
ACCURACY_SUFFIX, RECIPE_SUFFIX = "_test_accuracy", "_recipe_hash"
#: hex digits of a classifier's recipe hash (logged as the integer it spells; vqbench.tasks.digitsnet.HASH_DIGITS)
RECIPE_HEX_DIGITS = 12


def task_classifiers(metrics: list[str]) -> list[str]:
    """The classifiers ``x`` behind a task's metrics: ``gfd_x`` and ``x_test_accuracy`` both logged."""
    names = [m[len("gfd_"):] for m in metrics if m.startswith("gfd_")]
    return [name for name in names if f"{name}{ACCURACY_SUFFIX}" in metrics]


def classifier_note(runs: pd.DataFrame, task: str, classifier: str) -> str:
    """One sentence (HTML) stating ``classifier``'s test accuracy and recipe hash, from the final metric rows of
    ``task``'s ok runs (``runs``: :attr:`SiteData.runs`); one entry per distinct classifier, so a task variant
    with another data split (hence another classifier) shows both. Empty when no ok run logged them."""
    accuracy_col, recipe_col = f"metric.{classifier}{ACCURACY_SUFFIX}", f"metric.{classifier}{RECIPE_SUFFIX}"
    if accuracy_col not in runs.columns:
        return ""
    rows = runs[(runs["task"] == task) & (runs["status"] == "ok") & runs[accuracy_col].notna()]
    recipes = rows[recipe_col] if recipe_col in rows.columns else pd.Series(np.nan, index=rows.index)
    seen: dict[tuple[str, float], int] = {}
    for accuracy, recipe in zip(rows[accuracy_col].to_numpy(dtype=float), recipes.to_numpy(dtype=float)):
        recipe_hex = f"{int(recipe):0{RECIPE_HEX_DIGITS}x}" if math.isfinite(recipe) else ""
        key = (recipe_hex, float(accuracy))
        seen[key] = seen.get(key, 0) + 1
    if not seen:
        return ""
    parts = [f"{100 * accuracy:.1f}%" + (f" (recipe hash <code>{escape(recipe_hex)}</code>, " if recipe_hex else " (")
             + f"{n} run{'s' if n > 1 else ''})" for (recipe_hex, accuracy), n in sorted(seen.items())]
    name = escape(classifier)
    return (f'<p class="note">Features of gfd_{name} and of the other <code>*_{name}</code> figures: the classifier '
            f'<code>{name}</code>, trained once on the training split of this task\'s data; its test accuracy on the '
            f'eval split: {"; ".join(parts)}. Its weights are cached as <code>&lt;recipe hash&gt;.pt</code> under '
            f'<code>$VQBENCH_CACHE/{name}</code> (default <code>~/.cache/vqbench/{name}</code>).</p>')


def write_task_page(site: SiteContext, name: str) -> None:
    """Write ``tasks/<slug>.html`` for task ``name``."""
    data = site.data
    task = data.tasks[name]
    configs = data.configs[(data.configs["task"] == name) & (data.configs["track"] != TRACK_TRIAL)]
    keys = list(configs.index)
    classifiers = task_classifiers(task.metrics)
    described = {f"{c}{suffix}" for c in classifiers for suffix in (ACCURACY_SUFFIX, RECIPE_SUFFIX)}
    metrics = [m for m in task.metrics if m not in described]  # stated in the classifier note instead
    means = data.mean.reindex(index=keys, columns=metrics).to_numpy(dtype=float)
    cis = data.ci.reindex(index=keys, columns=metrics).to_numpy(dtype=float)
    seed_counts = data.n.reindex(index=keys, columns=metrics).fillna(0).to_numpy(dtype=int)
    multi_variant = len(task.variants) > 1
    # default order: best main metric first, missing last
    main_index = metrics.index(task.main_metric) if task.main_metric in metrics else None
    if main_index is not None:
        values = means[:, main_index]
        order = np.argsort(np.where(np.isfinite(values), values if not task.higher_is_better else -values, np.inf),
                           kind="stable")
    else:
        order = np.arange(len(keys))
    head = ["<th>Method</th><th>Family</th><th>Params</th>"]
    if multi_variant:
        head.append("<th>Task variant</th>")
    head.append('<th>Suites</th><th class="num" data-type="num" title="ok seeds / runs">Seeds</th>')
    for j, metric in enumerate(metrics):
        group = "main metric" if j == main_index else ("collapse" if metric in COLLAPSE_METRICS else "quality")
        higher = task.higher_is_better if j == main_index else metric_direction(metric)
        css = "num main" if j == main_index else "num"
        head.append(f'<th class="{css}" data-type="num" title="{escape(group)}">{escape(metric)} '
                    f'{direction_arrow(higher)}<br><small>{escape(group)}</small></th>')
    head.append('<th class="nosort">Runs (seeds)</th>')
    rows, records, points = [], [], []
    for i in order:
        key = keys[i]
        config = site.config_rows[key]
        counts = {status: int(config[f"n_{status}"]) for status in STATUS_ORDER}
        family = site.family_of(config["method"], str(config["method_family"]))
        params_label = site.params_labels[key]
        variant_label = site.variant_labels.get(config["variant_key"], "")
        suites = ", ".join(config["suites"])
        cells = [stat_cell(means[i, j], cis[i, j], int(seed_counts[i, j]), show_n=False, n_expected=counts["ok"])
                 for j in range(len(metrics))]
        n_ok, n_runs = counts["ok"], int(config["n_runs"])
        seeds = (f'<td class="num" data-v="{n_ok}" title="{n_ok} ok of {n_runs} runs">{n_ok}/{n_runs}'
                 f'{status_badges(counts)}{site.convergence_badge(key)}</td>')
        convergence = site.convergence_counts(key)
        rows.append(f'<tr id="{escape(config["row_id"])}" data-family="{escape(family)}">'
                    f'<td>{site.links.method(config["method"], ROOT)}</td><td>{escape(family)}</td>'
                    f'<td class="params">{escape(params_label)}</td>'
                    + (f'<td class="params">{escape(variant_label)}</td>' if multi_variant else "")
                    + f'<td>{escape(suites)}</td>{seeds}{"".join(cells)}{site.run_links(key, ROOT)}</tr>')
        record = {"task": name, "method": config["method"], "family": family,
                  "method_params": config["method_params"], "params_label": params_label,
                  "task_params": config["task_params"], "budget": config["budget"], "variant_label": variant_label,
                  "suites": suites, "n_ok": n_ok, "n_runs": n_runs,
                  **{f"n_{status}": counts[status] for status in ("diverged", "failed", "timeout")},
                  "n_ok_converged": convergence[CONVERGED], "n_ok_not_converged": convergence[NOT_CONVERGED],
                  "n_ok_few_evals": convergence[FEW_EVALS]}
        for j, metric in enumerate(metrics):
            record[f"{metric} mean"], record[f"{metric} ci95"] = means[i, j], cis[i, j]
            record[f"{metric} n"] = int(seed_counts[i, j])
        records.append(record)
        if "utilization" in metrics and main_index is not None:
            variant_note = "; " + variant_label if variant_label else ""
            points.append({"x": means[i, metrics.index("utilization")], "y": means[i, main_index],
                           "label": f'{config["method"]} ({params_label}{variant_note})',
                           "family": family, "href": f'#{config["row_id"]}', "row": config["row_id"]})
    table_id = "task-table"
    families = sorted({site.family_of(method) for method in configs["method"]})
    download = site.tables.add(f"task-{task.slug}", f"Task {name}", f"tasks/{task.slug}.html", pd.DataFrame(records),
                               ROOT)
    parts = [f'<h1>Task: {escape(name)}</h1>', f'<p class="lead">{escape(task.description)}</p>',
             '<dl class="meta">'
             f'<dt>Kind</dt><dd>{escape(task.kind)}</dd>'
             f'<dt>Main metric</dt><dd>{escape(task.main_metric)} ({"higher" if task.higher_is_better else "lower"}'
             ' is better)</dd>'
             f'<dt>Source</dt><dd>{escape(task.source)}</dd>'
             f'<dt>Runs</dt><dd>{task.n_runs} in {len(keys)} configurations, {len(task.variants)} variant(s)</dd>'
             '</dl>']
    parts += [classifier_note(data.runs, name, c) for c in classifiers]
    ok_runs = data.runs[(data.runs["task"] == name) & (data.runs["status"] == "ok")
                        & (data.runs["track"] != TRACK_TRIAL)]
    notes = budget_notes(ok_runs, task.main_metric)
    if notes:
        parts.append('<p class="note" id="convergence">' + " ".join(notes) + ' Tuning trials are left out; the '
                     '<a href="../protocol.html#convergence">rule</a> is on the Protocol page.</p>')
    if multi_variant:
        parts.append(_variants_table(site, task.variants))
    if points:
        parts.append('<h2>Codebook utilization vs main metric</h2><p class="note">One point per row of the table '
                     'below (mean over ok seeds); colour = method family; outlined points are on the Pareto '
                     'front (no other row has both higher utilization and a better main metric). The y axis is '
                     'oriented so that better is up. Click a point to jump to its row.</p>')
        parts.append(svg.pareto_chart(points, "utilization", task.main_metric, task.higher_is_better,
                                      families, f"{name}: utilization vs {task.main_metric}"))
    parts.append('<h2>All configurations</h2><p class="note">Each cell: mean over the ok seeds '
                 '<span class="ci">\u00b1 95% CI half-width</span> (n shown where fewer seeds than the row\'s have '
                 'a value). Final values are taken at each run\'s last eval step. A <span class="badge conv">not '
                 'converged</span> badge in <b>Seeds</b> counts the ok seeds whose main metric still moved by 1% or '
                 'more over their last 25% of steps, or had too few evals there to tell (<a href="../protocol.html'
                 '#convergence">rule</a>; hover it for each seed\'s change). Click a header to sort; filter '
                 'by family or search any text.</p>')
    parts.append(filter_bar(table_id, families))
    parts.append(f'<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>{"".join(head)}</tr>'
                 f'</thead><tbody>{"".join(rows)}</tbody></table></div>{download}')
    parts.append(tuning_sections(site, name))
    site.write(f"tasks/{task.slug}.html", site.page(f"Task {name}", "".join(parts), ROOT))


def budget_notes(ok_runs: pd.DataFrame, metric: str) -> list[str]:
    """One sentence (HTML) per training length of ``ok_runs`` (a task's ok runs, any track): how many converged by
    the rule, the median change of those that did not, and, where most did not, that the table compares methods
    where they stood when the budget ended. Runs are grouped by their budget's ``steps`` and ``batch_size`` (tuned
    runs differ in learning rate only, so they share their suite's group; 0 where the budget does not say)."""
    budgets = [parse_json(budget) for budget in ok_runs["budget"]]
    lengths = pd.DataFrame([(int(b.get("steps") or 0), int(b.get("batch_size") or 0)) if isinstance(b, dict)
                            else (0, 0) for b in budgets], columns=["steps", "batch"], index=ok_runs.index)
    notes = []
    for (steps, batch), group in ok_runs.groupby([lengths["steps"], lengths["batch"]]):
        states = group["convergence"].fillna(FEW_EVALS)
        counts = {state: int((states == state).sum()) for state in STATES}
        moved = group.loc[states == NOT_CONVERGED, "convergence_change"].astype(float)
        where = f"{steps:,} steps" if steps > 0 else "an unknown number of steps"
        where += f" (batch {batch})" if batch > 0 else ""
        text = (f"At {where}: {counts[CONVERGED]} of {len(group)} ok runs converged by the rule "
                f"({escape(metric)} moved less than {TOLERANCE:.0%} over their last {1 - REFERENCE_FRACTION:.0%} "
                "of steps)")
        if counts[NOT_CONVERGED]:
            text += (f"; {counts[NOT_CONVERGED]} still moved (median change {change_text(float(moved.median()))}, "
                     f"largest {change_text(float(moved.max()))})")
        if counts[FEW_EVALS]:
            text += f"; {counts[FEW_EVALS]} had too few evals in that window to tell"
        text += "."
        if 2 * counts[CONVERGED] < len(group):
            text += (" Most of these runs had not converged when their budget ended, so their rows compare "
                     "methods at this budget, not at convergence.")
        notes.append(text)
    return notes


def _variants_table(site: SiteContext, variant_keys: list[str]) -> str:
    """The folded table of a task's variants: label, task params and budget of each."""
    rows = "".join(f'<tr><td>{escape(site.variant_labels.get(key, ""))}</td>'
                   f'<td><code>{escape(json.loads(key)[2])}</code></td><td><code>{escape(json.loads(key)[3])}</code>'
                   f'</td></tr>' for key in sorted(variant_keys, key=lambda v: natural_key(
                       site.variant_labels.get(v, ""))))
    return ('<details><summary>Task variants (parameters and budgets)</summary><div class="scroll">'
            '<table><thead><tr><th>Variant</th><th>Task params</th><th>Budget</th></tr></thead>'
            f'<tbody>{rows}</tbody></table></div></details>')
