"""Job bookkeeping beside the result store: what was submitted where, and what the scheduler says.

Under ``<results>/jobs/<sweep>/``:

- ``submissions.jsonl``: one line per submitted run: run_id, job_id, executor, submitit folder, time;
- ``attempts.jsonl``: one line per event a worker reports (``start``, ``end``, ``error``) with its job
  id, host and the code folder it ran from: how often a run was started, and why it failed when it
  failed outside the runner (which writes its own ``failed`` rows);
- ``logs/<job_id>/``: submitit's folder (sbatch script, pickles, stdout/stderr of each job);
- ``code/<hash>/`` and ``plugins/``: the snapshot of the code and plugin files the jobs import.

Both files are append-only JSON lines (one ``write`` each, so concurrent writers do not interleave on
a local file system); unreadable lines are skipped. The store stays the source of truth: these files
only say which job to ask about a run that has no complete row yet.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: squeue states of a job that is running; any other state squeue lists means it is still queued
SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT"}


def jobs_dir(results: Path, sweep: str) -> Path:
    return Path(results) / "jobs" / sweep


def _append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


# -- submissions -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Submission:
    run_id: str
    job_id: str
    executor: str  # slurm | local | debug
    folder: str  # submitit folder pattern (with %j)
    sweep: str
    submitted_at: float

    def paths(self) -> Any:
        from submitit.core.utils import JobPaths

        return JobPaths(self.folder or ".", job_id=self.job_id, task_id=0)


def record_submissions(results: Path, sweep: str, subs: list[Submission]) -> None:
    _append_jsonl(jobs_dir(results, sweep) / "submissions.jsonl", (asdict(s) for s in subs))


def latest_submissions(results: Path) -> dict[str, Submission]:
    """run_id -> the latest submission of it, over every sweep in this results folder."""
    latest: dict[str, Submission] = {}
    for path in sorted((Path(results) / "jobs").glob("*/submissions.jsonl")):
        for record in _read_jsonl(path):
            try:
                sub = Submission(**{k: record[k] for k in Submission.__dataclass_fields__})
            except (KeyError, TypeError):
                continue
            old = latest.get(sub.run_id)
            if old is None or sub.submitted_at >= old.submitted_at:
                latest[sub.run_id] = sub
    return latest


# -- attempts (written by workers) -----------------------------------------------------------------
def record_attempt(results: Path, sweep: str, run_id: str, job_id: str, event: str, **extra: Any) -> None:
    record = {"run_id": run_id, "job_id": job_id, "event": event, "time": time.time(),
              "host": socket.gethostname(), "pid": os.getpid(), **extra}
    _append_jsonl(jobs_dir(results, sweep) / "attempts.jsonl", [record])


def load_attempts(results: Path) -> dict[str, list[dict[str, Any]]]:
    """run_id -> its attempt events (oldest first), over every sweep in this results folder."""
    events: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((Path(results) / "jobs").glob("*/attempts.jsonl")):
        for record in _read_jsonl(path):
            if "run_id" in record:
                events.setdefault(record["run_id"], []).append(record)
    for records in events.values():
        records.sort(key=lambda r: r.get("time", 0))
    return events


# -- Slurm -----------------------------------------------------------------------------------------
class SchedulerError(RuntimeError):
    """The scheduler could not be asked (e.g. slurmctld down): job states are unknown."""


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if shutil.which(cmd[0]) is None:
        raise SchedulerError(f"{cmd[0]} not found: is this a Slurm login node?")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def squeue_states() -> dict[str, str]:
    """job id (``123`` or ``123_4`` for array tasks) -> state, for this user's jobs still in the queue."""
    user = os.environ.get("USER") or _whoami()
    proc = _run(["squeue", "-h", "-r", "-u", user, "-o", "%i|%T"])
    if proc.returncode != 0:
        raise SchedulerError(f"squeue failed: {' '.join(proc.stderr.split()) or proc.returncode}")
    return parse_squeue(proc.stdout)


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def parse_squeue(text: str) -> dict[str, str]:
    states = {}
    for line in text.splitlines():
        job, _, state = line.strip().partition("|")
        if job and state:
            states[job] = state.strip().upper()
    return states


