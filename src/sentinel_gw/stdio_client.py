"""A minimal asyncio MCP client over a child's stdio, for the demo, `doctor` and benchmarks.

It speaks raw JSON-RPC so the caller sees exactly what the server sent (errors included).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sentinel_gw import __version__
from sentinel_gw.protocol import jsonrpc
from sentinel_gw.protocol.mcp import LATEST_HANDSHAKE


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = str(error.get("message", ""))
        self.data = error.get("data")


def self_command() -> list[str]:
    """How to start this very sentinel-gw again: the zipapp it runs from, or `-m sentinel_gw`."""
    import sentinel_gw

    path = os.path.abspath(sentinel_gw.__file__ or "")
    if os.path.exists(path):
        return [sys.executable, "-m", "sentinel_gw"]
    while not os.path.exists(path):  # inside an archive: climb to the archive file itself
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if os.path.isfile(path):
        return [sys.executable, path]
    return [sys.executable, "-m", "sentinel_gw"]


class StdioClient:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_notification: Callable[[dict[str, Any]], None] | None = None,
        on_request: Callable[[str, dict[str, Any]], Any] | None = None,
        stderr: int | None = asyncio.subprocess.DEVNULL,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.on_notification = on_notification
        self.on_request = on_request
        self.stderr = stderr
        self.proc: asyncio.subprocess.Process | None = None
        self.notifications: list[dict[str, Any]] = []
        self.unmatched: list[dict[str, Any]] = []  # responses nobody waited for (e.g. id null)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._reader: asyncio.Task[None] | None = None
        self._answers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.stderr,
            env=self.env,
            limit=1 << 24,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            msg = jsonrpc.decode(line)
            if isinstance(msg, list):
                for item in msg:
                    self._dispatch(item)
            else:
                self._dispatch(msg)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("server closed its stdout"))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "method" in msg and "id" in msg:
            task = asyncio.ensure_future(self._answer(msg))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
        elif "method" in msg:
            self.notifications.append(msg)
            if self.on_notification:
                self.on_notification(msg)
        else:
            fut = self._pending.get(msg.get("id"))  # type: ignore[arg-type]
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                self.unmatched.append(msg)

    async def _answer(self, msg: dict[str, Any]) -> None:
        try:
            if self.on_request is None:
                raise RpcError({"code": jsonrpc.METHOD_NOT_FOUND, "message": "not supported"})
            value = self.on_request(msg["method"], msg.get("params") or {})
            if asyncio.iscoroutine(value):
                value = await value
            self.send(jsonrpc.result(msg["id"], value))
        except RpcError as exc:
            self.send(jsonrpc.error(msg["id"], exc.code or jsonrpc.INTERNAL_ERROR, exc.message))

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(jsonrpc.encode(message))

    async def request_raw(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        self._next += 1
        req_id = self._next
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            self.send(jsonrpc.request(req_id, method, params))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(req_id, None)

    async def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        reply = await self.request_raw(method, params, timeout)
        if "error" in reply:
            raise RpcError(reply["error"])
        return reply.get("result")

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self.send(jsonrpc.notification(method, params))

    async def initialize(
        self, capabilities: dict[str, Any] | None = None, client_name: str = "sentinel-gw-client"
    ) -> dict[str, Any]:
        result = await self.request(
            "initialize",
            {
                "protocolVersion": LATEST_HANDSHAKE,
                "capabilities": capabilities or {},
                "clientInfo": {"name": client_name, "version": __version__},
            },
        )
        self.notify("notifications/initialized")
        return result

    async def close(self, timeout: float = 10.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2.0)
        return proc.returncode
