"""``methods/<method>.html``: description, citation, differences from the reference, defaults, results."""

from __future__ import annotations

import json
import math

import pandas as pd

from vqbench.leaderboard.context import SiteContext
from vqbench.leaderboard.data import MethodInfo
from vqbench.leaderboard.html import (
    STATUS_ORDER,
    data_value,
    direction_arrow,
    escape,
    is_finite,
    paper_link,
    stat_cell,
    status_badges,
)
from vqbench.leaderboard.tracks import TRACK_TRIAL

ROOT = "../"
DIFFERENCES_HEADING = "Differences from the reference implementation"


def write_method_page(site: SiteContext, name: str) -> None:
    """Write ``methods/<slug>.html`` for method ``name``."""
    data = site.data
    info = data.methods[name]
    configs = data.configs[(data.configs["method"] == name) & (data.configs["track"] != TRACK_TRIAL)]
    rows, records = [], []
    for key in configs.sort_values(["task", "variant_key", "method_params"]).index:
        config = site.config_rows[key]
        task = data.tasks[config["task"]]
        main, utilization, perplexity = (site.config_stat(key, m) for m in ("main_value", "utilization", "perplexity"))
        rank, total = site.variant_ranks.get(key, (math.nan, 0))
        counts = {status: int(config[f"n_{status}"]) for status in STATUS_ORDER}
        variant_label = site.variant_labels.get(config["variant_key"], "")
        rows.append(f'<tr data-family="{escape(info.family)}">'
                    f'<td>{site.links.task(config["task"], ROOT, config["row_id"])}</td>'
                    f'<td class="params">{escape(variant_label)}</td>'
                    f'<td class="params">{escape(site.params_labels[key])}</td>'
                    f'<td>{escape(", ".join(config["suites"]))}</td>'
                    f'<td class="num" data-v="{counts["ok"]}">{counts["ok"]}/{int(config["n_runs"])}'
                    f'{status_badges(counts)}{site.convergence_badge(key)}</td>'
                    f'<td>{escape(task.main_metric)} {direction_arrow(task.higher_is_better)}</td>'
                    + stat_cell(*main, show_n=False) + stat_cell(*utilization, show_n=False)
                    + stat_cell(*perplexity, show_n=False)
                    + (f'<td class="num" data-v="{data_value(rank)}">{int(rank)} of {total}</td>' if is_finite(rank)
                       else '<td class="num missing" data-v="">\u2014</td>')
                    + site.run_links(key, ROOT) + "</tr>")
        records.append({"method": name, "task": config["task"], "variant_label": variant_label,
                        "task_params": config["task_params"], "method_params": config["method_params"],
                        "params_label": site.params_labels[key], "suites": ", ".join(config["suites"]),
                        "n_ok": counts["ok"], "n_runs": int(config["n_runs"]), "main_metric": task.main_metric,
                        "main mean": main[0], "main ci95": main[1], "utilization mean": utilization[0],
                        "utilization ci95": utilization[1], "perplexity mean": perplexity[0],
                        "perplexity ci95": perplexity[1], "rank_in_variant": rank, "configs_in_variant": total,
                        "n_ok_flagged_convergence": sum(c.flagged for _, c in site.convergence.get(key, []))})
    defaults = "".join(f"<tr><td><code>{escape(k)}</code></td><td><code>{escape(json.dumps(v))}</code></td></tr>"
                       for k, v in sorted(info.defaults.items()))
    download = site.tables.add(f"method-{info.slug}", f"Method {name}", f"methods/{info.slug}.html",
                               pd.DataFrame(records), ROOT)
    parts = [f'<h1>Method: {escape(name)}</h1>', f'<p class="lead">{escape(info.description)}</p>',
             '<dl class="meta">',
             f'<dt>Family</dt><dd>{escape(info.family)}</dd>',
             f'<dt>Paper</dt><dd>{paper_link(info.paper) or "not given"}</dd>',
             f'<dt>Source</dt><dd>{escape(info.source)}'
             + (' (plugin)' if info.source and info.source != "vqbench" else "") + '</dd>',
             f'<dt>Version(s)</dt><dd>{escape(", ".join(str(v) for v in info.versions))}</dd>',
             f'<dt>Runs</dt><dd>{info.n_runs}</dd></dl>',
             differences_section(info),
             '<h2>Defaults</h2>' + (f'<table><thead><tr><th>Parameter</th><th>Default</th></tr></thead><tbody>'
                                    f'{defaults}</tbody></table>' if defaults else '<p>No parameters.</p>'),
             '<h2>Results across tasks</h2><p class="note">Main metric, utilization and perplexity: mean over ok '
             'seeds \u00b1 95% CI. Rank: position of this configuration among all configurations of the same '
             'task variant by the main metric. A <span class="badge conv">not converged</span> badge counts the '
             'ok seeds whose main metric had not settled (<a href="../protocol.html#convergence">rule</a>).</p>',
             '<div class="scroll"><table class="sortable" id="method-table"><thead><tr><th>Task</th>'
             '<th>Task variant</th><th>Params</th><th>Suites</th><th class="num" data-type="num">Seeds</th>'
             '<th>Main metric</th><th class="num" data-type="num">Main mean</th>'
             '<th class="num" data-type="num">utilization \u2191</th>'
             '<th class="num" data-type="num">perplexity \u2191</th><th class="num" data-type="num">Rank</th>'
             f'<th class="nosort">Runs</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>{download}']
    site.write(f"methods/{info.slug}.html", site.page(f"Method {name}", "".join(parts), ROOT))


def differences_section(info: MethodInfo) -> str:
    """How the method's implementation differs from the authors' reference (the registry's ``differences``,
    stored with each run as ``method_differences``); nothing when the store does not say."""
    text = info.differences.strip()
    if not text:
        return ""
    paragraphs = "".join(f"<p>{escape(p.strip())}</p>" for p in text.split("\n\n") if p.strip())
    return f'<h2 id="differences">{DIFFERENCES_HEADING}</h2><div class="differences">{paragraphs}</div>'
