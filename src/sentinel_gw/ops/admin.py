"""The admin endpoint: ``/health`` (liveness), ``/ready`` (required backends ready), ``/metrics``.

A small HTTP/1.1 listener on asyncio streams, parsing requests with `sentinel_gw.httpwire` (the
same strict parser as the HTTP front: no obs-fold, no CL+TE, no bare LF). One request per
connection, answered with ``Connection: close``.

Behaviour, and what the original got wrong (ORIGINAL-SENTINEL §7.4, §15.22):

* A port already in use (several gateways started by several clients on one host) or any other
  bind failure makes `start()` return False after one warning: the gateway keeps serving MCP.
* ``/ready`` is 200 only when *every* required backend is ready (required = every enabled backend
  unless a list is given), not when any one of them is.
* With a token, every route except ``/health`` needs ``Authorization: Bearer <token>``
  (constant-time comparison); otherwise 401 with ``WWW-Authenticate: Bearer``.
* Hardening: the whole request head must arrive within `header_timeout` (slowloris), at most
  `max_header_bytes` (431), no request body (413), at most `max_connections` at once (503),
  GET and HEAD only (405 with ``Allow``), unknown paths 404. Binds to 127.0.0.1 unless told.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

from sentinel_gw.httpwire import Headers, HttpProtocolError, RequestReader, format_response, linger_close
from sentinel_gw.ops.metrics import Metrics, MetricsUnavailable

__all__ = ["DEFAULT_HOST", "AdminServer", "parse_listen"]

log = logging.getLogger("sentinel_gw.admin")

DEFAULT_HOST = "127.0.0.1"
ROUTES = ("/health", "/ready", "/metrics")
ALLOWED = "GET, HEAD"
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``:port`` or ``port`` -> (host, port); host defaults to
    127.0.0.1. Raises ValueError with the reason."""
    text = listen.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"invalid listen address {listen!r}: expected [host]:port")
        port_text = rest[1:]
    elif text.isdigit():
        host, port_text = "", text
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        raise ValueError(f"invalid listen address {listen!r}: expected host:port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid listen address {listen!r}: port must be 0-65535")
    return host or DEFAULT_HOST, int(port_text)


