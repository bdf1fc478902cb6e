"""Sweep files: loading, validation (one-line errors with lines), expansion, profiles, run shapes and the
build check before submission. Nothing runs here (dry runs at most): see test_sweep_run.py for that."""

from __future__ import annotations

import itertools
import os
import textwrap
from pathlib import Path

import pytest
import torch
from sweep_helpers import (
    TINY_BUDGET,
    TINY_GMM,
    ToyQuantizer,
    base_yaml,
    line_of,
    registered_toys,
    write,
)

from vqbench.errors import UserError
from vqbench.registry import METHODS, TASKS
from vqbench.slurm.config import ConfigError
from vqbench.slurm.launch import run_sweep
from vqbench.slurm.profile import load_profile
from vqbench.slurm.sweep import SUITES_DIR, load_sweep, parse_sweep
from vqbench.spec import make_spec, task_budget
from vqbench.store import ResultStore


@pytest.fixture(scope="module", autouse=True)
def toy_methods():
    yield from registered_toys()


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


# -- checked before submitting: values a builder refuses ------------------------------------------------
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
