"""MCP facts the gateway decides with: versions, capabilities, names, cursors. Sans-I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sentinel_gw import __version__

# Handshake-era revisions, newest first.
HANDSHAKE_VERSIONS: tuple[str, ...] = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[0]
# Stateless revisions: every request carries its version and client capabilities in `_meta`.
MODERN_VERSIONS: tuple[str, ...] = ("2026-07-28",)
SUPPORTED_VERSIONS: tuple[str, ...] = MODERN_VERSIONS + HANDSHAKE_VERSIONS

META_PREFIX = "io.modelcontextprotocol/"
PROTOCOL_VERSION_KEY = META_PREFIX + "protocolVersion"
CLIENT_CAPABILITIES_KEY = META_PREFIX + "clientCapabilities"
CLIENT_INFO_KEY = META_PREFIX + "clientInfo"
SERVER_INFO_KEY = META_PREFIX + "serverInfo"
SUBSCRIPTION_ID_KEY = META_PREFIX + "subscriptionId"

# 2026-07-28 error codes.
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022

# Handshake-era methods a 2026-07-28 request may not use.
REMOVED_IN_MODERN = frozenset(
    {"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)
# Results clients may cache (they get ttlMs and cacheScope).
CACHEABLE = frozenset(
    {
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    }
)
BATCH_VERSION = "2025-03-26"  # the only revision in which JSON-RPC batches are allowed

LOG_LEVELS: tuple[str, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)
LOG_LEVEL_RANK: dict[str, int] = {name: i for i, name in enumerate(LOG_LEVELS)}

LIST_METHODS: dict[str, str] = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}
LIST_CHANGED: dict[str, str] = {
    "tools": "notifications/tools/list_changed",
    "prompts": "notifications/prompts/list_changed",
    "resources": "notifications/resources/list_changed",
}
# Server-to-client requests and the client capability each needs.
CLIENT_REQUEST_CAPABILITY: dict[str, str] = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
# What the gateway can route from a backend to its client, so what it may declare upstream.
ROUTABLE_CLIENT_CAPABILITIES: tuple[str, ...] = ("roots", "sampling", "elicitation")


# 2026-07-28 requests whose Mcp-Name header repeats a param.
NAME_PARAMS: dict[str, str] = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")
_B64_OPEN, _B64_CLOSE = "=?base64?", "?="


def encode_header_value(value: str) -> str | None:
    """A value as a 2026-07-28 header carries it: verbatim when it survives an HTTP field, else
    `=?base64?<UTF-8>?=` (also when it merely looks like that wrapping, so a literal is never
    decoded by the server). None when it cannot be encoded (lone surrogates)."""
    wrapped = value.startswith(_B64_OPEN) and value.endswith(_B64_CLOSE)
    if _HEADER_SAFE.fullmatch(value) and value == value.strip() and not wrapped:
        return value
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return _B64_OPEN + base64.b64encode(raw).decode("ascii") + _B64_CLOSE


def decode_header_value(raw: str | None) -> str | None:
    """The value a 2026-07-28 header stands for; None when absent or badly wrapped."""
    if raw is not None and raw.startswith(_B64_OPEN) and raw.endswith(_B64_CLOSE):
        try:
            return base64.b64decode(raw[len(_B64_OPEN) : -len(_B64_CLOSE)], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
    return raw


def modern_meta(version: str, caps: Mapping[str, Any]) -> dict[str, Any]:
    """The `_meta` keys the gateway puts on each 2026-07-28 request it sends to a backend."""
    return {
        PROTOCOL_VERSION_KEY: version,
        CLIENT_CAPABILITIES_KEY: caps,
        CLIENT_INFO_KEY: {"name": "sentinel-gw", "version": __version__},
    }


def with_modern_meta(
    params: Mapping[str, Any] | None, version: str, caps: Mapping[str, Any]
) -> dict[str, Any]:
    """`params` for a 2026-07-28 backend: our version, identity and the given capabilities in
    `_meta`, the caller's other `_meta` keys (progressToken) kept."""
    out = dict(params or {})
    meta = out.get("_meta")
    out["_meta"] = {**(meta if isinstance(meta, dict) else {}), **modern_meta(version, caps)}
    return out


