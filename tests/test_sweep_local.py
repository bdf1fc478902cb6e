"""The local executor under interruption (slow: background processes that import torch).

- a run interrupted by the checkpoint signal (USR2, what Slurm sends before a time limit or on
  preemption) is requeued by submitit, resumes from its checkpoint and ends with exactly the metrics
  of an uninterrupted run;
- a driver killed mid-sweep loses nothing, and rerunning it submits nothing twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from sweep_helpers import final, run_in_one_process, starts, sweep_file, wait_for

from vqbench.slurm import jobs
from vqbench.slurm.launch import run_sweep, sweep_status
from vqbench.slurm.sweep import load_sweep
from vqbench.store import ResultStore

pytestmark = pytest.mark.slow


def test_local_checkpoint_signal_requeues_and_resumes_to_identical_metrics(tmp_path):
    path = sweep_file(tmp_path, "requeue", "[vq]", "{steps: 3000, batch_size: 64, eval_interval: 1000, "
                      "checkpoint_interval: 100}", "{cluster: local, array_parallelism: 1, time: 20}")
    sweep = load_sweep(path)
    (spec,) = sweep.specs()
    results = tmp_path / "results"
    summary = run_sweep(sweep, results, log=None)
    assert summary.submitted == 1
    ckpt = ResultStore(results).checkpoint_path(spec.run_id)
    first = wait_for(lambda: starts(results).get(spec.run_id), 180, "the run to start")[0]
    wait_for(ckpt.exists, 180, "a first checkpoint")
    os.kill(first["pid"], signal.SIGUSR2)  # what Slurm sends signal_delay_s before the time limit
    status = wait_for(lambda: (lambda s: s if s.counts["done"] == 1 else None)(sweep_status(sweep, results)),
                      300, "the requeued run to finish")
    attempts = starts(results)[spec.run_id]
    assert len(attempts) == 2 and attempts[1]["resumed"] is True and attempts[0]["pid"] != attempts[1]["pid"]
    assert status.runs[0].state == "done"
    # the same spec, never interrupted, in this process with the job's thread count
    run_in_one_process(spec, tmp_path / "reference")
    assert final(results) == final(tmp_path / "reference")


def test_local_driver_killed_mid_sweep_then_rerun_does_nothing_twice(tmp_path):
    path = sweep_file(tmp_path, "killed", "[{name: vq, params: {beta: [0.1, 0.2, 0.3, 0.4]}}]",
                      "{steps: 1500, batch_size: 64, eval_interval: 500}",
                      "{cluster: local, array_parallelism: 1, time: 20}")
    results = tmp_path / "results"
    driver = subprocess.Popen([sys.executable, "-m", "vqbench.commands.cli", "sweep", "run", str(path), "--results",
                               str(results), "--wait", "--poll", "0.5"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        sweep = load_sweep(path)
        wait_for(lambda: sweep_status(sweep, results).counts["done"] >= 1, 300, "a first finished run")
    finally:
        driver.kill()
        driver.wait()
    status = sweep_status(sweep, results)
    assert status.counts["done"] < 4, "the runs finished before the driver was killed: make them longer"
    summary = run_sweep(sweep, results, wait=True, poll_s=0.5, log=None)
    assert summary.submitted == 0 and summary.complete + summary.in_flight == 4
    assert summary.status is not None and summary.status.counts["done"] == 4
    assert {rid: len(s) for rid, s in starts(results).items()} == {rid: 1 for rid in sweep.run_ids()}
    assert len(jobs.latest_submissions(results)) == 4
    again = run_sweep(sweep, results, log=None)
    assert (again.submitted, again.complete) == (0, 4)


def test_local_executor_runs_the_ranks_of_a_run_as_tasks_and_matches_one_process(tmp_path):
    """ranks_per_run: 2 on the local executor: one local job of two tasks (gloo), rank 0 records and writes;
    the metrics are those of the same run in one process, within the runner's tolerance."""
    budget = "{steps: 40, batch_size: 64, eval_interval: 20}"
    path = sweep_file(tmp_path, "ranks", "[vq]", budget, "{cluster: local, array_parallelism: 1, time: 10}",
                      extra="ranks_per_run: 2\n")
    sweep = load_sweep(path)
    (spec,) = sweep.specs()
    results = tmp_path / "results"
    summary = run_sweep(sweep, results, log=None)
    assert "1 local job(s) of 2 processes (ranks) each" in summary.plan[0]
    status = wait_for(lambda: (lambda s: s if not s.of("running", "pending") else None)(sweep_status(sweep, results)),
                      240, "the 2-rank run to finish", show=lambda: sweep_status(sweep, results).format())
    assert status.counts["done"] == 1, status.format()
    assert [a["ranks"] for a in starts(results)[spec.run_id]] == [2]  # rank 0 alone records
    assert ResultStore(results).load_runs().iloc[0]["world_size"] == 2
    run_in_one_process(spec, tmp_path / "reference")
    two, one = final(results), final(tmp_path / "reference")
    assert two.keys() == one.keys()
    assert all(abs(two[k] - one[k]) <= 1e-5 * max(1.0, abs(two[k]), abs(one[k])) for k in two), (two, one)
