"""The configuration schema: frozen dataclasses, one per TOML table.

This module only declares shapes and defaults. `config.py` turns a TOML document into these
objects (strictly: unknown keys, wrong types and missing required keys are errors naming the
file, the key and the reason) and runs the cross-field checks.

Conventions the loader relies on:
- every field's TOML key is its Python name;
- `field(metadata={"doc": ...})` is the one-line description shown by `sentinel-gw check` and in
  docs/CONFIGURATION.md;
- a field without a default is required;
- `tuple[X, ...]` is a TOML array, `Mapping[str, X]` a TOML table with free keys, a nested
  dataclass a TOML table with fixed keys, `tuple[Dataclass, ...]` an array of tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

LogLevel = Literal["debug", "info", "warning", "error"]


def _empty() -> Mapping[str, str]:
    # A MappingProxyType default is rejected by dataclasses on 3.11+ (unhashable = "mutable").
    return MappingProxyType({})


def doc(text: str, **kw: object) -> dict[str, object]:
    """Field metadata helper: `field(default=..., metadata=doc("..."))`."""
    return {"doc": text, **kw}


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    name: str = field(
        default="sentinel",
        metadata=doc(
            "Name clients register the gateway under (Claude Code: `mcp__<name>__<tool>`); "
            "exposed tool names are shortened so the full name stays within 64 characters"
        ),
    )
    log_level: LogLevel = field(default="info", metadata=doc("Log level on stderr"))
    log_format: Literal["text", "json"] = field(default="text", metadata=doc("Log line format on stderr"))
    max_message_bytes: int = field(
        default=4 * 1024 * 1024, metadata=doc("Largest JSON-RPC message accepted from a client or backend")
    )
    max_in_flight_per_session: int = field(
        default=64, metadata=doc("Requests one client may have in flight at once; more are refused")
    )
    page_size: int = field(
        default=200, metadata=doc("Items per page of tools/resources/prompts lists served to clients")
    )
    shutdown_grace_secs: float = field(
        default=5.0, metadata=doc("How long in-flight calls may finish after shutdown starts")
    )
    client_request_timeout_secs: float = field(
        default=300.0,
        metadata=doc("Timeout for requests the gateway relays to the client (sampling, elicitation, roots)"),
    )
    instructions: str = field(
        default="", metadata=doc("Extra text put before the backends' instructions in `initialize`")
    )


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_restarts: int = field(
        default=5, metadata=doc("Restarts allowed within `restart_window_secs` before giving up")
    )
    restart_window_secs: float = field(default=300.0, metadata=doc("Sliding window for `max_restarts`"))
    backoff_initial_secs: float = field(default=0.5, metadata=doc("First restart delay"))
    backoff_max_secs: float = field(default=30.0, metadata=doc("Longest restart delay"))
    backoff_jitter: float = field(
        default=0.5, metadata=doc("Fraction of each delay that is randomised (0 = none, 1 = full jitter)")
    )


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cafile: str = field(
        default="", metadata=doc("PEM file of the CA(s) to trust instead of the system store; empty = system")
    )
    certfile: str = field(default="", metadata=doc("Client certificate (PEM) for mutual TLS"))
    keyfile: str = field(default="", metadata=doc("Private key of `certfile`; empty = inside `certfile`"))
    verify: bool = field(
        default=True,
        metadata=doc("false disables certificate verification (testing only: open to interception)"),
    )


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = field(default=5, metadata=doc("Consecutive failures that open the circuit"))
    failure_rate: float = field(
        default=0.5, metadata=doc("Share of failed calls within `window_secs` that opens the circuit")
    )
    window_secs: float = field(default=60.0, metadata=doc("Window of the failure rate"))
    min_calls: int = field(default=10, metadata=doc("Calls needed in the window before the rate counts"))
    cooldown_secs: float = field(
        default=30.0, metadata=doc("Time an open circuit fails fast before one probe is let through")
    )


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str = field(metadata=doc("Unique backend name, [A-Za-z0-9_-]"))
    type: Literal["stdio", "http"] = field(metadata=doc("`stdio` (a supervised child process) or `http`"))
    command: str = field(default="", metadata=doc("stdio: program to run (looked up on PATH)"))
    args: tuple[str, ...] = field(default=(), metadata=doc("stdio: arguments"))
    cwd: str = field(default="", metadata=doc("stdio: working directory (relative to the config file)"))
    env: Mapping[str, str] = field(
        default_factory=_empty, metadata=doc("stdio: literal environment variables")
    )
    env_from: Mapping[str, str] = field(
        default_factory=_empty,
        metadata=doc("stdio: child variable -> name of a variable in the gateway's environment (secrets)"),
    )
    inherit_env: tuple[str, ...] = field(
        default=(), metadata=doc("stdio: extra variables copied from the gateway's environment as they are")
    )
    url: str = field(
        default="",
        metadata=doc("http: the MCP endpoint URL (http:// or https://), used exactly as written"),
    )
    headers: Mapping[str, str] = field(
        default_factory=_empty, metadata=doc("http: literal request headers (never secrets)")
    )
    headers_from_env: Mapping[str, str] = field(
        default_factory=_empty,
        metadata=doc(
            "http: header -> name of a variable in the gateway's environment whose value is sent "
            'verbatim (e.g. Authorization = "BACKEND_TOKEN" holding `Bearer ...`)'
        ),
    )
    connect_timeout_secs: float = field(
        default=10.0, metadata=doc("http: time allowed for one TCP connect plus TLS handshake")
    )
    transport: Literal["auto", "streamable", "sse"] = field(
        default="auto",
        metadata=doc(
            "http: `streamable` (Streamable HTTP), `sse` (legacy 2024-11-05 HTTP+SSE) or `auto` "
            "(Streamable HTTP, falling back to HTTP+SSE when the server does not speak it)"
        ),
    )
    tls: TlsConfig = field(default_factory=TlsConfig, metadata=doc("http: TLS settings (https URLs)"))
    retries: int = field(
        default=2,
        metadata=doc(
            "http: extra attempts after a transport error or 5xx, only for requests that are safe to "
            "repeat (lists, reads, ping; tools/call only per `idempotent_tools`)"
        ),
    )
    idempotent_tools: tuple[str, ...] = field(
        default=(),
        metadata=doc("http: original tool names whose calls may be retried (repeating them is harmless)"),
    )
    retry_idempotent_hint: bool = field(
        default=False,
        metadata=doc(
            "http: also retry tools that declare `idempotentHint` or `readOnlyHint` (a server's claim)"
        ),
    )
    tool_timeouts: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({}),
        metadata=doc("Original tool name -> timeout in seconds, instead of `timeout_secs`"),
    )
    max_timeout_secs: float = field(
        default=600.0,
        metadata=doc(
            "Hard cap on a request: progress notifications and questions to the user extend "
            "`timeout_secs`, never beyond this many seconds"
        ),
    )
    health_interval_secs: float = field(
        default=30.0, metadata=doc("Seconds between health pings; 0 = no health checks")
    )
    breaker: BreakerConfig = field(
        default_factory=BreakerConfig, metadata=doc("Circuit breaker of this backend")
    )
    prefix: str = field(default="", metadata=doc("Exposed names become `<prefix>_<name>`; empty = none"))
    enabled: bool = field(default=True, metadata=doc("false keeps the entry but does not start it"))
    timeout_secs: float = field(
        default=60.0,
        metadata=doc(
            "Seconds a request may wait for the backend's answer (or progress); paused while the "
            "backend waits for the user (elicitation, sampling, roots), up to `max_timeout_secs`"
        ),
    )
    startup_timeout_secs: float = field(
        default=30.0, metadata=doc("Time allowed for start + initialize; lists wait this long for it")
    )
    era: Literal["legacy", "modern", "auto"] = field(
        default="legacy",
        metadata=doc(
            "Protocol era spoken to the backend: `legacy` (initialize handshake; http: sessions, "
            "GET stream, HTTP+SSE fallback), `modern` (2026-07-28: server/discover, per-request "
            "_meta; http: Mcp-Method/Mcp-Name headers, no session, list changes via "
            "subscriptions/listen) or `auto` (probe with server/discover and fall back to "
            "initialize; stdio: a silent server costs `probe_timeout_secs` once per start; http: "
            "the era found is tried first on reconnects and probed again when the server stops "
            "answering in it)"
        ),
    )
    probe_timeout_secs: float = field(
        default=5.0, metadata=doc("era = auto: time allowed for the server/discover probe")
    )
    max_in_flight: int = field(
        default=32, metadata=doc("Concurrent requests to this backend; more are refused")
    )
    restart: RestartPolicy = field(default_factory=RestartPolicy, metadata=doc("stdio restart policy"))


@dataclass(frozen=True, slots=True)
class AuthConfig:
    mode: Literal["jwt", "none"] = field(
        default="jwt",
        metadata=doc("`jwt` (default) or `none` (no authentication; must be written explicitly)"),
    )
    algorithms: tuple[str, ...] = field(
        default=("HS256",),
        metadata=doc(
            "Accepted JWT algorithms: HS256/384/512, RS*/PS*/ES*/EdDSA; never `none`, never HS mixed"
        ),
    )
    secret_env: str = field(
        default="SENTINEL_JWT_SECRET", metadata=doc("Environment variable holding the HMAC secret (HS*)")
    )
    public_key_file: str = field(default="", metadata=doc("PEM public key file (RS*/PS*/ES*/EdDSA)"))
    jwks_file: str = field(default="", metadata=doc("JWKS file (asymmetric algorithms)"))
    jwks_url: str = field(
        default="", metadata=doc("JWKS URL, fetched and cached; refetched on unknown `kid`")
    )
    issuer: str = field(default="sentinel-gw", metadata=doc("Required `iss`; empty disables the check"))
    audience: str = field(default="sentinel-gw", metadata=doc("Required `aud`; empty disables the check"))
    leeway_secs: float = field(default=30.0, metadata=doc("Clock skew allowed on exp/nbf/iat"))
    max_token_lifetime_secs: float = field(
        default=0.0, metadata=doc("Reject tokens whose exp - iat exceeds this; 0 = no limit")
    )
    roles_claim: str = field(default="roles", metadata=doc("Claim holding the role(s): string or array"))
    tenant_claim: str = field(default="tenant", metadata=doc("Claim holding the optional tenant"))
    token_env: str = field(
        default="SENTINEL_TOKEN", metadata=doc("stdio front: environment variable holding the client's JWT")
    )
    revocation_file: str = field(
        default="", metadata=doc("File of revoked `jti` values, one per line; re-read when it changes")
    )
    anonymous_subject: str = field(default="anonymous", metadata=doc("mode = none: the subject used"))
    anonymous_roles: tuple[str, ...] = field(
        default=(), metadata=doc("mode = none: the roles given (none by default: nothing is allowed)")
    )


@dataclass(frozen=True, slots=True)
class RoleConfig:
    permissions: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "tools.list tools.call resources.list resources.read prompts.list prompts.get completion * "
            "(aliases: tools.read = tools.list, tools.execute = tools.call + tools.list)"
        ),
    )
    inherits: tuple[str, ...] = field(
        default=(), metadata=doc("Roles whose grants and denials this role adds")
    )
    allow_tools: tuple[str, ...] = field(
        default=("*",), metadata=doc("Glob patterns over exposed names and `backend:tool`")
    )
    deny_tools: tuple[str, ...] = field(default=(), metadata=doc("Glob patterns; deny wins"))
    allow_backends: tuple[str, ...] = field(default=("*",), metadata=doc("Glob patterns over backend names"))
    deny_backends: tuple[str, ...] = field(default=(), metadata=doc("Glob patterns; deny wins"))
    allow_resources: tuple[str, ...] = field(default=("*",), metadata=doc("Glob patterns over resource URIs"))
    deny_resources: tuple[str, ...] = field(default=(), metadata=doc("Glob patterns; deny wins"))
    allow_prompts: tuple[str, ...] = field(
        default=("*",), metadata=doc("Glob patterns over exposed prompt names and `backend:prompt`")
    )
    deny_prompts: tuple[str, ...] = field(default=(), metadata=doc("Glob patterns; deny wins"))


@dataclass(frozen=True, slots=True)
class RbacConfig:
    roles: Mapping[str, RoleConfig] = field(
        default_factory=lambda: MappingProxyType({}), metadata=doc("Role name -> role")
    )


@dataclass(frozen=True, slots=True)
class LimitConfig:
    requests: int = field(metadata=doc("Requests allowed per window (sliding) or refill per window (bucket)"))
    window_secs: float = field(default=60.0, metadata=doc("Window length in seconds"))
    burst: int = field(default=0, metadata=doc("token_bucket: bucket size; 0 = `requests`"))


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    algorithm: Literal["token_bucket", "sliding_window"] = field(
        default="token_bucket", metadata=doc("`token_bucket` (rate + burst) or `sliding_window` (exact)")
    )
    default: LimitConfig | None = field(
        default=None, metadata=doc("Limit per (subject, tool) unless overridden; absent = unlimited")
    )
    tools: Mapping[str, LimitConfig] = field(
        default_factory=lambda: MappingProxyType({}), metadata=doc("Exposed tool name -> limit")
    )
    roles: Mapping[str, LimitConfig] = field(
        default_factory=lambda: MappingProxyType({}),
        metadata=doc("Role -> per-(subject, tool) limit for subjects holding that role"),
    )
    subject: LimitConfig | None = field(
        default=None, metadata=doc("Limit per subject across all tools; absent = unlimited")
    )


@dataclass(frozen=True, slots=True)
class KillSwitchConfig:
    tools: tuple[str, ...] = field(default=(), metadata=doc("Glob patterns of disabled tools"))
    backends: tuple[str, ...] = field(default=(), metadata=doc("Glob patterns of disabled backends"))
    file: str = field(
        default="",
        metadata=doc(
            "Host-wide kill file shared by every gateway of this user; "
            "empty = ~/.local/state/sentinel-gw/killswitch.json"
        ),
    )


@dataclass(frozen=True, slots=True)
class AuditConfig:
    sinks: tuple[str, ...] = field(default=("sqlite",), metadata=doc("Any of sqlite, jsonl, postgres"))
    args: Literal["redacted", "full", "shape", "none"] = field(
        default="redacted", metadata=doc("How tool arguments are recorded")
    )
    tool_args: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), metadata=doc("Exposed tool name -> args policy")
    )
    sqlite_path: str = field(
        default="", metadata=doc("SQLite file; empty = sentinel-audit.db next to config")
    )
    jsonl_path: str = field(default="", metadata=doc("JSONL file, or `-` for stderr"))
    postgres_url_env: str = field(
        default="SENTINEL_AUDIT_DATABASE_URL", metadata=doc("Environment variable holding the PostgreSQL URL")
    )
    spool_dir: str = field(
        default="", metadata=doc("Spool directory; empty = sentinel-audit-spool next to config")
    )
    queue_size: int = field(default=10000, metadata=doc("Events buffered in memory before spooling"))
    batch_size: int = field(default=200, metadata=doc("Events written per batch"))
    flush_interval_secs: float = field(default=0.2, metadata=doc("Longest time an event waits for its batch"))
    shutdown_deadline_secs: float = field(default=5.0, metadata=doc("Flush deadline at shutdown"))


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: str = field(
        default="",
        metadata=doc(
            "Address of the admin endpoint (/health, /ready, /metrics), e.g. `127.0.0.1:9201`; "
            "empty = off. A port already taken (another gateway) is logged and MCP goes on"
        ),
    )
    token_env: str = field(
        default="",
        metadata=doc(
            "Environment variable holding a bearer token required on every admin route but /health; "
            "empty = no token (keep the listener on loopback then)"
        ),
    )
    required_backends: tuple[str, ...] | None = field(
        default=None, metadata=doc("Backends /ready waits for; absent = every enabled backend")
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = field(
        default=True,
        metadata=doc("Serve Prometheus metrics on the admin endpoint (needs the `metrics` extra)"),
    )


@dataclass(frozen=True, slots=True)
class HttpFrontConfig:
    listen: str = field(
        default="",
        metadata=doc(
            "Address of the Streamable HTTP front, e.g. `127.0.0.1:8080`; empty = off. Keep it on "
            "loopback unless TLS and allowed origins are set"
        ),
    )
    path: str = field(default="/mcp", metadata=doc("The MCP endpoint path"))
    public_url: str = field(
        default="",
        metadata=doc(
            "The gateway's canonical URL as clients reach it (RFC 9728 `resource`, the audience "
            "tokens must carry when auth.audience is empty); empty = derived from listen and path"
        ),
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Origins allowed to call the endpoint (DNS-rebinding protection); a request carrying "
            "any other Origin gets 403. Loopback origins are allowed when listening on loopback"
        ),
    )
    authorization_servers: tuple[str, ...] = field(
        default=(), metadata=doc("Issuer URLs published in /.well-known/oauth-protected-resource")
    )
    scopes_supported: tuple[str, ...] = field(
        default=(), metadata=doc("Scopes published in the protected-resource metadata")
    )
    tls_cert_file: str = field(default="", metadata=doc("PEM certificate chain: serve HTTPS"))
    tls_key_file: str = field(default="", metadata=doc("PEM private key for tls_cert_file"))
    max_connections: int = field(default=256, metadata=doc("Concurrent client connections"))
    max_sessions: int = field(default=1000, metadata=doc("Handshake-era sessions kept at once"))
    session_idle_secs: float = field(
        default=1800.0, metadata=doc("A session unused this long expires (then 404 Session not found)")
    )
    max_header_bytes: int = field(default=16384, metadata=doc("Largest request head"))
    header_timeout_secs: float = field(
        default=10.0, metadata=doc("Time allowed to send a request head (slow clients are cut off)")
    )
    idle_timeout_secs: float = field(default=60.0, metadata=doc("Keep-alive connection idle timeout"))
    sse_keepalive_secs: float = field(default=15.0, metadata=doc("Comment lines on idle SSE streams"))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; `source` is the file it came from ("<embedded>" for the demo)."""

    gateway: GatewayConfig = field(default_factory=GatewayConfig, metadata=doc("Gateway settings"))
    auth: AuthConfig = field(default_factory=AuthConfig, metadata=doc("Client authentication"))
    rbac: RbacConfig = field(default_factory=RbacConfig, metadata=doc("Role-based access control"))
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig, metadata=doc("Rate limits"))
    kill_switch: KillSwitchConfig = field(default_factory=KillSwitchConfig, metadata=doc("Kill switch"))
    audit: AuditConfig = field(default_factory=AuditConfig, metadata=doc("Audit trail"))
    http: HttpFrontConfig = field(default_factory=HttpFrontConfig, metadata=doc("Streamable HTTP front"))
    admin: AdminConfig = field(default_factory=AdminConfig, metadata=doc("Admin endpoint"))
    metrics: MetricsConfig = field(default_factory=MetricsConfig, metadata=doc("Prometheus metrics"))
    backends: tuple[BackendConfig, ...] = field(default=(), metadata=doc("MCP servers behind the gateway"))
    source: str = field(default="<embedded>", metadata=doc("(not a TOML key) the file this came from"))
    base_dir: str = field(default=".", metadata=doc("(not a TOML key) directory relative paths start from"))
