"""``vqbench leaderboard ...`` sub-commands."""

from __future__ import annotations

import argparse


def cmd_build(args: argparse.Namespace) -> int:
    from leaderboard.build import build_site

    index = build_site(args.results, args.out)
    print(f"leaderboard written to {index}")
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("leaderboard", parents=[common], help="build or serve the static leaderboard site")
    lsub = p.add_subparsers(dest="leaderboard_command", required=True, metavar="ACTION")
    b = lsub.add_parser("build", parents=[common], help="results folder -> static site")
    b.add_argument("--results", default="results")
    b.add_argument("--out", default="site")
    b.set_defaults(func=cmd_build)
