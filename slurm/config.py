"""YAML with line numbers, and one-line validation errors that name the file, line and key.

Sweep files and executor profiles are read with :func:`load_yaml`: mappings come back as
:class:`LocatedDict` (a ``dict`` that remembers the line of each key) and sequences as
:class:`LocatedList`, so a validator can say ``sweep.yaml:12: methods[1].params.beta: ...``.
Duplicate keys are an error (plain YAML keeps the last one silently), and ``1e-3`` is a float
(YAML 1.1 would read it as a string). Plain dicts and lists validate too, without line numbers.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from vqbench.errors import UserError


class ConfigError(UserError):
    """A sweep file or profile that does not validate (one line: where, which key, what to do)."""


class LocatedDict(dict):
    """A mapping read from YAML: ``line`` of the mapping and ``key_lines[key]`` of each value."""

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[str, int] = {}


class LocatedList(list):
    """A sequence read from YAML: ``line`` of the sequence and ``item_lines[i]`` of each item."""

    line: int | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = []


_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class _Loader(yaml.SafeLoader):
    pass


# YAML 1.1 reads 1e-3 as a string; sweep files mean a float
_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    out = LocatedDict()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is not a string: quote it",
                                                    key_node.start_mark)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {out.key_lines[key]}): keep one",
                key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    out = LocatedList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: Path) -> Any:
    """Parse ``path``; syntax errors become a one-line :class:`ConfigError` with the line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise ConfigError(f"{path}{line}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None


class Where:
    """A position in a config document, for error messages: ``source:line: key.path: message``."""

    def __init__(self, source: str, path: str = "", line: int | None = None) -> None:
        self.source, self.path, self.line = source, path, line

    def key(self, mapping: Any, key: str) -> Where:
        line = getattr(mapping, "key_lines", {}).get(key, getattr(mapping, "line", None)) or self.line
        return Where(self.source, f"{self.path}.{key}" if self.path else key, line)

    def item(self, seq: Any, index: int) -> Where:
        lines = getattr(seq, "item_lines", [])
        line = lines[index] if index < len(lines) else self.line
        return Where(self.source, f"{self.path}[{index}]", line)

    def error(self, message: str) -> ConfigError:
        loc = f"{self.source}:{self.line}" if self.line else self.source
        return ConfigError(f"{loc}: {self.path + ': ' if self.path else ''}{' '.join(message.split())}")


def suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def check_mapping(value: Any, where: Where, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
    """``value`` must be a mapping whose keys are ``allowed`` and include ``required``."""
    if not isinstance(value, dict):
        raise where.error(f"expected a mapping with keys {', '.join(allowed)}; got {type_name(value)}")
    for key in value:
        if key not in allowed:
            raise where.key(value, key).error(
                f"unknown key {key!r}{suggest(key, allowed)}; allowed here: {', '.join(allowed)}")
    for key in required:
        if key not in value:
            raise where.error(f"missing required key {key!r}")
    return value


def type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def expect_str(value: Any, where: Where, what: str = "a string") -> str:
    if not isinstance(value, str) or not value:
        raise where.error(f"expected {what}; got {type_name(value)}")
    return value


def expect_int(value: Any, where: Where, minimum: int | None = None, what: str = "an integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(f"expected {what}; got {type_name(value)}")
    if minimum is not None and value < minimum:
        raise where.error(f"expected {what} >= {minimum}; got {value}")
    return value


def expect_bool(value: Any, where: Where) -> bool:
    if not isinstance(value, bool):
        raise where.error(f"expected true or false; got {type_name(value)}")
    return value


def expect_str_list(value: Any, where: Where, what: str = "a list of strings") -> list[str]:
    """A list of non-empty strings (a single string counts as a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise where.error(f"expected {what}; got {type_name(value)}")
    for i, item in enumerate(value):
        expect_str(item, where.item(value, i), "a non-empty string")
    return list(value)


def plain(value: Any) -> Any:
    """Located containers -> plain dicts and lists (for specs and hashing)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
