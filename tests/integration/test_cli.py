"""The `sentinel-gw` commands as a user runs them (real processes)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import jwt
import pytest

from sentinel_gw.stdio_client import RpcError
from tests.conftest import GATEWAY, SECRET, backend, gateway_env, make_token

POLICY = """
[auth]
mode = "jwt"
leeway_secs = 0
[rbac.roles.viewer]
permissions = ["tools.list"]
[rbac.roles.dev]
inherits = ["viewer"]
permissions = ["tools.call"]
deny_tools = ["crash"]
[rate_limits]
[rate_limits.tools.add]
requests = 5
"""


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEWAY, *args], check=False, capture_output=True, text=True, env=env, timeout=60)


def test_token_command_mints_a_verifiable_token(make_config, tmp_path):
    cfg = make_config([backend("a")], extra=POLICY, auth="jwt")
    out = run(
        "token",
        "--config",
        str(cfg),
        "--sub",
        "ci",
        "--role",
        "dev",
        "--ttl",
        "2h",
        env=gateway_env(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"], audience="sentinel-gw")
    assert claims["sub"] == "ci" and claims["roles"] == ["dev"] and claims["exp"] - claims["iat"] == 7200
    missing = run(
        "token",
        "--config",
        str(cfg),
        "--sub",
        "ci",
        "--role",
        "dev",
        env={k: v for k, v in gateway_env(tmp_path).items() if k != "SENTINEL_JWT_SECRET"},
    )
    assert missing.returncode == 2 and "SENTINEL_JWT_SECRET" in missing.stderr


def test_check_prints_summary_and_refuses_missing_secret(make_config, tmp_path):
    cfg = make_config([backend("a")], extra=POLICY, auth="jwt")
    ok = run("check", "--config", str(cfg), env=gateway_env(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "viewer" in ok.stdout and "dev" in ok.stdout and SECRET not in ok.stdout
    env = {k: v for k, v in gateway_env(tmp_path).items() if k != "SENTINEL_JWT_SECRET"}
    bad = run("check", "--config", str(cfg), env=env)
    assert bad.returncode == 2 and "SENTINEL_JWT_SECRET" in bad.stderr


def test_explain_walks_every_check(make_config, tmp_path):
    cfg = make_config([backend("a")], extra=POLICY, auth="jwt")
    env = gateway_env(tmp_path)
    allowed = run("explain", "--config", str(cfg), "--role", "dev", "--tool", "echo", env=env)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "ALLOWED" in allowed.stdout and "kill switch: ALLOW" in allowed.stdout
    denied = run("explain", "--config", str(cfg), "--role", "dev", "--tool", "crash", env=env)
    assert denied.returncode == 1 and "deny_tools" in denied.stdout and "DENIED" in denied.stdout
    viewer = run(
        "explain", "--config", str(cfg), "--token", make_token("v", ["viewer"]), "--tool", "echo", env=env
    )
    assert viewer.returncode == 1 and "subject 'v'" in viewer.stdout
    forged = run("explain", "--config", str(cfg), "--token", "x.y.z", "--tool", "echo", env=env)
    assert forged.returncode == 1 and "authentication: DENY" in forged.stdout


def test_kill_list_revive_roundtrip(make_config, tmp_path):
    cfg = make_config([backend("a")])
    env = gateway_env(tmp_path)
    assert (
        run("kill", "--config", str(cfg), "tool", "echo", "--reason", "incident 7", env=env).returncode == 0
    )
    listed = run("kill", "--config", str(cfg), "--list", env=env)
    assert "echo" in listed.stdout and "incident 7" in listed.stdout
    data = json.loads(Path(tmp_path / "kill.json").read_text())
    assert "echo" in data["tools"]
    assert run("revive", "--config", str(cfg), "tool", "echo", env=env).returncode == 0
    assert run("revive", "--config", str(cfg), "tool", "echo", env=env).returncode == 1
    assert "nothing is killed" in run("kill", "--config", str(cfg), "--list", env=env).stdout


async def test_token_expiring_mid_session(make_config, open_gateway):
    cfg = make_config([backend("a")], extra=POLICY, auth="jwt")
    gw = await open_gateway(cfg, token=make_token("short", ["dev"], ttl=2))
    assert await gw.request("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    await asyncio.sleep(2.5)
    with pytest.raises(RpcError) as err:
        await gw.request("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    assert err.value.code == -32001 and err.value.data == {"reason": "expired"}
    assert await gw.request("ping") == {}  # the session itself stays up


async def test_revoked_jti_refused_mid_session(make_config, open_gateway, tmp_path):
    revoked = tmp_path / "revoked.txt"
    revoked.write_text("# revoked tokens\n")
    extra = POLICY.replace(
        "leeway_secs = 0", f"leeway_secs = 0\nrevocation_file = {json.dumps(str(revoked))}"
    )
    cfg = make_config([backend("a")], extra=extra, auth="jwt")
    gw = await open_gateway(cfg, token=make_token("mallory", ["dev"], jti="tok-123"))
    assert await gw.request("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    revoked.write_text("# revoked tokens\ntok-123\n")
    for _ in range(40):
        await asyncio.sleep(0.1)
        reply = await gw.request_raw("tools/call", {"name": "echo", "arguments": {"message": "x"}})
        if "error" in reply:
            break
    assert reply["error"]["code"] == -32001 and reply["error"]["data"]["reason"] == "revoked"


async def test_auth_none_must_be_explicit(tmp_path):
    cfg = tmp_path / "noauth.toml"
    cfg.write_text('[[backends]]\nname = "a"\ntype = "stdio"\ncommand = "true"\n')
    env = {k: v for k, v in gateway_env(tmp_path).items() if k != "SENTINEL_JWT_SECRET"}
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY,
        "serve",
        "--config",
        str(cfg),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2  # no [auth] section means jwt, and the secret is missing: never admin
    assert b"SENTINEL_JWT_SECRET" in err
