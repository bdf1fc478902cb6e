"""``python -m leaderboard build|serve``: the same commands as ``vqbench leaderboard ...``.

Needs only pandas, pyarrow and numpy (never torch), so a publishing job can build the site from a
results folder without installing the training stack (see .github/workflows/leaderboard.yml).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vqbench.errors import UserError
from vqbench.leaderboard.cli import add_actions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaderboard", description="Build or serve the static leaderboard.")
    add_actions(parser.add_subparsers(dest="leaderboard_command", required=True, metavar="ACTION"),
                argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

if __name__ == "__main__":
    sys.exit(main())
