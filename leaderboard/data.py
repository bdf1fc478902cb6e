"""Everything the site shows, derived from the result store (``vqbench.store``) with pandas.

Vocabulary used across the leaderboard:

- *suite*: a run belongs to suite ``S`` when its tags contain ``suite:S``; untagged runs form ``adhoc``.
- *variant* of a task: (task, task_version, task_params, budget). One column of a suite table.
- *config*: a variant plus (method, method_version, method_params). One row of a task table;
  its seeds are the runs that share it. Only runs with status ``ok`` enter means; the others are
  counted and shown.
- *final value* of a metric in a run: its value at the run's last eval step (``vqbench.store.final_metrics``).
- *convergence* of a run: whether its main metric still moved over its last 25% of steps
  (:mod:`vqbench.leaderboard.convergence`; columns ``convergence``, ``convergence_change`` ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from vqbench.errors import UserError
from vqbench.leaderboard.convergence import convergence_table
from vqbench.leaderboard.load import read_tables, store_files
from vqbench.leaderboard.stats import ci_halfwidth
from vqbench.leaderboard.tracks import (
    ADHOC,
    SUITE_PREFIX,
    TRACK_TRIAL,
    TRIAL_MARK,
    Tuning,
    load_tunings,
    restrict_roles,
    run_roles,
    tags_of,
)
from vqbench.store import STATUSES, ResultStore, final_metrics

tag_list = tags_of  # a run's tags as strings
__all__ = ["ADHOC", "SUITE_PREFIX", "tag_list"]  # re-exported: the pages import them from here

#: collapse metrics in display order (bench/metrics.py names)
COLLAPSE_METRICS = ("utilization", "perplexity", "dead_codes", "codebook_rank", "embedding_rank",
                    "tokens_collapse_index", "embeddings_collapse_index", "embedding_clusters_frac",
                    "codebook_enumerable")
#: properties of the data rather than of the method: shown after everything else
REFERENCE_METRICS = ("data_rank",)

_HIGHER = {"psnr", "ssim", "utilization", "perplexity", "codebook_rank", "embedding_rank",
           "tokens_collapse_index", "embeddings_collapse_index", "embedding_clusters_frac", "precision",
           "recall", "accuracy", "inception_score", "code_usage", "prior_code_usage"}
_LOWER = {"mse", "mae", "lpips", "nll_bpt", "nll", "dead_codes", "loss", "rec_loss", "bpd"}


def metric_direction(name: str) -> bool | None:
    """True if higher is better, False if lower is better, None when the name does not say."""
    if name in _HIGHER:
        return True
    if name in _LOWER or name.startswith(("fid", "fd_", "gfid", "gfd_", "rfid", "rfd_")):
        return False
    return None


def slug(name: str) -> str:
    """A file-name-safe, case-insensitive-unique version of ``name`` (hash suffix when altered)."""
    clean = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)[:64].lower()
    if clean != name or not clean or clean.startswith("."):
        clean = f"{clean.strip('.')}-{hashlib.sha1(name.encode()).hexdigest()[:8]}".lstrip("-")
    return clean


def row_id(config_key: str) -> str:
    """The HTML id of a config's row on its task page (stable: a hash of the config key)."""
    return "r" + hashlib.sha1(config_key.encode()).hexdigest()[:12]


@lru_cache(maxsize=65536)
def _loads(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except (TypeError, json.JSONDecodeError):
        return {}


def parse_json(text: Any) -> Any:
    """A JSON cell of the store parsed (``{}`` when missing or not JSON)."""
    return _loads(text) if isinstance(text, str) else {}


def text_or_empty(value: Any) -> str:
    """``value`` when it is a string, else ``""`` (a missing column or a null cell of an older store)."""
    return value if isinstance(value, str) else ""


def value_text(value: Any) -> str:
    """A parameter value as shown in labels (strings as they are, everything else as compact JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def params_diff(params: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Entries of ``params`` that differ from (or are missing in) ``reference``."""
    return {k: v for k, v in sorted(params.items()) if k not in reference or reference[k] != v}


def params_text(params: dict[str, Any], prefix: str = "") -> str:
    """``k=v, ...`` of ``params``, keys sorted."""
    return ", ".join(f"{prefix}{k}={value_text(v)}" for k, v in sorted(params.items()))


def varying_keys(dicts: list[dict[str, Any]]) -> list[str]:
    """Keys whose value is not the same in every dict (a missing key counts as a value)."""
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({json.dumps(d[k], sort_keys=True) if k in d else "\x00" for d in dicts}) > 1]


