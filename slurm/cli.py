"""``vqbench sweep run|status|collect FILE`` and ``vqbench tune FILE``: sweeps on Slurm, locally or in-process.

FILE is a sweep .yaml or the name of a shipped suite (``quick``, ``paper``). Every command is safe
to rerun: ``run`` skips runs that are complete or still queued, ``status`` and ``collect`` only read
(``collect`` rewrites its table). ``run --wait`` and ``status`` exit with 1 when a run failed.
"""

from __future__ import annotations

import argparse

EXECUTORS = ("slurm", "local", "debug")
TUNE_HELP = """\
N trials per (method, task) of the sweep: scrambled Sobol points over the method's declared search space plus
the shared learning-rate factor, at seed 0, as the sweep FILE.trials. Once every trial has finished, the trial
with the best final validation main metric (ties: the lower trial index) is selected per (method, task) and runs
at the sweep's seeds + 1 as FILE.tuned: the tuned track of the suite. Eval-split numbers are never read for the
choice. Rerun the same command after the trials finish on Slurm; nothing complete is redone."""


def _load(args: argparse.Namespace):
    from vqbench.slurm.sweep import load_sweep

    sweep = load_sweep(args.file, skip_unknown=args.skip_unknown)
    for line in sweep.skipped:
        print(f"skipped (--skip-unknown): {line}")
    return sweep


def cmd_run(args: argparse.Namespace) -> int:
    from vqbench.slurm.launch import run_sweep

    sweep = _load(args)
    print(sweep.describe())
    summary = run_sweep(sweep, args.results, executor=args.executor, dry_run=args.dry_run, wait=args.wait,
                        poll_s=args.poll, device=args.device)
    print(summary.format())
    if not args.dry_run and summary.submitted and not args.wait and summary.executor != "debug":
        print(f"follow it with: vqbench sweep status {args.file} --results {args.results}")
    return 1 if summary.failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from vqbench.slurm.jobs import jobs_dir
    from vqbench.slurm.launch import sweep_status

    sweep = _load(args)
    status = sweep_status(sweep, args.results)
    print(status.format())
    if status.of("failed"):
        print(f"job logs: {jobs_dir(status.results, sweep.name) / 'logs'}")
        print(f"rerun the failed runs with: vqbench sweep run {args.file} --results {args.results}")
    return 1 if status.of("failed") else 0


def cmd_collect(args: argparse.Namespace) -> int:
    from vqbench.slurm.collect import collect_sweep

    sweep = _load(args)
    print(collect_sweep(sweep, args.results).format())
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("sweep", parents=[common], help="run a sweep (a suite or a sweep .yaml) on Slurm or locally",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = p.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")

    def base(name: str, help_text: str) -> argparse.ArgumentParser:
        q = ssub.add_parser(name, parents=[common], help=help_text)
        q.add_argument("file", metavar="FILE", help="sweep .yaml, or a suite name (quick, paper)")
        q.add_argument("--results", default="results", help="results folder (default: results)")
        q.add_argument("--skip-unknown", action="store_true",
                       help="drop tasks/methods the registry does not know (instead of failing)")
        return q

    q = base("run", "submit the runs that are neither complete nor queued")
    q.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="where to run (default: the sweep's profile's cluster)")
    q.add_argument("--dry-run", action="store_true", help="print what would be submitted, submit nothing")
    q.add_argument("--wait", action="store_true", help="wait until no run is pending or running")
    q.add_argument("--poll", type=float, default=10.0, help="seconds between status checks with --wait")
    q.add_argument("--device", default=None, help="device for the runs (default: CUDA when present)")
    q.set_defaults(func=cmd_run)

    q = base("status", "done / running / pending / failed / diverged counts and the failed runs' errors")
    q.set_defaults(func=cmd_status)

    q = base("collect", "print the sweep's table (method x task: main metric and utilization, mean +- 95% CI over "
                        "seeds) and write its final metrics under RESULTS/sweeps/")
    q.set_defaults(func=cmd_collect)
    add_tune_command(sub, common)


def cmd_tune(args: argparse.Namespace) -> int:
    from vqbench.slurm.tune import tune

    sweep = _load(args)
    print(f"tune {sweep.name}: {args.trials} trials per (method, task) over {len(sweep.runs)} points of "
          f"{sweep.describe()}")
    summary = tune(sweep, args.trials, args.results, args.executor, args.dry_run, args.wait, device=args.device,
                   workers=args.workers)
    print(summary.format())
    failed = summary.trials.failed or (summary.finals is not None and summary.finals.failed)
    return 1 if failed else 0


def add_tune_command(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``vqbench tune SUITE_OR_SWEEP --trials N`` (see :mod:`vqbench.slurm.tune`)."""
    q = sub.add_parser("tune", parents=[common], help="the same tuning budget for every method: N Sobol trials on "
                       "the validation split, then the selected configurations with fresh seeds",
                       description=TUNE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("file", metavar="FILE", help="sweep .yaml, or a suite name (tuned, quick, paper)")
    q.add_argument("--trials", type=int, required=True, help="trials per (method, task), the same for every method")
    q.add_argument("--results", default="results", help="results folder (default: results)")
    q.add_argument("--skip-unknown", action="store_true",
                   help="drop tasks/methods the registry does not know (instead of failing)")
    q.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="where to run (default: the sweep's profile's cluster)")
    q.add_argument("--dry-run", action="store_true",
                   help="validate every search space and print what would be submitted; submit nothing")
    q.add_argument("--wait", action="store_true", help="wait for the trials, then select and run the finals")
    q.add_argument("--device", default=None, help="device for the runs (default: CUDA when present)")
    q.add_argument("--workers", type=int, default=1,
                   help="debug executor: parallel worker processes of one torch thread each")
    q.set_defaults(func=cmd_tune)
