"""miniserver, the demo server and the test backends, driven as real child processes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import sentinel_gw  # noqa: E402
from helpers_stdio import RawStdioClient, RpcError  # noqa: E402
from sentinel_gw.miniserver import LATEST_PROTOCOL_VERSION, LOG_LEVELS, PROTOCOL_VERSIONS  # noqa: E402

MCP_SERVER = str(TESTS / "servers" / "mcp_server.py")
ECHO_SERVER = str(TESTS / "servers" / "echo_server.py")
DEMO = [sys.executable, "-m", "sentinel_gw.demo_server"]

Spawn = Callable[..., Awaitable[RawStdioClient]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start child processes; every one is closed (and killed if need be) at teardown."""
    clients: list[RawStdioClient] = []

    async def start(*args: str, argv: list[str] | None = None, **kw: Any) -> RawStdioClient:
        client = await RawStdioClient.start(argv or [sys.executable, MCP_SERVER, *args], **kw)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()


async def started(spawn: Spawn, *args: str, **kw: Any) -> RawStdioClient:
    client = await spawn(*args, **kw)
    await client.initialize()
    return client


def text_of(result: dict[str, Any]) -> str:
    return "".join(block["text"] for block in result["content"] if block["type"] == "text")


async def list_all(client: RawStdioClient, method: str, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        result = await client.call(method, {} if cursor is None else {"cursor": cursor})
        items.extend(result[key])
        cursor = result.get("nextCursor")
        if cursor is None:
            return items
    raise AssertionError("pagination never ended")


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


# ---------------------------------------------------------------------- handshake


@pytest.mark.parametrize("version", PROTOCOL_VERSIONS)
async def test_initialize_echoes_supported_version(spawn: Spawn, version: str) -> None:
    client = await spawn()
    result = await client.initialize(version)
    assert result["protocolVersion"] == version
    assert result["serverInfo"] == {"name": "test", "version": "1.0.0"}
    caps = result["capabilities"]
    assert caps["tools"] == {"listChanged": True}
    assert caps["resources"] == {"subscribe": True, "listChanged": True}
    assert caps["prompts"] == {"listChanged": True}
    assert "completions" in caps and "logging" in caps


@pytest.mark.parametrize("version", ["1999-01-01", "2026-07-28", ""])
async def test_initialize_offers_latest_for_unknown_version(spawn: Spawn, version: str) -> None:
    client = await spawn()
    assert (await client.initialize(version))["protocolVersion"] == LATEST_PROTOCOL_VERSION


async def test_capabilities_follow_registrations(spawn: Spawn) -> None:
    client = await spawn("--no-resources", "--no-prompts", "--no-completions", "--name", "bare")
    result = await client.initialize()
    assert result["serverInfo"]["name"] == "bare"
    assert set(result["capabilities"]) == {"tools", "logging"}
    for method in ("resources/list", "prompts/list", "completion/complete"):
        assert (await client.request(method, {}))["error"]["code"] == -32601


async def test_ping_unknown_method_and_malformed_input(spawn: Spawn) -> None:
    client = await spawn()
    # ping must work before the handshake too
    assert await client.call("ping") == {}
    await client.initialize()
    # Claude Code probes with server/discover and a string id; the answer must be -32601, same id.
    response = await client.request("server/discover", {})
    assert response["error"]["code"] == -32601
    await client.send_request("server/discover", {}, id="server-discover-probe-1")
    assert (await client.wait_response("server-discover-probe-1"))["error"]["code"] == -32601

    await client.send(b"{not json\n")
    await client.send([{"jsonrpc": "2.0", "id": 99, "method": "ping"}])
    await client.send({"jsonrpc": "2.0", "id": None, "method": "ping"})
    await wait_until(lambda: len(client.unsolicited) >= 3)
    codes = sorted(msg["error"]["code"] for msg in client.unsolicited)
    assert codes == [-32700, -32600, -32600]
    assert all(msg["id"] is None for msg in client.unsolicited)
    assert await client.call("ping") == {}


# ---------------------------------------------------------------------- tools


async def test_tools_list_pagination(spawn: Spawn) -> None:
    client = await started(spawn, "--tools", "11", "--page-size", "4")
    first = await client.call("tools/list")
    assert len(first["tools"]) == 4 and "nextCursor" in first
    tools = await list_all(client, "tools/list", "tools")
    names = [t["name"] for t in tools]
    assert len(names) == len(set(names))
    assert {f"t_{i}" for i in range(11)} <= set(names)
    assert {"echo", "add", "slow", "crash", "fail", "rpc_error", "sample", "elicit", "roots"} <= set(names)
    assert {"log", "add_tool", "touch", "big", "env", "pid", "cwd"} <= set(names)
    for bad in ("garbage!", base64.urlsafe_b64encode(b"prompts:0").decode(), ""):
        assert (await client.request("tools/list", {"cursor": bad}))["error"]["code"] == -32602
    assert text_of(await client.call_tool("t_7")) == "t_7"


async def test_other_lists_paginate(spawn: Spawn) -> None:
    client = await started(spawn, "--page-size", "1")
    resources = await list_all(client, "resources/list", "resources")
    assert [r["uri"] for r in resources] == ["test://test/hello", "test://test/blob"]
    templates = await list_all(client, "resources/templates/list", "resourceTemplates")
    assert [t["uriTemplate"] for t in templates] == ["test://test/items/{id}"]
    prompts = await list_all(client, "prompts/list", "prompts")
    assert [p["name"] for p in prompts] == ["greet"]


async def test_simple_tools(spawn: Spawn, tmp_path: Path) -> None:
    client = await started(spawn, env={"MINI_TEST_VAR": "xyz"}, cwd=tmp_path)
    meta = {"progressToken": "p1", "vendor.example/trace": {"k": [1, 2]}}
    echoed = await client.call_tool("echo", {"message": "héllo\nworld"}, _meta=meta)
    assert text_of(echoed) == "héllo\nworld"
    assert echoed["_meta"] == meta
    added = await client.call_tool("add", {"a": 2, "b": 40})
    assert text_of(added) == "42" and added["structuredContent"] == {"sum": 42}
    missing = await client.call_tool("add", {"a": 2})
    assert missing["isError"] is True and "b" in text_of(missing)
    wrong_type = await client.call_tool("add", {"a": "2", "b": 3})
    assert wrong_type["isError"] is True
    failed = await client.call_tool("fail")
    assert failed["isError"] is True
    with pytest.raises(RpcError) as info:
        await client.call_tool("rpc_error")
    assert (info.value.code, info.value.message) == (-32000, "boom")
    with pytest.raises(RpcError) as info:
        await client.call_tool("no_such_tool")
    assert info.value.code == -32602
    big = await client.call_tool("big", {"size": 3_000_000})
    assert len(text_of(big)) == 3_000_000
    assert text_of(await client.call_tool("env", {"name": "MINI_TEST_VAR"})) == "xyz"
    assert text_of(await client.call_tool("env", {"name": "MINI_TEST_SURELY_UNSET"})) == "<unset>"
    assert int(text_of(await client.call_tool("pid"))) == client.proc.pid
    assert Path(text_of(await client.call_tool("cwd"))).resolve() == tmp_path.resolve()


async def test_crash_tool_exits_without_reply(spawn: Spawn, tmp_path: Path) -> None:
    state = tmp_path / "calls.txt"
    client = await started(spawn, "--state-file", str(state))
    request_id = await client.send_request("tools/call", {"name": "crash", "arguments": {"x": 1}})
    assert await client.wait_exit() == 3
    await client.wait_stdout_closed()
    assert request_id in client._pending and not client._pending[request_id].done()
    assert state.read_text() == 'crash {"x": 1}\n'


async def test_state_file_records_each_call(spawn: Spawn, tmp_path: Path) -> None:
    state = tmp_path / "calls.txt"
    client = await started(spawn, "--state-file", str(state))
    await client.call_tool("echo", {"message": "a"})
    await client.call_tool("add", {"b": 1, "a": 2})
    await client.call("tools/list")
    assert state.read_text().splitlines() == ['echo {"message": "a"}', 'add {"a": 2, "b": 1}']


async def test_slow_call_does_not_block_others(spawn: Spawn) -> None:
    client = await started(spawn)
    slow_id = await client.send_request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
    assert text_of(await client.call_tool("echo", {"message": "fast"})) == "fast"
    assert await client.call("ping") == {}
    assert not client._pending[slow_id].done()
    await client.cancel(slow_id)


async def test_cancellation_sends_no_response(spawn: Spawn, tmp_path: Path) -> None:
    state = tmp_path / "calls.txt"
    client = await started(spawn, "--state-file", str(state))
    slow_id = await client.send_request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
    await wait_until(lambda: state.exists() and "slow" in state.read_text())
    await client.cancel(slow_id)
    await wait_until(lambda: "cancelled:slow" in state.read_text())
    # Responses are written in order, so once ping is answered a slow reply would already be here.
    assert await client.call("ping") == {}
    assert client.unsolicited == []
    # Cancelling an unknown or finished request is ignored.
    await client.cancel(12345)
    assert await client.call("ping") == {}


async def test_progress_notifications(spawn: Spawn) -> None:
    client = await started(spawn)
    result = await client.call_tool("slow", {"seconds": 0.3}, _meta={"progressToken": "tok-1"})
    assert text_of(result) == "slept 0.3s"
    progress = [n["params"] for n in client.drain_notifications() if n["method"] == "notifications/progress"]
    assert progress and all(p["progressToken"] == "tok-1" for p in progress)
    values = [p["progress"] for p in progress]
    assert values == sorted(set(values))
    # no token, no progress
    await client.call_tool("slow", {"seconds": 0.15})
    assert not [n for n in client.drain_notifications() if n["method"] == "notifications/progress"]


async def test_sampling_round_trip(spawn: Spawn) -> None:
    client = await started(spawn)
    call_id = await client.send_request("tools/call", {"name": "sample", "arguments": {"prompt": "2+2?"}})
    request = await client.next_server_request("sampling/createMessage")
    assert request["params"]["messages"][0]["content"]["text"] == "2+2?"
    await client.respond(
        request["id"], {"role": "assistant", "content": {"type": "text", "text": "four"}, "model": "test"}
    )
    assert text_of((await client.wait_response(call_id))["result"]) == "four"

    # A client-side error becomes the tool call's error.
    call_id = await client.send_request("tools/call", {"name": "sample", "arguments": {}})
    request = await client.next_server_request("sampling/createMessage")
    await client.respond_error(request["id"], -1, "user rejected sampling")
    response = await client.wait_response(call_id)
    assert response["error"]["message"] == "user rejected sampling"


async def test_elicitation_and_roots(spawn: Spawn) -> None:
    client = await started(spawn)
    call_id = await client.send_request("tools/call", {"name": "elicit", "arguments": {}})
    request = await client.next_server_request("elicitation/create")
    assert request["params"]["requestedSchema"]["required"] == ["name"]
    await client.respond(request["id"], {"action": "accept", "content": {"name": "Ada", "age": 36}})
    assert text_of((await client.wait_response(call_id))["result"]) == 'accept {"age": 36, "name": "Ada"}'

    call_id = await client.send_request("tools/call", {"name": "elicit", "arguments": {}})
    request = await client.next_server_request("elicitation/create")
    await client.respond(request["id"], {"action": "decline"})
    assert text_of((await client.wait_response(call_id))["result"]) == "decline"

    call_id = await client.send_request("tools/call", {"name": "roots", "arguments": {}})
    request = await client.next_server_request("roots/list")
    await client.respond(request["id"], {"roots": [{"uri": "file:///a"}, {"uri": "file:///b", "name": "b"}]})
    assert text_of((await client.wait_response(call_id))["result"]) == "file:///a\nfile:///b"


async def test_cancelled_tool_cancels_its_server_request(spawn: Spawn) -> None:
    client = await started(spawn)
    call_id = await client.send_request("tools/call", {"name": "sample", "arguments": {}})
    request = await client.next_server_request("sampling/createMessage")
    await client.cancel(call_id)
    note = await client.next_notification("notifications/cancelled")
    assert note["params"]["requestId"] == request["id"]


async def test_add_tool_sends_list_changed(spawn: Spawn) -> None:
    client = await started(spawn)
    assert text_of(await client.call_tool("add_tool")) == "extra_1"
    await client.next_notification("notifications/tools/list_changed")
    names = {t["name"] for t in (await client.call("tools/list"))["tools"]}
    assert "extra_1" in names
    assert text_of(await client.call_tool("extra_1")) == "extra_1"
    assert text_of(await client.call_tool("add_tool")) == "extra_2"


async def test_logging_levels_and_filtering(spawn: Spawn) -> None:
    client = await started(spawn)
    assert text_of(await client.call_tool("log")) == "logged"
    levels = [
        n["params"]["level"] for n in client.drain_notifications() if n["method"] == "notifications/message"
    ]
    assert levels == list(LOG_LEVELS)
    assert await client.call("logging/setLevel", {"level": "warning"}) == {}
    await client.call_tool("log")
    levels = [
        n["params"]["level"] for n in client.drain_notifications() if n["method"] == "notifications/message"
    ]
    assert levels == ["warning", "error", "critical", "alert", "emergency"]
    assert (await client.request("logging/setLevel", {"level": "loud"}))["error"]["code"] == -32602


# ---------------------------------------------------------------------- resources, prompts, completion


async def test_resources_read(spawn: Spawn) -> None:
    client = await started(spawn, "--name", "alpha")
    hello = await client.call("resources/read", {"uri": "test://alpha/hello"})
    assert hello["contents"] == [
        {"uri": "test://alpha/hello", "mimeType": "text/plain", "text": "hello from alpha"}
    ]
    blob = (await client.call("resources/read", {"uri": "test://alpha/blob"}))["contents"][0]
    assert base64.b64decode(blob["blob"]) == bytes(range(256))
    item = (await client.call("resources/read", {"uri": "test://alpha/items/42"}))["contents"][0]
    assert item["text"] == "item 42"
    for uri in ("test://alpha/nope", "test://alpha/items/1/2", "test://beta/hello"):
        error = (await client.request("resources/read", {"uri": uri}))["error"]
        assert error == {"code": -32002, "message": "Resource not found", "data": {"uri": uri}}


async def test_subscribe_and_updated(spawn: Spawn) -> None:
    client = await started(spawn)
    uri = "test://test/hello"
    assert text_of(await client.call_tool("touch", {"uri": uri})) == "not subscribed"
    assert await client.call("resources/subscribe", {"uri": uri}) == {}
    assert text_of(await client.call_tool("touch", {"uri": uri})) == "notified"
    note = await client.next_notification("notifications/resources/updated")
    assert note["params"] == {"uri": uri}
    assert await client.call("resources/unsubscribe", {"uri": uri}) == {}
    assert text_of(await client.call_tool("touch", {"uri": uri})) == "not subscribed"
    assert not [n for n in client.drain_notifications() if n["method"] == "notifications/resources/updated"]


async def test_prompts(spawn: Spawn) -> None:
    client = await started(spawn)
    result = await client.call("prompts/get", {"name": "greet", "arguments": {"name": "Bob"}})
    assert result["messages"] == [{"role": "user", "content": {"type": "text", "text": "Hello, Bob!"}}]
    assert result["description"] == "Greet someone."
    assert (await client.request("prompts/get", {"name": "greet"}))["error"]["code"] == -32602
    assert (await client.request("prompts/get", {"name": "nope", "arguments": {}}))["error"]["code"] == -32602


async def test_completion(spawn: Spawn) -> None:
    client = await started(spawn)
    params = {"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "name", "value": "c"}}
    completion = (await client.call("completion/complete", params))["completion"]
    assert completion == {"values": ["carol"], "total": 1, "hasMore": False}
    params = {
        "ref": {"type": "ref/resource", "uri": "test://test/items/{id}"},
        "argument": {"name": "id", "value": "4"},
    }
    assert (await client.call("completion/complete", params))["completion"]["values"] == ["42"]
    bad = await client.request("completion/complete", {"ref": "x", "argument": {}})
    assert bad["error"]["code"] == -32602


# ---------------------------------------------------------------------- lifecycle and faults


async def test_exits_on_stdin_eof(spawn: Spawn) -> None:
    client = await started(spawn)
    await client.close_stdin()
    assert await client.wait_exit(5) == 0
    await client.wait_stdout_closed(5)


async def test_requests_in_flight_at_eof_still_answered(spawn: Spawn) -> None:
    client = await spawn()
    init_id = await client.send_request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}})
    echo_id = await client.send_request("tools/call", {"name": "echo", "arguments": {"message": "last"}})
    await client.close_stdin()
    assert (await client.wait_response(init_id))["result"]["protocolVersion"] == "2025-06-18"
    assert text_of((await client.wait_response(echo_id))["result"]) == "last"
    assert await client.wait_exit(5) == 0


