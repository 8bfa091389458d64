"""Find and build strategies by name, by entry point or by dotted path.

Lookup order for ``build(name_or_path, params)``:

1. a name registered on the registry (the built-ins, and anything :meth:`Registry.register` added);
2. an entry point of the group ``gridfleet.strategies`` (a user's package declares, in its
   ``pyproject.toml``, ``[project.entry-points."gridfleet.strategies"] my_name = "pkg.mod:Class"``);
3. a dotted path, ``package.module:ClassName`` or ``package.module.ClassName``.

The class must subclass :class:`AssetStrategy` or :class:`MarketStrategy`; ``params`` are
validated with its ``Config`` and a bad field raises :class:`StrategyConfigError` naming the
strategy and the field.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from gridfleet.strategies.base import AssetStrategy, MarketStrategy, Strategy, StrategyError

ENTRY_POINT_GROUP = "gridfleet.strategies"

StrategyClass = type[AssetStrategy] | type[MarketStrategy]


class UnknownStrategyError(StrategyError, LookupError):
    """No strategy of that name, entry point or dotted path."""


class StrategyConfigError(StrategyError, ValueError):
    """The params do not fit the strategy's Config; ``errors`` holds pydantic's details."""

    def __init__(self, strategy: str, errors: list[dict[str, Any]]) -> None:
        self.strategy = strategy
        self.errors = errors
        lines = []
        for error in errors:
            field = ".".join(str(part) for part in error.get("loc", ())) or "(config)"
            lines.append(f"field {field!r}: {error.get('msg', 'invalid')}")
        super().__init__(f"strategy {strategy!r}: " + "; ".join(lines))


class Registry:
    """Strategy classes by name.

    Entry points are listed once, on the first unknown name, and each is imported only when its
    name is asked for: a broken plug-in fails only the fleets that use it.
    """

    def __init__(self, classes: Mapping[str, StrategyClass] | None = None) -> None:
        self._classes: dict[str, StrategyClass] = dict(classes or {})
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None

    def register(self, name: str, cls: StrategyClass) -> None:
        """Add ``cls`` under ``name``; a name cannot be registered twice for different classes."""
        _check_class(name, cls)
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            raise StrategyError(
                f"strategy name {name!r} is taken by {existing.__module__}.{existing.__qualname__}"
            )
        self._classes[name] = cls

    def names(self) -> list[str]:
        """Every known name (built-ins, registered, entry points), sorted."""
        return sorted(set(self._classes) | set(self._plugins()))

    def get(self, name_or_path: str) -> StrategyClass:
        """The class for a registered name, an entry point name or a dotted path."""
        cls = self._classes.get(name_or_path)
        if cls is not None:
            return cls
        entry_point = self._plugins().get(name_or_path)
        if entry_point is not None:
            return self._load_entry_point(entry_point)
        if "." in name_or_path or ":" in name_or_path:
            return load_dotted(name_or_path)
        raise UnknownStrategyError(
            f"unknown strategy {name_or_path!r}; known: {', '.join(self.names())} "
            "(or give a dotted path 'package.module:ClassName')"
        )

    def build(self, name_or_path: str, params: Mapping[str, Any] | None = None) -> Strategy:
        """An instance of the strategy with ``params`` validated by its Config."""
        cls = self.get(name_or_path)
        try:
            config = cls.Config.model_validate(dict(params or {}))
        except ValidationError as exc:
            errors = [dict(e) for e in exc.errors(include_url=False, include_input=False)]
            raise StrategyConfigError(name_or_path, errors) from None
        try:
            return cls(config)
        except StrategyError as exc:
            exc.add_note(f"while building strategy {name_or_path!r}")
            raise
        except (ValueError, TypeError) as exc:
            raise StrategyError(f"strategy {name_or_path!r}: {exc}") from exc

    def _plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._entry_points is None:
            found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            # A built-in or an explicit registration wins over a plug-in of the same name.
            self._entry_points = {ep.name: ep for ep in found if ep.name not in self._classes}
        return self._entry_points

    def _load_entry_point(self, entry_point: importlib.metadata.EntryPoint) -> StrategyClass:
        try:
            cls = entry_point.load()
        except Exception as exc:
            raise StrategyError(
                f"entry point {entry_point.name!r} ({entry_point.value}) "
                f"of group {ENTRY_POINT_GROUP!r} failed to load: {exc}"
            ) from exc
        self.register(entry_point.name, cls)
        return self._classes[entry_point.name]


def load_dotted(path: str) -> StrategyClass:
    """Import ``package.module:ClassName`` or ``package.module.ClassName``."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise UnknownStrategyError(f"{path!r} is not a dotted path 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownStrategyError(f"cannot import {module_name!r} for {path!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UnknownStrategyError(f"{module_name!r} has no attribute {attr!r}") from None
    _check_class(path, obj)
    cls: StrategyClass = obj
    return cls


def _check_class(name: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, AssetStrategy | MarketStrategy)):
        raise StrategyError(
            f"strategy {name!r}: {cls!r} is not an AssetStrategy or MarketStrategy subclass"
        )


def default_registry() -> Registry:
    """A new registry holding the built-ins (entry points are read on first need)."""
    from gridfleet.strategies.builtin import BUILTINS

    return Registry(BUILTINS)


_DEFAULT: Registry | None = None


def _default() -> Registry:
    # One process-wide registry, created on first use so that importing this module stays cheap.
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = default_registry()
    return _DEFAULT


def get(name_or_path: str) -> StrategyClass:
    """The strategy class for a name or dotted path (default registry)."""
    return _default().get(name_or_path)


def build(name_or_path: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """Build a strategy by name or dotted path with validated params (default registry)."""
    return _default().build(name_or_path, params)


def names() -> list[str]:
    """Every strategy name the default registry knows."""
    return _default().names()


def register(name: str, cls: StrategyClass) -> None:
    """Register a strategy class on the default registry."""
    _default().register(name, cls)
