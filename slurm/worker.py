"""What a job runs: its RunSpecs one after the other through :func:`vqbench.runner.run`.

The worker writes every result itself (the runner writes the store), so nothing depends on the
driver that submitted it being alive. It is a ``submitit.helpers.Checkpointable``: on preemption or
timeout Slurm sends USR2, submitit calls :meth:`checkpoint`, which resubmits the same worker with the
same specs, and requeues the job; on restart the runs already complete are skipped and the
interrupted one resumes from its last checkpoint (``results/checkpoints/<run_id>.pt``, written every
``budget.checkpoint_interval`` steps), ending with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import submitit

from vqbench.slurm.jobs import record_attempt
from vqbench.slurm.snapshot import plugin_to_load


def current_job_id() -> str:
    """The submitit job id (``123``, ``123_4`` in an array, a pid locally) or ``debug-<pid>`` in-process."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:
        return f"debug-{os.getpid()}"


class SweepWorker(submitit.helpers.Checkpointable):
    """Runs RunSpecs (as JSON) into ``results``; returns one summary dict per spec."""

    def __init__(self, results: str, sweep: str, plugins: list[dict[str, str]] | None = None,
                 threads: int | None = None, provenance: dict[str, str] | None = None,
                 device: str | None = None, verbose: bool = True, progress: bool | None = False) -> None:
        self.results = str(results)
        self.sweep = sweep
        self.plugins = list(plugins or [])
        self.threads = threads
        self.provenance = dict(provenance or {})
        self.device = device
        self.verbose = verbose
        self.progress = progress  # the runner's progress bar: off in jobs, None = when on a terminal

    def _say(self, line: str, error: bool = False) -> None:
        if self.verbose:
            print(f"vqbench: {line}", file=sys.stderr if error else sys.stdout, flush=True)

    def _prepare(self) -> None:
        import torch

        from vqbench.registry import load_plugin

        if self.threads:
            torch.set_num_threads(self.threads)
        for key, value in self.provenance.items():
            os.environ.setdefault(key, value)
        for ref in self.plugins:
            load_plugin(plugin_to_load(ref))

    def __call__(self, specs: list[str]) -> list[dict[str, Any]]:
        from vqbench.runner import run
        from vqbench.spec import RunSpec
        from vqbench.store import ResultStore

        job_id = current_job_id()
        code = str(Path(sys.modules["vqbench"].__file__ or "").resolve().parent.parent)
        results = Path(self.results)
        store = ResultStore(results)
        self._prepare()
        out: list[dict[str, Any]] = []
        errors = []
        for text in specs:
            spec = RunSpec.from_json(text)
            run_id = spec.run_id
            if store.is_complete(run_id):
                out.append({"run_id": run_id, "status": "skipped"})
                continue
            resumed = store.checkpoint_path(run_id).exists()
            record_attempt(results, self.sweep, run_id, job_id, "start", code=code, resumed=resumed)
            self._say(f"{'resuming' if resumed else 'starting'} run {run_id} ({spec.method} on {spec.task}, "
                      f"seed {spec.seed}) in job {job_id}, code from {code}")
            try:
                result = run(spec, results, device=self.device, progress=self.progress)
            except Exception as exc:  # noqa: BLE001 - reported per run; the other specs still run
                message = " ".join(f"{type(exc).__name__}: {exc}".split())
                record_attempt(results, self.sweep, run_id, job_id, "error", error=message)
                self._say(f"run {run_id} raised {message}", error=True)
                errors.append(f"{run_id}: {message}")
                out.append({"run_id": run_id, "status": "error", "error": message})
                continue
            record_attempt(results, self.sweep, run_id, job_id, "end", status=result.status)
            self._say(f"run {run_id} {result.status}{': ' + result.error if result.error else ''} "
                      f"({result.wall_time_s:.1f}s)")
            out.append({"run_id": run_id, "status": result.status, "error": result.error,
                        "final": result.final, "wall_time_s": result.wall_time_s, "main_metric": result.main_metric})
        if errors:
            raise RuntimeError(f"{len(errors)} run(s) raised: " + "; ".join(errors))
        return out