def parse_discover(result: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(capabilities, serverInfo, instructions) of a server/discover result, each well-typed."""
    caps = result.get("capabilities")
    meta = result.get("_meta")
    info = meta.get(SERVER_INFO_KEY) if isinstance(meta, dict) else None
    instructions = result.get("instructions")
    return (
        caps if isinstance(caps, dict) else {},
        info if isinstance(info, dict) else {},
        instructions if isinstance(instructions, str) else "",
    )


def modern_version(params: Mapping[str, Any]) -> str | None:
    """The 2026-07-28-style version a request declares in `_meta`, or None (handshake era)."""
    meta = params.get("_meta")
    if isinstance(meta, dict):
        version = meta.get(PROTOCOL_VERSION_KEY)
        if version is not None:
            return version if isinstance(version, str) else ""
    return None


def upstream_params(params: dict[str, Any]) -> dict[str, Any]:
    """A modern request's params without the client-to-gateway `_meta` keys: those describe our
    hop, not the backend's (progressToken and any other key stay)."""
    meta = params.get("_meta")
    if not isinstance(meta, dict) or not any(k.startswith(META_PREFIX) for k in meta):
        return params
    kept = {k: v for k, v in meta.items() if not k.startswith(META_PREFIX)}
    out = {k: v for k, v in params.items() if k != "_meta"}
    if kept:
        out["_meta"] = kept
    return out


def modern_result(method: str, result: dict[str, Any], server_info: Mapping[str, Any]) -> dict[str, Any]:
    """A result as 2026-07-28 requires: resultType, cache hints on cacheable results, serverInfo.

    Every list the gateway serves is filtered by the caller's roles, so cacheScope is always
    "private"; backends behind the gateway give no TTL, so ttlMs is 0 (immediately stale).
    """
    out = dict(result)
    out.setdefault("resultType", "complete")
    if method in CACHEABLE and out["resultType"] == "complete":  # input_required is never cached
        out["ttlMs"] = 0
        out["cacheScope"] = "private"
    meta = out.get("_meta")
    out["_meta"] = {**(meta if isinstance(meta, dict) else {}), SERVER_INFO_KEY: dict(server_info)}
    return out


def negotiate_version(requested: object) -> str:
    """Answer the client's version when we speak it, else our latest (the client then decides)."""
    if isinstance(requested, str) and requested in HANDSHAKE_VERSIONS:
        return requested
    return LATEST_HANDSHAKE


def upstream_capabilities(client_caps: Mapping[str, Any] | None) -> dict[str, Any]:
    """Client capabilities to declare to backends: only what the gateway can route back."""
    caps: dict[str, Any] = {}
    if not client_caps:
        return caps
    for key in ROUTABLE_CLIENT_CAPABILITIES:
        value = client_caps.get(key)
        if isinstance(value, dict):
            caps[key] = dict(value)
    return caps


_NAME_OK = re.compile(r"[A-Za-z0-9_-]+")
_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")
CLAUDE_NAME_BUDGET = 64


def name_budget(server_name: str) -> int:
    """Longest exposed name that keeps `mcp__<server>__<tool>` within Claude Code's 64 characters."""
    return max(16, CLAUDE_NAME_BUDGET - len("mcp__") - len(server_name) - len("__"))


def short_hash(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def exposed_name(original: str, prefix: str, budget: int) -> str:
    """A client-safe name: `[A-Za-z0-9_-]`, prefixed, shortened deterministically to `budget`.

    Anything rewritten gets a short hash of the original so two originals that sanitise or
    truncate to the same text still differ.
    """
    base = f"{prefix}_{original}" if prefix else original
    clean = _NAME_BAD.sub("_", base) or "_"
    if clean == base and len(clean) <= budget:
        return clean
    suffix = "_" + short_hash(base)
    return clean[: budget - len(suffix)] + suffix


def is_valid_exposed_name(name: str) -> bool:
    return _NAME_OK.fullmatch(name) is not None


def merge_instructions(header: str, parts: Iterable[tuple[str, str]], limit: int = 2048) -> str:
    """Backend instructions under their names, capped (Claude Code truncates at 2 KB)."""
    chunks = [header.strip()] if header.strip() else []
    for name, raw in parts:
        text = raw.strip()
        if text:
            chunks.append(f"## {name}\n{text}")
    out = "\n\n".join(chunks)
    if len(out) > limit:
        out = out[: limit - 1] + "…"
    return out


class CursorCodec:
    """Opaque, tamper-evident pagination cursors: base64url(JSON payload) + '.' + HMAC tag.

    The key is per process, so a cursor from another gateway (or an earlier run) is simply
    invalid, which MCP answers with -32602 and clients handle by starting over.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    def encode(self, payload: Mapping[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=")
        tag = hmac.new(self._key, body, hashlib.sha256).digest()[:12]
        return body.decode() + "." + base64.urlsafe_b64encode(tag).rstrip(b"=").decode()

    def decode(self, cursor: object) -> dict[str, Any] | None:
        if not isinstance(cursor, str) or len(cursor) > 512 or "." not in cursor:
            return None
        body, _, tag = cursor.partition(".")
        try:
            want = hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:12]
            got = base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4))
            if not hmac.compare_digest(want, got):
                return None
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, TypeError):
            return None
        return payload if isinstance(payload, dict) else None
