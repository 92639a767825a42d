"""What every backend offers the gateway, and what the gateway offers back (the events)."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from sentinel_gw.protocol import jsonrpc


class BackendState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"  # gave up (restart limit, or a problem a restart cannot fix)
    STOPPED = "stopped"
    DISABLED = "disabled"


class OpenQuestions:
    """Requests a backend sent to the client (elicitation, sampling, roots) and not answered yet.

    While any is open the backend is waiting for a human, who may take minutes, so its calls must
    not time out for silence: `on_change(True)` when the first question opens, `on_change(False)`
    when the last one ends (answered, failed or cancelled). Pings are answered at once by the
    gateway and never count. True while a question is open.
    """

    __slots__ = ("_on_change", "count")

    def __init__(self, on_change: Callable[[bool], None]) -> None:
        self.count = 0
        self._on_change = on_change

    def __bool__(self) -> bool:
        return self.count > 0

    def opened(self, method: str, answering: asyncio.Future[Any]) -> None:
        """`answering` relays the question and settles when it is over."""
        if method == "ping":
            return
        self.count += 1
        answering.add_done_callback(self._closed)
        if self.count == 1:
            self._on_change(True)

    def _closed(self, _answering: asyncio.Future[Any]) -> None:
        self.count -= 1
        if self.count == 0:
            self._on_change(False)


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


class Caller(NamedTuple):
    """The client request a backend call serves (the gateway's session object and the client's
    request id). A backend whose transport ties messages to a call (an HTTP backend's response
    stream: what the server sends there belongs to that request) hands it back with them, so a
    question or a log line goes to that caller and to nobody else. Opaque to backends."""

    session: Any
    request_id: Any


class BackendEvents(Protocol):
    """Implemented by the gateway; called by backends from their own tasks."""

    def backend_ready(self, backend: Backend) -> None: ...

    def backend_down(self, backend: Backend, reason: str) -> None: ...

    def backend_notification(
        self, backend: Backend, method: str, params: dict[str, Any], caller: Caller | None = None
    ) -> None: ...

    def backend_request(
        self, backend: Backend, method: str, params: dict[str, Any], caller: Caller | None = None
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
        caller: Caller | None = None,
    ) -> dict[str, Any]: ...

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None: ...

    async def stop(self) -> None: ...

    def in_flight(self) -> int: ...
