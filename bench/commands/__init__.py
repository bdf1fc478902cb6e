"""The top floor: commands a user runs (CLI, perf, the GPU check, the plugin scaffold, findings).

Nothing below imports this package; it may import every layer (``vqbench``'s ground modules,
``vqbench.methods``, ``vqbench.tasks``, ``vqbench.slurm``, ``vqbench.leaderboard``), lazily per command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def run_module_cli(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                   handler: Callable[[argparse.Namespace], int], argv: Sequence[str] | None = None) -> int:
    """``python -m vqbench.commands.X``: parse ``argv``, run ``handler``; a user error is one line and exit 2."""
    from vqbench.errors import UserError

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    try:
        return int(handler(parser.parse_args(argv)) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
