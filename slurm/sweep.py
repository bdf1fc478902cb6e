"""Sweep files: a YAML grid of tasks x methods x params x seeds that expands to RunSpecs.

A sweep file (the official suites live in ``slurm/suites/``; ``load_sweep("quick")`` finds them by
name)::

    name: my-sweep                 # letters, digits, . _ - ; every run gets the tag "suite:<name>"
    version: 1                     # bump when the sweep's meaning changes
    description: beta sweep of vq on gmm
    plugins: [my_method.py]        # .py files (relative to this file) or importable modules
    tasks:
      - gmm                        # a name, or a glob ("*", "gen-*")
      - name: "*"                  # every registered task whose metadata matches `where`
        where: {offline: true, has_budget: quick}   # kind, offline, has_budget, source
        exclude: [gmm]             # names or globs to drop
        params: {codebook_size: [256, 1024]}    # a grid: a list is an axis, a scalar a fixed value
        fixed: {hidden_sizes: [64, 64]}         # values used as they are (for list-valued params)
        zip: [{n_modes: [8, 64], separation: [1.0, 4.0]}]   # lists that advance together
        budget: paper              # overrides the sweep's budget for these tasks
        profile: {cpus: 4}         # changes keys of the sweep's executor profile (or a profile name);
                                   # runs of each distinct profile go into their own job arrays
    methods:
      - "*"                        # every registered method (plugins included), sorted by name
      - name: vq
        params: {beta: [0.1, 0.25, 1.0]}
    seeds: 3                       # a count (0, 1, 2) or a list [0, 7, 42]
    budget: quick                  # a named budget of each task, or overrides: {steps: 500}
                                   # (on top of quick, or of {base: paper, steps: 500})
    executor: cpu-debug            # a profile name from slurm/profiles/, a path, or a mapping
    tags: [ablation]               # extra tags on every run
    ranks_per_run: 2               # data-parallel runs: processes per run on a CPU profile (gloo), or
    gpus_per_run: 8                #   GPUs per run on a GPU profile (one process per GPU, NCCL); not both
    nodes: 2                       #   nodes per run (default: the fewest of the profile's node_gpus)

A run of ``R`` ranks is one Slurm job (array task) of ``nodes`` nodes x ``R / nodes`` tasks started by
submitit; every rank trains, rank 0 writes the store. ``R`` ranks at ``batch_size / R`` rows each are the run
of ``batch_size`` rows (the same run id), so ``R`` must divide every run's ``budget.batch_size``. A task item may
set its own ``gpus_per_run`` / ``ranks_per_run`` / ``nodes``. The local executor runs the ranks of a run as local
processes (one node only), the debug executor as spawned processes of this machine, one run after the other.

Everything is checked on load: an unknown key, a wrong type, an unknown task, method or parameter,
a bad budget or profile, or a selection that expands to nothing is a one-line :class:`ConfigError`
naming the file, the line and the key. Values only a builder can judge (a method's levels, thresholds or
weights, a task's sizes) are checked by :func:`check_buildable`, which builds each distinct task and method once
on the CPU; ``run_sweep`` calls it before submitting anything (dry runs too). Expansion goes through
:func:`vqbench.spec.make_spec` (defaults, versions) and is deterministic: tasks in file order (globs sorted),
then task params, methods, method params and seeds; a spec listed twice is kept once.

Tasks that other code registers later (e.g. the image tasks of the ``paper`` suite) are unknown until
their module exists: ``load_sweep(..., skip_unknown=True)`` (``--skip-unknown`` on the command line)
drops explicitly named unknown tasks and methods, and selections that match nothing, and lists what
it dropped in ``Sweep.skipped``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vqbench.errors import UserError
from vqbench.registry import METHODS, TASKS, Registry, load_plugin
from vqbench.slurm.buildable import check_buildable
from vqbench.slurm.config import (
    ConfigError,
    LocatedList,
    Where,
    check_mapping,
    expect_int,
    expect_str,
    expect_str_list,
    load_yaml,
    plain,
    suggest,
    type_name,
)
from vqbench.slurm.grid import entry_matches, is_glob, param_combos
from vqbench.slurm.profile import Profile, load_profile
from vqbench.spec import Budget, RunSpec, canonical_json, make_spec, task_budget

SUITES_DIR = Path(__file__).resolve().parent / "suites"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

SHAPE_KEYS = ("gpus_per_run", "ranks_per_run", "nodes")
TOP_KEYS = ("name", "version", "description", "plugins", "tasks", "methods", "seeds", "budget", "executor", "tags",
            *SHAPE_KEYS)
TASK_KEYS = ("name", "where", "exclude", "params", "fixed", "zip", "budget", "profile", *SHAPE_KEYS)
METHOD_KEYS = ("name", "where", "exclude", "params", "fixed", "zip")
TASK_FILTERS = ("kind", "offline", "has_budget", "source")
METHOD_FILTERS = ("family", "source")
BUDGET_KEYS = tuple(f.name for f in fields(Budget)) + ("base",)


@dataclass(frozen=True)
class SweepRun:
    """One expanded point: its RunSpec and the executor profile it runs with."""

    spec: RunSpec
    profile: Profile


@dataclass
class Sweep:
    """A loaded, validated and expanded sweep file."""

    name: str
    version: int
    runs: list[SweepRun]
    profile: Profile
    description: str = ""
    path: Path | None = None
    plugins: tuple[str, ...] = ()  # absolute .py paths or module names, as loaded
    tags: tuple[str, ...] = ()
    skipped: list[str] = field(default_factory=list)  # what skip_unknown dropped, one line each
    # (kind, name, canonical JSON of the resolved params) -> where the sweep file sets them (for check_buildable)
    origins: dict[tuple[str, str, str], Where] = field(default_factory=dict, repr=False)

    @property
    def suite_tag(self) -> str:
        return f"suite:{self.name}"

    def specs(self) -> list[RunSpec]:
        """The expanded RunSpecs, in expansion order (deterministic)."""
        return [r.spec for r in self.runs]

    def run_ids(self) -> list[str]:
        return [r.spec.run_id for r in self.runs]

    def groups(self) -> list[tuple[Profile, list[RunSpec]]]:
        """Runs grouped by resource profile (one job array each), in order of first appearance."""
        groups: dict[str, tuple[Profile, list[RunSpec]]] = {}
        for r in self.runs:
            groups.setdefault(r.profile.key(), (r.profile, []))[1].append(r.spec)
        return list(groups.values())

    def describe(self) -> str:
        tasks = sorted({r.spec.task for r in self.runs})
        methods = sorted({r.spec.method for r in self.runs})
        seeds = sorted({r.spec.seed for r in self.runs})
        grid = "" if len(tasks) * len(methods) * len(seeds) == len(self.runs) else " and parameter grids"
        return (f"sweep {self.name} v{self.version}: {len(self.runs)} runs from {len(tasks)} task(s), "
                f"{len(methods)} method(s), {len(seeds)} seed(s){grid}")


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def resolve_sweep_path(source: str | Path) -> Path:
    """A sweep file path, or the name of a shipped suite (``quick`` -> ``slurm/suites/quick.yaml``)."""
    path = Path(source)
    if path.is_file():
        return path
    text = str(source)
    if NAME_RE.match(text) and not text.endswith((".yaml", ".yml")):
        suite = SUITES_DIR / f"{text}.yaml"
        if suite.is_file():
            return suite
    suites = list_suites()
    raise UserError(f"no sweep file {text!r} and no suite of that name{suggest(text, suites)}: pass a path to "
                    f"a sweep .yaml or one of the suites: {', '.join(suites)}")


def load_sweep(source: str | Path, *, skip_unknown: bool = False) -> Sweep:
    """Load, validate and expand a sweep file (or a suite name such as ``"quick"``)."""
    path = resolve_sweep_path(source)
    data = load_yaml(path)
    return parse_sweep(data, source=str(path), base_dir=path.parent, skip_unknown=skip_unknown, path=path)


def parse_sweep(data: Any, *, source: str = "<sweep>", base_dir: Path | None = None, skip_unknown: bool = False,
                path: Path | None = None) -> Sweep:
    """Validate and expand a sweep given as data (a dict as in a sweep file)."""
    return _Expander(data, Where(source), base_dir or Path.cwd(), skip_unknown, path).sweep()


# -- expansion -------------------------------------------------------------------------------------
@dataclass
class _Selected:
    names: list[str]
    combos: list[dict[str, Any]]
    where: Where  # of the item (errors about the whole item)
    params_where: Where  # of its params (errors about a parameter)
    budget: Any = None
    budget_where: Where | None = None
    profile: Profile | None = None
    shape: dict[str, tuple[int, Where]] = field(default_factory=dict)


def _check_batch(spec: RunSpec, item: _Selected) -> None:
    """The world size of a data-parallel run must divide its global batch (each rank takes an equal share)."""
    world = item.profile.world_size if item.profile is not None else 1
    if world > 1 and spec.budget.batch_size % world:
        key = next((k for k in ("gpus_per_run", "ranks_per_run", "nodes") if k in item.shape), "ranks_per_run")
        value, at = item.shape.get(key, (world, item.where))
        fits = [k for k in range(world, 0, -1) if spec.budget.batch_size % k == 0][0]
        raise at.error(f"{key}: {value} makes runs of {world} processes, which do not divide task {spec.task}'s "
                       f"budget.batch_size {spec.budget.batch_size} (each rank takes batch_size / {world} rows): "
                       f"use a batch size that is a multiple of {world}, or {fits} processes")


class _Expander:
    def __init__(self, data: Any, where: Where, base_dir: Path, skip_unknown: bool, path: Path | None) -> None:
        self.data, self.where, self.base_dir = data, where, base_dir
        self.skip_unknown, self.path = skip_unknown, path
        self.skipped: list[str] = []

    def sweep(self) -> Sweep:
        data, where = self.data, self.where
        if data is None:
            raise where.error("the sweep file is empty: it needs at least name, tasks and methods")
        check_mapping(data, where, TOP_KEYS, required=("name", "tasks", "methods"))
        name = expect_str(data["name"], where.key(data, "name"), "a sweep name")
        if not NAME_RE.match(name):
            raise where.key(data, "name").error(f"sweep name {name!r} may use only letters, digits, '.', '_' "
                                                "and '-' (it names folders and the leaderboard's suite)")
        version = expect_int(data.get("version", 1), where.key(data, "version"), 1, "a version number")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise where.key(data, "description").error(f"expected a string; got {type_name(description)}")
        tags = tuple(expect_str_list(data.get("tags", []), where.key(data, "tags")))
        plugins = self._plugins(data.get("plugins", []), where.key(data, "plugins"))
        profile = load_profile(data.get("executor", {}), where.key(data, "executor"), self.base_dir)
        seeds = self._seeds(data.get("seeds", 1), where.key(data, "seeds"))
        budget_where = where.key(data, "budget")
        budget = self._budget_value(data.get("budget", "quick"), budget_where)
        shape = self._shape(data, where, {})
        tasks = self._items(data["tasks"], where.key(data, "tasks"), TASKS, TASK_KEYS, TASK_FILTERS,
                            budget, budget_where, profile, shape)
        methods = self._items(data["methods"], where.key(data, "methods"), METHODS, METHOD_KEYS, METHOD_FILTERS)
        if not tasks or not methods:
            what = "tasks" if not tasks else "methods"
            raise where.key(data, what).error(f"no {what} to run after dropping unknown names "
                                              f"({'; '.join(self.skipped)})")
        all_tags = (f"suite:{name}", *tags)
        runs: list[SweepRun] = []
        seen: set[str] = set()
        origins: dict[tuple[str, str, str], Where] = {}
        for t in tasks:
            for task in t.names:
                budget_obj = self._resolve_budget(task, t.budget, t.budget_where)
                for task_params in t.combos:
                    for m in methods:
                        for method in m.names:
                            for method_params in m.combos:
                                for seed in seeds:
                                    try:
                                        spec = make_spec(task, method, task_params, method_params, seed=seed,
                                                         budget=budget_obj, tags=all_tags)
                                    except UserError as exc:
                                        raise m.where.error(f"{method} on {task}: {exc}") from None
                                    if spec.run_id not in seen:
                                        _check_batch(spec, t)
                                        seen.add(spec.run_id)
                                        runs.append(SweepRun(spec, t.profile or profile))
                                        origins.setdefault(("task", task, canonical_json(spec.task_params)),
                                                           t.params_where)
                                        origins.setdefault(("method", method, canonical_json(spec.method_params)),
                                                           m.params_where)
        return Sweep(name=name, version=version, runs=runs, profile=profile, description=description,
                     path=self.path, plugins=plugins, tags=tags, skipped=self.skipped, origins=origins)

    # -- pieces ------------------------------------------------------------------------------------
    def _plugins(self, value: Any, where: Where) -> tuple[str, ...]:
        loaded = []
        for i, item in enumerate(expect_str_list(value, where, "a list of .py files or module names")):
            at = where.item(value, i) if isinstance(value, list) else where
            if item.endswith(".py") or "/" in item:
                file = (self.base_dir / item).resolve()
                if not file.is_file():
                    raise at.error(f"plugin file {item} not found (looked at {file}; paths are relative to "
                                   "the sweep file)")
                target = str(file)
            else:
                target = item
            try:
                load_plugin(target)
            except UserError as exc:
                raise at.error(str(exc)) from None
            loaded.append(target)
        return tuple(loaded)

    def _seeds(self, value: Any, where: Where) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise where.error(f"a seed count must be >= 1; got {value}")
            return list(range(value))
        if not isinstance(value, list) or not value:
            raise where.error(f"expected a seed count (e.g. 3) or a non-empty list of seeds; got {type_name(value)}")
        for i, seed in enumerate(value):
            expect_int(seed, where.item(value, i), 0, "a seed (integer >= 0)")
        if len(set(value)) != len(value):
            raise where.error(f"seeds repeat: {list(value)}")
        return list(value)

    def _budget_value(self, value: Any, where: Where) -> Any:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            check_mapping(value, where, BUDGET_KEYS)
            if "base" in value:
                expect_str(value["base"], where.key(value, "base"), "the name of a budget (quick, paper)")
            return plain(value)
        raise where.error(f"expected a budget name (quick, paper) or a mapping of overrides; got {type_name(value)}")

    def _resolve_budget(self, task: str, value: Any, where: Where) -> Budget:
        try:
            if isinstance(value, dict) and "base" in value:
                overrides = {k: v for k, v in value.items() if k != "base"}
                try:
                    return task_budget(task, value["base"]).with_overrides(**overrides)
                except (TypeError, ValueError) as exc:
                    raise UserError(f"bad budget for task {task!r}: {exc}") from None
            return task_budget(task, value)
        except UserError as exc:
            raise where.error(str(exc)) from None

    def _shape(self, data: dict, where: Where, inherited: dict[str, tuple[int, Where]]
               ) -> dict[str, tuple[int, Where]]:
        """The run shape keys set in ``data`` (``gpus_per_run``, ``ranks_per_run``, ``nodes``) over ``inherited``."""
        shape = dict(inherited)
        own = [k for k in SHAPE_KEYS if k in data]
        if "gpus_per_run" in own and "ranks_per_run" in own:
            raise where.key(data, "ranks_per_run").error(
                "set gpus_per_run (GPU profiles: one process per GPU) or ranks_per_run (CPU profiles), not both")
        if {"gpus_per_run", "ranks_per_run"} & set(own):
            shape.pop("gpus_per_run", None)
            shape.pop("ranks_per_run", None)
        for key in own:
            at = where.key(data, key)
            what = {"gpus_per_run": "a number of GPUs per run", "ranks_per_run": "a number of processes per run",
                    "nodes": "a number of nodes per run"}[key]
            shape[key] = (expect_int(data[key], at, 1, what), at)
        return shape

    def _shaped(self, profile: Profile, shape: dict[str, tuple[int, Where]], where: Where) -> Profile:
        """``profile`` with the run shape applied (one-line errors at the key that does not fit)."""
        if not shape:
            return profile
        nodes, nodes_at = shape.get("nodes", (None, where))
        if "gpus_per_run" in shape:
            ranks, at = shape["gpus_per_run"]
            if not profile.gpus:
                raise at.error(f"gpus_per_run needs a GPU profile, but profile {profile.name} has no GPUs (gpus: 0): "
                               "use a GPU profile (gpu, gpu-4, gpu-8), or ranks_per_run for processes on CPUs")
        elif "ranks_per_run" in shape:
            ranks, at = shape["ranks_per_run"]
            if profile.gpus:
                raise at.error(f"profile {profile.name} has GPUs: say gpus_per_run (one process per GPU) instead "
                               "of ranks_per_run")
        else:
            ranks, at = 1, nodes_at
        if nodes is not None and nodes > 1 and ranks == 1:
            raise nodes_at.error(f"nodes: {nodes} with one process per run: set gpus_per_run or ranks_per_run too")
        try:
            return profile.with_ranks(ranks, nodes)
        except ValueError as exc:
            raise (nodes_at if nodes is not None else at).error(str(exc)) from None

    def _items(self, value: Any, where: Where, registry: Registry, keys: tuple[str, ...], filters: tuple[str, ...],
               budget: Any = None, budget_where: Where | None = None, profile: Profile | None = None,
               shape: dict[str, tuple[int, Where]] | None = None) -> list[_Selected]:
        kind = registry.kind
        if isinstance(value, (str, dict)):
            value = LocatedList([value])
            value.item_lines = [where.line or 0]
        if not isinstance(value, list) or not value:
            raise where.error(f"expected a non-empty list of {kind} names, globs or mappings; got {type_name(value)}")
        out = []
        for i, item in enumerate(value):
            at = where.item(value, i)
            if isinstance(item, str):
                item = {"name": item}
            check_mapping(item, at, keys)
            selected = self._select(item, at, registry, filters)
            if not selected:
                continue
            params_where = at.key(item, "params") if "params" in item else at
            combos = param_combos(item, at)
            for name in selected:
                for combo in combos:
                    try:
                        registry.resolve_params(name, combo)
                    except UserError as exc:
                        raise params_where.error(str(exc)) from None
            sel = _Selected(selected, combos, at, params_where)
            if kind == "task":
                sel.budget, sel.budget_where = budget, budget_where
                if "budget" in item:
                    sel.budget_where = at.key(item, "budget")
                    sel.budget = self._budget_value(item["budget"], sel.budget_where)
                # an inline mapping changes keys of the sweep's profile (unless it names its own `profile:`)
                sel.profile = load_profile(item["profile"], at.key(item, "profile"), self.base_dir,
                                           base=profile) if "profile" in item else profile
                if sel.profile is not None:
                    sel.shape = self._shape(item, at, shape or {})
                    sel.profile = self._shaped(sel.profile, sel.shape, at)
            out.append(sel)
        return out

    def _select(self, item: dict, where: Where, registry: Registry, filters: tuple[str, ...]) -> list[str]:
        kind = registry.kind
        # a bare string item ("vq") reports at the item; a mapping's name at its own line
        name_where = where.key(item, "name") if "name" in getattr(item, "key_lines", {}) else where
        pattern = expect_str(item.get("name", "*"), name_where, f"a {kind} name or glob")
        if is_glob(pattern):
            names = registry.list(pattern)
        else:
            try:
                registry.get(pattern)
            except UserError as exc:
                if self.skip_unknown:
                    self.skipped.append(f"{where.path} (line {where.line}): {exc}")
                    return []
                hint = " (if it comes from a plugin, list it under plugins:)"
                raise name_where.error(f"{exc}{hint}") from None
            names = [pattern]
        if "where" in item:
            cond = check_mapping(item["where"], where.key(item, "where"), filters)
            for key, wanted in cond.items():
                allowed = wanted if isinstance(wanted, list) else [wanted]
                names = [n for n in names if entry_matches(registry, n, key, allowed)]
        if "exclude" in item:
            drop = expect_str_list(item["exclude"], where.key(item, "exclude"), "a list of names or globs")
            names = [n for n in names if not any(fnmatch.fnmatchcase(n, d) for d in drop)]
        if not names:
            registered = registry.list()
            message = (f"selects no registered {kind} (pattern {pattern!r}"
                       f"{', where ' + str(plain(item['where'])) if 'where' in item else ''}"
                       f"{', exclude ' + str(plain(item['exclude'])) if 'exclude' in item else ''}; "
                       f"registered {kind}s: {', '.join(registered) or 'none'})")
            if self.skip_unknown:
                self.skipped.append(f"{where.path} (line {where.line}): {message}")
                return []
            raise where.error(message)
        return names


__all__ = ["ConfigError", "Sweep", "SweepRun", "check_buildable", "list_suites", "load_sweep", "parse_sweep",
           "resolve_sweep_path"]
