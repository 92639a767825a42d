"""Strict TOML configuration loader: TOML -> the frozen dataclasses of `config_schema`.

Conversion is generic (driven by the dataclasses' type hints); every problem becomes a
`ConfigError` naming the file, the dotted key and the reason. All problems found in one pass are
reported together (`ConfigError.errors`), so `sentinel-gw check` shows everything at once.

The loader never reads secrets: it only checks that the *names* of environment variables are
valid. Whether a secret is actually set is the business of the module that uses it, at startup.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import shlex
import sys
import types
import typing
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from types import MappingProxyType
from typing import Any, Literal, Union, get_args, get_origin

from sentinel_gw.config_files import (
    ConfigError,
    absolute_path,
    config_dir,
    env_file_warnings,
    environment_for,
    find_config_path,
    load_env_file,
    read_toml,
)
from sentinel_gw.config_schema import (
    AuditConfig,
    AuthConfig,
    BackendConfig,
    BreakerConfig,
    Config,
    GatewayConfig,
    KillSwitchConfig,
    LimitConfig,
    RateLimitConfig,
    RbacConfig,
    RestartPolicy,
    RoleConfig,
    TlsConfig,
)

__all__ = [
    "ALGORITHMS",
    "AUDIT_ARGS_POLICIES",
    "AUDIT_SINKS",
    "PERMISSIONS",
    "ConfigError",
    "config_reference_markdown",
    "config_warnings",
    "env_file_warnings",
    "environment_for",
    "find_config_path",
    "load_config",
    "load_env_file",
    "parse_config",
    "resolve_path",
    "summarize",
]

HMAC_ALGORITHMS: tuple[str, ...] = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
ALGORITHMS: tuple[str, ...] = HMAC_ALGORITHMS + ASYMMETRIC_ALGORITHMS
PERMISSIONS: tuple[str, ...] = (
    "tools.list",
    "tools.call",
    "resources.list",
    "resources.read",
    "prompts.list",
    "prompts.get",
    "completion",
    "*",
    "tools.read",
    "tools.execute",
)
AUDIT_SINKS: tuple[str, ...] = ("sqlite", "jsonl", "postgres")
AUDIT_ARGS_POLICIES: tuple[str, ...] = ("redacted", "full", "shape", "none")

_BACKEND_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# mcp__<gateway>__<tool> must fit in 64 characters; leave room for real tool names.
_GATEWAY_NAME = re.compile(r"[A-Za-z0-9_-]{1,48}")
_PREFIX = re.compile(r"[A-Za-z0-9_-]*")
_ROLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: HTAB, SP, VCHAR, obs-text; CR/LF would let a config inject headers or requests.
_HEADER_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

# Set by the loader, never by the file: accepting them would let a config lie about its origin.
_NOT_TOML: frozenset[str] = frozenset({"source", "base_dir"})

# Fields holding filesystem paths; relative values are resolved against the config's directory.
_PATH_FIELDS: Mapping[type, tuple[str, ...]] = {
    BackendConfig: ("cwd",),
    TlsConfig: ("cafile", "certfile", "keyfile"),
    AuthConfig: ("public_key_file", "jwks_file", "revocation_file"),
    KillSwitchConfig: ("file",),
    AuditConfig: ("sqlite_path", "jsonl_path", "spool_dir"),
}

# Numeric bounds per field: (operator, bound) pairs, all must hold.
_Bound = tuple[str, float]
_BOUNDS: Mapping[type, Mapping[str, tuple[_Bound, ...]]] = {
    GatewayConfig: {
        "max_message_bytes": ((">=", 1024),),
        "max_in_flight_per_session": ((">=", 1),),
        "page_size": ((">=", 1),),
        "shutdown_grace_secs": ((">=", 0),),
        "client_request_timeout_secs": ((">", 0),),
    },
    RestartPolicy: {
        "max_restarts": ((">=", 0),),
        "restart_window_secs": ((">", 0),),
        "backoff_initial_secs": ((">", 0),),
        "backoff_max_secs": ((">", 0),),
        "backoff_jitter": ((">=", 0), ("<=", 1)),
    },
    BackendConfig: {
        "timeout_secs": ((">", 0),),
        "startup_timeout_secs": ((">", 0),),
        "max_in_flight": ((">=", 1),),
        "connect_timeout_secs": ((">", 0),),
        # Each retry multiplies the load on a failing backend; more than a few never helps.
        "retries": ((">=", 0), ("<=", 10)),
        "max_timeout_secs": ((">", 0),),
        "health_interval_secs": ((">=", 0),),
    },
    BreakerConfig: {
        "failure_threshold": ((">=", 1),),
        "failure_rate": ((">", 0), ("<=", 1)),
        "window_secs": ((">", 0),),
        "min_calls": ((">=", 1),),
        "cooldown_secs": ((">=", 0),),
    },
    AuthConfig: {
        "leeway_secs": ((">=", 0),),
        "max_token_lifetime_secs": ((">=", 0),),
    },
    LimitConfig: {
        # 0 would refuse every call: that is the kill switch's job, with a reason attached.
        "requests": ((">=", 1),),
        "window_secs": ((">", 0),),
        "burst": ((">=", 0),),
    },
    AuditConfig: {
        "queue_size": ((">=", 1),),
        "batch_size": ((">=", 1),),
        "flush_interval_secs": ((">", 0),),
        "shutdown_deadline_secs": ((">=", 0),),
    },
}

# Keys of the Rust original, so people migrating get told where things went instead of a bare
# "unknown key".
_LEGACY_HINTS: Mapping[tuple[type, str], str] = {
    (Config, "postgres"): "PostgreSQL audit is configured with audit.sinks and audit.postgres_url_env",
    (GatewayConfig, "listen"): "the HTTP front is configured separately; remove this key",
    (GatewayConfig, "health_listen"): "the admin endpoint is configured separately; remove this key",
    (GatewayConfig, "audit_enabled"): "use audit.sinks (an empty list disables auditing)",
    (AuthConfig, "jwt_secret_env"): "renamed to 'secret_env'",
    (AuthConfig, "jwt_issuer"): "renamed to 'issuer'",
    (AuthConfig, "jwt_audience"): "renamed to 'audience'",
    (BackendConfig, "max_restarts"): "moved to [backends.restart] max_restarts",
    (BackendConfig, "restart_on_exit"): "stdio backends are always supervised; see [backends.restart]",
    (BackendConfig, "circuit_breaker_threshold"): "moved to [backends.breaker] failure_threshold",
    (BackendConfig, "circuit_breaker_recovery_secs"): "moved to [backends.breaker] cooldown_secs",
    (RoleConfig, "denied_tools"): "renamed to 'deny_tools' (glob patterns)",
    (RateLimitConfig, "default_rpm"): "use [rate_limits.default] requests = N, window_secs = 60",
    (RateLimitConfig, "per_tool"): "use [rate_limits.tools.<tool>] requests = N",
    (KillSwitchConfig, "disabled_tools"): "renamed to 'tools' (glob patterns)",
    (KillSwitchConfig, "disabled_backends"): "renamed to 'backends' (glob patterns)",
}


class _Errors:
    """Collects problems so one run reports all of them."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigError] = []

    def add(self, key: str, reason: str) -> None:
        self.items.append(ConfigError(self.file, key, reason))

    def raise_if_any(self) -> None:
        if self.items:
            first, *rest = self.items
            raise ConfigError(first.file, first.key, first.reason, others=rest)


