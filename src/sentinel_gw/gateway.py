"""The gateway: sessions in front, backends behind, the catalog and the policy chain between.

Every client request runs as its own task, so a slow tool never blocks `ping`, lists,
cancellation or other calls. Backends are shared by all sessions; ids and progress tokens are
owned by the backend connection, so clients never see each other's traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from sentinel_gw import __version__, observe
from sentinel_gw.backends.base import BackendError, BackendState, Caller
from sentinel_gw.backends.stdio import StdioBackend
from sentinel_gw.catalog import Catalog, CatalogView, Entry
from sentinel_gw.config_schema import BackendConfig, Config
from sentinel_gw.observe import CallRecord, Observer, current_client_caps, current_modern, current_request_id
from sentinel_gw.parking import ParkedCall, ParkingLot, call_digest, principal
from sentinel_gw.policy.engine import PolicyEngine, Refusal
from sentinel_gw.protocol import jsonrpc
from sentinel_gw.protocol.mcp import (
    BATCH_VERSION,
    CLIENT_CAPABILITIES_KEY,
    CLIENT_REQUEST_CAPABILITY,
    LIST_CHANGED,
    LIST_METHODS,
    LOG_LEVEL_RANK,
    LOG_LEVELS,
    MISSING_CLIENT_CAPABILITY,
    MODERN_VERSIONS,
    REMOVED_IN_MODERN,
    SUBSCRIPTION_ID_KEY,
    SUPPORTED_VERSIONS,
    UNSUPPORTED_PROTOCOL_VERSION,
    CursorCodec,
    merge_instructions,
    modern_result,
    modern_version,
    name_budget,
    negotiate_version,
    upstream_capabilities,
    upstream_params,
)
from sentinel_gw.session import Session

log = logging.getLogger("sentinel_gw.gateway")

if TYPE_CHECKING:  # the HTTP client stack (ssl, httpwire) is imported only when configured
    from sentinel_gw.backends.http import HttpBackend

    AnyBackend = StdioBackend | HttpBackend

MAX_UPSTREAM_PAGES = 1000
MAX_UPSTREAM_ITEMS = 100_000
LIST_REFRESH_DEBOUNCE = 0.05
MAX_LISTEN_URIS = 100
LISTEN_HOLD_SECS = 86400.0  # an upstream listen stream is renewed daily even if nothing ends it
MAX_INPUT_ROUNDS = 8  # like the TypeScript SDK's shim
MAX_INPUT_REQUESTS = 16
LISTEN_KINDS = ("toolsListChanged", "promptsListChanged", "resourcesListChanged")
SERVER_INFO = {"name": "sentinel-gw", "title": "sentinel-gw MCP gateway", "version": __version__}
MAX_BATCH = 100

Handler = Callable[[Session, dict[str, Any]], Awaitable[dict[str, Any]]]


class Listener:
    """One 2026-07-28 subscriptions/listen stream: what it asked for, and how to reach it."""

    __slots__ = ("id", "kinds", "session")

    def __init__(self, session: Session, listen_id: Any, kinds: frozenset[str]) -> None:
        self.session = session
        self.id = listen_id
        self.kinds = kinds

    def notify(self, method: str, params: dict[str, Any]) -> None:
        meta = {**params.get("_meta", {}), SUBSCRIPTION_ID_KEY: self.id}
        self.session.notify(method, {**params, "_meta": meta}, self.id)


_BACKEND_STATUS = {
    "timeout": observe.TIMEOUT,
    "circuit_open": observe.CIRCUIT_OPEN,
    "overloaded": observe.RATE_LIMITED,
}


class _Observed:
    """The context of one observed call (see Gateway._observed): on exit, the outcome is mapped
    from the exception, if any, and the observers are called soon after (never before the reply
    is sent, never between a backend's answer and the client)."""

    __slots__ = ("gateway", "record")

    def __init__(self, record: CallRecord, gateway: Gateway) -> None:
        self.record = record
        self.gateway = gateway

    def __enter__(self) -> CallRecord:
        return self.record

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        record = self.record
        if exc is None:
            record.status = observe.SUCCESS
        elif isinstance(exc, Refusal):
            record.status, record.error = exc.status, exc.message
        elif isinstance(exc, BackendError):
            record.status = _BACKEND_STATUS.get(exc.reason, observe.ERROR)
            record.error = exc.message
        elif isinstance(exc, jsonrpc.JsonRpcError):
            record.error = exc.message
        elif isinstance(exc, asyncio.CancelledError):
            record.status, record.error = observe.CANCELLED, "cancelled by client"
        record.latency_ms = (time.monotonic() - record.started) * 1000
        gateway = self.gateway
        if gateway.observers:
            asyncio.get_running_loop().call_soon(gateway._call_finished, record)


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        policy: PolicyEngine | None = None,
        prespawned: dict[str, Any] | None = None,
    ) -> None:
        """`prespawned`: backend name -> child (Popen, ForkedChild) already launched for that stdio backend
        (by `serve`, before the event loop existed). Each is handed to its backend, which adopts it
        on its first start, and removed from the dict: what is left was never taken over."""
        self.config = config
        self.environ = dict(os.environ if environ is None else environ)
        self.policy = policy or PolicyEngine(config, environ=self.environ)
        self._prespawned = {} if prespawned is None else prespawned
        self.sessions: set[Session] = set()
        # (backend, roles) -> whether RBAC shows those roles anything of the backend; valid for
        # one catalog view and one policy (see _sees_backend).
        self._sight: dict[tuple[str, tuple[str, ...]], bool] = {}
        self._sight_of: tuple[CatalogView, PolicyEngine] | None = None
        self.backends: dict[str, AnyBackend] = {}
        self.catalog = Catalog(
            [b.name for b in config.backends],
            {b.name: b.prefix for b in config.backends},
            name_budget(config.gateway.name),
        )
        self.cursors = CursorCodec(secrets.token_bytes(32))
        self.parking = ParkingLot(config.gateway.client_request_timeout_secs)
        self.started_at = time.monotonic()
        self.observers: list[Observer] = []
        self._lists_ready: dict[str, asyncio.Event] = {}
        self._ready_deadline: dict[str, float] = {}  # lists wait for a starting backend until then
        self._refresh_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._upstream_caps: dict[str, Any] | None = None
        self._upstream_caps_ready = asyncio.Event()
        self._subscribers: dict[tuple[str, str], set[Session]] = {}
        self._upstream_listens: dict[tuple[str, str], asyncio.Task[None]] = {}  # 2026-07-28 backends
        self._stopping = False
        self._stopped = asyncio.Event()  # ends subscriptions/listen streams gracefully
        self._handlers: dict[str, Handler] = {
            "ping": self._ping,
            "tools/list": self._list_tools,
            "tools/call": self._call_tool,
            "prompts/list": self._list_prompts,
            "prompts/get": self._get_prompt,
            "resources/list": self._list_resources,
            "resources/templates/list": self._list_templates,
            "resources/read": self._read_resource,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def _install_policy_hooks(self, policy: PolicyEngine) -> None:
        policy.on_kill_change = lambda path: self.event("killswitch.change", file=str(path))
        policy.start_watching(self.policy_changed)

    async def start(self) -> None:
        self.started_at = time.monotonic()
        self.event("startup", backends=[b.name for b in self.config.backends], config=self.config.source)
        self._install_policy_hooks(self.policy)
        for cfg in self.config.backends:
            self._add_backend(cfg)
        await asyncio.gather(*(b.start() for b in self.backends.values()))

    def _add_backend(self, cfg: BackendConfig) -> AnyBackend:
        kind: type[AnyBackend] = StdioBackend
        extra: dict[str, Any] = {}
        if cfg.type == "http":
            from sentinel_gw.backends.http import HttpBackend

            kind = HttpBackend
        else:  # launched by `serve` before the event loop existed: adopted once, never after a reload
            extra["process"] = self._prespawned.pop(cfg.name, None)
        backend = kind(
            cfg,
            self,
            environ=self.environ,
            base_dir=self.config.base_dir,
            max_message_bytes=self.config.gateway.max_message_bytes,
            **extra,
        )
        self.backends[cfg.name] = backend
        self._lists_ready[cfg.name] = asyncio.Event()
        self._ready_deadline[cfg.name] = time.monotonic() + cfg.startup_timeout_secs
        if not cfg.enabled:
            self._lists_ready[cfg.name].set()
        return backend

    async def apply_config(self, config: Config, policy: PolicyEngine) -> dict[str, list[str]]:
        """Swap in a validated snapshot: policy at once, backends added, removed or restarted.

        Rate-limit state carries over for limits that did not change. Removed and changed
        backends finish their in-flight calls (up to the shutdown grace) before they stop, so a
        reload never drops a call.
        """
        old_policy = self.policy
        old_policy.limiter.reconfigure(config.rate_limits)  # validated: the new engine built one already
        policy.limiter = old_policy.limiter
        old_policy.stop_watching()
        self.policy = policy
        old_backends = {b.name: b for b in self.config.backends}
        new_backends = {b.name: b for b in config.backends}
        self.config = config
        self.environ = dict(policy.environ)
        self.catalog.order = [b.name for b in config.backends]
        self.catalog.prefixes = {b.name: b.prefix for b in config.backends}
        removed = sorted(old_backends.keys() - new_backends.keys())
        added = sorted(new_backends.keys() - old_backends.keys())
        changed = sorted(
            n for n in old_backends.keys() & new_backends.keys() if old_backends[n] != new_backends[n]
        )
        for name in removed + changed:
            backend = self.backends.pop(name)
            self.catalog.drop_backend(name)
            self._lists_ready.pop(name, None)
            self._spawn(self._retire(backend))
        for name in added + changed:
            await self._add_backend(new_backends[name]).start()
        self._install_policy_hooks(policy)
        self.policy_changed()
        return {"added": added, "removed": removed, "restarted": changed}

    async def _retire(self, backend: AnyBackend) -> None:
        deadline = time.monotonic() + self.config.gateway.shutdown_grace_secs
        while backend.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await backend.stop()

    def set_upstream_capabilities(self, client_caps: Mapping[str, Any] | None) -> None:
        """Backends are initialised with what the gateway can route back; known once a client says."""
        if self._upstream_caps is None:
            self._upstream_caps = upstream_capabilities(client_caps)
            self._upstream_caps_ready.set()

    async def upstream_capabilities(self) -> dict[str, Any]:
        await self._upstream_caps_ready.wait()
        return dict(self._upstream_caps or {})

    def kill_backends(self) -> None:
        """Forced shutdown: SIGKILL every backend's process group now."""
        for backend in self.backends.values():
            backend.kill()

    async def stop(self, *, force: bool = False) -> None:
        self._stopping = True
        self._stopped.set()
        self.event("shutdown")
        if force:
            self.kill_backends()
        self.policy.stop_watching()
        self.set_upstream_capabilities({})  # release backends still waiting to handshake
        self.parking.close()
        for held in self._upstream_listens.values():
            held.cancel()
        for task in list(self._refresh_tasks.values()) + list(self._background):
            task.cancel()
        await asyncio.gather(*(b.stop() for b in self.backends.values()), return_exceptions=True)

    def open_session(self, session: Session) -> None:
        self.sessions.add(session)

    async def close_session(self, session: Session, grace: float) -> None:
        """Let in-flight requests finish within `grace`, then cancel them (and upstream)."""
        tasks = list(session.in_flight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for key, subs in list(self._subscribers.items()):
            for who in [w for w in subs if w is session or getattr(w, "session", None) is session]:
                await self._drop_subscriber(key, who)
        session.close()
        self.sessions.discard(session)

    # -- message entry point -------------------------------------------------------------------

    def receive(self, session: Session, message: Any) -> None:
        """Take one decoded message from a front. Never raises; answers go through session.send."""
        if isinstance(message, list):
            self._spawn(self._batch(session, message))
            return
        invalid = jsonrpc.check_message(message)
        if invalid is not None:
            session.send(jsonrpc.error_from(invalid.id, invalid.error))
            return
        if "method" not in message:
            if not session.resolve(message):
                log.debug("session %s: unexpected response id %r ignored", session.id, message.get("id"))
            return
        if "id" not in message:
            self._notification(session, message["method"], message.get("params") or {})
            return
        admitted = self._admit(session, message, deliver=True)
        if isinstance(admitted, dict):
            session.send(admitted)

    def _admit(
        self, session: Session, message: dict[str, Any], *, deliver: bool = False
    ) -> asyncio.Task[dict[str, Any] | None] | dict[str, Any]:
        """Start a request as its own task, registered for cancellation; or the error refusing it."""
        req_id = message["id"]
        if req_id in session.in_flight:
            return jsonrpc.error(
                req_id,
                jsonrpc.INVALID_REQUEST,
                f"Invalid Request: id {req_id!r} is already in use by a pending request",
            )
        if len(session.in_flight) >= self.config.gateway.max_in_flight_per_session:
            return jsonrpc.error(
                req_id,
                jsonrpc.RATE_LIMITED,
                "Too many requests in flight; retry shortly",
                {"reason": "too_many_in_flight", "retry_after_ms": 100, "retryAfter": 1},
            )
        task = asyncio.create_task(self._handle_in_context(session, message, deliver))
        session.in_flight[req_id] = task

        def forget(t: asyncio.Task[Any]) -> None:
            if session.in_flight.get(req_id) is t:
                del session.in_flight[req_id]

        task.add_done_callback(forget)
        return task

    async def _handle_in_context(
        self, session: Session, message: dict[str, Any], deliver: bool
    ) -> dict[str, Any] | None:
        current_request_id.set(message["id"])  # this task's own context: audit records the client's id
        if session.routable_capabilities is not None:
            current_client_caps.set(session.routable_capabilities)
        reply = await self.handle_request(session, message)
        if deliver and reply is not None:
            # Sent from inside the task, before the observers scheduled by _observed run: audit
            # and metrics never sit between a backend's answer and the client.
            session.send(reply, message["id"])
            return None
        return reply

    async def handle_request(self, session: Session, message: dict[str, Any]) -> dict[str, Any] | None:
        req_id = message["id"]
        method = message["method"]
        params = message.get("params") or {}
        try:
            version = modern_version(params)
            if version is not None:
                return jsonrpc.result(req_id, await self._modern(session, req_id, method, params, version))
            if method == "initialize":
                return jsonrpc.result(req_id, self._initialize(session, params))
            handler = self._handlers.get(method)
            if handler is None:
                raise jsonrpc.JsonRpcError(jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}")
            if session.state == "new" and method != "ping":
                raise jsonrpc.JsonRpcError(
                    jsonrpc.INVALID_REQUEST,
                    "Invalid Request: the session is not initialized; send initialize first",
                )
            if method != "ping":
                if session.auth_error:
                    raise Refusal("denied", jsonrpc.UNAUTHENTICATED, session.auth_error, {"reason": "reload"})
                self.policy.check_identity(session.identity)
            return jsonrpc.result(req_id, await handler(session, params))
        except jsonrpc.JsonRpcError as exc:
            return jsonrpc.error_from(req_id, exc)
        except asyncio.CancelledError:
            return None  # the client cancelled: MCP says send nothing
        except Exception:
            log.exception("internal error handling %s", method)
            return jsonrpc.error(req_id, jsonrpc.INTERNAL_ERROR, "Internal error")

    async def _modern(
        self, session: Session, req_id: Any, method: str, params: dict[str, Any], version: str
    ) -> dict[str, Any]:
        """A 2026-07-28 request: self-contained (no initialize), its version and the client's
        capabilities in `_meta`, a result with resultType and, where cacheable, cache hints."""
        current_modern.set(True)  # this request's task: pass input_required results through
        current_client_caps.set(upstream_capabilities(params["_meta"].get(CLIENT_CAPABILITIES_KEY)))
        if version not in MODERN_VERSIONS:
            raise jsonrpc.JsonRpcError(
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                {"supported": list(SUPPORTED_VERSIONS), "requested": version},
            )
        caps = params["_meta"].get(CLIENT_CAPABILITIES_KEY)
        if not isinstance(caps, dict):
            raise jsonrpc.JsonRpcError(
                jsonrpc.INVALID_PARAMS, f"Invalid params: _meta must carry {CLIENT_CAPABILITIES_KEY}"
            )
        # Backends wait for the first client to learn what may be declared upstream. A 2026-07-28
        # client is asked through input_required (see _forward_parked), so its capabilities count.
        self.set_upstream_capabilities(caps)
        if method in REMOVED_IN_MODERN:
            raise jsonrpc.JsonRpcError(
                jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method} (removed in {version})"
            )
        if session.auth_error:
            raise Refusal("denied", jsonrpc.UNAUTHENTICATED, session.auth_error, {"reason": "reload"})
        self.policy.check_identity(session.identity)
        if method == "server/discover":
            result = self.discover()
        elif method == "subscriptions/listen":
            result = await self._listen(session, req_id, params)
        else:
            handler = self._handlers.get(method)
            if handler is None:
                raise jsonrpc.JsonRpcError(jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}")
            try:
                result = await handler(session, upstream_params(params))
            except jsonrpc.JsonRpcError as exc:
                if exc.code == jsonrpc.RESOURCE_NOT_FOUND:  # retired in 2026-07-28
                    raise jsonrpc.JsonRpcError(jsonrpc.INVALID_PARAMS, exc.message, exc.data) from None
                raise
        return modern_result(method, result, SERVER_INFO)

    def discover(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "supportedVersions": list(SUPPORTED_VERSIONS),
            "capabilities": self.capabilities(),
        }
        instructions = self._instructions()
        if instructions:
            result["instructions"] = instructions
        return result

    async def _listen(self, session: Session, req_id: Any, params: dict[str, Any]) -> dict[str, Any]:
        """subscriptions/listen: acknowledge what is honoured, then push matching notifications
        tagged with the subscription id (the request's id) until the client cancels it or the
        gateway stops (then a final result ends the stream)."""
        wanted = params.get("notifications")
        if not isinstance(wanted, dict):
            raise jsonrpc.JsonRpcError(
                jsonrpc.INVALID_PARAMS, "Invalid params: notifications must be an object"
            )
        honoured: dict[str, Any] = {k: True for k in LISTEN_KINDS if wanted.get(k) is True}
        listener = Listener(session, req_id, frozenset(honoured))
        keys: list[tuple[str, str]] = []
        uris = wanted.get("resourceSubscriptions")
        if isinstance(uris, list):
            await self.wait_for_backends()
            granted = []
            for uri in uris[:MAX_LISTEN_URIS]:
                key = await self._subscribe_listener(session, uri, listener)
                if key is not None:
                    keys.append(key)
                    granted.append(uri)
            if granted:
                honoured["resourceSubscriptions"] = granted
        session.listeners[req_id] = listener
        meta = {SUBSCRIPTION_ID_KEY: req_id}
        session.notify(
            "notifications/subscriptions/acknowledged", {"notifications": honoured, "_meta": meta}, req_id
        )
        try:
            await self._stopped.wait()
            return {"_meta": meta}
        finally:
            session.listeners.pop(req_id, None)
            for key in keys:
                await self._drop_subscriber(key, listener)

    async def _subscribe_listener(
        self, session: Session, uri: Any, listener: Listener
    ) -> tuple[str, str] | None:
        try:
            backend = self._resource_owner(session, uri)
            self.policy.authorize_resource_read(session.identity, str(uri), backend)
            if not self._backend_for(backend).capabilities.get("resources", {}).get("subscribe"):
                return None
            key = (backend, str(uri))
            await self._add_subscriber(session, key, listener, {"uri": uri})
        except jsonrpc.JsonRpcError:
            return None  # not honoured: the acknowledgement leaves it out
        return key

    async def _batch(self, session: Session, batch: list[Any]) -> None:
        if session.protocol_version != BATCH_VERSION:
            session.send(
                jsonrpc.error(
                    None,
                    jsonrpc.INVALID_REQUEST,
                    "Invalid Request: batches are only allowed in protocol 2025-03-26",
                )
            )
            return
        if not batch or len(batch) > MAX_BATCH:
            reason = "empty batch" if not batch else f"more than {MAX_BATCH} messages in a batch"
            session.send(jsonrpc.error(None, jsonrpc.INVALID_REQUEST, f"Invalid Request: {reason}"))
            return
        # Members are ordinary requests (same duplicate-id check, in-flight cap, cancellation,
        # audit id); only their replies travel back together, as one array.
        replies: list[Any] = []
        tasks: list[asyncio.Task[dict[str, Any] | None]] = []
        for item in batch:
            invalid = jsonrpc.check_message(item)
            if invalid is not None:
                replies.append(jsonrpc.error_from(invalid.id, invalid.error))
            elif "method" not in item:
                session.resolve(item)
            elif "id" not in item:
                self._notification(session, item["method"], item.get("params") or {})
            elif item["method"] == "initialize":
                replies.append(
                    jsonrpc.error(
                        item["id"], jsonrpc.INVALID_REQUEST, "Invalid Request: initialize must not be batched"
                    )
                )
            else:
                admitted = self._admit(session, item)
                if isinstance(admitted, dict):
                    replies.append(admitted)
                else:
                    tasks.append(admitted)
        if tasks:
            done = await asyncio.gather(*tasks, return_exceptions=True)
            replies += [r for r in done if isinstance(r, dict)]
        if replies:
            session.send(replies)

    def _notification(self, session: Session, method: str, params: dict[str, Any]) -> None:
        if method == "notifications/initialized":
            if session.state == "initialized":
                session.state = "ready"
        elif method == "notifications/cancelled":
            req_id = params.get("requestId")
            task = session.in_flight.get(req_id) if jsonrpc.valid_id(req_id) else None
            if task is not None and not task.done():
                task.cancel()
        elif method == "notifications/roots/list_changed":
            for backend in self._ready_backends():
                with contextlib.suppress(BackendError):
                    self._spawn(_quiet(backend.notify(method, params)))
        # progress for server-to-client requests and unknown notifications: nothing to do

    # -- lifecycle methods -----------------------------------------------------------------------

    def _initialize(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        if session.state != "new":
            raise jsonrpc.JsonRpcError(
                jsonrpc.INVALID_REQUEST, "Invalid Request: the session is already initialized"
            )
        version = params.get("protocolVersion")
        caps = params.get("capabilities")
        info = params.get("clientInfo")
        if not isinstance(version, str) or not isinstance(caps, dict):
            raise jsonrpc.JsonRpcError(
                jsonrpc.INVALID_PARAMS, "Invalid params: initialize needs protocolVersion and capabilities"
            )
        session.protocol_version = negotiate_version(version)
        session.client_capabilities = caps
        session.routable_capabilities = upstream_capabilities(caps) if caps else None
        session.client_info = info if isinstance(info, dict) else {}
        session.state = "initialized"
        self.set_upstream_capabilities(caps)
        log.info(
            "session %s: client %s initialized (protocol %s, subject %s)",
            session.id,
            session.client_name or "?",
            session.protocol_version,
            session.identity.subject,
        )
        result: dict[str, Any] = {
            "protocolVersion": session.protocol_version,
            "capabilities": self.capabilities(),
            "serverInfo": SERVER_INFO,
        }
        instructions = self._instructions()
        if instructions:
            result["instructions"] = instructions
        return result

    def _instructions(self) -> str:
        """The gateway's own instructions, then each ready backend's under its name."""
        return merge_instructions(
            self.config.gateway.instructions,
            ((b.name, b.instructions) for b in self.backends.values() if b.ready),
        )

    def capabilities(self) -> dict[str, Any]:
        """What the backends offer, as far as known now; a starting backend may offer any family,
        so those are advertised with listChanged and filled in when it is ready."""
        families: dict[str, dict[str, Any]] = {}
        starting = False
        for b in self.backends.values():
            if b.ready:
                for key, value in b.capabilities.items():
                    if isinstance(value, dict):
                        families.setdefault(key, {}).update(value)
            elif b.state in (BackendState.STARTING, BackendState.RESTARTING):
                starting = True
        caps: dict[str, Any] = {"tools": {"listChanged": True}}
        if "prompts" in families or starting:
            caps["prompts"] = {"listChanged": True}
        if "resources" in families or starting:
            subscribe = bool(families.get("resources", {}).get("subscribe")) or starting
            caps["resources"] = {"subscribe": subscribe, "listChanged": True}
        # Both are served by the gateway whatever the backends offer (completion answers an empty
        # list for a backend without it; logging filters per client), and backends often are not
        # ready yet when a stdio client initializes.
        caps["completions"] = {}
        caps["logging"] = {}
        return caps

    async def _ping(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    # -- lists ---------------------------------------------------------------------------------

    def backends_settled(self) -> bool:
        return all(event.is_set() for event in self._lists_ready.values())

    async def wait_for_backends(self) -> None:
        """Lists (and calls to unknown names) wait for starting or restarting backends, each up to
        its startup timeout from when it (re)started."""
        if self.backends_settled():
            return
        now = time.monotonic()
        waits = []
        for name, event in self._lists_ready.items():
            if event.is_set():
                continue
            remaining = self._ready_deadline[name] - now
            if remaining > 0:
                waits.append(asyncio.wait_for(event.wait(), remaining))
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)

    def _page(
        self, method: str, items: list[dict[str, Any]], params: dict[str, Any], view: CatalogView
    ) -> dict[str, Any]:
        size = self.config.gateway.page_size
        offset = 0
        if "cursor" in params and params["cursor"] is not None:
            payload = self.cursors.decode(params["cursor"])
            if (
                payload is None
                or payload.get("m") != method
                or payload.get("v") != view.version
                or not isinstance(payload.get("o"), int)
            ):
                raise jsonrpc.JsonRpcError(
                    jsonrpc.INVALID_PARAMS, "Invalid params: unknown or expired cursor"
                )
            offset = payload["o"]
        page: dict[str, Any] = {LIST_METHODS[method]: items[offset : offset + size]}
        if offset + size < len(items):
            page["nextCursor"] = self.cursors.encode({"m": method, "o": offset + size, "v": view.version})
        return page

    async def _list_tools(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        await self.wait_for_backends()
        view = self.catalog.view
        ident = session.identity
        items = [dict(e.definition) for e in view.tools if self.policy.tool_listed(ident, e)]
        return self._page("tools/list", items, params, view)

    async def _list_prompts(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        await self.wait_for_backends()
        view = self.catalog.view
        items = [dict(e.definition) for e in view.prompts if self.policy.prompt_visible(session.identity, e)]
        return self._page("prompts/list", items, params, view)

    async def _list_resources(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        await self.wait_for_backends()
        view = self.catalog.view
        items = [
            dict(r.definition)
            for r in view.resources
            if self.policy.resource_visible(session.identity, r.uri, r.backend)
        ]
        return self._page("resources/list", items, params, view)

    async def _list_templates(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        await self.wait_for_backends()
        view = self.catalog.view
        items = [
            dict(t.definition)
            for t in view.templates
            if self.policy.resource_visible(session.identity, t.template, t.backend)
        ]
        return self._page("resources/templates/list", items, params, view)

    # -- calls ---------------------------------------------------------------------------------

    def _backend_for(self, name: str) -> AnyBackend:
        backend = self.backends.get(name)
        if backend is None:
            raise BackendError(name, "unavailable", f"Backend '{name}' is not available")
        return backend

    def _progress_relay(
        self, session: Session, params: dict[str, Any]
    ) -> Callable[[dict[str, Any]], None] | None:
        meta = params.get("_meta")
        if not isinstance(meta, dict) or "progressToken" not in meta:
            return None
        token = meta["progressToken"]
        related = current_request_id.get()  # captured here: the relay runs in the backend's reader

        def relay(upstream: dict[str, Any]) -> None:
            session.notify("notifications/progress", {**upstream, "progressToken": token}, related)

        return relay

    async def _forward(
        self,
        session: Session,
        backend_name: str,
        method: str,
        params: dict[str, Any],
        timeout: float | None = None,
    ) -> dict[str, Any]:
        backend = self._backend_for(backend_name)
        modern_client = current_modern.get()
        if modern_client and not backend.modern:
            return await self._forward_parked(session, backend, method, params, timeout)
        if modern_client and "requestState" in params:
            params = self._unwrap_state(session, method, params)
        calls = session.backend_calls.setdefault(backend_name, set())
        request_id = current_request_id.get()
        calls.add(request_id)
        relay = self._progress_relay(session, params)
        caller = Caller(session, request_id)
        try:
            result = await backend.request(method, params, timeout=timeout, on_progress=relay, caller=caller)
            if result.get("resultType") != "input_required":
                return result
            if modern_client:
                # A 2026-07-28 client answers the backend's questions itself and retries.
                return self._pass_input_required(session, backend, method, params, result)
            rounds = 0
            # A handshake-era client cannot read input_required: the gateway asks it with real
            # requests and retries upstream on its behalf.
            while result.get("resultType") == "input_required":
                rounds += 1
                if rounds > MAX_INPUT_ROUNDS:
                    raise jsonrpc.JsonRpcError(
                        jsonrpc.INTERNAL_ERROR,
                        f"Backend '{backend_name}' kept asking for input ({rounds} rounds)",
                    )
                retry = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}
                retry["inputResponses"] = await self._ask_client(
                    session, backend, result.get("inputRequests")
                )
                if "requestState" in result:
                    retry["requestState"] = result["requestState"]
                result = await backend.request(
                    method, retry, timeout=timeout, on_progress=relay, caller=caller
                )
            return result
        finally:
            calls.discard(request_id)

    def _pass_input_required(
        self,
        session: Session,
        backend: AnyBackend,
        method: str,
        params: dict[str, Any],
        result: dict[str, Any],
    ) -> dict[str, Any]:
        """A 2026-07-28 backend's input_required on its way to a 2026-07-28 client: only kinds the
        client declared (else -32021), and the backend's requestState sealed to this caller."""
        caps = current_client_caps.get() or {}
        requests = result.get("inputRequests")
        if isinstance(requests, dict):
            for request in requests.values():
                needed = (
                    CLIENT_REQUEST_CAPABILITY.get(request.get("method"))
                    if isinstance(request, dict)
                    else None
                )
                if needed is not None and needed not in caps:
                    raise self._missing_capability(backend.name, needed)
        state = result.get("requestState")
        if state is None:
            return result
        if not isinstance(state, str):
            raise jsonrpc.JsonRpcError(
                jsonrpc.INTERNAL_ERROR, f"Backend '{backend.name}' sent a malformed requestState"
            )
        sealed = self.parking.wrap(state, principal(session.identity), call_digest(method, params))
        return {**result, "requestState": sealed}

    def _unwrap_state(self, session: Session, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A retry to a 2026-07-28 backend: its requestState back as the backend wrote it, only
        for the caller and the call it was given for."""
        inner = self.parking.unwrap(
            params["requestState"], principal(session.identity), call_digest(method, params)
        )
        return {**params, "requestState": inner}

    @staticmethod
    def _missing_capability(backend: str, capability: str) -> jsonrpc.JsonRpcError:
        return jsonrpc.JsonRpcError(
            MISSING_CLIENT_CAPABILITY,
            f"Backend '{backend}' needs the client capability '{capability}', which this request "
            "did not declare",
            {"requiredCapabilities": {capability: {}}},
        )

    async def _forward_parked(
        self,
        session: Session,
        backend: AnyBackend,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
    ) -> dict[str, Any]:
        """A 2026-07-28 client in front of a handshake-era backend. The backend may ask the client
        mid-call, which this client cannot be: the call runs as its own parked task, its questions
        come back as input_required with a sealed requestState, and the retry answers them."""
        who = principal(session.identity)
        digest = call_digest(method, params)
        if "requestState" in params:
            call = self.parking.resume(params["requestState"], who, digest)
            call.answer(params.get("inputResponses"))
        else:
            call = ParkedCall(backend.name, who, digest, current_client_caps.get() or {})
            self.parking.add(call)
            upstream = {k: v for k, v in params.items() if k != "inputResponses"}
            call.task = asyncio.ensure_future(
                backend.request(method, upstream, timeout=timeout, on_progress=call.relay_progress)
            )
        call.caps = current_client_caps.get() or {}
        call.progress = self._progress_relay(session, params)
        call.attached = True
        try:
            return await self._collect(call)
        except BaseException:
            self.parking.drop(call, "cancelled by client")  # cancelled or failed: the call is over
            raise
        finally:
            call.attached = False
            call.progress = None

    async def _collect(self, call: ParkedCall) -> dict[str, Any]:
        """Wait for the parked call's result or its next questions, whichever comes first."""
        task = call.task
        assert task is not None
        while True:
            if call.missing is not None:
                raise self._missing_capability(call.backend, call.missing)
            if task.done():
                result = task.result()
                self.parking.drop(call)
                return result
            pending = call.pending()
            if pending:
                state = self.parking.park(call)
                return {"resultType": "input_required", "inputRequests": pending, "requestState": state}
            call.changed.clear()
            changed = asyncio.ensure_future(call.changed.wait())
            try:
                await asyncio.wait((task, changed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()

    async def _ask_client(self, session: Session, backend: AnyBackend, requests: Any) -> dict[str, Any]:
        """Fulfil a backend's embedded input requests (elicitation, sampling, roots) by asking the
        client for real, each only if the client declared the capability."""
        if not isinstance(requests, dict) or not requests:
            raise jsonrpc.JsonRpcError(
                jsonrpc.INTERNAL_ERROR, f"Backend '{backend.name}' sent an empty input request"
            )
        answers: dict[str, Any] = {}
        for key, request in list(requests.items())[:MAX_INPUT_REQUESTS]:
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                raise jsonrpc.JsonRpcError(
                    jsonrpc.INTERNAL_ERROR, f"Backend '{backend.name}' sent a malformed input request"
                )
            params = request.get("params") if isinstance(request.get("params"), dict) else {}
            answers[key] = await self.backend_request(backend, request["method"], params, session=session)
        return answers

    def _observed(self, session: Session, method: str, name: Any, arguments: Any) -> _Observed:
        """Times one call and reports its outcome (status, error, latency) to every observer.

        A plain context manager around the awaits (not an async one): it has nothing to await,
        and contextlib's async generator machinery cost ~5 us per call."""
        record = CallRecord(
            session,
            method,
            name if isinstance(name, str) else None,
            current_request_id.get(),
            arguments,
            time.monotonic(),
        )
        return _Observed(record, self)

    def _call_finished(self, record: CallRecord) -> None:
        for observer in self.observers:
            try:
                observer.call_finished(record)
            except Exception:
                log.exception("observer %r failed", observer)

    def event(self, kind: str, **detail: Any) -> None:
        """A gateway event (startup, backend crashed, kill switch changed, ...) for audit and logs."""
        for observer in self.observers:
            try:
                observer.gateway_event(kind, detail)
            except Exception:
                log.exception("observer %r failed", observer)

    async def _call_tool(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        arguments = params.get("arguments")
        with self._observed(session, "tools/call", name, arguments) as record:
            if not isinstance(name, str):
                raise jsonrpc.JsonRpcError(
                    jsonrpc.INVALID_PARAMS, "Invalid params: tools/call needs a string name"
                )
            if arguments is not None and not isinstance(arguments, dict):
                raise jsonrpc.JsonRpcError(
                    jsonrpc.INVALID_PARAMS, "Invalid params: arguments must be an object"
                )
            entry = await self._visible_tool(session, name)
            record.backend, record.original = entry.backend, entry.original
            self.policy.authorize_tool_call(session.identity, entry, arguments or {})
            record.extra["forwarded"] = True
            return await self._forward(
                session, entry.backend, "tools/call", {**params, "name": entry.original}
            )
        raise AssertionError("unreachable")  # pragma: no cover - the context manager re-raises

    async def _visible_tool(self, session: Session, name: str) -> Entry:
        return await self._resolve(session, name, "known_tools", self.policy.tool_visible, "tool")

    async def _resolve(
        self, session: Session, name: str, table: str, visible: Callable[[Any, Entry], bool], what: str
    ) -> Entry:
        """An exposed name to its entry, for a call. Names of backends that are down still resolve:
        a restarting backend is waited for, an open circuit fails fast with its own error."""
        entry = getattr(self.catalog.view, table).get(name)
        if (entry is None or not visible(session.identity, entry)) and not self.backends_settled():
            # A call right after initialize (or a restart) may beat the lists. Hidden names wait
            # like unknown ones, so the delay tells a caller nothing about what exists.
            await self.wait_for_backends()
            entry = getattr(self.catalog.view, table).get(name)
        if entry is None or not visible(session.identity, entry):
            # Invisible and unknown look the same: no enumeration through errors.
            raise Refusal("denied" if entry else "error", jsonrpc.INVALID_PARAMS, f"Unknown {what}: {name}")
        ready = self._lists_ready.get(entry.backend)
        if ready is not None and not ready.is_set():
            await self.wait_for_backends()  # restarting: wait as at startup, bounded by its deadline
        return entry

    async def _get_prompt(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        with self._observed(session, "prompts/get", name, params.get("arguments")) as record:
            if not isinstance(name, str):
                raise jsonrpc.JsonRpcError(
                    jsonrpc.INVALID_PARAMS, "Invalid params: prompts/get needs a string name"
                )
            entry = await self._resolve(session, name, "known_prompts", self.policy.prompt_visible, "prompt")
            record.backend, record.original = entry.backend, entry.original
            self.policy.authorize_prompt_get(session.identity, entry)
            record.extra["forwarded"] = True
            return await self._forward(
                session, entry.backend, "prompts/get", {**params, "name": entry.original}
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _resource_owner(self, session: Session, uri: object) -> str:
        if not isinstance(uri, str) or not uri:
            raise jsonrpc.JsonRpcError(jsonrpc.INVALID_PARAMS, "Invalid params: a resource uri is required")
        backend = self.catalog.view.route_resource(uri)
        if backend is None:
            # Not listed and no template matches: one resource backend can still own it.
            owners = [b.name for b in self._ready_backends() if "resources" in b.capabilities]
            backend = owners[0] if len(owners) == 1 else None
        if backend is None or not self.policy.resource_visible(session.identity, uri, backend):
            raise jsonrpc.JsonRpcError(jsonrpc.RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri})
        return backend

    async def _read_resource(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        uri = params.get("uri")
        with self._observed(session, "resources/read", uri, None) as record:
            await self.wait_for_backends()
            backend = self._resource_owner(session, uri)
            record.backend = backend
            record.original = str(uri)
            self.policy.authorize_resource_read(session.identity, str(uri), backend)
            record.extra["forwarded"] = True
            return await self._forward(session, backend, "resources/read", params)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _subscribe(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        await self.wait_for_backends()
        uri = params.get("uri")
        backend = self._resource_owner(session, uri)
        self.policy.authorize_resource_read(session.identity, str(uri), backend)
        if not self._backend_for(backend).capabilities.get("resources", {}).get("subscribe"):
            raise jsonrpc.JsonRpcError(
                jsonrpc.METHOD_NOT_FOUND, "Resource subscriptions are not supported for this resource"
            )
        await self._add_subscriber(session, (backend, str(uri)), session, params)
        session.subscriptions.add(str(uri))
        return {}

    async def _add_subscriber(
        self, session: Session, key: tuple[str, str], who: Any, params: dict[str, Any]
    ) -> None:
        """Reference-counted upstream subscription: the first subscriber subscribes the backend."""
        subs = self._subscribers.setdefault(key, set())
        if not subs:
            try:
                await self._upstream_subscribe(self._backend_for(key[0]), key[1])
            except BaseException:
                if not self._subscribers.get(key):
                    self._subscribers.pop(key, None)
                raise
        subs.add(who)

    async def _drop_subscriber(self, key: tuple[str, str], who: Any) -> None:
        subs = self._subscribers.get(key)
        if subs is not None:
            subs.discard(who)
            if not subs:
                await self._upstream_unsubscribe(key)

    async def _unsubscribe(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise jsonrpc.JsonRpcError(jsonrpc.INVALID_PARAMS, "Invalid params: a resource uri is required")
        session.subscriptions.discard(uri)
        for key, subs in list(self._subscribers.items()):
            if key[1] == uri and session in subs:
                await self._drop_subscriber(key, session)
        return {}

    async def _upstream_subscribe(self, backend: AnyBackend, uri: str) -> None:
        """Handshake-era backends subscribe; a 2026-07-28 backend has no resources/subscribe, it
        sends updates on a listen stream, held open (and reopened) while anyone subscribes."""
        if not backend.modern:
            await backend.request("resources/subscribe", {"uri": uri})
            return
        key = (backend.name, uri)
        held = self._upstream_listens.get(key)
        if held is None or held.done():
            self._upstream_listens[key] = asyncio.create_task(self._hold_listen(key))

    async def _hold_listen(self, key: tuple[str, str]) -> None:
        params = {"notifications": {"resourceSubscriptions": [key[1]]}}
        while self._subscribers.get(key) is not None and not self._stopping:
            backend = self.backends.get(key[0])
            if backend is None or not backend.modern:
                return  # removed, or restarted as a handshake-era server: it was re-subscribed
            try:
                await backend.request("subscriptions/listen", params, timeout=LISTEN_HOLD_SECS)
            except (jsonrpc.JsonRpcError, BackendError) as exc:
                log.debug("backend %s: listen for %s ended (%s)", key[0], key[1], exc)
            await asyncio.sleep(1.0)  # a backend that ends streams at once is not spun on

    async def _upstream_unsubscribe(self, key: tuple[str, str]) -> None:
        self._subscribers.pop(key, None)
        held = self._upstream_listens.pop(key, None)
        if held is not None:
            held.cancel()  # ends the listen stream upstream
            return
        backend = self.backends.get(key[0])
        if backend is not None and backend.ready:
            with contextlib.suppress(jsonrpc.JsonRpcError):
                await backend.request("resources/unsubscribe", {"uri": key[1]})

    async def _complete(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        ref = params.get("ref")
        if not isinstance(ref, dict):
            raise jsonrpc.JsonRpcError(jsonrpc.INVALID_PARAMS, "Invalid params: completion needs a ref")
        self.policy.authorize_completion(session.identity)
        await self.wait_for_backends()
        if ref.get("type") == "ref/prompt":
            name = ref.get("name")
            entry = self.catalog.view.prompt_by_name.get(name) if isinstance(name, str) else None
            if entry is None or not self.policy.prompt_visible(session.identity, entry):
                raise jsonrpc.JsonRpcError(jsonrpc.INVALID_PARAMS, f"Unknown prompt: {name}")
            backend, upstream = entry.backend, {**params, "ref": {**ref, "name": entry.original}}
        elif ref.get("type") == "ref/resource":
            uri = ref.get("uri")
            owner = self.catalog.view.template_owner(uri) if isinstance(uri, str) else None
            backend = owner or self._resource_owner(session, uri)
            if not self.policy.resource_visible(session.identity, str(uri), backend):
                raise jsonrpc.JsonRpcError(jsonrpc.RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri})
            upstream = params
        else:
            raise jsonrpc.JsonRpcError(jsonrpc.INVALID_PARAMS, "Invalid params: unknown ref type")
        if self.policy.backend_killed(backend):
            raise jsonrpc.JsonRpcError(jsonrpc.KILLED, f"Backend '{backend}' is disabled by the kill switch")
        if "completions" not in self._backend_for(backend).capabilities:
            return {"completion": {"values": [], "hasMore": False}}
        return await self._forward(session, backend, "completion/complete", upstream)

    async def _set_level(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        level = params.get("level")
        if not isinstance(level, str) or level not in LOG_LEVEL_RANK:
            raise jsonrpc.JsonRpcError(
                jsonrpc.INVALID_PARAMS, f"Invalid params: level must be one of {', '.join(LOG_LEVELS)}"
            )
        session.log_level = level
        await self._push_log_level()
        return {}

    async def _push_log_level(self, only: AnyBackend | None = None) -> None:
        levels = [s.log_level for s in self.sessions if s.log_level]
        if not levels:
            return
        # Shared backends log at the most verbose level any client asked for; we filter per client.
        level = min(levels, key=LOG_LEVEL_RANK.__getitem__)
        targets = [only] if only else self._ready_backends()
        for backend in targets:
            if "logging" in backend.capabilities:
                with contextlib.suppress(jsonrpc.JsonRpcError):
                    await backend.request("logging/setLevel", {"level": level})

    # -- backend events (BackendEvents) ------------------------------------------------------

    def _ready_backends(self) -> list[AnyBackend]:
        return [b for b in self.backends.values() if b.ready]

    def _current(self, backend: Any) -> bool:
        """Events from a backend retired by a reload are ignored."""
        return self.backends.get(backend.name) is backend

    def backend_ready(self, backend: Any) -> None:
        if not self._current(backend):
            return
        self.event(
            "backend.restarted" if backend.restarts else "backend.started",
            backend=backend.name,
            pid=backend.pid,
        )
        self._spawn(self._on_backend_ready(backend))

    async def _on_backend_ready(self, backend: AnyBackend) -> None:
        try:
            await self._refresh(backend, ("tools", "prompts", "resources"))
            await self._push_log_level(backend)
            for (name, uri), subs in list(self._subscribers.items()):
                if name == backend.name and subs:
                    with contextlib.suppress(jsonrpc.JsonRpcError, BackendError):
                        await self._upstream_subscribe(backend, uri)
        finally:
            # A crash during the first lists cleared the flag: callers must keep waiting for the
            # restart, and a retired incarnation must not mark its replacement ready.
            if backend.ready and self._current(backend):
                self._lists_ready[backend.name].set()

    def backend_down(self, backend: Any, reason: str) -> None:
        if not self._current(backend):
            return
        self.event(
            {"gave_up": "backend.gave_up", "circuit_open": "backend.circuit_open"}.get(
                reason, "backend.crashed"
            ),
            backend=backend.name,
            reason=reason,
            error=backend.last_error,
        )
        if reason == "gave_up":
            self.catalog.drop_backend(backend.name)
        self._rebuild()  # its entries leave the lists; a restarting backend keeps its names
        if reason in ("gave_up", "circuit_open"):
            # Nothing to wait for: calls fail fast until a probe closes the circuit.
            self._lists_ready[backend.name].set()
        else:  # it restarts: callers may wait for it as they did at startup
            cfg = backend.cfg
            self._ready_deadline[backend.name] = (
                time.monotonic() + cfg.restart.backoff_max_secs + cfg.startup_timeout_secs
            )
            self._lists_ready[backend.name].clear()

    async def _refresh(self, backend: AnyBackend, kinds: tuple[str, ...]) -> None:
        caps = backend.capabilities
        for kind in kinds:
            if kind not in caps:
                continue
            methods = (
                ["resources/list", "resources/templates/list"] if kind == "resources" else [f"{kind}/list"]
            )
            for method in methods:
                try:
                    items = await self._drain(backend, method)
                except jsonrpc.JsonRpcError as exc:
                    if exc.code != jsonrpc.METHOD_NOT_FOUND:
                        log.warning("backend %s: %s failed: %s", backend.name, method, exc.message)
                    items = []
                self.catalog.set_lists(backend.name, LIST_METHODS[method], items)
        self._rebuild()

    async def _drain(self, backend: AnyBackend, method: str) -> list[Any]:
        """All pages of one list, with caps and loop detection (a cursor seen twice ends it)."""
        key = LIST_METHODS[method]
        items: list[Any] = []
        seen: set[str] = set()
        cursor: str | None = None
        for _ in range(MAX_UPSTREAM_PAGES):
            page = await backend.request(method, {"cursor": cursor} if cursor is not None else {})
            batch = page.get(key)
            if isinstance(batch, list):
                items.extend(batch)
            nxt = page.get("nextCursor")
            if not isinstance(nxt, str) or len(items) >= MAX_UPSTREAM_ITEMS:
                break
            if nxt in seen:
                log.warning("backend %s: %s returned a cursor twice; stopping", backend.name, method)
                break
            seen.add(nxt)
            cursor = nxt
        return items[:MAX_UPSTREAM_ITEMS]

    def _rebuild(self) -> None:
        visible = [
            b.name for b in self.backends.values() if b.ready and not self.policy.backend_killed(b.name)
        ]
        _, changed = self.catalog.rebuild(visible)
        for kind in sorted(changed):
            self._broadcast_list_changed(kind)

    def _broadcast_list_changed(self, kind: str) -> None:
        method = LIST_CHANGED[kind]
        wanted = f"{kind}ListChanged"
        for session in list(self.sessions):
            if session.state != "new":  # a handshake-era session: pushed on its channel
                session.notify(method)
            for listener in list(session.listeners.values()):  # 2026-07-28: only to listens that asked
                if wanted in listener.kinds:
                    listener.notify(method, {})

    def policy_changed(self) -> None:
        """Kill switch or policy changed: lists may look different to every client."""
        self._rebuild()
        for kind in LIST_CHANGED:
            self._broadcast_list_changed(kind)

    def backend_notification(
        self, backend: Any, method: str, params: dict[str, Any], caller: Caller | None = None
    ) -> None:
        if method in (
            "notifications/tools/list_changed",
            "notifications/prompts/list_changed",
            "notifications/resources/list_changed",
        ):
            kind = method.split("/")[1]
            self._schedule_refresh(backend, kind)
        elif method == "notifications/resources/updated":
            uri = params.get("uri")
            params = _without_subscription_id(params)  # the backend's listen id is not the client's
            for who in list(self._subscribers.get((backend.name, uri), ())) if isinstance(uri, str) else ():
                who.notify(method, params)
        elif method == "notifications/message":
            self._relay_log(backend, params, caller)
        elif method == "notifications/cancelled":
            backend.cancel_server_request(params.get("requestId"))
        else:
            log.debug("backend %s: notification %s not relayed", backend.name, method)

    def _schedule_refresh(self, backend: AnyBackend, kind: str) -> None:
        key = (backend.name, kind)
        if key in self._refresh_tasks:
            return  # one refresh per burst of notifications

        async def later() -> None:
            try:
                await asyncio.sleep(LIST_REFRESH_DEBOUNCE)
                if backend.ready:
                    await self._refresh(backend, (kind,))
            except (jsonrpc.JsonRpcError, asyncio.CancelledError):
                pass
            finally:
                self._refresh_tasks.pop(key, None)

        self._refresh_tasks[key] = asyncio.create_task(later())

    def _relay_log(self, backend: AnyBackend, params: dict[str, Any], caller: Caller | None) -> None:
        """A backend's log line goes only where it cannot cross tenants: to the caller whose
        request's stream carried it, or, when nothing ties it to a request (a stdio backend, an
        HTTP backend's GET stream), to the sessions RBAC lets see the backend, and then only if
        they all belong to one identity. Backend logs may name files, users and arguments of a
        call (MCP-PROTOCOL 9.9: on shared connections, forwarding them would leak)."""
        if self.policy.backend_killed(backend.name):
            return
        if caller is not None:
            recipients = [caller.session] if caller.session in self.sessions else []
            related = caller.request_id
        else:
            recipients = [
                s for s in self.sessions if s.state != "new" and self._sees_backend(s.identity, backend.name)
            ]
            related = None
            if len({_principal(s.identity) for s in recipients}) > 1:
                log.debug("backend %s: log line not relayed: it belongs to no request", backend.name)
                return
        level = params.get("level")
        rank = LOG_LEVEL_RANK.get(level, 0) if isinstance(level, str) else 0
        logger = params.get("logger")
        out = {**params, "logger": f"{backend.name}/{logger}" if isinstance(logger, str) else backend.name}
        for session in recipients:
            wanted = session.log_level
            if session.state != "new" and (wanted is None or rank >= LOG_LEVEL_RANK[wanted]):
                session.notify("notifications/message", out, related)

    def _sees_backend(self, identity: Any, backend: str) -> bool:
        """Whether RBAC shows `identity` anything of `backend`: a tool, prompt, resource or template.
        It depends on the roles only: one catalog scan per roles and backend, until the catalog or
        the policy changes (a chatty backend must not cost a scan per session per line)."""
        view, policy = self.catalog.view, self.policy
        stale = self._sight_of is None or self._sight_of[0] is not view or self._sight_of[1] is not policy
        if stale or len(self._sight) > 4096:  # roles come from tokens: bound it anyway
            self._sight.clear()
            self._sight_of = (view, policy)
        key = (backend, tuple(identity.roles) if identity is not None else ())
        seen = self._sight.get(key)
        if seen is None:
            seen = self._sight[key] = self._scan_sight(view, policy, identity, backend)
        return seen

    @staticmethod
    def _scan_sight(view: CatalogView, policy: PolicyEngine, identity: Any, backend: str) -> bool:
        return (
            any(e.backend == backend and policy.tool_visible(identity, e) for e in view.known_tools.values())
            or any(
                e.backend == backend and policy.prompt_visible(identity, e)
                for e in view.known_prompts.values()
            )
            or any(
                r.backend == backend and policy.resource_visible(identity, r.uri, backend)
                for r in view.resources
            )
            or any(
                t.backend == backend and policy.resource_visible(identity, t.template, backend)
                for t in view.templates
            )
        )

    async def backend_request(
        self,
        backend: Any,
        method: str,
        params: dict[str, Any],
        caller: Caller | None = None,
        *,
        session: Session | None = None,
    ) -> dict[str, Any]:
        """A backend asks the client something (sampling, elicitation, roots). `caller`: the
        request whose stream the question came on (HTTP backends): it is that client's."""
        capability = CLIENT_REQUEST_CAPABILITY.get(method)
        if capability is None:
            raise jsonrpc.JsonRpcError(jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}")
        if self.policy.backend_killed(backend.name):
            raise jsonrpc.JsonRpcError(
                jsonrpc.KILLED, f"Backend '{backend.name}' is disabled by the kill switch"
            )
        if method == "elicitation/create" and isinstance(params.get("message"), str):
            # The user must see which server is asking.
            params = {**params, "message": f"[{backend.name}] {params['message']}"}
        related = None
        if session is None and caller is not None:
            session, related = caller.session, caller.request_id
        if session is None:
            target = self._route_server_request(backend.name, capability)
            if isinstance(target, ParkedCall):
                # A 2026-07-28 caller: the question waits for its retry, bounded by the parking
                # expiry, which fails it if the client never comes back.
                return await target.ask(method, params, capability)
            session = target
        elif capability not in session.client_capabilities:
            raise jsonrpc.JsonRpcError(jsonrpc.METHOD_NOT_FOUND, f"The client does not support {capability}")
        if related is None:
            calls = session.backend_calls.get(backend.name) or set()
            related = next(iter(calls)) if len(calls) == 1 else None  # the call it must belong to
        return await session.request(method, params, self.config.gateway.client_request_timeout_secs, related)

    def _route_server_request(self, backend: str, capability: str) -> Session | ParkedCall:
        """Who a backend's question is for. A shared connection says nothing about which call
        asks, so it goes only where no other caller could be the one asking: the single caller
        with calls in flight there, or, with none in flight, the single capable session among
        those RBAC lets see the backend, and only while those all act for one identity (the
        question may be about another user's earlier call: it must not reach someone else)."""
        unclear = jsonrpc.JsonRpcError(
            jsonrpc.METHOD_NOT_FOUND, f"Cannot tell which client a {capability} request is for"
        )
        parked = self.parking.running_on(backend)
        busy = [s for s in self.sessions if s.backend_calls.get(backend)]
        if len(parked) + len(busy) > 1:
            raise unclear
        if parked:
            return parked[0]  # it checks the capability itself: a missing one ends the call with -32021
        candidates = busy or [
            s for s in self.sessions if s.state != "new" and self._sees_backend(s.identity, backend)
        ]
        if len({_principal(s.identity) for s in candidates}) > 1:
            raise unclear
        capable = [s for s in candidates if s.state != "new" and capability in s.client_capabilities]
        if len(capable) > 1:
            raise unclear
        if not capable:
            raise jsonrpc.JsonRpcError(jsonrpc.METHOD_NOT_FOUND, f"The client does not support {capability}")
        return capable[0]

    # -- helpers -------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "type": b.cfg.type,
                "state": b.state.value,
                "health": b.health.value,
                "breaker": b.breaker.state.value,
                "pid": b.pid,
                "restarts": b.restarts,
                "last_error": b.last_error,
                "in_flight": b.in_flight(),
                "tools": len(self.catalog.lists.get(name).tools) if name in self.catalog.lists else 0,
            }
            for name, b in self.backends.items()
        }


def _principal(identity: Any) -> tuple[Any, Any]:
    """Who a session acts for: sessions with the same one are the same tenant."""
    return (identity.issuer, identity.subject) if identity is not None else (None, None)


def _without_subscription_id(params: dict[str, Any]) -> dict[str, Any]:
    meta = params.get("_meta")
    if not isinstance(meta, dict) or SUBSCRIPTION_ID_KEY not in meta:
        return params
    rest = {k: v for k, v in meta.items() if k != SUBSCRIPTION_ID_KEY}
    out = {k: v for k, v in params.items() if k != "_meta"}
    if rest:
        out["_meta"] = rest
    return out


async def _quiet(coro: Awaitable[Any]) -> None:
    """Fire-and-forget work whose failure is not worth a task-exception warning."""
    with contextlib.suppress(jsonrpc.JsonRpcError, ConnectionError):
        await coro
