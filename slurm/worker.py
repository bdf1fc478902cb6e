"""What a job runs: its RunSpecs one after the other through :func:`vqbench.runner.run`.

The worker writes every result itself (the runner writes the store), so nothing depends on the
driver that submitted it being alive. It is a ``submitit.helpers.Checkpointable``: on preemption or
timeout Slurm sends USR2, submitit calls :meth:`checkpoint`, which resubmits the same worker with the
same specs, and requeues the job; on restart the runs already complete are skipped and the
interrupted one resumes from its last checkpoint (``results/checkpoints/<run_id>.pt``, written every
``budget.checkpoint_interval`` steps), ending with the same metrics as an uninterrupted run.

A data-parallel run (``ranks`` > 1) is one job of ``ranks`` tasks, each running this worker with the same
specs: :meth:`SweepWorker._join_ranks` exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from
the job (``submitit.helpers.TorchDistributedEnvironment``; a port per run, so runs in turn never share one),
then :func:`vqbench.runner.run` trains on every rank and rank 0 writes the store. Only
rank 0 records attempts and prints; on the checkpoint signal rank 0 checkpoints and requeues the job.
"""

from __future__ import annotations

import hashlib
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
                 device: str | None = None, verbose: bool = True, progress: bool | None = False,
                 ranks: int = 1, job_id: str | None = None) -> None:
        self.results = str(results)
        self.sweep = sweep
        self.plugins = list(plugins or [])
        self.threads = threads
        self.provenance = dict(provenance or {})
        self.device = device
        self.verbose = verbose
        self.progress = progress  # the runner's progress bar: off in jobs, None = when on a terminal
        self.ranks = ranks  # processes of each run (one Slurm/local task each, or spawned by the debug executor)
        self.job_id = job_id  # the id attempts are recorded under (default: the submitit job's)
        self.rank = 0

    def _say(self, line: str, error: bool = False) -> None:
        if self.verbose and (self.rank == 0 or error):
            line = line if self.ranks == 1 else f"rank {self.rank}/{self.ranks}: {line}"
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

    def _join_ranks(self) -> bool:
        """In a job of ``ranks`` tasks: export the variables torch.distributed reads (``env://``).

        Returns whether MASTER_PORT should be set per run (a submitit job; the debug executor's spawner sets
        the variables itself, one run per set of processes)."""
        if self.ranks == 1:
            return False
        if os.environ.get("VQBENCH_RANKS_SPAWNED") == "1":
            per_run_port = False
        else:
            env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                         overwrite=True)
            if env.world_size != self.ranks:
                raise RuntimeError(f"the job has {env.world_size} tasks but its runs need {self.ranks} ranks")
            per_run_port = True
        self.rank = int(os.environ["RANK"])
        # the runner joins the process group from these variables and takes cuda:$LOCAL_RANK on a GPU node
        return per_run_port

    def __call__(self, specs: list[str]) -> list[dict[str, Any]]:
        from vqbench.runner import run
        from vqbench.spec import RunSpec
        from vqbench.store import ResultStore

        job_id = self.job_id or current_job_id()
        code = str(Path(sys.modules["vqbench"].__file__ or "").resolve().parent.parent)
        results = Path(self.results)
        store = ResultStore(results)
        self._prepare()
        per_run_port = self._join_ranks()
        main = self.rank == 0
        out: list[dict[str, Any]] = []
        errors = []
        for text in specs:
            spec = RunSpec.from_json(text)
            run_id = spec.run_id
            if store.is_complete(run_id):
                out.append({"run_id": run_id, "status": "skipped"})
                continue
            if per_run_port:  # the same on every rank, another for each run of the job
                os.environ["MASTER_PORT"] = str(run_port(job_id, run_id))
            resumed = store.checkpoint_path(run_id).exists()
            if main:
                record_attempt(results, self.sweep, run_id, job_id, "start", code=code, resumed=resumed,
                               ranks=self.ranks)
            self._say(f"{'resuming' if resumed else 'starting'} run {run_id} ({spec.method} on {spec.task}, "
                      f"seed {spec.seed}) in job {job_id}, code from {code}")
            try:
                result = run(spec, results, device=self.device, progress=self.progress)
            except Exception as exc:  # noqa: BLE001 - reported per run; the other specs still run
                message = " ".join(f"{type(exc).__name__}: {exc}".split())
                if self.ranks > 1:
                    message = f"rank {self.rank} of {self.ranks}: {message}"
                if main:
                    record_attempt(results, self.sweep, run_id, job_id, "error", error=message)
                self._say(f"run {run_id} raised {message}", error=True)
                errors.append(f"{run_id}: {message}")
                out.append({"run_id": run_id, "status": "error", "error": message})
                continue
            if main:
                record_attempt(results, self.sweep, run_id, job_id, "end", status=result.status)
            self._say(f"run {run_id} {result.status}{': ' + result.error if result.error else ''} "
                      f"({result.wall_time_s:.1f}s)")
            out.append({"run_id": run_id, "status": result.status, "error": result.error,
                        "final": result.final, "wall_time_s": result.wall_time_s, "main_metric": result.main_metric})
        if errors:
            raise RuntimeError(f"{len(errors)} run(s) raised: " + "; ".join(errors))
        return out


def run_port(job_id: str, run_id: str) -> int:
    """The rendezvous port of one run of a job, in [20000, 60000): the same on every rank, another per run."""
    digest = hashlib.sha256(f"{job_id}:{run_id}".encode()).digest()
    return 20000 + int.from_bytes(digest[:4], "big") % 40000