_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)")


def natural_key(text: str) -> tuple:
    """Sort key that orders the numbers inside labels numerically (hidden=4 < hidden=16 < hidden=256)."""
    return tuple((0, float(part), "") if i % 2 else (1, 0.0, part) for i, part in enumerate(_NUMBER.split(text))
                 if part)


@dataclass
class TaskInfo:
    name: str
    slug: str
    kind: str
    description: str
    main_metric: str
    higher_is_better: bool
    source: str
    metrics: list[str]  # eval metrics in display order: main, quality, collapse, reference/other
    variants: list[str]  # variant keys
    n_runs: int = 0


@dataclass
class MethodInfo:
    name: str
    slug: str
    family: str
    paper: str
    description: str
    defaults: dict[str, Any]
    source: str
    versions: list[int]
    n_runs: int = 0
    differences: str = ""  # how the implementation differs from the authors' reference (empty: not stated)


@dataclass
class SiteData:
    runs: pd.DataFrame  # one row per run (+ suites, variant_key, config_key, row_id, metric.* finals)
    metrics: pd.DataFrame  # long metric rows of these runs
    mean: pd.DataFrame  # config_key x metric: mean over ok seeds
    ci: pd.DataFrame  # config_key x metric: 95% CI half-width
    n: pd.DataFrame  # config_key x metric: number of ok seeds with a finite value
    configs: pd.DataFrame  # one row per config: descriptive columns + status counts
    tasks: dict[str, TaskInfo]
    methods: dict[str, MethodInfo]
    suites: list[str]
    store: ResultStore
    suite_filter: str | None = None
    data_as_of: str = ""
    status_counts: dict[str, int] = field(default_factory=dict)
    tunings: dict[str, Tuning] = field(default_factory=dict)  # `vqbench tune` names -> trials and selection


def _latest(df: pd.DataFrame, order_cols: list[str]) -> pd.Series:
    """The row of ``df`` with the highest ``order_cols`` (metadata of the newest version/run)."""
    return df.sort_values(order_cols, na_position="first").iloc[-1]


def _metric_order(names: list[str], main: str) -> list[str]:
    quality = sorted(n for n in names if n != main and n not in COLLAPSE_METRICS and n not in REFERENCE_METRICS)
    collapse = [n for n in COLLAPSE_METRICS if n in names and n != main]
    reference = [n for n in REFERENCE_METRICS if n in names and n != main]
    return ([main] if main in names else []) + quality + collapse + reference