async def test_sigterm_and_ignore_sigterm(spawn: Spawn) -> None:
    client = await started(spawn)
    client.signal(signal.SIGTERM)
    assert await client.wait_exit(5) == 0

    stubborn = await started(spawn, "--ignore-sigterm")
    stubborn.signal(signal.SIGTERM)
    assert await stubborn.call("ping") == {}  # still alive and serving
    await stubborn.close_stdin()
    assert await stubborn.wait_exit(5) == 0


async def test_ignore_stdin_eof(spawn: Spawn) -> None:
    client = await started(spawn, "--ignore-stdin-eof")
    await client.close_stdin()
    with pytest.raises(asyncio.TimeoutError):
        await client.wait_exit(0.5)
    client.signal(signal.SIGTERM)
    assert await client.wait_exit(5) == 0


async def test_stderr_flood_does_not_deadlock_when_drained(spawn: Spawn) -> None:
    client = await spawn("--stderr-flood", "20000")  # ~4 MB, far beyond a pipe buffer
    await client.initialize(timeout=30)
    assert client.stderr_lines >= 20000
    assert text_of(await client.call_tool("echo", {"message": "still fine"})) == "still fine"


async def test_stderr_forever(spawn: Spawn) -> None:
    client = await started(spawn, "--stderr-forever")
    await wait_until(lambda: client.stderr_lines > 5)
    assert await client.call("ping") == {}


