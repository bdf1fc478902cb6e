"""The options of ``vqbench perf`` (also ``python -m vqbench.commands.perf``) and the command itself."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    parser.add_argument("--methods", type=str_list, default=list(MAIN_METHODS),
                        help=f"comma-separated method names (default: {','.join(MAIN_METHODS)})")
    parser.add_argument("--sizes", type=int_list, default=list(SIZES),
                        help="comma-separated codebook sizes K (default: 1024,65536,262144,1048576)")
    parser.add_argument("--dims", type=int_list, default=list(DIMS), help="comma-separated dims (default: 8,32,256)")
    parser.add_argument("--n", type=int, default=N_VECTORS, help=f"input vectors per call (default: {N_VECTORS})")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed calls per cell (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
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


def config_from_args(args: argparse.Namespace) -> PerfConfig:
    """The :class:`PerfConfig` of parsed ``vqbench perf`` options (raises ``UserError`` on bad sizes)."""
    return PerfConfig(results=args.results, methods=args.methods, sizes=args.sizes, dims=args.dims, n=args.n,
                      repeats=args.repeats, warmup=args.warmup, min_time_s=args.min_time, device=args.device,
                      compare=args.compare, search=args.search, memory_cap_gib=args.memory_cap_gib,
                      cell_timeout_s=args.cell_timeout, isolate=args.isolate, interleave=args.interleave)


def cmd_perf(args: argparse.Namespace) -> int:
    """``vqbench perf``: measure the table, print its summary and where the rows are."""
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