def load(results: str | os.PathLike[str], suite: str | None = None) -> SiteData:
    """Read the store under ``results`` and compute every aggregate the pages show."""
    store = ResultStore(results)
    runs = read_tables(store_files(store, "runs"), "runs")
    runs = runs.drop_duplicates("run_id", keep="last").reset_index(drop=True)
    members = store.sweep_members()  # a run complete before a second sweep listed it belongs to both
    roles = [run_roles(tags_of(t), members.get(rid, set())) for t, rid in zip(runs["tags"], runs["run_id"])]
    all_suites = sorted({s for r in roles for s in r.suites}, key=lambda s: (s == ADHOC, s))  # adhoc last
    if suite is not None:
        if suite not in all_suites and not any(suite in r.trial_of for r in roles):
            raise UserError(f"no runs in suite {suite!r} under {results}; suites there: "
                            f"{', '.join(all_suites) or 'none (no runs)'}")
        keep = [suite in r.suites or suite in r.trial_of for r in roles]
        runs = runs[keep].reset_index(drop=True)
        roles = [restrict_roles(r, suite) for r, kept in zip(roles, keep) if kept]
    runs["suites"] = [r.suites for r in roles]  # the suites whose section shows the run (either track)
    runs["default_suites"] = [r.default_suites for r in roles]
    runs["tuned_suites"] = [r.tuned_suites for r in roles]
    runs["trial_of"] = [r.trial_of for r in roles]
    runs["suite_labels"] = [r.labels for r in roles]
    runs["track"] = [r.track for r in roles]
    for col, default in (("task_params", "{}"), ("method_params", "{}"), ("budget", "{}"),
                         ("method_family", "other"), ("method_paper", ""), ("method_description", ""),
                         ("method_defaults", "{}"), ("method_source", ""), ("task_source", ""),
                         ("task_kind", ""), ("task_description", ""), ("error", ""), ("main_metric", "")):
        runs[col] = runs[col].fillna(default)
    runs["task_version"] = runs["task_version"].fillna(0).astype("int64")
    runs["method_version"] = runs["method_version"].fillna(0).astype("int64")
    runs["seed"] = runs["seed"].fillna(-1).astype("int64")
    runs["higher_is_better"] = runs["higher_is_better"].fillna(False).astype(bool)
    runs["status"] = runs["status"].where(runs["status"].isin(STATUSES), "failed")
    runs["variant_key"] = [json.dumps([t, int(v), p, b]) for t, v, p, b in
                           zip(runs["task"], runs["task_version"], runs["task_params"], runs["budget"])]
    runs["config_key"] = [json.dumps([vk, m, int(v), p] + ([TRIAL_MARK] if track == TRACK_TRIAL else []))
                          for vk, m, v, p, track in zip(runs["variant_key"], runs["method"], runs["method_version"],
                                                        runs["method_params"], runs["track"])]
    runs["row_id"] = [row_id(k) for k in runs["config_key"]]

    metrics = read_tables(store_files(store, "metrics"), "metrics")
    if len(metrics):
        metrics = metrics[metrics["run_id"].isin(set(runs["run_id"]))]
    table = final_metrics(runs, metrics)
    metric_cols = [c for c in table.columns if c.startswith("metric.")]
    table[metric_cols] = table[metric_cols].replace([np.inf, -np.inf], np.nan)

    # tasks: metadata from the newest version's newest run
    tasks: dict[str, TaskInfo] = {}
    main_col = np.full(len(table), np.nan)
    for name, group in table.groupby("task", sort=True):
        latest = _latest(group, ["task_version", "finished_at"])
        main = str(latest["main_metric"] or "")
        logged = [c[len("metric."):] for c in metric_cols if group[c].notna().any()]
        if main and f"metric.{main}" in table.columns:
            main_col[group.index.to_numpy()] = group[f"metric.{main}"].to_numpy(dtype=float)
        tasks[name] = TaskInfo(
            name=name, slug=slug(name), kind=str(latest["task_kind"]), description=str(latest["task_description"]),
            main_metric=main, higher_is_better=bool(latest["higher_is_better"]), source=str(latest["task_source"]),
            metrics=_metric_order(logged, main), n_runs=len(group),
            variants=sorted(group.loc[group["track"] != TRACK_TRIAL, "variant_key"].unique()))
    table["main_value"] = main_col
    # convergence of each run's main metric over its last 25% of steps (leaderboard/convergence.py)
    convergence = convergence_table(table, metrics, {name: info.main_metric for name, info in tasks.items()})
    for column in convergence.columns:
        table[f"convergence{'' if column == 'state' else '_' + column}"] = \
            convergence[column].reindex(table["run_id"]).to_numpy()

    methods: dict[str, MethodInfo] = {}
    for name, group in table.groupby("method", sort=True):
        latest = _latest(group, ["method_version", "finished_at"])
        defaults = parse_json(latest["method_defaults"])
        methods[name] = MethodInfo(
            name=name, slug=slug(name), family=str(latest["method_family"] or "other"),
            paper=str(latest["method_paper"] or ""), description=str(latest["method_description"]),
            defaults=defaults if isinstance(defaults, dict) else {}, source=str(latest["method_source"]),
            versions=sorted(int(v) for v in group["method_version"].unique()), n_runs=len(group),
            differences=text_or_empty(latest.get("method_differences")))

    # per-config statistics over ok seeds
    ok = table[table["status"] == "ok"]
    value_cols = metric_cols + ["main_value"]
    grouped = ok.groupby("config_key")[value_cols]
    mean = grouped.mean()
    std = grouped.std(ddof=1)
    n = grouped.count()
    ci = pd.DataFrame(ci_halfwidth(std.to_numpy(), n.to_numpy()), index=std.index, columns=std.columns)
    rename = {c: c[len("metric."):] for c in metric_cols}
    mean, ci, n = (df.rename(columns=rename) for df in (mean, ci, n))

    first = table.drop_duplicates("config_key").set_index("config_key")
    configs = first[["task", "task_version", "task_params", "budget", "method", "method_version", "method_params",
                     "method_family", "row_id", "variant_key", "track"]].copy()
    counts = pd.crosstab(table["config_key"], table["status"])
    for status in STATUSES:
        configs[f"n_{status}"] = counts[status].reindex(configs.index).fillna(0).astype(int) \
            if status in counts else 0
    configs["n_runs"] = table.groupby("config_key").size().reindex(configs.index)
    configs["suites"] = table.explode("suite_labels").groupby("config_key")["suite_labels"].agg(
        lambda s: sorted(set(s.dropna()))).reindex(configs.index)  # as shown: "NAME", "NAME (tuned)"
    configs["method_family"] = [methods[m].family for m in configs["method"]]
    configs["seeds"] = table.sort_values("seed").groupby("config_key")["seed"].agg(list).reindex(configs.index)

    finished = table["finished_at"].dropna()
    return SiteData(
        runs=table, metrics=metrics, mean=mean.reindex(configs.index), ci=ci.reindex(configs.index),
        n=n.reindex(configs.index).fillna(0).astype(int), configs=configs, tasks=tasks, methods=methods,
        suites=[suite] if suite is not None else all_suites, store=store, suite_filter=suite,
        data_as_of=finished.max().strftime("%Y-%m-%d %H:%M UTC") if len(finished) else "",
        status_counts={s: int((table["status"] == s).sum()) for s in STATUSES},
        tunings=load_tunings(table, metrics, {name: info.defaults for name, info in methods.items()}))


