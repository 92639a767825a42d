"""Every call outcome reaches the audit trail through a real gateway, redacted and hash-chained."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess

from tests.conftest import GATEWAY, backend, gateway_env, make_token

POLICY = """
[auth]
mode = "jwt"
[rbac.roles.dev]
permissions = ["tools.call", "resources.read", "prompts.get"]
deny_tools = ["crash"]
[rbac.roles.viewer]
permissions = ["tools.list"]
[rate_limits.tools.add]
requests = 1
"""


def rows(db) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return list(con.execute("SELECT * FROM audit_events ORDER BY rowid"))
    finally:
        con.close()


async def test_outcomes_redaction_and_chain(make_config, open_gateway, tmp_path):
    cfg = make_config([backend("a", timeout_secs=0.5)], extra=POLICY, auth="jwt")
    gw = await open_gateway(cfg, token=make_token("alice", ["dev"]))
    jwt_like = make_token("someone-else", ["x"])
    await gw.request(
        "tools/call", {"name": "echo", "arguments": {"message": "hi", "api_key": "sk-live-123456"}}
    )
    await gw.request("tools/call", {"name": "echo", "arguments": {"message": f"token {jwt_like}"}})
    for params in (
        {"name": "crash", "arguments": {}},  # denied: invisible
        {"name": "add", "arguments": {"a": "x", "b": 1}},  # invalid_args
        {"name": "add", "arguments": {"a": 1, "b": 1}},  # success (uses the only token)
        {"name": "add", "arguments": {"a": 1, "b": 1}},  # rate_limited
        {"name": "slow", "arguments": {"seconds": 5}},  # timeout
    ):
        await gw.request_raw("tools/call", params)
    await gw.request("resources/read", {"uri": "test://a/hello"})
    await gw.request("prompts/get", {"name": "greet", "arguments": {"name": "Ada"}})
    await gw.close()

    db = tmp_path / "sentinel-audit.db"
    calls = [r for r in rows(db) if r["kind"] != "gateway"]
    statuses = [(r["method"], r["tool"], r["status"]) for r in calls]
    assert statuses == [
        ("tools/call", "echo", "success"),
        ("tools/call", "echo", "success"),
        ("tools/call", "crash", "denied"),
        ("tools/call", "add", "invalid_args"),
        ("tools/call", "add", "success"),
        ("tools/call", "add", "rate_limited"),
        ("tools/call", "slow", "timeout"),
        ("resources/read", "test://a/hello", "success"),
        ("prompts/get", "greet", "success"),
    ]
    everything = "\n".join(str(dict(r)) for r in rows(db))
    assert "sk-live-123456" not in everything and jwt_like not in everything
    assert all(r["subject"] == "alice" and r["roles"] == '["dev"]' for r in calls)
    assert calls[0]["backend"] == "a" and calls[0]["request_id"]
    kinds = [r["method"] for r in rows(db) if r["kind"] == "gateway"]
    assert kinds[0] == "startup" and "backend.started" in kinds and kinds[-1] == "shutdown"

    env = gateway_env(tmp_path)
    ok = subprocess.run(
        [*GATEWAY, "audit", "--config", str(cfg), "verify"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ok.returncode == 0 and "OK" in ok.stdout
    query = subprocess.run(
        [*GATEWAY, "audit", "--config", str(cfg), "query", "--status", "rate_limited"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert query.returncode == 0 and query.stdout.count("\n") == 1 and "add" in query.stdout

    con = sqlite3.connect(db)
    con.execute("UPDATE audit_events SET status = 'success' WHERE status = 'denied'")
    con.commit()
    con.close()
    bad = subprocess.run(
        [*GATEWAY, "audit", "--config", str(cfg), "verify"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 1 and "BROKEN" in bad.stdout


async def test_audit_sink_failure_does_not_block_calls(make_config, open_gateway, tmp_path):
    """A sink that cannot be written (a directory where the file should be) spools; calls go on."""
    (tmp_path / "blocked.db").mkdir()
    extra = POLICY + f'\n[audit]\nsqlite_path = "{tmp_path / "blocked.db"}"\n'
    cfg = make_config([backend("a")], extra=extra, auth="jwt")
    gw = await open_gateway(cfg, token=make_token("bob", ["dev"]))
    for i in range(5):
        res = await asyncio.wait_for(
            gw.request("tools/call", {"name": "echo", "arguments": {"message": str(i)}}), 10
        )
        assert res["content"][0]["text"] == str(i)
    await gw.close()
    spooled = list((tmp_path / "sentinel-audit-spool").rglob("*"))
    assert any(p.is_file() and p.stat().st_size > 0 for p in spooled), "events must be spooled, not lost"
