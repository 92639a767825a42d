"""HttpBackend against real loopback HTTP servers: tests/servers/http_server.py in-process (with
fault knobs), plus one run against the official `mcp` SDK's Streamable HTTP server.

No timing assertions: timeouts are short, every wait is bounded by a generous outer limit."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sentinel_gw.backends.base import BackendError, BackendState, Caller
from sentinel_gw.backends.http import HttpBackend
from sentinel_gw.config_schema import BackendConfig, BreakerConfig
from sentinel_gw.protocol import jsonrpc
from tests.servers.http_server import SECRET_BODY, HttpMcpServer, Options

ROOT = Path(__file__).resolve().parents[2]
BOUND = 10.0  # outer bound for anything that should happen "soon"


class FakeEvents:
    def __init__(self) -> None:
        self.ready: list[str] = []
        self.down: list[str] = []
        self.notifications: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.callers: list[tuple[str, Caller | None]] = []  # what the backend named as the asker
        self.caps: dict[str, Any] = {"sampling": {}}

    def backend_ready(self, backend: Any) -> None:
        self.ready.append(backend.name)

    def backend_down(self, backend: Any, reason: str) -> None:
        self.down.append(reason)

    def backend_notification(
        self, backend: Any, method: str, params: dict[str, Any], caller: Caller | None = None
    ) -> None:
        self.notifications.append((method, params))
        self.callers.append((method, caller))

    async def backend_request(
        self, backend: Any, method: str, params: dict[str, Any], caller: Caller | None = None
    ) -> dict[str, Any]:
        self.requests.append((method, params))
        self.callers.append((method, caller))
        return {"role": "assistant", "content": {"type": "text", "text": "from client"}, "model": "m"}

    async def upstream_capabilities(self) -> dict[str, Any]:
        return dict(self.caps)


async def eventually(predicate: Callable[[], bool], timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def make_cfg(url: str, **kw: Any) -> BackendConfig:
    base: dict[str, Any] = {
        "name": "h",
        "type": "http",
        "url": url,
        "timeout_secs": 5.0,
        "startup_timeout_secs": 5.0,
        "connect_timeout_secs": 2.0,
        "health_interval_secs": 0.0,
    }
    base.update(kw)
    return BackendConfig(**base)


ServerFactory = Callable[..., Awaitable[HttpMcpServer]]
BackendFactory = Callable[..., Awaitable[tuple[HttpBackend, FakeEvents]]]


@pytest.fixture
async def server() -> AsyncIterator[ServerFactory]:
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
async def backend() -> AsyncIterator[BackendFactory]:
    started: list[HttpBackend] = []

    async def make(
        url: str,
        *,
        environ: dict[str, str] | None = None,
        wait: bool = True,
        max_message_bytes: int = 4 * 1024 * 1024,
        **kw: Any,
    ) -> tuple[HttpBackend, FakeEvents]:
        events = FakeEvents()
        b = HttpBackend(
            make_cfg(url, **kw), events, environ=environ or {}, max_message_bytes=max_message_bytes
        )
        await b.start()
        started.append(b)
        if wait:
            assert await b.wait_ready(BOUND), b.last_error
        return b, events

    yield make
    for b in started:
        await asyncio.wait_for(b.stop(), BOUND)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def text(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bounded(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, BOUND)


# ---------------------------------------------------------------------------------------------
# Streamable HTTP basics


async def test_sse_answers_session_and_headers(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server()
    b, _ = await backend(
        srv.url,
        headers={"X-Tenant": "acme"},
        headers_from_env={"Authorization": "BACKEND_TOKEN"},
        environ={"BACKEND_TOKEN": "Bearer s3cret"},
    )
    assert (b.transport, b.state, b.pid, b.protocol_version) == (
        "streamable",
        BackendState.READY,
        None,
        "2025-11-25",
    )
    assert b.server_info["name"] == "http-test" and "tools" in b.capabilities
    assert b.session_id and b.ready and b.health == "healthy"
    assert text(await bounded(b.request("tools/call", call("echo", message="hi")))) == "hi"

    (init, init_headers), *rest = srv.messages
    assert init["method"] == "initialize" and init["params"]["capabilities"] == {"sampling": {}}
    assert "mcp-session-id" not in init_headers and "mcp-protocol-version" not in init_headers
    methods = [m.get("method") for m, _ in rest]
    assert methods == ["notifications/initialized", "tools/call"]
    for _, headers in srv.messages:
        assert headers["accept"] == "application/json, text/event-stream"
        assert headers["content-type"] == "application/json"
        assert headers["authorization"] == "Bearer s3cret" and headers["x-tenant"] == "acme"
    for _, headers in rest:
        assert headers["mcp-session-id"] == b.session_id
        assert headers["mcp-protocol-version"] == "2025-11-25"


async def test_json_answers_and_priming_events(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server(json_response=True)
    b, _ = await backend(srv.url)
    tools = await bounded(b.request("tools/list", {}))
    assert {t["name"] for t in tools["tools"]} >= {"echo", "record", "progress"}
    assert text(await bounded(b.request("tools/call", call("echo", message="j")))) == "j"

    srv2 = await server(priming=True, sessions=False)
    b2, _ = await backend(srv2.url)
    assert b2.session_id is None
    assert text(await bounded(b2.request("tools/call", call("echo", message="p")))) == "p"
    assert all("mcp-session-id" not in h for _, h in srv2.messages)


async def test_progress_and_notifications_before_the_result(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server()
    b, events = await backend(srv.url)
    seen: list[dict[str, Any]] = []
    params = {**call("progress", steps=3), "_meta": {"progressToken": "client-token"}}
    result = await bounded(b.request("tools/call", params, on_progress=seen.append))
    assert text(result) == "done"
    assert [p["progress"] for p in seen] == [1, 2, 3]  # the regression to 1 was dropped
    sent = next(m for m, _ in srv.messages if m.get("method") == "tools/call")
    assert sent["params"]["_meta"]["progressToken"] != "client-token"  # never forwarded
    assert [m for m, _ in events.notifications] == [
        "notifications/message",
        "notifications/tools/list_changed",
    ]


async def test_what_comes_on_a_post_stream_names_that_requests_caller(
    server: ServerFactory, backend: BackendFactory
) -> None:
    # Two callers at once: the log line and the question each came on one request's own stream,
    # and the backend hands back that request's caller (the gateway routes by it); the GET
    # stream's messages and a call without a caller name nobody.
    srv = await server()
    b, events = await backend(srv.url)
    alice, bob = Caller("alice-session", 7), Caller("bob-session", 7)
    logged, sampled = await bounded(
        asyncio.gather(
            b.request("tools/call", call("progress", steps=1), caller=alice),
            b.request("tools/call", call("sample"), caller=bob),
        )
    )
    assert text(logged) == "done" and text(sampled) == "sampled: from client"
    assert ("notifications/message", alice) in events.callers
    assert ("notifications/tools/list_changed", alice) in events.callers
    assert ("sampling/createMessage", bob) in events.callers
    assert len(events.callers) == 3
    await bounded(b.request("tools/call", call("progress", steps=1)))
    assert events.callers[3:] == [("notifications/message", None), ("notifications/tools/list_changed", None)]


async def test_server_request_on_the_post_stream_is_routed_and_answered(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server()
    b, events = await backend(srv.url)
    result = await bounded(b.request("tools/call", call("sample")))
    assert text(result) == "sampled: from client"
    assert events.requests and events.requests[0][0] == "sampling/createMessage"
    assert len(srv.client_responses) == 1 and "result" in srv.client_responses[0]
    answer_headers = next(h for m, h in srv.messages if "method" not in m)
    assert answer_headers["mcp-session-id"] == b.session_id


async def test_get_stream_notifications_and_reconnect_with_last_event_id(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server(get_retry_ms=50, drop_get_after=1)
    b, events = await backend(srv.url)
    await eventually(lambda: any(s.get_queue is not None for s in srv.sessions.values()))
    assert srv.get_requests[0]["accept"] == "text/event-stream"
    assert srv.get_requests[0]["mcp-session-id"] == b.session_id
    srv.broadcast("notifications/resources/updated", {"uri": "test://x"})
    await eventually(lambda: ("notifications/resources/updated", {"uri": "test://x"}) in events.notifications)
    # The server closed the stream after one event; the client comes back and says where it was.
    await eventually(lambda: len(srv.get_requests) >= 2)
    assert srv.get_requests[1].get("last-event-id", "").startswith("g")
    await eventually(lambda: any(s.get_queue is not None for s in srv.sessions.values()))
    srv.broadcast("notifications/prompts/list_changed")
    await eventually(lambda: any(m == "notifications/prompts/list_changed" for m, _ in events.notifications))


async def test_get_405_means_no_stream(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server(get_stream=False)
    b, _ = await backend(srv.url)
    await eventually(lambda: len(srv.get_requests) == 1)
    await asyncio.sleep(0.3)
    assert len(srv.get_requests) == 1  # 405 is an answer, not a failure to retry
    assert text(await bounded(b.request("tools/call", call("echo", message="x")))) == "x"


async def test_sse_polling_resumes_with_last_event_id(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server(poll=True)
    b, events = await backend(srv.url)
    seen: list[dict[str, Any]] = []
    params = {**call("progress", steps=3), "_meta": {"progressToken": "tok"}}
    assert text(await bounded(b.request("tools/call", params, on_progress=seen.append))) == "done"
    assert [p["progress"] for p in seen] == [1, 2, 3]
    assert len(events.notifications) == 2
    assert len(srv.resumes) >= 6 and srv.resumes[0].endswith("-0")
    assert text(await bounded(b.request("tools/call", call("record", call_id="poll")))) == "executed 1"
    assert srv.received["poll"] == 1  # resuming a stream is not re-sending the request


# ---------------------------------------------------------------------------------------------
# Sessions


async def test_expired_session_reinitializes_and_repeats_a_safe_request(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server()
    b, events = await backend(srv.url)
    old = b.session_id
    srv.expire_sessions()
    tools = await bounded(b.request("tools/list", {}))
    assert tools["tools"]
    assert srv.initializes == 2 and b.restarts == 1 and b.session_id != old
    assert events.ready == ["h", "h"]  # lists and subscriptions are set up again on the new session
    assert [m.get("method") for m, _ in srv.messages].count("tools/list") == 2


async def test_expired_session_never_repeats_a_tool_call(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server()
    b, _ = await backend(srv.url)
    srv.expire_sessions()
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/call", call("record", call_id="s1")))
    assert info.value.reason == "session_expired"
    assert "not repeated" in info.value.message
    assert srv.received["s1"] == 0 and srv.executed["s1"] == 0
    # The new session is in place for what comes next.
    assert text(await bounded(b.request("tools/call", call("record", call_id="s2")))) == "executed 1"
    assert srv.initializes == 2


async def test_delete_on_stop(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server()
    b, _ = await backend(srv.url)
    sid = b.session_id
    await bounded(b.stop())
    assert srv.deletes == [sid]
    assert b.state is BackendState.STOPPED and b.health == "stopped"
    with pytest.raises(BackendError) as info:
        await b.request("ping", None)
    assert info.value.reason == "unavailable"


# ---------------------------------------------------------------------------------------------
# Faults


async def test_connection_refused(backend: BackendFactory) -> None:
    b, _ = await backend(f"http://127.0.0.1:{free_port()}/mcp", wait=False)
    assert not await b.wait_ready(0.5)
    await eventually(lambda: b.last_error.startswith("start failed"))
    assert b.state is BackendState.STARTING
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/list", {}))
    assert info.value.reason == "unavailable" and info.value.code == jsonrpc.BACKEND_UNAVAILABLE


async def test_backend_going_away_gives_a_clean_error(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server()
    b, _ = await backend(srv.url, retries=2)
    await srv.stop()
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/call", call("record", call_id="gone")))
    assert info.value.reason == "unavailable"
    assert "127.0.0.1" not in info.value.message and str(srv.port) not in info.value.message


async def test_reset_mid_sse_never_repeats_a_tool_call(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server(drop_mid_sse=1)
    b, _ = await backend(srv.url, retries=3)
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/call", call("record", call_id="r1")))
    assert info.value.reason in ("unavailable", "bad_response")
    assert srv.received["r1"] == 1 and srv.executed["r1"] == 1  # ran once, answer lost, not re-sent


async def test_reset_mid_sse_repeats_a_safe_request(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server(drop_mid_sse=1)
    b, _ = await backend(srv.url)
    assert (await bounded(b.request("tools/list", {})))["tools"]
    assert srv.methods().count("tools/list") == 2


async def test_idempotent_tools_are_retried(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server(fail=[503])
    b, _ = await backend(srv.url, retries=2, idempotent_tools=("record",))
    assert text(await bounded(b.request("tools/call", call("record", call_id="i1")))) == "executed 1"
    assert srv.received["i1"] == 2  # 503, then the repeat
    srv.opts.drop_mid_sse = 1
    assert text(await bounded(b.request("tools/call", call("record", call_id="i2")))) == "executed 2"
    assert srv.received["i2"] == 2  # opted in: repeated after the connection reset


async def test_5xx_is_not_leaked_and_tool_calls_are_not_repeated(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server(fail=[502])
    b, _ = await backend(srv.url, retries=3)
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/call", call("record", call_id="f1")))
    err = info.value
    assert err.message == "HTTP 502 from backend 'h'"
    assert err.data["status"] == 502 and err.reason == "http_error"
    assert "secret" not in repr(err.to_error()) and SECRET_BODY.decode() not in b.last_error
    assert srv.received["f1"] == 1


async def test_5xx_on_a_safe_request_is_retried(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server(fail=[500, 503])
    b, _ = await backend(srv.url, retries=2)
    assert (await bounded(b.request("tools/list", {})))["tools"]
    assert srv.methods().count("tools/list") == 3


async def test_idempotent_hint_needs_opt_in(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server()
    plain, _ = await backend(srv.url, retries=1)
    await bounded(plain.request("tools/list", {}))
    srv.opts.fail = [503]
    with pytest.raises(BackendError):
        await bounded(plain.request("tools/call", call("echo", message="a")))
    trusting, _ = await backend(srv.url, retries=1, retry_idempotent_hint=True)
    await bounded(trusting.request("tools/list", {}))  # learns echo's readOnlyHint
    srv.opts.fail = [503]
    assert text(await bounded(trusting.request("tools/call", call("echo", message="b")))) == "b"


async def test_breaker_opens_on_5xx_burst_and_a_probe_closes_it(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server(fail=[500, 502, 503])
    b, events = await backend(
        srv.url, retries=0, breaker=BreakerConfig(failure_threshold=3, cooldown_secs=0.3)
    )
    for _ in range(3):
        with pytest.raises(BackendError) as info:
            await bounded(b.request("tools/list", {}))
        assert info.value.reason == "http_error"
    assert not b.ready and events.down == ["circuit_open"]
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/list", {}))
    err = info.value
    assert (err.reason, err.code) == ("circuit_open", jsonrpc.CIRCUIT_OPEN)
    assert err.data["retry_after_ms"] >= 1
    assert srv.methods().count("tools/list") == 3  # failing fast: nothing sent
    await eventually(lambda: b.ready)  # the recovery probe (ping) succeeded
    assert events.ready == ["h", "h"]
    assert "ping" in srv.methods()
    assert (await bounded(b.request("tools/list", {})))["tools"]


async def test_error_replies_and_tool_errors_do_not_trip_the_breaker(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server()
    b, _ = await backend(srv.url, breaker=BreakerConfig(failure_threshold=1))
    for _ in range(3):
        with pytest.raises(jsonrpc.JsonRpcError) as info:
            await bounded(b.request("tools/call", call("no-such-tool")))
        assert not isinstance(info.value, BackendError)
        result = await bounded(b.request("tools/call", call("boom")))
        assert result["isError"] is True
    assert b.ready and b.breaker.state == "closed"


async def test_malformed_sse(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server(malformed_sse=1, fault_methods={"tools/call"})
    b, _ = await backend(srv.url)
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/call", call("echo", message="m")))
    assert info.value.reason == "bad_response"
    assert text(await bounded(b.request("tools/call", call("echo", message="ok")))) == "ok"


async def test_oversized_body(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server(oversized=1, oversized_bytes=200_000, fault_methods={"tools/call"})
    b, _ = await backend(srv.url, max_message_bytes=64 * 1024)
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/call", call("echo", message="big")))
    assert info.value.reason == "too_large"
    assert srv.methods().count("tools/call") == 1
    assert text(await bounded(b.request("tools/call", call("echo", message="small")))) == "small"


async def test_a_server_that_never_answers_times_out_and_is_cancelled_upstream(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server(never_answer=1, fault_methods={"tools/call"})
    b, _ = await backend(srv.url, retries=2, idempotent_tools=("echo",))
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/call", call("echo", message="?"), timeout=0.3))
    assert (info.value.reason, info.value.code) == ("timeout", jsonrpc.REQUEST_TIMEOUT)
    sent = next(m for m, _ in srv.messages if m.get("method") == "tools/call")
    await eventually(lambda: sent["id"] in srv.cancelled)
    assert srv.methods().count("tools/call") == 1  # a timeout is never retried


async def test_slow_headers_time_out(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server(slow_headers=3.0, slow_headers_count=1, fault_methods={"tools/list"})
    b, _ = await backend(srv.url)
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/list", {}, timeout=0.3))
    assert info.value.reason == "timeout"


async def test_client_cancellation_is_sent_upstream(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server()
    b, _ = await backend(srv.url)
    task = asyncio.ensure_future(b.request("tools/call", call("hang", call_id="h1")))
    await eventually(lambda: srv.received["h1"] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: srv.cancelled_tools == ["h1"])
    assert b.in_flight() == 0


async def test_progress_extends_the_idle_timeout_up_to_the_hard_cap(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server()
    b, _ = await backend(srv.url, max_timeout_secs=600.0)
    params = {**call("progress", steps=6, delay=0.1), "_meta": {"progressToken": 1}}
    result = await bounded(b.request("tools/call", params, timeout=0.5, on_progress=lambda p: None))
    assert text(result) == "done"  # 0.6 s of work, never 0.5 s without progress

    capped, _ = await backend(srv.url, max_timeout_secs=0.4)
    params = {**call("progress", steps=50, delay=0.05), "_meta": {"progressToken": 2}}
    with pytest.raises(BackendError) as info:
        await bounded(capped.request("tools/call", params, timeout=0.3, on_progress=lambda p: None))
    assert info.value.reason == "timeout"


def slow_user(events: FakeEvents, delay: float) -> None:
    """The client's user takes `delay` s to answer the server's questions (recorded when asked)."""
    answer = events.backend_request

    async def slowly(
        backend: Any, method: str, params: dict[str, Any], caller: Caller | None = None
    ) -> dict[str, Any]:
        result = await answer(backend, method, params, caller)
        await asyncio.sleep(delay)
        return result

    events.backend_request = slowly  # type: ignore[method-assign]


async def test_open_question_suspends_the_idle_timeout(
    server: ServerFactory, backend: BackendFactory
) -> None:
    # The server waits for the user's answer longer than timeout_secs: not a timeout.
    srv = await server()
    b, events = await backend(srv.url, timeout_secs=0.5, max_timeout_secs=30.0)
    slow_user(events, 1.5)
    assert text(await bounded(b.request("tools/call", call("sample")))) == "sampled: from client"
    assert [m for m, _ in events.requests] == ["sampling/createMessage"]

    # Once answered, the idle timeout runs again: a silent server times out long before 20 s.
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/call", call("sample", then_sleep=20)))
    assert info.value.reason == "timeout"
    assert len(events.requests) == 2

    # A question never answered still ends at the hard cap.
    capped, events = await backend(srv.url, timeout_secs=0.5, max_timeout_secs=1.5)
    slow_user(events, 60)
    with pytest.raises(BackendError) as info:
        await bounded(capped.request("tools/call", call("sample")))
    assert info.value.reason == "timeout"
    assert [m for m, _ in events.requests] == ["sampling/createMessage"]


async def test_tool_timeouts_apply_per_tool(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server()
    b, _ = await backend(srv.url, tool_timeouts={"hang": 0.2})
    with pytest.raises(BackendError) as info:
        await bounded(b.request("tools/call", call("hang", call_id="t1")))
    assert info.value.reason == "timeout" and "0.2 s" in info.value.message
    await eventually(lambda: srv.cancelled_tools == ["t1"])


async def test_missing_header_secret_gives_up(backend: BackendFactory) -> None:
    b, events = await backend(
        "http://127.0.0.1:9/mcp", wait=False, headers_from_env={"Authorization": "NOT_SET_ANYWHERE"}
    )
    await eventually(lambda: b.state is BackendState.FAILED)
    assert events.down == ["gave_up"] and "NOT_SET_ANYWHERE" in b.last_error
    assert not await b.wait_ready(0.1)


async def test_health_pings(server: ServerFactory, backend: BackendFactory) -> None:
    srv = await server()
    b, _ = await backend(srv.url, health_interval_secs=0.1)
    await eventually(lambda: srv.methods().count("ping") >= 2)
    assert b.health == "healthy"
    await srv.stop()
    await eventually(lambda: b.health == "unhealthy")


# ---------------------------------------------------------------------------------------------
# Legacy HTTP+SSE (2024-11-05)


@pytest.mark.parametrize("transport", ["sse", "auto"])
async def test_legacy_http_sse(server: ServerFactory, backend: BackendFactory, transport: str) -> None:
    srv = await server(legacy_sse=True)
    b, events = await backend(srv.url, transport=transport)
    assert b.transport == "sse" and b.session_id is None
    assert text(await bounded(b.request("tools/call", call("echo", message="old")))) == "old"
    seen: list[dict[str, Any]] = []
    params = {**call("progress", steps=2), "_meta": {"progressToken": "t"}}
    assert text(await bounded(b.request("tools/call", params, on_progress=seen.append))) == "done"
    assert [p["progress"] for p in seen] == [1, 2]
    assert text(await bounded(b.request("tools/call", call("sample")))) == "sampled: from client"
    srv.broadcast("notifications/tools/list_changed")
    await eventually(lambda: any(m == "notifications/tools/list_changed" for m, _ in events.notifications))
    assert all("mcp-session-id" not in h for _, h in srv.messages)


async def test_legacy_stream_loss_fails_pending_and_reconnects(
    server: ServerFactory, backend: BackendFactory
) -> None:
    srv = await server(legacy_sse=True)
    b, events = await backend(srv.url, transport="sse")
    task = asyncio.ensure_future(b.request("tools/call", call("hang", call_id="L1")))
    await eventually(lambda: srv.received["L1"] == 1)
    for session in list(srv.sessions.values()):
        assert session.legacy_queue is not None
        session.legacy_queue.put_nowait(None)  # the server ends the GET stream
    with pytest.raises(BackendError) as info:
        await bounded(task)
    assert info.value.reason == "unavailable"
    assert srv.received["L1"] == 1
    await eventually(lambda: events.ready == ["h", "h"])
    assert events.down == ["crashed"] and b.restarts == 1
    assert text(await bounded(b.request("tools/call", call("echo", message="back")))) == "back"


# ---------------------------------------------------------------------------------------------
# Interoperability: the official MCP Python SDK as the backend

SDK_SERVER = textwrap.dedent(
    """
    import sys
    from mcp.server.mcpserver import MCPServer, Context

    server = MCPServer("sdk-backend")

    @server.tool()
    def add(a: int, b: int) -> int:
        '''Add two numbers.'''
        return a + b

    @server.tool()
    async def steps(n: int, ctx: Context) -> str:
        '''Report progress n times.'''
        for i in range(n):
            await ctx.report_progress(i + 1, n)
        return "stepped"

    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]), stateless_http=False)
    """
)


async def test_interop_with_the_official_sdk_server(backend: BackendFactory, tmp_path: Path) -> None:
    pytest.importorskip("mcp.server.mcpserver")
    pytest.importorskip("uvicorn")
    script = tmp_path / "sdk_server.py"
    script.write_text(SDK_SERVER)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log_path = tmp_path / "sdk_server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(port)], env=env, stdout=subprocess.DEVNULL, stderr=log_file
        )
    try:
        b, _ = await backend(f"http://127.0.0.1:{port}/mcp", wait=False, startup_timeout_secs=5.0)
        if not await b.wait_ready(30):
            pytest.fail(f"SDK server never became ready: {b.last_error}\n{log_path.read_text()[-2000:]}")
        assert b.transport == "streamable" and b.session_id
        assert b.protocol_version in ("2025-11-25", "2025-06-18", "2025-03-26")
        tools = await bounded(b.request("tools/list", {}))
        assert {t["name"] for t in tools["tools"]} >= {"add", "steps"}
        result = await bounded(b.request("tools/call", call("add", a=2, b=3)))
        assert text(result) == "5"
        seen: list[dict[str, Any]] = []
        params = {**call("steps", n=3), "_meta": {"progressToken": "p"}}
        result = await bounded(b.request("tools/call", params, on_progress=seen.append))
        assert text(result) == "stepped" and [p["progress"] for p in seen] == [1, 2, 3]
        assert await bounded(b.request("ping", None)) == {}
        try:  # SDK versions differ: an isError result or a JSON-RPC error, never a transport error
            assert (await bounded(b.request("tools/call", call("nope"))))["isError"] is True
        except BackendError:
            raise
        except jsonrpc.JsonRpcError:
            pass
        assert b.breaker.state == "closed"
        await bounded(b.stop())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
