"""Resilience and operations through a real gateway process: HTTP backends behind the stdio front,
unhealthy stdio children restarted, circuit breaking, and hot reload racing live calls."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sentinel_gw.stdio_client import RpcError
from tests.conftest import ROOT, backend, render_config
from tests.integration.test_gateway_stdio import count, pid_alive, texts, wait_until

HTTP_SERVER = str(ROOT / "tests" / "servers" / "http_server.py")


@pytest.fixture
async def http_mcp() -> AsyncIterator[object]:
    """Start tests/servers/http_server.py as a real process; yields a function returning its URL."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(*flags: str) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, HTTP_SERVER, "--port", "0", *flags, stdout=asyncio.subprocess.PIPE, env=env
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("PORT "), line
        return f"http://127.0.0.1:{int(line.split()[1])}/mcp"

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def http_backend(name: str, url: str, **keys: object) -> dict[str, object]:
    return {"name": name, "type": "http", "url": url, **keys}


async def test_http_and_stdio_backends_side_by_side(make_config, open_gateway, http_mcp):
    url = await http_mcp()
    cfg = make_config([backend("local"), http_backend("remote", url, prefix="remote")])
    gw = await open_gateway(cfg)
    names = [t["name"] for t in (await gw.request("tools/list", timeout=20))["tools"]]
    assert "echo" in names and "remote_echo" in names
    res = await gw.request("tools/call", {"name": "remote_echo", "arguments": {"message": "over http"}})
    assert "over http" in texts(res)
    res = await gw.request(
        "tools/call", {"name": "remote_slow", "arguments": {"seconds": 0.3}, "_meta": {"progressToken": 5}}
    )
    progress = [n["params"] for n in gw.notifications if n["method"] == "notifications/progress"]
    assert progress and all(p["progressToken"] == 5 for p in progress)


async def test_http_backend_down_then_up(make_config, open_gateway, http_mcp, tmp_path):
    """A 5xx burst opens the breaker (calls fail fast with -32007); recovery closes it."""
    url = await http_mcp()
    breaker = {"failure_threshold": 2, "cooldown_secs": 0.5, "min_calls": 100}
    cfg = make_config([http_backend("remote", url, retries=0, breaker=breaker, health_interval_secs=0)])
    gw = await open_gateway(cfg)
    await gw.request("tools/call", {"name": "fail_next", "arguments": {"statuses": [503] * 6}}, timeout=20)
    codes = []
    for _ in range(30):
        reply = await gw.request_raw(
            "tools/call", {"name": "echo", "arguments": {"message": "x"}}, timeout=20
        )
        codes.append(reply["error"]["code"] if "error" in reply else 0)
        if codes[-1] == 0 and -32007 in codes:
            break
        await asyncio.sleep(0.2)
    assert -32006 in codes or -32603 in codes or codes[0] != 0, codes  # the 503s surfaced as errors
    assert -32007 in codes, codes  # then the circuit opened: calls failed fast
    assert codes[-1] == 0, codes  # and closed again once the server recovered


async def test_unhealthy_stdio_child_is_restarted(make_config, open_gateway):
    cfg = make_config(
        [
            backend(
                "a",
                health_interval_secs=0.2,
                timeout_secs=0.3,
                restart={"backoff_initial_secs": 0.05, "backoff_max_secs": 0.1},
            )
        ]
    )
    gw = await open_gateway(cfg)
    pid = int(texts(await gw.request("tools/call", {"name": "pid", "arguments": {}})))
    os.kill(pid, signal.SIGSTOP)  # alive but silent: only health checks can notice
    try:
        assert await wait_until(lambda: not pid_alive(pid), 20), "a frozen child must be killed"
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    new_pid = int(texts(await gw.request("tools/call", {"name": "pid", "arguments": {}}, timeout=20)))
    assert new_pid != pid


