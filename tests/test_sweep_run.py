"""Running sweeps without Slurm: the debug executor (in-process) and the local executor, status, collect, the
sweep commands, and what a first-time cluster user sees. See test_slurm_cluster.py for a real Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from sweep_helpers import PLUGIN, base_yaml, registered_toys, write

from vqbench.errors import UserError
from vqbench.registry import METHODS
from vqbench.slurm import jobs
from vqbench.slurm.collect import collect_sweep
from vqbench.slurm.config import ConfigError
from vqbench.slurm.launch import run_sweep, sweep_status
from vqbench.slurm.sweep import load_sweep
from vqbench.store import ResultStore


@pytest.fixture(scope="module", autouse=True)
def toy_methods():
    yield from registered_toys()


# -- running in-process (debug executor), status, collect ---------------------------------------------
def attempts_of(results: Path) -> dict[str, list[dict]]:
    return jobs.load_attempts(results)


def test_debug_executor_runs_in_process_and_rerun_skips(tmp_path):
    text = base_yaml(methods="\n  - name: swt-a\n    params: {beta: [0.1, 0.5]}", seeds="2")
    sweep = load_sweep(write(tmp_path, text))
    results = tmp_path / "results"
    lines: list[str] = []
    summary = run_sweep(sweep, results, executor="debug", wait=True, log=lines.append)
    assert (summary.submitted, summary.complete, summary.failed) == (4, 0, 0)
    assert len(lines) == 4 and all(": ok" in ln for ln in lines)
    runs = ResultStore(results).load_runs()
    assert sorted(runs["run_id"]) == sorted(sweep.run_ids())
    assert all(list(t) == ["suite:t"] for t in runs["tags"])
    assert summary.status is not None and summary.status.counts["done"] == 4
    starts = {rid: [a for a in ev if a["event"] == "start"] for rid, ev in attempts_of(results).items()}
    assert {rid: len(s) for rid, s in starts.items()} == {rid: 1 for rid in sweep.run_ids()}
    again = run_sweep(sweep, results, executor="debug", wait=True, log=lines.append)
    assert (again.submitted, again.complete) == (0, 4) and len(lines) == 4
    assert sum(len(v) for v in attempts_of(results).values()) == 8  # 4 x (start, end): nothing ran again
    membership = json.loads((results / "sweeps" / "t.json").read_text())
    assert membership["run_ids"] == sweep.run_ids()
    assert membership["run_tasks"] == {spec.run_id: spec.task for spec in sweep.specs()}


def test_membership_of_a_suite_run_in_parts_lists_every_part(tmp_path):
    """One file per part under the suite's name and version adds to its list; a new version starts afresh."""
    from vqbench.slurm.launch import write_membership

    results = tmp_path / "results"
    first = load_sweep(write(tmp_path, base_yaml(methods="[swt-a]", version="3"), "part1.yaml"))
    second = load_sweep(write(tmp_path, base_yaml(methods="[swt-a]", seeds="[1]", version="3"), "part2.yaml"))
    write_membership(first, results)
    path = write_membership(second, results)
    data = json.loads(path.read_text())
    assert data["run_ids"] == first.run_ids() + second.run_ids() and len(data["run_ids"]) == 2
    assert set(data["run_tasks"]) == set(data["run_ids"])
    assert ResultStore(results).sweep_members() == {r: {"t"} for r in data["run_ids"]}
    bumped = load_sweep(write(tmp_path, base_yaml(methods="[swt-a]", version="4"), "part3.yaml"))
    assert json.loads(write_membership(bumped, results).read_text())["run_ids"] == bumped.run_ids()
    path.write_text("{damaged")
    with pytest.warns(UserWarning, match="rewriting damaged sweep membership file"):
        write_membership(first, results)
    assert json.loads(path.read_text())["run_ids"] == first.run_ids()


