"""``protocol.html``: how the numbers on the board are produced and read.

Budgets, seeds, the convergence rule, tuning, metric definitions, rank uncertainty and what CPU-scale means.
The prose restates the code's own definitions (:mod:`.convergence`, :mod:`.ranking`, :mod:`vqbench.tuning`,
and ``bench/metrics.py``, whose formulas the site cannot import without torch); every number about the runs
(which budgets, seeds, devices and tunings appear, how many runs converged) is derived from the store.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from vqbench.leaderboard.context import SiteContext
from vqbench.leaderboard.convergence import (
    CONVERGED,
    FEW_EVALS,
    NOT_CONVERGED,
    REFERENCE_FRACTION,
    TOLERANCE,
)
from vqbench.leaderboard.data import COLLAPSE_METRICS, natural_key, parse_json, value_text
from vqbench.leaderboard.html import data_value, escape, format_number, url
from vqbench.leaderboard.ranking import ALPHA, BOOTSTRAP_SAMPLES, EXACT_MAX_PAIRS
from vqbench.leaderboard.tracks import TRACK_TRIAL
from vqbench.spec import Budget
from vqbench.tuning import SHARED_KNOBS

SECTIONS = (("coverage", "Coverage"), ("budgets", "Budgets"), ("seeds", "Seeds"), ("convergence", "Convergence"),
            ("tuning", "Tuning"), ("metrics", "Metrics"), ("ranks", "Rank uncertainty"), ("cpu-scale", "CPU-scale"))
#: what a budget key is when a sweep does not set it (the Other column lists only the keys that differ)
BUDGET_DEFAULTS = asdict(Budget())
#: budget keys shown as columns (the others, when set, are listed together)
BUDGET_COLUMNS = ("steps", "batch_size", "lr", "eval_interval", "warmup_steps")

#: metric definitions (README.md "What is measured" and the docstrings of bench/metrics.py)
METRIC_DEFINITIONS = (
    ("utilization", "fraction of the codebook used at least once over the whole eval split: "
                    "#{k : counts_k &gt; 0} / K. Always counted over a whole split, never over a "
                    "training batch or buffer (one batch undercounts what a codebook uses)."),
    ("perplexity", "exp(H(p)) of the code usage, p_k = counts_k / \u03a3 counts, "
                   "H = \u2212\u03a3 p log p: K for uniform usage, 1 when one code takes every input."),
    ("dead_codes", "codes never used over the eval split: #{k : counts_k = 0}."),
    ("codebook_rank", "effective rank of the codebook (Roy &amp; Vetterli 2007): exp(H(s / \u03a3 s)) of the "
                      "singular values s of the centred K \u00d7 d code matrix; between 1 (codes on one line) and "
                      "d (isotropic)."),
    ("embedding_rank", "the same effective rank of the encoder outputs (the latents the quantizer receives) "
                       "over the eval split."),
    ("tokens_collapse_index", "distinct codes as a fraction of K, after merging (single linkage) codes closer "
                              "than 0.05 \u00d7 \u03c3_z, \u03c3_z = \u221a(trace Cov(z)) the "
                              "RMS spread of the encoder outputs: low when codes merged onto a few values "
                              "(tokens collapse)."),
    ("embeddings_collapse_index", "embedding effective rank / the data's own effective rank: low when the "
                                  "encoder keeps few directions (embeddings collapse)."),
    ("quality metrics", "each task's own: MSE; PSNR, SSIM, LPIPS and a Fr\u00e9chet distance for images; NLL "
                        "(bits per token), a generation Fr\u00e9chet distance, precision and recall for generation. "
                        "A Fr\u00e9chet distance is named after its feature extractor (<code>fid_inception</code> "
                        "only with the standard Inception weights, else <code>fd_&lt;extractor&gt;</code>), so a "
                        "column never mixes meanings."),
    ("gfd_digitsnet", "gen-digits' main metric (since its version 3002; <code>gfd_randcnn</code> before): the "
                      "Fr\u00e9chet distance between the generated samples and the eval images in the penultimate "
                      "features (64) of <code>digitsnet</code>, a small digits classifier trained once, "
                      "deterministically, on the digits training split (its test accuracy is on the task page). "
                      "<code>precision_digitsnet</code> / <code>recall_digitsnet</code>: improved precision and "
                      "recall (Kynk\u00e4\u00e4nniemi et al., k = 3) in the same features; "
                      "<code>class_coverage_digitsnet</code>: the fraction of the 10 classes that the classifier "
                      "assigns to at least 5% (half the uniform share) of the samples; "
                      "<code>class_kl_digitsnet</code>: KL divergence of the samples' predicted-class shares from "
                      "the eval images'."),
)


def write_protocol(site: SiteContext) -> None:
    """Write ``protocol.html``."""
    runs = site.data.runs
    shown = runs[runs["track"] != TRACK_TRIAL] if len(runs) else runs
    parts = ['<h1>Protocol</h1><p class="lead">How every number on this board is produced and how to read it. '
             'The rules are the code\'s; the budgets, seeds, devices and counts below are read from the result '
             'store this site was built from.</p>',
             '<p>Sections: ' + " \u00b7 ".join(f'<a href="{url("#" + anchor)}">{escape(title)}</a>'
                                               for anchor, title in SECTIONS) + '</p>',
             _coverage_section(site), _budgets_section(site, shown), _seeds_section(shown), _convergence_section(shown),
             _tuning_section(site), _metrics_section(site), _ranks_section(), _cpu_section(shown)]
    site.write("protocol.html", site.page("Protocol", "".join(parts), ""))


def _coverage_section(site: SiteContext) -> str:
    """Per suite and task: the runs its sweep file planned, and how many of them this store holds (ok / other)."""
    text = ('<section id="coverage"><h2>Coverage</h2><p>What each suite planned (its membership file, written by '
            '<code>vqbench sweep run</code>) against what this store holds. A planned run that is missing was not '
            'run for this store, or its results were not kept: a suite table ranks only the runs present, so a '
            'task with no runs here has no column, whatever the suite file says.</p>')
    statuses = dict(zip(site.data.runs["run_id"], site.data.runs["status"])) if len(site.data.runs) else {}
    rows, records = [], []
    for name, plan in sorted(site.data.store.sweep_files().items()):
        if site.data.suite_filter is not None and name != site.data.suite_filter:
            continue
        per_task: dict[str, list[str]] = {}
        for run_id in plan["run_ids"]:
            per_task.setdefault(plan["run_tasks"].get(run_id, "(task not recorded)"), []).append(run_id)
        for task, ids in sorted(per_task.items(), key=lambda item: natural_key(item[0])):
            ok = sum(statuses.get(i) == "ok" for i in ids)
            other = sum(i in statuses and statuses[i] != "ok" for i in ids)
            missing = len(ids) - ok - other
            task_cell = site.links.task(task, "") if task in site.data.tasks else escape(task)
            state = "complete" if ok == len(ids) else ("not run here" if ok + other == 0 else "partial")
            rows.append(f'<tr><td>{escape(name)}</td><td>{task_cell}</td><td class="num">{len(ids)}</td>'
                        f'<td class="num">{ok}</td><td class="num">{other}</td><td class="num">{missing}</td>'
                        f'<td>{escape(state)}</td></tr>')
            records.append({"suite": name, "task": task, "planned": len(ids), "ok": ok, "not_ok": other,
                            "missing": missing, "state": state})
    if not rows:
        return text + '<p>No membership files in this store (runs made outside a sweep).</p></section>'
    download = site.tables.add("protocol-coverage", "Planned and present runs, per suite and task",
                               "protocol.html#coverage", pd.DataFrame(records), "")
    return (text + '<div class="scroll"><table class="sortable" id="coverage-table"><thead><tr><th>Suite</th>'
            '<th>Task</th><th class="num" data-type="num">Planned</th><th class="num" data-type="num">ok</th>'
            '<th class="num" data-type="num">Not ok</th><th class="num" data-type="num">Missing</th><th>State</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>{download}</section>')


def _budgets_section(site: SiteContext, runs: pd.DataFrame) -> str:
    """The budgets the runs used, per task, with the suites and devices that ran them."""
    text = ('<section id="budgets"><h2>Budgets</h2><p>Every task declares named budgets: <code>quick</code> '
            '(CPU minutes: <code>vqbench quick</code> and the <code>quick</code> suite; it ranks early speed, not '
            'final quality), <code>standard</code> (the published board: the <code>standard</code> suite, each '
            'task\'s budget chosen from measured learning curves so that runs end on their plateau; CPU-sized, '
            'a working day on 2 cores for the whole suite) and <code>paper</code> '
            '(the GPU counterpart: <code>vqbench sweep run paper</code> submits the <code>paper</code> suite to a '
            'Slurm GPU cluster; <code>--executor local</code> runs it on one machine). A run stores its budget in '
            'full (steps, batch size, learning rate, eval interval, warm-up ...), not its name: the table lists '
            'the budgets of the runs on this board, per task, with the suites that used each (<b>Other</b>: the '
            'keys set away from their defaults; <b>Converged</b>: its ok runs that converged by the rule below, so a '
            'budget too short for some methods shows here). Tuned runs use '
            'their suite\'s budget with the learning rate they selected; trials are left out.</p>')
    if runs.empty:
        return text + '<p>No runs yet.</p></section>'
    rows, records = [], []
    frame = runs.assign(device_kind=[_device_kind(d) for d in runs["device"]])
    for (task, budget), group in sorted(frame.groupby(["task", "budget"]), key=lambda item: (
            item[0][0], natural_key(item[0][1]))):
        values = parse_json(budget)
        values = values if isinstance(values, dict) else {}
        others = {k: v for k, v in sorted(values.items()) if k not in BUDGET_COLUMNS and v != BUDGET_DEFAULTS.get(k)}
        suites = sorted({s for labels in group["suite_labels"] for s in labels})
        devices = sorted(set(group["device_kind"]) - {""})
        wall = group.loc[group["status"] == "ok", "wall_time_s"].astype(float).dropna()
        median = float(np.median(wall)) if len(wall) else math.nan
        ok_states = group.loc[group["status"] == "ok", "convergence"]
        converged = int((ok_states == CONVERGED).sum())
        cells = "".join(f'<td class="num">{escape(value_text(values[k])) if k in values else ""}</td>'
                        for k in BUDGET_COLUMNS)
        rows.append(f'<tr><td>{site.links.task(task, "")}</td>{cells}'
                    f'<td class="params">{escape(", ".join(f"{k}={value_text(v)}" for k, v in others.items()))}</td>'
                    f'<td>{escape(", ".join(suites))}</td><td>{escape(", ".join(devices))}</td>'
                    f'<td class="num" data-v="{len(group)}">{len(group)}</td>'
                    f'<td class="num" data-v="{converged}">{converged} of {len(ok_states)}</td>'
                    f'<td class="num" data-v="{data_value(median)}">{escape(_duration(median))}</td></tr>')
        records.append({"task": task, **{k: values.get(k) for k in BUDGET_COLUMNS},
                        "other": json.dumps(others, sort_keys=True), "suites": ", ".join(suites),
                        "devices": ", ".join(devices), "runs": len(group), "converged": converged,
                        "ok": len(ok_states), "median_wall_time_s": median})
    head = "".join(f'<th class="num" data-type="num">{escape(k.replace("_", " "))}</th>' for k in BUDGET_COLUMNS)
    download = site.tables.add("protocol-budgets", "Budgets used, per task", "protocol.html#budgets",
                               pd.DataFrame(records), "")
    return (text + '<div class="scroll"><table class="sortable" id="budgets-table"><thead><tr><th>Task</th>'
            f'{head}<th>Other</th><th>Suites</th><th>Devices</th><th class="num" data-type="num">Runs</th>'
            '<th class="num" data-type="num" title="ok runs that converged by the rule below">Converged</th>'
            '<th class="num" data-type="num" title="median wall time of the ok runs">Median time</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>{download}</section>')


def _device_kind(device: Any) -> str:
    """``cpu`` / ``cuda`` ... (the device string without its index)."""
    return str(device).split(":")[0].strip() if isinstance(device, str) else ""


def _duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``; empty when unknown."""
    if not math.isfinite(seconds):
        return ""
    if seconds < 120:
        return f"{format_number(seconds, 2)} s"
    if seconds < 7200:
        return f"{format_number(seconds / 60, 2)} min"
    return f"{format_number(seconds / 3600, 2)} h"


