"""The one registry of vqbench, timm-style: a decorator to register, a factory to build, a lister.

Two instances exist: :data:`METHODS` (quantizers) and :data:`TASKS`::

    @register_method("vq", version=1, paper="1711.00937", family="vq", description="...", beta=0.25)
    class VectorQuantizer(nn.Module): ...

    q = create_method("vq", dim=64, codebook_size=512, beta=0.5)
    list_methods("vq*")

Keyword arguments of the decorator other than the metadata keys (``version``, ``paper``, ``family``,
``description``, ``kind``, ``main_metric``, ``higher_is_better``, ``budgets``) are the entry's
default parameters; a preset of one class is just another registered name with other defaults.

Built-ins and plugins are found the same way: the entry-point groups ``vqbench.methods`` and
``vqbench.tasks`` (an entry point names a module, importing it registers its entries) plus
:func:`load_plugin` for a file or module given on the command line. A plugin that fails to import
is reported once, by name, and does not break the others. Each entry records its source, decided by the
module that registers it (:func:`source_of`), so import order never relabels an entry. This module imports
nothing of vqbench's.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import hashlib
import importlib
import importlib.metadata as importlib_metadata
import importlib.util
import inspect
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqbench.errors import UserError

_META_KEYS = ("version", "paper", "family", "description", "differences", "search_space", "kind", "main_metric",
              "higher_is_better", "budgets", "offline")


@dataclass(frozen=True)
class Entry:
    """One registered name: how to build it and what the leaderboard says about it."""

    name: str
    builder: Callable[..., Any]
    version: int = 1
    paper: str | None = None  # arXiv id, e.g. "1711.00937"
    family: str = "other"
    description: str = ""
    # methods: how this implementation differs from the authors' reference (shown on the method page)
    differences: str = ""
    # methods: the knobs `vqbench tune` samples, name -> (low, high, scale); see vqbench.tuning
    search_space: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    source: str = "vqbench"  # "vqbench", "<dist>==<version>" or "file:<path>#sha256=<hash>"
    # tasks only
    kind: str | None = None  # synthetic | reconstruction | generation
    main_metric: str | None = None
    higher_is_better: bool | None = None
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    offline: bool = True  # runs on data generated or shipped with packages (part of `vqbench quick`)

    @property
    def paper_url(self) -> str | None:
        return f"https://arxiv.org/abs/{self.paper}" if self.paper else None

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The builder's keyword parameters (name -> inspect.Parameter)."""
        sig = inspect.signature(self.builder)
        return {n: p for n, p in sig.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}

    def accepts_any_kwargs(self) -> bool:
        sig = inspect.signature(self.builder)
        return any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


# Where registrations come from while a plugin is being imported (set by the loaders below).
_current_source = threading.local()
# The module an entry point names -> that entry point's source label; filled before any entry point loads.
_module_sources: dict[str, str] = {}


@contextlib.contextmanager
def _registering_from(source: str) -> Iterator[None]:
    previous = getattr(_current_source, "value", None)
    _current_source.value = source
    try:
        yield
    finally:
        _current_source.value = previous


def _is_vqbench_module(module: str) -> bool:
    return module == "vqbench" or module.startswith("vqbench.")


def source_of(module: str | None) -> str:
    """The source label of a registration made by code in ``module`` (the module that calls the decorator).

    vqbench's own modules are ``"vqbench"`` and a module under an entry point's module is that entry point's
    source, whatever is being imported when they register (a plugin that imports ``vqbench.methods.vq``
    imports every built-in inside its own import). Any other module registers under the plugin being loaded
    (a file or module given to :func:`load_plugin`), else ``"vqbench"``.
    """
    if module:
        if _is_vqbench_module(module):
            return "vqbench"
        owners = [m for m in _module_sources if module == m or module.startswith(m + ".")]
        if owners:
            return _module_sources[max(owners, key=len)]
    return getattr(_current_source, "value", None) or "vqbench"


def _builder_key(builder: Callable[..., Any]) -> str:
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', repr(builder))}"


def _entry_point_source(ep: importlib_metadata.EntryPoint) -> str:
    """``"vqbench"`` for vqbench's own entry points (and ones without a distribution), else ``"<dist>==<version>"``."""
    dist = getattr(ep, "dist", None)
    dist_name = dist.metadata["Name"] if dist is not None else None
    return "vqbench" if dist_name in (None, "vqbench") else f"{dist_name}=={dist.version}"


