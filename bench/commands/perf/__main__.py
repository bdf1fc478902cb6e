"""``python -m vqbench.commands.perf``: the perf table, or (``--worker``) one isolated cell for the parent process."""

import sys

from vqbench.commands.perf.cli import main

sys.exit(main())
