"""Helpers shared by the slow sweep tests (local executor and real Slurm); not a test module."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

from vqbench.slurm import jobs

GMM = "{n_train: 1024, n_eval: 256, hidden: 32, n_modes: 8, codebook_size: 32}"


def sweep_file(tmp_path: Path, name: str, methods: str, budget: str, executor: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        tasks:
          - name: gmm
            params: {GMM}
        methods: {methods}
        seeds: 1
        budget: {budget}
        executor: {executor}
        """) + extra)
    return path


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5, show=None):
    """Poll ``predicate`` until it returns something true; on timeout say what ``show()`` says."""
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {show()}" if show else ""))


def starts(results: Path) -> dict[str, list[dict]]:
    return {rid: [e for e in events if e["event"] == "start"] for rid, events in jobs.load_attempts(results).items()}
