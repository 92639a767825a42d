"""A handshake-era backend's questions (elicitation, sampling, roots) reaching a 2026-07-28 client
through `input_required` with a sealed `requestState`, and a 2026-07-28 backend's own
`requestState` bound to its caller. Real gateway processes, real backends, the official SDK."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from sentinel_gw.httpwire import HttpClient
from tests.conftest import backend, sdk_backend
from tests.integration.test_http_front import ALICE, BOB, GUARD, Gateway, Mcp, Reply
from tests.integration.test_sdk_interop import params

CAPS = {"elicitation": {}, "sampling": {}, "roots": {}}


def meta(caps: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": CAPS if caps is None else caps,
    }


async def test_sdk_modern_client_answers_a_legacy_backend(make_config, tmp_path):
    """The official SDK in 2026-07-28 mode calls tools of a handshake-era backend that asks the
    client mid-call; each question arrives as input_required and the SDK's retry answers it."""
    asked: list[str] = []

    async def on_elicit(ctx, p) -> types.ElicitResult:
        asked.append(p.message)
        return types.ElicitResult(action="accept", content={"name": "Ada", "age": 36})

    async def on_sampling(ctx, p: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled!"), model="m"
        )

    async def on_roots(ctx) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///project", name="project")])

    cfg = make_config([backend("a")])
    async with Client(
        params(cfg, tmp_path),
        mode="2026-07-28",
        elicitation_callback=on_elicit,
        sampling_callback=on_sampling,
        list_roots_callback=on_roots,
    ) as client:
        res = await client.call_tool("elicit", {})
        assert res.content[0].text == 'accept {"age": 36, "name": "Ada"}'  # type: ignore[union-attr]
        assert asked == ["[a] Who are you?"]  # the user sees which backend asks
        res = await client.call_tool("sample", {"prompt": "hi"})
        assert res.content[0].text == "sampled!"  # type: ignore[union-attr]
        res = await client.call_tool("roots", {})
        assert res.content[0].text == "file:///project"  # type: ignore[union-attr]
        # Calls that ask nothing are not affected.
        res = await client.call_tool("echo", {"message": "plain"})
        assert res.content[0].text == "plain"  # type: ignore[union-attr]


async def test_raw_rounds_and_refusals(make_config, open_gateway):
    """The wire: questions under gateway keys, a sealed state, answers fed to the backend;
    a state works once, for the same call only; a missing answer is asked again."""
    gw = await open_gateway(make_config([backend("a")]), initialize=False)
    call = {"name": "elicit", "arguments": {}, "_meta": meta()}
    first = await gw.request("tools/call", call, timeout=GUARD)
    assert first["resultType"] == "input_required" and "ttlMs" not in first
    (key, question), *_ = first["inputRequests"].items()
    assert question["method"] == "elicitation/create"
    assert question["params"]["message"] == "[a] Who are you?"
    state = first["requestState"]
    assert state.startswith("sgw1.")

    # Another call (other arguments) cannot continue it.
    other = await gw.request_raw(
        "tools/call", {**call, "arguments": {"x": 1}, "requestState": state, "inputResponses": {}}
    )
    assert other["error"]["code"] == -32602 and "requestState" in other["error"]["message"]
    # A tampered state is refused the same way.
    forged = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
    bad = await gw.request_raw("tools/call", {**call, "requestState": forged, "inputResponses": {}})
    assert bad["error"]["code"] == -32602

    # A retry without the answer gets the same question again, with a new state.
    again = await gw.request("tools/call", {**call, "requestState": state, "inputResponses": {}})
    assert again["resultType"] == "input_required" and key in again["inputRequests"]
    assert again["requestState"] != state
    # The first state is spent.
    replay = await gw.request_raw("tools/call", {**call, "requestState": state, "inputResponses": {}})
    assert replay["error"]["code"] == -32602

    answer = {key: {"action": "accept", "content": {"name": "Lin"}}}
    done = await gw.request(
        "tools/call", {**call, "requestState": again["requestState"], "inputResponses": answer}
    )
    assert done["resultType"] == "complete"
    assert done["content"][0]["text"] == 'accept {"name": "Lin"}'
    # The call is over: its last state is worth nothing now.
    over = await gw.request_raw(
        "tools/call", {**call, "requestState": again["requestState"], "inputResponses": answer}
    )
    assert over["error"]["code"] == -32602

    # A state the gateway never issued, for a handshake-era backend.
    junk = await gw.request_raw("tools/call", {**call, "requestState": "xyz", "inputResponses": {}})
    assert junk["error"]["code"] == -32602


