"""One client connection (a stdio process, later an HTTP session): identity and protocol state."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from sentinel_gw.policy.identity import Identity
from sentinel_gw.protocol import jsonrpc

Sender = Callable[[dict[str, Any] | list[Any], Any], None]


class Session:
    """Front-agnostic: a front creates it with a `send(message, related)` function that queues one
    message. `related` is the client's id of the request a message belongs to (its response, its
    progress, a question asked while it runs), or None for messages that belong to no request
    (list changes, resource updates): an HTTP front routes by it, stdio ignores it."""

    def __init__(self, identity: Identity, send: Sender, *, transport: str) -> None:
        self.id = secrets.token_hex(8)
        self.identity = identity
        self.transport = transport
        self._send = send
        self.state = "new"  # new -> initialized (after our initialize reply) -> ready (client said so)
        self.protocol_version = ""
        self.client_info: dict[str, Any] = {}
        self.client_capabilities: dict[str, Any] = {}
        # What of them a backend may be told (modern backends get it per request): derived once,
        # at initialize, not on every request.
        self.routable_capabilities: dict[str, Any] | None = None
        self.log_level: str | None = None
        self.subscriptions: set[str] = set()
        self.listeners: dict[Any, Any] = {}  # 2026-07-28 subscriptions/listen streams by request id
        self.in_flight: dict[jsonrpc.JsonId, asyncio.Task[None]] = {}
        self.backend_calls: dict[str, set[Any]] = {}  # backend -> client ids of calls in flight there
        self._outbound: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_out = 0
        self.closed = False
        self.auth_error: str | None = None  # set when a reload stops accepting this session's token

    @property
    def client_name(self) -> str:
        name = self.client_info.get("name")
        return name if isinstance(name, str) else ""

    def send(self, message: dict[str, Any] | list[Any], related: Any = None) -> None:
        if not self.closed:
            self._send(message, related)

    def notify(self, method: str, params: dict[str, Any] | None = None, related: Any = None) -> None:
        self.send(jsonrpc.notification(method, params), related)

    async def request(
        self, method: str, params: dict[str, Any], timeout: float, related: Any = None
    ) -> dict[str, Any]:
        """Send a request to the client and wait for its answer (server-to-client direction)."""
        if self.closed:
            raise jsonrpc.JsonRpcError(jsonrpc.INTERNAL_ERROR, "client session is closed")
        self._next_out += 1
        out_id = self._next_out
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._outbound[out_id] = fut
        try:
            self.send(jsonrpc.request(out_id, method, params), related)
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.notify("notifications/cancelled", {"requestId": out_id, "reason": "timeout"}, related)
            raise jsonrpc.JsonRpcError(
                jsonrpc.REQUEST_TIMEOUT, f"client did not answer {method} within {timeout:g} s"
            ) from None
        except asyncio.CancelledError:
            self.notify(
                "notifications/cancelled", {"requestId": out_id, "reason": "cancelled by server"}, related
            )
            raise
        finally:
            self._outbound.pop(out_id, None)

    def resolve(self, message: dict[str, Any]) -> bool:
        """A response from the client to one of our requests; False if we were not waiting for it."""
        msg_id = message.get("id")
        fut = self._outbound.get(msg_id) if isinstance(msg_id, int) else None
        if fut is None or fut.done():
            return False
        jsonrpc.settle(fut, message)
        return True

    def close(self) -> None:
        self.closed = True
        for fut in self._outbound.values():
            if not fut.done():
                fut.set_exception(jsonrpc.JsonRpcError(jsonrpc.INTERNAL_ERROR, "client session closed"))
        self._outbound.clear()