def _seeds_section(runs: pd.DataFrame) -> str:
    """Per suite (and track): the seeds its runs used and how many seeds a configuration has."""
    text = ('<section id="seeds"><h2>Seeds</h2><p>A suite runs every configuration at the same seeds (a suite '
            'file\'s <code>seeds: 3</code> means seeds 0, 1 and 2). A configuration\'s mean and 95% CI are over '
            'its seeds that finished with status <code>ok</code>; the others are counted, never averaged. A '
            'tuned configuration is rerun at fresh seeds, never the seed its trial ran at, so the selection '
            'cannot favour a lucky seed.</p>')
    if runs.empty:
        return text + '</section>'
    exploded = runs[["suite_labels", "config_key", "seed", "status"]].explode("suite_labels").dropna(
        subset=["suite_labels"])
    rows = []
    for label, group in sorted(exploded.groupby("suite_labels"), key=lambda item: natural_key(item[0])):
        per_config = group.groupby("config_key")["seed"].nunique()
        ok_per_config = group[group["status"] == "ok"].groupby("config_key")["seed"].nunique().reindex(
            per_config.index).fillna(0)
        seeds = sorted({int(s) for s in group["seed"]})
        rows.append(f'<tr><td>{escape(label)}</td><td class="num">{len(per_config)}</td>'
                    f'<td>{escape(_span(seeds))}</td><td class="num">{escape(_range(per_config))}</td>'
                    f'<td class="num">{escape(_range(ok_per_config))}</td></tr>')
    return (text + '<div class="scroll"><table id="seeds-table"><thead><tr><th>Suite</th><th class="num">'
            'Configurations</th><th>Seeds used</th><th class="num">Seeds per configuration</th><th class="num">'
            f'ok seeds per configuration</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>')