def test_status_counts_failed_and_diverged_with_errors(tmp_path, monkeypatch):
    text = base_yaml(methods="[swt-a, swt-fail, swt-diverge]")
    results = tmp_path / "results"
    sweep = load_sweep(write(tmp_path, text))
    summary = run_sweep(sweep, results, executor="debug", log=None)
    assert summary.failed == 1
    status = sweep_status(sweep, results)
    assert status.counts == {"done": 1, "running": 0, "pending": 0, "failed": 1, "diverged": 1}
    (failed,) = status.of("failed")
    assert failed.spec.method == "swt-fail" and "RuntimeError: toy failure" in failed.error
    (diverged,) = status.of("diverged")
    assert "loss became" in diverged.error
    # a run the runner cannot even build writes no row: the worker's report makes it failed. (The driver builds
    # every method before submitting and would refuse this one: here it is a failure only the job's machine sees.)
    broken = load_sweep(write(tmp_path, base_yaml(methods="[swt-nobuild]"), "broken.yaml"))
    with pytest.raises(ConfigError, match="toy refuses to build"):
        run_sweep(broken, results, executor="debug", log=None)
    import vqbench.slurm.launch

    monkeypatch.setattr(vqbench.slurm.launch, "check_buildable", lambda sweep: None)
    outcome = run_sweep(broken, results, executor="debug", log=None)
    assert outcome.failed == 1 and "toy refuses to build" in outcome.results[0]["error"]
    (failed,) = sweep_status(broken, results).of("failed")
    assert "UserError: cannot build" in failed.error and "toy refuses to build" in failed.error
    assert failed.job_id == f"debug-{os.getpid()}"
    assert run_sweep(broken, results, executor="debug", log=None).submitted == 1  # a rerun tries again
    bigger = load_sweep(write(tmp_path, text.replace("seeds: 1", "seeds: 2"), "bigger.yaml"))
    counts = sweep_status(bigger, results).counts
    assert counts["unsubmitted"] == 3 and counts["done"] == 1
    formatted = status.format()
    assert "failed 1" in formatted and "toy failure" in formatted


def test_collect_writes_the_sweeps_table_idempotently(tmp_path):
    text = base_yaml(methods="[swt-a, swt-b]")
    sweep = load_sweep(write(tmp_path, text))
    results = tmp_path / "results"
    run_sweep(sweep, results, executor="debug", log=None)
    first = collect_sweep(sweep, results)
    table = pd.read_parquet(first.table)
    assert list(table["run_id"]) == sweep.run_ids()
    assert set(table["suite"]) == {"t"} and "metric.mse" in table.columns and table["metric.mse"].notna().all()
    second = collect_sweep(sweep, results)
    pd.testing.assert_frame_equal(table, pd.read_parquet(second.table))
    assert first.rows == 2 and "2 of 2 runs have rows" in first.format()


def _dead_pid() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return str(proc.pid)


def test_job_gone_without_result_is_failed_and_rerun_resubmits(tmp_path):
    sweep = load_sweep(write(tmp_path, base_yaml(methods="[swt-a, swt-b]")))
    results = tmp_path / "results"
    a, b = sweep.specs()
    folder = jobs.jobs_dir(results, "t") / "logs" / "%j"
    dead = _dead_pid()
    jobs.record_submissions(results, "t", [jobs.Submission(a.run_id, dead, "local", str(folder), "t", time.time())])
    status = sweep_status(sweep, results)
    (failed,) = status.of("failed")
    assert failed.spec.run_id == a.run_id and failed.job_id == dead
    assert "ended without writing a result" in failed.error
    assert status.counts["unsubmitted"] == 1
    # Slurm's notice in the job's stderr says why (the last "Killed" line says less)
    log = jobs.latest_submissions(results)[a.run_id].paths().stderr
    log.parent.mkdir(parents=True)
    log.write_text("srun: got SIGCONT\nslurmstepd-vm: error: *** JOB 7 ON vm CANCELLED AT 2026-11-27T00:59:51 ***\n"
                   "srun: error: vm: task 0: Killed\n")
    assert sweep_status(sweep, results).of("failed")[0].error.endswith("log: slurmstepd-vm: error: *** JOB 7 ON vm "
                                                                      "CANCELLED AT 2026-11-27T00:59:51 ***")
    # an error the worker reported wins over the generic message
    jobs.record_attempt(results, "t", a.run_id, dead, "start")
    jobs.record_attempt(results, "t", a.run_id, dead, "error", error="UserError: no data here")
    assert sweep_status(sweep, results).of("failed")[0].error == "UserError: no data here"
    # rerunning submits the failed run and the unsubmitted one
    summary = run_sweep(sweep, results, executor="debug", log=None)
    assert summary.submitted == 2 and sweep_status(sweep, results).counts["done"] == 2


