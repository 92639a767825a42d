"""Optional accelerators: orjson for JSON-RPC encoding/decoding, uvloop for the event loop.

Neither is ever required. Each is used only when it is installed (`pip install sentinel-gw[accel]`)
and not switched off; the pure standard-library path is the default whenever they are absent, and
the zipapp never bundles them.

    SENTINEL_GW_ACCEL=0     force the pure standard-library path (also: off, false, no, none)
    SENTINEL_GW_ACCEL=json  orjson only;  SENTINEL_GW_ACCEL=loop  uvloop only
    unset, 1, on, auto      both, when installed

JSON semantics do not depend on the path: see `protocol/jsonrpc.py` for how orjson is confined
to what it represents exactly like the standard library (anything else falls back per message).
"""

from __future__ import annotations

import os
from collections.abc import Coroutine, Mapping
from types import ModuleType
from typing import Any, TypeVar

ENV = "SENTINEL_GW_ACCEL"
_OFF = frozenset({"0", "off", "false", "no", "none", "pure"})

T = TypeVar("T")


def wanted(feature: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `feature` ("json" or "loop") may be used according to SENTINEL_GW_ACCEL."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    if value in ("", "1", "on", "auto", "true", "yes", "all"):
        return True
    if value in _OFF:
        return False
    return feature in {part.strip() for part in value.split(",")}


def orjson(environ: Mapping[str, str] | None = None) -> ModuleType | None:
    """The orjson module when installed and wanted, else None."""
    if not wanted("json", environ):
        return None
    try:
        import orjson as module
    except ImportError:
        return None
    return module


def uvloop(environ: Mapping[str, str] | None = None) -> ModuleType | None:
    """The uvloop module when installed and wanted, else None."""
    if not wanted("loop", environ):
        return None
    try:
        import uvloop as module
    except ImportError:
        return None
    return module


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main), on uvloop when it is installed and wanted."""
    import asyncio

    loop_module = uvloop()
    if loop_module is None:
        return asyncio.run(main)
    runner_class = getattr(asyncio, "Runner", None)
    if runner_class is not None:  # 3.11+: no global policy change
        with runner_class(loop_factory=loop_module.new_event_loop) as runner:
            return runner.run(main)  # type: ignore[no-any-return]
    previous = asyncio.get_event_loop_policy()  # pragma: no cover - Python 3.10
    asyncio.set_event_loop_policy(loop_module.EventLoopPolicy())
    try:
        return asyncio.run(main)
    finally:
        asyncio.set_event_loop_policy(previous)


def describe() -> str:
    """What is in use, for the startup log and `doctor`: e.g. "orjson 3.10.7, uvloop 0.21.0"."""
    parts = []
    for name, module in (("orjson", orjson()), ("uvloop", uvloop())):
        if module is not None:
            parts.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(parts) or "none (standard library)"
