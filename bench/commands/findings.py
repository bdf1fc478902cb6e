"""Figures of the two collapse reproductions, drawn from the result store only.

``draw_finding(results, name)`` reads the runs tagged ``suite:<name>``, aggregates the final eval metrics
over seeds (mean and standard deviation) and writes ``results/findings/<name>/`` with ``figure.png``,
``data.csv`` (every plotted point) and ``meta.json`` (title, caption, the command that reproduces it).
The caption is the experiment's setup followed by sentences generated from ``data.csv``
(:func:`caption_sentences`: each method's value at the worst and best knob value, with seed counts), so it
never claims more than the plotted runs show. The leaderboard's Findings page shows every such folder.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vqbench.errors import UserError
from vqbench.store import ResultStore, final_metrics


@dataclass(frozen=True)
class Finding:
    """One reproduction's figure: its runs' knob, the metrics drawn, and the setup its caption starts with.

    ``caption`` describes the experiment only; what the runs showed is added from ``data.csv`` by
    :func:`caption_sentences` (no claim is written by hand).
    """

    name: str
    title: str
    caption: str  # the setup: task, knob, what is drawn (no result)
    x: str  # "method.<param>" or "task.<param>"
    x_label: str
    panels: tuple[tuple[str, str], ...]  # (metric, axis label)
    log_x: bool = True
    fixed: tuple[tuple[str, object], ...] = ()  # (x-like key, value) every plotted run must have
    knob: str = ""  # the knob in a sentence ("init scale"); default: x_label
    headline_higher: bool = True  # whether the first panel's metric is better high (picks worst and best knob)
    claim: str = ""  # the paper's claim this reproduction tests, as the paper states it (attributed, not ours)
    claim_metric: str = ""  # the metric whose drop at the restricted end would support the claim
    restricted_end: str = "min"  # which end of the knob is the restricted setting: "min" or "max"


FINDINGS = {
    "tokens-collapse": Finding(
        "tokens-collapse",
        "Tokens collapse: restricted codebook initialisation",
        "Task gmm-codebook (fixed Gaussian-mixture embeddings, no encoder: only the quantizer learns). "
        "Codes drawn at init_scale x the spread of the first batch of embeddings (init=data, offset 0); a method "
        "without that knob (no learned codebook, e.g. FSQ) is drawn flat. Mean and standard deviation over seeds.",
        "method.init_scale", "codebook init scale (x data std)",
        (("utilization", "codebook utilization"), ("tokens_collapse_index", "tokens-collapse index (distinct/K)"),
         ("mse", "reconstruction MSE")),
        fixed=(("method.init_offset", 0.0),), knob="init scale",
        claim="restricted codebook initialisation causes tokens collapse", claim_metric="utilization"),
    "tokens-collapse-offset": Finding(
        "tokens-collapse-offset",
        "Tokens collapse: codebook initialised away from the data",
        "Task gmm-codebook. Codes drawn around the first batch's mean shifted by init_offset x its std "
        "(init=data, scale 1). Mean and standard deviation over seeds.",
        "method.init_offset", "codebook init offset (x data std)",
        (("utilization", "codebook utilization"), ("tokens_collapse_index", "tokens-collapse index (distinct/K)"),
         ("mse", "reconstruction MSE")),
        log_x=False, fixed=(("method.init_scale", 1.0),), knob="init offset",
        claim="a codebook initialised away from the data causes tokens collapse", claim_metric="utilization",
        restricted_end="max"),
    "embeddings-collapse": Finding(
        "embeddings-collapse",
        "Embeddings collapse: limited encoder capacity",
        "Task `manifold` (a 16-dimensional curved manifold in 64 dimensions) with encoder hidden width as the knob. "
        "Embedding effective rank: the effective rank of the encoder outputs; embeddings-collapse index: that "
        "rank / the data's own. Mean and standard deviation over seeds.",
        "task.hidden", "encoder hidden width",
        (("embedding_rank", "embedding effective rank"), ("embeddings_collapse_index", "embeddings-collapse index"),
         ("utilization", "codebook utilization")), knob="encoder width",
        claim="limited encoder capacity causes embeddings collapse", claim_metric="embedding_rank"),
}

#: metrics written as a share of the codebook in the captions
SHARE_METRICS = ("utilization",)


def _param(row: pd.Series, key: str) -> object:
    scope, _, name = key.partition(".")
    params = json.loads(row[f"{scope}_params"] or "{}")
    return params.get(name)


def finding_table(results: str | os.PathLike[str], finding: Finding, suite: str | None = None) -> pd.DataFrame:
    """Aggregated points: one row per (method, x, metric) with mean, std and number of seeds."""
    store = ResultStore(results)
    runs = store.load_runs()
    tag = f"suite:{suite or finding.name}"
    members = store.sweep_members()
    suite_name = tag[len("suite:"):]
    in_suite = [tag in list(tags) or suite_name in members.get(rid, ())
                for tags, rid in zip(runs["tags"], runs["run_id"])]
    runs = runs[pd.Series(in_suite, index=runs.index, dtype=bool) & (runs["status"] == "ok")]
    if runs.empty:
        raise UserError(f"no finished runs tagged {tag} in {results}: run `vqbench reproduce {finding.name}` first")
    table = final_metrics(runs, store.load_metrics(run_ids=runs["run_id"]))
    table["x"] = table.apply(lambda r: _param(r, finding.x), axis=1)
    for key, value in finding.fixed:
        vals = table.apply(lambda r, k=key: _param(r, k), axis=1)
        table = table[vals.isna() | (vals.astype(float) == float(value))]
    rows = []
    for (method, x), group in table.groupby(["method", table["x"].astype(object).fillna("none")], dropna=False):
        for metric, _ in finding.panels:
            values = group.get(f"metric.{metric}")
            if values is None:
                continue
            values = values.dropna()
            rows.append({"method": method, "x": None if x == "none" else float(x), "metric": metric,
                         "mean": float(values.mean()) if len(values) else math.nan,
                         "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "seeds": int(len(values))})
    return pd.DataFrame(rows)


def draw_finding(results: str | os.PathLike[str], name: str, command: str | None = None) -> Path:
    """Write ``results/findings/<name>/{figure.png,data.csv,meta.json}``; returns the folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if name not in FINDINGS:
        raise UserError(f"unknown finding {name!r}: choose one of {', '.join(FINDINGS)}")
    finding = FINDINGS[name]
    suite = "tokens-collapse" if name.startswith("tokens-collapse") else name
    data = finding_table(results, finding, suite)
    folder = Path(results) / "findings" / name
    folder.mkdir(parents=True, exist_ok=True)
    data.to_csv(folder / "data.csv", index=False)
    fig, axes = plt.subplots(1, len(finding.panels), figsize=(5.2 * len(finding.panels), 4.0), squeeze=False)
    xs = sorted(x for x in data["x"].dropna().unique())
    for ax, (metric, label) in zip(axes[0], finding.panels):
        part = data[data["metric"] == metric]
        for method, group in part.groupby("method"):
            flat = group[group["x"].isna()]
            if len(flat) and xs:  # a method without this knob: one value, drawn across the range
                mean, std = float(flat["mean"].iloc[0]), float(flat["std"].iloc[0])
                ax.plot([xs[0], xs[-1]], [mean, mean], linestyle="--", label=f"{method} (no knob)")
                ax.fill_between([xs[0], xs[-1]], mean - std, mean + std, alpha=0.12)
                continue
            group = group.sort_values("x")
            ax.errorbar(group["x"], group["mean"], yerr=group["std"], marker="o", capsize=3, label=method)
        if finding.log_x and xs and min(xs) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(finding.x_label)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(finding.title)
    fig.tight_layout()
    fig.savefig(folder / "figure.png", dpi=110)
    plt.close(fig)
    written = pd.read_csv(folder / "data.csv")
    sentences = caption_sentences(finding, written) + claim_sentences(finding, written)
    meta = {"title": finding.title, "caption": " ".join([finding.caption, *sentences]),
            "command": command or f"vqbench reproduce {suite}"}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return folder