def _span(values: list[int]) -> str:
    """``0, 1, 2`` (at most 12 listed)."""
    shown = ", ".join(str(v) for v in values[:12])
    return shown + (f" \u2026 ({len(values)} in all)" if len(values) > 12 else "")


def _range(counts: pd.Series) -> str:
    """``3`` or ``1\u20133``."""
    if counts.empty:
        return ""
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}\u2013{high}"


def _convergence_section(runs: pd.DataFrame) -> str:
    """The convergence rule, how a peaked curve is reported, and the counts over this store's ok runs."""
    window = f"{1 - REFERENCE_FRACTION:.0%}"
    counts = runs.loc[runs["status"] == "ok", "convergence"].value_counts().to_dict() if len(runs) else {}
    n_ok = int(sum(counts.values()))
    tally = (f'<p>On this board, of {n_ok} ok runs (trials aside): {counts.get(CONVERGED, 0)} converged, '
             f'{counts.get(NOT_CONVERGED, 0)} not converged, {counts.get(FEW_EVALS, 0)} with too few evals in '
             f'their last {window} to tell.</p>' if n_ok else "")
    return ('<section id="convergence"><h2>Convergence</h2>'
            f'<p><b>Rule.</b> A run counts as <b>converged</b> when its main metric changed by less than '
            f'{TOLERANCE:.0%} (relative) over its last {window} of steps: the eval-split main metric at the run\'s '
            f'last eval step is compared with its value at the eval step nearest to {REFERENCE_FRACTION:.0%} of '
            'the run\'s steps (ties go to the earlier step), as |last \u2212 reference| / |reference|. When the '
            'eval step nearest to that point is the last eval step itself, the window holds fewer than 2 eval '
            'steps: the run is <b>not enough evals</b>, and it is flagged like a run that did not converge. A '
            'run\'s steps are the optimizer steps it did (all stages of a generation run).</p>'
            '<p><b>Flags.</b> Every table flags its non-converged runs: the suite tables and task and method pages '
            'count the flagged seeds of each configuration (<span class="badge conv">2/3 not converged</span>; '
            '<span class="badge conv all">all 3 seeds not converged</span> when none converged), each run page '
            'says what its curve did. Hover a flag for the change and the steps it was measured between. A flag '
            'is a warning, not an exclusion: flagged seeds stay in the means, since a longer budget is what would '
            'settle them.</p>'
            '<p><b>A peaked curve.</b> The board reports each metric at the run\'s last eval step, whatever the '
            'curve did before: a run whose metric peaked early and then degraded is reported as it ended, never at '
            'its peak (and its change is flagged when it moved in the last quarter). No number is picked after '
            'looking at the eval split: tuning selects on the validation split only.</p>' + tally + '</section>')