async def test_crash_and_hang_on_initialize(spawn: Spawn) -> None:
    crasher = await spawn("--crash-on-initialize")
    init_id = await crasher.send_request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
    assert await crasher.wait_exit() == 4
    assert not crasher._pending[init_id].done()

    hanger = await spawn("--hang-on-initialize")
    init_id = await hanger.send_request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
    assert await hanger.call("ping") == {}  # the server is alive, initialize just never completes
    with pytest.raises(asyncio.TimeoutError):
        await hanger.wait_response(init_id, timeout=0.3)


async def test_garbage_on_stdout(spawn: Spawn) -> None:
    client = await started(spawn, "--garbage")
    assert text_of(await client.call_tool("echo", {"message": "x"})) == "x"
    assert client.garbage and all(line == b"this is not json\n" for line in client.garbage)
    assert len(client.garbage) >= 2


async def test_exit_after_and_startup_delay(spawn: Spawn) -> None:
    client = await spawn("--exit-after", "2", "--startup-delay", "0.2")
    await client.initialize()
    assert await client.call("ping") == {}
    assert await client.wait_exit() == 0


async def test_echo_delay(spawn: Spawn) -> None:
    client = await started(spawn, "--echo-delay", "0.2")
    echo_id = await client.send_request("tools/call", {"name": "echo", "arguments": {"message": "late"}})
    assert await client.call("ping") == {}
    assert text_of((await client.wait_response(echo_id))["result"]) == "late"


