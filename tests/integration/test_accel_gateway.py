"""A real gateway with the accelerators forced on and forced off: same answers, same audit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ECHO_SERVER, GATEWAY, backend, gateway_env
from tests.helpers_stdio import RawStdioClient

HAVE_BOTH = all(importlib.util.find_spec(m) is not None for m in ("orjson", "uvloop"))

ARGS = {
    "message": "héllo \u2028 😀",
    "big": 2**70,
    "small": -(2**63) - 1,
    "nested": [[[{"k": 0.1}]]],
}


async def _session(make_config, tmp_path: Path, mode: str) -> tuple[list[dict], str]:
    cfg = make_config(
        [
            backend("rich"),
            {
                "name": "echo",
                "type": "stdio",
                "command": sys.executable,
                "args": [ECHO_SERVER],
                "prefix": "e",
            },
        ]
    )
    env = gateway_env(tmp_path, SENTINEL_GW_ACCEL=mode)
    replies = []
    async with await RawStdioClient.start([*GATEWAY, "serve", "--config", str(cfg)], env=env) as gw:
        await gw.initialize()
        replies.append(await gw.request("tools/list"))
        replies.append(await gw.request("tools/call", {"name": "e_echo", "arguments": ARGS}))
        replies.append(await gw.request("tools/call", {"name": "no_such_tool", "arguments": {}}))
        # Many in flight at once: replies share writes, nothing is lost or mixed up.
        ids = [
            await gw.send_request("tools/call", {"name": "e_echo", "arguments": {"message": str(i)}})
            for i in range(30)
        ]
        for i, rid in enumerate(ids):
            reply = await gw.wait_response(rid)
            assert "result" in reply, reply
            assert reply["result"]["content"][0]["text"] == str(i)
        # Not JSON-RPC, and not even JSON: the same errors on both paths.
        await gw.send(b'{"jsonrpc":"2.0","id":99,"method":"ping","params":[1]}\n')
        await gw.send(b'{"jsonrpc":"2.0","id":\n')
        replies.append(await gw.request("ping"))
        stderr = gw.stderr.decode("utf-8", "replace")
        garbage = list(gw.unsolicited)
    for reply in replies:
        reply.pop("id", None)
    return replies + garbage, stderr


@pytest.mark.parametrize("mode", ["0", "1"])
async def test_gateway_with_and_without_accelerators(make_config, tmp_path: Path, mode: str) -> None:
    if mode == "1" and not HAVE_BOTH:
        pytest.skip("orjson and uvloop not installed")
    replies, stderr = await _session(make_config, tmp_path, mode)
    expected = "json orjson, event loop uvloop" if mode == "1" else "json stdlib, event loop asyncio"
    assert f"accelerators: {expected}" in stderr
    tools = {t["name"] for t in replies[0]["result"]["tools"]}
    assert "e_echo" in tools
    assert replies[1]["result"]["content"][0]["text"] == ARGS["message"]
    assert replies[2]["error"]["code"] == -32602
    assert replies[3] == {"jsonrpc": "2.0", "result": {}}
    # The audit trail of this run verifies (hash chain intact, every call recorded).
    out = subprocess.run(
        [*GATEWAY, "audit", "--config", str(next(tmp_path.glob("sentinel-*.toml"))), "verify"],
        env=gateway_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


async def test_both_paths_give_the_same_answers(make_config, tmp_path: Path) -> None:
    if not HAVE_BOTH:
        pytest.skip("orjson and uvloop not installed")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pure, _ = await _session(make_config, tmp_path / "a", "0")
    fast, _ = await _session(make_config, tmp_path / "b", "1")
    assert json.dumps(pure, sort_keys=True) == json.dumps(fast, sort_keys=True)
