"""Figures of the two collapse reproductions, drawn from the result store only.

``draw_finding(results, name)`` reads the runs tagged ``suite:<name>``, aggregates the final eval metrics
over seeds (mean and standard deviation) and writes ``results/findings/<name>/`` with ``figure.png``,
``data.csv`` (every plotted point) and ``meta.json`` (title, caption, the command that reproduces it).
The leaderboard's Findings page shows every such folder.
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
    name: str
    title: str
    caption: str
    x: str  # "method.<param>" or "task.<param>"
    x_label: str
    panels: tuple[tuple[str, str], ...]  # (metric, axis label)
    log_x: bool = True
    fixed: tuple[tuple[str, object], ...] = ()  # (x-like key, value) every plotted run must have


FINDINGS = {
    "tokens-collapse": Finding(
        "tokens-collapse",
        "Tokens collapse: restricted codebook initialisation",
        "Task gmm-codebook (fixed Gaussian-mixture embeddings, no encoder: only the quantizer learns). "
        "Codes drawn at init_scale x the spread of the first batch of embeddings (init=data, offset 0). "
        "A small scale leaves most codes dead (low utilization) and merged at the data's resolution (low tokens-"
        "collapse index) for plain VQ; k-means init, dead-code restart, SimVQ's reparameterisation and implicit "
        "codebooks (FSQ: no learned codebook, drawn flat) are immune. Mean and standard deviation over seeds.",
        "method.init_scale", "codebook init scale (x data std)",
        (("utilization", "codebook utilization"), ("tokens_collapse_index", "tokens-collapse index (distinct/K)"),
         ("mse", "reconstruction MSE")),
        fixed=(("method.init_offset", 0.0),)),
    "tokens-collapse-offset": Finding(
        "tokens-collapse-offset",
        "Tokens collapse: codebook initialised away from the data",
        "Task gmm-codebook. Codes drawn around the first batch's mean shifted by init_offset x its std "
        "(init=data, scale 1). "
        "Codes far from the data are never selected and never updated by the codebook loss. Mean and standard "
        "deviation over seeds.",
        "method.init_offset", "codebook init offset (x data std)",
        (("utilization", "codebook utilization"), ("tokens_collapse_index", "tokens-collapse index (distinct/K)"),
         ("mse", "reconstruction MSE")),
        log_x=False, fixed=(("method.init_scale", 1.0),)),
    "embeddings-collapse": Finding(
        "embeddings-collapse",
        "Embeddings collapse: limited encoder capacity",
        "Task `manifold` (a 16-dimensional curved manifold in 64 dimensions) with encoder hidden width as the knob. "
        "A narrow encoder keeps few directions (low embedding effective rank, embeddings-collapse index = rank of "
        "encoder outputs / rank of the data), so few codes can ever be used, whatever the codebook method. Mean and "
        "standard deviation over seeds.",
        "task.hidden", "encoder hidden width",
        (("embedding_rank", "embedding effective rank"), ("embeddings_collapse_index", "embeddings-collapse index"),
         ("utilization", "codebook utilization"))),
}


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
    meta = {"title": finding.title, "caption": finding.caption,
            "command": command or f"vqbench reproduce {suite}"}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return folder
