"""Build every distinct task and method of a sweep once on the CPU before anything is submitted.

:func:`check_buildable` is re-exported by :mod:`vqbench.slurm.sweep` (``from vqbench.slurm.sweep import
check_buildable`` keeps working); :mod:`vqbench.slurm.launch` calls it before every submission, dry runs too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vqbench.errors import UserError
from vqbench.registry import METHODS, TASKS, Registry
from vqbench.slurm.config import Where
from vqbench.spec import canonical_json

if TYPE_CHECKING:
    from vqbench.slurm.sweep import Sweep


def check_buildable(sweep: Sweep) -> None:
    """Build every distinct task and method of ``sweep`` once on the CPU, as its runs will, before any submission.

    Tasks are built from their params (constructors check values and load no data); each distinct method
    with its params is built for the ``latent_dim`` and ``codebook_size`` of the tasks it runs on, so a level,
    threshold or weight a method refuses in ``__init__`` fails here, as a one-line :class:`ConfigError` naming
    the sweep file, the line, the method and the refused value, instead of in a job. For runs of more than one
    process, a method that keeps state in buffers but declares no ``distributed_sync`` is refused the same way
    (the runner would refuse it in every job). Builds draw from a forked RNG: the caller's random state is left
    as it was.
    """
    import torch

    from vqbench.quantizer import uses_undeclared_state

    tasks: dict[tuple[str, str], tuple[int, int]] = {}
    built: set[tuple[str, str, int, int, bool]] = set()
    with torch.random.fork_rng(devices=[]):
        for run in sweep.runs:
            spec = run.spec
            task_key = (spec.task, canonical_json(spec.task_params))
            if task_key not in tasks:
                try:
                    task = TASKS.create(spec.task, **spec.task_params)
                except Exception as exc:  # noqa: BLE001 - any refusal is reported with its place in the file
                    chosen = _params(TASKS, spec.task, spec.task_params)
                    raise _origin(sweep, "task", *task_key).error(
                        f"task {spec.task} cannot be built with {chosen}: {_reason(exc)}; fix the value (nothing "
                        "was submitted)") from None
                tasks[task_key] = (task.latent_dim, task.codebook_size)
            dim, size = tasks[task_key]
            method_json = canonical_json(spec.method_params)
            distributed = run.profile.world_size > 1
            if (spec.method, method_json, dim, size, distributed) in built:
                continue
            try:
                quantizer = METHODS.create(spec.method, dim=dim, codebook_size=size, **spec.method_params)
            except Exception as exc:  # noqa: BLE001 - any refusal is reported with its place in the file
                chosen = _params(METHODS, spec.method, spec.method_params)
                raise _origin(sweep, "method", spec.method, method_json).error(
                    f"method {spec.method} cannot be built with {chosen} for task {spec.task} "
                    f"(dim {dim}, codebook_size {size}): {_reason(exc)}; fix the value (nothing was submitted)"
                ) from None
            undeclared = uses_undeclared_state(quantizer) if distributed else []
            if undeclared:
                shown = ", ".join(undeclared[:4]) + (f" and {len(undeclared) - 4} more" if len(undeclared) > 4 else "")
                raise _origin(sweep, "method", spec.method, method_json).error(
                    f"method {spec.method} keeps state (buffers {shown}) but declares no distributed_sync, so its "
                    f"ranks would drift apart in runs of {run.profile.world_size} processes: run it with one process "
                    "per run, or declare (and implement) distributed_sync in the method (nothing was submitted)")
            built.add((spec.method, method_json, dim, size, distributed))


def _origin(sweep: Sweep, kind: str, name: str, params_json: str) -> Where:
    where = sweep.origins.get((kind, name, params_json))
    return where or Where(str(sweep.path) if sweep.path else f"sweep {sweep.name}", f"{kind}s")


def _params(registry: Registry, name: str, params: dict[str, Any]) -> str:
    """The params that differ from the entry's defaults (the ones the sweep chose), as ``k=v, ...``."""
    defaults = registry.get(name).defaults
    chosen = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
    return ", ".join(f"{k}={v!r}" for k, v in sorted(chosen.items())) or "its defaults"


def _reason(exc: BaseException) -> str:
    """The builder's own message (the registry wraps a ValueError in a UserError that repeats the params)."""
    cause = exc.__cause__ if isinstance(exc, UserError) and exc.__cause__ is not None else exc
    return " ".join(str(cause).split()) or type(cause).__name__


__all__ = ["check_buildable"]
