"""Sweeps against a real single-node Slurm (slurm-wlm + munge, and slurmdbd + MariaDB for accounting).

Needs root and the packages: ``bash slurm/testcluster.sh install``. The tests start the cluster
themselves through ``slurm/testcluster.sh`` (first without accounting, then with it) and stop every
daemon at the end. Run them with ``pytest -m slow tests/test_slurm_cluster.py``.

Covered: a job array split below MaxArraySize (the test cluster's is 5) with a file plugin shipped to
the jobs; a job cancelled with scancel shows as failed (from the job log without accounting, from sacct
with it) and a rerun resumes it from its checkpoint; a job interrupted by the checkpoint signal is
requeued and ends with exactly the metrics of an uninterrupted run; a driver killed mid-sweep, then
rerun, submits nothing twice; a data-parallel run of 2 tasks (gloo) through `vqbench sweep run` matches the
run in one process within the runner's tolerance, and one of its ranks killed mid-run fails the job with
the dead task named in `vqbench sweep status`, and `sweep run` again resumes it from its checkpoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep_helpers import PLUGIN, final, run_in_one_process, starts, wait_for
from sweep_helpers import sweep_file as _sweep_file

from vqbench.registry import METHODS
from vqbench.slurm import jobs
from vqbench.slurm.launch import run_sweep, sweep_status
from vqbench.slurm.sweep import load_sweep
from vqbench.store import ResultStore

pytestmark = pytest.mark.slurm

SCRIPT = Path(__file__).resolve().parent.parent / "slurm" / "testcluster.sh"
STATE_DIR = os.environ.get("VQBENCH_SLURM_DIR", "/tmp/vqbench-slurm")
LONG = "{steps: 3000, batch_size: 64, eval_interval: 1000, checkpoint_interval: 50}"
# submitit ignores SIGTERM: a cancelled job runs on for KillWait (5 s) before SIGKILL, so a run to cancel
# must be long enough not to finish in that grace
CANCEL = "{steps: 12000, batch_size: 64, eval_interval: 4000, checkpoint_interval: 100}"
SHORT = "{steps: 60, batch_size: 64, eval_interval: 30}"
EXECUTOR = "{cluster: slurm, cpus: 1, mem: 1G, time: 10, signal_delay_s: 30, array_parallelism: 2}"


class Cluster:
    """The test cluster, (re)started in the mode a test asks for."""

    def __init__(self) -> None:
        self.accounting: bool | None = None
        self.timings: dict[str, float] = {}

    def use(self, accounting: bool) -> None:
        if self.accounting == accounting:
            return
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", str(SCRIPT), "start", "--accounting" if accounting else "--no-accounting"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.fail(f"starting the test cluster failed:\n{proc.stdout}\n{proc.stderr}")
        self.timings[f"start ({'with' if accounting else 'without'} accounting)"] = time.perf_counter() - t0
        self.accounting = accounting


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 or shutil.which("slurmctld") is None or shutil.which("mariadbd") is None:
        pytest.fail("these tests need root and Slurm: run `bash slurm/testcluster.sh install` first")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = f"{STATE_DIR}/etc/slurm.conf"
    c = Cluster()
    try:
        yield c
    finally:
        t0 = time.perf_counter()
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=300)
        c.timings["stop"] = time.perf_counter() - t0
        print("\ntest cluster timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in c.timings.items()))
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        leftover = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True).stdout
        assert "running" not in leftover, leftover


def sweep_file(tmp_path: Path, name: str, methods: str, budget: str, executor: str = EXECUTOR,
               extra: str = "") -> Path:
    return _sweep_file(tmp_path, name, methods, budget, executor, extra)


def squeue() -> dict[str, str]:
    return jobs.squeue_states()


def finish(sweep, results: Path, timeout: float = 400):
    return wait_for(lambda: (lambda s: s if not s.of("running", "pending", "unknown") else None)(
        sweep_status(sweep, results)), timeout, f"sweep {sweep.name} to finish", poll=1,
        show=lambda: sweep_status(sweep, results).format())


# -- without accounting -----------------------------------------------------------------------------
def test_job_array_split_below_max_array_size_with_a_file_plugin(cluster, tmp_path):
    cluster.use(accounting=False)
    assert jobs.max_array_size() == 5
    name = f"slurm-plug-{os.getpid()}"
    (tmp_path / "plug.py").write_text(PLUGIN.format(name=name))
    path = sweep_file(tmp_path, "array", f"[{{name: {name}, params: {{beta: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}}}}]",
                      SHORT, extra="plugins: [plug.py]\n")
    results = tmp_path / "results"
    try:
        sweep = load_sweep(path)
        t0 = time.perf_counter()
        summary = run_sweep(sweep, results, log=None)
        assert summary.submitted == 6 and len(summary.jobs) == 2  # 5 + 1: arrays stay below MaxArraySize
        status = finish(sweep, results)
        cluster.timings["array of 6 runs (%2)"] = time.perf_counter() - t0
        again = run_sweep(sweep, results, log=None)  # (the driver builds the plugin's method before submitting)
    finally:
        METHODS.remove(name)
    assert status.counts["done"] == 6, status.format()
    runs = ResultStore(results).load_runs()
    first, second = summary.jobs
    assert sorted(runs["slurm_job_id"]) == sorted([f"{first}_{k}" for k in range(5)] + [second])
    assert all(src.startswith("file:") for src in runs["method_source"])
    logs = jobs.jobs_dir(results, "array") / "logs"
    script = (logs / first / f"{first}_submission.sh").read_text()
    assert "#SBATCH --array=0-4%2" in script and "#SBATCH --mem=1G" in script
    assert "_launch/vqbench_submit.py" in script
    assert all(Path(a[0]["code"]).parent == jobs.jobs_dir(results, "array") / "code"
               for a in starts(results).values())
    assert (again.submitted, again.complete) == (0, 6)


def _start_long(cluster, tmp_path: Path, name: str, budget: str = LONG) -> tuple:
    path = sweep_file(tmp_path, name, "[vq]", budget)
    sweep = load_sweep(path)
    (spec,) = sweep.specs()
    results = tmp_path / "results"
    summary = run_sweep(sweep, results, log=None)
    (job_id,) = summary.jobs
    ckpt = ResultStore(results).checkpoint_path(spec.run_id)
    wait_for(ckpt.exists, 240, "a first checkpoint")
    return sweep, spec, results, job_id


def _cancel_and_check(cluster, tmp_path: Path, name: str, expect: tuple[str, ...]) -> None:
    sweep, spec, results, job_id = _start_long(cluster, tmp_path, name, CANCEL)
    subprocess.run(["scancel", job_id], check=True)
    t0 = time.perf_counter()
    status = wait_for(lambda: (lambda s: s if s.of("failed") else None)(sweep_status(sweep, results)), 60,
                      "the cancelled job to show as failed", poll=0.2,
                      show=lambda: sweep_status(sweep, results).format())
    cluster.timings[f"cancelled job seen as failed ({name})"] = time.perf_counter() - t0
    assert status.of("failed")[0].job_id == job_id
    # the reason: the job log's "CANCELLED" line, or sacct's state once accounting has the record
    status = wait_for(lambda: (lambda s: s if all(e in s.of("failed")[0].error for e in expect) else None)(
        sweep_status(sweep, results)), 30, f"the failure reason to say {expect}", poll=0.2,
        show=lambda: sweep_status(sweep, results).format())
    cluster.timings[f"cancelled job's reason complete ({name})"] = time.perf_counter() - t0
    assert ResultStore(results).run_status(spec.run_id) is None
    # rerunning submits it again and it resumes from its checkpoint
    again = run_sweep(sweep, results, log=None)
    assert again.submitted == 1
    assert finish(sweep, results).counts["done"] == 1
    attempts = starts(results)[spec.run_id]
    assert len(attempts) == 2 and attempts[1]["resumed"] is True


def test_cancelled_job_is_failed_without_accounting_and_rerun_resumes(cluster, tmp_path):
    cluster.use(accounting=False)
    assert jobs.sacct_states(["1"]) is None  # sacct exits 1: accounting storage is disabled
    _cancel_and_check(cluster, tmp_path, "cancel-noacct", ("ended without writing a result", "CANCELLED AT"))


def test_checkpoint_signal_requeues_and_resumes_to_identical_metrics(cluster, tmp_path):
    cluster.use(accounting=False)
    # the same run twice, in two results folders: one left alone, one interrupted by the checkpoint signal
    reference = load_sweep(sweep_file(tmp_path, "reference", "[vq]", LONG))
    ref_results = tmp_path / "reference-results"
    run_sweep(reference, ref_results, log=None)
    sweep, spec, results, job_id = _start_long(cluster, tmp_path, "requeue")
    assert reference.specs()[0].run_id == spec.run_id
    t0 = time.perf_counter()
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # Slurm's timeout/preemption notice
    status = finish(sweep, results)
    cluster.timings["requeued run: signal to done"] = time.perf_counter() - t0
    assert status.counts["done"] == 1
    finish(reference, ref_results)
    attempts = starts(results)[spec.run_id]
    assert len(attempts) == 2 and attempts[1]["resumed"] is True
    assert {a["job_id"] for a in attempts} == {job_id}  # requeued: the same job id
    log = (jobs.jobs_dir(results, "requeue") / "logs" / job_id / f"{job_id}_0_log.out").read_text()
    assert "Requeued job" in log and f"resuming run {spec.run_id}" in log

    assert final(results) == final(ref_results) and final(results)
    row = ResultStore(results).load_runs().iloc[0]
    assert row["slurm_job_id"] == job_id and row["status"] == "ok"


def test_driver_killed_mid_sweep_then_rerun_submits_nothing_twice(cluster, tmp_path):
    cluster.use(accounting=False)
    path = sweep_file(tmp_path, "killed", "[{name: vq, params: {beta: [0.1, 0.2, 0.3, 0.4]}}]",
                      "{steps: 400, batch_size: 64, eval_interval: 200}",
                      executor=EXECUTOR.replace("array_parallelism: 2", "array_parallelism: 1"))
    results = tmp_path / "results"
    sweep = load_sweep(path)
    driver = subprocess.Popen([sys.executable, "-m", "vqbench.commands.cli", "sweep", "run", str(path), "--results",
                               str(results), "--executor", "slurm", "--wait", "--poll", "0.5"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sweep_status(sweep, results).counts["done"] >= 1, 300, "a first finished run", poll=1)
    finally:
        driver.kill()
        driver.wait()
    before = sweep_status(sweep, results)
    assert before.counts["done"] < 4 and before.counts["pending"] + before.counts["running"] >= 1
    summary = run_sweep(sweep, results, log=None)
    assert summary.submitted == 0 and summary.complete + summary.in_flight == 4
    assert finish(sweep, results).counts["done"] == 4
    assert {rid: len(s) for rid, s in starts(results).items()} == {rid: 1 for rid in sweep.run_ids()}
    assert len(jobs.latest_submissions(results)) == 4
    assert run_sweep(sweep, results, log=None).submitted == 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vqbench.commands.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_two_task_run_through_sweep_run_matches_one_process(cluster, tmp_path):
    cluster.use(accounting=False)
    path = sweep_file(tmp_path, "ranks", "[vq]", "{steps: 120, batch_size: 64, eval_interval: 60}",
                      extra="ranks_per_run: 2\n")
    results = tmp_path / "results"
    t0 = time.perf_counter()
    proc = _cli("sweep", "run", str(path), "--results", str(results), "--wait", "--poll", "1")
    cluster.timings["2-task run through sweep run"] = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 node(s) x 2 rank(s) of 1 cpu" in proc.stdout and "done 1" in proc.stdout, proc.stdout
    sweep = load_sweep(path)
    (spec,) = sweep.specs()
    (job_id,) = {a["job_id"] for a in starts(results)[spec.run_id]}  # rank 0 alone records its start
    script = (jobs.jobs_dir(results, "ranks") / "logs" / job_id / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --mem=2G" in script and "--kill-on-bad-exit=1" in script
    row = ResultStore(results).load_runs().iloc[0]
    assert (row["status"], row["world_size"], row["slurm_job_id"]) == ("ok", 2, job_id)
    # the same spec in one process (the jobs' one thread per rank), within the runner's stated tolerance
    run_in_one_process(spec, tmp_path / "reference")

    two, one = final(results), final(tmp_path / "reference")
    assert two and two.keys() == one.keys()
    assert all(abs(two[k] - one[k]) <= 1e-5 * max(1.0, abs(two[k]), abs(one[k])) for k in two), (two, one)


def _task_pid(job_id: str, task: int) -> int | None:
    """The pid of task ``task`` of job ``job_id`` (the Python process srun started), from /proc."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (proc / "environ").read_bytes().decode(errors="replace")
                       .split("\0") if "=" in item)
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_PROCID") == str(task) \
                and env.get("SLURM_STEP_ID") not in (None, "4294967294") and "vqbench_submit" in cmdline:
            return int(proc.name)
    return None


