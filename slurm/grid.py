"""The selection pieces of a sweep file's task and method items: globs, ``where:`` filters and the parameter
grid (``params`` axes, ``zip`` groups and ``fixed`` values) of one item; used by :mod:`vqbench.slurm.sweep`."""

from __future__ import annotations

import itertools
from typing import Any

from vqbench.registry import Registry
from vqbench.slurm.config import Where, plain, type_name


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` is a glob (``*``, ``?`` or ``[``) rather than one name."""
    return any(c in pattern for c in "*?[")


def entry_matches(registry: Registry, name: str, key: str, allowed: list[Any]) -> bool:
    """Whether the entry ``name`` has one of the ``allowed`` values of metadata ``key`` (a ``where:`` filter)."""
    entry = registry.get(name)
    if key == "has_budget":
        return any(b in (entry.budgets or {}) for b in allowed)
    return getattr(entry, key) in allowed


def param_combos(item: dict, where: Where) -> list[dict[str, Any]]:
    """The parameter combinations of one item: product of ``params`` axes and ``zip`` groups, plus ``fixed``."""
    axes: list[list[dict[str, Any]]] = []
    owner: dict[str, str] = {}

    def claim(key: str, section: str, at: Where) -> None:
        if key in owner:
            raise at.error(f"parameter {key!r} is set in both {owner[key]} and {section}: set it once")
        owner[key] = section

    params = item.get("params", {})
    p_at = where.key(item, "params")
    if not isinstance(params, dict):
        raise p_at.error(f"expected a mapping of parameter -> value or list of values; got {type_name(params)}")
    for key, values in params.items():
        claim(key, "params", p_at.key(params, key))
        if isinstance(values, list):
            if not values:
                raise p_at.key(params, key).error("an empty list of values expands to nothing")
            axes.append([{key: plain(v)} for v in values])
        else:
            axes.append([{key: plain(values)}])
    fixed = item.get("fixed", {})
    f_at = where.key(item, "fixed")
    if not isinstance(fixed, dict):
        raise f_at.error(f"expected a mapping of parameter -> value; got {type_name(fixed)}")
    for key in fixed:
        claim(key, "fixed", f_at.key(fixed, key))
    groups = item.get("zip", [])
    z_at = where.key(item, "zip")
    if isinstance(groups, dict):
        groups = [groups]
    if not isinstance(groups, list):
        raise z_at.error(f"expected a list of mappings of parameter -> list (zipped together); got {type_name(groups)}")
    for gi, group in enumerate(groups):
        g_at = z_at.item(groups, gi) if isinstance(item.get("zip"), list) else z_at
        if not isinstance(group, dict) or not group:
            raise g_at.error(f"expected a mapping of parameter -> list of values; got {type_name(group)}")
        lengths = {}
        for key, values in group.items():
            claim(key, "zip", g_at.key(group, key))
            if not isinstance(values, list) or not values:
                raise g_at.key(group, key).error(f"zip needs a non-empty list of values; got {type_name(values)}")
            lengths[key] = len(values)
        if len(set(lengths.values())) > 1:
            raise g_at.error(f"zipped lists must have the same length; got {lengths}")
        n = next(iter(lengths.values()))
        axes.append([{key: plain(values[j]) for key, values in group.items()} for j in range(n)])
    combos = []
    for parts in itertools.product(*axes):
        combo: dict[str, Any] = {}
        for part in parts:
            combo.update(part)
        combo.update(plain(fixed))
        combos.append(combo)
    return combos or [dict(plain(fixed))]


__all__ = ["entry_matches", "is_glob", "param_combos"]
