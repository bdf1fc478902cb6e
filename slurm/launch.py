"""Submit a sweep, report its status, collect its results: each safe to rerun at any time.

- :func:`run_sweep` builds every distinct task and method of the sweep once on the CPU (a value one refuses
  is a one-line error naming the sweep file and line, before anything is submitted, dry run included), skips
  runs complete in the store and runs whose job is still pending or running (so a rerun never does anything
  twice), and submits the rest: on Slurm as job
  arrays (one per resource profile, split below the cluster's MaxArraySize, ``%`` throttled), on the
  local executor as background processes (at most ``array_parallelism``, and no more than the CPUs
  allow) that each run their share of the runs in turn, and on the debug executor in this process,
  one after the other.
- :func:`sweep_status` (:mod:`vqbench.slurm.status`, re-exported here) classifies every run: done,
  running, pending, failed (with a one-line reason), diverged or unsubmitted.
- :func:`collect_sweep` writes ``<results>/sweeps/<name>.parquet`` (one row per run of the sweep
  with its final metrics) and ``<name>.json`` (the sweep's run ids: a run shared with another suite
  is stored once but belongs to both).

The driver only submits and reads: workers write their own results, so killing it loses nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from vqbench.errors import UserError
from vqbench.provenance import git_provenance
from vqbench.slurm import jobs
from vqbench.slurm.inprocess import run_debug
from vqbench.slurm.profile import CLUSTERS, Profile
from vqbench.slurm.snapshot import launcher, ship_plugins, snapshot_code
from vqbench.slurm.status import ACTIVE, STATES, RunState, SweepStatus, produced_lines, sweep_status
from vqbench.slurm.sweep import Sweep, check_buildable
from vqbench.slurm.worker import SweepWorker
from vqbench.spec import RunSpec
from vqbench.store import MEMBERSHIP_ERRORS, ResultStore, read_membership_file


@dataclass
class SweepSummary:
    """What :func:`run_sweep` did."""

    sweep: str
    executor: str
    total: int
    complete: int  # already complete in the store: skipped
    in_flight: int  # pending or running from an earlier submission: skipped
    submitted: int
    jobs: list[str] = field(default_factory=list)  # job (array) ids, or "in-process"
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)  # dry run: what would be submitted
    results: list[dict[str, Any]] = field(default_factory=list)  # debug executor: per-run outcome
    status: SweepStatus | None = None  # after waiting
    producers: dict[str, int] = field(default_factory=dict)  # complete runs another sweep produced: who, how many

    @property
    def failed(self) -> int:
        if self.status is not None:
            return len(self.status.of("failed"))
        return sum(r.get("status") in ("failed", "error") for r in self.results)

    def format(self) -> str:
        verb = "would submit" if self.dry_run else "submitted"
        by = "; ".join(f"{n} by {who}" for who, n in sorted(self.producers.items()))
        complete = f"{self.complete} complete (skipped{'; produced ' + by if by else ''})"
        lines = [f"sweep {self.sweep}: {self.total} runs; {complete}, {self.in_flight} "
                 f"pending/running from an earlier submission (skipped); {verb} {self.submitted} "
                 f"({self.executor})"]
        lines += [f"  {p}" for p in self.plan]
        if self.jobs and not self.dry_run:
            lines.append(f"  jobs: {', '.join(self.jobs)}")
        if self.status is not None:
            lines.append("  now: " + self.status.summary_line())
            lines += [f"  failed: {r.line()}" for r in self.status.of("failed")]
        return "\n".join(lines)


# -- submission ------------------------------------------------------------------------------------
def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _spread(items: list[Any], n: int) -> list[list[Any]]:
    """``items`` dealt round-robin into ``n`` non-empty lists (order kept within each)."""
    n = max(1, min(n, len(items)))
    return [items[i::n] for i in range(n)]


def _provenance() -> dict[str, str]:
    commit, dirty = git_provenance()
    if commit is None:
        return {}
    return {"VQBENCH_GIT_COMMIT": commit, "VQBENCH_GIT_DIRTY": "1" if dirty else "0"}


def write_membership(sweep: Sweep, results: Path) -> Path:
    """Write ``results/sweeps/<name>.json``: the runs sweep ``name`` plans, and the task of each.

    A suite is often run in parts (one file per task, or ``vqbench quick --tasks``), each under the suite's
    name: the runs a file of the same name *and version* listed before stay listed, the new ones are added. A
    new version starts the list afresh; so does deleting the file.
    """
    path = results / "sweeps" / f"{sweep.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    run_ids, run_tasks = _earlier_membership(path, sweep)
    listed = set(run_ids)
    run_ids += [r for r in sweep.run_ids() if r not in listed]
    run_tasks.update({spec.run_id: spec.task for spec in sweep.specs()})
    data = {"name": sweep.name, "version": sweep.version, "description": sweep.description,
            "file": str(sweep.path) if sweep.path else None, "tag": sweep.suite_tag,
            "run_ids": run_ids, "run_tasks": run_tasks,
            "written_at": datetime.now(timezone.utc).isoformat()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def _earlier_membership(path: Path, sweep: Sweep) -> tuple[list[str], dict[str, str]]:
    """The run ids, and run id -> task, an earlier membership file of the same sweep and version lists (none if
    there is no such file; a damaged one is rewritten from this sweep alone, with a warning)."""
    try:
        data = read_membership_file(path)
    except FileNotFoundError:
        return [], {}
    except MEMBERSHIP_ERRORS as exc:
        warnings.warn(f"rewriting damaged sweep membership file {path} from sweep {sweep.name} alone: {exc}",
                      stacklevel=3)
        return [], {}
    if data["name"] != sweep.name or data.get("version") != sweep.version:
        return [], {}
    return list(dict.fromkeys(data["run_ids"])), data["run_tasks"]


def _setup_lines(code: Path | None) -> list[str]:
    if code is None:
        return []
    return [f"export PYTHONPATH={_shell_quote(str(code))}${{PYTHONPATH:+:$PYTHONPATH}}"]


def _shell_quote(text: str) -> str:
    return shlex.quote(text)


def sbatch_preview(profile: Profile, folder: Path, n: int, setup: list[str], job_name: str,
                   launcher_path: Path | None = None) -> str:
    """The sbatch script submitit would write for an array of ``n`` runs with ``profile``."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = profile.slurm_parameters(job_name, setup)
    python = profile.python or shlex.quote(sys.executable)
    start = shlex.quote(str(launcher_path)) if launcher_path else "-m submitit.core._submit"
    return _make_sbatch_string(command=f"{python} -u {start} {shlex.quote(str(folder))}", folder=folder,
                               map_count=n if n > 1 else None, **params)