def _tuning_section(site: SiteContext) -> str:
    """`vqbench tune`: Sobol trials, the shared lr knob, selection on validation, finals at fresh seeds."""
    lr = SHARED_KNOBS[0]
    tunings = site.data.tunings
    listed = "; ".join(
        f'<code>{escape(name)}</code>: {escape("/".join(str(n) for n in tuning.trial_counts) or "some")} trials '
        f'per method and task, {len(tuning.trials)} trial runs in this store, '
        f'{tuning.selection[["task", "method"]].drop_duplicates().shape[0]} (task, method) selections'
        for name, tuning in sorted(tunings.items()))
    present = (f'<p>Tunings on this board: {listed}.</p>' if listed else
               '<p>No tuning on this board yet: every table is the defaults track.</p>')
    return ('<section id="tuning"><h2>Tuning</h2><p>A suite has a <b>defaults</b> track (<code>vqbench sweep run '
            'NAME</code>: each method as registered) and, after <code>vqbench tune NAME --trials N</code>, a '
            '<b>tuned</b> track. Every method declares a search space next to its defaults; each method gets the '
            'same number N of trials per task: the first N points of a scrambled Sobol sequence over its knobs '
            f'plus the shared learning-rate factor <code>{escape(lr.name)}</code> ({format_number(lr.low)} to '
            f'{format_number(lr.high)} \u00d7 the budget\'s lr, {escape(lr.scale)} scale), seeded by (tuning, task, '
            'method). A method that declares no space is tuned on the learning rate alone, with the same N. The '
            'selection reads only the <b>validation</b> split: among the trials that finished ok, the best final '
            'validation main metric (ties to the earlier trial). The selected configuration is then rerun at fresh '
            'seeds and reported on the eval split: eval numbers never enter the choice. The tuned table\'s '
            '<b>sensitivity</b> is the interquartile range of the validation metric over a method\'s trials. '
            'Each tuned cell also shows its change against the defaults track\'s cell of the same method at its '
            'registered parameters (<b>vs defaults</b>): better or worse when the two 95% intervals do not '
            'overlap, otherwise within them; the table\'s note counts each verdict.</p>'
            + present + '</section>')


