"""The ``vqbench`` command line. Heavy modules (torch, tasks, methods) are imported per command.

Failures a user can cause print one line ``error: ...`` (exit 2) instead of a traceback.
Areas outside ``bench`` add their own sub-commands through ``add_commands(subparsers, common)``
in ``slurm/cli.py`` and ``leaderboard/cli.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from vqbench.errors import UserError
from vqbench.spec import parse_value

AREA_CLIS = ("vqbench.leaderboard.cli", "vqbench.slurm.cli")


def parse_assignments(items: Sequence[str] | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``--set key=value`` items -> (task params, method params, budget overrides).

    Keys are ``task.NAME``, ``method.NAME`` or ``budget.NAME``; a bare ``NAME`` means ``method.NAME``.
    """
    task, method, budget = {}, {}, {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"bad --set {item!r}: use --set key=value (e.g. --set beta=0.5, "
                            "--set task.codebook_size=512, --set budget.steps=200)")
        scope, _, name = key.rpartition(".")
        target = {"task": task, "method": method, "budget": budget, "": method}.get(scope)
        if target is None or not name:
            raise UserError(f"bad --set key {key!r}: prefix it with task., method. or budget.")
        try:
            target[name] = parse_value(value)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return task, method, budget


def load_plugins(args: argparse.Namespace) -> None:
    from vqbench.registry import load_plugin

    for plugin in getattr(args, "plugin", None) or ():
        load_plugin(plugin)


# -- commands --------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from vqbench.registry import METHODS, TASKS

    registry = METHODS if args.what == "methods" else TASKS
    entries = registry.entries(args.pattern)
    if not entries:
        print(f"no {args.what} match {args.pattern!r}")
        return 1
    width = max(len(e.name) for e in entries)
    for e in entries:
        extra = f"[{e.family}]" if args.what == "methods" else f"[{e.kind}, {e.main_metric}]"
        cite = f" arXiv:{e.paper}" if e.paper else ""
        source = "" if e.source == "vqbench" else f" (from {e.source})"
        print(f"{e.name:<{width}}  v{e.version} {extra}{cite}  {e.description}{source}")
        if args.verbose and e.defaults:
            print(f"{'':<{width}}  defaults: {json.dumps(e.defaults, sort_keys=True)}")
        if args.verbose and args.what == "methods":
            space = json.dumps(e.search_space, sort_keys=True) if e.search_space else "none (tuned on the shared lr)"
            print(f"{'':<{width}}  search space: {space}")
            if e.differences:
                print(f"{'':<{width}}  differences from the reference: {e.differences}")
    for label, err in registry.plugin_errors.items():
        print(f"warning: plugin {label} failed to import: {err}", file=sys.stderr)
    return 0


def _print_result(result: Any, spec: Any) -> None:
    if result.status == "skipped":
        print(f"run {result.run_id} ({spec.method} on {spec.task}, seed {spec.seed}) is already complete: "
              "skipped (use --force to run it again)")
        return
    from vqbench.store import format_run_summary

    print(format_run_summary(result.run_id, spec.method, spec.task, spec.seed, result.status, error=result.error,
                             final=result.final, main_metric=result.main_metric or None,
                             wall_time_s=result.wall_time_s))


def _budget(task: str, name: str, overrides: dict[str, Any]) -> Any:
    """The budget named ``name`` of ``task`` (just the name when nothing is overridden), with ``overrides``."""
    if not overrides:
        return name
    from vqbench.spec import task_budget

    try:
        return task_budget(task, name).with_overrides(**overrides)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad budget override: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from vqbench.runner import run
    from vqbench.spec import make_spec

    task_params, method_params, budget_overrides = parse_assignments(args.set)
    budget = _budget(args.task, args.budget, budget_overrides)
    spec = make_spec(args.task, args.method, task_params, method_params, seed=args.seed, budget=budget)
    result = run(spec, args.results, force=args.force, device=args.device)
    _print_result(result, spec)
    return 0 if result.status in ("ok", "skipped") else 1


def cmd_results(args: argparse.Namespace) -> int:
    import pandas as pd

    from vqbench.store import ResultStore, final_metrics

    if args.action == "compact":
        return cmd_results_compact(args)
    if args.drop_checkpoints:
        raise UserError("--drop-checkpoints goes with `vqbench results compact`")
    store = ResultStore(args.results)
    runs = store.load_runs()
    if runs.empty:
        print(f"no runs in {args.results} (run `vqbench quick` or `vqbench run` first)")
        return 1
    if args.task:
        runs = runs[runs["task"] == args.task]
    if args.sweep:
        from vqbench.slurm.collect import read_membership

        members = read_membership(args.results, args.sweep)
        runs = runs[runs["run_id"].isin(members)]
        print(f"sweep {args.sweep}: {len(runs)} of its {len(members)} runs are in {args.results}")
    if runs.empty:
        print("no runs match")
        return 1
    df = _results_table(final_metrics(runs, store.load_metrics(args.task)))
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    return 0


