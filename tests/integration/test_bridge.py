"""`sentinel-gw bridge`: a stdio MCP server in front of a remote gateway's HTTP front, end to end
(SDK stdio client -> bridge process -> HTTP -> gateway process -> backend process)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from sentinel_gw.stdio_client import StdioClient
from tests.conftest import GATEWAY, gateway_env, make_token
from tests.integration.test_http_front import GUARD, Gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # One session at a time: a bridge that did not DELETE its session would lock the next out.
    g = Gateway(tmp_path_factory.mktemp("bridge-gw"), "max_sessions = 1\n")
    yield g
    assert g.stop() == 0, g.log.read_text()


def bridge_params(gw: Gateway, tmp_path: Path, token: str | None) -> StdioServerParameters:
    return StdioServerParameters(
        command=GATEWAY[0],
        args=[*GATEWAY[1:], "bridge", gw.url],
        env=gateway_env(tmp_path, token),
    )


async def test_sdk_through_the_bridge(gw: Gateway, tmp_path: Path) -> None:
    progress: list[float] = []
    asked: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_sampling(ctx, p: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(p.messages[0].content.text)  # type: ignore[union-attr]
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled"), model="test-model"
        )

    for _ in range(2):  # the second run gets the only session slot: the first one was DELETEd
        params = bridge_params(gw, tmp_path, make_token("alice", ["admin"]))
        async with Client(params, mode="legacy", sampling_callback=on_sampling) as sdk:
            assert sdk.server_info is not None and sdk.server_info.name == "sentinel-gw"
            names = {t.name for t in (await sdk.list_tools()).tools}
            assert {"echo", "slow", "sample"} <= names
            res = await sdk.call_tool("slow", {"seconds": 0.2}, progress_callback=on_progress)
            assert "slept" in res.content[0].text  # type: ignore[union-attr]
            assert progress and progress == sorted(progress)
            res = await sdk.call_tool("sample", {"prompt": "Say hi"})
            assert res.content[0].text == "sampled"  # type: ignore[union-attr]
            assert asked[-1] == "Say hi"
            results = await asyncio.gather(*(sdk.call_tool("echo", {"message": str(i)}) for i in range(20)))
            assert [r.content[0].text for r in results] == [str(i) for i in range(20)]  # type: ignore[union-attr]
            progress.clear()


async def test_bridge_errors_and_prompt_exit(gw: Gateway, tmp_path: Path) -> None:
    # A token the gateway refuses: the client gets a JSON-RPC error, not silence.
    bad = StdioClient([*GATEWAY, "bridge", gw.url], env=gateway_env(tmp_path, "not-a-token"))
    await bad.start()
    reply = await bad.request_raw(
        "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}}
    )
    assert reply["error"]["code"] == -32001 and reply["error"]["data"]["httpStatus"] == 401
    assert await asyncio.wait_for(bad.close(), GUARD) == 0

    ok = StdioClient([*GATEWAY, "bridge", gw.url], env=gateway_env(tmp_path, make_token("bob", ["admin"])))
    await ok.start()
    await ok.initialize()
    assert "echo" in {t["name"] for t in (await ok.request("tools/list"))["tools"]}
    unknown = await ok.request_raw("no/such/method", {})
    assert unknown["error"]["code"] == -32601
    # stdin EOF: the bridge deletes its session and exits at once, with code 0.
    assert await asyncio.wait_for(ok.close(), GUARD) == 0

    # The slot is free again (the session was deleted): only the unknown tool fails.
    async with Client(bridge_params(gw, tmp_path, make_token("carol", ["admin"])), mode="legacy") as sdk:
        with pytest.raises(MCPError) as err:
            await sdk.call_tool("no_such_tool", {})
        assert "Unknown tool" in err.value.error.message


async def test_messages_written_ahead_of_initialize_wait_for_it(gw: Gateway, tmp_path: Path) -> None:
    """A client that writes initialize, initialized and a request in one go (as Claude Code can)
    gets real answers: nothing reaches the gateway without the session."""
    client = StdioClient(
        [*GATEWAY, "bridge", gw.url], env=gateway_env(tmp_path, make_token("carol", ["admin"]))
    )
    await client.start()
    try:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "eager"}}
        pending = asyncio.ensure_future(client.request_raw("initialize", init))
        client.notify("notifications/initialized")
        listed = asyncio.ensure_future(client.request_raw("tools/list", {}))
        assert "result" in await asyncio.wait_for(pending, GUARD)
        reply = await asyncio.wait_for(listed, GUARD)
        assert "echo" in {t["name"] for t in reply["result"]["tools"]}, reply
    finally:
        assert await asyncio.wait_for(client.close(), GUARD) == 0