def test_a_killed_rank_fails_the_run_with_its_reason_and_a_rerun_resumes(cluster, tmp_path):
    cluster.use(accounting=False)
    path = sweep_file(tmp_path, "rankkill", "[vq]", LONG, extra="ranks_per_run: 2\n")
    sweep = load_sweep(path)
    (spec,) = sweep.specs()
    results = tmp_path / "results"
    (job_id,) = run_sweep(sweep, results, log=None).jobs
    wait_for(ResultStore(results).checkpoint_path(spec.run_id).exists, 240, "a first checkpoint")
    pid = wait_for(lambda: _task_pid(job_id, 1), 30, "rank 1's process")
    os.kill(pid, 9)
    t0 = time.perf_counter()
    wait_for(lambda: (lambda s: s if s.of("failed") else None)(sweep_status(sweep, results)), 90,
             "the job to show as failed", poll=0.5, show=lambda: sweep_status(sweep, results).format())
    status = wait_for(lambda: (lambda s: s if "task 1: Killed" in s.of("failed")[0].error else None)(
        sweep_status(sweep, results)), 30, "the reason to name the killed task", poll=0.5,
        show=lambda: sweep_status(sweep, results).format())
    cluster.timings["killed rank seen as failed"] = time.perf_counter() - t0
    assert status.of("failed")[0].job_id == job_id
    proc = _cli("sweep", "status", str(path), "--results", str(results))
    assert proc.returncode == 1 and "failed 1" in proc.stdout and "task 1: Killed" in proc.stdout, proc.stdout
    assert f"[job {job_id}]" in proc.stdout
    assert squeue().get(job_id) is None  # the whole job ended with its rank
    # `sweep run` again submits it, and it resumes from the checkpoint on both ranks
    again = run_sweep(sweep, results, log=None)
    assert again.submitted == 1
    assert finish(sweep, results).counts["done"] == 1, sweep_status(sweep, results).format()
    attempts = starts(results)[spec.run_id]
    assert [(a["resumed"], a["ranks"]) for a in attempts] == [(False, 2), (True, 2)]
    row = ResultStore(results).load_runs().iloc[0]
    assert (row["status"], row["world_size"]) == ("ok", 2)


