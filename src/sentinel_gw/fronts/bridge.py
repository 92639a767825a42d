"""`sentinel-gw bridge URL`: a stdio MCP server that forwards to a remote sentinel-gw over
Streamable HTTP (handshake era), with the caller's own bearer token.

For stdio-only clients (mcporter on an OpenClaw host, Claude Code) that must reach a central
gateway: newline-delimited JSON-RPC on stdin, each message POSTed as it comes (many in flight at
once; answers may come back in any order), every message received (JSON or SSE replies, the
session's GET stream) written to stdout. stdout carries protocol bytes only; logs go to stderr.

* ``Mcp-Session-Id`` and ``MCP-Protocol-Version`` come from the initialize exchange and go on
  every later request; the GET stream for server messages is opened once initialize succeeded.
  Messages that arrive while initialize is in flight wait for it (in order): a client that writes
  ahead (``notifications/initialized``, ``tools/list``) must not reach the gateway sessionless.
* A session the gateway no longer knows (404) is not re-created behind the client's back: the
  request gets an error saying so, and the client's next ``initialize`` starts a new session.
* stdin EOF: pending requests are abandoned, the session is DELETEd (bounded wait), and the
  process exits.
* The token is sent in the Authorization header only and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import IO, Any

from sentinel_gw.fronts.stdio import _chunks, _open_writer
from sentinel_gw.httpwire import HttpClient, HttpError, HttpResponse, Timeouts
from sentinel_gw.protocol import jsonrpc
from sentinel_gw.protocol.framing import LineSplitter, TooLong

__all__ = ["Bridge", "run_bridge"]

log = logging.getLogger("sentinel_gw.bridge")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DELETE_TIMEOUT = 2.0
GET_RETRIES = 5
GET_RETRY_DELAY = 1.0
_STREAMING = Timeouts(connect=10.0, read=None, total=None)


class Bridge:
    def __init__(
        self, url: str, *, token: str | None, client: HttpClient, write: Any, max_message_bytes: int
    ) -> None:
        self.url = url
        self.token = token
        self.client = client
        self.write = write  # bytes -> None: one line to stdout
        self.max_message_bytes = max_message_bytes
        self.session_id: str | None = None
        self.version: str | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.listening: asyncio.Task[None] | None = None
        self.handshake: asyncio.Future[None] | None = None  # an initialize in flight

    # -- plumbing --------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _headers(self, *, accept: str, session: bool = True) -> list[tuple[str, str]]:
        headers = [("Accept", accept)]
        if self.token:
            headers.append(("Authorization", f"Bearer {self.token}"))
        if session and self.session_id:
            headers.append(("Mcp-Session-Id", self.session_id))
            if self.version:
                headers.append(("MCP-Protocol-Version", self.version))
        return headers

    def emit(self, message: Any) -> None:
        self.write(jsonrpc.encode(message))

    def fail(self, req_id: Any, code: int, text: str, data: Any = None) -> None:
        if req_id is not None:
            self.emit(jsonrpc.error(req_id, code, text, data))
        else:
            log.warning("%s", text)

    # -- client -> gateway -----------------------------------------------------------------------

    def receive(self, line: bytes) -> None:
        """One line from stdin."""
        try:
            message = jsonrpc.decode(line)
        except jsonrpc.JsonRpcError as exc:
            self.emit(jsonrpc.error_from(None, exc))
            return
        initialize = isinstance(message, dict) and message.get("method") == "initialize" and "id" in message
        if initialize:
            self._forget_session("a new initialize")
            self.handshake = asyncio.get_running_loop().create_future()
            self._spawn(self._initialize(message, line, self.handshake))
        elif self.handshake is not None and not self.handshake.done():
            self._spawn(self._post_after(self.handshake, message, line))
        else:
            self._spawn(self.post(message, line, False))

    async def _initialize(self, message: Any, body: bytes, done: asyncio.Future[None]) -> None:
        try:
            await self.post(message, body, True)
        finally:
            if not done.done():
                done.set_result(None)

    async def _post_after(self, handshake: asyncio.Future[None], message: Any, body: bytes) -> None:
        await asyncio.shield(handshake)
        await self.post(message, body, False)

    def _forget_session(self, why: str) -> None:
        if self.listening is not None:
            self.listening.cancel()
            self.listening = None
        if self.session_id is not None:
            log.info("leaving session (%s)", why)
            self._spawn(self._delete(self.session_id, self.version))
        self.session_id = self.version = None

    async def post(self, message: Any, body: bytes, initialize: bool) -> None:
        req_id = message.get("id") if isinstance(message, dict) and "method" in message else None
        sent_with = None if initialize else self.session_id
        headers = self._headers(accept="application/json, text/event-stream", session=not initialize)
        headers.append(("Content-Type", "application/json"))
        try:
            response = await self.client.request(
                "POST", self.url, headers=headers, body=body, timeouts=_STREAMING
            )
        except HttpError as exc:
            self.fail(req_id, jsonrpc.INTERNAL_ERROR, f"cannot reach the gateway: {exc}")
            return
        async with response:
            try:
                await self._answer(response, req_id, sent_with, initialize)
            except (HttpError, jsonrpc.JsonRpcError) as exc:
                self.fail(req_id, jsonrpc.INTERNAL_ERROR, f"the gateway's answer was unusable: {exc}")

    async def _answer(
        self, response: HttpResponse, req_id: Any, sent_with: str | None, initialize: bool
    ) -> None:
        status = response.status
        ctype = (response.headers.get("content-type") or "").partition(";")[0].strip().lower()
        if status == 202:
            if req_id is not None:
                self.fail(
                    req_id, jsonrpc.INTERNAL_ERROR, "the gateway accepted a request without answering it"
                )
            return
        if status >= 400:
            await self._refused(response, status, ctype, req_id, sent_with)
            return
        if initialize and status == 200:
            sid = response.headers.get("mcp-session-id")
            if sid:
                self.session_id = sid
        answered = False
        if ctype == "text/event-stream":
            async for event in response.sse(self.max_message_bytes):
                if event.data:
                    answered = self._relay(jsonrpc.decode(event.data), req_id, initialize) or answered
        elif ctype == "application/json":
            answered = self._relay(
                jsonrpc.decode(await response.read(self.max_message_bytes)), req_id, initialize
            )
        if req_id is not None and not answered:
            self.fail(
                req_id,
                jsonrpc.INTERNAL_ERROR,
                f"the gateway ended its reply (HTTP {status}, {ctype or 'no type'}) without a response",
            )

    def _relay(self, message: Any, req_id: Any, initialize: bool) -> bool:
        """Write one received message; True if it is the response to `req_id`."""
        self.emit(message)
        if not isinstance(message, dict) or "method" in message or message.get("id") != req_id:
            return isinstance(message, list)  # a 2025-03-26 batch reply answers its POST
        if initialize:
            result = message.get("result")
            version = result.get("protocolVersion") if isinstance(result, dict) else None
            if isinstance(version, str) and self.session_id:
                self.version = version
                self.listening = self._spawn(self.listen(self.session_id))
            elif "error" in message:
                self.session_id = None
        return True

    async def _refused(
        self, response: HttpResponse, status: int, ctype: str, req_id: Any, sent_with: str | None
    ) -> None:
        error: dict[str, Any] | None = None
        if ctype == "application/json":
            with contextlib.suppress(HttpError, jsonrpc.JsonRpcError):
                body = jsonrpc.decode(await response.read(1 << 20))
                if isinstance(body, dict) and isinstance(body.get("error"), dict):
                    error = body["error"]
        if status == 404 and sent_with is not None:
            if self.session_id == sent_with:
                self._forget_session("the gateway no longer knows it")
            self.fail(
                req_id,
                jsonrpc.INVALID_REQUEST,
                "Session not found: the gateway ended this session; send initialize to start a new one",
                {"httpStatus": 404},
            )
            return
        if error is not None and isinstance(error.get("code"), int):
            data = error.get("data")
            if status == 401:
                challenge = response.headers.get("www-authenticate")
                log.warning("the gateway refused the token (HTTP 401): %s", error.get("message"))
                data = {**(data if isinstance(data, dict) else {}), "httpStatus": 401, "challenge": challenge}
            self.fail(req_id, error["code"], str(error.get("message", "")), data)
            return
        self.fail(
            req_id, jsonrpc.INTERNAL_ERROR, f"the gateway answered HTTP {status}", {"httpStatus": status}
        )

    # -- gateway -> client (unsolicited) ---------------------------------------------------------

    async def listen(self, sid: str) -> None:
        """The session's GET stream: list changes, resource updates, unrelated server requests."""
        failures = 0
        while self.session_id == sid and failures < GET_RETRIES:
            try:
                response = await self.client.request(
                    "GET", self.url, headers=self._headers(accept="text/event-stream"), timeouts=_STREAMING
                )
            except HttpError as exc:
                failures += 1
                log.debug("GET stream: %s", exc)
                await asyncio.sleep(GET_RETRY_DELAY)
                continue
            async with response:
                if response.status == 405:
                    log.info("the gateway offers no GET stream; server messages come only with replies")
                    return
                if response.status == 404:
                    if self.session_id == sid:
                        self._forget_session("the gateway no longer knows it")
                    return
                if response.status != 200:
                    failures += 1
                    log.debug("GET stream refused: HTTP %d", response.status)
                else:
                    failures = 0
                    with contextlib.suppress(HttpError):
                        async for event in response.sse(self.max_message_bytes):
                            if event.data:
                                try:
                                    self.emit(jsonrpc.decode(event.data))
                                except jsonrpc.JsonRpcError as exc:
                                    log.warning("unreadable message on the GET stream: %s", exc.message)
            await asyncio.sleep(GET_RETRY_DELAY if failures else 0.1)

    # -- shutdown --------------------------------------------------------------------------------

    async def _delete(self, sid: str, version: str | None) -> None:
        headers = [("Mcp-Session-Id", sid)]
        if version:
            headers.append(("MCP-Protocol-Version", version))
        if self.token:
            headers.append(("Authorization", f"Bearer {self.token}"))
        try:
            response = await self.client.request(
                "DELETE",
                self.url,
                headers=headers,
                timeouts=Timeouts(connect=DELETE_TIMEOUT, total=DELETE_TIMEOUT),
            )
            await response.aclose()
        except HttpError as exc:
            log.debug("DELETE of the session failed: %s", exc)

    async def close(self) -> None:
        """stdin ended: abandon what is pending, end the session (bounded), stop."""
        if self.listening is not None:
            self.listening.cancel()
        sid, version = self.session_id, self.version
        self.session_id = None
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)
        if sid is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._delete(sid, version), DELETE_TIMEOUT + 0.5)


async def run_bridge(
    url: str,
    *,
    token: str | None,
    cafile: str | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> int:
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if token is None:
        log.warning("no token set: requests go without Authorization (fine only if the gateway has auth off)")
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    writer = await _open_writer(stdout)
    client = HttpClient(
        max_connections=256, timeouts=_STREAMING, cafile=cafile, max_body_bytes=max_message_bytes
    )
    bridge = Bridge(url, token=token, client=client, write=writer.write, max_message_bytes=max_message_bytes)
    splitter = LineSplitter(max_message_bytes)
    try:
        async for chunk in _chunks(stdin):
            for line in splitter.feed(chunk):
                if isinstance(line, TooLong):
                    bridge.emit(
                        jsonrpc.error(
                            None,
                            jsonrpc.INVALID_REQUEST,
                            f"Invalid Request: message over {max_message_bytes} bytes",
                        )
                    )
                else:
                    bridge.receive(line)
            if writer.broken:
                break
    finally:
        await bridge.close()
        await client.aclose()
        await writer.drain()
        writer.close()
    return 0