def sacct_states(job_ids: Iterable[str]) -> dict[str, tuple[str, str]] | None:
    """job id -> (state, exit code) from accounting, or None where accounting is not available."""
    mains = sorted({j.split("_")[0] for j in job_ids})
    if not mains:
        return {}
    try:
        proc = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode", "-j", ",".join(mains)])
    except (SchedulerError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:  # e.g. "Slurm accounting storage is disabled"
        return None
    return parse_sacct(proc.stdout)


def parse_sacct(text: str) -> dict[str, tuple[str, str]]:
    """``123_4|CANCELLED by 0|0:15`` lines -> {"123_4": ("CANCELLED", "0:15")}; ranges expand."""
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        job, state = parts[0], parts[1].split()[0].upper() if parts[1].split() else ""
        code = parts[2] if len(parts) > 2 else ""
        if "_[" in job:  # a pending range like 123_[4-6%2]
            main, _, rng = job.partition("_[")
            for part in rng.rstrip("]").split("%")[0].split(","):
                lo, _, hi = part.partition("-")
                if lo.isdigit():
                    for k in range(int(lo), int(hi or lo) + 1):
                        out[f"{main}_{k}"] = (state, code)
        else:
            out[job] = (state, code)
    return out


#: where slurm.conf usually lives; the test cluster's first (``slurm/testcluster.sh``)
_CONF_CANDIDATES = ("{test}/etc/slurm.conf", "/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf",
                    "/usr/local/etc/slurm.conf", "/opt/slurm/etc/slurm.conf")
_NO_CONFIG = ("Could not establish a configuration source", "Unable to process configuration file")


@dataclass(frozen=True)
class SlurmConfig:
    """What ``scontrol show config`` says: MaxArraySize, or why Slurm could not be asked (``problem``)."""

    max_array_size: int | None = None
    problem: str | None = None  # one line: what is wrong and what to set (a missing SLURM_CONF ...)


def missing_config_hint(text: str) -> str | None:
    """When ``text`` (a Slurm command's stderr) says Slurm found no configuration: one line saying what to set."""
    if not any(marker in text for marker in _NO_CONFIG):
        return None
    current = os.environ.get("SLURM_CONF")
    test_dir = os.environ.get("VQBENCH_SLURM_DIR", "/tmp/vqbench-slurm")
    found = next((c.format(test=test_dir) for c in _CONF_CANDIDATES
                  if Path(c.format(test=test_dir)).is_file() and c.format(test=test_dir) != current), None)
    if current and not Path(current).is_file():
        cause = f"SLURM_CONF={current} names no file"
    elif current:
        cause = f"Slurm cannot use SLURM_CONF={current}"
    else:
        cause = "SLURM_CONF is not set and Slurm found no configuration of its own"
    where = (f"export SLURM_CONF={found}" if found else
             "export SLURM_CONF=/path/to/your/cluster/slurm.conf (ask the cluster's admins where it is)")
    return (f"Slurm cannot find its configuration ({cause}: 'Could not establish a configuration source'): {where} "
            "and rerun (`bash slurm/testcluster.sh env` prints the test cluster's)")


def slurm_config() -> SlurmConfig:
    """The cluster's MaxArraySize (array indices must stay below it), or why it cannot be read."""
    try:
        proc = _run(["scontrol", "show", "config"], timeout=30)
    except SchedulerError:
        return SlurmConfig()  # no Slurm here at all (a laptop): nothing to warn about beyond the default
    except subprocess.TimeoutExpired:
        return SlurmConfig(problem="scontrol did not answer within 30 s (is slurmctld up?)")
    hint = missing_config_hint(proc.stderr + proc.stdout)
    if hint:
        return SlurmConfig(problem=hint)
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return SlurmConfig(max_array_size=int(value.strip()))
    if proc.returncode != 0:
        return SlurmConfig(problem=f"scontrol show config failed: {' '.join(proc.stderr.split()[-12:])}")
    return SlurmConfig()


def max_array_size() -> int | None:
    """The cluster's MaxArraySize (array indices must stay below it), or None when it cannot be read."""
    return slurm_config().max_array_size


# -- stray submission files ------------------------------------------------------------------------
_UUID_PICKLE = re.compile(r"^[0-9a-f]{32}\.pkl$")
_SUBMISSION_FILE = re.compile(r"^\.submission_file_[0-9a-f]{32}\.sh$")


def clean_stray_submission_files(logs: Path) -> list[Path]:
    """Remove what a failed or killed submission left in a sweep's logs folder: submitit's temporary pickles
    (``<uuid>.pkl``, moved into the job's folder only once sbatch answered) and sbatch scripts
    (``.submission_file_<uuid>.sh``). Call it with the sweep's submission lock held (no submission in flight)."""
    removed = []
    try:
        entries = list(Path(logs).iterdir())
    except OSError:
        return removed
    for path in entries:
        if path.is_file() and (_UUID_PICKLE.match(path.name) or _SUBMISSION_FILE.match(path.name)):
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    return removed


# -- local processes -------------------------------------------------------------------------------
def local_job_alive(job_id: str) -> bool:
    """Whether the local submitit job (its id is the controller's pid) is still running."""
    if not job_id.isdigit():
        return False
    pid = int(job_id)
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            stat = (proc / "stat").read_text()
            state = stat.rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X") and "submitit" in cmdline
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def debug_job_alive(job_id: str) -> bool:
    """Whether another process is running a sweep in-process (debug executor); this process is not."""
    pid = job_id.removeprefix("debug-")
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:
        os.kill(int(pid), 0)
    except OSError:
        return False
    return True


# -- logs ------------------------------------------------------------------------------------------
def result_error(sub: Submission) -> str | None:
    """The last line of the traceback submitit pickled when the job's function raised, if any."""
    if not sub.folder:
        return None
    path = sub.paths().result_pickle
    if not path.exists():
        return None
    try:
        from submitit.core.utils import pickle_load

        outcome, payload = pickle_load(path)
    except Exception:  # noqa: BLE001 - a damaged pickle just gives no message
        return None
    if outcome != "error":
        return None
    lines = [ln.strip() for ln in str(payload).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "the job raised an exception"


def _log_lines(sub: Submission) -> list[str]:
    if not sub.folder:
        return []
    try:
        return sub.paths().stderr.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return []


def task_death(sub: Submission) -> str | None:
    """In a job of several tasks (a data-parallel run): srun's line naming the first task that died, if any."""
    return next((" ".join(line.split()) for line in _log_lines(sub) if _TASK_DIED.search(line)), None)


def log_reason(sub: Submission) -> str | None:
    """A line of the job's stderr that says why it ended (Slurm's CANCELLED/TIME LIMIT/OOM notes; in a job of
    several tasks, srun's line naming the task that died first)."""
    lines = _log_lines(sub)
    # Slurm's own notice for the job ("*** JOB 12 ON node CANCELLED AT ... ***"), then the first task srun saw
    # die ("srun: error: node: task 1: Killed": the other tasks were killed after it), then the step's notice,
    # then the kernel's and srun's
    for line in reversed(lines):
        if "*** JOB" in line:
            return " ".join(line.split())
    for line in lines:
        if _TASK_DIED.search(line):
            return " ".join(line.split())
    for keys in (("*** STEP",), ("oom", "Out Of Memory", "out-of-memory"), ("Killed",)):
        for line in reversed(lines):
            if any(k in line for k in keys):
                return " ".join(line.split())
    return None


_TASK_DIED = re.compile(r"srun: error: \S+: tasks? [0-9,\-]+: (Killed|Exited with exit code|Terminated|Segmentation)")