def run_sweep(sweep: Sweep, results: str | os.PathLike[str] = "results", executor: str | None = None,
              dry_run: bool = False, wait: bool = False, *, poll_s: float = 5.0, device: str | None = None,
              log: Callable[[str], None] | None = print, workers: int = 1) -> SweepSummary:
    """Submit the runs of ``sweep`` that are neither complete nor in flight; see the module docstring.

    ``workers`` > 1 runs the debug executor's runs in that many worker processes of one torch thread each
    (results are the same as one after the other with one thread: every run is seeded and independent).

    ``executor`` (slurm | local | debug) overrides the profiles' ``cluster``. ``dry_run`` only
    reports what would be submitted (and the sbatch script of the first array). ``wait`` polls the
    status until no run is pending or running (debug runs in-process and always waits).
    """
    say = log or (lambda _line: None)
    results = Path(results).resolve()
    if executor is not None and executor not in CLUSTERS:
        raise UserError(f"unknown executor {executor!r}: use {', '.join(CLUSTERS)}")
    check_buildable(sweep)  # a value a method or task refuses fails here, not in a job
    _check_executor(sweep, executor)
    if dry_run:
        summary = _submit(sweep, results, executor, True, device, say, workers)
    else:
        ResultStore(results).ensure_writable()
        with _submission_lock(sweep, results):
            summary = _submit(sweep, results, executor, False, device, say, workers)
    if wait and not dry_run and summary.executor != "debug" and (summary.submitted or summary.in_flight):
        summary.status = _wait(sweep, results, poll_s, say)
    elif not dry_run and summary.results:
        summary.status = sweep_status(sweep, results)
    return summary


def _check_executor(sweep: Sweep, executor: str | None) -> None:
    """A run shape the executor cannot run fails before anything is written (several nodes need Slurm)."""
    for profile, _ in sweep.groups():
        kind = executor or profile.cluster
        if kind != "slurm" and profile.nodes > 1:
            raise UserError(f"runs of {profile.nodes} nodes need Slurm, but the {kind} executor runs on this machine "
                            f"only: use --executor slurm, or nodes: 1 (the {kind} executor runs the "
                            f"{profile.world_size} ranks of a run as local processes)")


