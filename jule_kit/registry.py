"""The plugin registry: pluggy over the ``julekit`` entry-point group.

Built-ins and third-party plugins arrive the same way: a module listed under
``[project.entry-points.julekit]`` implements ``julekit_register_plugins(register)``.

``JULEKIT_LOAD_PLUGINS`` restricts loading: a comma-separated list of distribution
names to load besides julekit itself (empty: julekit's built-ins only).

One name means one plugin: when two distributions register the same kind and name, the bare
name is an error naming both, and a recipe chooses one as ``<distribution>:<name>``
(``linkage: julekit:gdl``, ``linkage: {name: "julekit-single-link:gdl"}``), or
``JULEKIT_LOAD_PLUGINS`` leaves the other distribution out.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
import re
import typing
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, RecipeError
from .hookspecs import KINDS, PROJECT

LOAD_ENV = "JULEKIT_LOAD_PLUGINS"
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_MISSING = object()


@dataclass(frozen=True)
class Setting:
    """One typed setting of a plugin, read from its ``__init__`` signature."""

    name: str
    type: Any
    default: Any
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def type_name(self) -> str:
        return _type_name(self.type)

    def coerce(self, value: Any, where: str) -> Any:
        """Return ``value`` checked against the type; raise RecipeError naming ``where``."""
        ok, result = _coerce(self.type, value)
        if not ok:
            raise RecipeError(f"{where}: expected {self.type_name()}, got {value!r}")
        return result


@dataclass(frozen=True)
class PluginInfo:
    kind: str
    name: str
    cls: type
    summary: str
    settings: dict[str, Setting] = field(default_factory=dict)
    distribution: str = ""
    version: str = ""

    def defaults(self) -> dict[str, Any]:
        return {s.name: s.default for s in self.settings.values() if not s.required}

    def create(self, values: dict[str, Any] | None = None) -> Any:
        return self.cls(**(values or {}))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "summary": self.summary,
            "settings": {
                s.name: {"type": s.type_name(), "default": None if s.required else s.default, "help": s.help}
                for s in self.settings.values()
            },
        }


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any) -> tuple[bool, Any]:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if tp is type(None):
        return value is None, None
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        for arg in typing.get_args(tp):
            ok, result = _coerce(arg, value)
            if ok:
                return True, result
        return False, None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, None
        args = typing.get_args(tp)
        items = []
        for item in value:
            ok, result = _coerce(args[0], item) if args else (True, item)
            if not ok:
                return False, None
            items.append(result)
        return True, items
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return True, float(value)  # YAML 1.1 (PyYAML) reads 1e-3, without a dot, as text
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, None
        return True, float(value)
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def settings_of(cls: type) -> dict[str, Setting]:
    """The settings a plugin class accepts: its keyword-only ``__init__`` parameters."""
    if cls.__init__ is object.__init__:
        return {}
    hints = typing.get_type_hints(cls.__init__)
    helps = getattr(cls, "settings_help", {}) or {}
    result = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = _MISSING if p.default is p.empty else p.default
        result[p.name] = Setting(p.name, hints.get(p.name, Any), default, helps.get(p.name, ""))
    return result


def normal_distribution(name: str) -> str:
    """A distribution name as pip compares them: ``Julekit_Single_Link`` = ``julekit-single-link``."""
    return re.sub(r"[-_.]+", "-", name).lower()


class Registry:
    """Every plugin known to this process, by (kind, name): one provider each, or several (ambiguous)."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._plugins: dict[tuple[str, str], list[PluginInfo]] = {}
        dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
        for impl in pm.hook.julekit_register_plugins.get_hookimpls():
            dist = dists.get(id(impl.plugin))
            dist_name = dist.project_name if dist is not None else impl.plugin_name
            dist_version = dist.version if dist is not None else ""
            impl.function(register=lambda cls, _d=dist_name, _v=dist_version: self._add(cls, _d, _v))

    def _add(self, cls: type, distribution: str, version: str) -> None:
        kind, name = getattr(cls, "kind", None), getattr(cls, "name", None)
        if kind not in KINDS:
            raise PluginError(
                f"plugin class {cls.__qualname__} from distribution {distribution!r} has kind {kind!r}; "
                f"expected one of {', '.join(KINDS)}"
            )
        if not isinstance(name, str) or not name or ":" in name:
            # ":" separates a distribution from a name (julekit:gdl) and a name from its shorthand value
            raise PluginError(f"plugin class {cls.__qualname__} from distribution {distribution!r} has "
                              f"{'no name' if not name else f'the name {name!r}; a name cannot hold a colon'}")
        providers = self._plugins.setdefault((kind, name), [])
        for other in providers:
            if normal_distribution(other.distribution) == normal_distribution(distribution):
                if other.cls is cls:
                    return  # the same class registered twice: nothing is replaced
                raise PluginError(f"distribution {distribution!r} registers two {kind} plugins named {name!r} "
                                  f"({other.cls.__qualname__} and {cls.__qualname__}); give each its own name")
        summary = getattr(cls, "summary", "") or (inspect.getdoc(cls) or "").split("\n")[0]
        providers.append(PluginInfo(kind, name, cls, summary, settings_of(cls), distribution, version))

    def all(self, kind: str | None = None, pattern: str = "*") -> list[PluginInfo]:
        """Plugins sorted by kind, name, then distribution; ``pattern`` is an fnmatch filter on names."""
        order = {k: i for i, k in enumerate(KINDS)}
        found = [
            p for (k, n), providers in self._plugins.items() for p in providers
            if (kind is None or k == kind) and fnmatch.fnmatch(n, pattern)
        ]
        return sorted(found, key=lambda p: (order[p.kind], p.name, p.distribution))

    def names(self, kind: str) -> list[str]:
        return list(dict.fromkeys(p.name for p in self.all(kind)))

    def ambiguous(self) -> list[list[PluginInfo]]:
        """The (kind, name) pairs that several distributions register, each as its providers."""
        return [providers for _, providers in sorted(self._plugins.items()) if len(providers) > 1]

    def is_distribution(self, name: str) -> bool:
        """Whether ``name`` is a distribution that registered plugins (``julekit`` in ``julekit:gdl``)."""
        wanted = normal_distribution(name)
        return any(normal_distribution(p.distribution) == wanted for p in self.all())

    def get(self, kind: str, name: str, where: str = "") -> PluginInfo:
        """The plugin ``name`` (or ``<distribution>:<name>``) of ``kind``; RecipeError/PluginError when
        there is none or several distributions register the bare name."""
        prefix = f"{where}: " if where else ""
        dist, _, bare = str(name).rpartition(":")
        providers = self._plugins.get((kind, bare), [])
        if dist:
            found = [p for p in providers if normal_distribution(p.distribution) == normal_distribution(dist)]
            if found:
                return found[0]
            if providers:
                raise RecipeError(f"{prefix}distribution {dist!r} registers no {kind} plugin {bare!r} (it comes "
                                  f"from {', '.join(p.distribution for p in providers)})")
        elif len(providers) == 1:
            return providers[0]
        elif providers:
            others = [repr(p.distribution) for p in providers if normal_distribution(p.distribution) != PROJECT]
            raise PluginError(
                f"{prefix}{kind} plugin {bare!r} is registered by {'two' if len(providers) == 2 else len(providers)} "
                f"distributions, {' and '.join(repr(p.distribution) for p in providers)}; choose one in the recipe "
                "as " + " or ".join(f"{kind}: {p.distribution}:{bare}" for p in providers)
                + f", or leave {' or '.join(others)} out of {LOAD_ENV} (the distributions to load besides julekit)"
            )
        known = self.names(kind)
        close = difflib.get_close_matches(bare, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RecipeError(
            f"{prefix}unknown {kind} plugin {name!r}{hint} (registered: {', '.join(known) or 'none'})"
        )


def _allowed_distributions() -> set[str] | None:
    raw = os.environ.get(LOAD_ENV)
    if raw is None:
        return None
    return {PROJECT} | {normal_distribution(d.strip()) for d in raw.split(",") if d.strip()}


def plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with every allowed ``julekit`` entry point loaded."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    allowed = _allowed_distributions()
    for ep in entry_points(group=PROJECT):
        dist = ep.dist.name if ep.dist is not None else "?"
        if allowed is not None and normal_distribution(dist) not in allowed:
            pm.set_blocked(ep.name)
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            pm.load_setuptools_entrypoints(PROJECT, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not look like a julekit bug
            raise PluginError(
                f"plugin {ep.name!r} from distribution {dist!r} failed to load ({ep.value}): "
                f"{type(exc).__name__}: {exc}; uninstall it or set {LOAD_ENV} to skip it"
            ) from None
    pm.check_pending()
    return pm


_registry: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry (built once, lazily)."""
    global _registry
    if _registry is None or refresh:
        registry = Registry(plugin_manager())
        if not registry.all():
            raise PluginError(
                "no julekit plugins are registered: install the package (pip install -e .) "
                "so its entry points exist"
            )
        _registry = registry
    return _registry


def list_plugins(pattern: str = "*", kind: str | None = None) -> list[str]:
    """``kind:name`` of registered plugins matching an fnmatch ``pattern`` (like timm.list_models)."""
    return [f"{p.kind}:{p.name}" for p in get_registry().all(kind, pattern)]