# -- with accounting --------------------------------------------------------------------------------
def test_cancelled_job_is_failed_with_accounting_and_rerun_resumes(cluster, tmp_path):
    cluster.use(accounting=True)
    _cancel_and_check(cluster, tmp_path, "cancel-acct", ("ended CANCELLED (exit",))


def test_cancelled_array_with_accounting_pending_and_running_tasks(cluster, tmp_path):
    cluster.use(accounting=True)
    path = sweep_file(tmp_path, "cancel-array", "[{name: vq, params: {beta: [0.1, 0.2]}}]", CANCEL,
                      executor=EXECUTOR.replace("array_parallelism: 2", "array_parallelism: 1"))
    sweep = load_sweep(path)
    results = tmp_path / "results"
    summary = run_sweep(sweep, results, log=None)
    (array_id,) = summary.jobs
    wait_for(lambda: sweep_status(sweep, results).counts["running"] == 1, 240, "the first task to run")
    assert sweep_status(sweep, results).counts["pending"] == 1  # %1: the second waits
    subprocess.run(["scancel", array_id], check=True)
    t0 = time.perf_counter()
    status = wait_for(lambda: (lambda s: s if s.counts["failed"] == 2 else None)(sweep_status(sweep, results)),
                      60, "both tasks to show as failed", poll=0.5)
    cluster.timings["cancelled array seen as failed"] = time.perf_counter() - t0
    assert all(r.job_id.startswith(f"{array_id}_") for r in status.of("failed"))
    # accounting may take a moment to record a job (the first after slurmctld starts, especially)
    status = wait_for(lambda: (lambda s: s if all("ended CANCELLED" in r.error for r in s.of("failed")) else None)(
        sweep_status(sweep, results)), 30, "sacct's CANCELLED for both tasks", poll=0.5,
        show=lambda: sweep_status(sweep, results).format())
    cluster.timings["cancelled array's sacct states"] = time.perf_counter() - t0
    accounted = jobs.sacct_states([array_id])
    assert accounted is not None and {accounted[r.job_id][0] for r in status.of("failed")} == {"CANCELLED"}
    assert run_sweep(sweep, results, log=None).submitted == 2  # both are submitted again
