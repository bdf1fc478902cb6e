"""Executor profiles: where and with which resources a sweep's jobs run.

A profile is a small YAML mapping (``slurm/profiles/<name>.yaml``, or inline under ``executor:`` in a
sweep file, optionally on top of a named one with ``profile: NAME``)::

    cluster: slurm            # slurm | local | debug (`--executor` overrides it)
    partition: gpu            # Slurm partition (default: the cluster's default partition)
    gpus: 1                   # GPUs of a single-process run (--gpus-per-node); 0: a CPU profile
    node_gpus: 4              # GPUs a node of this partition has: a run of more GPUs spans several nodes
    cpus: 8                   # CPUs per process (--cpus-per-task; also torch's thread count in the job)
    mem: 32G                  # memory per process: a number of GB or a Slurm size (500M, 32G); a job
                              # of several processes per node asks for that many times this (--mem)
    time: 240                 # wall time per run in minutes, or "H:MM:SS" / "D-H:MM:SS"
    array_parallelism: 64     # at most this many runs at once (Slurm's %-throttle; the local executor
                              # also never runs more processes than the CPUs allow, `cpus` each)
    max_array_size: 1000      # split arrays below this (default: the cluster's MaxArraySize)
    slurm_setup: ["module load cuda"]   # shell lines run in the job before Python starts
    additional_parameters: {exclude: node13}   # any other sbatch option (without the leading --)
    account: ...  qos: ...  constraint: ...
    signal_delay_s: 120       # Slurm sends USR2 this long before the time limit: checkpoint + requeue
    max_num_timeout: 3        # requeues after a timeout before the run counts as failed
    snapshot: true            # run a copy of the code as it was when submitted (recommended)
    python: null              # the Python command on the compute nodes (default: this interpreter)

Runs that share a profile are submitted together as job arrays; runs of different profiles (a task
item in a sweep may set its own ``profile``) go into separate arrays.

The shape of a data-parallel run is not a profile key but a sweep key (``gpus_per_run`` on a GPU profile,
``ranks_per_run`` on a CPU profile, ``nodes``; see :mod:`vqbench.slurm.sweep`): :meth:`Profile.with_ranks`
resolves it into ``nodes`` x ``ranks_per_node`` processes, one Slurm task each (one GPU each on a GPU profile).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vqbench.slurm.config import (
    ConfigError,
    Where,
    check_mapping,
    expect_bool,
    expect_int,
    expect_str,
    expect_str_list,
    load_yaml,
    plain,
    suggest,
    type_name,
)
from vqbench.spec import canonical_json

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
CLUSTERS = ("slurm", "local", "debug")
_MEM = re.compile(r"^\d+(\.\d+)?[KMGT]?B?$", re.I)
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?$")


@dataclass(frozen=True)
class Profile:
    """Resources and placement of a sweep's jobs (see the module docstring for each field)."""

    name: str = "inline"
    description: str = ""
    cluster: str = "local"
    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem: str | None = None
    time: int = 60
    array_parallelism: int | None = None
    max_array_size: int | None = None
    slurm_setup: tuple[str, ...] = ()
    additional_parameters: tuple[tuple[str, Any], ...] = field(default=())
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120
    max_num_timeout: int = 3
    snapshot: bool = True
    python: str | None = None
    node_gpus: int | None = None
    # the run's shape (from the sweep's gpus_per_run / ranks_per_run / nodes, not a profile key)
    nodes: int = 1
    ranks_per_node: int = 1

    @property
    def world_size(self) -> int:
        """Processes (ranks) of one run: ``nodes`` x ``ranks_per_node``."""
        return self.nodes * self.ranks_per_node

    def with_ranks(self, ranks: int, nodes: int | None = None) -> Profile:
        """This profile for runs of ``ranks`` processes over ``nodes`` nodes (default: the fewest nodes of
        ``node_gpus`` GPUs that hold them on a GPU profile, else one); ValueError when they do not fit."""
        if nodes is None:
            nodes = -(-ranks // self.node_gpus) if self.gpus and self.node_gpus else 1
        if nodes > ranks:
            raise ValueError(f"{ranks} rank(s) cannot fill {nodes} nodes: use at most nodes: {ranks}")
        if ranks % nodes:
            raise ValueError(f"{ranks} ranks do not spread evenly over {nodes} nodes: use a multiple of {nodes}")
        per_node = ranks // nodes
        if self.gpus and self.node_gpus and per_node > self.node_gpus:
            raise ValueError(f"{per_node} GPUs per node but the nodes of profile {self.name} have {self.node_gpus}: "
                             f"use nodes: {-(-ranks // self.node_gpus)} or more")
        return replace(self, nodes=nodes, ranks_per_node=per_node)

    def key(self) -> str:
        """What makes two profiles the same resource group (the name and description do not)."""
        data = asdict(self)
        data.pop("name")
        data.pop("description")
        return canonical_json(data)

    def label(self) -> str:
        if self.world_size > 1:
            per_rank = f"1 gpu + {self.cpus} cpu" if self.gpus else f"{self.cpus} cpu"
            parts = [self.name, f"{self.nodes} node(s) x {self.ranks_per_node} rank(s) of {per_rank}"]
        else:
            parts = [self.name, f"{self.cpus} cpu"] + ([f"{self.gpus} gpu"] if self.gpus else [])
        if self.mem:
            parts.append(f"{self.mem} per rank" if self.world_size > 1 else self.mem)
        parts.append(f"{self.time} min")
        if self.partition:
            parts.append(f"partition {self.partition}")
        return ", ".join(parts)

    def local_parallelism(self) -> int:
        """How many runs the local executor runs at once: what this machine's CPUs allow (``cpus`` each),
        and at most ``array_parallelism``."""
        fits = max(1, (os.cpu_count() or 1) // max(1, self.cpus * self.ranks_per_node))
        return min(fits, self.array_parallelism) if self.array_parallelism else fits

    def slurm_parameters(self, job_name: str, setup: list[str]) -> dict[str, Any]:
        """Keyword arguments of ``submitit.SlurmExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "job_name": job_name, "time": self.time, "cpus_per_task": self.cpus,
            "signal_delay_s": self.signal_delay_s, "setup": list(self.slurm_setup) + setup,
            "array_parallelism": self.array_parallelism or 256,
        }
        if self.world_size > 1:
            # one Slurm task per rank (one GPU each on a GPU profile); a rank that dies ends the whole step
            params.update(nodes=self.nodes, ntasks_per_node=self.ranks_per_node,
                          srun_args=["--kill-on-bad-exit=1"])
            if self.gpus:
                params["gpus_per_node"] = self.ranks_per_node
        elif self.gpus:
            params["gpus_per_node"] = self.gpus
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        if self.mem is not None:
            params["mem"] = scale_mem(self.mem, self.ranks_per_node)
        if self.additional_parameters:
            params["additional_parameters"] = dict(self.additional_parameters)
        return params


PROFILE_KEYS = tuple(f.name for f in fields(Profile) if f.name not in ("name", "nodes", "ranks_per_node")) + \
    ("profile",)


def scale_mem(mem: str, factor: int) -> str:
    """A Slurm memory size times ``factor`` (``"32G"``, 4 -> ``"128G"``; no unit means MB, as for Slurm)."""
    if factor == 1:
        return mem
    m = re.match(r"^(\d+(?:\.\d+)?)([KMGT]?)$", mem.upper())
    if m is None:
        return mem
    value = float(m.group(1)) * factor
    return f"{int(value) if value.is_integer() else value}{m.group(2)}"


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _parse_time(value: Any, where: Where) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise where.error(f"expected a positive number of minutes; got {value}")
        return value
    if isinstance(value, str):
        m = _TIME.match(value.strip())
        if m:
            days, a, b, c = m.groups()
            # D-H:MM[:SS], H:MM:SS or MM:SS (Slurm reads "a:b" as minutes:seconds)
            hours, minutes, seconds = (int(a), int(b), int(c)) if c is not None else \
                ((0, int(a), int(b)) if days is None else (int(a), int(b), 0))
            total = int(days or 0) * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)
            if total >= 1:
                return total
    raise where.error(f"expected minutes (e.g. 240) or a Slurm time like '4:00:00' or '1-12:00:00'; "
                      f"got {type_name(value)}")


def _parse_mem(value: Any, where: Where) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return f"{int(value)}G" if float(value).is_integer() else f"{int(value * 1024)}M"
    if isinstance(value, str) and _MEM.match(value.strip()):
        return value.strip().upper().removesuffix("B") or value
    raise where.error(f"expected a memory size in GB (e.g. 16) or a Slurm size like '500M' or '32G'; "
                      f"got {type_name(value)}")


def _profile_file(name: str, base_dir: Path | None, where: Where) -> Path:
    candidates = []
    if name.endswith((".yaml", ".yml")) or "/" in name:
        candidates.append((base_dir or Path.cwd()) / name)
    else:
        candidates.append(PROFILES_DIR / f"{name}.yaml")
    for path in candidates:
        if path.is_file():
            return path
    known = list_profiles()
    raise where.error(f"no profile {name!r}{suggest(name, known)}: use one of {', '.join(known)}, a path "
                      "to a profile .yaml, or an inline mapping")


def load_profile(value: Any, where: Where, base_dir: Path | None = None, _seen: tuple[str, ...] = (),
                 base: Profile | None = None) -> Profile:
    """A profile from a name (``slurm/profiles/NAME.yaml``), a path, or a mapping of keys on top of the
    profile its ``profile:`` key names, else on top of ``base`` (default: the defaults above)."""
    if isinstance(value, str):
        path = _profile_file(value, base_dir, where)
        if str(path) in _seen:
            raise where.error(f"profile {value!r} includes itself")
        data = load_yaml(path)
        if data is None:
            data = {}
        profile = parse_profile(data, Where(str(path)), path.parent, _seen + (str(path),))
        return profile if profile.name != "inline" else replace(profile, name=path.stem)
    if isinstance(value, dict):
        return parse_profile(value, where, base_dir, _seen, base)
    raise where.error(f"expected a profile name (one of {', '.join(list_profiles())}) or a mapping; "
                      f"got {type_name(value)}")


def parse_profile(data: Any, where: Where, base_dir: Path | None = None, _seen: tuple[str, ...] = (),
                  base: Profile | None = None) -> Profile:
    check_mapping(data, where, PROFILE_KEYS)
    if "profile" in data:
        base = load_profile(data["profile"], where.key(data, "profile"), base_dir, _seen)
    base = base or Profile()
    values: dict[str, Any] = {}
    for key, raw in data.items():
        at = where.key(data, key)
        if key == "profile":
            continue
        if key == "cluster":
            value = expect_str(raw, at)
            if value not in CLUSTERS:
                raise at.error(f"unknown cluster {value!r}{suggest(value, CLUSTERS)}: use {', '.join(CLUSTERS)}")
        elif key in ("description", "partition", "account", "qos", "constraint", "python"):
            value = None if raw is None and key != "description" else expect_str(raw, at)
        elif key == "gpus":
            value = expect_int(raw, at, 0, "a number of GPUs")
        elif key == "node_gpus":
            value = None if raw is None else expect_int(raw, at, 1, "the number of GPUs of a node")
        elif key == "cpus":
            value = expect_int(raw, at, 1, "a number of CPUs")
        elif key in ("array_parallelism", "max_array_size"):
            value = None if raw is None else expect_int(raw, at, 1, "a positive integer")
        elif key == "signal_delay_s":
            value = expect_int(raw, at, 0, "seconds")
        elif key == "max_num_timeout":
            value = expect_int(raw, at, 0, "a number of requeues")
        elif key == "mem":
            value = None if raw is None else _parse_mem(raw, at)
        elif key == "time":
            value = _parse_time(raw, at)
        elif key == "slurm_setup":
            value = tuple(expect_str_list(raw, at, "a list of shell lines"))
        elif key == "additional_parameters":
            if not isinstance(raw, dict):
                raise at.error(f"expected a mapping of sbatch options (e.g. {{exclude: node13}}); "
                               f"got {type_name(raw)}")
            for opt, opt_value in raw.items():
                if opt.startswith("-"):
                    raise at.key(raw, opt).error(f"write the sbatch option without dashes: {opt.lstrip('-')!r}")
                if isinstance(opt_value, (dict, list)):
                    raise at.key(raw, opt).error("an sbatch option value must be a string, number or true")
            value = tuple(sorted(plain(raw).items()))
        elif key == "snapshot":
            value = expect_bool(raw, at)
        else:  # pragma: no cover - PROFILE_KEYS and this chain list the same keys
            raise ConfigError(f"unhandled profile key {key}")
        values[key] = value
    profile = replace(base, **values)
    if profile.signal_delay_s >= 60 * profile.time:
        if "signal_delay_s" in values:
            raise where.key(data, "signal_delay_s").error(
                f"the checkpoint signal must come before the time limit ({profile.time} min): use fewer seconds")
        profile = replace(profile, signal_delay_s=60 * profile.time // 4)
    return profile
