"""The ``vqbench run ...`` command shown on each run page: it recreates the run's spec, so its run id."""

from __future__ import annotations

import json
import shlex
from typing import Any

from vqbench.spec import parse_value


def cli_value(value: Any) -> str:
    """The ``--set`` text that the CLI (:func:`vqbench.spec.parse_value`) parses back to exactly ``value``."""
    if isinstance(value, str):
        try:
            parsed = parse_value(value)
        except ValueError:
            parsed = None
        if type(parsed) is str and parsed == value:
            return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _plugin_hint(source: Any) -> tuple[list[str], str]:
    """(``--plugin`` args, a comment line) for a method/task that came from a plugin."""
    if not isinstance(source, str) or not source or source == "vqbench":
        return [], ""
    if source.startswith("file:"):
        path, _, digest = source[len("file:"):].partition("#")
        return ["--plugin", path], (f"# plugin file {path} ({digest})" if digest else "")
    return [], f"# needs the plugin distribution: pip install '{source}'"


def reproduce_command(run: dict[str, Any]) -> str:
    """``vqbench run ...`` with every resolved parameter of the run's spec, so the same run id comes out
    (empty when the stored spec cannot be read)."""
    try:
        spec = json.loads(run["spec"])
        task, method, seed = spec["task"], spec["method"], int(spec["seed"])
    except (TypeError, ValueError, KeyError):
        return ""
    args = ["vqbench", "run"]
    comments = []
    seen_plugins: set[str] = set()
    for source in (run.get("method_source"), run.get("task_source")):
        plugin_args, comment = _plugin_hint(source)
        if plugin_args and plugin_args[1] not in seen_plugins:
            seen_plugins.add(plugin_args[1])
            args += plugin_args
        if comment:
            comments.append(comment)
    args += ["--task", task, "--method", method, "--seed", str(seed)]
    for scope, params in (("task", spec.get("task_params") or {}), ("method", spec.get("method_params") or {}),
                          ("budget", spec.get("budget") or {})):
        for key, value in sorted(params.items()):
            args += ["--set", f"{scope}.{key}={cli_value(value)}"]
    return "\n".join(comments + [" ".join(shlex.quote(a) for a in args)])