def test_in_flight_runs_are_not_submitted_twice(tmp_path):
    sweep = load_sweep(write(tmp_path, base_yaml(methods="[swt-a, swt-b]")))
    results = tmp_path / "results"
    a, b = sweep.specs()
    # a live process whose command line names submitit stands for a local job still running
    proc = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(60)", "submitit"])
    try:
        folder = jobs.jobs_dir(results, "t") / "logs" / "%j"
        jobs.record_submissions(results, "t", [jobs.Submission(a.run_id, str(proc.pid), "local", str(folder), "t",
                                                               time.time())])
        assert [r.state for r in sweep_status(sweep, results).runs] == ["pending", "unsubmitted"]
        jobs.record_attempt(results, "t", a.run_id, str(proc.pid), "start")
        assert [r.state for r in sweep_status(sweep, results).runs] == ["running", "unsubmitted"]
        summary = run_sweep(sweep, results, executor="debug", log=None)
        assert (summary.in_flight, summary.submitted) == (1, 1)
        assert ResultStore(results).run_status(a.run_id) is None  # not run here
    finally:
        proc.kill()
        proc.wait()
    assert sweep_status(sweep, results).of("failed")[0].spec.run_id == a.run_id


def test_one_driver_at_a_time_submits_a_sweep(tmp_path):
    import fcntl

    sweep = load_sweep(write(tmp_path, base_yaml()))
    results = tmp_path / "results"
    lock = jobs.jobs_dir(results, "t") / ".submit.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another driver deciding what to submit
        with pytest.raises(UserError, match="another `vqbench sweep run` is submitting sweep t"):
            run_sweep(sweep, results, executor="debug", log=None)
        assert run_sweep(sweep, results, executor="debug", dry_run=True, log=None).submitted == 1
    assert run_sweep(sweep, results, executor="debug", log=None).submitted == 1


def test_squeue_and_sacct_parsing():
    assert jobs.parse_squeue("12_3|RUNNING\n12_4|PENDING\n13|REQUEUED\n\n") == {
        "12_3": "RUNNING", "12_4": "PENDING", "13": "REQUEUED"}
    acct = jobs.parse_sacct("12_3|CANCELLED by 0|0:15\n12_[4-6%2]|PENDING|0:0\n14|OUT_OF_MEMORY|0:125\n")
    assert acct["12_3"] == ("CANCELLED", "0:15") and acct["14"] == ("OUT_OF_MEMORY", "0:125")
    assert [acct[f"12_{k}"][0] for k in (4, 5, 6)] == ["PENDING"] * 3


def test_sweep_cli_run_status_collect(tmp_path, capsys):
    from vqbench.commands.cli import main

    path = write(tmp_path, base_yaml(methods="[swt-a]"))
    results = str(tmp_path / "results")
    assert main(["sweep", "run", str(path), "--results", results, "--dry-run"]) == 0
    assert "would submit 1 (debug)" in capsys.readouterr().out
    assert not Path(results).exists()
    assert main(["sweep", "run", str(path), "--results", results]) == 0
    out = capsys.readouterr().out
    assert "submitted 1 (debug)" in out and "done 1" in out
    assert main(["sweep", "status", str(path), "--results", results]) == 0
    assert "done 1  running 0  pending 0  failed 0  diverged 0" in capsys.readouterr().out
    assert main(["sweep", "collect", str(path), "--results", results]) == 0
    assert (Path(results) / "sweeps" / "t.parquet").exists()
    assert main(["sweep", "run", str(tmp_path / "nope.yaml")]) == 2
    assert "error: no sweep file" in capsys.readouterr().err


