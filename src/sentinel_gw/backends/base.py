"""What every backend offers the gateway, and what the gateway offers back (the events)."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sentinel_gw.protocol import jsonrpc


class BackendState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"  # gave up (restart limit, or a problem a restart cannot fix)
    STOPPED = "stopped"
    DISABLED = "disabled"


class BackendError(jsonrpc.JsonRpcError):
    """The backend could not answer (as opposed to answering with an error, which is relayed).

    `reason` is stable and machine-readable: unavailable, crashed, timeout, overloaded, stopped.
    """

    def __init__(self, backend: str, reason: str, message: str, *, retry_after_ms: int | None = None) -> None:
        code = {
            "timeout": jsonrpc.REQUEST_TIMEOUT,
            "overloaded": jsonrpc.RATE_LIMITED,
            "circuit_open": jsonrpc.CIRCUIT_OPEN,
        }.get(reason, jsonrpc.BACKEND_UNAVAILABLE)
        data: dict[str, Any] = {"reason": reason, "backend": backend}
        if retry_after_ms is not None:
            data["retry_after_ms"] = retry_after_ms
            data["retryAfter"] = max(1, -(-retry_after_ms // 1000))
        super().__init__(code, message, data)
        self.backend = backend
        self.reason = reason


ProgressCallback = Callable[[dict[str, Any]], None]


class BackendEvents(Protocol):
    """Implemented by the gateway; called by backends from their own tasks."""

    def backend_ready(self, backend: Backend) -> None: ...

    def backend_down(self, backend: Backend, reason: str) -> None: ...

    def backend_notification(self, backend: Backend, method: str, params: dict[str, Any]) -> None: ...

    def backend_request(
        self, backend: Backend, method: str, params: dict[str, Any]
    ) -> Awaitable[dict[str, Any]]: ...

    async def upstream_capabilities(self) -> dict[str, Any]: ...


class Backend(Protocol):
    name: str
    state: BackendState
    capabilities: dict[str, Any]
    server_info: dict[str, Any]
    instructions: str
    protocol_version: str

    async def start(self) -> None: ...

    async def wait_ready(self, timeout: float) -> bool: ...

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]: ...

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None: ...

    async def stop(self) -> None: ...

    def in_flight(self) -> int: ...