def cmd_results_compact(args: argparse.Namespace) -> int:
    """``vqbench results compact``: one Parquet file per table (``vqbench.compact``)."""
    from vqbench.compact import compact

    if args.task or args.sweep:
        raise UserError("`vqbench results compact` compacts the whole store: drop --task/--sweep")
    summary = compact(args.results, drop_checkpoints=args.drop_checkpoints)
    print(f"compacted {args.results}: " + "; ".join(summary.lines()))
    return 0


def _results_table(table: Any) -> Any:
    """One printed row per run: its main metric as ``name=value``, the collapse metrics, the wall time."""
    import pandas as pd

    rows = []
    for _, r in table.iterrows():
        main = r["main_metric"]
        value = r.get(f"metric.{main}")
        rows.append({"run_id": r["run_id"], "task": r["task"], "method": r["method"], "seed": r["seed"],
                     "status": r["status"], "main": f"{main}={value:.4g}" if pd.notna(value) else "",
                     "utilization": r.get("metric.utilization"), "perplexity": r.get("metric.perplexity"),
                     "wall_s": r["wall_time_s"]})
    return pd.DataFrame(rows).sort_values(["task", "method", "seed"])


def cmd_quick(args: argparse.Namespace) -> int:
    from vqbench.slurm.launch import run_sweep
    from vqbench.slurm.sweep import load_sweep

    sweep = load_sweep("quick")
    if args.methods or args.tasks or args.smoke:
        sweep = _narrow_quick(sweep, args)
    print(f"vqbench quick: {len(sweep.specs())} runs ({sweep.description}) into {args.results}/")
    workers = args.workers or os.cpu_count() or 1
    summary = run_sweep(sweep, args.results, executor="debug", wait=True, device=args.device, workers=workers)
    print(summary.format())
    from vqbench.leaderboard.build import build_site

    index = build_site(args.results, args.out)
    print(f"leaderboard: {index}  (open it in a browser, or `vqbench leaderboard serve --out {args.out}`)")
    if summary.failed:
        print(f"{summary.failed} run(s) failed: see `vqbench sweep status quick --results {args.results}`")
    return 1 if summary.failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    from vqbench.registry import METHODS
    from vqbench.testing import check_quantizer

    METHODS.get(args.name)  # unknown names fail with suggestions
    _, method_params, _ = parse_assignments(args.set)
    results = check_quantizer(args.name, dim=args.dim, codebook_size=args.codebook_size, params=method_params)
    for result in results:
        print(result.line())
    failed = sum(r.status == "fail" for r in results)
    print(f"{args.name}: {len(results) - failed} of {len(results)} checks passed or skipped, {failed} failed")
    return 1 if failed else 0


def cmd_new(args: argparse.Namespace) -> int:
    from vqbench.commands.scaffold import scaffold_method

    root = scaffold_method(args.name, args.dir, family=args.family)
    print(f"wrote plugin {args.name!r} to {root}/\nnext: pip install -e {root} && vqbench list methods {args.name} "
          f"&& vqbench check method {args.name}")
    return 0


SMOKE_BUDGET = {"steps": 8, "eval_interval": 4}