def test_local_executor_caps_processes_runs_snapshot_and_shipped_plugin(tmp_path):
    """Three runs through the local executor with array_parallelism 1: one background process running
    them in turn, importing the code snapshot and the shipped copy of a file plugin that was edited after
    submission. (The real-Slurm tests run arrays of several jobs at once.)"""
    plugin = tmp_path / "myplug.py"
    name = f"plug-{os.getpid()}-{tmp_path.name[-6:]}".replace("_", "-")
    plugin.write_text(PLUGIN.format(name=name))
    text = base_yaml(methods=f"\n  - name: {name}\n    params: {{beta: [0.1, 0.2, 0.3]}}",
                     executor="{cluster: local, array_parallelism: 1, time: 10}", plugins="[myplug.py]")
    sweep = load_sweep(write(tmp_path, text))
    results = tmp_path / "results"
    summary = run_sweep(sweep, results, log=None)
    assert summary.executor == "local" and summary.submitted == 3 and len(summary.jobs) == 1
    plugin.write_text(PLUGIN.format(name=name) + "\n# edited after submission\n")
    try:
        status = _wait_until(lambda: sweep_status(sweep, results), lambda s: not s.of("running", "pending"), 240)
    finally:
        METHODS.remove(name)
    assert status.counts["done"] == 3, status.format()
    subs = jobs.latest_submissions(results)
    assert len({s.job_id for s in subs.values()}) == 1 and {s.executor for s in subs.values()} == {"local"}
    runs = ResultStore(results).load_runs().sort_values("started_at")
    # one process: each run starts after the previous one finished
    started, finished = list(runs["started_at"]), list(runs["finished_at"])
    assert all(s >= f for s, f in zip(started[1:], finished[:-1]))
    code_dir = jobs.jobs_dir(results, "t") / "code"
    starts = [a for ev in jobs.load_attempts(results).values() for a in ev if a["event"] == "start"]
    assert len(starts) == 3 and all(Path(a["code"]).parent == code_dir for a in starts)
    # the original changed after submission: the job loaded the shipped copy
    assert all("/plugins/" in src and src.startswith("file:") for src in runs["method_source"])


def test_file_plugin_from_a_sweep_on_the_debug_executor(tmp_path):
    (tmp_path / "plugins").mkdir()
    plugin = tmp_path / "plugins" / "mine.py"
    name = f"dbgplug-{os.getpid()}-{tmp_path.name[-6:]}".replace("_", "-")
    plugin.write_text(PLUGIN.format(name=name))
    text = base_yaml(methods=f"[{name}]", plugins="[plugins/mine.py]")  # relative to the sweep file
    try:
        sweep = load_sweep(write(tmp_path, text))
        assert sweep.plugins == (str(plugin.resolve()),)
        summary = run_sweep(sweep, tmp_path / "results", executor="debug", log=None)
    finally:
        METHODS.remove(name)
    assert summary.status is not None and summary.status.counts["done"] == 1
    (source,) = ResultStore(tmp_path / "results").load_runs()["method_source"]
    assert source.startswith(f"file:{plugin.resolve()}#sha256=")


def test_debug_executor_worker_processes_load_plugins_and_match_in_process(tmp_path):
    plugin = tmp_path / "mine2.py"
    name = f"poolplug-{os.getpid()}-{tmp_path.name[-6:]}".replace("_", "-")
    plugin.write_text(PLUGIN.format(name=name))
    text = base_yaml(methods=f"[{name}]", plugins="[mine2.py]", seeds="2")
    try:
        sweep = load_sweep(write(tmp_path, text))
        pooled = run_sweep(sweep, tmp_path / "pooled", executor="debug", log=None, workers=2)
        inline = run_sweep(sweep, tmp_path / "inline", executor="debug", log=None, workers=1)
    finally:
        METHODS.remove(name)
    assert pooled.status.counts["done"] == 2 and inline.status.counts["done"] == 2
    a = ResultStore(tmp_path / "pooled").load_metrics().sort_values(["run_id", "split", "step", "metric"])
    b = ResultStore(tmp_path / "inline").load_metrics().sort_values(["run_id", "split", "step", "metric"])
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))  # tests run one thread
    runs = ResultStore(tmp_path / "pooled").load_runs()
    assert set(runs["device"]) == {"cpu (1 threads)"}  # each worker runs one torch thread
    assert all(src.startswith("file:") for src in runs["method_source"])


def _wait_until(get, done, timeout: float):
    end = time.time() + timeout
    while True:
        value = get()
        if done(value) or time.time() > end:
            return value
        time.sleep(1)


def test_worker_rendezvous_port_is_per_job_and_run():
    from vqbench.slurm.worker import run_port

    assert run_port("12_3", "abc") == run_port("12_3", "abc")
    assert len({run_port("12_3", r) for r in ("a", "b", "c", "d")}) == 4
    assert all(20000 <= run_port(str(j), "x") < 60000 for j in range(50))


