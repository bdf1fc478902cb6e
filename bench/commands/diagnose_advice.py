"""Advice for ``vqbench diagnose``, derived from a results store: comparable runs and remedies from findings.

- **Comparison**: runs of the store whose codebook size K and latent width d equal the user's (read from the
  runs' own arrays: K = length of the usage histogram, d = length of the embedding spectrum), aggregated per
  (task, method, parameters) over seeds, with the collapse metrics and the task's main metric.
- **Remedies**: for each kind of collapse found, the findings of that kind in ``<store>/findings/<name>/``
  (``data.csv``: method, x, metric, mean, std, seeds; see :mod:`vqbench.commands.findings`). With ``health``
  the finding's measure of that collapse (utilization for tokens collapse; the embeddings-collapse index for
  embeddings collapse) and ``best`` the highest mean health in the finding: the knob value ``x_worst`` with
  the lowest mean health over methods is the collapsed setting; a **method** is a remedy when its health at
  ``x_worst`` is at least ``WORKS`` (80%) of ``best`` and above the baseline's (``vq``, else the worst method);
  the **knob** itself is a remedy when its best value brings the mean health to ``WORKS`` x ``best`` while
  ``x_worst`` does not. Every remedy line quotes those numbers and links the finding's figure.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vqbench.commands.diagnose import json_safe

WORKS = 0.8
COMPARED = ("utilization", "perplexity", "dead_codes", "tokens_collapse_index", "embedding_rank",
            "embeddings_collapse_index")
HEALTH = {"tokens-collapse": ("utilization",),
          "embeddings-collapse": ("embeddings_collapse_index", "embedding_rank", "utilization")}


@dataclass
class Remedy:
    """One remedy a finding's data supports: a method, or the finding's knob at a value."""

    kind: str  # tokens-collapse | embeddings-collapse
    finding: str
    remedy: str  # a method name, or "<knob label> = <value>"
    line: str
    figure: str  # path of the finding's figure.png
    health_metric: str
    value: float
    baseline: float


@dataclass
class Advice:
    """What the results store says next to the user's numbers."""

    board: str | None = None
    comparison: list[dict[str, Any]] = field(default_factory=list)
    remedies: list[Remedy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def advise(diag: Any, board: str | os.PathLike[str] | None) -> Advice:
    """The comparison and the remedies for a :class:`vqbench.commands.diagnose.Diagnosis`."""
    if board is None:
        return Advice(notes=["no results store to compare with: pass --board DIR (a vqbench results folder, "
                             "e.g. after `vqbench quick` or `vqbench reproduce ...`)"])
    root = Path(board)
    advice = Advice(board=str(root))
    if not root.is_dir():
        advice.notes.append(f"results store {root} does not exist: pass --board DIR (a vqbench results folder)")
        return advice
    advice.comparison = comparable_runs(root, diag.codebook_size, diag.dim, advice.notes)
    for kind in ("tokens-collapse", "embeddings-collapse"):
        if kind in diag.kinds:
            advice.remedies.extend(remedies(root, kind, advice.notes))
    return advice


def comparable_runs(root: Path, k: int, dim: int | None, notes: list[str]) -> list[dict[str, Any]]:
    """Mean final metrics per (task, method, params) of the finished runs with the user's K and d."""
    import pandas as pd

    from vqbench.store import ResultStore, final_metrics

    store = ResultStore(root)
    runs = store.load_runs()
    runs = runs[runs["status"] == "ok"]
    if runs.empty:
        notes.append(f"no finished runs in {root} to compare with")
        return []
    arrays = store.load_arrays(run_ids=runs["run_id"])
    arrays = arrays[(arrays["split"] == "eval") & arrays["name"].isin(["usage_histogram", "embedding_spectrum"])]
    last = arrays.loc[arrays.groupby(["run_id", "name"])["step"].idxmax()] if len(arrays) else arrays
    sizes = {(r.run_id, r.name): len(r.values) for r in last.itertuples()}
    keep = [sizes.get((rid, "usage_histogram")) == k and (dim is None or sizes.get((rid, "embedding_spectrum")) == dim)
            for rid in runs["run_id"]]
    runs = runs[pd.Series(keep, index=runs.index, dtype=bool)]
    if runs.empty:
        notes.append(f"no run in {root} has K={k} codes" + (f" of dimension {dim}" if dim else "")
                     + ": no benchmark task matches this codebook's shape")
        return []
    table = final_metrics(runs, store.load_metrics(run_ids=runs["run_id"]))
    rows = []
    for (task, method, mparams, tparams), group in table.groupby(["task", "method", "method_params", "task_params"]):
        main = str(group["main_metric"].iloc[0])
        row: dict[str, Any] = {"task": task, "method": method, "method_params": json.loads(mparams or "{}"),
                               "task_params": json.loads(tparams or "{}"), "seeds": int(len(group)),
                               "main_metric": main}
        for name in (*COMPARED, main):
            col = f"metric.{name}"
            values = group[col].dropna() if col in group else []
            row[name] = float(values.mean()) if len(values) else math.nan
        rows.append(row)
    rows.sort(key=lambda r: (r["task"], -r["utilization"] if math.isfinite(r["utilization"]) else 0.0))
    return rows


def remedies(root: Path, kind: str, notes: list[str]) -> list[Remedy]:
    """The remedies for ``kind`` that the store's findings of that kind support (rules in the module doc)."""
    import pandas as pd

    from vqbench.commands.findings import FINDINGS

    folders = sorted(p for p in (root / "findings").glob(f"{kind}*") if (p / "data.csv").is_file())
    if not folders:
        notes.append(f"no {kind} finding in {root / 'findings'}: run `vqbench reproduce {kind} --results {root}` "
                     "to derive remedies")
        return []
    out: list[Remedy] = []
    for folder in folders:
        try:
            data = pd.read_csv(folder / "data.csv")
        except (OSError, ValueError) as exc:
            notes.append(f"skipped the damaged finding {folder}: {exc}")
            continue
        health = next((h for h in HEALTH[kind] if (data["metric"] == h).any()), None)
        if health is None:
            continue
        known = FINDINGS.get(folder.name)
        knob = known.x_label if known else "knob"
        out.extend(_finding_remedies(kind, folder, data[data["metric"] == health], health, knob))
    if not out:
        notes.append(f"the {kind} findings in {root / 'findings'} show no method or setting that avoids it")
    return out


def _finding_remedies(kind: str, folder: Path, part: Any, health: str, knob: str) -> list[Remedy]:
    with_knob, flat = part[part["x"].notna()], part[part["x"].isna()]
    if with_knob.empty:
        return []
    by_x = with_knob.groupby("x")["mean"].mean()
    x_worst, x_best = float(by_x.idxmin()), float(by_x.idxmax())
    best = float(part["mean"].max())
    at_worst = {r.method: (float(r.mean), int(r.seeds)) for r in with_knob[with_knob["x"] == x_worst].itertuples()}
    for r in flat.itertuples():
        at_worst.setdefault(r.method, (float(r.mean), int(r.seeds)))
    baseline = "vq" if "vq" in at_worst else min(at_worst, key=lambda m: at_worst[m][0])
    base = at_worst[baseline][0]
    figure = str(folder / "figure.png")
    out = []
    for method, (value, seeds) in sorted(at_worst.items(), key=lambda kv: -kv[1][0]):
        if method != baseline and value >= WORKS * best and value > base:
            line = (f"{method}: {health} {value:.3g} at {knob} = {x_worst:g} where {baseline} has {base:.3g} "
                    f"({seeds} seeds; best in this finding {best:.3g})")
            out.append(Remedy(kind, folder.name, method, line, figure, health, value, base))
    if by_x[x_best] >= WORKS * best > by_x[x_worst]:
        line = (f"{knob} = {x_best:g}: mean {health} over methods {by_x[x_best]:.3g}, against {by_x[x_worst]:.3g} "
                f"at {knob} = {x_worst:g}")
        out.append(Remedy(kind, folder.name, f"{knob} = {x_best:g}", line, figure, health, float(by_x[x_best]),
                          float(by_x[x_worst])))
    return out