def _narrow_quick(sweep: Any, args: argparse.Namespace) -> Any:
    """The quick suite restricted to some methods/tasks, or as a smoke test (suite ``quick-smoke``: 8 steps)."""
    import yaml

    from vqbench.slurm.sweep import parse_sweep

    data = yaml.safe_load(sweep.path.read_text())
    words = []
    if args.methods:
        data["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
        words.append(f"methods {', '.join(data['methods'])}")
    if args.tasks:
        data["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
        words.append(f"tasks {', '.join(data['tasks'])}")
    if args.smoke:  # other specs than the real suite: a suite of their own, so no leaderboard row mixes them
        data["name"], data["budget"] = "quick-smoke", dict(SMOKE_BUDGET)
        words.append(f"smoke test: {SMOKE_BUDGET['steps']} steps a run")
    data["description"] = "the quick suite, " + "; ".join(words)
    return parse_sweep(data, source=str(sweep.path), base_dir=sweep.path.parent, path=sweep.path)


REPRODUCTIONS = {"tokens-collapse": ("tokens-collapse", "tokens-collapse-offset"),
                 "embeddings-collapse": ("embeddings-collapse",)}


def cmd_reproduce(args: argparse.Namespace) -> int:
    import time

    from vqbench.commands.findings import draw_finding
    from vqbench.slurm.launch import run_sweep
    from vqbench.slurm.sweep import load_sweep

    start = time.perf_counter()
    sweep = load_sweep(args.name)
    print(sweep.describe())
    summary = run_sweep(sweep, args.results, executor=args.executor, wait=True, device=args.device)
    print(summary.format())
    for finding in REPRODUCTIONS[args.name]:
        folder = draw_finding(args.results, finding, command=f"vqbench reproduce {args.name}")
        print(f"figure: {folder / 'figure.png'}  data: {folder / 'data.csv'}")
    print(f"reproduce {args.name}: {time.perf_counter() - start:.0f}s; the leaderboard's Findings page shows it "
          f"(vqbench leaderboard build --results {args.results})")
    return 1 if summary.failed else 0


# -- parser ----------------------------------------------------------------------------------------
def _add_list(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("list", parents=[common], help="list registered methods or tasks")
    p.add_argument("what", choices=["methods", "tasks"])
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern, e.g. 'vq*'")
    p.add_argument("-v", "--verbose", action="store_true", help="also print default parameters")
    p.set_defaults(func=cmd_list)


def _add_run(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="train and evaluate one method on one task")
    p.add_argument("--task", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a parameter: NAME or method.NAME, task.NAME, budget.NAME; repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", default="quick", help="named budget of the task (quick, paper)")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--force", action="store_true", help="run again even if this spec is complete")
    p.set_defaults(func=cmd_run)


def _add_results(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("results", parents=[common],
                       help="print the runs in a results folder (`results compact`: one file per table)")
    p.add_argument("action", nargs="?", choices=["compact"], default=None,
                   help="compact: rewrite the per-run files as one Parquet file per table (lossless)")
    p.add_argument("--results", default="results")
    p.add_argument("--task", default=None)
    p.add_argument("--sweep", default=None, metavar="NAME",
                   help="only the runs sweep NAME lists (shared runs too: results/sweeps/NAME.json)")
    p.add_argument("--drop-checkpoints", action="store_true",
                   help="with compact: also delete the checkpoints of complete runs (not resumable then)")
    p.set_defaults(func=cmd_results)


def _add_quick(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("quick", parents=[common],
                       help="run the quick suite locally on offline data, then build the leaderboard")
    p.add_argument("--results", default="results")
    p.add_argument("--out", default="site", help="where the leaderboard site is written (default: site)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0,
                   help="parallel worker processes of one torch thread each (default: one per CPU core)")
    p.add_argument("--methods", default=None, help="only these methods (comma-separated names or globs)")
    p.add_argument("--tasks", default=None, help="only these tasks (comma-separated names or globs)")
    p.add_argument("--smoke", action="store_true",
                   help="8 steps a run, as its own suite `quick-smoke`: checks that everything runs, in a minute")
    p.set_defaults(func=cmd_quick)


def _add_check(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check", parents=[common], help="run the Quantizer conformance kit on a method")
    p.add_argument("what", choices=["method"])
    p.add_argument("name")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--codebook-size", type=int, default=16)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method parameter override; repeatable")
    p.set_defaults(func=cmd_check)


def _add_new(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("new", parents=[common], help="scaffold a plugin package for a new method")
    p.add_argument("what", choices=["method"])
    p.add_argument("name")
    p.add_argument("--dir", default=None, help="where to write it (default: ./vqbench-NAME)")
    p.add_argument("--family", default="vq", help="method family shown on the leaderboard")
    p.set_defaults(func=cmd_new)


def _add_reproduce(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("reproduce", parents=[common],
                       help="rerun a collapse finding of the seed paper (a sweep) and draw its figures")
    p.add_argument("name", choices=sorted(REPRODUCTIONS))
    p.add_argument("--results", default="results")
    p.add_argument("--executor", default="local", choices=["local", "debug", "slurm"],
                   help="local: worker processes on this machine (default); debug: in this process")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_reproduce)


def _add_perf(sub: Any, common: argparse.ArgumentParser) -> None:
    from vqbench.commands.perf.cli import add_perf_arguments, cmd_perf

    p = sub.add_parser("perf", parents=[common],
                       help="speed and memory of the quantizers vs vector-quantize-pytorch and torch.mm")
    add_perf_arguments(p)
    p.set_defaults(func=cmd_perf)


def _add_diagnose(sub: Any, common: argparse.ArgumentParser, with_options: bool = True) -> None:
    p = sub.add_parser("diagnose", parents=[common],
                       help="does a trained VQ tokenizer suffer tokens or embeddings collapse? (report.html)")
    if not with_options:  # its module imports torch: only the command asked for pays for it
        return
    from vqbench.commands.diagnose import add_arguments, main

    add_arguments(p)
    p.set_defaults(func=main)


COMMANDS = (_add_list, _add_run, _add_results, _add_quick, _add_check, _add_new, _add_reproduce, _add_perf)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``vqbench`` parser: this module's commands, then each area's (``AREA_CLIS``) where installed.

    ``argv``, the command line about to be parsed, lets a command whose module is heavy (``diagnose``: torch) get
    its options only when it is the command asked for; None: every command gets its options.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                        help="load a method/task plugin (a .py file or an importable module); repeatable")
    parser = argparse.ArgumentParser(prog="vqbench", description="Benchmark of anti-collapse vector quantizers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub, common)
    command = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    _add_diagnose(sub, common, with_options=command in (None, "diagnose"))
    for module_name in AREA_CLIS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``vqbench COMMAND ...``: 0 on success, 1 when the command failed, 2 on a user error (one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    warnings.filterwarnings("default", message="vqbench .* plugin")
    try:
        load_plugins(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are saved; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
