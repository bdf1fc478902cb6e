"""The options of ``vqbench perf`` (also ``python -m vqbench.commands.perf``) and the command itself.

``vqbench perf`` measures the quantizer table; ``vqbench perf --overhead --task gmm --method vq --steps 600``
measures the runner's overhead against a bare training loop instead (:mod:`.overhead`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vqbench.commands.perf.plan import (
    DEFAULT_CELL_TIMEOUT_S,
    DEFAULT_MEMORY_CAP_GIB,
    DEFAULT_REPEATS,
    DIMS,
    INTERLEAVE_MAX_MS,
    MAIN_METHODS,
    MIN_TIMED_S,
    N_VECTORS,
    SIZES,
    PerfConfig,
)

if TYPE_CHECKING:
    from vqbench.commands.perf.overhead import OverheadConfig

#: timed trainings each way of ``--overhead`` (each is a whole training)
OVERHEAD_REPEATS = 3


def int_list(text: str) -> list[int]:
    """``"1024,65536"`` -> ``[1024, 65536]`` (an argparse type; ``1e3`` is read as 1000)."""
    try:
        return [int(float(v)) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def str_list(text: str) -> list[str]:
    """``"vq, simvq"`` -> ``["vq", "simvq"]`` (an argparse type)."""
    return [v for v in text.replace(" ", "").split(",") if v]


def add_perf_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vqbench perf``; the CLI: ``add_perf_arguments(p); p.set_defaults(func=cmd_perf)``."""
    parser.add_argument("--results", default="results", help="results folder (rows go to RESULTS/perf/)")
    parser.add_argument("--methods", "--method", type=str_list, default=None,
                        help=f"comma-separated method names (default: {','.join(MAIN_METHODS)}; with --overhead: vq)")
    parser.add_argument("--sizes", type=int_list, default=list(SIZES),
                        help="comma-separated codebook sizes K (default: 1024,65536,262144,1048576)")
    parser.add_argument("--dims", type=int_list, default=list(DIMS), help="comma-separated dims (default: 8,32,256)")
    parser.add_argument("--n", type=int, default=N_VECTORS, help=f"input vectors per call (default: {N_VECTORS})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed calls per cell (median; default {DEFAULT_REPEATS}); with --overhead: timed "
                             f"trainings each way (default {OVERHEAD_REPEATS})")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls before timing (with --overhead: untimed trainings each way)")
    parser.add_argument("--min-time", type=float, default=MIN_TIMED_S,
                        help=f"seconds of timed calls per cell at least: short cells repeat more than --repeats "
                             f"times (default: {MIN_TIMED_S})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--memory-cap-gib", type=float, default=DEFAULT_MEMORY_CAP_GIB,
                        help="cells predicted to need more are recorded as out_of_memory without trying")
    parser.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT_S,
                        help="seconds per cell in a subprocess (CPU) before it is recorded as an error")
    parser.add_argument("--in-process", dest="isolate", action="store_false", default=None,
                        help="measure every cell in this process (the CUDA default; on CPU peak memory is then not "
                             "recorded, since only a fresh process shows it exactly)")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip vector-quantize-pytorch")
    parser.add_argument("--no-interleave", dest="interleave", action="store_false",
                        help="keep each implementation's time measured alone (default: compared pairs whose calls "
                             f"take <= {INTERLEAVE_MAX_MS:.0f} ms are re-timed with their calls alternating)")
    parser.add_argument("--no-search", dest="search", action="store_false",
                        help="skip the nearest-code search vs torch.mm cells")
    overhead = parser.add_argument_group("runner overhead (--overhead)")
    overhead.add_argument("--overhead", action="store_true",
                          help="instead of the quantizer table: the runner's training time per step against a bare "
                               "loop of the same model and data, per (task, method)")
    overhead.add_argument("--tasks", "--task", type=str_list, default=["gmm"],
                          help="comma-separated task names (default: gmm)")
    overhead.add_argument("--budget", default="quick", help="named budget of the tasks (default: quick)")
    overhead.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the budget's)")
    overhead.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override a parameter as in `vqbench run`: NAME or method.NAME, task.NAME, "
                               "budget.NAME; repeatable")
    overhead.add_argument("--seed", type=int, default=0)
    overhead.add_argument("--threads", type=int, default=None,
                          help="torch threads for both trainings (default: torch's current setting)")


def config_from_args(args: argparse.Namespace) -> PerfConfig:
    """The :class:`PerfConfig` of parsed ``vqbench perf`` options (raises ``UserError`` on bad sizes)."""
    methods = list(MAIN_METHODS) if args.methods is None else args.methods
    repeats = DEFAULT_REPEATS if args.repeats is None else args.repeats
    return PerfConfig(results=args.results, methods=methods, sizes=args.sizes, dims=args.dims, n=args.n,
                      repeats=repeats, warmup=args.warmup, min_time_s=args.min_time, device=args.device,
                      compare=args.compare, search=args.search, memory_cap_gib=args.memory_cap_gib,
                      cell_timeout_s=args.cell_timeout, isolate=args.isolate, interleave=args.interleave)


def overhead_config_from_args(args: argparse.Namespace) -> OverheadConfig:
    """The :class:`OverheadConfig` of parsed ``vqbench perf --overhead`` options (raises ``UserError``)."""
    from vqbench.commands.cli import parse_assignments
    from vqbench.commands.perf.overhead import OverheadConfig

    task_params, method_params, budget_overrides = parse_assignments(args.set)
    return OverheadConfig(tasks=args.tasks, methods=["vq"] if args.methods is None else args.methods,
                          budget=args.budget, steps=args.steps, task_params=task_params, method_params=method_params,
                          budget_overrides=budget_overrides, seed=args.seed,
                          repeats=OVERHEAD_REPEATS if args.repeats is None else args.repeats, warmup=args.warmup,
                          device=args.device, threads=args.threads)


def cmd_overhead(args: argparse.Namespace) -> int:
    """``vqbench perf --overhead``: the ratio table of the runner against a bare loop; 1 when a pair failed."""
    from vqbench.commands.perf.overhead import load_average, overhead_header, overhead_table, run_overhead
    from vqbench.runner import select_device

    config = overhead_config_from_args(args)
    print(overhead_header(config, select_device(config.device)))
    rows = run_overhead(config)
    print(overhead_table(rows))
    print(f"load average at the end: {load_average()}")
    return 1 if any(r.error for r in rows) else 0


def cmd_perf(args: argparse.Namespace) -> int:
    """``vqbench perf``: measure the table, print its summary and where the rows are (``--overhead``: the runner's
    overhead instead, :func:`cmd_overhead`)."""
    if getattr(args, "overhead", False):
        return cmd_overhead(args)
    from vqbench.commands.perf.report import summary_text
    from vqbench.commands.perf.run import run_perf
    from vqbench.store import load_perf

    perf_id = run_perf(config_from_args(args))
    rows = load_perf(args.results)
    print(summary_text(rows[rows["perf_id"] == perf_id]))
    print(f"perf {perf_id}: rows in {args.results}/perf/{perf_id}.parquet")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vqbench.commands.perf [options]``, or ``--worker`` (one isolated cell, see :mod:`.isolate`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        from vqbench.commands.perf.isolate import worker_main

        return worker_main()
    import vqbench.commands.perf as package
    from vqbench.commands import run_module_cli

    return run_module_cli("python -m vqbench.commands.perf", package.__doc__.split("\n")[0], add_perf_arguments,
                          cmd_perf, argv)