_INVALID: Any = object()


# --------------------------------------------------------------------------------------------
# Generic conversion


@cache
def _hints(cls: type) -> dict[str, Any]:
    # The schema uses `from __future__ import annotations`: resolve the strings in its namespace.
    return typing.get_type_hints(cls, globalns=vars(sys.modules[cls.__module__]))


def _toml_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if not (cls is Config and f.name in _NOT_TOML)}


def _key(parent: str, name: str) -> str:
    part = name if _BARE_KEY.fullmatch(name) else json.dumps(name)
    return f"{parent}.{part}" if parent else part


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return "a date/time"


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _strip_optional(tp: Any) -> Any:
    if _is_optional(tp):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _expected(tp: Any) -> str:
    tp = _strip_optional(tp)
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) or origin is Mapping:
        return "a table"
    if origin is tuple:
        return "an array of tables" if dataclasses.is_dataclass(get_args(tp)[0]) else "an array"
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in get_args(tp))
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}[tp]


def _convert(tp: Any, value: object, path: str, errs: _Errors) -> Any:
    tp = _strip_optional(tp)
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(typing.cast(type, tp), value, path, errs)
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, str) and value in allowed:
            return value
        got = json.dumps(value) if isinstance(value, str) else _describe(value)
        errs.add(path, f"expected {_expected(tp)}; got {got}")
        return _INVALID
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if not isinstance(value, list):
            hint = ""
            if isinstance(value, Mapping) and dataclasses.is_dataclass(item_tp):
                hint = f" (write [[{path.rsplit('.', 1)[-1]}]], one per entry)"
            errs.add(path, f"expected {_expected(tp)}, got {_describe(value)}{hint}")
            return _INVALID
        items = [_convert(item_tp, v, f"{path}[{i}]", errs) for i, v in enumerate(value)]
        return _INVALID if any(i is _INVALID for i in items) else tuple(items)
    if origin is Mapping:
        (key_tp, value_tp) = get_args(tp)
        assert key_tp is str
        if not isinstance(value, Mapping):
            errs.add(path, f"expected a table, got {_describe(value)}")
            return _INVALID
        out = {k: _convert(value_tp, v, _key(path, k), errs) for k, v in value.items()}
        return _INVALID if _INVALID in out.values() else MappingProxyType(out)
    return _convert_scalar(tp, value, path, errs)


