"""The policy chain as the gateway applies it: one object per config snapshot.

Each decision delegates to a pure module (auth, rbac, limits, killswitch, validate); this file
only orders them, turns refusals into stable errors, and owns the kill-file watcher task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from sentinel_gw.catalog import Entry
from sentinel_gw.config_schema import Config
from sentinel_gw.policy.auth import AuthError, TokenVerifier, anonymous_identity
from sentinel_gw.policy.identity import Identity
from sentinel_gw.policy.killswitch import KillFile, KillSwitch, default_kill_file_path
from sentinel_gw.policy.limits import LimitDecision, RateLimiter
from sentinel_gw.policy.rbac import Rbac
from sentinel_gw.policy.validate import SchemaError, Validator, compile_schema
from sentinel_gw.protocol import jsonrpc

log = logging.getLogger("sentinel_gw.policy")

KILL_FILE_POLL_SECS = 0.25
_NO_VALIDATOR = object()


class Refusal(jsonrpc.JsonRpcError):
    """A policy refusal; `status` is what audit and metrics record (denied, killed, ...)."""

    def __init__(self, status: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message, data)
        self.status = status


def resolve_path(base_dir: str, value: str) -> str:
    import os

    if not value:
        return value
    value = os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.join(base_dir, value)


class PolicyEngine:
    def __init__(self, config: Config, *, environ: Mapping[str, str], clock: Callable[[], float] = time.time):
        self.config = config
        self.environ = environ
        self.clock = clock
        auth = config.auth
        self.verifier: TokenVerifier | None = None
        if auth.mode == "jwt":
            self.verifier = TokenVerifier.from_config(auth, environ=environ, base_dir=config.base_dir)
        self.rbac = Rbac.compile(config.rbac)
        self.limiter = RateLimiter(config.rate_limits)
        kill_path = resolve_path(config.base_dir, config.kill_switch.file) or str(
            default_kill_file_path(environ)
        )
        self.kill_file = KillFile(kill_path)
        self.kill_file.poll()
        self.killswitch = KillSwitch(config.kill_switch, self.kill_file.state)
        self._validators: dict[int, tuple[Mapping[str, Any], Any]] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self.on_kill_change: Callable[[object], None] = lambda path: None

    # -- identity ------------------------------------------------------------------------------

    def stdio_identity(self) -> Identity:
        """The stdio front has one caller: its token comes from the environment, checked now."""
        if self.verifier is None:
            log.warning(
                'AUTHENTICATION IS OFF (auth.mode = "none"): every caller is %r with roles %s',
                self.config.auth.anonymous_subject,
                list(self.config.auth.anonymous_roles) or "(none)",
            )
            return anonymous_identity(self.config.auth)
        token = self.environ.get(self.config.auth.token_env, "").strip()
        if not token:
            raise AuthError(
                "missing_token", f"no token: set {self.config.auth.token_env} to the caller's JWT"
            )
        return self.verifier.verify(token)

    def authenticate(self, token: str) -> Identity:
        if self.verifier is None:
            return anonymous_identity(self.config.auth)
        return self.verifier.verify(token)

    def check_identity(self, identity: Identity) -> None:
        """Re-checked on every request: a token can expire or be revoked mid-session."""
        if self.verifier is None:
            return
        if identity.expired(self.clock(), self.config.auth.leeway_secs):
            raise Refusal(
                "denied",
                jsonrpc.UNAUTHENTICATED,
                "Authentication failed: token expired",
                {"reason": "expired"},
            )
        if identity.token_id and self.verifier.is_revoked(identity.token_id):
            raise Refusal(
                "denied",
                jsonrpc.UNAUTHENTICATED,
                "Authentication failed: token revoked",
                {"reason": "revoked"},
            )

    # -- visibility ----------------------------------------------------------------------------

    def tool_visible(self, identity: Identity, entry: Entry) -> bool:
        """RBAC visibility (what the caller may know exists)."""
        return self.rbac.view(identity.roles).tool_visible(entry.exposed, entry.backend, entry.original)

    def tool_listed(self, identity: Identity, entry: Entry) -> bool:
        """Listed = visible and not killed."""
        return (
            self.tool_visible(identity, entry)
            and self.killswitch.tool_killed(entry.exposed, entry.backend, entry.original) is None
        )

    def prompt_visible(self, identity: Identity, entry: Entry) -> bool:
        return self.rbac.view(identity.roles).prompt_visible(entry.exposed, entry.backend, entry.original)

    def resource_visible(self, identity: Identity, uri: str, backend: str) -> bool:
        return self.rbac.view(identity.roles).resource_visible(uri, backend)

    def backend_killed(self, backend: str) -> str | None:
        return self.killswitch.backend_killed(backend)

    # -- decisions -----------------------------------------------------------------------------

    def authorize_tool_call(self, identity: Identity, entry: Entry, arguments: Mapping[str, Any]) -> None:
        """Kill switch, RBAC, rate limit, argument validation: in that order (DESIGN.md)."""
        reason = self.killswitch.tool_killed(entry.exposed, entry.backend, entry.original)
        if reason is not None:
            raise Refusal(
                "killed",
                jsonrpc.KILLED,
                f"Tool is disabled: {entry.exposed} ({reason})",
                {"reason": "killed", "detail": reason},
            )
        view = self.rbac.view(identity.roles)
        if not view.tool_callable(entry.exposed, entry.backend, entry.original):
            raise Refusal(
                "denied",
                jsonrpc.PERMISSION_DENIED,
                f"Permission denied for tool: {entry.exposed}",
                {"reason": "permission_denied"},
            )
        # Look first so a refused caller costs no validation; count only once validation passed,
        # so a call refused for its arguments never spends the caller's rate limit. One look: the
        # reservation carries what it found to the count (nothing runs in between).
        now = time.monotonic()
        held = self.limiter.reserve(identity.subject, identity.roles, entry.exposed, now=now)
        if isinstance(held, LimitDecision):
            raise self._rate_limited(entry, held)
        validator = self._validator(entry)
        if validator is not None:
            failure = validator.validate(arguments)
            if failure is not None:
                where = failure.pointer or "/"
                raise Refusal(
                    "invalid_args",
                    jsonrpc.INVALID_PARAMS,
                    f"Invalid arguments for tool {entry.exposed}: {failure.message} at {where}",
                    {"reason": "invalid_arguments", "pointer": failure.pointer, "keyword": failure.keyword},
                )
        self.limiter.commit(held, now)

    @staticmethod
    def _rate_limited(entry: Entry, decision: LimitDecision) -> Refusal:
        ms = decision.retry_after_ms
        return Refusal(
            "rate_limited",
            jsonrpc.RATE_LIMITED,
            f"Rate limit exceeded for tool: {entry.exposed}; retry in {ms / 1000:.1f} s",
            {
                "reason": "rate_limited",
                "rule": decision.rule,
                "retry_after_ms": ms,
                "retryAfter": max(1, -(-ms // 1000)),
            },
        )

    def _validator(self, entry: Entry) -> Validator | None:
        schema = entry.definition.get("inputSchema")
        cached = self._validators.get(id(entry.definition))
        if cached is not None and cached[0] is entry.definition:
            return None if cached[1] is _NO_VALIDATOR else cached[1]
        validator: Any = _NO_VALIDATOR
        if isinstance(schema, dict):
            try:
                validator = compile_schema(schema)
            except SchemaError as exc:
                log.warning("tool %s: input schema not enforced: %s", entry.exposed, exc)
        # Keyed by the definition object, which lives as long as the catalog view holding it.
        self._validators[id(entry.definition)] = (entry.definition, validator)
        if len(self._validators) > 20_000:
            self._validators.clear()
        return None if validator is _NO_VALIDATOR else validator

    def authorize_prompt_get(self, identity: Identity, entry: Entry) -> None:
        if not self.rbac.view(identity.roles).prompt_gettable(entry.exposed, entry.backend, entry.original):
            raise Refusal(
                "denied",
                jsonrpc.PERMISSION_DENIED,
                f"Permission denied for prompt: {entry.exposed}",
                {"reason": "permission_denied"},
            )

    def authorize_resource_read(self, identity: Identity, uri: str, backend: str) -> None:
        if self.killswitch.backend_killed(backend) is not None:
            raise Refusal("killed", jsonrpc.RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri})
        if not self.rbac.view(identity.roles).resource_readable(uri, backend):
            raise Refusal(
                "denied",
                jsonrpc.PERMISSION_DENIED,
                "Permission denied for resource",
                {"reason": "permission_denied", "uri": uri},
            )

    def authorize_completion(self, identity: Identity) -> None:
        if not self.rbac.view(identity.roles).completion_allowed():
            raise Refusal(
                "denied",
                jsonrpc.PERMISSION_DENIED,
                "Permission denied for completion",
                {"reason": "permission_denied"},
            )

    # -- kill file watching --------------------------------------------------------------------

    def start_watching(self, on_change: Callable[[], None]) -> None:
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._watch(on_change), name="killfile-watch")

    def stop_watching(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None

    async def _watch(self, on_change: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(KILL_FILE_POLL_SECS)
            with contextlib.suppress(Exception):
                if self.kill_file.poll():
                    self.killswitch = KillSwitch(self.config.kill_switch, self.kill_file.state)
                    log.warning("kill switch changed: %s", self.kill_file.path)
                    self.on_kill_change(self.kill_file.path)
                    on_change()
