"""The Streamable HTTP front: many clients, each with its own bearer token, on one listener.

Handshake era (2025-03-26 .. 2025-11-25), per MCP-PROTOCOL.md §6.2, §7 and §8:

* One endpoint (`[http] path`): POST carries one JSON-RPC message (an array only in sessions
  that negotiated 2025-03-26); GET opens the session's stream for messages that belong to no
  request; DELETE ends the session. ``/.well-known/oauth-protected-resource`` (and its
  path-inserted form) serves the RFC 9728 metadata. Anything else is 404.
* Every request is authenticated (``Authorization: Bearer``, header only, one of them);
  failures are 401 with ``WWW-Authenticate: Bearer resource_metadata="..."``. Tokens are
  verified, never logged and never passed on: backends only ever see the gateway. Audience:
  the verifier checks ``auth.audience``; operators set it to the public URL of this endpoint
  (``http.public_url``), so tokens minted for another resource fail.
* ``initialize`` without ``Mcp-Session-Id`` creates a session (CSPRNG id) bound to the
  identity's (issuer, subject); any other caller presenting the id gets the same 404 as for an
  unknown session. Sessions expire after ``session_idle_secs`` without requests (a session with
  a call in flight or an open GET stream is not idle), are capped at ``max_sessions`` and are
  freed, with their in-flight calls cancelled, on DELETE and expiry.
* A request's answer is JSON, or for the methods that can produce related messages (tools/call,
  prompts/get, resources/read, completion/complete) an SSE stream carrying its progress and
  server-to-client requests, then the response. Each SSE event is one transport write. A
  client that drops such a stream does not cancel the call (handshake-era rule): later related
  messages go to the GET stream, the response is dropped.
* DNS rebinding: a present ``Origin`` must be allowed (403); on a loopback listener the ``Host``
  must name the listener or the public URL (421).

Requests whose ``MCP-Protocol-Version`` is not a handshake-era version go to `handle_modern`
(2026-07-28, stateless).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import ssl
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from sentinel_gw.config import is_loopback_host
from sentinel_gw.gateway import Gateway
from sentinel_gw.httpwire import (
    LAST_CHUNK,
    Headers,
    HttpProtocolError,
    RequestHead,
    RequestReader,
    encode_chunk,
    format_response,
    format_sse_event,
    keep_alive,
    linger_close,
)
from sentinel_gw.ops.admin import parse_listen
from sentinel_gw.policy.auth import AuthError
from sentinel_gw.policy.engine import Refusal
from sentinel_gw.policy.identity import Identity
from sentinel_gw.protocol import jsonrpc
from sentinel_gw.protocol.mcp import (
    BATCH_VERSION,
    HANDSHAKE_VERSIONS,
    HEADER_MISMATCH,
    MISSING_CLIENT_CAPABILITY,
    MODERN_VERSIONS,
    NAME_PARAMS,
    SUPPORTED_VERSIONS,
    UNSUPPORTED_PROTOCOL_VERSION,
    decode_header_value,
    modern_version,
)
from sentinel_gw.session import Session

__all__ = ["HttpFront", "HttpRequest", "SseStream"]

log = logging.getLogger("sentinel_gw.http")

PRM_PATH = "/.well-known/oauth-protected-resource"
ALLOW_MCP = "GET, POST, DELETE"
# Methods answered as an SSE stream: they may produce progress or server-to-client requests.
SSE_METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete"})
PRIMING_VERSIONS = frozenset(v for v in HANDSHAKE_VERSIONS if v >= "2025-11-25")
SESSION_NOT_FOUND = "Session not found"
AUTH_CACHE_SIZE = 4096
# A client that stops reading an SSE stream: first lose what can be lost, then the stream.
_SHED_AT = 4 << 20
_ABANDON_AT = 64 << 20
_DRAIN_AT = 256 << 10
_SHEDDABLE = frozenset({"notifications/progress", "notifications/message"})
_LOOPBACK_ORIGIN = re.compile(r"https?://(?:localhost|127\.0\.0\.1|\[::1\])(?::[0-9]{1,5})?")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([!-~]+) *")
_ACCESS_TOKEN_QUERY = re.compile(r"(?:^|&)access_token=")

# Hot-path response heads, built once.
_JSON_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
_ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-store\r\n"
    b"X-Accel-Buffering: no\r\n"
)
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CLOSE = b"Connection: close\r\n"
_EVENT_PREFIX = b"event: message\ndata: "
_KEEPALIVE = b":\n\n"


def sse_message(encoded: bytes) -> bytes:
    """One SSE ``message`` event from a `jsonrpc.encode` line (compact JSON has no raw newline)."""
    return _EVENT_PREFIX + encoded[:-1] + b"\n\n"


class HttpRequest:
    """One parsed request on a connection, with the ways to answer it.

    `respond` writes a complete response; `open_sse` starts a streamed one. `close` tells the
    connection loop not to read another request after this one.
    """

    __slots__ = (
        "_message",
        "body",
        "close",
        "head",
        "headers",
        "method",
        "path",
        "query",
        "reader",
        "writer",
    )

    def __init__(
        self, head: RequestHead, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.head = head
        self.method = head.method
        target = head.target
        if not target.startswith("/"):  # absolute-form
            parts = urlsplit(target)
            target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self.path, _, self.query = target.partition("?")
        self.headers = head.headers
        self.body = body
        self.reader = reader
        self.writer = writer
        self.close = not keep_alive(head)
        self._message: Any = _UNSET

    @property
    def chunked(self) -> bool:
        return self.head.version >= (1, 1)

    def message(self) -> Any:
        """The body as JSON; raises `jsonrpc.JsonRpcError` (parse error). Decoded once."""
        if self._message is _UNSET:
            self._message = jsonrpc.decode(self.body)
        return self._message

    def readable_id(self) -> Any:
        """The JSON-RPC id of the body when it can be read (for error replies), else None."""
        try:
            return jsonrpc.readable_id(self.message())
        except jsonrpc.JsonRpcError:
            return None

    def respond(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str | None = "application/json",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        hdrs = Headers(headers or ())
        if body and content_type:
            hdrs.add("Content-Type", content_type)
        if status not in (204, 304):
            hdrs.add("Content-Length", str(len(body)))
        hdrs.add("Cache-Control", "no-store")
        if self.close:
            hdrs.add("Connection", "close")
        self.writer.write(format_response(status, hdrs, body or None))

    def respond_error(
        self,
        status: int,
        code: int,
        message: str,
        data: Any = None,
        *,
        req_id: Any = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """An HTTP error whose body is a JSON-RPC error (with the request's id when readable)."""
        self.respond(status, jsonrpc.encode(jsonrpc.error(req_id, code, message, data)), headers=headers)

    def respond_json(self, encoded: bytes, extra: bytes = b"") -> None:
        """200 with one encoded JSON-RPC message (the hot path: one write, no validation)."""
        self.writer.write(
            b"".join(
                (
                    _JSON_200,
                    b"Content-Length: %d\r\n" % len(encoded),
                    extra,
                    _CLOSE if self.close else b"",
                    b"\r\n",
                    encoded,
                )
            )
        )

    def accepted(self) -> None:
        self.writer.write(_ACCEPTED + (_CLOSE if self.close else b"") + b"\r\n")

    def open_sse(self, *, keepalive: float, priming_id: str | None = None, eager: bool = False) -> SseStream:
        """Start a ``text/event-stream`` response. The head goes out with the first event (or at
        once when `eager`); `priming_id` adds the 2025-11-25 priming event first."""
        if not self.chunked:
            self.close = True
        head = _SSE_HEAD + (_CHUNKED if self.chunked else _CLOSE) + b"\r\n"
        stream = SseStream(self.reader, self.writer, head, chunked=self.chunked, keepalive=keepalive)
        if priming_id is not None:
            stream.pending += stream.frame(format_sse_event("", id=priming_id))
        if eager:
            stream.flush()
        return stream


_UNSET = object()


class SseStream:
    """An SSE response being written: events are framed (chunked when HTTP/1.1) and written with
    one transport write each; `done` resolves when the stream ends (`end`) or the client goes
    away (noticed on a write or on the keep-alive tick)."""

    __slots__ = ("_tick", "chunked", "done", "keepalive", "open", "pending", "reader", "started", "writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
        *,
        chunked: bool,
        keepalive: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.reader = reader
        self.writer = writer
        self.chunked = chunked
        self.pending = head  # written before the first event
        self.open = True
        self.started = False  # the response head went out
        self.done: asyncio.Future[None] = loop.create_future()
        self.keepalive = keepalive
        self._tick: asyncio.TimerHandle | None = loop.call_later(keepalive, self._on_tick)

    def frame(self, data: bytes) -> bytes:
        return encode_chunk(data) if self.chunked else data

    def gone(self) -> bool:
        return self.writer.transport.is_closing() or self.reader.at_eof()

    def _write(self, data: bytes) -> bool:
        if not self.open:
            return False
        if self.gone():
            self._finish()
            return False
        if self.pending:
            data = self.pending + data
            self.pending = b""
        self.writer.write(data)
        self.started = True
        return True

    def send(self, encoded: bytes, sheddable: bool = False) -> bool:
        """Write one encoded JSON-RPC message as an event; False when the client is gone."""
        if self.open:
            backlog = self.writer.transport.get_write_buffer_size()
            if backlog > _SHED_AT:
                if backlog > _ABANDON_AT:
                    log.warning("SSE client is not reading (%d bytes queued); dropping its stream", backlog)
                    self.writer.transport.abort()
                    self._finish()
                    return False
                if sheddable:
                    return True
        return self._write(self.frame(sse_message(encoded)))

    def flush(self) -> None:
        if self.pending:
            self._write(b"")

    def end(self, encoded: bytes | None = None) -> None:
        """Write a last event (if any) and end the body in the same write."""
        if self.open:
            data = self.frame(sse_message(encoded)) if encoded is not None else b""
            if self.chunked:
                data += LAST_CHUNK
            if data or self.pending:
                self._write(data)
        self._finish()

    def discard(self) -> None:
        """End a stream that never started: the response goes out another way."""
        self.pending = b""
        self._finish()

    def _finish(self) -> None:
        self.open = False
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if not self.done.done():
            self.done.set_result(None)

    def _on_tick(self) -> None:
        self._tick = None
        if self._write(self.frame(_KEEPALIVE)):
            self._tick = asyncio.get_running_loop().call_later(self.keepalive, self._on_tick)


class _Exchange:
    """A POST waiting for its response: answered as JSON, or streamed when `stream` is set."""

    __slots__ = ("batch", "reply", "stream")

    def __init__(self, stream: SseStream | None, reply: asyncio.Future[bytes | None], batch: bool = False):
        self.stream = stream
        self.reply = reply  # the encoded response (JSON mode), None when the session ended first
        self.batch = batch

    def finish(self, encoded: bytes | None) -> None:
        if self.stream is not None:
            self.stream.end(encoded)
        if not self.reply.done():
            self.reply.set_result(encoded)


class _HttpSession:
    """A handshake-era session: the gateway's Session plus its HTTP routing state."""

    __slots__ = ("exchanges", "id", "last_used", "primed", "principal", "session", "stream")

    def __init__(self, sid: str, identity: Identity) -> None:
        self.id = sid
        self.principal = (identity.issuer, identity.subject)
        self.session = Session(identity, self.send, transport="http")
        self.exchanges: dict[Any, _Exchange] = {}  # the client's request id -> its pending POST
        self.stream: SseStream | None = None  # the GET stream
        self.last_used = time.monotonic()
        self.primed = 0

    def priming_id(self) -> str | None:
        if self.session.protocol_version not in PRIMING_VERSIONS:
            return None
        self.primed += 1
        return f"{self.primed}"

    def busy(self) -> bool:
        return bool(
            self.session.in_flight or self.exchanges or (self.stream is not None and self.stream.open)
        )

    def send(self, message: dict[str, Any] | list[Any], related: Any) -> None:
        """The gateway's sender: responses go to their POST, related messages to that POST's
        stream while it is open, everything else to the GET stream (or nowhere)."""
        try:
            encoded = jsonrpc.encode(message)
        except (TypeError, ValueError):
            log.exception("could not encode a message for session %s", self.session.id)
            if not (isinstance(message, dict) and "id" in message and "method" not in message):
                return
            message = jsonrpc.error(message["id"], jsonrpc.INTERNAL_ERROR, "the result cannot be encoded")
            encoded = jsonrpc.encode(message)
        if isinstance(message, list):  # a 2025-03-26 batch reply
            for item in message:
                key = item.get("id") if isinstance(item, dict) else None
                exchange = self.exchanges.get(key)
                if exchange is not None and exchange.batch:
                    for other in [k for k, v in self.exchanges.items() if v is exchange]:
                        del self.exchanges[other]
                    exchange.finish(encoded)
                    return
            log.debug("session %s: batch reply without a waiting POST dropped", self.session.id)
            return
        if "method" not in message:  # a response: to the POST of that request, nowhere else
            exchange = self.exchanges.pop(message.get("id"), None)
            if exchange is not None:
                exchange.finish(encoded)
            else:
                log.debug(
                    "session %s: response to %r has no POST waiting; dropped",
                    self.session.id,
                    message.get("id"),
                )
            return
        sheddable = message.get("method") in _SHEDDABLE
        if related is not None:
            exchange = self.exchanges.get(related)
            if (
                exchange is not None
                and exchange.stream is not None
                and exchange.stream.send(encoded, sheddable)
            ):
                return
        stream = self.stream
        if stream is None or not stream.send(encoded, sheddable):
            log.debug("session %s: %s dropped (no open stream)", self.session.id, message.get("method"))

    def detach(self) -> None:
        """The session is over: end its streams and answer the POSTs still waiting."""
        for exchange in list(self.exchanges.values()):
            exchange.finish(None)
        self.exchanges.clear()
        if self.stream is not None:
            self.stream.end()
            self.stream = None


MODERN_METHODS = frozenset(
    {
        "server/discover",
        "subscriptions/listen",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "completion/complete",
    }
)
MODERN_SSE_METHODS = SSE_METHODS | {"subscriptions/listen"}
# Errors about the request itself are HTTP 400 in 2026-07-28; the rest ride a 200.
_BAD_REQUEST_CODES = frozenset(
    {
        jsonrpc.PARSE_ERROR,
        jsonrpc.INVALID_REQUEST,
        HEADER_MISMATCH,
        MISSING_CLIENT_CAPABILITY,
        UNSUPPORTED_PROTOCOL_VERSION,
    }
)


def _header_mismatch(req: HttpRequest, method: str, params: dict[str, Any], version: str) -> str | None:
    """Why the Mcp-* headers disagree with the body (which is what is acted on), or None."""
    if modern_version(params) != version:
        return "MCP-Protocol-Version differs from _meta's protocolVersion"
    if decode_header_value(req.headers.get("mcp-method")) != method:
        return "Mcp-Method is missing or differs from the body's method"
    key = NAME_PARAMS.get(method)
    if key is not None and decode_header_value(req.headers.get("mcp-name")) != params.get(key):
        return f"Mcp-Name is missing or differs from params.{key}"
    return None


def _is_modern_body(req: HttpRequest) -> bool:
    try:
        message = req.message()
    except jsonrpc.JsonRpcError:
        return False
    params = message.get("params") if isinstance(message, dict) else None
    return isinstance(params, dict) and modern_version(params) is not None


def _modern_status(reply: dict[str, Any]) -> int:
    error = reply.get("error")
    if not isinstance(error, dict):
        return 200
    code = error.get("code")
    if code == jsonrpc.METHOD_NOT_FOUND:
        return 404
    if code in _BAD_REQUEST_CODES:
        return 400
    if code == jsonrpc.INVALID_PARAMS and "_meta" in str(error.get("message", "")):
        return 400  # missing required _meta fields
    return 200


class _Refused(Exception):
    """An HTTP-level refusal: status, JSON-RPC error, extra headers."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        data: Any = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.data = data
        self.headers = headers


class HttpFront:
    """``await start()`` (raises OSError when it cannot listen), ``await stop(grace)``.
    `address` is the bound (host, port)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        cfg = gateway.config.http
        self.cfg = cfg
        self.host, self.port = parse_listen(cfg.listen)
        self.loopback = is_loopback_host(self.host)
        self.tls = bool(cfg.tls_cert_file)
        self.address: tuple[str, int] | None = None
        self.sessions: dict[str, _HttpSession] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._closing: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._stopping = False
        self._auth_cache: dict[str, Identity] = {}
        self._auth_policy: Any = None
        self._allowed_origins = frozenset(o.lower().rstrip("/") for o in cfg.allowed_origins)
        self._allowed_hosts: frozenset[str] = frozenset()
        self.public_base = ""  # scheme://host[:port] as clients reach us
        self.resource = ""  # the canonical resource URI (RFC 9728 `resource`)
        self.metadata_url = ""  # where the protected-resource metadata is

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        ctx = None
        if self.tls:
            base = self.gateway.config.base_dir
            from sentinel_gw.policy.engine import resolve_path

            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(
                resolve_path(base, self.cfg.tls_cert_file), resolve_path(base, self.cfg.tls_key_file)
            )
            with contextlib.suppress(NotImplementedError):
                ctx.set_alpn_protocols(["http/1.1"])
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, ssl=ctx, limit=self.cfg.max_header_bytes + 1024
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        self._derive_urls()
        self._reaper = asyncio.create_task(self._reap_forever(), name="http-session-reaper")
        if self.gateway.policy.verifier is None:
            log.warning(
                'Streamable HTTP front on %s%s with AUTHENTICATION OFF (auth.mode = "none")',
                self.public_base,
                self.cfg.path,
            )
        else:
            log.info("Streamable HTTP front on %s%s; bearer tokens required", self.public_base, self.cfg.path)

    def _derive_urls(self) -> None:
        assert self.address is not None
        host = self.address[0]
        names = {"localhost", "127.0.0.1", "[::1]", _bracket(self.host).lower()}
        if self.cfg.public_url:
            parts = urlsplit(self.cfg.public_url)
            self.public_base = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
            path = parts.path.rstrip("/")
            self.resource = self.cfg.public_url
            if parts.hostname:
                names.add(_bracket(parts.hostname).lower())
        else:
            scheme = "https" if self.tls else "http"
            self.public_base = f"{scheme}://{_bracket(host)}:{self.address[1]}"
            path = self.cfg.path
            self.resource = self.public_base + path
        self.metadata_url = self.public_base + PRM_PATH + (path if path != "/" else "")
        self._allowed_hosts = frozenset(names)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening, end every session (in-flight calls get `grace` seconds), close."""
        self._stopping = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._reaper is not None:
            self._reaper.cancel()
        sessions = list(self.sessions.values())
        self.sessions.clear()
        closing = [self.gateway.close_session(hs.session, grace) for hs in sessions]
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        for hs in sessions:
            hs.detach()
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=max(grace, 0) + 3.0)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2.0)
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    def cancel_calls(self) -> None:
        """Forced shutdown: cancel every session's in-flight calls now."""
        for hs in list(self.sessions.values()):
            for task in list(hs.session.in_flight.values()):
                task.cancel()

    # -- sessions --------------------------------------------------------------------------------

    def _drop(self, hs: _HttpSession, why: str) -> None:
        """Forget a session now; its calls are cancelled and its streams ended."""
        if self.sessions.get(hs.id) is hs:
            del self.sessions[hs.id]
        log.debug("session %s (%s): %s", hs.session.id, hs.principal[1], why)
        task = asyncio.ensure_future(self.gateway.close_session(hs.session, 0.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        # close_session cancels in-flight calls first; streams end once that has run.
        task.add_done_callback(lambda _t: hs.detach())

    def _expire_idle(self, now: float) -> None:
        limit = self.cfg.session_idle_secs
        for hs in list(self.sessions.values()):
            if hs.session.closed:
                self._drop(hs, "closed")
            elif now - hs.last_used > limit and not hs.busy():
                self._drop(hs, "expired")

    async def _reap_forever(self) -> None:
        interval = min(max(self.cfg.session_idle_secs / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            self._expire_idle(time.monotonic())

    def _lookup(self, req: HttpRequest, identity: Identity) -> _HttpSession:
        sid = req.headers.get("mcp-session-id")
        if sid is None:
            raise _Refused(400, jsonrpc.INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required")
        hs = self.sessions.get(sid)
        now = time.monotonic()
        if hs is not None and (
            hs.session.closed or (now - hs.last_used > self.cfg.session_idle_secs and not hs.busy())
        ):
            self._drop(hs, "expired")
            hs = None
        if hs is None or hs.principal != (identity.issuer, identity.subject):
            # A session of someone else looks exactly like no session (no probing of ids).
            raise _Refused(404, jsonrpc.INVALID_REQUEST, SESSION_NOT_FOUND)
        version = req.headers.get("mcp-protocol-version")
        if version is not None and hs.session.protocol_version and version != hs.session.protocol_version:
            raise _Refused(
                400,
                jsonrpc.INVALID_REQUEST,
                f"Bad Request: MCP-Protocol-Version {version} is not the negotiated "
                f"{hs.session.protocol_version}",
            )
        hs.last_used = now
        return hs

    def _create(self, identity: Identity) -> _HttpSession:
        if len(self.sessions) >= self.cfg.max_sessions:
            self._expire_idle(time.monotonic())
            if len(self.sessions) >= self.cfg.max_sessions:
                raise _Refused(503, jsonrpc.INTERNAL_ERROR, "Too many sessions; retry later")
        hs = _HttpSession(secrets.token_urlsafe(24), identity)
        self.sessions[hs.id] = hs
        self.gateway.open_session(hs.session)
        return hs

    # -- connections -----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        cfg = self.cfg
        try:
            if len(self._connections) > cfg.max_connections or self._stopping:
                writer.write(_plain(503, "too many connections\n"))
                await linger_close(reader, writer)
                return
            requests = RequestReader(
                reader,
                max_header_bytes=cfg.max_header_bytes,
                header_timeout=cfg.header_timeout_secs,
                max_body_bytes=self.gateway.config.gateway.max_message_bytes,
            )
            wait = cfg.header_timeout_secs
            while not self._stopping:
                try:
                    head = await requests.read_head(wait)
                    if head is None:
                        break
                    if head.framing not in (
                        ("none",),
                        ("length", 0),
                    ) and "100-continue" in head.headers.tokens("expect"):
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    body = await requests.read_body(head)
                except HttpProtocolError as exc:
                    writer.write(_plain(exc.status, f"{exc.reason}\n"))
                    await linger_close(reader, writer)
                    return
                req = HttpRequest(head, body, reader, writer)
                await self._dispatch(req)
                if req.close or writer.transport.is_closing():
                    break
                if writer.transport.get_write_buffer_size() > _DRAIN_AT:
                    await writer.drain()
                wait = cfg.idle_timeout_secs
            if not writer.transport.is_closing():
                await linger_close(reader, writer, 0.2)
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            log.debug("HTTP connection ended: %r", exc)
        except asyncio.CancelledError:
            pass  # stop(): closing is all that is left (re-raising makes asyncio.streams log it)
        except Exception:
            log.exception("HTTP front: unexpected error")
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _dispatch(self, req: HttpRequest) -> None:
        try:
            self._check_origin(req)
            if req.path == self.cfg.path:
                await self._mcp(req)
            elif req.path == PRM_PATH or req.path == PRM_PATH + self.cfg.path:
                self._metadata(req)
            else:
                req.respond(404, b"not found\n", content_type="text/plain; charset=utf-8")
        except _Refused as exc:
            req_id = req.readable_id() if req.body else None
            req.respond_error(exc.status, exc.code, exc.message, exc.data, req_id=req_id, headers=exc.headers)

    def _check_origin(self, req: HttpRequest) -> None:
        headers = req.headers
        if self.loopback:
            host = headers.get("host") or ""
            name = (
                host[: host.index("]") + 1]
                if host.startswith("[") and "]" in host
                else host.rpartition(":")[0] or host
            )
            if name.lower() not in self._allowed_hosts:
                raise _Refused(421, jsonrpc.INVALID_REQUEST, "Misdirected Request: unexpected Host header")
        origin = headers.get("origin")
        if origin is not None:
            value = origin.lower().rstrip("/")
            if value not in self._allowed_origins and not (
                self.loopback and _LOOPBACK_ORIGIN.fullmatch(value)
            ):
                raise _Refused(403, jsonrpc.INVALID_REQUEST, "Forbidden: Origin not allowed")

    def _metadata(self, req: HttpRequest) -> None:
        if req.method != "GET":
            raise _Refused(405, jsonrpc.INVALID_REQUEST, "Method not allowed", headers=[("Allow", "GET")])
        body = {
            "resource": self.resource,
            "authorization_servers": list(self.cfg.authorization_servers),
            "scopes_supported": list(self.cfg.scopes_supported),
            "bearer_methods_supported": ["header"],
            "resource_name": "sentinel-gw",
        }
        req.respond(200, json.dumps(body).encode("utf-8"))

    # -- authentication --------------------------------------------------------------------------

    def _challenge(self, error: str | None) -> list[tuple[str, str]]:
        value = f'Bearer resource_metadata="{self.metadata_url}"'
        if error:
            value += f', error="{error}"'
        return [("WWW-Authenticate", value)]

    async def _authenticate(self, req: HttpRequest) -> Identity:
        if _ACCESS_TOKEN_QUERY.search(req.query):
            raise _Refused(
                400,
                jsonrpc.INVALID_REQUEST,
                "Bad Request: access tokens are accepted in the Authorization header only",
                headers=self._challenge("invalid_request"),
            )
        policy = self.gateway.policy
        values = req.headers.get_all("authorization")
        if len(values) > 1:
            raise _Refused(
                400,
                jsonrpc.INVALID_REQUEST,
                "Bad Request: more than one Authorization header",
                headers=self._challenge("invalid_request"),
            )
        if policy.verifier is None:
            return policy.authenticate("")
        m = _BEARER.fullmatch(values[0]) if values else None
        if m is None:
            raise _Refused(
                401,
                jsonrpc.UNAUTHENTICATED,
                "Authentication required: send Authorization: Bearer <token>",
                {"reason": "missing_token"},
                headers=self._challenge(None),
            )
        token = m.group(1)
        if self._auth_policy is not policy:  # a reload swapped the policy: verify afresh
            self._auth_cache.clear()
            self._auth_policy = policy
        identity = self._auth_cache.get(token)
        try:
            if identity is None:
                try:
                    identity = policy.authenticate(token)
                except AuthError as exc:
                    if exc.reason != "unknown_key" or policy.verifier.jwks is None:
                        raise
                    identity = await asyncio.to_thread(policy.verifier.verify_fetching, token)
                if len(self._auth_cache) >= AUTH_CACHE_SIZE:
                    self._auth_cache.clear()
                self._auth_cache[token] = identity
            policy.check_identity(identity)  # expiry and revocation, on every request
        except (AuthError, Refusal) as exc:
            self._auth_cache.pop(token, None)
            reason = exc.reason if isinstance(exc, AuthError) else (exc.data or {}).get("reason", "denied")
            message = exc.message if isinstance(exc, Refusal) else f"Authentication failed: {exc.message}"
            raise _Refused(
                401,
                jsonrpc.UNAUTHENTICATED,
                message,
                {"reason": reason},
                headers=self._challenge("invalid_token"),
            ) from None
        return identity

    # -- the MCP endpoint ------------------------------------------------------------------------

    async def _mcp(self, req: HttpRequest) -> None:
        method = req.method
        if method not in ("POST", "GET", "DELETE"):
            raise _Refused(405, jsonrpc.INVALID_REQUEST, "Method not allowed", headers=[("Allow", ALLOW_MCP)])
        identity = await self._authenticate(req)
        version = req.headers.get("mcp-protocol-version")
        if method == "POST":
            _check_post_headers(req)
        if (version is not None and version not in HANDSHAKE_VERSIONS) or (
            version is None
            and method == "POST"
            and "mcp-session-id" not in req.headers
            and _is_modern_body(req)
        ):
            await self.handle_modern(req, identity, version)
        elif method == "POST":
            await self._post(req, identity)
        elif method == "GET":
            await self._get(req, identity)
        else:
            await self._delete(req, identity)

    # -- 2026-07-28 (modern, stateless): the hook the modern era fills in ------------------------

    async def handle_modern(self, req: HttpRequest, identity: Identity, version: str | None) -> None:
        """A 2026-07-28 request: stateless, one self-contained request per POST.

        The headers must agree with the body (-32020), the version must be one we speak (-32022),
        unknown methods get 404 + -32601. Each POST gets a throw-away session; closing the
        response stream cancels the request, as 2026-07-28 specifies.
        """
        rid = req.readable_id()
        if req.method != "POST":
            raise _Refused(405, jsonrpc.INVALID_REQUEST, "Method not allowed", headers=[("Allow", "POST")])
        try:
            message = req.message()
        except jsonrpc.JsonRpcError as exc:
            raise _Refused(400, exc.code, exc.message) from None
        invalid = jsonrpc.check_message(message)
        if invalid is not None:
            raise _Refused(400, invalid.error.code, invalid.error.message)
        if "method" not in message or "id" not in message:
            req.accepted()  # 2026-07-28 defines no client notifications or responses over HTTP
            return
        method = message["method"]
        params = message.get("params") or {}
        if version is None:
            raise _Refused(400, HEADER_MISMATCH, "Header mismatch: MCP-Protocol-Version is required")
        if version not in MODERN_VERSIONS:
            req.respond_error(
                400,
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                {"supported": list(SUPPORTED_VERSIONS), "requested": version},
                req_id=rid,
            )
            return
        mismatch = _header_mismatch(req, method, params, version)
        if mismatch:
            req.respond_error(400, HEADER_MISMATCH, f"Header mismatch: {mismatch}", req_id=rid)
            return
        if method not in MODERN_METHODS:
            req.respond_error(404, jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}", req_id=rid)
            return
        await self._modern_exchange(req, identity, message)

    async def _modern_exchange(self, req: HttpRequest, identity: Identity, message: dict[str, Any]) -> None:
        req_id = message["id"]
        method = message["method"]
        loop = asyncio.get_running_loop()
        final: asyncio.Future[dict[str, Any]] = loop.create_future()
        meta = (message.get("params") or {}).get("_meta")
        streaming = method in MODERN_SSE_METHODS or (isinstance(meta, dict) and "progressToken" in meta)
        stream: SseStream | None = None

        def send(msg: dict[str, Any] | list[Any], related: Any) -> None:
            if isinstance(msg, dict) and "method" not in msg and msg.get("id") == req_id:
                if not final.done():
                    final.set_result(msg)
            elif stream is not None and related == req_id and isinstance(msg, dict):
                stream.send(jsonrpc.encode(msg), sheddable=msg.get("method") in _SHEDDABLE)

        session = Session(identity, send, transport="http")
        if streaming:
            stream = req.open_sse(
                keepalive=self.cfg.sse_keepalive_secs, eager=method == "subscriptions/listen"
            )
        self.gateway.open_session(session)
        try:
            self.gateway.receive(session, message)
            waits: set[asyncio.Future[Any]] = {final} if stream is None else {final, stream.done}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if final.done():
                reply = final.result()
                if stream is not None and stream.started:
                    stream.end(jsonrpc.encode(reply))
                else:
                    # Nothing was streamed: a plain JSON answer, with the status an error needs
                    # (-32021 and friends are HTTP 400 in 2026-07-28).
                    if stream is not None:
                        stream.discard()
                    req.respond(_modern_status(reply), jsonrpc.encode(reply))
            # else: the client closed the stream, which cancels the request (close_session below)
        finally:
            await self.gateway.close_session(session, 0.0)

    # -- handshake era ---------------------------------------------------------------------------

    async def _post(self, req: HttpRequest, identity: Identity) -> None:
        try:
            message = req.message()
        except jsonrpc.JsonRpcError as exc:
            raise _Refused(400, exc.code, exc.message) from None
        if (
            isinstance(message, dict)
            and message.get("method") == "initialize"
            and "id" in message
            and "mcp-session-id" not in req.headers
        ):
            await self._initialize(req, identity, message)
            return
        hs = self._lookup(req, identity)
        if isinstance(message, list):
            await self._post_batch(req, hs, message)
            return
        invalid = jsonrpc.check_message(message)
        if invalid is not None:
            raise _Refused(400, invalid.error.code, invalid.error.message, invalid.error.data)
        if "id" not in message or "method" not in message:  # a notification, or a client's response
            self.gateway.receive(hs.session, message)
            req.accepted()
            return
        await self._request(req, hs, message)

    async def _initialize(self, req: HttpRequest, identity: Identity, message: dict[str, Any]) -> None:
        hs = self._create(identity)
        loop = asyncio.get_running_loop()
        exchange = _Exchange(None, loop.create_future())
        hs.exchanges[message["id"]] = exchange
        self.gateway.receive(hs.session, message)
        encoded = await self._wait(hs, message["id"], exchange)
        if encoded is None or hs.session.state == "new":
            # A refused initialize leaves no session behind.
            self._drop(hs, "initialize failed")
            if encoded is None:
                raise _Refused(500, jsonrpc.INTERNAL_ERROR, "initialize was not answered")
            req.respond_json(encoded)
            return
        hs.last_used = time.monotonic()
        req.respond_json(encoded, b"Mcp-Session-Id: %s\r\n" % hs.id.encode("ascii"))
        log.debug("HTTP session %s opened for %s", hs.session.id, identity.subject)

    def _watch(self, hs: _HttpSession, req_id: Any, exchange: _Exchange) -> None:
        """A request that ends without a reply (cancelled) must still end its POST."""
        task = hs.session.in_flight.get(req_id)
        if task is not None:
            task.add_done_callback(lambda _t: self._unanswered(hs, req_id, exchange))

    async def _wait(self, hs: _HttpSession, req_id: Any, exchange: _Exchange) -> bytes | None:
        """The encoded response of a request handed to the gateway (None: none will come)."""
        self._watch(hs, req_id, exchange)
        try:
            return await exchange.reply
        finally:
            if hs.exchanges.get(req_id) is exchange:
                del hs.exchanges[req_id]

    @staticmethod
    def _unanswered(hs: _HttpSession, req_id: Any, exchange: _Exchange) -> None:
        if hs.exchanges.get(req_id) is exchange:
            del hs.exchanges[req_id]
            exchange.finish(None)

    async def _request(self, req: HttpRequest, hs: _HttpSession, message: dict[str, Any]) -> None:
        req_id = message["id"]
        if req_id in hs.exchanges:
            error = jsonrpc.error(
                req_id,
                jsonrpc.INVALID_REQUEST,
                f"Invalid Request: id {req_id!r} is already in use by a pending request",
            )
            req.respond_json(jsonrpc.encode(error))
            return
        reply: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        if message["method"] not in SSE_METHODS:
            exchange = _Exchange(None, reply)
            hs.exchanges[req_id] = exchange
            self.gateway.receive(hs.session, message)
            encoded = await self._wait(hs, req_id, exchange)
            hs.last_used = time.monotonic()
            if encoded is None:
                raise _Refused(404, jsonrpc.INVALID_REQUEST, SESSION_NOT_FOUND)
            req.respond_json(encoded)
            return
        stream = req.open_sse(keepalive=self.cfg.sse_keepalive_secs, priming_id=hs.priming_id())
        exchange = _Exchange(stream, reply)
        hs.exchanges[req_id] = exchange
        self.gateway.receive(hs.session, message)
        self._watch(hs, req_id, exchange)
        await stream.done  # the response was written, the session ended, or the client left
        hs.last_used = time.monotonic()
        if hs.exchanges.get(req_id) is exchange:
            # The client left mid-call. Not a cancellation in this era: the call goes on, its
            # related messages go to the GET stream and its response is dropped.
            exchange.stream = None
            req.close = True
            log.debug("session %s: client left the stream of request %r", hs.session.id, req_id)

    async def _post_batch(self, req: HttpRequest, hs: _HttpSession, batch: list[Any]) -> None:
        if hs.session.protocol_version != BATCH_VERSION:
            raise _Refused(
                400,
                jsonrpc.INVALID_REQUEST,
                "Invalid Request: batches are only allowed in protocol 2025-03-26",
            )
        ids = [
            m["id"] for m in batch if isinstance(m, dict) and "method" in m and jsonrpc.valid_id(m.get("id"))
        ]
        if not ids:
            self.gateway.receive(hs.session, batch)
            req.accepted()
            return
        if any(i in hs.exchanges for i in ids):
            raise _Refused(400, jsonrpc.INVALID_REQUEST, "Invalid Request: a batch id is already in use")
        exchange = _Exchange(None, asyncio.get_running_loop().create_future(), batch=True)
        for i in ids:
            hs.exchanges[i] = exchange
        self.gateway.receive(hs.session, batch)
        try:
            encoded = await exchange.reply
        finally:
            for i in ids:
                if hs.exchanges.get(i) is exchange:
                    del hs.exchanges[i]
        if encoded is None:
            raise _Refused(404, jsonrpc.INVALID_REQUEST, SESSION_NOT_FOUND)
        req.respond_json(encoded)

    async def _get(self, req: HttpRequest, identity: Identity) -> None:
        if not _accepts(req.headers, "text/event-stream"):
            raise _Refused(
                406, jsonrpc.INVALID_REQUEST, "Not Acceptable: GET needs Accept: text/event-stream"
            )
        hs = self._lookup(req, identity)
        old = hs.stream
        if old is not None and old.open and not old.gone():
            raise _Refused(409, jsonrpc.INVALID_REQUEST, "Conflict: this session already has a GET stream")
        if old is not None:
            old.end()
        stream = req.open_sse(keepalive=self.cfg.sse_keepalive_secs, priming_id=hs.priming_id(), eager=True)
        hs.stream = stream
        req.close = True  # the connection ends with the stream
        try:
            await stream.done
        finally:
            if hs.stream is stream:
                hs.stream = None
            hs.last_used = time.monotonic()

    async def _delete(self, req: HttpRequest, identity: Identity) -> None:
        hs = self._lookup(req, identity)
        del self.sessions[hs.id]
        log.debug("HTTP session %s closed by the client", hs.session.id)
        await self.gateway.close_session(hs.session, 0.0)
        hs.detach()
        req.respond(204)


def _check_post_headers(req: HttpRequest) -> None:
    headers = req.headers
    if not (_accepts(headers, "application/json") and _accepts(headers, "text/event-stream")):
        raise _Refused(
            406,
            jsonrpc.INVALID_REQUEST,
            "Not Acceptable: Accept must list application/json and text/event-stream",
        )
    ctype = (headers.get("content-type") or "").partition(";")[0].strip().lower()
    if ctype != "application/json":
        raise _Refused(
            415, jsonrpc.INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json"
        )


def _accepts(headers: Headers, media: str) -> bool:
    accept = headers.get("accept")
    if not accept:
        return False
    if media in accept and "," not in accept and ";" not in accept:
        return accept.strip().lower() == media
    family = media.split("/", 1)[0] + "/*"
    for item in accept.lower().split(","):
        value = item.partition(";")[0].strip()
        if value in (media, family, "*/*"):
            return True
    return False


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _plain(status: int, text: str) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return format_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Connection", "close"),
            ("Cache-Control", "no-store"),
        ],
        text.encode("utf-8"),
        reason=reason,
    )
