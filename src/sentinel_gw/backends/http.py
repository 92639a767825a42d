"""An MCP server reached over HTTP: Streamable HTTP in the handshake era (2025-03-26 ..
2025-11-25) with the legacy HTTP+SSE transport (2024-11-05) as a fallback, or stateless
Streamable HTTP (2026-07-28), per the backend's `era` (legacy | modern | auto).

Same contract as `StdioBackend` (the gateway cannot tell them apart), plus resilience: a circuit
breaker, retries of requests that are safe to repeat, idle timeouts that progress extends up to a
hard cap, and periodic health pings.

Wire rules this module keeps (the original gateway broke each of them):

* A POST answered with ``text/event-stream`` is read event by event; notifications and server
  requests that come before the response are routed, and only the message whose id is ours is
  the reply.
* ``Mcp-Session-Id`` from the initialize response goes on every later request, together with
  ``MCP-Protocol-Version``; a 404 on a known session re-initializes once.
* A request that may have reached the server is repeated only when repeating it is harmless
  (`resilience.is_retry_safe`): a tool call is never executed twice by accident.
* Backend response bodies (HTML error pages, stack traces, echoed credentials) are logged,
  truncated, and never put into what the client sees.
* 2026-07-28: no initialize and no session; every POST carries `MCP-Protocol-Version`,
  `Mcp-Method` and (for named methods) `Mcp-Name` matching its body, and `_meta` with our version
  and the caller's capabilities. Closing a response stream is the cancellation; list changes
  arrive on a long-lived `subscriptions/listen` POST instead of the GET stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

from sentinel_gw import __version__
from sentinel_gw.backends.base import (
    BackendError,
    BackendEvents,
    BackendState,
    Caller,
    OpenQuestions,
    ProgressCallback,
)
from sentinel_gw.config_schema import BackendConfig
from sentinel_gw.httpwire import (
    BodyTooLarge,
    ConnectError,
    ConnectionLost,
    HttpClient,
    HttpError,
    HttpResponse,
    HttpTimeout,
    ProtocolError,
    Timeouts,
)
from sentinel_gw.observe import current_client_caps
from sentinel_gw.protocol import jsonrpc
from sentinel_gw.protocol.mcp import (
    HANDSHAKE_VERSIONS,
    HEADER_MISMATCH,
    LATEST_HANDSHAKE,
    LIST_CHANGED,
    MISSING_CLIENT_CAPABILITY,
    MODERN_VERSIONS,
    NAME_PARAMS,
    REMOVED_IN_MODERN,
    UNSUPPORTED_PROTOCOL_VERSION,
    encode_header_value,
    modern_meta,
    parse_discover,
    with_modern_meta,
)
from sentinel_gw.resilience import (
    BreakerState,
    CircuitBreaker,
    HealthState,
    HealthTracker,
    RetryBudget,
    backoff_delays,
    is_retry_safe,
    should_retry,
)

__all__ = ["HttpBackend"]

log = logging.getLogger("sentinel_gw.backend")

ACCEPT_BOTH = "application/json, text/event-stream"
ACCEPT_SSE = "text/event-stream"
LOGGED_BODY_CHARS = 300
ERROR_BODY_LIMIT = 64 * 1024
SIDE_TIMEOUT = 10.0  # notifications, responses to server requests, DELETE: small and quick
STOP_DELETE_TIMEOUT = 2.0
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 30.0
RETRY_INITIAL = 0.1
RETRY_MAX = 2.0
HEALTH_TIMEOUT_MAX = 10.0
MAX_RESUMES = 100  # the request's deadline bounds it too; this bounds a server that loops
MIN_RESUME_DELAY = 0.02
# Streams stay open for as long as the server likes: HTTP-level read/total limits would cut
# them; every wait on them is bounded by the request's own deadline instead.
_EXTRA_CONNECTIONS = 4  # GET stream or listen POST, notifications, responses to server requests, DELETE
# Statuses with which a handshake-era server turns away a 2026-07-28 request (and vice versa
# for initialize): no session, unknown method, no such endpoint.
ERA_MISMATCH_STATUSES = (400, 404, 405)
# Errors only a 2026-07-28 server sends: positive evidence of the modern era.
MODERN_ERRORS = frozenset({HEADER_MISMATCH, MISSING_CLIENT_CAPABILITY, UNSUPPORTED_PROTOCOL_VERSION})
# 2026-07-28: which params field each named method mirrors into the Mcp-Name header.
# Notifications a listen stream may carry to the gateway; anything else there is not for us.
LISTEN_NOTIFICATIONS = frozenset({*LIST_CHANGED.values(), "notifications/resources/updated"})


class _AttemptError(Exception):
    """One attempt failed without an answer from the server.

    `subject` is what `resilience.should_retry` judges (the transport exception or the HTTP
    status); `message` is safe to show the client (no response body, no URL).
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        subject: BaseException | int,
        maybe_sent: bool,
        breaker_failure: bool,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.subject = subject
        self.maybe_sent = maybe_sent
        self.breaker_failure = breaker_failure
        self.status = status


class _SessionExpired(Exception):
    """The connection must be set up again before this request can go anywhere: the session is
    gone (HTTP 404), or with era = auto the server now answers like the other era."""

    def __init__(self, generation: int, why: str = "session expired (HTTP 404)") -> None:
        super().__init__(why)
        self.generation = generation
        self.why = why


class _Resume:
    """Where an SSE answer stream stopped: resumable with GET + Last-Event-ID."""

    __slots__ = ("last_id", "retry_ms")

    def __init__(self) -> None:
        self.last_id = ""
        self.retry_ms: int | None = None


class _Fatal(Exception):
    """A problem reconnecting cannot fix (configuration, missing secret, TLS files)."""


class _Deadline:
    """An idle timeout that progress restarts, never past a hard cap from the start."""

    def __init__(self, idle: float, cap: float) -> None:
        now = time.monotonic()
        self.idle = idle
        self.hard = now + max(cap, idle)
        self.at = min(now + idle, self.hard)
        self.held = False

    def extend(self) -> None:
        self.at = min(time.monotonic() + self.idle, self.hard)
        self.held = False

    def hold(self) -> None:
        """The server is waiting for the user: only the hard cap applies until extend()."""
        self.at = self.hard
        self.held = True

    def remaining(self) -> float:
        return self.at - time.monotonic()


class _Pending:
    __slots__ = ("caller", "deadline", "future", "last_progress", "method", "on_progress", "wake")

    def __init__(
        self,
        future: asyncio.Future[dict[str, Any]],
        method: str,
        on_progress: ProgressCallback | None,
        deadline: _Deadline,
        caller: Caller | None,
    ) -> None:
        self.future = future
        self.method = method
        self.on_progress = on_progress
        self.deadline = deadline
        self.caller = caller  # handed back with what the server sends on this request's stream
        self.last_progress: float | None = None
        # Set when the deadline moves earlier (a question was answered): the waiter recomputes.
        self.wake: asyncio.Future[None] = future.get_loop().create_future()


def _truncate(text: str) -> str:
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= LOGGED_BODY_CHARS else text[:LOGGED_BODY_CHARS] + "..."