class Registry:
    """Names -> :class:`Entry`, loaded from entry points on first use."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind  # "method" | "task"
        self.group = group  # entry-point group
        self._entries: dict[str, Entry] = {}
        self._loaded = False
        self.plugin_errors: dict[str, str] = {}  # plugin name -> error, reported once

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register ``builder`` (a class or function) under ``name``; returns it unchanged."""
        meta = {k: kwargs.pop(k) for k in list(kwargs) if k in _META_KEYS}
        defaults = kwargs

        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            caller = sys._getframe(1).f_globals.get("__name__")  # the module that registers
            self.add(Entry(name=name, builder=builder, defaults=dict(defaults), source=source_of(caller), **meta))
            return builder

        return decorator

    def add(self, entry: Entry) -> None:
        if not entry.name or any(c.isspace() for c in entry.name):
            raise UserError(f"invalid {self.kind} name {entry.name!r}: use a non-empty name without spaces")
        old = self._entries.get(entry.name)
        if old is not None:
            same = (_builder_key(old.builder) == _builder_key(entry.builder) and old.source == entry.source
                    and old.defaults == entry.defaults)
            if same:  # the same module imported twice (e.g. as file and as module): harmless
                return
            raise UserError(
                f"{self.kind} name {entry.name!r} is registered twice: by {old.source} "
                f"({_builder_key(old.builder)}) and by {entry.source} ({_builder_key(entry.builder)}); "
                f"rename one of them")
        if entry.builder is not None and not entry.accepts_any_kwargs():
            params = entry.parameters()
            unknown = [k for k in entry.defaults if k not in params]
            if unknown:
                raise UserError(f"{self.kind} {entry.name!r}: default(s) {unknown} are not parameters of "
                                f"{_builder_key(entry.builder)}")
        self._entries[entry.name] = entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests and interactive use)."""
        self._entries.pop(name, None)

    # -- discovery ----------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Import every module declared in this registry's entry-point group (once)."""
        if self._loaded:
            return
        self._loaded = True
        points = sorted(importlib_metadata.entry_points(group=self.group), key=lambda e: e.name)
        sources = [_entry_point_source(ep) for ep in points]
        for ep, source in zip(points, sources):  # before any import: see source_of
            if not _is_vqbench_module(ep.module):
                _module_sources.setdefault(ep.module, source)
        for ep, source in zip(points, sources):
            label = f"{source}:{ep.value}"
            try:
                with _registering_from(source):
                    ep.load()
            except UserError:
                raise
            except Exception as exc:  # a broken plugin must not break the others
                self._report_plugin_error(label, exc)

    def _report_plugin_error(self, label: str, exc: BaseException) -> None:
        if label not in self.plugin_errors:
            self.plugin_errors[label] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"vqbench {self.kind} plugin {label} failed to import and is skipped: "
                          f"{type(exc).__name__}: {exc}", stacklevel=3)

    # -- lookup ---------------------------------------------------------------------------------
    def get(self, name: str) -> Entry:
        self.load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"see `vqbench list {self.kind}s`"
            raise UserError(f"unknown {self.kind} {name!r}: {hint}") from None

    def __contains__(self, name: str) -> bool:
        self.load_entry_points()
        return name in self._entries

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a glob ``pattern`` (e.g. ``"vq*"``)."""
        self.load_entry_points()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.list(pattern)]

    def resolve_params(self, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults of ``name`` merged with ``overrides``; unknown keys fail with suggestions."""
        entry = self.get(name)
        overrides = dict(overrides or {})
        if not entry.accepts_any_kwargs():
            params = entry.parameters()
            for key in overrides:
                if key not in params:
                    close = difflib.get_close_matches(key, list(params), n=3, cutoff=0.5)
                    hint = f"did you mean {', '.join(close)}?" if close else \
                        f"its parameters are: {', '.join(sorted(params)) or 'none'}"
                    raise UserError(f"{self.kind} {name!r} has no parameter {key!r}: {hint}")
        return {**entry.defaults, **overrides}

    def create(self, name: str, **overrides: Any) -> Any:
        """Build ``name`` with its defaults updated by ``overrides``."""
        entry = self.get(name)
        params = self.resolve_params(name, overrides)
        try:
            obj = entry.builder(**params)
        except UserError:
            raise
        except (TypeError, ValueError) as exc:
            raise UserError(f"cannot build {self.kind} {name!r} with {params}: {exc}") from exc
        return obj


METHODS = Registry("method", "vqbench.methods")
TASKS = Registry("task", "vqbench.tasks")

register_method = METHODS.register
create_method = METHODS.create
list_methods = METHODS.list
register_task = TASKS.register
create_task = TASKS.create
list_tasks = TASKS.list

_loaded_plugins: dict[str, str] = {}  # resolved path or module name -> source label


def loaded_plugins() -> list[str]:
    """The plugins loaded with :func:`load_plugin` so far (resolved file paths or module names), in order."""
    return list(_loaded_plugins)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_plugin(spec: str) -> str:
    """Load a plugin given as a path to a ``.py`` file or as an importable module name.

    Returns the source label recorded on its entries (``file:<path>#sha256=<12 hex>`` or
    ``module:<name>``). Loading the same plugin twice is a no-op. A plugin that fails to import
    raises :class:`UserError` naming it (on the command line the user asked for it explicitly).
    """
    METHODS.load_entry_points()
    TASKS.load_entry_points()
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise UserError(f"plugin file {spec} does not exist: pass a path to a .py file or a module name")
        key = str(path.resolve())
        if key in _loaded_plugins:
            return _loaded_plugins[key]
        source = f"file:{key}#sha256={file_sha256(path)[:12]}"
        mod_name = "vqbench_plugin_" + hashlib.sha1(key.encode()).hexdigest()[:10]
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            with _registering_from(source):
                module_spec.loader.exec_module(module)
        except UserError:
            sys.modules.pop(mod_name, None)
            raise
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise UserError(f"plugin {spec} failed to import: {type(exc).__name__}: {exc}") from exc
    else:
        key = spec
        if key in _loaded_plugins:
            return _loaded_plugins[key]
        source = f"module:{spec}"
        if spec in sys.modules:  # already imported (e.g. via an entry point): entries already known
            _loaded_plugins[key] = source
            return source
        try:
            with _registering_from(source):
                importlib.import_module(spec)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"plugin {spec} failed to import: {type(exc).__name__}: {exc} "
                            f"(pass a .py path or an importable module name)") from exc
    _loaded_plugins[key] = source
    return source