def caption_sentences(finding: Finding, data: pd.DataFrame) -> list[str]:
    """What the runs showed, one sentence per panel metric, from the figure's data (``data.csv``'s columns:
    method, x, metric, mean, std, seeds): every method's mean at the worst and at the best knob value, with
    its seed count, and the methods without the knob.

    The worst and best knob values are those where the first panel's metric, averaged over the methods that
    have the knob, is lowest and highest (the other way round when ``headline_higher`` is False).
    """
    knob = finding.knob or finding.x_label
    headline = data[(data["metric"] == finding.panels[0][0]) & data["x"].notna() & data["mean"].notna()]
    if headline.empty:
        return []
    by_x = headline.groupby("x")["mean"].mean()
    worst, best = (by_x.idxmin(), by_x.idxmax()) if finding.headline_higher else (by_x.idxmax(), by_x.idxmin())
    over = f"by mean {finding.panels[0][1].split(' (')[0]} over the methods with that knob"
    sentences = [f"Worst and best {knob} {over}: {worst:g} and {best:g}." if best != worst else
                 f"One {knob} was run: {worst:g}."]
    for metric, label in finding.panels:
        part = data[(data["metric"] == metric) & data["mean"].notna()]
        if part.empty:
            continue
        clauses = []
        for x, which in ((worst, "worst"), (best, "best")) if best != worst else ((worst, "only"),):
            rows = part[part["x"] == x]
            if len(rows):
                clauses.append(f"at {knob} {x:g} ({which}), " + _listing(metric, label, rows))
        flat = part[part["x"].isna()]
        if len(flat):
            clauses.append("without the knob, " + _listing(metric, label, flat))
        if clauses:
            text = "; ".join(clauses)
            sentences.append(text[0].upper() + text[1:] + ".")
    return sentences


