"""The plugin registry: (kind, name) -> factory.

Three sources, consulted in this order:

1. Built-ins, registered by a plain `register(kind, name, factory)` call when their module is
   imported. `get()` imports the module that owns a kind first (`_KIND_MODULES`), so callers never
   depend on import order, and nothing here needs package metadata: it works from a zipapp.
2. Extras, registered as lazy "module:attribute" strings with the name of the pip extra that
   provides their third-party dependency. They are imported only when asked for, so the core never
   imports psycopg or prometheus_client unless the config names them.
3. Third-party plugins, found through the `sentinel_gw.plugins` entry-point group (entry point
   name "kind:name") — looked up only for names that are not built in, so a broken or missing
   site-packages never slows down or breaks a built-in lookup.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "get", "names", "register"]

log = logging.getLogger("sentinel_gw.plugins")

ENTRY_POINT_GROUP = "sentinel_gw.plugins"

Factory = Callable[..., object]

# The module whose import registers the built-ins of a kind. A missing module is tolerated so a
# kind can be declared here before its module exists.
_KIND_MODULES: dict[str, str] = {
    "audit_sink": "sentinel_gw.ops.audit",
    "metrics": "sentinel_gw.ops.metrics",
}

_KIND_LABELS: dict[str, str] = {
    "audit_sink": "audit sink",
    "metrics": "metrics backend",
}


class PluginError(Exception):
    """A plugin cannot be found or loaded; the message is one line meant for the operator."""


@dataclass
class _Entry:
    factory: Factory | None
    target: str | None  # "module:attribute" for lazy entries
    extra: str | None


_registry: dict[tuple[str, str], _Entry] = {}
_kinds_loaded: set[str] = set()


def _label(kind: str) -> str:
    return _KIND_LABELS.get(kind, kind.replace("_", " "))


def register(kind: str, name: str, factory: Factory | str, *, extra: str | None = None) -> None:
    """Register a factory, or a lazy "module:attribute" string imported on first `get()`.

    `extra` names the pip extra that provides the plugin's dependencies; it only changes the
    error message when the import fails. Registering the same (kind, name) again replaces it.
    """
    if isinstance(factory, str):
        module, sep, attr = factory.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"lazy plugin target must be 'module:attribute', got {factory!r}")
        _registry[(kind, name)] = _Entry(None, factory, extra)
    elif callable(factory):
        _registry[(kind, name)] = _Entry(factory, None, extra)
    else:
        raise TypeError(f"plugin factory for {kind}:{name} must be callable or 'module:attribute'")


def _load_kind(kind: str) -> None:
    if kind in _kinds_loaded:
        return
    _kinds_loaded.add(kind)
    module = _KIND_MODULES.get(kind)
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        log.debug("no built-in module %s for plugin kind %s", module, kind)


def _install_hint(extra: str) -> str:
    return f"pip install 'sentinel-gw[{extra}]'"


def _resolve(kind: str, name: str, entry: _Entry) -> Factory:
    if entry.factory is not None:
        return entry.factory
    assert entry.target is not None
    module_name, _, attr = entry.target.partition(":")
    what = f"{_label(kind)} {name!r}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        ours = missing == "sentinel_gw" or missing.startswith("sentinel_gw.")
        if entry.extra and not ours:
            raise PluginError(
                f"{what} needs the {entry.extra!r} extra: {_install_hint(entry.extra)}"
            ) from None
        raise PluginError(f"{what} is not available: module {missing or module_name!r} not found") from None
    except ImportError as exc:
        # The dependency is installed but does not load (e.g. a missing shared library).
        hint = f" (extra {entry.extra!r}: {_install_hint(entry.extra)})" if entry.extra else ""
        raise PluginError(f"{what} could not be loaded: {exc}{hint}") from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise PluginError(f"{what}: {module_name} has no attribute {attr!r}") from None
    if not callable(factory):
        raise PluginError(f"{what}: {entry.target} is not callable")
    entry.factory = factory
    return factory


def _entry_points() -> list[object]:
    """Entry points of our group; a separate function so tests can substitute it."""
    from importlib import metadata

    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # broken metadata must not break the gateway
        log.warning("cannot read plugin entry points: %s", exc)
        return []


def _from_entry_points(kind: str, name: str) -> Factory | None:
    wanted = f"{kind}:{name}"
    found = [ep for ep in _entry_points() if getattr(ep, "name", None) == wanted]
    if not found:
        return None
    if len(found) > 1:
        log.warning("several plugins provide %s; using %s", wanted, getattr(found[0], "value", "?"))
    ep = found[0]
    try:
        factory = ep.load()  # type: ignore[attr-defined]
    except Exception as exc:
        raise PluginError(
            f"{_label(kind)} {name!r} (plugin {getattr(ep, 'value', '?')}) could not be loaded: {exc}"
        ) from None
    if not callable(factory):
        raise PluginError(f"{_label(kind)} {name!r}: plugin {getattr(ep, 'value', '?')} is not callable")
    _registry[(kind, name)] = _Entry(factory, None, None)
    return factory


def get(kind: str, name: str) -> Factory:
    """The factory for (kind, name); raises PluginError with a one-line, actionable message."""
    _load_kind(kind)
    entry = _registry.get((kind, name))
    if entry is not None:
        return _resolve(kind, name, entry)
    factory = _from_entry_points(kind, name)
    if factory is not None:
        return factory
    known = ", ".join(names(kind)) or "none"
    raise PluginError(f"unknown {_label(kind)} {name!r} (known: {known})")


def names(kind: str) -> list[str]:
    """Names registered for a kind (built-ins and extras; entry points are not scanned)."""
    _load_kind(kind)
    return sorted(n for (k, n) in _registry if k == kind)
