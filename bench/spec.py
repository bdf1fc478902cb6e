"""RunSpec: everything that decides a run's result, and its content-addressed ``run_id``.

A spec holds *resolved* parameters (registry defaults merged with overrides, see :func:`make_spec`)
and the task's and method's registry versions, so the id changes whenever anything that can change
the numbers changes, and never otherwise. ``tags`` are labels (suite names, notes) and are not part
of the id. This module imports only the registry and errors (no torch): sweep files parse without it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from vqbench.errors import UserError
from vqbench.registry import METHODS, TASKS

SPEC_FORMAT = 1  # bump if the canonical form below changes (changes every id)


@dataclass(frozen=True)
class Budget:
    """How long and how a run trains. ``eval_interval`` counts optimizer steps."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    eval_interval: int = 250
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_interval: int = 0  # 0: checkpoint at every eval

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"budget.{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"budget.lr must be a positive number, got {self.lr!r}")
        if self.warmup_steps < 0 or self.checkpoint_interval < 0 or self.grad_clip < 0:
            raise ValueError("budget.warmup_steps, checkpoint_interval and grad_clip must be >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budget:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown budget key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def with_overrides(self, **overrides: Any) -> Budget:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _canonical(value: Any) -> Any:
    """JSON-able canonical form: dict keys sorted, tuples as lists, floats that are ints kept as floats."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"parameter value {value!r} of type {type(value).__name__} is not JSON-like "
                    "(use numbers, strings, booleans, lists and dicts)")


def canonical_json(value: Any) -> str:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class RunSpec:
    """One (task x method x params x seed x budget) point of the benchmark grid."""

    task: str
    method: str
    task_params: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    task_version: int = 1
    method_version: int = 1
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # validate JSON-ability early: a bad value fails at spec time, not in a Slurm job
        canonical_json(self.task_params)
        canonical_json(self.method_params)
        object.__setattr__(self, "tags", tuple(self.tags))

    def identity(self) -> dict[str, Any]:
        """What the id hashes: everything but tags."""
        return {
            "format": SPEC_FORMAT,
            "task": self.task, "task_version": self.task_version, "task_params": self.task_params,
            "method": self.method, "method_version": self.method_version,
            "method_params": self.method_params,
            "seed": self.seed, "budget": asdict(self.budget),
        }

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()
        return digest[:16]

    def to_dict(self) -> dict[str, Any]:
        data = self.identity()
        data.pop("format")
        data["tags"] = list(self.tags)
        return data

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        data = dict(data)
        data.pop("format", None)
        data["budget"] = Budget.from_dict(data.get("budget", {}))
        data["tags"] = tuple(data.get("tags", ()))
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls.from_dict(json.loads(text))


def parse_value(text: str) -> Any:
    """A ``--set`` value (``vqbench run --set k=TEXT``): JSON if it parses (numbers, booleans, null, lists,
    dicts), else the string; text that starts like JSON but does not parse is a ValueError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if text[:1] in "[{\"":
            raise ValueError(f"bad --set value {text!r}: it starts like JSON but does not parse") from None
        return text


def task_budget(task: str, budget: str | Budget | dict[str, Any] | None = "quick") -> Budget:
    """A task's named budget (``quick``/``paper``...), a Budget, or a dict of overrides of ``quick``."""
    entry = TASKS.get(task)
    if isinstance(budget, Budget):
        return budget
    named = entry.budgets or {}
    if budget is None or isinstance(budget, str):
        name = budget or "quick"
        if name not in named:
            if not named and name == "quick":
                return Budget()
            raise UserError(f"task {task!r} has no budget named {name!r}; it has: {', '.join(named) or 'none'}")
        return Budget.from_dict(named[name])
    base = dict(named.get("quick", {}))
    base.update(budget)
    try:
        return Budget.from_dict(base)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad budget for task {task!r}: {exc}") from None


def make_spec(task: str, method: str, task_params: dict[str, Any] | None = None,
              method_params: dict[str, Any] | None = None, seed: int = 0,
              budget: str | Budget | dict[str, Any] | None = "quick", tags: tuple[str, ...] = ()) -> RunSpec:
    """Resolve names, defaults and versions through the registry into a RunSpec."""
    task_entry, method_entry = TASKS.get(task), METHODS.get(method)
    method_params = dict(method_params or {})
    if "dim" in method_params:
        raise UserError(f"method parameter 'dim' is set by the task ({task!r} latent_dim); "
                        "change the task's latent_dim instead")
    tp = TASKS.resolve_params(task, task_params)
    mp = METHODS.resolve_params(method, method_params)
    try:
        return RunSpec(task=task, method=method, task_params=tp, method_params=mp, seed=int(seed),
                       budget=task_budget(task, budget), task_version=task_entry.version,
                       method_version=method_entry.version, tags=tuple(tags))
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad run spec: {exc}") from None