def claim_sentences(finding: Finding, data: pd.DataFrame) -> list[str]:
    """How the runs compare with the paper's claim (arXiv:2411.16550), from ``data.csv`` alone.

    For each method with the knob, the claim metric's mean at the restricted end of the knob (its smallest value,
    or its largest for ``restricted_end="max"``) against the other end: the method **shows the collapse** when the
    restricted mean is lower by more than the sum of the two standard deviations over seeds, and **resists** it
    otherwise. The sentence names both groups and counts them; it never says more than that comparison.
    """
    if not finding.claim:
        return []
    part = data[(data["metric"] == finding.claim_metric) & data["x"].notna() & data["mean"].notna()]
    if part.empty or part["x"].nunique() < 2:
        return []
    low, high = float(part["x"].min()), float(part["x"].max())
    restricted, free = (low, high) if finding.restricted_end == "min" else (high, low)
    shows, resists = [], []
    for method, group in sorted(part.groupby("method"), key=lambda item: item[0]):
        at = group.set_index("x")
        if restricted not in at.index or free not in at.index:
            continue
        r, f = at.loc[restricted], at.loc[free]
        drop = float(f["mean"]) - float(r["mean"])
        value = (_share if finding.claim_metric in SHARE_METRICS else (lambda v: f"{v:.3g}"))
        text = f"{method} {value(float(r['mean']))} vs {value(float(f['mean']))}"
        (shows if drop > float(r["std"]) + float(f["std"]) else resists).append(text)
    if not shows and not resists:
        return []
    metric = finding.claim_metric.replace("_", " ")
    head = (f"Against the paper (arXiv:2411.16550: {finding.claim}): {metric} at {finding.knob or finding.x_label} "
            f"{restricted:g} vs {free:g}")
    verdict = (f"the claim holds for {len(shows)} of {len(shows) + len(resists)} methods with the knob"
               + (f" ({', '.join(shows)})" if shows else "")
               + (f"; not lower by more than the seeds' spread, so not shown, for {', '.join(resists)}"
                  if resists else "") + ".")
    return [f"{head}: {verdict}"]


def _listing(metric: str, label: str, rows: pd.DataFrame) -> str:
    """``vq uses 21% of its codes, vq-kmeans 92% (3 seeds each)`` / ``mse: vq 0.12, fsq 0.05 (2 seeds each)``."""
    rows = rows.sort_values("method")
    seeds = sorted({int(n) for n in rows["seeds"]})
    same = len(seeds) == 1
    items = []
    for i, row in enumerate(rows.itertuples()):
        value = _share(row.mean) if metric in SHARE_METRICS else f"{row.mean:.3g}"
        if metric in SHARE_METRICS and i == 0:
            value = f"uses {value} of its codes"
        items.append(f"{row.method} {value}" + ("" if same else f" ({int(row.seeds)} seed{_s(row.seeds)})"))
    head = "" if metric in SHARE_METRICS else f"{label.split(' (')[0]}: "
    tail = f" ({seeds[0]} seed{_s(seeds[0])}{' each' if len(rows) > 1 else ''})" if same else ""
    return head + ", ".join(items) + tail


def _share(value: float) -> str:
    """A fraction as a percentage: ``21%``, ``0.4%``."""
    percent = 100 * value
    return f"{percent:.0f}%" if percent >= 1 or percent == 0 else f"{percent:.1g}%"


def _s(count: float) -> str:
    return "" if int(count) == 1 else "s"