@contextlib.contextmanager
def _submission_lock(sweep: Sweep, results: Path) -> Iterator[None]:
    """One driver at a time decides what to submit for a sweep (two at once could both submit a run)."""
    path = jobs.jobs_dir(results, sweep.name) / ".submit.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another `vqbench sweep run` is submitting sweep {sweep.name} into {results} right "
                            "now: let it finish, then rerun (nothing is submitted twice)") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _submit(sweep: Sweep, results: Path, executor: str | None, dry_run: bool, device: str | None,
            say: Callable[[str], None], workers: int = 1) -> SweepSummary:
    status = sweep_status(sweep, results)
    unknown = status.of("unknown")
    if unknown and not dry_run:
        raise UserError(f"cannot tell whether {len(unknown)} run(s) of sweep {sweep.name} are still queued "
                        f"({'; '.join(status.notes)}): not submitting anything twice; retry when Slurm answers")
    todo_ids = {r.spec.run_id for r in status.of("unsubmitted", "failed")}
    summary = SweepSummary(sweep.name, "", len(status.runs), len(status.of("done", "diverged")),
                           len(status.of("running", "pending", "unknown")), len(todo_ids), dry_run=dry_run,
                           producers=status.producers())
    groups = [(p, [s for s in specs if s.run_id in todo_ids]) for p, specs in sweep.groups()]
    groups = [(p, specs) for p, specs in groups if specs]
    kinds = sorted({executor or p.cluster for p, _ in groups}) or [executor or sweep.profile.cluster]
    summary.executor = "+".join(kinds)
    jobs_root = jobs.jobs_dir(results, sweep.name)
    if not dry_run:
        write_membership(sweep, results)
        jobs.clean_stray_submission_files(jobs_root / "logs")  # left by a submission killed or refused earlier
    if not groups:
        summary.plan.append("nothing to submit")
        return summary
    for profile, specs in groups:
        kind = executor or profile.cluster
        if kind == "debug":
            ranks = profile.world_size
            if ranks > 1:
                summary.plan.append(f"{len(specs)} run(s) one after the other, each as {ranks} processes (ranks) "
                                    "on this machine")
            else:
                summary.plan.append(f"{len(specs)} run(s) in this process, one after the other" if workers <= 1
                                    else f"{len(specs)} run(s) in {min(workers, len(specs))} worker processes of "
                                    "one thread")
            if not dry_run:
                summary.jobs.append("in-process")
                jobs.record_submissions(results, sweep.name, [
                    jobs.Submission(spec.run_id, f"debug-{os.getpid()}", "debug", "", sweep.name, time.time())
                    for spec in specs])
                summary.results += run_debug(str(results), sweep.name, specs, device, say, workers, ranks)
        elif kind == "local":
            _submit_local(sweep, profile, specs, results, jobs_root, dry_run, summary, device)
        else:
            _submit_slurm(sweep, profile, specs, results, jobs_root, dry_run, summary, device)
    return summary


class _SnapshotCommand:
    """Start jobs through the snapshot's launcher (``launcher`` set) instead of ``python -m submitit...``."""

    launcher: str | None = None
    python: str
    folder: Path

    @property
    def _submitit_command_str(self) -> str:
        if not self.launcher:
            return super()._submitit_command_str  # type: ignore[misc]
        return " ".join([self.python, "-u", shlex.quote(self.launcher), shlex.quote(str(self.folder))])


class _SlurmExecutor(_SnapshotCommand, submitit.SlurmExecutor):
    pass


class _LocalExecutor(_SnapshotCommand, submitit.LocalExecutor):
    pass


def _code_and_plugins(sweep: Sweep, profile: Profile, jobs_root: Path) -> tuple[Path | None, list[dict[str, str]]]:
    code = snapshot_code(jobs_root / "code") if profile.snapshot else None
    return code, ship_plugins(sweep.plugins, jobs_root / "plugins")


def _submit_local(sweep: Sweep, profile: Profile, specs: list[RunSpec], results: Path, jobs_root: Path,
                  dry_run: bool, summary: SweepSummary, device: str | None) -> None:
    shares = _spread(specs, profile.local_parallelism())
    ranks = profile.ranks_per_node
    each = f" of {ranks} processes (ranks) each" if ranks > 1 else ""
    summary.plan.append(f"{len(specs)} run(s) as {len(shares)} local job(s){each} (at most "
                        f"{profile.local_parallelism()} at once), each running its share in turn")
    if dry_run:
        return
    code, plugins = _code_and_plugins(sweep, profile, jobs_root)
    folder = jobs_root / "logs" / "%j"
    ex = _LocalExecutor(folder=folder, max_num_timeout=profile.max_num_timeout, python=profile.python)
    ex.launcher = str(launcher(code)) if code else None
    worker = SweepWorker(str(results), sweep.name, plugins, threads=profile.cpus, provenance=_provenance(),
                         device=device, ranks=ranks)
    gpus = ranks if profile.gpus and ranks > 1 else profile.gpus
    for share in shares:
        # the local controller starts `ranks` tasks, ends them all when one ends, and sets CUDA_VISIBLE_DEVICES
        ex.update_parameters(timeout_min=profile.time * len(share), signal_delay_s=profile.signal_delay_s,
                             setup=_setup_lines(code), tasks_per_node=ranks, gpus_per_node=gpus)
        job = _submitting(ex, profile, summary, jobs_root, lambda: ex.submit(worker, [s.to_json() for s in share]))
        now = time.time()
        jobs.record_submissions(results, sweep.name, [
            jobs.Submission(s.run_id, str(job.job_id), "local", str(folder), sweep.name, now) for s in share])
        summary.jobs.append(str(job.job_id))