def write(path: Path, backends: list[dict[str, object]], extra: str = "", auth: str = "none") -> None:
    text = render_config(backends, extra, auth)
    text += f"\n[kill_switch]\nfile = {json.dumps(str(path.parent / 'kill.json'))}\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # editors and config managers replace files atomically too


async def test_hot_reload_adds_removes_and_changes_without_dropping_calls(open_gateway, tmp_path):
    path = tmp_path / "sentinel.toml"
    write(path, [backend("a"), backend("b", prefix="b")])
    gw = await open_gateway(path)
    assert "b_echo" in [t["name"] for t in (await gw.request("tools/list"))["tools"]]
    pid_b = int(texts(await gw.request("tools/call", {"name": "b_pid", "arguments": {}})))
    in_flight = asyncio.ensure_future(
        gw.request("tools/call", {"name": "b_slow", "arguments": {"seconds": 1.5}}, timeout=20)
    )
    await asyncio.sleep(0.2)
    before = count(gw, "notifications/tools/list_changed")
    # b removed, c added, a changed (a new prefix): all while b's call runs.
    write(path, [backend("a", prefix="aa"), backend("c", prefix="c")])
    os.kill(gw.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    result = await in_flight
    assert result.get("content"), "the call in flight on a removed backend still completed"
    assert await wait_until(lambda: count(gw, "notifications/tools/list_changed") > before, 10)

    async def names() -> list[str]:
        return [t["name"] for t in (await gw.request("tools/list"))["tools"]]

    assert await wait_until_async(lambda n: "c_echo" in n and "aa_echo" in n, names)
    listed = await names()
    assert "b_echo" not in listed and "echo" not in listed
    assert await wait_until(lambda: not pid_alive(pid_b), 10), "the removed backend was stopped"
    res = await gw.request("tools/call", {"name": "c_echo", "arguments": {"message": "new"}})
    assert "new" in texts(res)


async def wait_until_async(predicate, fetch, timeout: float = 15.0) -> bool:
    for _ in range(int(timeout / 0.1)):
        if predicate(await fetch()):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_invalid_reload_changes_nothing(open_gateway, tmp_path):
    path = tmp_path / "sentinel.toml"
    write(path, [backend("a")])
    gw = await open_gateway(path)
    await gw.request("tools/list")
    path.write_text(path.read_text() + "\n[gateway]\nnot_a_key = 1\n")  # the file watcher sees it
    await asyncio.sleep(2.5)
    res = await gw.request("tools/call", {"name": "echo", "arguments": {"message": "still here"}})
    assert "still here" in texts(res)
    await gw.close()
    import sqlite3

    con = sqlite3.connect(tmp_path / "sentinel-audit.db")
    rows = list(con.execute("SELECT method, detail FROM audit_events WHERE method = 'config.reload'"))
    con.close()
    assert rows and json.loads(rows[-1][1])["result"] == "failed"
    assert "not_a_key" in json.loads(rows[-1][1])["error"]


async def test_reload_policy_and_limits_survive(open_gateway, tmp_path):
    def policy(deny: str) -> str:
        return f"""
[auth]
mode = "none"
anonymous_roles = ["admin"]
[rbac.roles.admin]
permissions = ["*"]
deny_tools = [{deny}]
[rate_limits.tools.echo]
requests = 2
window_secs = 60
"""

    path = tmp_path / "sentinel.toml"
    write(path, [backend("a")], policy(""), auth="explicit")
    gw = await open_gateway(path)
    for _ in range(2):
        await gw.request("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    # Same echo limit, a policy change elsewhere (deny add): the echo counter must survive.
    write(path, [backend("a")], policy('"add"'), auth="explicit")
    os.kill(gw.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    for _ in range(50):
        await asyncio.sleep(0.1)
        reply = await gw.request_raw("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}})
        if "error" in reply:
            break
    assert reply["error"]["code"] == -32602  # add is now hidden
    with pytest.raises(RpcError) as err:
        await gw.request("tools/call", {"name": "echo", "arguments": {"message": "x"}})
    assert err.value.code == -32004  # the counter was not reset by the reload