class AdminServer:
    """``await start()`` -> bool (False when it cannot listen; never raises for that);
    ``await stop()``. `address` is the bound (host, port) once started."""

    def __init__(
        self,
        listen: str,
        *,
        token: str | None,
        gateway: Any,
        metrics: Metrics | None,
        audit: Any = None,
        required_backends: Collection[str] | None = None,
        header_timeout: float = 5.0,
        write_timeout: float = 5.0,
        max_header_bytes: int = 8 * 1024,
        max_connections: int = 32,
    ) -> None:
        self.listen = listen
        self.host, self.port = parse_listen(listen)
        if token is not None and not token:
            raise ValueError("the admin token is empty")
        self._token = token.encode("utf-8") if token is not None else None
        self.gateway = gateway
        self.metrics = metrics if metrics is not None else Metrics()
        self.audit = audit
        # /metrics reads the same gateway and audit log this endpoint reports on.
        self.metrics.bind(gateway=gateway, audit=audit)
        self.required_backends = None if required_backends is None else tuple(required_backends)
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.address: tuple[str, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> bool:
        if self._server is not None:
            return True
        try:
            self._server = await asyncio.start_server(
                self._connection, self.host, self.port, limit=self.max_header_bytes + 1024
            )
        except OSError as exc:  # in use, not permitted, unknown host, address not available
            log.warning(
                "admin endpoint not started: cannot listen on %s (%s); MCP serving continues without "
                "/health, /ready and /metrics",
                self.listen,
                exc.strerror or exc,
            )
            return False
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        log.info(
            "admin endpoint on http://%s/ (/health, /ready, /metrics)%s",
            _hostport(*self.address),
            "; bearer token required" if self._token else "",
        )
        return True

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.write_timeout)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), self.write_timeout)

    @property
    def serving(self) -> bool:
        return self._server is not None

    # -- connections -----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        full = len(self._tasks) >= self.max_connections
        if task is not None:
            self._tasks.add(task)
        try:
            linger = True
            try:
                if full:
                    await self._send(writer, 503, _text("too many admin connections\n"), head_only=False)
                else:
                    await self._serve_one(reader, writer)
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                linger = False
                log.debug("admin connection ended: %r", exc)
            except Exception:
                log.exception("admin endpoint: unexpected error")
            if linger:
                await linger_close(reader, writer)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        except asyncio.CancelledError:
            # stop(): closing is all that is left to do. Not re-raised: asyncio.streams (3.10,
            # 3.11) logs a cancelled connection task as an error.
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests = RequestReader(
            reader, max_header_bytes=self.max_header_bytes, header_timeout=self.header_timeout
        )
        try:
            head = await requests.read_head()
        except HttpProtocolError as exc:
            await self._send(writer, exc.status, _text(f"{exc.reason}\n"), head_only=False)
            return
        if head is None:
            return  # the client went away before finishing a request
        head_only = head.method == "HEAD"
        if head.framing not in (("none",), ("length", 0)):
            await self._send(writer, 413, _text("request bodies are not accepted\n"), head_only=head_only)
            return
        status, headers, body = self._route(head.method, head.target, head.headers)
        await self._send(writer, status, (headers, body), head_only=head_only)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        response: tuple[list[tuple[str, str]], bytes],
        *,
        head_only: bool,
    ) -> None:
        headers, body = response
        hdrs = Headers(headers)
        hdrs.set("Content-Length", str(len(body)))
        hdrs.set("Cache-Control", "no-store")
        hdrs.set("X-Content-Type-Options", "nosniff")
        hdrs.set("Connection", "close")
        writer.write(format_response(status, hdrs, None if head_only else body))
        await asyncio.wait_for(writer.drain(), self.write_timeout)

    # -- routing (no I/O) ------------------------------------------------------------------------

    def _route(self, method: str, target: str, headers: Headers) -> tuple[int, list[tuple[str, str]], bytes]:
        path = target.split("?", 1)[0] if target.startswith("/") else urlsplit(target).path
        if path not in ROUTES:
            return 404, *_text("not found\n")
        if method not in ("GET", "HEAD"):
            hdrs, body = _text("method not allowed\n")
            return 405, [("Allow", ALLOWED), *hdrs], body
        if path != "/health" and not self._authorized(headers):
            presented = headers.get("authorization") is not None
            challenge = 'Bearer realm="sentinel-gw"' + (', error="invalid_token"' if presented else "")
            hdrs, body = _text("Unauthorized\n")
            return 401, [("WWW-Authenticate", challenge), *hdrs], body
        if path == "/health":
            return 200, *_json({"status": "ok"})
        if path == "/ready":
            return self._ready()
        return self._metrics()

    def _authorized(self, headers: Headers) -> bool:
        if self._token is None:
            return True
        values = headers.get_all("authorization")
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip(" ").encode("latin-1"), self._token)

    def backend_states(self) -> dict[str, str]:
        backends = getattr(self.gateway, "backends", None) or {}
        return {name: _state(b) for name, b in sorted(backends.items())}

    def _ready(self) -> tuple[int, list[tuple[str, str]], bytes]:
        backends = getattr(self.gateway, "backends", None) or {}
        states = self.backend_states()
        if self.required_backends is None:
            required = [name for name, state in states.items() if state != "disabled"]
        else:
            required = list(self.required_backends)
        missing = [name for name in required if name not in backends]
        for name in missing:
            states[name] = "missing"
        not_ready = [name for name in required if name in missing or not _is_ready(backends[name])]
        if not required and self.required_backends is None:
            body = {"status": "not_ready", "reason": "no enabled backends", "backends": states}
            return 503, *_json(body)
        if not_ready:
            body = {"status": "not_ready", "backends": states, "waiting_for": sorted(not_ready)}
            return 503, *_json(body)
        return 200, *_json({"status": "ready", "backends": states})

    def _metrics(self) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            text = self.metrics.render()
        except MetricsUnavailable as exc:
            return 503, *_text(f"{exc}\n")
        except Exception:
            log.exception("admin endpoint: rendering metrics failed")
            return 500, *_text("rendering metrics failed; see the gateway log\n")
        return 200, [("Content-Type", self.metrics.content_type)], text


def _state(backend: Any) -> str:
    state = getattr(backend, "state", None)
    return str(getattr(state, "value", state) or "unknown").lower()


def _is_ready(backend: Any) -> bool:
    ready = getattr(backend, "ready", None)
    if isinstance(ready, bool):
        return ready
    return _state(backend) == "ready"


def _text(message: str) -> tuple[list[tuple[str, str]], bytes]:
    return [("Content-Type", _TEXT)], message.encode("utf-8")


def _json(value: Any) -> tuple[list[tuple[str, str]], bytes]:
    return [("Content-Type", _JSON)], (json.dumps(value, sort_keys=True) + "\n").encode("utf-8")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