async def test_stdin_from_regular_file_uses_thread_reader(tmp_path: Path) -> None:
    # connect_read_pipe refuses regular files, so this exercises the reader-thread fallback.
    script = tmp_path / "in.jsonl"
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2024-11-05"}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "f"}},
        },
    ]
    script.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with script.open("rb") as stdin:
        client = await RawStdioClient.start(DEMO, stdin=stdin)
    try:
        await client.wait_stdout_closed(10)
        assert await client.wait_exit(5) == 0
    finally:
        await client.aclose()
    out = {m["id"]: m for m in client.unsolicited}
    assert out[1]["result"]["protocolVersion"] == "2024-11-05"
    assert text_of(out[2]["result"]) == "f"


# ---------------------------------------------------------------------- demo server


async def test_demo_server_tools(spawn: Spawn) -> None:
    client = await spawn(argv=DEMO)
    init = await client.initialize()
    assert init["serverInfo"] == {"name": "demo", "version": sentinel_gw.__version__}
    assert "instructions" in init
    tools = {t["name"]: t for t in (await client.call("tools/list"))["tools"]}
    assert set(tools) == {"echo", "add", "word_count", "current_time", "countdown", "delete_everything"}
    assert tools["delete_everything"]["annotations"]["destructiveHint"] is True
    assert tools["current_time"]["annotations"]["readOnlyHint"] is True
    assert "outputSchema" in tools["add"]

    assert text_of(await client.call_tool("echo", {"message": "hi"})) == "hi"
    added = await client.call_tool("add", {"a": 3, "b": 4})
    assert (text_of(added), added["structuredContent"]) == ("7", {"sum": 7})
    counted = await client.call_tool("word_count", {"text": "one two\nthree"})
    assert counted["structuredContent"] == {"words": 3, "lines": 2, "characters": 13}
    assert "T" in text_of(await client.call_tool("current_time"))
    assert "pretend deletion" in text_of(await client.call_tool("delete_everything"))
    assert (await client.call_tool("countdown", {"seconds": 11}))["isError"] is True

    result = await client.call_tool("countdown", {"seconds": 3}, _meta={"progressToken": 7})
    assert "3" in text_of(result)
    progress = [n["params"] for n in client.drain_notifications() if n["method"] == "notifications/progress"]
    assert [(p["progressToken"], p["progress"], p["total"]) for p in progress] == [
        (7, 1, 3),
        (7, 2, 3),
        (7, 3, 3),
    ]


