"""``vqbench sweep collect``: the sweep's table of final metrics, written and printed.

:func:`collect_sweep` writes ``<results>/sweeps/<name>.parquet`` (one row per run of the sweep with its final
eval metrics) and ``<name>.json`` (the sweep's run ids: a run shared with another suite is stored once but
belongs to both), and :func:`seed_table` summarises it as one printed table: a row per method x task (and per
parameter setting where the sweep varies one), with the task's main metric and the code utilization as
``mean +- h`` over the seeds that finished ``ok``, where ``h`` is the half-width of Student's 95% interval,
``t(0.975, n-1) s / sqrt(n)`` (no interval for one seed), as on the leaderboard.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vqbench.errors import UserError
from vqbench.slurm.sweep import Sweep
from vqbench.store import ResultStore, atomic_write_table, final_metrics


@dataclass
class CollectSummary:
    """What :func:`collect_sweep` wrote, and the sweep's status then."""

    sweep: str
    table: Path
    membership: Path
    rows: int
    status: Any  # vqbench.slurm.launch.SweepStatus
    summary: str = ""  # the printed table (seed_table)

    def format(self) -> str:
        head = (f"sweep {self.sweep}: {self.rows} of {len(self.status.runs)} runs have rows "
                f"({self.status.summary_line()})")
        body = [self.summary] if self.summary else []
        return "\n".join([head, *body, f"  table: {self.table}", f"  members: {self.membership}"])


def collect_sweep(sweep: Sweep, results: str | os.PathLike[str] = "results") -> CollectSummary:
    """Write the sweep's table of final metrics and its membership list under ``results/sweeps/``."""
    import pyarrow as pa

    from vqbench.slurm.launch import sweep_status, write_membership

    results = Path(results).resolve()
    store = ResultStore(results)
    status = sweep_status(sweep, results)
    ids = sweep.run_ids()
    runs = store.load_runs()
    runs = runs[runs["run_id"].isin(ids)]
    table = final_metrics(runs, store.load_metrics(run_ids=ids)) if len(runs) else runs
    order = {rid: i for i, rid in enumerate(ids)}
    table = table.assign(suite=sweep.name, suite_version=sweep.version,
                         _order=table["run_id"].map(order)).sort_values("_order").drop(columns="_order")
    path = results / "sweeps" / f"{sweep.name}.parquet"
    atomic_write_table(pa.Table.from_pandas(table, preserve_index=False), path)
    membership = write_membership(sweep, results)
    return CollectSummary(sweep.name, path, membership, len(table), status, format_seed_table(seed_table(table)))


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (NaN for df < 1)."""
    if df < 1:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_ci(values: list[float]) -> tuple[float, float, int]:
    """(mean, 95% interval half-width, n) of the finite values; the half-width is NaN for n < 2."""
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(x) / n
    if n == 1:
        return mean, math.nan, 1
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    return mean, t975(n - 1) * sd / math.sqrt(n), n


def _varying(table: pd.DataFrame, by: str, params: str) -> dict[str, list[str]]:
    """For each value of ``by``: the keys of its JSON ``params`` that take more than one value in ``table``."""
    out: dict[str, list[str]] = {}
    for name, rows in table.groupby(by):
        decoded = [json.loads(p) if isinstance(p, str) and p else {} for p in rows[params]]
        keys = sorted({k for d in decoded for k in d})
        out[str(name)] = [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in decoded}) > 1]
    return out


def _label(name: str, params_json: Any, keys: list[str]) -> str:
    if not keys:
        return name
    params = json.loads(params_json) if isinstance(params_json, str) and params_json else {}
    return name + " " + " ".join(f"{k}={json.dumps(params.get(k))}" for k in keys)


def seed_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per task x method (x the parameter settings the sweep varies): runs ok of runs, the main metric
    and utilization as mean, 95% half-width and n over the seeds that finished ``ok``."""
    columns = ["task", "method", "ok", "main_metric", "main_mean", "main_ci95", "utilization_mean",
               "utilization_ci95"]
    if table is None or not len(table):
        return pd.DataFrame(columns=columns)
    task_keys = _varying(table, "task", "task_params")
    method_keys = _varying(table, "method", "method_params")
    rows = []
    groups = table.groupby(["task", "task_params", "method", "method_params"], sort=False, dropna=False)
    for (task, task_params, method, method_params), runs in groups:
        ok = runs[runs["status"] == "ok"]
        main = str(runs["main_metric"].iloc[0] or "")
        main_values = list(ok.get(f"metric.{main}", pd.Series(dtype=float))) if main else []
        util_values = list(ok.get("metric.utilization", pd.Series(dtype=float)))
        m_mean, m_ci, _ = mean_ci(main_values)
        u_mean, u_ci, _ = mean_ci(util_values)
        higher = runs["higher_is_better"].iloc[0] if "higher_is_better" in runs else None
        arrow = "" if higher is None or pd.isna(higher) else (" (higher better)" if higher else " (lower better)")
        rows.append({"task": _label(str(task), task_params, task_keys.get(str(task), [])),
                     "method": _label(str(method), method_params, method_keys.get(str(method), [])),
                     "ok": f"{len(ok)}/{len(runs)}", "main_metric": main + arrow, "main_mean": m_mean,
                     "main_ci95": m_ci, "utilization_mean": u_mean, "utilization_ci95": u_ci})
    return pd.DataFrame(rows, columns=columns).sort_values(["task", "method"], kind="stable").reset_index(drop=True)


def _pm(mean: float, ci: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.4g}" if not math.isfinite(ci) else f"{mean:.4g} +- {ci:.2g}"


def format_seed_table(summary: pd.DataFrame) -> str:
    """:func:`seed_table` as aligned text (``mean +- 95% half-width`` cells; ``-`` where no seed finished ok)."""
    if not len(summary):
        return "  (no finished runs yet)"
    shown = pd.DataFrame({
        "task": summary["task"], "method": summary["method"], "seeds ok": summary["ok"],
        "main metric": summary["main_metric"],
        "main (mean +- 95% CI)": [_pm(m, c) for m, c in zip(summary["main_mean"], summary["main_ci95"])],
        "utilization (mean +- 95% CI)": [_pm(m, c) for m, c in zip(summary["utilization_mean"],
                                                                   summary["utilization_ci95"])]})
    return "\n".join("  " + line for line in shown.to_string(index=False).splitlines())


def read_membership(results: str | os.PathLike[str], name: str) -> list[str]:
    """The run ids sweep ``name`` lists in ``results`` (``results/sweeps/<name>.json``, written by ``sweep run``
    and ``sweep collect``)."""
    folder = Path(results) / "sweeps"
    path = folder / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        known = sorted(p.stem for p in folder.glob("*.json"))
        raise UserError(f"no sweep {name!r} in {results} (known: {', '.join(known) or 'none'}): run `vqbench sweep "
                        "run` (or `sweep collect`) for it first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}: rerun `vqbench sweep collect` for that sweep") from None
    return [str(r) for r in data.get("run_ids", [])]