def _metrics_section(site: SiteContext) -> str:
    """The collapse metrics' definitions, and which metrics this store's tasks log."""
    logged = {name: [task for task, info in site.data.tasks.items() if name in info.metrics]
              for name in COLLAPSE_METRICS}
    rows = []
    for name, definition in METRIC_DEFINITIONS:
        tasks = logged.get(name)
        where = (f'{len(tasks)} of {len(site.data.tasks)} tasks' if tasks else "not logged here") \
            if name in COLLAPSE_METRICS else "per task"
        rows.append(f'<tr><td><code>{escape(name)}</code></td><td>{definition}</td><td>{escape(where)}</td></tr>')
    return ('<section id="metrics"><h2>Metrics</h2><p>Every evaluation covers the whole eval split; the board '
            'reports each metric at a run\'s last eval step. Each task has three splits: train, validation (what '
            'tuning reads) and eval (what the board reports). Formulas as implemented in '
            '<code>vqbench.metrics</code> (one implementation each, shared by the tasks, '
            '<code>vqbench.collapse.CollapseMetrics</code> and <code>vqbench diagnose</code>).</p>'
            '<div class="scroll"><table id="metrics-table"><thead><tr><th>Metric</th><th>Definition</th>'
            f'<th>Logged by</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>')


def _ranks_section() -> str:
    """The mean rank and its uncertainty (leaderboard/ranking.py)."""
    return ('<section id="ranks"><h2>Rank uncertainty</h2><p><b>Mean rank.</b> Within each task column of a '
            'suite table, the configurations with a value in every column are ranked by their mean over seeds '
            '(1 = best, ties share the average rank); a row\'s mean rank averages its ranks over the columns. A '
            'row missing a column gets no mean rank. The <b>utilization rank</b> applies the same rule to the '
            'codebook utilization (higher is better), over the columns that report it.</p>'
            f'<p><b>Interval.</b> A two-level bootstrap: {BOOTSTRAP_SAMPLES:,} times, the task columns are drawn '
            'with replacement and, inside each (configuration, column), the seeds with replacement; the mean rank '
            'is recomputed. The 95% interval is the 2.5% and 97.5% percentiles (seeded, so a rebuild gives the '
            'same site).</p><p><b>Neighbours.</b> Each row is compared with the row above by Wilcoxon\'s '
            'signed-rank test over their paired (column, seed) values, each difference scaled by the column\'s '
            'standard deviation over all configurations and seeds (so columns of different units weigh alike). '
            f'The p-value is exact up to {EXACT_MAX_PAIRS} non-zero pairs, from the normal approximation with tie '
            f'correction above. A pair with p &gt; {ALPHA:g} is marked \u2248: the data do not support its order.'
            '</p></section>')


def _cpu_section(runs: pd.DataFrame) -> str:
    """What CPU-scale means, with the devices this store's runs used."""
    kinds = pd.Series([_device_kind(d) for d in runs["device"]], dtype=object).value_counts().to_dict() \
        if len(runs) else {}
    tally = ", ".join(f"{n} on {escape(kind)}" for kind, n in sorted(kinds.items()) if kind)
    return ('<section id="cpu-scale"><h2>CPU-scale</h2><p>The <code>quick</code> and <code>standard</code> '
            'budgets are sized so that a run finishes in seconds to minutes on a laptop CPU: small models (MLP '
            'autoencoders, small convolutional networks), small data (Gaussian mixtures, curved manifolds, '
            '8\u00d78 digits, photo patches), a few '
            'thousand steps. At that scale a table ranks methods under the same small budget; its numbers are not '
            'comparable with papers\' ImageNet numbers, and a method whose benefit needs long training or large '
            'codebooks can rank differently at the <code>paper</code> budget, which runs the same tasks and larger '
            'ones on GPUs. The budgets table above says which budget each run used.</p>'
            + (f'<p>Runs on this board (trials aside): {tally}.</p>' if tally else "") + '</section>')