def _submitting(ex: Any, profile: Profile, summary: SweepSummary, jobs_root: Path, submit: Callable[[], Any]) -> Any:
    """``submit()``; a refusal is a one-line UserError (with what to fix), leaving no stray files behind."""
    try:
        return submit()
    except (FailedJobError, FailedSubmissionError, OSError, subprocess.CalledProcessError) as exc:
        jobs.clean_stray_submission_files(jobs_root / "logs")
        detail = " ".join(str(exc).split()) or type(exc).__name__
        before = f"; arrays submitted before it stay queued ({', '.join(summary.jobs)})" if summary.jobs else ""
        what = "sbatch refused the array" if isinstance(ex, submitit.SlurmExecutor) else \
            "the local executor could not start a job"
        hint = jobs.missing_config_hint(detail)
        if hint:
            raise UserError(f"{what} for profile {profile.name}: {hint}{before}; nothing is submitted twice") from None
        raise UserError(f"{what} for profile {profile.name}: {detail}{before}; fix the profile and rerun: nothing "
                        "is submitted twice") from None
    except BaseException:  # interrupted (Ctrl-C) mid-submission: no stray pickles either
        jobs.clean_stray_submission_files(jobs_root / "logs")
        raise


def _submit_slurm(sweep: Sweep, profile: Profile, specs: list[RunSpec], results: Path, jobs_root: Path,
                  dry_run: bool, summary: SweepSummary, device: str | None) -> None:
    config = jobs.slurm_config()
    if config.problem and not dry_run:
        raise UserError(f"{config.problem}; nothing was submitted")
    limit = config.max_array_size or 1001  # Slurm's default MaxArraySize
    size = max(1, min(limit, profile.max_array_size or limit))
    chunks = _chunks(specs, size)
    folder = jobs_root / "logs" / "%j"
    job_name = f"vqbench-{sweep.name}"
    if config.problem:
        summary.plan.append(f"warning: {config.problem}")
        known = " (MaxArraySize unknown until Slurm can be asked: Slurm's default 1001 assumed)"
    else:
        known = "" if config.max_array_size else " (MaxArraySize not readable here: Slurm's default 1001 assumed)"
    summary.plan.append(f"{len(specs)} run(s) as {len(chunks)} Slurm array(s) of at most {size}{known} "
                        f"(%{profile.array_parallelism or 256} at once) with profile {profile.label()}")
    if dry_run:
        snap = jobs_root / "code" / "<snapshot>"
        code_hint = _setup_lines(snap) if profile.snapshot else []
        preview = sbatch_preview(profile, folder, len(chunks[0]), code_hint, job_name,
                                 launcher(snap) if profile.snapshot else None)
        summary.plan += ["sbatch script of the first array:"] + [f"  | {ln}" for ln in preview.splitlines()]
        return
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UserError("Slurm's sbatch/srun are not on PATH here: submit from a Slurm login node, or use "
                        "--executor local (background processes) or --executor debug (this process)")
    code, plugins = _code_and_plugins(sweep, profile, jobs_root)
    ex = _SlurmExecutor(folder=folder, max_num_timeout=profile.max_num_timeout, python=profile.python)
    ex.launcher = str(launcher(code)) if code else None
    ex.update_parameters(**profile.slurm_parameters(job_name, _setup_lines(code)))
    worker = SweepWorker(str(results), sweep.name, plugins, threads=profile.cpus, provenance=_provenance(),
                         device=device, ranks=profile.world_size)

    def submit_chunk(chunk: list[RunSpec]) -> list[Any]:
        with ex.batch():
            return [ex.submit(worker, [s.to_json()]) for s in chunk]

    for chunk in chunks:
        submitted = _submitting(ex, profile, summary, jobs_root, lambda chunk=chunk: submit_chunk(chunk))
        now = time.time()
        jobs.record_submissions(results, sweep.name, [
            jobs.Submission(s.run_id, str(j.job_id), "slurm", str(folder), sweep.name, now)
            for s, j in zip(chunk, submitted)])
        first = str(submitted[0].job_id)
        summary.jobs.append(first.split("_")[0] if "_" in first else first)


def _wait(sweep: Sweep, results: Path, poll_s: float, say: Callable[[str], None]) -> SweepStatus:
    last = ""
    while True:
        status = sweep_status(sweep, results)
        line = status.summary_line()
        if line != last:
            say(f"sweep {sweep.name}: {line}")
            last = line
        if not status.of(*ACTIVE):
            return status
        time.sleep(poll_s)


__all__ = ["ACTIVE", "STATES", "RunState", "SweepStatus", "SweepSummary", "produced_lines", "run_sweep",
           "sbatch_preview", "sweep_status", "write_membership"]
