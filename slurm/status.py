"""The status of a sweep's runs, from the store, the job bookkeeping and the scheduler.

:func:`sweep_status` classifies every run: ``done`` / ``diverged`` (the store), ``running`` / ``pending`` (the
scheduler: ``squeue``, or the local process), ``failed`` (a ``failed`` row in the store, or a job that ended
without writing one: cancelled, out of memory, node failure; seen with or without Slurm accounting) and
``unsubmitted``; failed runs carry a one-line error from the store, the worker, submitit's pickled traceback,
``sacct`` or the job's log. :mod:`vqbench.slurm.launch` re-exports every public name here.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqbench.slurm import jobs
from vqbench.slurm.sweep import Sweep
from vqbench.spec import RunSpec
from vqbench.store import ResultStore

STATES = ("done", "running", "pending", "failed", "diverged", "unsubmitted")
ACTIVE = ("running", "pending", "unknown")


@dataclass
class RunState:
    spec: RunSpec
    state: str  # one of STATES, or "unknown" (the scheduler could not be asked)
    error: str = ""
    job_id: str | None = None
    produced_by: str = ""  # a stored run made by another sweep (same spec): that sweep's name

    def line(self) -> str:
        s = self.spec
        job = f" [job {self.job_id}]" if self.job_id else ""
        return f"{s.run_id} {s.method} on {s.task} seed {s.seed}{job}: {self.error or self.state}"


@dataclass
class SweepStatus:
    sweep: str
    results: Path
    runs: list[RunState]
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """done / running / pending / failed / diverged, then unsubmitted and unknown when there are any."""
        c = Counter(r.state for r in self.runs)
        counts = {s: c.get(s, 0) for s in ("done", "running", "pending", "failed", "diverged")}
        counts.update({s: c[s] for s in ("unsubmitted", "unknown") if c.get(s)})
        return counts

    def of(self, *states: str) -> list[RunState]:
        return [r for r in self.runs if r.state in states]

    def summary_line(self) -> str:
        return "  ".join(f"{k} {v}" for k, v in self.counts.items())

    def producers(self) -> dict[str, int]:
        """Finished runs of this sweep that another sweep (or a plain ``vqbench run``) produced: who, how many."""
        return dict(Counter(r.produced_by for r in self.of("done", "diverged") if r.produced_by))

    def format(self) -> str:
        lines = [f"sweep {self.sweep}: {len(self.runs)} runs in {self.results}", "  " + self.summary_line()]
        failed = self.of("failed")
        if failed:
            lines.append("failed:")
            lines += [f"  {r.line()}" for r in failed]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"note: {line}" for line in produced_lines(self.producers())]
        return "\n".join(lines)


def produced_lines(producers: dict[str, int]) -> list[str]:
    """``{"sweep X": 3}`` -> "3 finished run(s) were produced by sweep X (the same specs): ..."."""
    return [f"{n} finished run(s) were produced by {who} (the same specs, so they count here too and are not run "
            "again)" for who, n in sorted(producers.items())]


def _failure_reason(sub: jobs.Submission, attempts: list[dict[str, Any]], acct: dict[str, tuple[str, str]] | None,
                    executor_word: str) -> str:
    for event in reversed(attempts):
        if event.get("job_id") == sub.job_id and event.get("event") == "error":
            return str(event.get("error", "the run raised"))
        if event.get("job_id") == sub.job_id and event.get("event") == "start":
            break
    pickled = jobs.result_error(sub)
    if pickled:
        return pickled
    if acct is not None and sub.job_id in acct:
        state, code = acct[sub.job_id]
        reason = f"job {sub.job_id} ended {state} (exit {code}) without a result"
    else:
        reason = f"{executor_word} job {sub.job_id} ended without writing a result (cancelled, out of memory " \
                 "or node failure?)"
    note = jobs.log_reason(sub)
    return f"{reason}; log: {note}" if note else reason


def sweep_status(sweep: Sweep, results: str | os.PathLike[str]) -> SweepStatus:
    """Classify every run of ``sweep`` from the store, the job bookkeeping and the scheduler."""
    results = Path(results).resolve()
    store = ResultStore(results)
    status = SweepStatus(sweep.name, results, [])
    subs = jobs.latest_submissions(results)
    attempts = jobs.load_attempts(results)
    states: list[RunState | None] = []
    waiting: list[tuple[int, RunSpec, jobs.Submission]] = []
    rows = _read_rows(store, sweep.run_ids())
    for spec in sweep.specs():
        row = rows.get(spec.run_id, _Row(None))
        if row.status == "ok":
            states.append(RunState(spec, "done", produced_by=row.producer(sweep.name)))
        elif row.status == "diverged":
            states.append(RunState(spec, "diverged", row.error, produced_by=row.producer(sweep.name)))
        elif spec.run_id in subs and subs[spec.run_id].submitted_at > row.finished:
            states.append(None)  # submitted after any stored failure: ask the job
            waiting.append((len(states) - 1, spec, subs[spec.run_id]))
        elif row.status in ("failed", "timeout"):
            sub = subs.get(spec.run_id)  # the job that wrote this row, if one did: its log may say more
            death = jobs.task_death(sub) if sub is not None else None  # (the rank that died first)
            error = row.error or row.status
            states.append(RunState(spec, "failed", f"{error}; log: {death}" if death else error,
                                   sub.job_id if sub is not None else None))
        else:
            states.append(RunState(spec, "unsubmitted"))
    slurm_subs = [s for _, _, s in waiting if s.executor == "slurm"]
    queue: dict[str, str] | None = None
    acct: dict[str, tuple[str, str]] | None = None
    if slurm_subs:
        try:
            queue = jobs.squeue_states()
        except (jobs.SchedulerError, OSError) as exc:
            status.notes.append(f"cannot ask Slurm about {len(slurm_subs)} run(s): {exc}")
    for index, spec, sub in waiting:
        run_attempts = attempts.get(spec.run_id, [])
        events = [a.get("event") for a in run_attempts if a.get("job_id") == sub.job_id]
        last = events[-1] if events else None
        if last not in ("end", "error"):  # the job has not finished this run: ask whether it still lives
            if sub.executor == "slurm":
                if queue is None:
                    states[index] = RunState(spec, "unknown", "Slurm could not be asked", sub.job_id)
                    continue
                state = queue.get(sub.job_id)
                if state in jobs.SLURM_RUNNING:
                    states[index] = RunState(spec, "running", job_id=sub.job_id)
                    continue
                if state is not None:  # still queued (pending, requeued, held ...)
                    states[index] = RunState(spec, "pending", "" if state == "PENDING" else state.lower(),
                                             sub.job_id)
                    continue
            elif (sub.executor == "local" and jobs.local_job_alive(sub.job_id)) or \
                    (sub.executor == "debug" and jobs.debug_job_alive(sub.job_id)):
                states[index] = RunState(spec, "running" if last == "start" else "pending", job_id=sub.job_id)
                continue
        # the job is gone: a result written meanwhile counts, otherwise it failed
        row = _read_rows(store, [spec.run_id]).get(spec.run_id, _Row(None))
        if row.status in ("ok", "diverged"):
            states[index] = RunState(spec, "done" if row.status == "ok" else "diverged", row.error, sub.job_id,
                                     row.producer(sweep.name))
            continue
        if row.status in ("failed", "timeout") and row.finished >= sub.submitted_at:
            death = jobs.task_death(sub)  # a data-parallel run: the rank that died first says more
            error = row.error or row.status
            states[index] = RunState(spec, "failed", f"{error}; log: {death}" if death else error, sub.job_id)
            continue
        if sub.executor == "slurm" and acct is None:
            acct = jobs.sacct_states([s.job_id for s in slurm_subs]) or {}
        word = {"slurm": "Slurm", "local": "local", "debug": "in-process"}.get(sub.executor, sub.executor)
        states[index] = RunState(spec, "failed", _failure_reason(sub, run_attempts, acct or None, word), sub.job_id)
    status.runs = [s for s in states if s is not None]
    return status


@dataclass(frozen=True)
class _Row:
    status: str | None
    error: str = ""
    finished: float = float("-inf")
    suites: tuple[str, ...] = ()  # the suite:<name> tags of the stored run (the sweep that produced it)

    def producer(self, sweep: str) -> str:
        """Who produced this stored run, when not ``sweep``: "sweep X", or "`vqbench run` (no sweep)"."""
        if sweep in self.suites:
            return ""
        return f"sweep {self.suites[0]}" if self.suites else "`vqbench run` (no sweep)"


def _read_rows(store: ResultStore, run_ids: list[str]) -> dict[str, _Row]:
    """status, error and finish time of the stored rows of ``run_ids`` (per-run files or a compacted store)."""
    rows = store.run_records(run_ids, ["status", "error", "finished_at", "tags"])
    out: dict[str, _Row] = {}
    for run_id, row in rows.items():
        finished = row["finished_at"]
        suites = tuple(t.removeprefix("suite:") for t in row["tags"] or () if t.startswith("suite:"))
        out[run_id] = _Row(row["status"], " ".join(str(row["error"] or "").split()),
                           finished.timestamp() if finished is not None else float("-inf"), suites)
    return out


__all__ = ["ACTIVE", "STATES", "RunState", "SweepStatus", "produced_lines", "sweep_status"]
