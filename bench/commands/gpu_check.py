"""One command, one GPU, under 8 minutes: the quantizer performance table and the image tasks' training speed.

    python -m vqbench.commands.gpu_check --out DIR

writes, under the results folder ``DIR`` (``vqbench.store`` layout, readable with ``vqbench.store.load_perf(DIR)``):

1. ``perf/<id>.parquet``: the ``vqbench perf`` table (:mod:`vqbench.commands.perf`) at GPU sizes, in this order so
   that a spent time budget cuts the least important cells: ``vq`` and ``simvq`` at K = 65536, dim 256, N = 16384
   next to vector-quantize-pytorch; the nearest-code search vs ``torch.mm`` at every (K, dim); then every method at
   every (K, dim), smallest K first. Every cell is measured in this one process
   (``torch.cuda.max_memory_allocated``), a cell predicted above the memory cap (default 90% of the GPU) is recorded
   as ``out_of_memory`` without trying and a real out-of-memory is caught and recorded the same way. ``vq-kmeans``
   above K = 65536 is skipped with an ``unsupported`` row when ``min(K, N)`` is above 65536: its k-means++ seeding
   takes ``min(K, N)`` sequential steps.
2. ``perf/<id>-train.parquet``: ``measure="train_step"`` rows: the runner's training speed on every registered
   image reconstruction task (``kind="reconstruction"``) at its ``paper`` budget's batch size, for ``vq`` and
   ``simvq``. After one discarded warm-up run of A steps (first-call kernels, cuDNN plans, the memory pool), two
   short runs of ``vqbench.runner.run`` (``--image-steps`` A and B steps, in a temporary results folder, so nothing
   enters the leaderboard) give the marginal rate ``(B - A) * batch / (train_time_B - train_time_A)`` images/s,
   which cancels the per-run costs both share (model build, data setup). The runner's training time synchronises
   the GPU at each log window, so queued work is counted. A task that cannot run here (no data on this machine,
   not registered) is printed with the reason and recorded as ``unsupported``.
3. ``summary.txt``: the ratio and search tables (also printed).

``--device cpu`` with small ``--sizes/--dims/--n`` runs the same code on a CPU (the tests do).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vqbench.commands.perf import (
    DIMS,
    MAIN_METHODS,
    N_VECTORS,
    SIZES,
    VQP,
    Cell,
    PerfConfig,
    format_row,
    int_list,
    new_perf_id,
    perf_row,
    run_perf,
    str_list,
    summary_text,
    versions,
)
from vqbench.errors import UserError
from vqbench.provenance import device_label

KEY_METHODS = ("vq", "simvq")
KEY_SIZE, KEY_DIM = 65536, 256
IMAGE_METHODS = ("vq", "simvq")
GPU_MIN_TIME_S = 0.25  # GPU cells are fast: a quarter second of timed calls each keeps the table in budget
KMEANS_SEEDING_MAX_K = 65536  # k-means++ seeding is min(K, N) sequential steps: above this it eats the budget


def ordered_cells(config: PerfConfig) -> tuple[list[Cell], list[Cell]]:
    """Key comparison first, then the search table, then the rest of the table (smallest K first)."""
    methods, sizes, dims = config.methods, config.sizes, config.dims
    key = [config.cell(impl, m, KEY_SIZE, KEY_DIM, "forward_backward")
           for m in KEY_METHODS if m in methods and KEY_SIZE in sizes and KEY_DIM in dims for impl in ("vqbench", VQP)]
    search = [config.cell(impl, name, k, d, measure) for k in sizes for d in dims
              for impl, name, measure in (("vqbench", "nearest_code", "nearest_code_search"),
                                          ("torch.mm", "matmul", "matmul"))]
    rest = [config.cell(impl, m, k, d, "forward_backward") for k in sizes for d in dims
            for m in methods for impl in ("vqbench", VQP)]
    rest = [c for c in rest if c not in key]
    return key + search, rest


def skipped(cell: Cell) -> str | None:
    seeding_steps = min(cell.codebook_size, cell.n)
    if cell.implementation == "vqbench" and cell.method == "vq-kmeans" and seeding_steps > KMEANS_SEEDING_MAX_K:
        return (f"not run in the GPU check: k-means++ seeding takes min(K, N) = {seeding_steps} sequential steps "
                f"(about 0.1 ms each on a GPU), over this check's time budget")
    return None


def image_tasks(names: Sequence[str] | None) -> list[str]:
    from vqbench.registry import TASKS

    if names:
        return list(names)
    return [e.name for e in TASKS.entries() if e.kind == "reconstruction"]


def train_rate(task: str, method: str, steps: tuple[int, int], device: str) -> dict[str, Any]:
    """Marginal training speed of ``method`` on ``task`` at the task's paper batch size (see the module docstring)."""
    import torch

    from vqbench.errors import UserError
    from vqbench.registry import TASKS
    from vqbench.runner import run
    from vqbench.spec import make_spec, task_budget
    from vqbench.store import ResultStore

    base: dict[str, Any] = {"method": method, "codebook_size": 0, "dim": 0, "n": 0}
    try:
        entry = TASKS.get(task)
        budget_name = "paper" if "paper" in entry.budgets else "quick"
        paper = task_budget(task, budget_name)
    except UserError as exc:
        return {**base, "status": "unsupported", "note": f"task={task}: {exc}"}
    base["n"] = paper.batch_size
    measured = []
    peak = 0.0
    with tempfile.TemporaryDirectory(prefix="vqbench-gpu-check-") as tmp:
        for i, s in enumerate((steps[0], *steps)):  # the first run only warms up (kernels, cuDNN plans, caches)
            budget = paper.with_overrides(steps=s, eval_interval=s, warmup_steps=min(paper.warmup_steps, s // 2))
            try:
                spec = make_spec(task, method, budget=budget, tags=("gpu_check",))
                base["codebook_size"] = int(spec.task_params.get("codebook_size") or 0)
                base["dim"] = int(spec.task_params.get("latent_dim") or 0)
                if torch.cuda.is_available() and device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats(device)
                result = run(spec, tmp, force=True, device=device, progress=False)
                if torch.cuda.is_available() and device.startswith("cuda"):
                    peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**20)
            except UserError as exc:
                return {**base, "status": "unsupported", "note": f"task={task}: {exc}"}
            if result.status != "ok":
                return {**base, "status": "error", "note": f"task={task}: run {result.status}: {result.error[:300]}"}
            runs = ResultStore(tmp).load_runs()
            row = runs[runs["run_id"] == spec.run_id].iloc[0]
            if not row["items_per_s"] or row["items_per_s"] <= 0:
                return {**base, "status": "error", "note": f"task={task}: the runner measured no training time"}
            items = int(row["steps_done"]) * paper.batch_size
            if i > 0:
                measured.append((int(row["steps_done"]), items / float(row["items_per_s"])))
    (s1, t1), (s2, t2) = measured
    if t2 <= t1:
        return {**base, "status": "error", "note": f"task={task}: non-increasing train time ({t1:.3f} s, {t2:.3f} s)"}
    rate = (s2 - s1) * paper.batch_size / (t2 - t1)
    return {**base, "status": "ok", "time_ms": 1e3 * paper.batch_size / rate, "peak_memory_mb": peak or None,
            "note": f"task={task} budget={budget_name} (batch {paper.batch_size}): {rate:.0f} images/s "
                    f"(marginal rate between {s1} and {s2} steps of the runner; eval excluded)"}


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m vqbench.commands.gpu_check``."""
    parser = argparse.ArgumentParser(prog="python -m vqbench.commands.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="results folder the rows are written to")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the whole check")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--methods", type=str_list, default=list(MAIN_METHODS))
    parser.add_argument("--sizes", type=int_list, default=list(SIZES))
    parser.add_argument("--dims", type=int_list, default=list(DIMS))
    parser.add_argument("--n", type=int, default=N_VECTORS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="default: 90%% of the GPU's memory (20 GiB on a CPU)")
    parser.add_argument("--tasks", type=str_list, default=None,
                        help="image tasks to time (default: every registered reconstruction task)")
    parser.add_argument("--image-methods", type=str_list, default=list(IMAGE_METHODS))
    parser.add_argument("--image-steps", type=int_list, default=[20, 120],
                        help="the two run lengths whose difference gives the training speed")
    return parser


def training_rows(args: argparse.Namespace, device: str, perf_id: str, label: str, vers: str,
                  deadline: float) -> list[dict[str, Any]]:
    """One ``train_step`` row per (image task, method), written as ``perf/<perf_id>-train.parquet`` as they come."""
    from vqbench.store import ResultStore

    store = ResultStore(args.out)
    rows: list[dict[str, Any]] = []
    for task in image_tasks(args.tasks):
        for method in args.image_methods:
            if time.monotonic() > deadline:
                print(f"time budget: training speed of {method} on {task} not measured")
                continue
            result = train_rate(task, method, tuple(args.image_steps), device)
            row = {"perf_id": perf_id, "created_at": datetime.now(timezone.utc), "device": label,
                   "implementation": "vqbench", "measure": "train_step", "time_ms": result.get("time_ms"),
                   "peak_memory_mb": result.get("peak_memory_mb"), "gflops": None, "versions": vers,
                   **{k: result[k] for k in ("method", "codebook_size", "dim", "n", "status", "note")}}
            rows.append(row)
            store.write_perf(f"{perf_id}-train", rows)
            print(format_row(row))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check (see the module docstring); 0 when it ran, 2 when it cannot run here."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "python -m vqbench.commands.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.monotonic()

    import torch

    from vqbench.registry import METHODS, TASKS
    from vqbench.runner import select_device
    from vqbench.store import ResultStore

    if not METHODS.list() or not TASKS.list():  # a checkout used without `pip install -e .`: no entry points
        import vqbench.methods  # noqa: F401
        import vqbench.tasks  # noqa: F401
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device here (torch.cuda.is_available() is False); use --device cpu to try the "
              "script on small sizes", file=sys.stderr)
        return 2
    dev = select_device(args.device)
    if len(args.image_steps) != 2 or not 0 < args.image_steps[0] < args.image_steps[1]:
        parser.error("--image-steps takes two increasing step counts, e.g. 20,120")
    cap_gib = args.memory_cap_gib
    if cap_gib is None:
        cap_gib = 0.9 * torch.cuda.get_device_properties(dev).total_memory / 2**30 if dev.type == "cuda" else 20.0
    try:
        config = PerfConfig(results=args.out, methods=args.methods, sizes=args.sizes, dims=args.dims, n=args.n,
                            repeats=args.repeats, warmup=args.warmup, min_time_s=GPU_MIN_TIME_S, device=str(dev),
                            memory_cap_gib=cap_gib, isolate=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    perf_id = new_perf_id()
    label, vers = device_label(dev), versions()
    print(f"gpu_check {perf_id} on {label}: memory cap {cap_gib:.1f} GiB, budget {args.budget_s:.0f} s")

    first, rest = ordered_cells(config)
    rows: list[dict[str, Any]] = []
    run_perf(config, first, deadline=start + 0.45 * args.budget_s, perf_id=perf_id, rows=rows)
    train_rows = training_rows(args, str(dev), perf_id, label, vers, start + 0.7 * args.budget_s)
    to_run = [cell for cell in rest if skipped(cell) is None]
    rows += [perf_row(perf_id, label, vers, cell, {"status": "unsupported", "note": skipped(cell)})
             for cell in rest if skipped(cell) is not None]
    run_perf(config, to_run, deadline=start + args.budget_s, perf_id=perf_id, rows=rows)
    ResultStore(args.out).write_perf(perf_id, rows)

    import pandas as pd

    text = summary_text(pd.DataFrame(rows)) if rows else ""
    text += "\n\nimage training speed\n" + "\n".join(format_row(r) for r in train_rows)
    Path(args.out, "summary.txt").write_text(f"{command}\n{label}\n\n{text}\n")
    print(text)
    print(f"gpu_check {perf_id}: {len(rows)} table rows, {len(train_rows)} training rows in {args.out}/perf/ "
          f"({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
