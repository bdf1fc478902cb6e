"""Sweep files: loading, validation (one-line errors with lines), expansion, profiles, and the debug
executor (in-process), status and collect. No Slurm needed (see test_slurm_cluster.py for that)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqbench.errors import UserError
from vqbench.methods.base import nearest_code
from vqbench.quantizer import QuantizeOutput, Quantizer
from vqbench.registry import METHODS, TASKS
from vqbench.slurm import jobs
from vqbench.slurm.collect import collect_sweep
from vqbench.slurm.config import ConfigError
from vqbench.slurm.launch import run_sweep, sweep_status
from vqbench.slurm.profile import load_profile
from vqbench.slurm.sweep import SUITES_DIR, load_sweep, parse_sweep
from vqbench.spec import make_spec, task_budget
from vqbench.store import ResultStore

TINY_GMM = "{n_train: 256, n_eval: 128, hidden: 16, n_modes: 4, codebook_size: 16}"
TINY_BUDGET = "{steps: 20, batch_size: 32, eval_interval: 10}"


class ToyQuantizer(Quantizer):
    """Nearest code + straight-through; ``mode`` "fail" raises in training, "diverge" adds 1e12 to the loss,
    "nobuild" cannot be built (the runner raises before writing anything)."""

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, levels: tuple[int, ...] = (4, 4),
                 mode: str = "ok") -> None:
        super().__init__()
        if mode == "nobuild":
            raise ValueError("toy refuses to build")
        self.dim, self.codebook_size, self.beta, self.mode = dim, codebook_size, beta, mode
        self.levels = list(levels)
        self.embed = nn.Parameter(torch.randn(codebook_size, dim))

    def forward(self, z: torch.Tensor) -> QuantizeOutput:
        if self.mode == "fail" and self.training:
            raise RuntimeError("toy failure")
        idx = nearest_code(z.reshape(-1, self.dim), self.embed).reshape(z.shape[:-1])
        e = self.embed[idx]
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        if self.mode == "diverge":
            loss = loss + 1e12
        return QuantizeOutput(z + (e - z).detach(), idx, loss)

    def codebook(self) -> torch.Tensor:
        return self.embed.detach()

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embed[indices]


TOYS = {"swt-a": ("swt", {}), "swt-b": ("swt", {"beta": 0.5}), "swt-c": ("swt-other", {}),
        "swt-fail": ("swt-bad", {"mode": "fail"}), "swt-diverge": ("swt-bad", {"mode": "diverge"}),
        "swt-nobuild": ("swt-bad", {"mode": "nobuild"})}


@pytest.fixture(scope="module", autouse=True)
def toy_methods():
    for name, (family, defaults) in TOYS.items():
        METHODS.register(name, version=1, family=family, description="test toy", **defaults)(ToyQuantizer)
    yield
    for name in TOYS:
        METHODS.remove(name)


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def base_yaml(**overrides: str) -> str:
    parts = {
        "name": "t",
        "tasks": f"\n  - name: gmm\n    params: {TINY_GMM}",
        "methods": "[swt-a]",
        "seeds": "1",
        "budget": TINY_BUDGET,
        "executor": "{cluster: debug}",
    }
    parts.update(overrides)
    return "".join(f"{k}: {v}\n" for k, v in parts.items() if v is not None)


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the test YAML")


# -- expansion -------------------------------------------------------------------------------------
def test_grid_zip_fixed_and_seeds_expand_to_make_spec(tmp_path):
    text = base_yaml(
        tasks="\n  - name: gmm\n    params: {n_train: 256, n_eval: 128, hidden: 16, n_modes: 4, "
              "codebook_size: [8, 16]}",
        methods="\n  - name: swt-a\n    params: {beta: [0.1, 0.5]}\n    fixed: {levels: [8, 5]}"
                "\n    zip: [{mode: [ok, ok]}]",
        seeds="[3, 1]",
        tags="[ablation]")
    path = write(tmp_path, text)
    sweep = load_sweep(path)
    specs = sweep.specs()
    # 2 codebook sizes x 2 betas x 2 (zip) x 2 seeds, the zip's two points are equal -> deduplicated to 1
    expected = []
    for cb, beta, seed in itertools.product([8, 16], [0.1, 0.5], [3, 1]):
        expected.append(make_spec("gmm", "swt-a", {"n_train": 256, "n_eval": 128, "hidden": 16, "n_modes": 4,
                                                  "codebook_size": cb},
                                  {"beta": beta, "levels": [8, 5], "mode": "ok"}, seed=seed,
                                  budget={"steps": 20, "batch_size": 32, "eval_interval": 10}))
    assert [s.run_id for s in specs] == [s.run_id for s in expected]
    assert all(s.tags == ("suite:t", "ablation") for s in specs)
    assert all(s.method_params["levels"] == [8, 5] for s in specs)
    # deterministic: the same file gives the same ids in the same order
    assert load_sweep(path).run_ids() == sweep.run_ids()


def test_zip_advances_together_and_seed_count(tmp_path):
    text = base_yaml(methods="\n  - name: swt-a\n    zip: {beta: [0.1, 0.2, 0.3], levels: [[2], [3], [4]]}",
                     seeds="2")
    sweep = load_sweep(write(tmp_path, text))
    pairs = [(s.method_params["beta"], s.method_params["levels"], s.seed) for s in sweep.specs()]
    assert pairs == [(b, [lv], seed) for b, lv in [(0.1, 2), (0.2, 3), (0.3, 4)] for seed in (0, 1)]


def test_method_globs_where_and_exclude(tmp_path):
    text = base_yaml(methods="\n  - swt-*\n  - {name: 'swt-*', where: {family: swt}, exclude: [swt-b]}")
    sweep = load_sweep(write(tmp_path, text))
    methods = [s.method for s in sweep.specs()]
    assert methods == sorted(n for n in METHODS.list("swt-*"))  # the second item adds only duplicates
    text = base_yaml(methods="\n  - {name: '*', where: {family: [swt, swt-other]}, exclude: ['*-b']}")
    assert [s.method for s in load_sweep(write(tmp_path, text)).specs()] == ["swt-a", "swt-c"]


def test_budget_named_overrides_and_base(tmp_path):
    named = load_sweep(write(tmp_path, base_yaml(budget="quick"))).specs()[0]
    assert named.budget == task_budget("gmm", "quick")
    over = load_sweep(write(tmp_path, base_yaml(budget="{steps: 7, lr: 1e-3}"))).specs()[0]
    assert over.budget == task_budget("gmm", "quick").with_overrides(steps=7, lr=1e-3)
    base = load_sweep(write(tmp_path, base_yaml(budget="{base: paper, steps: 9}"))).specs()[0]
    assert base.budget == task_budget("gmm", "paper").with_overrides(steps=9)
    per_task = base_yaml(tasks=f"\n  - name: gmm\n    params: {TINY_GMM}\n    budget: paper")
    assert load_sweep(write(tmp_path, per_task)).specs()[0].budget == task_budget("gmm", "paper")


def test_parse_sweep_from_data_without_lines():
    sweep = parse_sweep({"name": "d", "tasks": ["gmm"], "methods": ["swt-a"], "seeds": [0, 1]})
    assert [s.seed for s in sweep.specs()] == [0, 1] and sweep.profile.cluster == "local"
    with pytest.raises(ConfigError, match=r"^<sweep>: methods\[0\]: unknown method 'swt-zz'"):
        parse_sweep({"name": "d", "tasks": ["gmm"], "methods": ["swt-zz"]})


def test_quick_suite_is_every_offline_task_with_quick_budget_x_every_method():
    sweep = load_sweep("quick")
    tasks = [e.name for e in TASKS.entries() if e.offline and "quick" in e.budgets]
    expected = [(t, m) for t in sorted(tasks) for m in METHODS.list()]
    assert [(s.task, s.method) for s in sweep.specs()] == expected
    assert {s.seed for s in sweep.specs()} == {0}
    assert all(s.budget == task_budget(s.task, "quick") for s in sweep.specs())
    assert all(s.tags == ("suite:quick",) for s in sweep.specs())
    assert sweep.version >= 1 and sweep.profile.cluster == "local"


def test_paper_suite_names_missing_tasks_or_expands():
    """Strict loading names a task that is not registered (with its line); --skip-unknown drops it."""
    path = SUITES_DIR / "paper.yaml"
    text = path.read_text()
    explicit = ["cifar10", "imagenet128", "gen-cifar10", "gen-imagenet128"]
    missing = [t for t in explicit if t not in TASKS]
    if missing:
        with pytest.raises(ConfigError) as err:
            load_sweep("paper")
        assert f"paper.yaml:{line_of(text, '- ' + missing[0])}:" in str(err.value)
        assert f"unknown task '{missing[0]}'" in str(err.value)
    sweep = load_sweep("paper", skip_unknown=True)
    assert len(sweep.skipped) == len(missing)
    synthetic = sorted(e.name for e in TASKS.entries() if e.kind == "synthetic" and "paper" in e.budgets)
    tasks = synthetic + [t for t in explicit if t in TASKS]
    assert sorted({s.task for s in sweep.specs()}) == sorted(tasks)
    assert {s.method for s in sweep.specs()} == set(METHODS.list())
    assert {s.seed for s in sweep.specs()} == {0, 1, 2}
    assert all(s.budget == task_budget(s.task, "paper") for s in sweep.specs())
    assert sweep.profile.cluster == "slurm" and sweep.profile.gpus == 1


def test_suite_name_resolution_errors():
    with pytest.raises(UserError, match="no sweep file 'quik' and no suite of that name .*did you mean 'quick'"):
        load_sweep("quik")


def test_yaml_floats_with_exponent_are_floats(tmp_path):
    sweep = load_sweep(write(tmp_path, base_yaml(methods="\n  - name: swt-a\n    params: {beta: [1e-3, 2E+1]}")))
    assert [s.method_params["beta"] for s in sweep.specs()] == [0.001, 20.0]


# -- validation errors ------------------------------------------------------------------------------
ERRORS = [
    # (overrides or full text, message regex, the text on the reported line)
    ({"method": "[swt-a]"}, r"unknown key 'method' \(did you mean 'methods'\?\)", "method: [swt-a]"),
    ({"methods": "[swt-zz]"}, r"methods\[0\]: unknown method 'swt-zz'", "methods:"),
    ({"methods": "\n  - swt-a\n  - name: swt-zz"}, r"methods\[1\]\.name: unknown method 'swt-zz'", "name: swt-zz"),
    ({"tasks": "[gmmm]"}, r"tasks\[0\]: unknown task 'gmmm': did you mean gmm", "tasks:"),
    ({"methods": "\n  - name: swt-a\n    params: {betaa: [1, 2]}"},
     r"methods\[0\]\.params: method 'swt-a' has no parameter 'betaa': did you mean beta", "params: {betaa"),
    ({"tasks": "\n  - name: gmm\n    params: {n_modez: 3}"}, r"task 'gmm' has no parameter 'n_modez'", "n_modez"),
    ({"methods": "[nomatch-*]"}, r"methods\[0\]: selects no registered method \(pattern 'nomatch-\*'", "methods:"),
    ({"methods": "\n  - {name: '*', where: {family: nope}}"}, r"selects no registered method", "family: nope"),
    ({"methods": "\n  - name: swt-a\n    zip: [{beta: [1, 2], levels: [[1]]}]"},
     r"zipped lists must have the same length", "zip:"),
    ({"methods": "\n  - name: swt-a\n    params: {beta: []}"}, r"params\.beta: an empty list", "params: {beta: []}"),
    ({"methods": "\n  - name: swt-a\n    params: {beta: [1]}\n    fixed: {beta: 2}"},
     r"fixed\.beta: parameter 'beta' is set in both params and fixed", "fixed:"),
    ({"methods": "\n  - name: swt-a\n    where: {kindd: x}"}, r"where\.kindd: unknown key 'kindd'", "where:"),
    ({"budget": "{stepz: 5}"}, r"budget\.stepz: unknown key 'stepz' \(did you mean 'steps'\?\)", "budget:"),
    ({"budget": "huge"}, r"budget: task 'gmm' has no budget named 'huge'", "budget:"),
    ({"budget": "{steps: -1}"}, r"budget: bad budget for task 'gmm': budget\.steps must be a positive", "budget:"),
    ({"seeds": "0"}, r"seeds: a seed count must be >= 1", "seeds:"),
    ({"seeds": "[1, 1]"}, r"seeds: seeds repeat", "seeds:"),
    ({"seeds": "[a]"}, r"seeds\[0\]: expected a seed", "seeds:"),
    ({"executor": "{cluster: kubernetes}"}, r"executor\.cluster: unknown cluster 'kubernetes'", "executor:"),
    ({"executor": "gpux"}, r"executor: no profile 'gpux' \(did you mean 'gpu'", "executor:"),
    ({"executor": "{time: soon}"}, r"executor\.time: expected minutes", "executor:"),
    ({"executor": "{mem: lots}"}, r"executor\.mem: expected a memory size", "executor:"),
    ({"executor": "{additional_parameters: {--exclude: n1}}"}, r"write the sbatch option without dashes",
     "executor:"),
    ({"executor": "{time: 1, signal_delay_s: 90}"}, r"executor\.signal_delay_s: the checkpoint signal must come",
     "executor:"),
    ({"tasks": "5"}, r"tasks: expected a non-empty list of task names", "tasks:"),
    ({"name": "'a b'"}, r"name: sweep name 'a b' may use only", "name:"),
    ({"plugins": "[nope.py]"}, r"plugins\[0\]: plugin file nope\.py not found", "plugins:"),
    ({"version": "'x'"}, r"version: expected a version number", "version:"),
    ({"tasks": f"\n  - name: gmm\n    params: {TINY_GMM}\n    profile: {{cpus: 0}}"},
     r"tasks\[0\]\.profile\.cpus: expected a number of CPUs >= 1", "profile:"),
]


@pytest.mark.parametrize("overrides, message, line_text", ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_validation_errors_are_one_line_with_line_and_key(tmp_path, overrides, message, line_text):
    parts = dict(overrides)
    text = base_yaml(**parts)
    if "method" in parts:  # a misspelt key replaces the real one
        text = text.replace("methods: [swt-a]\n", "")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line_of(text, line_text)}: "), msg
    assert __import__("re").search(message, msg), msg


def test_yaml_syntax_and_duplicate_keys_name_the_line(tmp_path):
    text = base_yaml() + "seeds: 2\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^{path}:{len(text.splitlines())}: .*duplicate key 'seeds'"):
        load_sweep(path)
    path = write(tmp_path, "name: t\ntasks: [gmm\nmethods: [swt-a]\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: "):
        load_sweep(path)
    with pytest.raises(ConfigError, match="missing required key 'methods'"):
        load_sweep(write(tmp_path, "name: t\ntasks: [gmm]\n"))
    with pytest.raises(ConfigError, match="the sweep file is empty"):
        load_sweep(write(tmp_path, "# nothing\n"))


def test_skip_unknown_drops_unknown_names_and_reports_them(tmp_path):
    text = base_yaml(tasks=f"\n  - name: gmm\n    params: {TINY_GMM}\n  - not-a-task-yet",
                     methods="[swt-a, not-a-method-yet]")
    path = write(tmp_path, text)
    sweep = load_sweep(path, skip_unknown=True)
    assert {(s.task, s.method) for s in sweep.specs()} == {("gmm", "swt-a")}
    assert len(sweep.skipped) == 2 and "not-a-task-yet" in sweep.skipped[0]
    only_unknown = base_yaml(methods="[not-a-method-yet]")
    with pytest.raises(ConfigError, match="no methods to run after dropping unknown names"):
        load_sweep(write(tmp_path, only_unknown), skip_unknown=True)


# -- profiles --------------------------------------------------------------------------------------
def test_shipped_profiles_and_inline_overrides():
    from vqbench.slurm.config import Where
    from vqbench.slurm.launch import sbatch_preview

    gpu = load_profile("gpu", Where("test"))
    assert (gpu.cluster, gpu.gpus, gpu.time, gpu.mem, gpu.name) == ("slurm", 1, 720, "64G", "gpu")
    cpu = load_profile("cpu-debug", Where("test"))
    assert cpu.gpus == 0 and cpu.cluster == "slurm" and cpu.time == 30
    custom = load_profile({"profile": "gpu", "partition": "a100", "time": "1-02:30:00", "mem": 0.5,
                           "additional_parameters": {"exclude": "node13"}, "slurm_setup": ["module load cuda"]},
                          Where("test"))
    assert (custom.partition, custom.time, custom.mem, custom.gpus) == ("a100", 1590, "512M", 1)
    script = sbatch_preview(custom, Path("/r/jobs/x/logs/%j"), 7, ["export PYTHONPATH=/snap"], "vqbench-x")
    for flag in ("--gpus-per-node=1", "--partition=a100", "--time=1590", "--mem=512M", "--cpus-per-task=8",
                 "--signal=USR2@300", "--array=0-6%7", "--exclude=node13", "--job-name=vqbench-x"):
        assert f"#SBATCH {flag}" in script, (flag, script)
    assert "module load cuda" in script and "export PYTHONPATH=/snap" in script
    assert script.index("module load cuda") < script.index("submitit.core._submit")


def test_local_concurrency_is_capped_by_cpus_and_array_parallelism(monkeypatch):
    from vqbench.slurm.profile import Profile

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert Profile().local_parallelism() == 8
    assert Profile(cpus=3).local_parallelism() == 2
    assert Profile(array_parallelism=3).local_parallelism() == 3
    assert Profile(array_parallelism=64, cpus=2).local_parallelism() == 4  # a Slurm-sized throttle, 8 cores
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert Profile(cpus=4).local_parallelism() == 1


@pytest.mark.parametrize("value, minutes", [(90, 90), ("2:00:00", 120), ("1-00:00:00", 1440), ("30:30", 31),
                                            ("0:01:01", 2)])
def test_profile_time_formats(value, minutes):
    from vqbench.slurm.config import Where

    assert load_profile({"time": value}, Where("t")).time == minutes


def test_profiles_group_runs_into_arrays_and_dry_run_chunks(tmp_path):
    text = base_yaml(
        tasks=f"\n  - name: gmm\n    params: {TINY_GMM}\n    profile: {{cluster: slurm, cpus: 2}}"
              f"\n  - name: gmm\n    params: {{n_train: 300, n_eval: 128, hidden: 16, n_modes: 4, codebook_size: 16}}",
        methods="[swt-a, swt-b, swt-c]", executor="{cluster: slurm, max_array_size: 2, array_parallelism: 1}")
    sweep = load_sweep(write(tmp_path, text))
    groups = sweep.groups()
    assert [len(specs) for _, specs in groups] == [3, 3]
    assert (groups[0][0].cpus, groups[1][0].cpus) == (2, 1)
    assert groups[0][0].max_array_size == 2  # an inline task profile changes keys of the sweep's profile
    results = tmp_path / "results"
    summary = run_sweep(sweep, results, dry_run=True, log=None)
    assert summary.submitted == 6 and summary.dry_run
    text_plan = "\n".join(summary.plan)
    assert text_plan.count("3 run(s) as 2 Slurm array(s) of at most 2") == 2
    assert "#SBATCH --array=0-1%1" in text_plan
    assert not results.exists()  # a dry run writes nothing


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
    membership = (results / "sweeps" / "t.json").read_text()
    assert all(rid in membership for rid in sweep.run_ids())


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


PLUGIN = '''
"""A file plugin for the sweep tests: a nearest-code quantizer with a straight-through estimator."""
import torch
import torch.nn.functional as F
from torch import nn

from vqbench.registry import register_method
from vqbench.methods.base import nearest_code
from vqbench.quantizer import QuantizeOutput, Quantizer


@register_method("{name}", version=1, family="plugin-test", description="file plugin for the sweep tests",
                 beta=0.25)
class PluginQuantizer(Quantizer):
    def __init__(self, dim, codebook_size, beta=0.25):
        super().__init__()
        self.dim, self.codebook_size, self.beta = dim, codebook_size, beta
        self.embed = nn.Parameter(torch.randn(codebook_size, dim))

    def forward(self, z):
        idx = nearest_code(z.reshape(-1, self.dim), self.embed).reshape(z.shape[:-1])
        e = self.embed[idx]
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        return QuantizeOutput(z + (e - z).detach(), idx, loss)

    def codebook(self):
        return self.embed.detach()

    def decode_indices(self, indices):
        return self.embed[indices]
'''


@pytest.mark.parametrize(("method", "params", "refused"), [
    ("fsq", "{levels: [[8, 8], [1, 5]]}", "levels=[1, 5] for task gmm (dim 16, codebook_size 16): "
                                          "levels must be integers >= 2, got [1, 5]"),
    ("cvq", "{decay: [0.9, 1.5]}", "decay=1.5 for task gmm (dim 16, codebook_size 16): decay must be in [0, 1)"),
])
def test_a_method_value_refused_at_build_fails_the_dry_run_before_submitting(tmp_path, method, params, refused):
    text = textwrap.dedent(f"""\
        name: t
        tasks:
          - name: gmm
            params: {TINY_GMM}
        methods:
          - swt-a
          - {{name: {method}, params: {params}}}
        budget: {TINY_BUDGET}
        executor: cpu-debug
        """)
    path = write(tmp_path, text)
    sweep = load_sweep(path)  # parsing alone does not build methods
    results = tmp_path / "results"
    for dry_run in (True, False):
        with pytest.raises(ConfigError) as caught:
            run_sweep(sweep, results, executor="debug", dry_run=dry_run, log=None)
        message = str(caught.value)
        assert message.startswith(f"{path}:7: methods[1].params: method {method} cannot be built with ")
        assert refused in message and "\n" not in message
    assert not (results / "jobs").exists() and not ResultStore(results).load_runs().shape[0]


def test_a_task_value_refused_at_build_fails_before_submitting(tmp_path):
    text = base_yaml().replace("n_modes: 4", "n_modes: 0")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.params: task gmm cannot be built with .*n_modes=0.*"
                                          r"n_modes must be >= 1"):
        run_sweep(load_sweep(path), tmp_path / "results", executor="debug", dry_run=True, log=None)


def test_checking_a_sweep_leaves_the_random_state_alone(tmp_path):
    from vqbench.slurm.sweep import check_buildable

    sweep = load_sweep(write(tmp_path, base_yaml(methods="[swt-a, vq, fsq]")))
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check_buildable(sweep)
    assert torch.equal(torch.rand(3), expected)


# -- data-parallel runs: the shape keys, their errors, and the sbatch lines -----------------------------------
def test_gpus_per_run_on_gpu_nodes_shows_the_sbatch_lines(tmp_path):
    sweep = load_sweep(write(tmp_path, base_yaml(executor="gpu-4", budget="{steps: 20, batch_size: 64}")
                             + "gpus_per_run: 8\n"))
    (profile, _), = sweep.groups()
    assert (profile.nodes, profile.ranks_per_node, profile.world_size) == (2, 4, 8)
    summary = run_sweep(sweep, tmp_path / "results", executor="slurm", dry_run=True, log=None)
    plan = "\n".join(summary.plan)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=256G"):
        assert line in plan, (line, plan)
    assert "--kill-on-bad-exit=1" in plan and "2 node(s) x 4 rank(s) of 1 gpu + 8 cpu" in plan
    eight = load_sweep(write(tmp_path, base_yaml(executor="gpu-8", budget="{steps: 20, batch_size: 64}")
                             + "gpus_per_run: 8\n", "eight.yaml"))
    assert (eight.runs[0].profile.nodes, eight.runs[0].profile.ranks_per_node) == (1, 8)
    # a CPU profile: ranks_per_run processes, no GPUs; a task item may change the shape of its runs
    text = base_yaml(executor="{cluster: slurm, cpus: 1, mem: 1G}", methods="[swt-a]",
                     tasks=f"\n  - name: gmm\n    params: {TINY_GMM}\n  - name: gmm\n    params: "
                           f"{TINY_GMM.replace('256', '512')}\n    ranks_per_run: 4") + "ranks_per_run: 2\n"
    cpu = load_sweep(write(tmp_path, text, "cpu.yaml"))
    assert [r.profile.world_size for r in cpu.runs] == [2, 4] and len(cpu.groups()) == 2
    plan = "\n".join(run_sweep(cpu, tmp_path / "results", executor="slurm", dry_run=True, log=None).plan)
    assert "#SBATCH --ntasks-per-node=2" in plan and "#SBATCH --mem=2G" in plan and "gpus-per-node" not in plan
    single = load_sweep(write(tmp_path, base_yaml(executor="gpu"), "single.yaml"))
    plan = "\n".join(run_sweep(single, tmp_path / "results", executor="slurm", dry_run=True, log=None).plan)
    assert "#SBATCH --gpus-per-node=1" in plan and "ntasks-per-node" not in plan and "kill-on-bad-exit" not in plan


SHAPE_ERRORS = [
    # (extra top-level lines, executor, message regex, the text on the reported line)
    ("gpus_per_run: 2\n", "cpu-debug", r"gpus_per_run: gpus_per_run needs a GPU profile, but profile cpu-debug has "
     r"no GPUs \(gpus: 0\)", "gpus_per_run:"),
    ("ranks_per_run: 2\n", "gpu", r"ranks_per_run: profile gpu has GPUs: say gpus_per_run", "ranks_per_run:"),
    ("gpus_per_run: 2\nranks_per_run: 2\n", "gpu", r"set gpus_per_run .* or ranks_per_run .*, not both",
     "ranks_per_run:"),
    ("ranks_per_run: 3\n", "cpu-debug", r"ranks_per_run: 3 makes runs of 3 processes, which do not divide task "
     r"gmm's budget.batch_size 32 .*use a batch size that is a multiple of 3, or 2 processes", "ranks_per_run:"),
    ("gpus_per_run: 6\nnodes: 4\n", "gpu-4", r"nodes: 6 ranks do not spread evenly over 4 nodes", "nodes:"),
    ("gpus_per_run: 16\nnodes: 2\n", "gpu-4", r"nodes: 8 GPUs per node but the nodes of profile gpu-4 have 4: use "
     r"nodes: 4", "nodes:"),
    ("nodes: 2\n", "gpu", r"nodes: nodes: 2 with one process per run: set gpus_per_run or ranks_per_run",
     "nodes:"),
    ("ranks_per_run: 0\n", "cpu-debug", r"ranks_per_run: expected a number of processes per run >= 1",
     "ranks_per_run:"),
]


@pytest.mark.parametrize("extra, executor, message, line_text", SHAPE_ERRORS, ids=[e[2][:40] for e in SHAPE_ERRORS])
def test_run_shape_errors_are_one_line_before_anything_starts(tmp_path, extra, executor, message, line_text):
    text = base_yaml(executor=executor) + extra
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}:{line_of(text, line_text)}: "), msg
    assert __import__("re").search(message, msg), msg


def test_multi_node_runs_need_slurm_one_line_before_submitting(tmp_path):
    sweep = load_sweep(write(tmp_path, base_yaml(executor="{profile: gpu-4, cluster: local}",
                                                 budget="{steps: 20, batch_size: 64}") + "gpus_per_run: 8\n"))
    results = tmp_path / "results"
    for executor in ("local", "debug"):
        with pytest.raises(UserError, match=rf"^runs of 2 nodes need Slurm, but the {executor} executor runs on "
                                            r"this machine only: use --executor slurm"):
            run_sweep(sweep, results, executor=executor, log=None)
    assert not results.exists()


class StatefulToy(ToyQuantizer):
    """A toy that counts code usage in a buffer and declares no distributed_sync."""

    def __init__(self, dim: int, codebook_size: int, **kwargs) -> None:
        super().__init__(dim, codebook_size, **kwargs)
        self.register_buffer("usage", torch.zeros(codebook_size))


def test_a_method_with_undeclared_state_is_refused_for_multi_rank_sweeps(tmp_path):
    from vqbench.slurm.sweep import check_buildable

    METHODS.register("swt-state", version=1, family="swt", description="test toy")(StatefulToy)
    try:
        check_buildable(load_sweep(write(tmp_path, base_yaml(methods="[swt-a, swt-state]"))))  # one process: fine
        path = write(tmp_path, base_yaml(methods="[swt-a, swt-state]") + "ranks_per_run: 2\n", "multi.yaml")
        with pytest.raises(ConfigError, match=r"multi.yaml:5: methods\[1\]: method swt-state keeps state "
                                              r"\(buffers usage\) but declares no distributed_sync.*runs of 2 "
                                              r"processes.*\(nothing was submitted\)$"):
            run_sweep(load_sweep(path), tmp_path / "results", executor="debug", dry_run=True, log=None)
    finally:
        METHODS.remove("swt-state")


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