def test_a_rank_that_died_is_named_in_the_failure_reason(tmp_path):
    sweep = load_sweep(write(tmp_path, base_yaml(methods="[swt-a]")))
    results = tmp_path / "results"
    (spec,) = sweep.specs()
    folder = jobs.jobs_dir(results, "t") / "logs" / "%j"
    jobs.record_submissions(results, "t", [jobs.Submission(spec.run_id, _dead_pid(), "local", str(folder), "t",
                                                           time.time())])
    log = jobs.latest_submissions(results)[spec.run_id].paths().stderr
    log.parent.mkdir(parents=True)
    log.write_text("srun: error: vm: task 1: Killed\nsrun: Terminating StepId=12.0\n"
                   "slurmstepd: error: *** STEP 12.0 ON vm CANCELLED AT 2026-01-01T00:00:00 ***\n"
                   "srun: error: vm: task 0: Exited with exit code 1\n")
    (failed,) = sweep_status(sweep, results).of("failed")
    assert failed.error.endswith("log: srun: error: vm: task 1: Killed"), failed.error


# -- first-time cluster users --------------------------------------------------------------------------------
def _fake_slurm(tmp_path: Path, monkeypatch, scontrol: str, sbatch: str) -> None:
    """scontrol / sbatch / srun / squeue on PATH that print what a misconfigured machine prints."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, body in (("scontrol", scontrol), ("sbatch", sbatch), ("srun", "exit 1"), ("squeue", "exit 0")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    test_dir = tmp_path / "testcluster"
    (test_dir / "etc").mkdir(parents=True)
    (test_dir / "etc" / "slurm.conf").write_text("ClusterName=x\n")
    monkeypatch.setenv("VQBENCH_SLURM_DIR", str(test_dir))


NO_CONFIG = ("echo 'x: error: _establish_config_source: failed to fetch config' >&2; "
             "echo 'x: fatal: Could not establish a configuration source' >&2; exit 1")


def test_missing_slurm_conf_is_named_in_the_dry_run_and_before_submitting(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch, NO_CONFIG, NO_CONFIG)
    conf = tmp_path / "testcluster" / "etc" / "slurm.conf"
    sweep = load_sweep(write(tmp_path, base_yaml(methods="[swt-a, swt-b]", executor="{cluster: slurm}")))
    results = tmp_path / "results"
    plan = "\n".join(run_sweep(sweep, results, dry_run=True, log=None).plan)
    assert "warning: Slurm cannot find its configuration (SLURM_CONF is not set" in plan
    assert f"export SLURM_CONF={conf}" in plan and "MaxArraySize unknown until Slurm can be asked" in plan
    with pytest.raises(UserError) as err:
        run_sweep(sweep, results, log=None)
    message = str(err.value)
    assert f"export SLURM_CONF={conf}" in message and "fix the profile" not in message and "\n" not in message
    assert message.endswith("nothing was submitted") and not jobs.latest_submissions(results)


def test_sbatch_without_configuration_says_what_to_set_and_leaves_no_pickles(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch, "echo MaxArraySize=1001", NO_CONFIG)
    conf = tmp_path / "testcluster" / "etc" / "slurm.conf"
    sweep = load_sweep(write(tmp_path, base_yaml(methods="[swt-a, swt-b]", executor="{cluster: slurm}")))
    results = tmp_path / "results"
    logs = jobs.jobs_dir(results, "t") / "logs"
    with pytest.raises(UserError) as err:
        run_sweep(sweep, results, log=None)
    message = str(err.value)
    assert message.startswith("sbatch refused the array for profile inline: Slurm cannot find its configuration")
    assert f"export SLURM_CONF={conf}" in message and "fix the profile" not in message
    assert logs.is_dir() and not list(logs.glob("*.pkl")) and not list(logs.glob(".submission_file_*"))
    # what a driver killed mid-submission leaves is cleaned up by the next `sweep run`
    (logs / f"{'ab' * 16}.pkl").write_bytes(b"x")
    (logs / f".submission_file_{'cd' * 16}.sh").write_text("#!/bin/bash\n")
    (logs / "123").mkdir()
    (logs / "123" / "123_submitted.pkl").write_bytes(b"kept: a real job's")
    run_sweep(sweep, results, executor="debug", log=None)
    assert sorted(p.name for p in logs.rglob("*") if p.is_file()) == ["123_submitted.pkl"]


def test_collect_prints_the_seed_table_and_results_filters_by_sweep(tmp_path, capsys):
    from vqbench.commands.cli import main
    from vqbench.slurm.collect import t975

    path = write(tmp_path, base_yaml(methods="\n  - name: swt-a\n    params: {beta: [0.1, 0.5]}", seeds="2"))
    results = tmp_path / "results"
    assert main(["sweep", "run", str(path), "--results", str(results)]) == 0
    other = write(tmp_path, base_yaml(name="other", methods="[swt-c]"), "other.yaml")
    assert main(["sweep", "run", str(other), "--results", str(results)]) == 0
    capsys.readouterr()
    assert main(["sweep", "collect", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "main (mean +- 95% CI)" in out and "utilization (mean +- 95% CI)" in out and "mse (lower better)" in out
    table = pd.read_parquet(results / "sweeps" / "t.parquet")
    for beta in (0.1, 0.5):
        values = [v for v, p in zip(table["metric.mse"], table["method_params"]) if json.loads(p)["beta"] == beta]
        assert len(values) == 2
        mean, sd = sum(values) / 2, float(pd.Series(values).std(ddof=1))
        row = next(ln for ln in out.splitlines() if f"swt-a beta={beta}" in ln)
        assert f"{mean:.4g} +- {t975(1) * sd / 2 ** 0.5:.2g}" in row and " 2/2 " in row, row
    assert "swt-c" not in out
    assert main(["results", "--results", str(results), "--sweep", "other"]) == 0
    out = capsys.readouterr().out
    assert "swt-c" in out and "swt-a" not in out and "sweep other: 1 of its 1 runs" in out
    assert main(["results", "--results", str(results), "--sweep", "nope"]) == 2
    assert "no sweep 'nope' in" in capsys.readouterr().err


def test_a_run_another_sweep_produced_is_named_when_skipped(tmp_path):
    results = tmp_path / "results"
    first = load_sweep(write(tmp_path, base_yaml(name="first", methods="[swt-a]"), "first.yaml"))
    run_sweep(first, results, executor="debug", log=None)
    second = load_sweep(write(tmp_path, base_yaml(name="second", methods="[swt-a, swt-b]"), "second.yaml"))
    summary = run_sweep(second, results, executor="debug", log=None)
    assert (summary.complete, summary.submitted) == (1, 1)
    assert "1 complete (skipped; produced 1 by sweep first)" in summary.format()
    status = sweep_status(second, results)
    assert "note: 1 finished run(s) were produced by sweep first (the same specs" in status.format()
    assert "produced" not in sweep_status(first, results).format()
    assert "produced" not in run_sweep(second, results, executor="debug", log=None).format().split(";")[0]


def test_debug_executor_runs_the_ranks_of_a_run_as_processes(tmp_path):
    text = base_yaml(methods="[vq]", executor="{cluster: debug}") + "ranks_per_run: 2\n"  # spawned: a built-in
    sweep = load_sweep(write(tmp_path, text))
    results = tmp_path / "results"
    summary = run_sweep(sweep, results, log=None)
    assert "each as 2 processes (ranks) on this machine" in summary.plan[0]
    assert summary.status is not None and summary.status.counts["done"] == 1, summary.format()
    (spec,) = sweep.specs()
    events = jobs.load_attempts(results)[spec.run_id]
    # rank 0 alone records the run's attempt, under the driver's job id
    assert [(e["event"], e["job_id"], e["ranks"]) for e in events if e["event"] == "start"] == [
        ("start", f"debug-{os.getpid()}", 2)]
    assert [e["event"] for e in events] == ["start", "end"]
    # the run of 2 processes at 16 rows each is the run of 1 process at 32 rows, within the runner's tolerance
    # (relative, with an absolute floor of 1: tests/test_distributed_runner.py)
    single = load_sweep(write(tmp_path, base_yaml(methods="[vq]", executor="{cluster: debug}"), "single.yaml"))
    assert single.run_ids() == sweep.run_ids()
    run_sweep(single, tmp_path / "single", log=None)
    two, one = (ResultStore(r).load_runs().iloc[0] for r in (results, tmp_path / "single"))
    assert (two["world_size"], one["world_size"]) == (2, 1)
    a, b = (collect_sweep(s, r).table for s, r in ((sweep, results), (single, tmp_path / "single")))
    a, b = pd.read_parquet(a).iloc[0], pd.read_parquet(b).iloc[0]
    metrics = [c for c in a.index if c.startswith("metric.")]
    assert metrics and all(abs(a[c] - b[c]) <= 1e-5 * max(1.0, abs(a[c]), abs(b[c])) for c in metrics), (a, b)
