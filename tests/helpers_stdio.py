"""A raw, byte-level stdio MCP client for tests: no SDK between the test and the wire.

`RawStdioClient` starts a real child process and speaks newline-delimited JSON-RPC to it. A
background task reads stdout continuously and sorts what arrives:

* responses resolve the matching `send_request` / `request` call;
* notifications go to `next_notification()` (and stay listed in `notifications`);
* server->client requests go to `next_server_request()`; answer them with `respond()`;
* lines that are not JSON objects are kept in `garbage`;
* responses nobody is waiting for (e.g. after a cancel) are kept in `unsolicited`.

stderr is drained continuously too (a child that floods stderr must never block on us); the
tail is kept in `stderr` for diagnostics. Every wait has a timeout and raises
`asyncio.TimeoutError` (or `ServerExited`) instead of hanging a test.

    async with await RawStdioClient.start([sys.executable, "server.py"]) as client:
        await client.initialize()
        result = await client.call("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

DEFAULT_TIMEOUT = 10.0
_STDERR_TAIL = 256 * 1024


class ServerExited(ConnectionError):
    """The child closed stdout while we were waiting for something from it."""


class RpcError(Exception):
    """A JSON-RPC error response, raised by `RawStdioClient.call`."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code: int = error.get("code", 0)
        self.message: str = error.get("message", "")
        self.data: Any = error.get("data")


class RawStdioClient:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.notifications: list[dict[str, Any]] = []
        self.server_requests: list[dict[str, Any]] = []
        self.garbage: list[bytes] = []
        self.unsolicited: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self.stderr_lines = 0
        self._next_id = 0
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._notes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read_stdout())
        self._stderr_task = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdin: Any = asyncio.subprocess.PIPE,
    ) -> RawStdioClient:
        """Spawn `argv`; `env` entries are added to (not replacing) the current environment."""
        full_env = {**os.environ, **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            cwd=cwd,
            limit=256 * 1024 * 1024,
        )
        return cls(proc)

    async def __aenter__(self) -> RawStdioClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ sending

    async def send(self, message: dict[str, Any] | list[Any] | bytes) -> None:
        """Write one message (a dict/list is JSON-encoded; bytes are written as given)."""
        assert self.proc.stdin is not None
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def send_request(self, method: str, params: dict[str, Any] | None = None, *, id: Any = None) -> Any:
        """Send a request without waiting; returns its id (for `wait_response`/`cancel`)."""
        if id is None:
            self._next_id += 1
            id = self._next_id
        self._pending[id] = asyncio.get_running_loop().create_future()
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            msg["params"] = params
        await self.send(msg)
        return id

    async def wait_response(self, id: Any, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The full response message (with `result` or `error`) for a request sent earlier."""
        fut = self._pending[id]
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait_for(asyncio.wait({fut, closed}, return_when=asyncio.FIRST_COMPLETED), timeout)
        finally:
            closed.cancel()
        if not fut.done():
            raise ServerExited(
                f"server closed stdout before answering request {id!r}; stderr: {self.stderr_tail()}"
            )
        del self._pending[id]
        return fut.result()

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """Send a request and return the full response message."""
        return await self.wait_response(await self.send_request(method, params), timeout)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """Send a request and return its `result`; a JSON-RPC error raises `RpcError`."""
        response = await self.request(method, params, timeout=timeout)
        if "error" in response:
            raise RpcError(response["error"])
        return response["result"]

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        **extra: Any,
    ) -> dict[str, Any]:
        """tools/call shortcut; `extra` lands in params (e.g. `_meta={...}`)."""
        return await self.call(
            "tools/call", {"name": name, "arguments": arguments or {}, **extra}, timeout=timeout
        )

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        await self.send(msg)

    async def cancel(self, id: Any, reason: str = "test") -> None:
        """notifications/cancelled for `id`; a late response will land in `unsolicited`."""
        self._pending.pop(id, None)
        await self.notify("notifications/cancelled", {"requestId": id, "reason": reason})

    async def respond(self, id: Any, result: dict[str, Any]) -> None:
        """Answer a server->client request."""
        await self.send({"jsonrpc": "2.0", "id": id, "result": result})

    async def respond_error(self, id: Any, code: int, message: str) -> None:
        await self.send({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})

    async def initialize(
        self,
        protocol_version: str = "2025-11-25",
        capabilities: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """The handshake: initialize, then notifications/initialized; returns the initialize result."""
        caps = capabilities if capabilities is not None else {"sampling": {}, "elicitation": {}, "roots": {}}
        result = await self.call(
            "initialize",
            {
                "protocolVersion": protocol_version,
                "capabilities": caps,
                "clientInfo": {"name": "raw", "version": "0"},
            },
            timeout=timeout,
        )
        await self.notify("notifications/initialized")
        return result

    # ------------------------------------------------------------------ receiving

    async def next_notification(
        self, method: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """The next notification (optionally: the next with this method, skipping others)."""
        return await self._next(self._notes, method, timeout)

    async def next_server_request(
        self, method: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        return await self._next(self._requests, method, timeout)

    async def _next(
        self, queue: asyncio.Queue[dict[str, Any]], method: str | None, timeout: float
    ) -> dict[str, Any]:
        async def pick() -> dict[str, Any]:
            while True:
                msg = await queue.get()
                if method is None or msg.get("method") == method:
                    return msg

        return await asyncio.wait_for(pick(), timeout)

    def drain_notifications(self) -> list[dict[str, Any]]:
        """Everything queued by `next_notification` so far, removing it from the queue."""
        out = []
        while not self._notes.empty():
            out.append(self._notes.get_nowait())
        return out

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                try:
                    msg = json.loads(line)
                except ValueError:
                    self.garbage.append(line)
                    continue
                if not isinstance(msg, dict):
                    self.garbage.append(line)
                elif "method" in msg and "id" in msg:
                    self.server_requests.append(msg)
                    self._requests.put_nowait(msg)
                elif "method" in msg:
                    self.notifications.append(msg)
                    self._notes.put_nowait(msg)
                else:
                    fut = self._pending.get(msg.get("id"))
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    else:
                        self.unsolicited.append(msg)
        finally:
            self._closed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr_lines += chunk.count(b"\n")
            self.stderr += chunk
            if len(self.stderr) > _STDERR_TAIL:
                del self.stderr[: len(self.stderr) - _STDERR_TAIL]

    def stderr_tail(self, size: int = 2000) -> str:
        return self.stderr[-size:].decode(errors="replace")

    # ------------------------------------------------------------------ lifecycle

    async def wait_stdout_closed(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        await asyncio.wait_for(self._closed.wait(), timeout)

    async def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
            with contextlib.suppress(ConnectionError):
                await self.proc.stdin.wait_closed()

    async def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The exit code once the process ends (raises asyncio.TimeoutError if it does not)."""
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def aclose(self, grace: float = 3.0) -> int:
        """Close stdin, give the child `grace` seconds, then SIGKILL; always reaps the process."""
        with contextlib.suppress(ConnectionError):
            await self.close_stdin()
        try:
            await self.wait_exit(grace)
        except asyncio.TimeoutError:
            self.signal(signal.SIGKILL)
            await self.wait_exit(grace)
        for task in (self._reader, self._stderr_task):
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, grace)
        for fut in self._pending.values():
            fut.cancel()
        assert self.proc.returncode is not None
        return self.proc.returncode
