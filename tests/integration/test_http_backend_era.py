"""HTTP backends in both protocol eras (`era = legacy | modern | auto`), over real loopback sockets.

The 2026-07-28 server is tests/servers/http_server.py in-process (era "modern", "dual" or
"legacy", flipped at run time to play a redeploy) and, for interoperability, the official `mcp`
SDK's Streamable HTTP server in a child process. Gateway-level tests run a real gateway process
in front of the in-process server, with a handshake-era client and a 2026-07-28 (SDK) client.

No timing assertions: every wait is bounded by a generous outer limit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from sentinel_gw.backends.base import BackendError, BackendState
from sentinel_gw.backends.http import HttpBackend
from sentinel_gw.observe import current_client_caps
from sentinel_gw.protocol import jsonrpc
from sentinel_gw.protocol.mcp import CLIENT_CAPABILITIES_KEY, CLIENT_INFO_KEY, PROTOCOL_VERSION_KEY
from tests.integration.test_http_backend import (
    BOUND,
    ROOT,
    FakeEvents,
    bounded,
    call,
    eventually,
    free_port,
    make_cfg,
    text,
)
from tests.integration.test_sdk_interop import params as gateway_params
from tests.servers.http_server import ASK_STATE, HttpMcpServer, Options

MODERN = "2026-07-28"


@pytest.fixture
async def http_server() -> AsyncIterator[Callable[..., Any]]:
    started: list[HttpMcpServer] = []

    async def make(**opts: Any) -> HttpMcpServer:
        srv = HttpMcpServer(Options(**opts))
        await srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        await asyncio.wait_for(srv.stop(), BOUND)


@pytest.fixture
async def http_backend() -> AsyncIterator[Callable[..., Any]]:
    started: list[HttpBackend] = []

    async def make(url: str, *, wait: bool = True, **kw: Any) -> tuple[HttpBackend, FakeEvents]:
        events = FakeEvents()
        b = HttpBackend(make_cfg(url, **kw), events, environ={})
        await b.start()
        started.append(b)
        if wait:
            assert await b.wait_ready(BOUND), b.last_error
        return b, events

    yield make
    for b in started:
        await asyncio.wait_for(b.stop(), BOUND)


def sent(srv: HttpMcpServer, method: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
    return [(m, h) for m, h in srv.messages if m.get("method") == method]


# ---------------------------------------------------------------------------------------------
# era = modern


@pytest.mark.parametrize("json_response", [False, True])
async def test_modern_pinned_speaks_2026_on_every_request(http_server, http_backend, json_response):
    srv = await http_server(era="modern", json_response=json_response)
    b, _ = await http_backend(srv.url, era="modern")
    assert b.modern and b.protocol_version == MODERN and b.transport == "streamable"
    assert b.session_id is None and srv.initializes == 0 and srv.discovers == 1
    assert b.server_info["name"] == "http-test" and "tools" in b.capabilities
    assert b.instructions == "HTTP test server"

    names = {t["name"] for t in (await bounded(b.request("tools/list", {})))["tools"]}
    assert {"echo", "grüß", "ask"} <= names
    result = await bounded(b.request("tools/call", call("echo", message="modern")))
    assert text(result) == "modern" and result["resultType"] == "complete"
    msg, headers = sent(srv, "tools/call")[-1]
    assert headers["mcp-protocol-version"] == MODERN
    assert headers["mcp-method"] == "tools/call" and headers["mcp-name"] == "echo"
    assert "mcp-session-id" not in headers
    meta = msg["params"]["_meta"]
    assert meta[PROTOCOL_VERSION_KEY] == MODERN
    assert meta[CLIENT_CAPABILITIES_KEY] == {"sampling": {}}  # what the gateway declared
    assert meta[CLIENT_INFO_KEY]["name"] == "sentinel-gw"

    # The caller's own capabilities travel with the request when a client call is served.
    token = current_client_caps.set({"elicitation": {}})
    try:
        await bounded(b.request("tools/call", call("echo", message="mine")))
    finally:
        current_client_caps.reset(token)
    assert sent(srv, "tools/call")[-1][0]["params"]["_meta"][CLIENT_CAPABILITIES_KEY] == {"elicitation": {}}

    # Values that are not header-safe go base64-wrapped; the server checks them with the SDK's decoder.
    result = await bounded(b.request("tools/call", call("grüß", message="x")))
    assert text(result) == "grüß x"
    assert sent(srv, "tools/call")[-1][1]["mcp-name"].startswith("=?base64?")
    read = await bounded(b.request("resources/read", {"uri": "test://http/café"}))
    assert read["contents"][0]["text"] == "un café"
    assert sent(srv, "resources/read")[-1][1]["mcp-name"].startswith("=?base64?")
    got = await bounded(b.request("prompts/get", {"name": "greet", "arguments": {"name": "Lin"}}))
    assert "Lin" in got["messages"][0]["content"]["text"]
    assert sent(srv, "prompts/get")[-1][1]["mcp-name"] == "greet"

    # Methods 2026-07-28 removed are refused locally, never sent.
    with pytest.raises(jsonrpc.JsonRpcError) as err:
        await bounded(b.request("ping", None))
    assert err.value.code == jsonrpc.METHOD_NOT_FOUND and not sent(srv, "ping")

    await bounded(b.stop())
    assert srv.get_requests == [] and srv.deletes == []  # no GET stream, no session to delete
    assert all("mcp-session-id" not in h for _, h in srv.messages)


async def test_modern_unknown_method_is_an_answer_not_an_outage(http_server, http_backend):
    srv = await http_server(era="modern")
    b, _ = await http_backend(srv.url, era="modern")
    with pytest.raises(jsonrpc.JsonRpcError) as err:
        await bounded(b.request("completion/complete", {"ref": {}, "argument": {}}))
    assert not isinstance(err.value, BackendError) and err.value.code == jsonrpc.METHOD_NOT_FOUND
    assert b.breaker.state == "closed" and b.ready


async def test_modern_list_changes_arrive_on_a_listen_stream(http_server, http_backend):
    srv = await http_server(era="modern")
    b, events = await http_backend(srv.url, era="modern")
    await eventually(lambda: len(srv.listens) == 1)
    assert srv.listens[0]["notifications"] == {
        "toolsListChanged": True,
        "promptsListChanged": True,
        "resourcesListChanged": True,
    }
    _, headers = sent(srv, "subscriptions/listen")[0]
    assert headers["mcp-method"] == "subscriptions/listen" and headers["mcp-protocol-version"] == MODERN
    assert text(await bounded(b.request("tools/call", call("add_tool")))) == "extra_1"
    await eventually(lambda: any(m == "notifications/tools/list_changed" for m, _ in events.notifications))
    assert all(m != "notifications/subscriptions/acknowledged" for m, _ in events.notifications)
    # A stream the server ends is opened again.
    srv.end_listens()
    await eventually(lambda: len(srv.listens) == 2)
    srv.broadcast("notifications/prompts/list_changed")
    await eventually(lambda: any(m == "notifications/prompts/list_changed" for m, _ in events.notifications))
    assert srv.get_requests == []


async def test_modern_input_required_is_returned_unchanged(http_server, http_backend):
    srv = await http_server(era="modern")
    b, _ = await http_backend(srv.url, era="modern")
    first = await bounded(b.request("tools/call", call("ask")))
    assert first["resultType"] == "input_required" and first["requestState"] == ASK_STATE
    assert first["inputRequests"]["name"]["method"] == "elicitation/create"
    retry = {
        **call("ask"),
        "inputResponses": {"name": {"action": "accept", "content": {"name": "Ada"}}},
        "requestState": first["requestState"],
    }
    assert text(await bounded(b.request("tools/call", retry))) == "Hello, Ada!"
    ids = [m["id"] for m, _ in sent(srv, "tools/call")]
    assert len(set(ids)) == len(ids)  # a retry is a new request


async def test_modern_cancellation_closes_the_response_stream(http_server, http_backend):
    srv = await http_server(era="modern")
    b, _ = await http_backend(srv.url, era="modern")
    with pytest.raises(BackendError) as err:
        await bounded(b.request("tools/call", call("hang", call_id="t1"), timeout=0.3))
    assert err.value.reason == "timeout"
    await eventually(lambda: srv.cancelled_tools == ["t1"])
    task = asyncio.ensure_future(b.request("tools/call", call("hang", call_id="c1")))
    await eventually(lambda: srv.received["c1"] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: srv.cancelled_tools == ["t1", "c1"])
    assert srv.stream_closes == 2 and srv.cancelled == []  # no notifications/cancelled in 2026-07-28
    assert text(await bounded(b.request("tools/call", call("echo", message="still")))) == "still"


async def test_modern_health_probe_is_server_discover(http_server, http_backend):
    srv = await http_server(era="modern")
    b, _ = await http_backend(srv.url, era="modern", health_interval_secs=0.1)
    await eventually(lambda: srv.discovers >= 3 and b.health.value == "healthy")
    assert not sent(srv, "ping")


async def test_modern_pinned_against_a_handshake_only_server_fails_clearly(http_server, http_backend):
    srv = await http_server()
    b, events = await http_backend(srv.url, era="modern", wait=False)
    await eventually(lambda: "2026-07-28" in b.last_error)
    assert 'era = "legacy" or "auto"' in b.last_error
    assert not b.ready and b.state is not BackendState.READY and srv.initializes == 0
    assert events.ready == []


async def test_modern_over_http_sse_is_a_configuration_error(http_backend):
    b, events = await http_backend("http://127.0.0.1:9/mcp", era="modern", transport="sse", wait=False)
    assert not await b.wait_ready(BOUND)
    assert b.state is BackendState.FAILED and "cannot carry" in b.last_error
    assert events.down == ["gave_up"]


# ---------------------------------------------------------------------------------------------
# era = legacy against a 2026-07-28-only server


async def test_legacy_pinned_against_a_modern_only_server_fails_clearly(http_server, http_backend):
    srv = await http_server(era="modern")
    b, events = await http_backend(srv.url, era="legacy", wait=False)
    await eventually(lambda: "speaks only 2026-07-28" in b.last_error)
    assert 'era = "modern" or "auto"' in b.last_error
    assert not b.ready and events.ready == [] and srv.discovers == 0
    assert [m["method"] for m, _ in srv.messages][:1] == ["initialize"]


# ---------------------------------------------------------------------------------------------
# era = auto


@pytest.mark.parametrize("server_era", ["modern", "dual"])
async def test_auto_detects_a_2026_server(http_server, http_backend, server_era):
    srv = await http_server(era=server_era)
    b, _ = await http_backend(srv.url, era="auto")
    assert b.modern and b.protocol_version == MODERN and b.era_verdict == "modern"
    assert b.session_id is None and srv.initializes == 0
    first, headers = srv.messages[0]
    assert first["method"] == "server/discover" and headers["mcp-method"] == "server/discover"
    assert text(await bounded(b.request("tools/call", call("echo", message="auto")))) == "auto"


@pytest.mark.parametrize("transport", ["auto", "streamable"])
async def test_auto_detects_a_handshake_server(http_server, http_backend, transport):
    srv = await http_server()
    b, _ = await http_backend(srv.url, era="auto", transport=transport)
    assert not b.modern and b.era_verdict == "legacy" and b.session_id is not None
    assert b.protocol_version == "2025-11-25" and srv.initializes == 1
    assert [m.get("method") for m, _ in srv.messages][:2] == ["server/discover", "initialize"]
    assert text(await bounded(b.request("tools/call", call("echo", message="old")))) == "old"
    msg, headers = sent(srv, "tools/call")[-1]
    assert "mcp-method" not in headers and headers["mcp-session-id"] == b.session_id
    assert "_meta" not in msg["params"]
    await eventually(lambda: len(srv.get_requests) >= 1)  # the handshake-era GET stream


async def test_auto_falls_back_to_http_sse(http_server, http_backend):
    srv = await http_server(legacy_sse=True)
    b, _ = await http_backend(srv.url, era="auto")
    assert b.transport == "sse" and not b.modern and b.era_verdict == "legacy"
    assert text(await bounded(b.request("tools/call", call("echo", message="sse")))) == "sse"


async def test_auto_reprobes_when_a_2026_server_comes_back_handshake_only(http_server, http_backend):
    srv = await http_server(era="modern")
    b, events = await http_backend(srv.url, era="auto")
    assert b.modern
    await eventually(lambda: len(srv.listens) == 1)
    srv.opts.era = "legacy"  # redeployed: sessions, and a 2026-07-28 POST gets a bare 400
    # A tool call that may have run is not repeated on the renegotiated connection...
    with pytest.raises(BackendError) as err:
        await bounded(b.request("tools/call", call("record", call_id="r1")))
    assert err.value.reason == "session_expired" and "not repeated" in err.value.message
    assert srv.executed["r1"] == 0
    assert not b.modern and b.era_verdict == "legacy" and b.session_id is not None
    assert srv.initializes == 1 and events.ready == ["h", "h"]
    # ...and everything works in the new era.
    assert text(await bounded(b.request("tools/call", call("record", call_id="r2")))) == "executed 1"

    # Safe requests are repeated after the renegotiation: back to 2026-07-28.
    srv.opts.era = "modern"
    tools = await bounded(b.request("tools/list", {}))
    assert "echo" in {t["name"] for t in tools["tools"]}
    assert b.modern and b.era_verdict == "modern" and b.session_id is None
    assert srv.initializes == 1  # the remembered handshake era was tried with initialize, refused


async def test_auto_tries_the_remembered_era_first_on_reconnect(http_server, http_backend):
    srv = await http_server()
    b, _ = await http_backend(srv.url, era="auto")
    assert b.era_verdict == "legacy" and srv.discovers == 0
    probes = len(sent(srv, "server/discover"))
    srv.expire_sessions()  # session gone: initialize again, without probing first
    assert "echo" in {t["name"] for t in (await bounded(b.request("tools/list", {})))["tools"]}
    assert srv.initializes == 2 and len(sent(srv, "server/discover")) == probes == 1


# ---------------------------------------------------------------------------------------------
# The official SDK's Streamable HTTP server (it serves both eras on one endpoint)

# sdk_server.py names its server after argv[1]; here that is the port, so it is swapped first.
SDK_HTTP = (
    "import sys; port = int(sys.argv[1]); sys.argv[1:] = ['sdk-backend']; "
    "from tests.servers.sdk_server import app; "
    "app.run('streamable-http', host='127.0.0.1', port=port)"
)


@pytest.fixture
async def sdk_http(tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    log_path = tmp_path / "sdk_http.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", SDK_HTTP, str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.parametrize("era", ["auto", "modern"])
async def test_the_official_sdk_server_in_2026(sdk_http, http_backend, era):
    # The SDK server takes a moment to listen: the backend reconnects until it does.
    b, _ = await http_backend(sdk_http, era=era, wait=False)
    assert await b.wait_ready(30), b.last_error
    assert b.modern and b.protocol_version == MODERN and b.session_id is None
    assert b.server_info.get("name") == "sdk-backend"
    assert {"echo", "add", "greet"} <= {
        t["name"] for t in (await bounded(b.request("tools/list", {})))["tools"]
    }
    assert "5" in json.dumps(await bounded(b.request("tools/call", call("add", a=2, b=3))))
    # The SDK only asks callers that declared elicitation: the caller's capabilities must arrive.
    token = current_client_caps.set({"elicitation": {}})
    try:
        first = await bounded(b.request("tools/call", call("greet")))
    finally:
        current_client_caps.reset(token)
    assert first["resultType"] == "input_required"
    (key, request), *_ = first["inputRequests"].items()
    assert request["method"] == "elicitation/create"
    retry = {**call("greet"), "inputResponses": {key: {"action": "accept", "content": {"name": "Ada"}}}}
    if "requestState" in first:
        retry["requestState"] = first["requestState"]
    token = current_client_caps.set({"elicitation": {}})
    try:
        assert "Hello, Ada!" in json.dumps(await bounded(b.request("tools/call", retry)))
    finally:
        current_client_caps.reset(token)


# ---------------------------------------------------------------------------------------------
# Through a real gateway process


def http_entry(srv: HttpMcpServer, era: str) -> dict[str, Any]:
    return {"name": "h", "type": "http", "url": srv.url, "era": era, "prefix": "h", "health_interval_secs": 0}


def texts(result: dict[str, Any]) -> str:
    return " ".join(c.get("text", "") for c in result.get("content", []))


@pytest.mark.parametrize("era", ["modern", "auto"])
async def test_handshake_client_through_the_gateway(http_server, make_config, open_gateway, era):
    srv = await http_server(era="modern")
    asked: list[str] = []

    def answer(method: str, params: dict[str, Any]) -> dict[str, Any]:
        asked.append(params.get("message", ""))
        return {"action": "accept", "content": {"name": "Ada"}}

    gw = await open_gateway(
        make_config([http_entry(srv, era)]), capabilities={"elicitation": {}}, on_request=answer
    )
    tools = {t["name"] for t in (await gw.request("tools/list", timeout=30))["tools"]}
    assert {"h_echo", "h_ask", "h_add_tool"} <= tools
    gruss = next(n for n in tools if n.startswith("h_gr"))
    res = await gw.request("tools/call", {"name": "h_echo", "arguments": {"message": "through"}})
    assert texts(res) == "through"
    res = await gw.request("tools/call", {"name": gruss, "arguments": {"message": "x"}})
    assert texts(res) == "grüß x"  # the backend got its original name, base64 in Mcp-Name
    read = await gw.request("resources/read", {"uri": "test://http/café"})
    assert read["contents"][0]["text"] == "un café"
    got = await gw.request("prompts/get", {"name": "h_greet", "arguments": {"name": "Lin"}})
    assert "Lin" in got["messages"][0]["content"]["text"]

    # input_required from the 2026-07-28 backend becomes a real elicitation for this client.
    res = await gw.request("tools/call", {"name": "h_ask", "arguments": {}}, timeout=30)
    assert texts(res) == "Hello, Ada!"
    assert asked and asked[0].startswith("[h] ")

    # A list change on the backend's listen stream reaches the client (the gateway re-lists the
    # backend first, so the new tool is there once the client hears of it).
    def changes() -> int:
        return sum(n["method"] == "notifications/tools/list_changed" for n in gw.notifications)

    before = changes()
    await gw.request("tools/call", {"name": "h_add_tool", "arguments": {}})
    await eventually(lambda: changes() > before)
    assert "h_extra_1" in {t["name"] for t in (await gw.request("tools/list"))["tools"]}
    assert srv.listens and srv.get_requests == []  # it came on a listen stream, not a GET stream

    # A resource subscription becomes a listen stream for that URI upstream.
    await gw.request("resources/subscribe", {"uri": "test://http/hello"})
    await eventually(lambda: any(p["notifications"].get("resourceSubscriptions") for p in srv.listens))
    await gw.request("tools/call", {"name": "h_touch", "arguments": {"uri": "test://http/hello"}})
    await eventually(
        lambda: any(
            n["method"] == "notifications/resources/updated" and n["params"]["uri"] == "test://http/hello"
            for n in gw.notifications
        )
    )
    assert srv.initializes == 0 and all("mcp-session-id" not in h for _, h in srv.messages)


async def test_2026_client_through_the_gateway(http_server, make_config, tmp_path):
    from mcp_types import ElicitResult

    srv = await http_server(era="modern")
    cfg = make_config([http_entry(srv, "auto")])

    async def on_elicit(ctx: Any, p: Any) -> ElicitResult:
        return ElicitResult(action="accept", content={"name": "Grace"})

    async with Client(gateway_params(cfg, tmp_path), mode=MODERN, elicitation_callback=on_elicit) as client:
        assert client.protocol_version == MODERN
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"h_echo", "h_ask"} <= names
        res = await client.call_tool("h_echo", {"message": "modern"})
        assert res.content[0].text == "modern"  # type: ignore[union-attr]
        read = await client.read_resource("test://http/café")
        assert read.contents[0].text == "un café"  # type: ignore[union-attr]
        got = await client.get_prompt("h_greet", {"name": "Lin"})
        assert "Lin" in got.messages[0].content.text  # type: ignore[union-attr]
        # input_required passes through: the SDK client answers it and retries.
        res = await client.call_tool("h_ask", {})
        assert res.content[0].text == "Hello, Grace!"  # type: ignore[union-attr]
        async with client.listen(tools_list_changed=True) as sub:
            await client.call_tool("h_add_tool", {})

            async def first_change() -> str:
                async for event in sub:
                    return type(event).__name__
                return ""

            assert await asyncio.wait_for(first_change(), BOUND) == "ToolsListChanged"
    # The backend saw the 2026-07-28 client's retry with the state it handed out, unchanged.
    asks = [m for m, _ in sent(srv, "tools/call") if m["params"].get("name") == "ask"]
    assert len(asks) == 2 and asks[1]["params"]["requestState"] == ASK_STATE
