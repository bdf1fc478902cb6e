"""Build the static leaderboard site from a result store (reads Parquet only)."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import pandas as pd

from bench.store import ResultStore, final_metrics


def _fmt(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def build_site(results: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write ``out/index.html``: one table per task (method, params, seeds, main metric, utilization)."""
    store = ResultStore(results)
    runs = store.load_runs()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>vqbench leaderboard</title></head><body>",
             "<h1>vqbench leaderboard</h1>"]
    if runs.empty:
        parts.append(f"<p>No runs in {html.escape(str(results))}.</p>")
    for task, task_runs in runs.groupby("task"):
        table = final_metrics(task_runs, store.load_metrics(task))
        main = task_runs["main_metric"].iloc[0]
        higher = bool(task_runs["higher_is_better"].iloc[0])
        rows = []
        for (method, params), group in table.groupby(["method", "method_params"]):
            ok = group[group["status"] == "ok"]
            col = f"metric.{main}"
            rows.append({"method": method, "params": params, "seeds": len(ok),
                         "main": ok[col].mean() if col in ok and len(ok) else math.nan,
                         "util": ok["metric.utilization"].mean() if "metric.utilization" in ok and len(ok)
                         else math.nan})
        df = pd.DataFrame(rows).sort_values("main", ascending=not higher, na_position="last")
        parts.append(f"<h2>{html.escape(task)}</h2><table border='1'><thead><tr><th>method</th><th>params</th>"
                     f"<th>seeds</th><th>{html.escape(main)} ({'higher' if higher else 'lower'} is better)</th>"
                     "<th>utilization</th></tr></thead><tbody>")
        for r in df.itertuples():
            params = json.dumps(json.loads(r.params), sort_keys=True)
            parts.append(f"<tr><td>{html.escape(r.method)}</td><td>{html.escape(params)}</td><td>{r.seeds}</td>"
                         f"<td>{_fmt(r.main)}</td><td>{_fmt(r.util)}</td></tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index
