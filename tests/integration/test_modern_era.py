"""MCP 2026-07-28 (stateless, per-request `_meta`) on the stdio front, with the official SDK."""

from __future__ import annotations

import asyncio
import json

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import backend, sdk_backend
from tests.integration.test_sdk_interop import params


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
async def test_sdk_modern_mode_through_the_gateway(make_config, tmp_path, mode):
    cfg = make_config([backend("a"), backend("b", prefix="b")])
    async with Client(params(cfg, tmp_path), mode=mode) as client:
        assert client.protocol_version == "2026-07-28"
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "b_echo"} <= names
        res = await client.call_tool("b_echo", {"message": "modern"})
        assert res.content[0].text == "modern"  # type: ignore[union-attr]
        read = await client.read_resource("test://a/hello")
        assert read.contents[0].text  # type: ignore[union-attr]
        got = await client.get_prompt("greet", {"name": "Lin"})
        assert "Lin" in got.messages[0].content.text  # type: ignore[union-attr]
        with pytest.raises(MCPError) as err:
            await client.read_resource("test://nobody/x")
        assert err.value.error.code == -32602  # resource-not-found is -32602 in 2026-07-28


async def test_listen_receives_list_changes_and_updates(make_config, tmp_path):
    cfg = make_config([backend("a")])
    async with Client(params(cfg, tmp_path), mode="2026-07-28") as client:
        async with client.listen(tools_list_changed=True, resource_subscriptions=["test://a/hello"]) as sub:
            await client.call_tool("add_tool", {})
            await client.call_tool("touch", {"uri": "test://a/hello"})
            kinds = set()

            async def collect() -> None:
                async for event in sub:
                    kinds.add(type(event).__name__)
                    if len(kinds) >= 2:
                        return

            await asyncio.wait_for(collect(), 10)
        assert len(kinds) == 2, kinds
        names = {t.name for t in (await client.list_tools()).tools}
        assert any(n.startswith("extra_") for n in names)


async def test_raw_modern_requests(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a")]), initialize=False)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    found = await gw.request("server/discover", {"_meta": meta})
    assert "2026-07-28" in found["supportedVersions"] and "2025-11-25" in found["supportedVersions"]
    assert found["resultType"] == "complete" and found["cacheScope"] == "private" and found["ttlMs"] == 0
    assert found["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "sentinel-gw"
    tools = await gw.request("tools/list", {"_meta": meta})
    assert tools["resultType"] == "complete" and tools["cacheScope"] == "private"
    call = await gw.request("tools/call", {"name": "echo", "arguments": {"message": "m"}, "_meta": meta})
    assert call["resultType"] == "complete" and "ttlMs" not in call
    bad = await gw.request_raw(
        "tools/list", {"_meta": {**meta, "io.modelcontextprotocol/protocolVersion": "2099"}}
    )
    assert bad["error"]["code"] == -32022 and "2026-07-28" in bad["error"]["data"]["supported"]
    nocaps = await gw.request_raw(
        "tools/list", {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
    )
    assert nocaps["error"]["code"] == -32602
    ping = await gw.request_raw("ping", {"_meta": meta})
    assert ping["error"]["code"] == -32601  # removed in 2026-07-28
    # The same process still serves the handshake era.
    init = await gw.initialize()
    assert init["protocolVersion"] == "2025-11-25"


@pytest.mark.parametrize("era", ["modern", "auto"])
async def test_modern_backend_behind_a_handshake_client(make_config, open_gateway, era):
    """A handshake-era client in front of a 2026-07-28 backend (the official SDK's server)."""
    sdk = sdk_backend(era, prefix="sdk")
    cfg = make_config([backend("a", era="auto"), sdk])
    gw = await open_gateway(cfg)
    names = [t["name"] for t in (await gw.request("tools/list", timeout=30))["tools"]]
    assert "echo" in names and "sdk_echo" in names and "sdk_add" in names
    res = await gw.request("tools/call", {"name": "sdk_add", "arguments": {"a": 2, "b": 3}})
    assert "5" in json.dumps(res)
    res = await gw.request("tools/call", {"name": "echo", "arguments": {"message": "legacy"}})
    assert "legacy" in json.dumps(res)  # era=auto fell back to initialize for the handshake-only server


async def test_input_required_bridged_for_a_handshake_client(make_config, open_gateway):
    """A 2026-07-28 backend asks for input inside its answer; the handshake-era client is asked
    with a real elicitation/create request, and the gateway retries upstream with the answer."""
    asked: list[str] = []

    def answer(method: str, params: dict):
        asked.append(params.get("message", ""))
        return {"action": "accept", "content": {"name": "Ada"}}

    sdk = sdk_backend()
    gw = await open_gateway(make_config([sdk]), capabilities={"elicitation": {}}, on_request=answer)
    res = await gw.request("tools/call", {"name": "greet", "arguments": {}}, timeout=30)
    assert "Hello, Ada!" in json.dumps(res)
    assert asked and asked[0].startswith("[sdk] ")  # the user sees which backend asks

    gw2 = await open_gateway(make_config([sdk]), capabilities={})
    reply = await gw2.request_raw("tools/call", {"name": "greet", "arguments": {}}, timeout=30)
    assert "error" in reply and "elicitation" in reply["error"]["message"]  # refused clearly


async def test_input_required_passes_through_to_a_modern_client(make_config, tmp_path):
    from mcp_types import ElicitResult

    sdk = sdk_backend()

    async def on_elicit(ctx, p) -> ElicitResult:
        return ElicitResult(action="accept", content={"name": "Grace"})

    async with Client(
        params(make_config([sdk]), tmp_path), mode="2026-07-28", elicitation_callback=on_elicit
    ) as c:
        res = await c.call_tool("greet", {})
        assert "Hello, Grace!" in res.content[0].text  # type: ignore[union-attr]
