"""``python -m vqbench.commands.perf.ranks``: the cost of data parallelism, one global batch on 1, 2 ... processes.

For each world size ``R`` of ``--ranks`` the same spec (task, method, global ``--batch-size``, ``--steps``) is run
by ``R`` fresh processes (``torch.multiprocessing``, a ``file://`` rendezvous; gloo on CPU with ``--threads``
intra-op threads each, NCCL on ``cuda:0 .. cuda:R-1``), and the training throughput of the run row (items per
second of the training steps alone: gradient all-reduce included, evaluation and start-up excluded) is compared
with that of one process. On a CPU with fewer free cores than processes the figure is the overhead of the
collectives and of the smaller per-rank batches; on a GPU node it is the scaling.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _worker(rank: int, size: int, init_file: str, spec: Any, results: str, device: str, threads: int,
            queue: Any) -> None:
    import torch
    import torch.distributed as dist

    from vqbench.runner import run
    from vqbench.store import ResultStore

    torch.set_num_threads(threads)
    os.environ["LOCAL_RANK"] = str(rank)
    if size > 1:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        result = run(spec, results, force=True, device=device, progress=False)
        if rank == 0:
            row = ResultStore(results).load_runs().iloc[0]
            queue.put({"status": result.status, "error": result.error, "items_per_s": float(row.items_per_s),
                       "wall_time_s": result.wall_time_s})
    finally:
        if size > 1:
            dist.destroy_process_group()


def measure(spec: Any, size: int, device: str, threads: int) -> dict[str, Any]:
    """One run of ``spec`` by ``size`` fresh processes: rank 0's run-row figures."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="vqbench-ranks-") as tmp:
        mp.spawn(_worker, args=(size, str(Path(tmp) / "init"), spec, str(Path(tmp) / "results"), device, threads,
                                queue), nprocs=size, join=True)
        return queue.get()


def main(argv: Sequence[str] | None = None) -> int:
    """Print items/s and the time of one training step for each world size, relative to one process."""
    from vqbench.errors import UserError
    from vqbench.spec import make_spec

    parser = argparse.ArgumentParser(prog="python -m vqbench.commands.perf.ranks", description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", default="1,2", help="comma-separated world sizes (default 1,2; 1 is added)")
    parser.add_argument("--task", default="gmm")
    parser.add_argument("--method", default="vq")
    parser.add_argument("--batch-size", type=int, default=256, help="the global batch (default 256)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of each process (CPU)")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({1, *(int(v) for v in args.ranks.split(",") if v)})
        spec = make_spec(args.task, args.method, {}, {}, budget={
            "steps": args.steps, "batch_size": args.batch_size, "eval_interval": args.steps, "warmup_steps": 0})
        rows = []
        for size in sizes:
            figures = measure(spec, size, args.device, args.threads)
            if figures["status"] != "ok":
                raise UserError(f"the run on {size} process(es) ended {figures['status']}: {figures['error']}")
            rows.append((size, figures))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = rows[0][1]["items_per_s"]
    print(f"{args.method} on {args.task}, global batch {args.batch_size}, {args.steps} steps, device {args.device}, "
          f"{args.threads} thread(s) per process")
    print(f"{'ranks':>5} {'per-rank batch':>14} {'items/s':>10} {'ms/step':>8} {'speedup':>8} {'overhead':>9}")
    for size, figures in rows:
        rate = figures["items_per_s"]
        step_ms = 1000 * args.batch_size / rate
        speedup = rate / base
        print(f"{size:>5} {args.batch_size // size:>14} {rate:>10.0f} {step_ms:>8.2f} {speedup:>7.2f}x "
              f"{100 * (1 / speedup - 1):>+8.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