def variant_labels(variant_keys: list[str]) -> dict[str, str]:
    """A short label per variant of one task: the params (and budget keys) that differ among them."""
    parsed = {}
    for vk in variant_keys:
        _, version, tp, budget = json.loads(vk)
        parsed[vk] = (version, parse_json(tp), parse_json(budget))
    versions = {p[0] for p in parsed.values()}
    tkeys = varying_keys([p[1] for p in parsed.values()])
    bkeys = varying_keys([p[2] for p in parsed.values()])
    labels = {}
    for vk, (version, tp, budget) in parsed.items():
        parts = [f"v{version}"] if len(versions) > 1 else []
        parts += [f"{k}={value_text(tp[k])}" if k in tp else f"{k} unset" for k in tkeys]
        parts += [f"budget.{k}={value_text(budget[k])}" if k in budget else f"budget.{k} unset" for k in bkeys]
        labels[vk] = ", ".join(parts)
    return labels


def config_params_label(config: pd.Series, methods: dict[str, MethodInfo]) -> str:
    """The method params of a config that differ from the method's registered defaults."""
    params = parse_json(config["method_params"])
    info = methods.get(config["method"])
    diff = params_diff(params, info.defaults if info else {})
    text = params_text(diff) if diff else "defaults"
    if info and len(info.versions) > 1:
        text = f"v{int(config['method_version'])}; {text}"
    return text
