"""Shared fixtures: config files for real gateway processes in front of real test servers."""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from sentinel_gw.policy.auth import mint_token
from sentinel_gw.stdio_client import StdioClient

ROOT = Path(__file__).resolve().parent.parent
TEST_SERVER = str(ROOT / "tests" / "servers" / "mcp_server.py")
SDK_SERVER = str(ROOT / "tests" / "servers" / "sdk_server.py")
ECHO_SERVER = str(ROOT / "tests" / "servers" / "echo_server.py")
SECRET = "test-secret-" + "x" * 40
GATEWAY = [sys.executable, "-m", "sentinel_gw"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def backend(name: str, *flags: str, **keys: Any) -> dict[str, Any]:
    """A [[backends]] entry running tests/servers/mcp_server.py with the given flags."""
    entry: dict[str, Any] = {
        "name": name,
        "type": "stdio",
        "command": sys.executable,
        "args": [TEST_SERVER, "--name", name, *flags],
        "inherit_env": ["PYTHONPATH"],
    }
    entry.update(keys)
    return entry


def sdk_backend(era: str = "modern", **keys: Any) -> dict[str, Any]:
    """A [[backends]] entry running tests/servers/sdk_server.py (the official SDK's server)."""
    entry: dict[str, Any] = {
        "name": "sdk",
        "type": "stdio",
        "command": sys.executable,
        "args": [SDK_SERVER],
        "era": era,
        "inherit_env": ["PYTHONPATH"],
    }
    entry.update(keys)
    return entry


def render_config(backends: Sequence[dict[str, Any]], extra: str = "", auth: str = "none") -> str:
    lines = []
    if auth == "none":
        lines += [
            "[auth]",
            'mode = "none"',
            'anonymous_subject = "tester"',
            'anonymous_roles = ["admin"]',
            "",
            "[rbac.roles.admin]",
            'permissions = ["*"]',
            "",
        ]
    lines.append(extra)
    for b in backends:
        lines.append("[[backends]]")
        for key, value in b.items():
            if key == "restart":
                continue
            lines.append(f"{key} = {toml_value(value)}")
        if "restart" in b:
            lines.append("[backends.restart]")
            lines += [f"{k} = {toml_value(v)}" for k, v in b["restart"].items()]
        lines.append("")
    return "\n".join(lines)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    def make(backends: Sequence[dict[str, Any]], extra: str = "", auth: str = "none") -> Path:
        path = tmp_path / f"sentinel-{secrets.token_hex(3)}.toml"
        text = render_config(backends, extra, auth)
        if "[kill_switch]" not in extra:
            text += f"\n[kill_switch]\nfile = {json.dumps(str(tmp_path / 'kill.json'))}\n"
        path.write_text(text)
        return path

    return make


def gateway_env(tmp_path: Path, token: str | None = None, **extra: str) -> dict[str, str]:
    # SENTINEL_GW_ACCEL passes through so the suite can run on the pure path (tox -e pure).
    passed = ("PATH", "HOME", "LANG", "PYTHONPATH", "SENTINEL_GW_ACCEL")
    env = {k: v for k, v in os.environ.items() if k in passed}
    env["SENTINEL_JWT_SECRET"] = SECRET
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    if token is not None:
        env["SENTINEL_TOKEN"] = token
    env.update(extra)
    return env


def make_token(
    subject: str = "alice", roles: Sequence[str] = ("admin",), ttl: float = 3600, **kw: Any
) -> str:
    return mint_token(
        SECRET,
        subject=subject,
        roles=list(roles),
        ttl_secs=ttl,
        issuer="sentinel-gw",
        audience="sentinel-gw",
        **kw,
    )


@pytest.fixture
async def open_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start `sentinel-gw serve` as a real child process; closed (and checked) at teardown."""
    clients: list[StdioClient] = []

    async def start(
        config: Path,
        *,
        token: str | None = None,
        initialize: bool = True,
        capabilities: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        on_request: Any = None,
    ) -> StdioClient:
        client = StdioClient(
            [*GATEWAY, "serve", "--config", str(config)],
            env=env or gateway_env(tmp_path, token),
            on_request=on_request,
            stderr=None,
        )
        await client.start()
        clients.append(client)
        if initialize:
            await client.initialize(capabilities=capabilities)
        return client

    yield start
    for client in clients:
        await client.close()