def _content_type(resp: HttpResponse) -> str:
    return (resp.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


def _valid_session_id(value: str) -> bool:
    return 0 < len(value) <= 1024 and all(0x21 <= ord(c) <= 0x7E for c in value)


def _route_headers(method: str, params: dict[str, Any] | None, version: str) -> list[tuple[str, str]]:
    """The headers a 2026-07-28 server checks against the body (-32020 when they disagree)."""
    headers = [("MCP-Protocol-Version", version), ("Mcp-Method", method)]
    key = NAME_PARAMS.get(method)
    value = params.get(key) if key is not None and params is not None else None
    if isinstance(value, str):
        encoded = encode_header_value(value)
        if encoded is not None:
            headers.append(("Mcp-Name", encoded))
    return headers


def _modern_offer(data: Any) -> list[str]:
    """The 2026-07-28 versions we speak among those a -32022 error says the server supports."""
    supported = data.get("supported") if isinstance(data, dict) else None
    if not isinstance(supported, list):
        return []
    return [v for v in MODERN_VERSIONS if v in supported]


class HttpBackend:
    def __init__(
        self,
        cfg: BackendConfig,
        events: BackendEvents,
        *,
        environ: Mapping[str, str],
        base_dir: str = ".",
        max_message_bytes: int = 4 * 1024 * 1024,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.events = events
        self.environ = environ
        self.base_dir = base_dir
        self.max_message_bytes = max_message_bytes
        self.state = BackendState.STARTING if cfg.enabled else BackendState.DISABLED
        self.capabilities: dict[str, Any] = {}
        self.server_info: dict[str, Any] = {}
        self.instructions = ""
        self.protocol_version = ""
        self.last_error = ""
        self.restarts = 0
        self.pid: int | None = None
        self.transport = ""  # "streamable" or "sse" once connected
        self.modern = False  # speaking 2026-07-28 to this server (decided at each connect)
        # era = auto: the era the last successful connect used, tried first on the next one.
        self.era_verdict: str | None = None
        self._upstream_caps: dict[str, Any] = {}
        self.breaker = CircuitBreaker.from_config(
            cfg.breaker, name=cfg.name, on_state_change=self._breaker_changed
        )
        self._health = HealthTracker(on_change=self._health_changed)
        self._budget = RetryBudget()
        self._rng = rng
        self._client: HttpClient | None = None
        self._static_headers: list[tuple[str, str]] = []
        self._session_id: str | None = None
        self._post_url = cfg.url
        self._generation = 0
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._active = 0
        self._tool_hints: dict[str, bool] = {}
        self._ready = asyncio.Event()
        self._settled = asyncio.Event()
        self._lost = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._handshake_lock = asyncio.Lock()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._recovery_task: asyncio.Task[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._server_requests: dict[Any, asyncio.Task[None]] = {}
        # Questions relayed to the client and not yet answered: while any is open, the server is
        # waiting for a human, so its calls run against their hard deadline only.
        self._questions = OpenQuestions(self._hold_all)

    # -- public contract ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.state is BackendState.DISABLED:
            self._settled.set()
            return
        self._supervisor = asyncio.create_task(self._supervise(), name=f"backend:{self.name}")
        if self.cfg.health_interval_secs > 0:
            self._health_task = asyncio.create_task(self._health_loop(), name=f"health:{self.name}")

    async def wait_ready(self, timeout: float) -> bool:
        if self._ready.is_set():
            return True
        if timeout <= 0:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)
        return self._ready.is_set()

    @property
    def ready(self) -> bool:
        # An open circuit takes the backend out of lists exactly like a crash would.
        return self._ready.is_set() and self.breaker.state is BreakerState.CLOSED

    @property
    def health(self) -> HealthState:
        return self._health.state

    @property
    def session_id(self) -> str | None:
        return self._session_id

    def in_flight(self) -> int:
        return self._active

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        caller: Caller | None = None,
    ) -> dict[str, Any]:
        if not self._ready.is_set():
            raise BackendError(
                self.name, "unavailable", f"Backend '{self.name}' is not available ({self.state.value})"
            )
        if self._active >= self.cfg.max_in_flight:
            raise BackendError(
                self.name,
                "overloaded",
                f"Backend '{self.name}' has {self.cfg.max_in_flight} requests in flight; try again shortly",
                retry_after_ms=100,
            )
        if self.modern and method in REMOVED_IN_MODERN:
            raise jsonrpc.JsonRpcError(
                jsonrpc.METHOD_NOT_FOUND, f"{method} does not exist in {self.protocol_version}"
            )
        tool = params.get("name") if method == "tools/call" and isinstance(params, dict) else None
        tool = tool if isinstance(tool, str) else None
        idle = timeout or (self.cfg.tool_timeouts.get(tool) if tool else None) or self.cfg.timeout_secs
        retry_safe = is_retry_safe(
            method,
            tool=tool,
            idempotent_tools=self.cfg.idempotent_tools,
            tool_idempotent_hint=self._tool_hints.get(tool or "", False),
            trust_hint=self.cfg.retry_idempotent_hint,
        )
        self._active += 1
        try:
            result = await self._call(
                method,
                params,
                _Deadline(idle, self.cfg.max_timeout_secs),
                on_progress,
                retry_safe=retry_safe,
                retries=self.cfg.retries,
                caller=caller,
            )
        finally:
            self._active -= 1
        if method == "tools/list":
            self._learn_tools(result)
        return result

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        if self.modern:
            # 2026-07-28 defines no client notifications over HTTP (cancelling is closing a stream).
            log.debug("backend %s: %s not sent (2026-07-28)", self.name, method)
            return
        if self._ready.is_set():
            await self._post_message(jsonrpc.notification(method, params))

    async def stop(self) -> None:
        self._stopping = True
        self._stop_event.set()
        self._ready.clear()
        tasks = [self._supervisor, self._health_task, self._recovery_task, self._stream_task]
        tasks += list(self._background) + list(self._server_requests.values())
        for task in tasks:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        for task in tasks:
            if task is not None and task is not asyncio.current_task():
                with contextlib.suppress(BaseException):
                    await task
        self._fail_pending("stopped", "is shutting down")
        if self._client is not None:
            if self._session_id is not None and self.transport == "streamable":
                await self._delete_session()
            await self._client.aclose()
        self._health.stop()
        if self.state is not BackendState.DISABLED:
            self.state = BackendState.STOPPED
        self._settled.set()

    def cancel_server_request(self, req_id: Any) -> None:
        """The server withdrew a request it sent us; the client side is told by the waiter."""
        task = self._server_requests.get(req_id)
        if task is not None:
            task.cancel()

    # -- requests with resilience --------------------------------------------------------------

    async def _call(
        self,
        method: str,
        params: dict[str, Any] | None,
        deadline: _Deadline,
        on_progress: ProgressCallback | None,
        *,
        retry_safe: bool,
        retries: int,
        caller: Caller | None = None,
    ) -> dict[str, Any]:
        self._budget.deposit()
        delays: Iterator[float] = backoff_delays(RETRY_INITIAL, RETRY_MAX, rng=self._rng)
        attempt = 0
        renewed = False
        while True:
            if self._stopping:
                raise BackendError(self.name, "stopped", f"Backend '{self.name}' is shutting down")
            if not self.breaker.allow():
                raise self._circuit_error()
            generation = self._generation
            try:
                try:
                    result = await self._attempt(method, params, deadline, on_progress, caller=caller)
                except jsonrpc.JsonRpcError as exc:
                    if self._turned_modern(exc):
                        raise _SessionExpired(generation, "now refuses handshake-era requests") from None
                    raise
            except _SessionExpired as exc:
                self.breaker.record_success()  # a 404 is an answer: the server is alive
                if renewed:
                    raise BackendError(
                        self.name, "session_expired", f"Backend '{self.name}' keeps rejecting its session"
                    ) from None
                try:
                    await self._renew_session(exc.generation, exc.why)
                except _AttemptError as err:
                    raise self._client_error(err, method) from None
                renewed = True
                if not retry_safe:
                    raise BackendError(
                        self.name,
                        "session_expired",
                        f"Backend '{self.name}' had to be reconnected ({exc.why}); {method} was not "
                        "repeated because repeating it may not be safe",
                    ) from None
                continue
            except _AttemptError as exc:
                if exc.breaker_failure:
                    self.breaker.record_failure()
                else:
                    self.breaker.record_success()
                if exc.reason == "timeout":
                    raise self._client_error(exc, method) from None
                if (
                    attempt < retries
                    and self._ready.is_set()
                    and should_retry(exc.subject, maybe_sent=exc.maybe_sent, retry_safe=retry_safe)
                    and self._budget.withdraw()
                ):
                    delay = next(delays)
                    if delay < deadline.remaining():
                        attempt += 1
                        log.info(
                            "backend %s: %s failed (%s); retry %d in %.2f s",
                            self.name,
                            method,
                            exc.message,
                            attempt,
                            delay,
                        )
                        await asyncio.sleep(delay)
                        continue
                raise self._client_error(exc, method) from None
            except asyncio.CancelledError:
                self.breaker.release()
                raise
            except jsonrpc.JsonRpcError:
                self.breaker.record_success()  # an error reply is an answer
                raise
            self.breaker.record_success()
            return result

    def _circuit_error(self) -> BackendError:
        ms = max(1, math.ceil(self.breaker.retry_after() * 1000))
        return BackendError(
            self.name,
            "circuit_open",
            f"Backend '{self.name}' is failing; calls are paused (circuit open), retry in {ms / 1000:g} s",
            retry_after_ms=ms,
        )

    def _client_error(self, exc: _AttemptError, method: str) -> BackendError:
        err = BackendError(self.name, exc.reason, exc.message)
        if exc.status is not None:
            err.data["status"] = exc.status
        self.last_error = exc.message
        return err

    async def _attempt(
        self,
        method: str,
        params: dict[str, Any] | None,
        deadline: _Deadline,
        on_progress: ProgressCallback | None,
        *,
        capture_session: bool = False,
        version: str | None = None,
        caller: Caller | None = None,
    ) -> dict[str, Any]:
        """One POST and its answer. `version` sends a 2026-07-28 request whose params already
        carry their `_meta` (the era probe); once connected in that era every request does."""
        if version is None and self.modern:
            version = self.protocol_version
            params = self._modern_params(params)
        route = _route_headers(method, params, version) if version is not None else None
        self._next_id += 1
        req_id = self._next_id
        if on_progress is not None and params is not None:
            # Our id doubles as the progress token: unique among this backend's live requests.
            meta = params.get("_meta")
            if isinstance(meta, dict) and "progressToken" in meta:
                params = {**params, "_meta": {**meta, "progressToken": req_id}}
            else:
                on_progress = None
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), method, on_progress, deadline, caller)
        if self._questions:
            deadline.hold()
        elif deadline.held:  # the question was answered between two attempts
            deadline.extend()
        self._pending[req_id] = pending
        body = jsonrpc.encode(jsonrpc.request(req_id, method, params))
        sender: asyncio.Task[str] | None = asyncio.create_task(
            self._send_request(req_id, body, self._generation, capture_session, route)
        )
        # 2026-07-28 over HTTP has no cancel notification: closing the response stream (the
        # sender's connection, in `finally`) is the cancellation.
        announce_cancel = method != "initialize" and route is None
        waiting: set[asyncio.Future[Any]] = {pending.future, sender, pending.wake}
        try:
            while True:
                remaining = deadline.remaining()
                if remaining <= 0:
                    if announce_cancel:
                        self._cancel_upstream(req_id, "timeout")
                    raise _AttemptError(
                        "timeout",
                        f"Backend '{self.name}' did not answer {method} within {deadline.idle:g} s",
                        subject=TimeoutError(),
                        maybe_sent=True,
                        breaker_failure=True,
                    )
                await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if pending.future.done():
                    return pending.future.result()
                if pending.wake.done():
                    waiting.discard(pending.wake)
                    pending.wake = loop.create_future()
                    waiting.add(pending.wake)
                if sender is not None and sender.done():
                    waiting.discard(sender)
                    outcome = sender.result()  # raises _AttemptError / _SessionExpired
                    sender = None
                    if outcome != "accepted":
                        raise _AttemptError(
                            "bad_response",
                            f"Backend '{self.name}' ended its response without answering {method}",
                            subject=ConnectionLost("response ended without an answer"),
                            maybe_sent=True,
                            breaker_failure=True,
                        )
        except asyncio.CancelledError:
            if announce_cancel:
                self._cancel_upstream(req_id, "cancelled by client")
            raise
        finally:
            self._pending.pop(req_id, None)
            if sender is not None:
                if not sender.done():
                    sender.cancel()
                    await asyncio.wait({sender})
                if not sender.cancelled():
                    sender.exception()  # retrieved: the answer (or the failure) was already decided

    async def _send_request(
        self,
        req_id: int,
        body: bytes,
        generation: int,
        capture_session: bool,
        route: list[tuple[str, str]] | None,
    ) -> str:
        """POST one request and read what comes back; "accepted" when the answer will come on
        another stream (202, legacy transport), "ended" when this response is over.

        A 2025-11-25 server may end the SSE answer early after giving it event ids (polling);
        the stream is then resumed with GET + Last-Event-ID, which is not a re-send."""
        outcome = await self._post_request(req_id, body, generation, capture_session, route)
        resumes = 0
        while isinstance(outcome, _Resume):
            resumes += 1
            if resumes > MAX_RESUMES:
                break
            await asyncio.sleep(max(MIN_RESUME_DELAY, (outcome.retry_ms or 0) / 1000))
            outcome = await self._resume(req_id, outcome)
        if isinstance(outcome, _Resume):
            raise _AttemptError(
                "bad_response",
                f"Backend '{self.name}' kept ending its response stream without answering",
                subject=ConnectionLost("too many stream resumptions"),
                maybe_sent=True,
                breaker_failure=True,
            )
        return outcome

    async def _resume(self, req_id: int, where: _Resume) -> str | _Resume:
        assert self._client is not None
        headers = self._headers(ACCEPT_SSE, json_body=False)
        headers.append(("Last-Event-ID", where.last_id))
        try:
            resp = await self._client.request(
                "GET", self.cfg.url, headers=headers, timeouts=self._stream_timeouts()
            )
        except HttpError as exc:
            raise self._transport_error(exc) from None
        try:
            if resp.status == 200 and _content_type(resp) == "text/event-stream":
                return await self._read_sse(resp, req_id, where)
            text = await self._error_body(resp)
            log.warning("backend %s: resuming a stream: HTTP %d: %s", self.name, resp.status, _truncate(text))
            raise _AttemptError(
                "bad_response",
                f"Backend '{self.name}' ended its response stream and refused to resume it",
                subject=ConnectionLost("resumption refused"),
                maybe_sent=True,
                breaker_failure=resp.status >= 500,
            )
        except HttpError as exc:
            raise self._transport_error(exc) from None
        finally:
            await resp.aclose()

    async def _post_request(
        self,
        req_id: int,
        body: bytes,
        generation: int,
        capture_session: bool,
        route: list[tuple[str, str]] | None,
    ) -> str | _Resume:
        assert self._client is not None
        sent_session = self._session_id
        probing = route is not None and not self.modern
        try:
            resp = await self._client.request(
                "POST",
                self._post_url,
                headers=self._headers(ACCEPT_BOTH, json_body=True, route=route),
                body=body,
                timeouts=self._stream_timeouts(),
            )
        except HttpError as exc:
            raise self._transport_error(exc) from None
        try:
            status = resp.status
            if capture_session and 200 <= status < 300:
                sid = resp.headers.get("mcp-session-id")
                if sid is not None:
                    if not _valid_session_id(sid):
                        raise _AttemptError(
                            "bad_response",
                            f"Backend '{self.name}' sent an invalid session id",
                            subject=ProtocolError("invalid Mcp-Session-Id"),
                            maybe_sent=True,
                            breaker_failure=True,
                        )
                    self._session_id = sid
            if self.transport == "sse" and 200 <= status < 300:
                await self._discard(resp)
                return "accepted"
            if status == 202:
                await self._discard(resp)
                return "accepted"
            if 200 <= status < 300:
                ctype = _content_type(resp)
                if ctype == "text/event-stream":
                    # 2026-07-28 removed resumability: a broken answer stream is a lost answer.
                    return await self._read_sse(resp, req_id, _Resume(), resumable=route is None)
                if ctype == "application/json":
                    self._dispatch_body(await resp.read(self.max_message_bytes))
                    return "ended"
                raise _AttemptError(
                    "bad_response",
                    f"Backend '{self.name}' answered with an unexpected content type",
                    subject=ProtocolError(f"content type {ctype!r}"),
                    maybe_sent=True,
                    breaker_failure=True,
                )
            if status == 404 and sent_session is not None and self.transport == "streamable":
                raise _SessionExpired(generation)
            text = await self._error_body(resp)
            if self._dispatch_error_body(text, req_id):
                return "ended"
            if (
                route is not None
                and self.modern
                and self.cfg.era == "auto"
                and status in ERA_MISMATCH_STATUSES
                and generation == self._generation
            ):
                log.info("backend %s: HTTP %d: %s", self.name, status, _truncate(text) or "(no body)")
                raise _SessionExpired(generation, f"answers 2026-07-28 requests with HTTP {status}")
            # During initialize and the era probe these three mean "not this transport or era"
            # (fallback), not trouble.
            quiet = (capture_session or probing) and status in ERA_MISMATCH_STATUSES
            log.log(
                logging.INFO if quiet else logging.WARNING,
                "backend %s: HTTP %d: %s",
                self.name,
                status,
                _truncate(text) or "(no body)",
            )
            if status == 404 and self.transport == "sse" and generation == self._generation:
                self._connection_lost("the server no longer knows this connection (HTTP 404)")
            raise self._status_error(status)
        except HttpError as exc:
            raise self._transport_error(exc) from None
        finally:
            await resp.aclose()

    def _status_error(self, status: int) -> _AttemptError:
        hint = " (check its credentials)" if status in (401, 403) else ""
        return _AttemptError(
            "http_error",
            f"HTTP {status} from backend '{self.name}'{hint}",
            subject=status,
            maybe_sent=True,
            breaker_failure=status >= 500,
            status=status,
        )

    def _transport_error(self, exc: HttpError) -> _AttemptError:
        log.info("backend %s: %s: %s", self.name, type(exc).__name__, exc)
        if isinstance(exc, BodyTooLarge):
            # Deterministic, and the server is alive: neither a retry nor a breaker failure helps.
            return _AttemptError(
                "too_large",
                f"Backend '{self.name}' sent a response over the size limit",
                subject=exc,
                maybe_sent=True,
                breaker_failure=False,
            )
        if isinstance(exc, ConnectError) or not exc.maybe_sent:
            message = f"Backend '{self.name}' is unreachable"
            reason = "unavailable"
        elif isinstance(exc, HttpTimeout):
            message = f"Backend '{self.name}' timed out"
            reason = "timeout"
        elif isinstance(exc, ProtocolError):
            message = f"Backend '{self.name}' sent an invalid HTTP response"
            reason = "bad_response"
        else:
            message = f"Backend '{self.name}' dropped the connection before answering"
            reason = "unavailable"
        return _AttemptError(reason, message, subject=exc, maybe_sent=exc.maybe_sent, breaker_failure=True)

    async def _read_sse(
        self, resp: HttpResponse, req_id: int, where: _Resume, *, resumable: bool = True
    ) -> str | _Resume:
        """ "ended" once our answer came (or the stream ended without ids to resume from)."""
        events = resp.sse(self.max_message_bytes)
        try:
            async for event in events:
                if event.id:
                    where.last_id = event.id
                if event.retry is not None:
                    where.retry_ms = event.retry
                if not event.data:
                    continue  # priming event or a reconnection hint
                answered = False
                for message in self._decode(event.data, "SSE event"):
                    self._on_message(message, via=req_id)
                    if "method" not in message and message.get("id") == req_id:
                        answered = True
                if answered:
                    return "ended"  # a well-behaved server ends the stream now; do not wait for it
        finally:
            await events.aclose()
        return where if resumable and where.last_id and self.transport == "streamable" else "ended"

    def _dispatch_body(self, data: bytes) -> None:
        messages = self._decode(data, "JSON response")
        if not messages:
            raise _AttemptError(
                "bad_response",
                f"Backend '{self.name}' sent an invalid JSON-RPC response",
                subject=ProtocolError("invalid JSON-RPC body"),
                maybe_sent=True,
                breaker_failure=True,
            )
        for message in messages:
            self._on_message(message)

    def _dispatch_error_body(self, text: str, req_id: int) -> bool:
        """A JSON-RPC error for this request in a 4xx/5xx body is the answer, whatever the status."""
        if not text.lstrip().startswith("{"):
            return False
        try:
            message = jsonrpc.decode(text)
        except jsonrpc.JsonRpcError:
            return False
        if (
            isinstance(message, dict)
            and jsonrpc.check_message(message) is None
            and "error" in message
            and message.get("id") == req_id
        ):
            self._on_message(message)
            return True
        return False

    def _decode(self, data: bytes | str, where: str) -> list[dict[str, Any]]:
        try:
            decoded = jsonrpc.decode(data)
        except jsonrpc.JsonRpcError:
            log.warning(
                "backend %s: %s is not JSON; ignored: %s", self.name, where, _truncate(str(data)[:400])
            )
            return []
        items = decoded if isinstance(decoded, list) else [decoded]
        out = []
        for item in items:
            if jsonrpc.check_message(item) is None:
                out.append(item)
            else:
                log.warning("backend %s: invalid JSON-RPC in %s ignored", self.name, where)
        return out

    async def _error_body(self, resp: HttpResponse) -> str:
        try:
            data = await resp.read(ERROR_BODY_LIMIT)
        except HttpError:
            return ""
        return data.decode("utf-8", "replace")

    @staticmethod
    async def _discard(resp: HttpResponse) -> None:
        with contextlib.suppress(HttpError):
            await resp.read(ERROR_BODY_LIMIT)

    def _cancel_upstream(self, req_id: int, reason: str) -> None:
        if self._stopping or self._client is None:
            return
        self._spawn(
            self._post_message(
                jsonrpc.notification("notifications/cancelled", {"requestId": req_id, "reason": reason})
            )
        )

    async def _post_message(self, message: dict[str, Any]) -> bool:
        """POST a notification or a response; the server acknowledges with 202."""
        if self._client is None:
            return False
        try:
            resp = await self._client.request(
                "POST",
                self._post_url,
                headers=self._headers(ACCEPT_BOTH, json_body=True),
                body=jsonrpc.encode(message),
                timeouts=Timeouts(
                    connect=self.cfg.connect_timeout_secs, read=SIDE_TIMEOUT, total=SIDE_TIMEOUT
                ),
            )
        except HttpError as exc:
            log.info("backend %s: sending %s failed: %s", self.name, message.get("method", "a response"), exc)
            return False
        try:
            if 200 <= resp.status < 300:
                await self._discard(resp)
                return True
            text = await self._error_body(resp)
            log.warning(
                "backend %s: %s refused with HTTP %d: %s",
                self.name,
                message.get("method", "response"),
                resp.status,
                _truncate(text) or "(no body)",
            )
            return False
        finally:
            await resp.aclose()

    def _headers(
        self, accept: str, *, json_body: bool, route: list[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        headers = list(self._static_headers)
        headers.append(("Accept", accept))
        if json_body:
            headers.append(("Content-Type", "application/json"))
        if route is not None:
            headers += route  # 2026-07-28: version and routing headers, never a session
        elif self.transport != "sse":
            if self._session_id is not None:
                headers.append(("Mcp-Session-Id", self._session_id))
            if self.protocol_version:
                headers.append(("MCP-Protocol-Version", self.protocol_version))
        return headers

    def _stream_timeouts(self) -> Timeouts:
        return Timeouts(connect=self.cfg.connect_timeout_secs, read=None, total=None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _fail_pending(self, reason: str, what: str) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(
                    _AttemptError(
                        "unavailable" if reason != "stopped" else "stopped",
                        f"Backend '{self.name}' {what}",
                        subject=ConnectionLost(what),
                        maybe_sent=True,
                        breaker_failure=reason != "stopped",
                    )
                )

    # -- incoming messages ---------------------------------------------------------------------

    def _on_message(self, message: dict[str, Any], via: int | None = None) -> None:
        """`via`: our id of the request on whose response stream the message came. MCP has the
        server send there what relates to that request, so its questions and log lines go to the
        client that made it; anything else (the GET stream, HTTP+SSE) names no caller."""
        method = message.get("method")
        if method is None:
            msg_id = message.get("id")
            entry = self._pending.get(msg_id) if isinstance(msg_id, int) else None
            if entry is None or entry.future.done():
                log.debug("backend %s: response to unknown or finished id %r dropped", self.name, msg_id)
                return
            jsonrpc.settle(entry.future, message)
            return
        params = message.get("params") or {}
        if "id" in message:
            if self.modern:
                # 2026-07-28 servers ask for input inside results (input_required), never with
                # requests; there is also nowhere to send an answer.
                log.warning("backend %s: server request %s dropped (2026-07-28)", self.name, method)
                return
            req_id = message["id"]
            task = asyncio.create_task(self._answer_server_request(req_id, method, params, self._caller(via)))
            self._server_requests[req_id] = task
            # Ids restart with each connection: only forget the entry if it is still this task.
            task.add_done_callback(
                lambda t: (
                    self._server_requests.pop(req_id, None)
                    if self._server_requests.get(req_id) is t
                    else None
                )
            )
            self._questions.opened(method, task)
            return
        if method == "notifications/progress":
            self._on_progress(params)
            return
        self.events.backend_notification(self, method, params, self._caller(via))

    def _caller(self, via: int | None) -> Caller | None:
        entry = self._pending.get(via) if via is not None else None
        return entry.caller if entry is not None else None

    def _on_progress(self, params: dict[str, Any]) -> None:
        token = params.get("progressToken")
        entry = self._pending.get(token) if isinstance(token, int) else None
        if entry is None or entry.on_progress is None:
            return
        progress = params.get("progress")
        if not isinstance(progress, (int, float)) or isinstance(progress, bool):
            return
        if entry.last_progress is not None and progress <= entry.last_progress:
            return  # MCP requires strictly increasing progress; drop regressions
        entry.last_progress = progress
        if not self._questions:  # else held at the hard cap until the question is answered
            entry.deadline.extend()
        entry.on_progress(params)

    def _hold_all(self, held: bool) -> None:
        """While a question is open (`held`), calls wait for their hard deadline only; after the
        last one, their idle deadlines start again from now (waiters sleeping until the cap are
        woken to see it)."""
        for entry in self._pending.values():
            if held:
                entry.deadline.hold()
                continue
            entry.deadline.extend()
            if not entry.wake.done():
                entry.wake.set_result(None)

    async def _answer_server_request(
        self, req_id: Any, method: str, params: dict[str, Any], caller: Caller | None
    ) -> None:
        if method == "ping":
            reply = jsonrpc.result(req_id, {})
        else:
            try:
                answer = await self.events.backend_request(self, method, params, caller)
                reply = jsonrpc.result(req_id, answer)
            except jsonrpc.JsonRpcError as exc:
                reply = jsonrpc.error_from(req_id, exc)
            except asyncio.CancelledError:
                return
            except Exception as exc:  # never let a client-side failure go unanswered
                log.exception("backend %s: relaying %s failed", self.name, method)
                reply = jsonrpc.error(req_id, jsonrpc.INTERNAL_ERROR, f"gateway error: {type(exc).__name__}")
        await self._post_message(reply)

    def _learn_tools(self, result: dict[str, Any]) -> None:
        # Annotations are needed to honour retry_idempotent_hint; they only come with the lists.
        tools = result.get("tools")
        if not isinstance(tools, list):
            return
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                ann = tool.get("annotations")
                hint = isinstance(ann, dict) and (
                    ann.get("idempotentHint") is True or ann.get("readOnlyHint") is True
                )
                self._tool_hints[tool["name"]] = hint

    # -- connection lifecycle ------------------------------------------------------------------

    def _prepare(self) -> None:
        if self.cfg.era == "modern" and self.cfg.transport == "sse":
            raise _Fatal(
                f'backend \'{self.name}\': transport = "sse" (2024-11-05) cannot carry era = "modern"'
            )
        headers: list[tuple[str, str]] = list(self.cfg.headers.items())
        missing = sorted({v for v in self.cfg.headers_from_env.values() if v not in self.environ})
        if missing:
            raise _Fatal(
                f"backend '{self.name}': headers_from_env refers to unset variable(s) {', '.join(missing)} "
                "in the gateway's environment"
            )
        for header, variable in self.cfg.headers_from_env.items():
            value = self.environ[variable]
            if any(c in value for c in "\r\n\0") or value != value.strip(" \t"):
                raise _Fatal(
                    f"backend '{self.name}': ${variable} (for header {header}) contains line breaks "
                    "or surrounding whitespace"
                )
            headers.append((header, value))
        self._static_headers = headers
        tls = self.cfg.tls
        try:
            self._client = HttpClient(
                max_connections=self.cfg.max_in_flight + _EXTRA_CONNECTIONS,
                timeouts=self._stream_timeouts(),
                max_body_bytes=self.max_message_bytes,
                cafile=tls.cafile or None,
                certfile=tls.certfile or None,
                keyfile=tls.keyfile or None,
                verify=tls.verify,
            )
        except (OSError, ValueError) as exc:
            raise _Fatal(f"backend '{self.name}': TLS settings: {exc}") from None

    async def _supervise(self) -> None:
        try:
            self._prepare()
        except _Fatal as exc:
            self._give_up(str(exc))
            return
        delays = backoff_delays(RECONNECT_INITIAL, RECONNECT_MAX, rng=self._rng)
        while not self._stopping:
            try:
                async with self._handshake_lock:
                    await self._handshake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"start failed: {exc}"
                log.error("backend %s: start failed: %s", self.name, exc)
                self._health.record_failure()
                self._close_stream()
                delay = next(delays)
                log.info("backend %s: reconnecting in %.2f s", self.name, delay)
                await self._sleep(delay)
                continue
            delays = backoff_delays(RECONNECT_INITIAL, RECONNECT_MAX, rng=self._rng)
            self._lost.clear()
            self.state = BackendState.READY
            self._ready.set()
            self._settled.set()
            self._health.record_success()
            log.info(
                "backend %s ready (%s, protocol %s, session %s)",
                self.name,
                self.transport,
                self.protocol_version,
                "yes" if self._session_id else "none",
            )
            self.events.backend_ready(self)
            await self._lost.wait()
            if self._stopping:
                return
            self._ready.clear()
            self._close_stream()
            self._fail_pending("lost", "lost its connection before answering")
            self._health.record_failure()
            self.events.backend_down(self, "crashed")
            self.restarts += 1
            self.state = BackendState.RESTARTING
            await self._sleep(next(delays))

    def _give_up(self, why: str) -> None:
        self.state = BackendState.FAILED
        self.last_error = why
        self._ready.clear()
        self._settled.set()
        log.error("backend %s: giving up: %s", self.name, why)
        self.events.backend_down(self, "gave_up")

    def _connection_lost(self, why: str) -> None:
        if not self._stopping and not self._lost.is_set():
            log.warning("backend %s: %s; reconnecting", self.name, why)
            self.last_error = why
            self._lost.set()

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), max(0.0, delay))

    def _close_stream(self) -> None:
        task = self._stream_task
        self._stream_task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _handshake(self) -> None:
        """Connect afresh in the configured era; opens the server stream (GET, HTTP+SSE or
        listen). With era = auto the era that worked last time is tried first."""
        assert self._client is not None
        self._generation += 1
        self._close_stream()
        self._session_id = None
        self.protocol_version = ""
        self.modern = False
        caps = await self.events.upstream_capabilities()
        self._upstream_caps = caps
        era = self.cfg.era
        if era == "modern":
            await self._discover(caps)
        elif era == "legacy" or self.cfg.transport == "sse":  # HTTP+SSE is handshake-era only
            await self._initialize(caps)
        else:
            await self._negotiate(caps)
            self.era_verdict = "modern" if self.modern else "legacy"
        generation = self._generation
        if self.modern:
            self._stream_task = asyncio.create_task(
                self._listen_modern(generation), name=f"listen:{self.name}"
            )
        elif self.transport == "streamable":
            self._stream_task = asyncio.create_task(self._listen(generation), name=f"listen:{self.name}")

    async def _negotiate(self, caps: dict[str, Any]) -> None:
        """era = auto (brief §3.3): a 2026-07-28 probe, and initialize when the answer is not
        positive evidence of that era. A server once found to be handshake-era is initialized
        first on reconnects (no wasted probe) and probed only if that fails."""
        if self.era_verdict == "legacy":
            try:
                await self._initialize(caps)
                return
            except Exception as exc:  # any failure may mean it was replaced: probe afresh
                log.info("backend %s: initialize failed (%s); probing for 2026-07-28", self.name, exc)
                self._close_stream()
                self._session_id = None
                self.protocol_version = ""
        if not await self._discover(caps):
            await self._initialize(caps)

    async def _initialize(self, caps: dict[str, Any]) -> None:
        """initialize + notifications/initialized on a fresh session (Streamable HTTP, or
        HTTP+SSE when the server does not speak it and the transport allows the fallback)."""
        params = {
            "protocolVersion": LATEST_HANDSHAKE,
            "capabilities": caps,
            "clientInfo": {"name": "sentinel-gw", "version": __version__},
        }
        deadline = _Deadline(self.cfg.startup_timeout_secs, self.cfg.startup_timeout_secs)
        mode = self.cfg.transport
        result: dict[str, Any] | None = None
        try:
            if mode in ("auto", "streamable"):
                self.transport = "streamable"
                self._post_url = self.cfg.url
                try:
                    result = await self._attempt("initialize", params, deadline, None, capture_session=True)
                except _AttemptError as exc:
                    # Spec fallback rule: 400/404/405 without a JSON-RPC body = not Streamable HTTP.
                    if mode == "streamable" or exc.status not in ERA_MISMATCH_STATUSES:
                        raise RuntimeError(exc.message) from None
                    log.info(
                        "backend %s: no Streamable HTTP (HTTP %s); trying HTTP+SSE", self.name, exc.status
                    )
            if result is None:
                self.transport = "sse"
                self._session_id = None
                await self._open_legacy(deadline)
                try:
                    result = await self._attempt("initialize", params, deadline, None)
                except _AttemptError as exc:
                    raise RuntimeError(exc.message) from None
        except jsonrpc.JsonRpcError as exc:
            if exc.code == UNSUPPORTED_PROTOCOL_VERSION and _modern_offer(exc.data):
                raise RuntimeError(
                    f"the server speaks only 2026-07-28 and refused initialize; set era = "
                    f'"modern" or "auto" for backend \'{self.name}\''
                ) from None
            raise RuntimeError(f"initialize refused: {_truncate(exc.message)}") from None
        version = result.get("protocolVersion")
        if version not in HANDSHAKE_VERSIONS:
            raise RuntimeError(f"backend answered initialize with unsupported protocol version {version!r}")
        caps_out = result.get("capabilities")
        self.capabilities = caps_out if isinstance(caps_out, dict) else {}
        info = result.get("serverInfo")
        self.server_info = info if isinstance(info, dict) else {}
        instructions = result.get("instructions")
        self.instructions = instructions if isinstance(instructions, str) else ""
        self.protocol_version = version
        if not await self._post_message(jsonrpc.notification("notifications/initialized")):
            raise RuntimeError("notifications/initialized was not accepted")

    async def _discover(self, caps: dict[str, Any]) -> bool:
        """2026-07-28: server/discover instead of initialize, and no session. With era = auto,
        False when the answer is not positive evidence of that era (a handshake-era server);
        with era = modern every failure raises."""
        pinned = self.cfg.era == "modern"
        timeout = self.cfg.startup_timeout_secs if pinned else self.cfg.probe_timeout_secs
        deadline = _Deadline(timeout, timeout)
        self.transport = "streamable"
        self._post_url = self.cfg.url
        version = MODERN_VERSIONS[0]
        tried: set[str] = set()
        while True:
            tried.add(version)
            try:
                result = await self._attempt(
                    "server/discover", {"_meta": modern_meta(version, caps)}, deadline, None, version=version
                )
                break
            except jsonrpc.JsonRpcError as exc:
                untried = [v for v in _modern_offer(exc.data) if v not in tried]
                if exc.code == UNSUPPORTED_PROTOCOL_VERSION and untried:
                    version = untried[0]
                    continue
                if exc.code == UNSUPPORTED_PROTOCOL_VERSION and not pinned:
                    return False  # no 2026-07-28 version in common; initialize may still work
                if pinned or exc.code in MODERN_ERRORS:
                    raise RuntimeError(f"server/discover refused: {_truncate(exc.message)}") from None
                return False  # e.g. "method not found" from a handshake-era server
            except _AttemptError as exc:
                legacy_like = exc.reason == "timeout" or (exc.status is not None and 400 <= exc.status < 500)
                if pinned and exc.status in ERA_MISMATCH_STATUSES:
                    raise RuntimeError(
                        f"{exc.message} to server/discover: it does not seem to speak 2026-07-28; set "
                        f'era = "legacy" or "auto" for backend \'{self.name}\''
                    ) from None
                if pinned or not legacy_like:
                    raise RuntimeError(exc.message) from None  # an outage is never an era verdict
                return False
        versions = result.get("supportedVersions")
        if not isinstance(versions, list) or version not in versions:
            if pinned:
                raise RuntimeError(f"backend's server/discover does not list protocol {version}")
            return False
        self.capabilities, self.server_info, self.instructions = parse_discover(result)
        self.protocol_version = version
        self.modern = True
        return True

    def _modern_params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """Every 2026-07-28 request carries the version and the caller's capabilities in _meta:
        the caller's own (routable) ones when a client request is being served, otherwise (lists,
        health) what the gateway declared for itself."""
        caps = current_client_caps.get()
        return with_modern_meta(params, self.protocol_version, self._upstream_caps if caps is None else caps)

    def _turned_modern(self, exc: jsonrpc.JsonRpcError) -> bool:
        """era = auto on a handshake-era connection: a -32022 naming a 2026-07-28 version we
        speak means a modern-only server now answers at this URL."""
        return (
            self.cfg.era == "auto"
            and not self.modern
            and exc.code == UNSUPPORTED_PROTOCOL_VERSION
            and bool(_modern_offer(exc.data))
        )

    async def _listen_modern(self, generation: int) -> None:
        """A 2026-07-28 server sends list changes only on a `subscriptions/listen` stream: keep
        one open for the kinds whose lists it says can change."""
        assert self._client is not None
        wanted = {
            f"{kind}ListChanged": True
            for kind in LIST_CHANGED
            if isinstance(self.capabilities.get(kind), dict) and self.capabilities[kind].get("listChanged")
        }
        if not wanted:
            return
        delays = backoff_delays(RECONNECT_INITIAL, RECONNECT_MAX, rng=self._rng)
        while not self._stopping and generation == self._generation:
            self._next_id += 1
            listen_id = self._next_id
            params = self._modern_params({"notifications": wanted})
            headers = self._headers(
                ACCEPT_BOTH,
                json_body=True,
                route=_route_headers("subscriptions/listen", params, self.protocol_version),
            )
            body = jsonrpc.encode(jsonrpc.request(listen_id, "subscriptions/listen", params))
            try:
                resp = await self._client.request(
                    "POST", self._post_url, headers=headers, body=body, timeouts=self._stream_timeouts()
                )
            except HttpError as exc:
                log.debug("backend %s: listen stream: %s", self.name, exc)
                await self._sleep(next(delays))
                continue
            try:
                if resp.status != 200 or _content_type(resp) != "text/event-stream":
                    text = await self._error_body(resp)
                    log.warning(
                        "backend %s: listen stream: HTTP %d: %s", self.name, resp.status, _truncate(text)
                    )
                    if self.cfg.era == "auto" and resp.status in ERA_MISMATCH_STATUSES:
                        why = f"answers subscriptions/listen with HTTP {resp.status}"
                        self._spawn(self._renew_quietly(generation, why))
                        return
                else:
                    delays = backoff_delays(RECONNECT_INITIAL, RECONNECT_MAX, rng=self._rng)
                    await self._read_listen(resp, listen_id)
                    log.debug("backend %s: listen stream ended; reopening", self.name)
            except HttpError as exc:
                log.info("backend %s: listen stream lost (%s); reopening", self.name, type(exc).__name__)
            finally:
                await resp.aclose()
            await self._sleep(next(delays))

    async def _read_listen(self, resp: HttpResponse, listen_id: int) -> None:
        events = resp.sse(self.max_message_bytes)
        try:
            async for event in events:
                if not event.data:
                    continue  # keep-alive
                for message in self._decode(event.data, "listen event"):
                    method = message.get("method")
                    if method is None:
                        return  # the subscription's closing result (or error)
                    params = message.get("params")
                    params = params if isinstance(params, dict) else {}
                    if method == "notifications/cancelled" and params.get("requestId") == listen_id:
                        return  # the server tore the subscription down
                    if method in LISTEN_NOTIFICATIONS and "id" not in message:
                        self.events.backend_notification(self, method, params)
        finally:
            await events.aclose()

    async def _renew_session(self, generation: int, why: str) -> None:
        async with self._handshake_lock:
            if generation != self._generation or self._stopping:
                return  # another request renewed it already
            log.warning("backend %s: %s; connecting again", self.name, why)
            self.restarts += 1
            self.state = BackendState.RESTARTING
            try:
                await self._handshake()
            except Exception as exc:
                self._connection_lost(f"renewing the session failed: {exc}")
                raise _AttemptError(
                    "unavailable",
                    f"Backend '{self.name}' had to be reconnected and could not be",
                    subject=ConnectError("session renewal failed"),
                    maybe_sent=False,
                    breaker_failure=True,
                ) from None
            self.state = BackendState.READY
        self.events.backend_ready(self)  # new session: lists and subscriptions are set up again

    async def _open_legacy(self, deadline: _Deadline) -> None:
        """HTTP+SSE (2024-11-05): GET the stream, wait for its `endpoint` event."""
        assert self._client is not None
        url = self.cfg.url
        try:
            resp = await asyncio.wait_for(
                self._client.request(
                    "GET",
                    url,
                    headers=self._headers(ACCEPT_SSE, json_body=False),
                    timeouts=self._stream_timeouts(),
                ),
                max(0.0, deadline.remaining()),
            )
        except asyncio.TimeoutError:
            raise RuntimeError("no answer to the HTTP+SSE GET") from None
        except HttpError as exc:
            raise RuntimeError(self._transport_error(exc).message) from None
        if resp.status != 200 or _content_type(resp) != "text/event-stream":
            text = await self._error_body(resp)
            await resp.aclose()
            log.warning("backend %s: HTTP+SSE GET: HTTP %d: %s", self.name, resp.status, _truncate(text))
            raise RuntimeError(f"HTTP {resp.status} to the HTTP+SSE GET (no endpoint stream)")
        events = resp.sse(self.max_message_bytes)
        try:
            while True:
                event = await asyncio.wait_for(events.__anext__(), max(0.0, deadline.remaining()))
                if event.event == "endpoint":
                    break
        except (asyncio.TimeoutError, StopAsyncIteration, HttpError) as exc:
            await resp.aclose()
            raise RuntimeError(f"no endpoint event on the HTTP+SSE stream ({type(exc).__name__})") from None
        endpoint = urljoin(url, event.data.strip())
        base, target = urlsplit(url), urlsplit(endpoint)
        if (base.scheme, base.hostname, base.port) != (target.scheme, target.hostname, target.port):
            await resp.aclose()
            # Our headers (credentials) must never be sent to a host the server names.
            raise RuntimeError("the HTTP+SSE endpoint is on another origin; refused")
        self._post_url = endpoint
        generation = self._generation
        self._stream_task = asyncio.create_task(
            self._read_legacy(resp, events, generation), name=f"sse:{self.name}"
        )

    async def _read_legacy(self, resp: HttpResponse, events: Any, generation: int) -> None:
        why = "the HTTP+SSE stream ended"
        try:
            async for event in events:
                if event.event == "message" and event.data:
                    for message in self._decode(event.data, "SSE event"):
                        self._on_message(message)
        except HttpError as exc:
            why = f"the HTTP+SSE stream broke ({type(exc).__name__})"
        finally:
            await events.aclose()
            await resp.aclose()
        if generation == self._generation:
            # Every answer travels on this stream: without it nothing pending can complete.
            self._fail_pending("lost", "lost its event stream before answering")
            self._connection_lost(why)

    async def _listen(self, generation: int) -> None:
        """The GET stream of a Streamable HTTP session: unsolicited notifications and requests."""
        assert self._client is not None
        delays = backoff_delays(RECONNECT_INITIAL, RECONNECT_MAX, rng=self._rng)
        last_id = ""
        retry_ms: int | None = None
        while not self._stopping and generation == self._generation:
            headers = self._headers(ACCEPT_SSE, json_body=False)
            if last_id:
                headers.append(("Last-Event-ID", last_id))
            try:
                resp = await self._client.request(
                    "GET", self.cfg.url, headers=headers, timeouts=self._stream_timeouts()
                )
            except HttpError as exc:
                log.debug("backend %s: GET stream: %s", self.name, exc)
                await self._sleep(next(delays))
                continue
            try:
                if resp.status == 405:
                    log.info("backend %s offers no GET stream (HTTP 405)", self.name)
                    return
                if resp.status == 404 and self._session_id is not None:
                    self._spawn(self._renew_quietly(generation, "session expired (HTTP 404)"))
                    return
                if resp.status != 200 or _content_type(resp) != "text/event-stream":
                    text = await self._error_body(resp)
                    log.warning(
                        "backend %s: GET stream: HTTP %d: %s", self.name, resp.status, _truncate(text)
                    )
                    await self._sleep(next(delays))
                    continue
                delays = backoff_delays(RECONNECT_INITIAL, RECONNECT_MAX, rng=self._rng)
                events = resp.sse(self.max_message_bytes)
                try:
                    async for event in events:
                        if event.id is not None:
                            last_id = event.id
                        if event.retry is not None:
                            retry_ms = event.retry
                        if event.data:
                            for message in self._decode(event.data, "SSE event"):
                                self._on_message(message)
                finally:
                    await events.aclose()
                log.debug("backend %s: GET stream ended; reconnecting", self.name)
            except HttpError as exc:
                log.info("backend %s: GET stream lost (%s); reconnecting", self.name, type(exc).__name__)
            finally:
                await resp.aclose()
            await self._sleep(retry_ms / 1000 if retry_ms is not None else next(delays))

    async def _renew_quietly(self, generation: int, why: str) -> None:
        with contextlib.suppress(_AttemptError):
            await self._renew_session(generation, why)

    async def _delete_session(self) -> None:
        assert self._client is not None
        try:
            resp = await self._client.request(
                "DELETE",
                self.cfg.url,
                headers=self._headers(ACCEPT_BOTH, json_body=False),
                timeouts=Timeouts(
                    connect=min(self.cfg.connect_timeout_secs, STOP_DELETE_TIMEOUT),
                    read=STOP_DELETE_TIMEOUT,
                    total=STOP_DELETE_TIMEOUT,
                ),
            )
        except HttpError as exc:
            log.debug("backend %s: DELETE of the session failed: %s", self.name, exc)
            return
        async with resp:
            log.debug("backend %s: session deleted (HTTP %d)", self.name, resp.status)
            await self._discard(resp)
        self._session_id = None

    # -- breaker and health --------------------------------------------------------------------

    def _breaker_changed(self, old: BreakerState, new: BreakerState) -> None:
        log.warning("backend %s: circuit %s -> %s", self.name, old.value, new.value)
        if new is BreakerState.OPEN:
            if old is BreakerState.CLOSED and self._ready.is_set():
                self.events.backend_down(self, "circuit_open")
            if self._recovery_task is None or self._recovery_task.done():
                self._recovery_task = asyncio.ensure_future(self._recover())
        elif new is BreakerState.CLOSED and self._ready.is_set():
            self.events.backend_ready(self)

    async def _recover(self) -> None:
        """While the circuit is open, probe after each cooldown so it can close without traffic."""
        while not self._stopping and self.breaker.state is not BreakerState.CLOSED:
            await self._sleep(max(0.05, self.breaker.retry_after()))
            if self._stopping or self.breaker.state is BreakerState.CLOSED:
                return
            if self._ready.is_set():
                await self._ping()

    async def _health_loop(self) -> None:
        interval = self.cfg.health_interval_secs
        while not self._stopping:
            await self._sleep(interval)
            if self._stopping:
                return
            if self._ready.is_set() and self.breaker.state is BreakerState.CLOSED:
                await self._ping()

    async def _ping(self) -> bool:
        interval = self.cfg.health_interval_secs or HEALTH_TIMEOUT_MAX
        timeout = max(0.5, min(HEALTH_TIMEOUT_MAX, interval / 2, self.cfg.timeout_secs))
        # ping is gone in 2026-07-28: server/discover is the health probe there.
        method = "server/discover" if self.modern else "ping"
        try:
            await self._call(method, None, _Deadline(timeout, timeout), None, retry_safe=False, retries=0)
            ok = True
        except BackendError as exc:
            if exc.reason == "circuit_open":
                return False  # someone else's probe is out; no observation
            ok = False
        except jsonrpc.JsonRpcError:
            ok = True  # any answer, even "method not found", proves it is alive
        self._health.record(ok)
        return ok

    def _health_changed(self, old: HealthState, new: HealthState) -> None:
        level = logging.INFO if new in (HealthState.HEALTHY, HealthState.STOPPED) else logging.WARNING
        log.log(level, "backend %s: health %s -> %s", self.name, old.value, new.value)