async def test_demo_server_resources_prompts_completion(spawn: Spawn) -> None:
    client = await spawn(argv=[*DEMO, "--name", "second"])
    assert (await client.initialize())["serverInfo"]["name"] == "second"
    resources = (await client.call("resources/list"))["resources"]
    assert [(r["uri"], r["mimeType"]) for r in resources] == [("demo://second/readme", "text/markdown")]
    readme = (await client.call("resources/read", {"uri": "demo://second/readme"}))["contents"][0]
    assert "sentinel-gw" in readme["text"]
    templates = (await client.call("resources/templates/list"))["resourceTemplates"]
    assert [t["uriTemplate"] for t in templates] == ["demo://second/notes/{topic}"]
    note = (await client.call("resources/read", {"uri": "demo://second/notes/rbac"}))["contents"][0]
    assert note["text"].startswith("# rbac")
    missing = await client.request("resources/read", {"uri": "demo://second/notes/unknown"})
    assert missing["error"]["code"] == -32002
    assert (await client.request("resources/read", {"uri": "demo://demo/readme"}))["error"]["code"] == -32002

    prompt = await client.call("prompts/get", {"name": "summarize", "arguments": {"text": "long text"}})
    assert "long text" in prompt["messages"][0]["content"]["text"]
    assert (await client.request("prompts/get", {"name": "summarize", "arguments": {}}))["error"][
        "code"
    ] == -32602

    ref = {"type": "ref/resource", "uri": "demo://second/notes/{topic}"}
    values = await client.call(
        "completion/complete", {"ref": ref, "argument": {"name": "topic", "value": "r"}}
    )
    assert values["completion"]["values"] == ["ratelimit", "rbac"]
    everything = await client.call(
        "completion/complete", {"ref": ref, "argument": {"name": "topic", "value": ""}}
    )
    assert len(everything["completion"]["values"]) >= 4


