"""`sentinel-gw explain`: every policy decision for (identity, tool), in the order the gateway
applies them, with the rule that made it. Nothing is consumed (rate limits are peeked)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from sentinel_gw.config_schema import Config
from sentinel_gw.policy.auth import AuthError
from sentinel_gw.policy.engine import PolicyEngine
from sentinel_gw.policy.identity import Identity


def _locate(config: Config, tool: str, backend: str | None) -> tuple[str, str] | None:
    """(backend, original name) for an exposed name, from the config's prefixes alone."""
    candidates = [b for b in config.backends if backend is None or b.name == backend]
    for b in candidates:
        if b.prefix and tool.startswith(b.prefix + "_"):
            return b.name, tool[len(b.prefix) + 1 :]
    plain = [b for b in candidates if not b.prefix]
    if plain:
        return plain[0].name, tool
    return None


def explain(
    config: Config,
    environ: Mapping[str, str],
    *,
    roles: Sequence[str] | None,
    token: str | None,
    tool: str,
    backend: str | None,
    arguments: Any,
) -> tuple[list[str], bool]:
    lines: list[str] = []
    engine = PolicyEngine(config, environ=environ)
    if token is not None:
        try:
            identity = engine.authenticate(token)
        except AuthError as exc:
            return [f"1. authentication: DENY ({exc})"], False
        lines.append(f"1. authentication: ALLOW (subject {identity.subject!r}, roles {list(identity.roles)})")
    else:
        identity = Identity(subject="explain", roles=tuple(roles or ()))
        lines.append(f"1. authentication: skipped (explaining roles {list(identity.roles)})")
    where = _locate(config, tool, backend)
    if where is None:
        lines.append(f"2. routing: no backend would expose {tool!r} (check prefixes or pass --backend)")
        return lines, False
    backend_name, original = where
    lines.append(f"2. routing: {tool!r} -> backend {backend_name!r}, tool {original!r}")
    allowed = True
    reason = engine.killswitch.tool_killed(tool, backend_name, original) or engine.backend_killed(
        backend_name
    )
    lines.append(f"3. kill switch: {'DENY (' + reason + ')' if reason else 'ALLOW'}")
    allowed &= reason is None
    view = engine.rbac.view(identity.roles)
    for check, decision in view.explain_tool(tool, backend_name, original):
        verdict = "ALLOW" if decision.allowed else "DENY"
        lines.append(f"4. rbac {check}: {verdict} ({decision.rule})")
        allowed &= decision.allowed
    limits = engine.limiter.explain(identity.subject, identity.roles, tool, time.monotonic())
    lines += [f"5. rate limit: {line}" for line in limits] or ["5. rate limit: none applies"]
    if not isinstance(arguments, dict):
        lines.append("6. arguments: DENY (arguments must be a JSON object)")
        allowed = False
    else:
        lines.append(
            "6. arguments: validated against the tool's inputSchema at call time "
            "(the schema comes from the running backend)"
        )
    lines.append(f"=> {'ALLOWED' if allowed else 'DENIED'}")
    return lines, allowed