def _convert_scalar(tp: Any, value: object, path: str, errs: _Errors) -> Any:
    # bool is a subclass of int in Python; TOML keeps them apart and so do we.
    ok = (
        (tp is str and isinstance(value, str))
        or (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
    )
    if tp not in (str, bool, int, float):
        raise TypeError(f"config_schema: unsupported type {tp!r} at {path}")
    if not ok:
        errs.add(path, f"expected {_expected(tp)}, got {_describe(value)}")
        return _INVALID
    if tp is float:
        number = float(typing.cast(float, value))
        if not math.isfinite(number):
            errs.add(path, "expected a finite number, got " + str(value))
            return _INVALID
        return number
    if tp is str and "\x00" in typing.cast(str, value):
        errs.add(path, "must not contain NUL characters")
        return _INVALID
    return value


def _close_matches(word: str, possibilities: Sequence[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """difflib's, imported only when a config has a mistake to suggest a fix for."""
    import difflib

    return difflib.get_close_matches(word, possibilities, n=n, cutoff=cutoff)


def _unknown_key_reason(cls: type, key: str, valid: Sequence[str]) -> str:
    if cls is Config and key in _NOT_TOML:
        return "not a configuration key (set by the loader from the file's location)"
    hint = _LEGACY_HINTS.get((cls, key))
    if hint:
        return f"unknown key ({hint})"
    close = _close_matches(key, valid, n=1, cutoff=0.6)
    if not close:
        close = [v for v in valid if v.lower() == key.lower()]
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return "unknown key (valid keys: " + ", ".join(valid) + ")"


def _convert_dataclass(cls: type, value: object, path: str, errs: _Errors) -> Any:
    if not isinstance(value, Mapping):
        errs.add(path, f"expected a table, got {_describe(value)}")
        return _INVALID
    fields = _toml_fields(cls)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    ok = True
    for name, raw in value.items():
        if name not in fields:
            # Recorded, but the table is still built so its other problems show up in this run too.
            errs.add(_key(path, name), _unknown_key_reason(cls, name, list(fields)))
            continue
        converted = _convert(hints[name], raw, _key(path, name), errs)
        if converted is _INVALID:
            ok = False
        else:
            kwargs[name] = converted
    for name, f in fields.items():
        if (
            name not in value
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            errs.add(_key(path, name), "required key missing")
            ok = False
    if not ok:
        return _INVALID
    instance = cls(**kwargs)
    _check_bounds(instance, path, errs)
    check = _CLASS_CHECKS.get(cls)
    if check is not None:
        check(instance, path, errs)
    return instance


def _bound_text(op: str, bound: float) -> str:
    b = _num(bound)
    return {">": f"greater than {b}", ">=": f"at least {b}", "<": f"less than {b}", "<=": f"at most {b}"}[op]


def _check_bounds(instance: object, path: str, errs: _Errors) -> None:
    for name, bounds in _BOUNDS.get(type(instance), {}).items():
        v = getattr(instance, name)
        for op, bound in bounds:
            holds = {">": v > bound, ">=": v >= bound, "<": v < bound, "<=": v <= bound}[op]
            if not holds:
                errs.add(_key(path, name), f"must be {_bound_text(op, bound)}, got {_num(v)}")
                break


# --------------------------------------------------------------------------------------------
# Cross-field checks (per table; whole-config ones in _check_config)


def _check_gateway(g: GatewayConfig, path: str, errs: _Errors) -> None:
    if not _GATEWAY_NAME.fullmatch(g.name):
        errs.add(
            _key(path, "name"),
            f"invalid name {g.name!r}: use 1-48 characters from [A-Za-z0-9_-] "
            "(clients build tool names `mcp__<name>__<tool>` limited to 64 characters)",
        )


def _check_restart(r: RestartPolicy, path: str, errs: _Errors) -> None:
    if r.backoff_initial_secs > r.backoff_max_secs:
        errs.add(
            _key(path, "backoff_initial_secs"),
            f"must not exceed backoff_max_secs ({_num(r.backoff_initial_secs)} > {_num(r.backoff_max_secs)})",
        )


def _check_env_name(name: str, path: str, errs: _Errors, what: str = "environment variable name") -> None:
    if not _ENV_NAME.fullmatch(name):
        errs.add(path, f"invalid {what} {name!r} (use [A-Za-z_][A-Za-z0-9_]*)")


# Headers the HTTP backend owns: framing (the HTTP client), the MCP session and version, and the
# content negotiation the transport depends on.
RESERVED_HEADERS: frozenset[str] = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "expect",
        "te",
        "mcp-session-id",
        "mcp-protocol-version",
        "accept",
        "content-type",
        "last-event-id",
    }
)
_SECRET_HEADER_HINTS = ("authorization", "cookie", "token", "secret", "api-key", "apikey", "password")
STDIO_ONLY_KEYS: tuple[str, ...] = (
    "command",
    "args",
    "cwd",
    "env",
    "env_from",
    "inherit_env",
    "restart",
)
HTTP_ONLY_KEYS: tuple[str, ...] = (
    "url",
    "headers",
    "headers_from_env",
    "connect_timeout_secs",
    "transport",
    "tls",
    "retries",
    "idempotent_tools",
    "retry_idempotent_hint",
)
_BACKEND_DEFAULTS: Mapping[str, Any] = {
    f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
    for f in dataclasses.fields(BackendConfig)
    if f.name in STDIO_ONLY_KEYS + HTTP_ONLY_KEYS
}


def _is_set(b: BackendConfig, key: str) -> bool:
    # Compared by value: the shipped example writes every key with its default on every backend.
    value = getattr(b, key)
    default = _BACKEND_DEFAULTS[key]
    if isinstance(value, Mapping):
        return dict(value) != dict(default)
    return bool(value != default)


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(b: BackendConfig, path: str, errs: _Errors) -> None:
    key = _key(path, "url")
    if not b.url:
        errs.add(key, 'required for type = "http" (the MCP endpoint, e.g. "https://host/mcp")')
        return
    try:
        parts = urllib.parse.urlsplit(b.url)
        port = parts.port
    except ValueError as exc:
        errs.add(key, f"invalid URL: {exc}")
        return
    if parts.scheme not in ("http", "https"):
        errs.add(key, f"must be an http:// or https:// URL, got scheme {parts.scheme or '(none)'!r}")
        return
    if not parts.hostname:
        errs.add(key, "the URL has no host")
        return
    if parts.username is not None or parts.password is not None:
        errs.add(key, "credentials in the URL are not allowed; send them with headers_from_env")
    if parts.fragment:
        errs.add(key, "a URL fragment is meaningless here; remove the '#...' part")
    if port == 0:
        errs.add(key, "port 0 is not a valid destination")
    if any(c.isspace() or not c.isprintable() for c in b.url) or not b.url.isascii():
        errs.add(key, "must be ASCII without spaces (percent-encode the path)")
    if parts.scheme == "http" and _is_set(b, "tls"):
        errs.add(_key(path, "tls"), "TLS settings need an https:// url")


def _check_header_name(name: str, key: str, errs: _Errors) -> bool:
    if not _HEADER_NAME.fullmatch(name):
        errs.add(key, f"invalid header name {name!r} (letters, digits and !#$%&'*+-.^_`|~ only)")
        return False
    if name.lower() in RESERVED_HEADERS:
        errs.add(key, f"header {name!r} is set by the gateway itself and cannot be configured")
        return False
    return True


def _check_http_backend(b: BackendConfig, path: str, errs: _Errors) -> None:
    _check_url(b, path, errs)
    seen: dict[str, str] = {}
    for name, value in b.headers.items():
        key = _key(_key(path, "headers"), name)
        if _check_header_name(name, key, errs):
            seen[name.lower()] = "headers"
        if _HEADER_BAD_VALUE.search(value):
            errs.add(key, "header values must not contain CR, LF or other control characters")
        elif value != value.strip(" \t"):
            errs.add(key, "header values must not start or end with whitespace")
    for name, source in b.headers_from_env.items():
        key = _key(_key(path, "headers_from_env"), name)
        if _check_header_name(name, key, errs) and name.lower() in seen:
            errs.add(key, f"header {name!r} is also set in headers; set it in one place")
        _check_env_name(source, key, errs, "source variable name")
    for i, tool in enumerate(b.idempotent_tools):
        if not tool:
            errs.add(f"{_key(path, 'idempotent_tools')}[{i}]", "tool names must not be empty")
    if b.tls.keyfile and not b.tls.certfile:
        errs.add(_key(_key(path, "tls"), "keyfile"), "needs tls.certfile (the client certificate)")


def _check_backend(b: BackendConfig, path: str, errs: _Errors) -> None:
    if not _BACKEND_NAME.fullmatch(b.name):
        errs.add(
            _key(path, "name"), f"invalid backend name {b.name!r}: use 1-64 characters from [A-Za-z0-9_-]"
        )
    if b.type == "http":
        _check_http_backend(b, path, errs)
        if b.era == "modern" and b.transport == "sse":
            errs.add(
                _key(path, "era"),
                '"modern" cannot be spoken over transport = "sse" (HTTP+SSE is handshake-era only); '
                'use transport = "auto" or "streamable"',
            )
        for key in STDIO_ONLY_KEYS:
            if _is_set(b, key):
                errs.add(_key(path, key), 'only valid with type = "stdio" (this backend is type = "http")')
    elif b.type == "stdio":
        if not b.command:
            errs.add(_key(path, "command"), 'required for type = "stdio" (the program to run)')
        for key in HTTP_ONLY_KEYS:
            if _is_set(b, key):
                errs.add(_key(path, key), 'only valid with type = "http" (this backend is type = "stdio")')
    for tool, secs in b.tool_timeouts.items():
        key = _key(_key(path, "tool_timeouts"), tool)
        if not tool:
            errs.add(key, "tool names must not be empty")
        if secs <= 0:
            errs.add(key, f"must be greater than 0, got {_num(secs)}")
        elif secs > b.max_timeout_secs:
            errs.add(key, f"must not exceed max_timeout_secs ({_num(secs)} > {_num(b.max_timeout_secs)})")
    if b.timeout_secs > b.max_timeout_secs:
        errs.add(
            _key(path, "max_timeout_secs"),
            f"must be at least timeout_secs ({_num(b.max_timeout_secs)} < {_num(b.timeout_secs)})",
        )
    if not _PREFIX.fullmatch(b.prefix):
        errs.add(_key(path, "prefix"), f"invalid prefix {b.prefix!r}: use characters from [A-Za-z0-9_-]")
    for k in b.env:
        _check_env_name(k, _key(_key(path, "env"), k), errs)
    for k, source in b.env_from.items():
        p = _key(_key(path, "env_from"), k)
        _check_env_name(k, p, errs)
        _check_env_name(source, p, errs, "source variable name")
    for i, name in enumerate(b.inherit_env):
        _check_env_name(name, f"{_key(path, 'inherit_env')}[{i}]", errs)


def _check_auth(a: AuthConfig, path: str, errs: _Errors) -> None:
    key = _key(path, "algorithms")
    if not a.algorithms:
        errs.add(key, "must list at least one algorithm")
    for i, alg in enumerate(a.algorithms):
        if alg.lower() == "none":
            errs.add(f"{key}[{i}]", "'none' is never accepted (it turns signature checking off)")
        elif alg not in ALGORITHMS:
            close = _close_matches(alg, ALGORITHMS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            errs.add(f"{key}[{i}]", f"unknown algorithm {alg!r}{hint}; valid: {' '.join(ALGORITHMS)}")
    hmac = [x for x in a.algorithms if x in HMAC_ALGORITHMS]
    asym = [x for x in a.algorithms if x in ASYMMETRIC_ALGORITHMS]
    if hmac and asym:
        errs.add(
            key,
            "HMAC (HS*) and asymmetric algorithms must not be mixed: a public key could then be used "
            "as an HMAC secret to forge tokens (key confusion)",
        )
    for name in ("secret_env", "token_env"):
        value = getattr(a, name)
        if value:
            _check_env_name(value, _key(path, name), errs)
    if a.mode == "jwt":
        if hmac and not a.secret_env:
            errs.add(
                _key(path, "secret_env"),
                "required for HS* algorithms (names the variable holding the secret)",
            )
        if asym and not (a.public_key_file or a.jwks_file or a.jwks_url):
            errs.add(
                _key(path, "public_key_file"),
                "asymmetric algorithms need a key: set public_key_file, jwks_file or jwks_url",
            )
    if a.jwks_url and not a.jwks_url.startswith(("https://", "http://")):
        errs.add(_key(path, "jwks_url"), "must be an http:// or https:// URL")


def _check_role(r: RoleConfig, path: str, errs: _Errors) -> None:
    for i, perm in enumerate(r.permissions):
        if perm not in PERMISSIONS:
            close = _close_matches(perm, PERMISSIONS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            errs.add(
                f"{_key(path, 'permissions')}[{i}]",
                f"unknown permission {perm!r}{hint}; valid: {' '.join(PERMISSIONS)}",
            )


def _check_rbac(rbac: RbacConfig, path: str, errs: _Errors) -> None:
    roles_path = _key(path, "roles")
    for name in rbac.roles:
        if not _ROLE_NAME.fullmatch(name):
            errs.add(
                _key(roles_path, name), f"invalid role name {name!r}: use characters from [A-Za-z0-9_.-]"
            )
    for name, role in rbac.roles.items():
        for i, parent in enumerate(role.inherits):
            if parent not in rbac.roles:
                errs.add(f"{_key(_key(roles_path, name), 'inherits')}[{i}]", _unknown_role(parent, rbac))
    reported: set[frozenset[str]] = set()
    for name in rbac.roles:
        cycle = _find_cycle(name, rbac)
        if cycle and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            errs.add(
                _key(_key(roles_path, name), "inherits"),
                "inheritance cycle: " + " -> ".join([*cycle, cycle[0]]),
            )


def _find_cycle(start: str, rbac: RbacConfig) -> list[str] | None:
    """The cycle through `start`, if `start` can reach itself by inheritance."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, trail = stack.pop()
        role = rbac.roles.get(node)
        if role is None:
            continue
        for parent in role.inherits:
            if parent == start:
                return trail
            if parent not in seen:
                seen.add(parent)
                stack.append((parent, [*trail, parent]))
    return None


def _unknown_role(name: str, rbac: RbacConfig) -> str:
    defined = list(rbac.roles)
    close = _close_matches(name, defined, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    listing = ", ".join(defined) if defined else "none"
    return f"role {name!r} is not defined in [rbac.roles]{hint}; defined roles: {listing}"


def _check_audit(a: AuditConfig, path: str, errs: _Errors) -> None:
    seen: set[str] = set()
    for i, sink in enumerate(a.sinks):
        p = f"{_key(path, 'sinks')}[{i}]"
        if sink not in AUDIT_SINKS:
            errs.add(p, f"unknown sink {sink!r}; valid: {', '.join(AUDIT_SINKS)}")
        elif sink in seen:
            errs.add(p, f"duplicate sink {sink!r}")
        seen.add(sink)
    for tool, policy in a.tool_args.items():
        if policy not in AUDIT_ARGS_POLICIES:
            errs.add(
                _key(_key(path, "tool_args"), tool),
                f"expected one of {', '.join(json.dumps(p) for p in AUDIT_ARGS_POLICIES)}; "
                f"got {json.dumps(policy)}",
            )
    if a.batch_size > a.queue_size:
        errs.add(_key(path, "batch_size"), f"must not exceed queue_size ({a.batch_size} > {a.queue_size})")
    if "postgres" in a.sinks:
        if not a.postgres_url_env:
            errs.add(_key(path, "postgres_url_env"), "required when the postgres sink is enabled")
        else:
            _check_env_name(a.postgres_url_env, _key(path, "postgres_url_env"), errs)


def _check_config(cfg: Config, errs: _Errors) -> None:
    first_index: dict[str, int] = {}
    for i, b in enumerate(cfg.backends):
        if b.name in first_index:
            errs.add(
                f"backends[{i}].name",
                f"duplicate backend name {b.name!r} (already used by backends[{first_index[b.name]}])",
            )
        else:
            first_index[b.name] = i
    if cfg.rate_limits.algorithm == "sliding_window":
        # An exact sliding window keeps one timestamp per admitted call; bound its memory.
        limits = [
            ("rate_limits.default", cfg.rate_limits.default),
            ("rate_limits.subject", cfg.rate_limits.subject),
        ]
        limits += [(_key("rate_limits.tools", k), v) for k, v in cfg.rate_limits.tools.items()]
        limits += [(_key("rate_limits.roles", k), v) for k, v in cfg.rate_limits.roles.items()]
        for key, lim in limits:
            if lim is not None and lim.requests > 100_000:
                errs.add(
                    key + ".requests",
                    'at most 100000 with algorithm = "sliding_window" (use token_bucket for higher rates)',
                )
    for role in cfg.rate_limits.roles:
        if role not in cfg.rbac.roles:
            errs.add(_key("rate_limits.roles", role), _unknown_role(role, cfg.rbac))
    for i, role in enumerate(cfg.auth.anonymous_roles):
        if role not in cfg.rbac.roles:
            errs.add(f"auth.anonymous_roles[{i}]", _unknown_role(role, cfg.rbac))
    if cfg.admin.listen:
        from sentinel_gw.ops.admin import parse_listen

        try:
            parse_listen(cfg.admin.listen)
        except ValueError as exc:
            errs.add("admin.listen", str(exc))
    if cfg.http.listen:
        from sentinel_gw.ops.admin import parse_listen

        try:
            parse_listen(cfg.http.listen)
        except ValueError as exc:
            errs.add("http.listen", str(exc))
    if not cfg.http.path.startswith("/") or any(c in cfg.http.path for c in "?# "):
        errs.add("http.path", "must be an absolute path without query, fragment or spaces")
    if bool(cfg.http.tls_cert_file) != bool(cfg.http.tls_key_file):
        errs.add("http.tls_key_file", "tls_cert_file and tls_key_file go together")
    for i, origin in enumerate(cfg.http.allowed_origins):
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            errs.add(f"http.allowed_origins[{i}]", f"{origin!r} is not an origin (scheme://host[:port])")
    if cfg.http.public_url and not re.fullmatch(r"https?://[^\s#?]+", cfg.http.public_url):
        errs.add("http.public_url", "must be an http(s) URL without query or fragment")
    for key in ("max_connections", "max_sessions", "max_header_bytes"):
        if getattr(cfg.http, key) < 1:
            errs.add(f"http.{key}", "must be at least 1")
    for key in ("session_idle_secs", "header_timeout_secs", "idle_timeout_secs", "sse_keepalive_secs"):
        if getattr(cfg.http, key) <= 0:
            errs.add(f"http.{key}", "must be greater than 0")
    if cfg.admin.token_env:
        _check_env_name(cfg.admin.token_env, "admin.token_env", errs)
    names = {b.name for b in cfg.backends}
    for i, name in enumerate(cfg.admin.required_backends or ()):
        if name not in names:
            errs.add(f"admin.required_backends[{i}]", f"no backend is named {name!r}")


_CLASS_CHECKS: Mapping[type, Callable[[Any, str, _Errors], None]] = {
    GatewayConfig: _check_gateway,
    RestartPolicy: _check_restart,
    BackendConfig: _check_backend,
    AuthConfig: _check_auth,
    RoleConfig: _check_role,
    RbacConfig: _check_rbac,
    AuditConfig: _check_audit,
}


# --------------------------------------------------------------------------------------------
# Paths


def resolve_path(cfg: Config, value: str, *, environ: Mapping[str, str] | None = None) -> str:
    """`value` as an absolute path (see `absolute_path`), relative to the config file's directory."""
    return absolute_path(value, cfg.base_dir, environ)


def _resolve_paths(obj: Any, cfg: Config, environ: Mapping[str, str] | None) -> Any:
    if isinstance(obj, tuple):
        return tuple(_resolve_paths(x, cfg, environ) for x in obj)
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    changes: dict[str, Any] = {}
    path_fields = _PATH_FIELDS.get(type(obj), ())
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in path_fields:
            # `-` is the conventional name for stderr (audit.jsonl_path), not a file.
            if value != "-":
                changes[f.name] = resolve_path(cfg, value, environ=environ)
        elif dataclasses.is_dataclass(value) or isinstance(value, tuple):
            changes[f.name] = _resolve_paths(value, cfg, environ)
    return dataclasses.replace(obj, **changes)


# --------------------------------------------------------------------------------------------
# Entry points


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str,
    base_dir: str,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate an already-parsed TOML document. `source` names it in errors; relative paths are
    resolved against `base_dir`."""
    errs = _Errors(source)
    cfg = _convert_dataclass(Config, data, "", errs)
    if cfg is _INVALID:
        errs.raise_if_any()
        raise AssertionError("conversion failed without an error")  # pragma: no cover
    _check_config(cfg, errs)
    errs.raise_if_any()
    cfg = dataclasses.replace(cfg, source=source, base_dir=os.path.abspath(base_dir))
    return typing.cast(Config, _resolve_paths(cfg, cfg, environ))


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file. Does not read any secret from `environ` (it is used
    only to expand `~` in paths): loading must work before the secrets are provided."""
    name = os.fspath(path)
    return parse_config(read_toml(name), source=name, base_dir=config_dir(name), environ=environ)


# --------------------------------------------------------------------------------------------
# Human output


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _list(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "(none)"


def _limit(lim: LimitConfig, algorithm: str) -> str:
    text = f"{lim.requests} per {_num(lim.window_secs)}s"
    if algorithm == "token_bucket":
        text += f" (burst {lim.burst or lim.requests})"
    return text


def config_warnings(cfg: Config) -> list[str]:
    """Valid but probably unintended settings, for `sentinel-gw check` and startup logs."""
    out: list[str] = []
    if not cfg.rbac.roles:
        out.append("no roles are defined in [rbac.roles]: every request will be denied")
    if cfg.auth.mode == "none":
        out.append('auth.mode = "none": clients are not authenticated')
    if not any(b.enabled for b in cfg.backends):
        out.append("no enabled backends: the gateway will serve nothing")
    if not cfg.audit.sinks:
        out.append("audit.sinks is empty: nothing is audited")
    for b in cfg.backends:
        if b.type != "http":
            continue
        parts = urllib.parse.urlsplit(b.url)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            out.append(
                f"backend '{b.name}': plain http:// to {parts.hostname}: requests and headers travel "
                "unencrypted (use https:// unless this is a trusted local network)"
            )
        if not b.tls.verify:
            out.append(f"backend '{b.name}': tls.verify = false: the connection can be intercepted")
        for name in b.headers:
            if any(h in name.lower() for h in _SECRET_HEADER_HINTS):
                out.append(
                    f"backend '{b.name}': header {name!r} looks like a credential written in the config; "
                    "use headers_from_env"
                )
    return out


def summarize(cfg: Config) -> str:
    """A readable overview for `sentinel-gw check`. Shows names of environment variables, never
    their values (and not even literal `env` values, which people misuse for secrets)."""
    lines: list[str] = [f"Configuration: {cfg.source}", f"  relative paths from: {cfg.base_dir}"]
    g = cfg.gateway
    lines += [
        "",
        f"Gateway '{g.name}': log {g.log_level} ({g.log_format}), max message {g.max_message_bytes} bytes, "
        f"{g.max_in_flight_per_session} in flight per session, page size {g.page_size}",
        "",
        f"Backends ({len(cfg.backends)}):",
    ]
    for b in cfg.backends:
        state = "enabled" if b.enabled else "disabled"
        lines.append(f"  {b.name}: {b.type}, {state}, prefix {b.prefix + '_' if b.prefix else '(none)'}")
        if b.type == "stdio":
            lines.append(f"    command: {shlex.join([b.command, *b.args])}")
            if b.cwd:
                lines.append(f"    cwd: {b.cwd}")
        else:
            lines.append(f"    url: {b.url} (transport {b.transport})")
            if b.headers:
                lines.append(f"    headers: {_list(list(b.headers))} (values not shown)")
            if b.headers_from_env:
                lines.append(
                    "    headers_from_env: "
                    + ", ".join(f"{k} <- ${v}" for k, v in b.headers_from_env.items())
                )
            if b.tls != TlsConfig():
                t = b.tls
                lines.append(
                    f"    tls: CA {t.cafile or 'system'}, client cert {t.certfile or '(none)'}, "
                    f"verify {'on' if t.verify else 'OFF'}"
                )
            lines.append(
                f"    retries: {b.retries} (safe requests only); "
                f"idempotent tools: {_list(b.idempotent_tools)}"
                + ("; trusting idempotentHint" if b.retry_idempotent_hint else "")
            )
        lines.append(
            f"    timeouts: request {_num(b.timeout_secs)}s (max {_num(b.max_timeout_secs)}s with progress), "
            f"startup {_num(b.startup_timeout_secs)}s"
            + (f", connect {_num(b.connect_timeout_secs)}s" if b.type == "http" else "")
            + f"; max in flight {b.max_in_flight}"
        )
        if b.tool_timeouts:
            lines.append(
                "    tool timeouts: " + ", ".join(f"{k} {_num(v)}s" for k, v in b.tool_timeouts.items())
            )
        br = b.breaker
        health = f"every {_num(b.health_interval_secs)}s" if b.health_interval_secs else "off"
        lines.append(
            f"    breaker: opens after {br.failure_threshold} failures in a row or "
            f"{_num(br.failure_rate * 100)}% of >= {br.min_calls} calls in {_num(br.window_secs)}s; "
            f"cooldown {_num(br.cooldown_secs)}s; health ping {health}"
        )
        if b.type == "stdio":
            r = b.restart
            lines.append(
                f"    restart: up to {r.max_restarts} in {_num(r.restart_window_secs)}s, backoff "
                f"{_num(r.backoff_initial_secs)}s..{_num(r.backoff_max_secs)}s, "
                f"jitter {_num(r.backoff_jitter)}"
            )
        if b.env:
            lines.append(f"    env: {_list(list(b.env))} (values not shown)")
        if b.env_from:
            lines.append("    env_from: " + ", ".join(f"{k} <- ${v}" for k, v in b.env_from.items()))
        if b.inherit_env:
            lines.append(f"    inherit_env: {_list(b.inherit_env)}")
    a = cfg.auth
    lines += ["", f"Auth: mode {a.mode}"]
    if a.mode == "jwt":
        lines.append(f"  algorithms: {_list(a.algorithms)}")
        if any(x in HMAC_ALGORITHMS for x in a.algorithms):
            lines.append(f"  HMAC secret from: ${a.secret_env}")
        for label, value in (
            ("public key", a.public_key_file),
            ("JWKS file", a.jwks_file),
            ("JWKS URL", a.jwks_url),
        ):
            if value:
                lines.append(f"  {label}: {value}")
        lines.append(
            f"  issuer {a.issuer or '(not checked)'}, audience {a.audience or '(not checked)'}, "
            f"leeway {_num(a.leeway_secs)}s, max lifetime "
            f"{_num(a.max_token_lifetime_secs) + 's' if a.max_token_lifetime_secs else 'unlimited'}"
        )
        lines.append(
            f"  roles claim '{a.roles_claim}', tenant claim '{a.tenant_claim}', "
            f"stdio token from ${a.token_env}"
        )
        if a.revocation_file:
            lines.append(f"  revocation list: {a.revocation_file}")
    else:
        lines.append(f"  anonymous subject '{a.anonymous_subject}' with roles {_list(a.anonymous_roles)}")
    lines += ["", f"Roles ({len(cfg.rbac.roles)}):"]
    for name, role in cfg.rbac.roles.items():
        lines.append(f"  {name}: {_list(role.permissions)}")
        if role.inherits:
            lines.append(f"    inherits: {_list(role.inherits)}")
        for kind in ("tools", "backends", "resources", "prompts"):
            allow, deny = getattr(role, f"allow_{kind}"), getattr(role, f"deny_{kind}")
            if allow != ("*",) or deny:
                lines.append(f"    {kind}: allow {_list(allow)}; deny {_list(deny)}")
    rl = cfg.rate_limits
    lines += ["", f"Rate limits ({rl.algorithm}):"]
    lines.append(
        f"  default per (subject, tool): {_limit(rl.default, rl.algorithm) if rl.default else 'unlimited'}"
    )
    lines.append(f"  per subject: {_limit(rl.subject, rl.algorithm) if rl.subject else 'unlimited'}")
    lines += [f"  tool {k}: {_limit(v, rl.algorithm)}" for k, v in rl.tools.items()]
    lines += [f"  role {k}: {_limit(v, rl.algorithm)}" for k, v in rl.roles.items()]
    ks = cfg.kill_switch
    lines += [
        "",
        f"Kill switch: tools {_list(ks.tools)}; backends {_list(ks.backends)}; "
        f"file {ks.file or '~/.local/state/sentinel-gw/killswitch.json (default)'}",
    ]
    au = cfg.audit
    lines += ["", f"Audit: sinks {_list(au.sinks)}; arguments {au.args}"]
    if au.tool_args:
        lines.append("  per tool: " + ", ".join(f"{k}={v}" for k, v in au.tool_args.items()))
    if "sqlite" in au.sinks:
        lines.append(f"  sqlite: {au.sqlite_path or 'sentinel-audit.db next to the config (default)'}")
    if "jsonl" in au.sinks:
        lines.append(f"  jsonl: {'stderr' if au.jsonl_path == '-' else au.jsonl_path or '(not set)'}")
    if "postgres" in au.sinks:
        lines.append(f"  postgres URL from: ${au.postgres_url_env}")
    warnings = config_warnings(cfg)
    if warnings:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in warnings]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Reference documentation


def _type_text(tp: Any, path_field: bool) -> str:
    tp = _strip_optional(tp)
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return "table"
    if origin is Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" for a in get_args(tp))
    if origin is tuple:
        item = get_args(tp)[0]
        return "array of tables" if dataclasses.is_dataclass(item) else f"array of {_type_text(item, False)}"
    if origin is Mapping:
        value = get_args(tp)[1]
        return (
            "table of tables" if dataclasses.is_dataclass(value) else f"table of {_type_text(value, False)}"
        )
    base = {str: "string", int: "integer", float: "number", bool: "boolean"}[tp]
    return base + " (path)" if path_field else base


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "**required**"
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if value is None:
        return "(absent)"
    if dataclasses.is_dataclass(value):
        return ""
    return f"`{_toml_value(value)}`"


def _rows(cls: type, prefix: str) -> Iterator[tuple[str, str, str, str]]:
    hints = _hints(cls)
    for name, f in _toml_fields(cls).items():
        tp = hints[name]
        path = f"{prefix}.{name}" if prefix else name
        doc = str(f.metadata.get("doc", ""))
        bounds = _BOUNDS.get(cls, {}).get(name, ())
        if bounds:
            doc += "; must be " + " and ".join(_bound_text(op, bound) for op, bound in bounds)
        yield (path, _type_text(tp, name in _PATH_FIELDS.get(cls, ())), _default_text(f), doc)
        inner = _strip_optional(tp)
        origin = get_origin(inner)
        if dataclasses.is_dataclass(inner):
            yield from _rows(typing.cast(type, inner), path)
        elif origin is tuple and dataclasses.is_dataclass(get_args(inner)[0]):
            yield from _rows(get_args(inner)[0], f"{path}[]")
        elif origin is Mapping and dataclasses.is_dataclass(get_args(inner)[1]):
            placeholder = "<" + name.removesuffix("s") + ">"
            yield from _rows(get_args(inner)[1], f"{path}.{placeholder}")


def config_reference_markdown() -> str:
    """Markdown tables of every key (one per top-level section), generated from the schema."""
    out: list[str] = []
    for name, f in _toml_fields(Config).items():
        tp = _hints(Config)[name]
        inner = _strip_optional(tp)
        title = f"[[{name}]]" if get_origin(inner) is tuple else f"[{name}]"
        out += [f"### `{title}`", "", str(f.metadata.get("doc", "")) + ".", ""]
        out += ["| Key | Type | Default | Description |", "|---|---|---|---|"]
        rows = _rows(get_args(inner)[0], f"{name}[]") if get_origin(inner) is tuple else _rows(inner, name)
        for path, type_text, default, doc in rows:
            cells = [f"`{path}`", type_text, default, doc.replace("|", "\\|")]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