async def test_demo_server_rejects_bad_name() -> None:
    proc = subprocess.run([*DEMO, "--name", "bad name"], capture_output=True, timeout=30, check=False)
    assert proc.returncode == 2 and b"--name" in proc.stderr


async def test_demo_server_exits_on_eof(spawn: Spawn) -> None:
    client = await spawn(argv=DEMO)
    await client.initialize()
    await client.close_stdin()
    assert await client.wait_exit(5) == 0


async def test_demo_server_runs_from_a_zip(spawn: Spawn, tmp_path: Path) -> None:
    # `sentinel-gw demo` must work from a zipapp: the demo may only need in-package modules.
    package = Path(sentinel_gw.__file__).parent
    archive = tmp_path / "sentinel.pyz"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("__init__.py", "miniserver.py", "demo_server.py"):
            zf.write(package / name, f"sentinel_gw/{name}")
    # -S skips site-packages (and with it the editable install), so only the zip can provide the package.
    argv = [sys.executable, "-S", "-m", "sentinel_gw.demo_server"]
    env = {"PYTHONPATH": str(archive)}
    where = subprocess.run(
        [sys.executable, "-S", "-c", "import sentinel_gw.demo_server as m; print(m.__file__)"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert where.stdout.startswith(str(archive))
    client = await spawn(argv=argv, env=env, cwd=tmp_path)
    await client.initialize()
    assert text_of(await client.call_tool("echo", {"message": "zipped"})) == "zipped"


# ---------------------------------------------------------------------- echo server (benchmarks)


async def test_echo_server(spawn: Spawn) -> None:
    client = await spawn(argv=[sys.executable, ECHO_SERVER])
    assert (await client.initialize("2025-03-26"))["protocolVersion"] == "2025-03-26"
    assert await client.call("ping") == {}
    tools = (await client.call("tools/list"))["tools"]
    assert [t["name"] for t in tools] == ["echo"]
    assert text_of(await client.call_tool("echo", {"message": "bench"})) == "bench"
    assert (await client.request("tools/call", {"name": "nope"}))["error"]["code"] == -32602
    assert (await client.request("resources/list"))["error"]["code"] == -32601
    await client.close_stdin()
    assert await client.wait_exit(5) == 0


# ---------------------------------------------------------------------- official SDK client


async def test_official_sdk_client_talks_to_demo_server() -> None:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "sentinel_gw.demo_server"])

    async def session() -> None:
        async with Client(params, mode="legacy") as client:
            tools = await client.list_tools()
            assert "echo" in {tool.name for tool in tools.tools}
            result = await client.call_tool("echo", {"message": "hi"})
            assert result.content[0].text == "hi"
            added = await client.call_tool("add", {"a": 1, "b": 2})
            assert added.structured_content == {"sum": 3}
            readme = await client.read_resource("demo://demo/readme")
            assert "sentinel-gw" in readme.contents[0].text

    await asyncio.wait_for(session(), 60)