async def test_missing_capability_is_32021(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a")]), initialize=False)
    reply = await gw.request_raw(
        "tools/call", {"name": "elicit", "arguments": {}, "_meta": meta({"sampling": {}})}, timeout=GUARD
    )
    assert reply["error"]["code"] == -32021
    assert reply["error"]["data"] == {"requiredCapabilities": {"elicitation": {}}}
    # The gateway and the backend carry on.
    ok = await gw.request("tools/call", {"name": "echo", "arguments": {"message": "m"}, "_meta": meta()})
    assert ok["content"][0]["text"] == "m"


async def test_unanswered_questions_expire(make_config, open_gateway):
    """No retry before the expiry: the backend's question fails, the parked call ends, and its
    state is refused afterwards."""
    cfg = make_config([backend("a")], "[gateway]\nclient_request_timeout_secs = 0.3\n")
    gw = await open_gateway(cfg, initialize=False)
    call = {"name": "elicit", "arguments": {}, "_meta": meta()}
    first = await gw.request("tools/call", call, timeout=GUARD)
    assert first["resultType"] == "input_required"
    await asyncio.sleep(1.0)  # well past the expiry; nothing asserted about time itself
    key = next(iter(first["inputRequests"]))
    late = await gw.request_raw(
        "tools/call",
        {**call, "requestState": first["requestState"], "inputResponses": {key: {"action": "decline"}}},
    )
    assert late["error"]["code"] == -32602
    ok = await gw.request("tools/call", {"name": "echo", "arguments": {"message": "m"}, "_meta": meta()})
    assert ok["content"][0]["text"] == "m"


async def test_cancelled_call_stops_its_backend_call(make_config, open_gateway):
    """The client cancels while the backend still runs: the backend call ends with it, so it no
    longer counts as a caller that a later question could belong to."""
    gw = await open_gateway(make_config([backend("a")]), initialize=False)
    gw.send(
        {
            "jsonrpc": "2.0",
            "id": "long",
            "method": "tools/call",
            "params": {"name": "slow", "arguments": {"seconds": 60}, "_meta": meta()},
        }
    )
    await asyncio.sleep(0.5)
    gw.notify("notifications/cancelled", {"requestId": "long", "reason": "user gave up"})
    # Were the slow call still running, the backend's question would be ambiguous and refused.
    first = await gw.request(
        "tools/call", {"name": "elicit", "arguments": {}, "_meta": meta()}, timeout=GUARD
    )
    assert first["resultType"] == "input_required", first


# --- over HTTP: many callers, each with its own identity ----------------------------------------


@pytest.fixture
async def http_gw(tmp_path: Path) -> Any:
    g = Gateway(tmp_path, "sse_keepalive_secs = 0.3\n")
    yield g
    assert g.stop() == 0, g.log.read_text()


async def modern_post(m: Mcp, name: str, params: dict[str, Any]) -> Reply:
    m.next_id += 1
    msg = {"jsonrpc": "2.0", "id": m.next_id, "method": "tools/call", "params": {"name": name, **params}}
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": name}
    return await m.post(msg, extra=headers, session=False)


async def test_http_state_is_bound_to_its_caller(http_gw: Gateway) -> None:
    client = HttpClient(max_connections=8)
    try:
        alice, bob = Mcp(client, http_gw.url, ALICE), Mcp(client, http_gw.url, BOB)
        call = {"arguments": {}, "_meta": meta()}
        first = await modern_post(alice, "elicit", call)
        assert first.status == 200, first.raw
        result = first.body["result"]
        assert result["resultType"] == "input_required"
        key = next(iter(result["inputRequests"]))
        answer = {"requestState": result["requestState"], "inputResponses": {key: {"action": "decline"}}}
        stolen = await modern_post(bob, "elicit", {**call, **answer})
        assert stolen.body["error"]["code"] == -32602  # Bob cannot continue Alice's call
        done = await modern_post(alice, "elicit", {**call, **answer})
        assert done.body["result"]["content"][0]["text"] == "decline"
        missing = await modern_post(alice, "elicit", {"arguments": {}, "_meta": meta({})})
        assert missing.status == 400 and missing.body["error"]["code"] == -32021
    finally:
        await client.aclose()


async def test_http_sdk_modern_client_elicitation(http_gw: Gateway) -> None:
    async def on_elicit(ctx, p) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Remote"})

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {ALICE}"})
    async with (
        http,
        Client(
            streamable_http_client(http_gw.url, http_client=http),
            mode="2026-07-28",
            elicitation_callback=on_elicit,
        ) as sdk,
    ):
        res = await sdk.call_tool("elicit", {})
        assert res.content[0].text == 'accept {"name": "Remote"}'  # type: ignore[union-attr]


async def test_modern_backend_state_is_sealed_to_its_caller(make_config, open_gateway):
    """A 2026-07-28 backend's own requestState reaches the client sealed: the backend never sees
    who calls, so the gateway binds the state to the caller and the call."""
    sdk = sdk_backend()
    gw = await open_gateway(make_config([sdk]), initialize=False)
    call = {"name": "greet", "arguments": {}, "_meta": meta()}
    first = await gw.request("tools/call", call, timeout=30)
    assert first["resultType"] == "input_required"
    key = next(iter(first["inputRequests"]))
    answer = {key: {"action": "accept", "content": {"name": "Kay"}}}
    if "requestState" in first:
        assert first["requestState"].startswith("sgw2.")
        tampered = await gw.request_raw(
            "tools/call", {**call, "requestState": first["requestState"] + "x", "inputResponses": answer}
        )
        assert tampered["error"]["code"] == -32602
        answer_params = {**call, "requestState": first["requestState"], "inputResponses": answer}
    else:
        answer_params = {**call, "inputResponses": answer}
    done = await gw.request("tools/call", answer_params, timeout=30)
    assert "Hello, Kay!" in json.dumps(done)
    no_caps = await gw.request_raw("tools/call", {**call, "_meta": meta({})}, timeout=30)
    assert no_caps["error"]["code"] == -32021


async def test_resource_updates_cross_eras(make_config, open_gateway):
    """A handshake-era client's resources/subscribe on a 2026-07-28 backend becomes a listen
    stream upstream; the backend's update reaches the client without the backend's listen id,
    and unsubscribing ends the upstream stream (a second round proves it was re-opened)."""
    sdk = sdk_backend(prefix="sdk")
    gw = await open_gateway(make_config([sdk]))

    def updates() -> list[dict[str, Any]]:
        return [m["params"] for m in gw.notifications if m.get("method") == "notifications/resources/updated"]

    for _round in range(2):
        gw.notifications.clear()
        assert await gw.request("resources/subscribe", {"uri": "sdk://counter"}, timeout=30) == {}
        # The upstream stream opens asynchronously: bump until an update arrives (bounded).
        for _ in range(int(GUARD / 0.2)):
            assert (await gw.request("tools/call", {"name": "sdk_bump", "arguments": {}}))["content"]
            await asyncio.sleep(0.2)
            if updates():
                break
        got = updates()
        assert got and got[0]["uri"] == "sdk://counter", gw.notifications
        assert "io.modelcontextprotocol/subscriptionId" not in got[0].get("_meta", {})
        assert await gw.request("resources/unsubscribe", {"uri": "sdk://counter"}) == {}
