"""The admin endpoint over real loopback sockets: routes, readiness, token, hardening, port clash."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sentinel_gw.backends.base import BackendState
from sentinel_gw.httpwire import Headers, parse_response_head
from sentinel_gw.observe import CallRecord
from sentinel_gw.ops.admin import AdminServer, parse_listen
from sentinel_gw.ops.metrics import Metrics, create_metrics

TOKEN = "s3cret-admin-token"
GUARD = 20.0  # hang guard for reads; never a timing assertion


class FakeBackend:
    def __init__(self, state: str = "ready", *, restarts: int = 0) -> None:
        self.state = BackendState(state)
        self.restarts = restarts

    @property
    def ready(self) -> bool:
        return self.state is BackendState.READY

    def in_flight(self) -> int:
        return 0


class FakeGateway:
    def __init__(self, **states: str) -> None:
        self.backends = {name: FakeBackend(state) for name, state in states.items()}
        self.sessions: set[object] = set()

    def status(self) -> dict[str, Any]:
        return {
            name: {"state": b.state.value, "restarts": b.restarts, "in_flight": b.in_flight()}
            for name, b in self.backends.items()
        }


class Response:
    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def parse(raw: bytes) -> Response:
    head = parse_response_head(raw)
    assert head is not None, raw
    return Response(head.status, head.headers, raw[head.head_bytes :])


async def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), GUARD)
    finally:
        writer.close()


async def get(
    port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> Response:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return parse(await exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode()))


ServerFactory = Callable[..., Any]


@asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[AdminServer]:
    kwargs.setdefault("token", None)
    kwargs.setdefault("gateway", FakeGateway(files="ready"))
    kwargs.setdefault("metrics", create_metrics(True))
    server = AdminServer("127.0.0.1:0", **kwargs)
    assert await server.start()
    try:
        yield server
    finally:
        await server.stop()


def port_of(server: AdminServer) -> int:
    assert server.address is not None
    return server.address[1]


# --- routes -----------------------------------------------------------------------------------------


async def test_health_is_liveness() -> None:
    async with running(gateway=FakeGateway(files="failed")) as server:
        r = await get(port_of(server), "/health")
        assert r.status == 200
        assert r.json() == {"status": "ok"}
        assert r.headers.get("content-type") == "application/json"
        assert r.headers.get("connection") == "close"
        head = await get(port_of(server), "/health", method="HEAD")
        assert head.status == 200
        assert head.body == b""
        assert head.headers.get("content-length") == str(len(r.body))


async def test_ready_when_every_enabled_backend_is_ready() -> None:
    gw = FakeGateway(files="ready", web="ready", old="disabled")
    async with running(gateway=gw) as server:
        r = await get(port_of(server), "/ready")
        assert r.status == 200
        assert r.json()["status"] == "ready"
        assert r.json()["backends"] == {"files": "ready", "web": "ready", "old": "disabled"}

        # One of two down is not ready (the original said ready if any one was healthy).
        gw.backends["web"].state = BackendState.RESTARTING
        r = await get(port_of(server), "/ready")
        assert r.status == 503
        body = r.json()
        assert body["status"] == "not_ready"
        assert body["backends"]["web"] == "restarting"
        assert body["backends"]["files"] == "ready"

        gw.backends["web"].state = BackendState.READY
        assert (await get(port_of(server), "/ready")).status == 200


async def test_ready_with_an_explicit_required_list() -> None:
    gw = FakeGateway(files="ready", web="failed")
    async with running(gateway=gw, required_backends=["files"]) as server:
        assert (await get(port_of(server), "/ready")).status == 200
    async with running(gateway=gw, required_backends=["files", "ghost"]) as server:
        r = await get(port_of(server), "/ready")
        assert r.status == 503
        assert r.json()["backends"]["ghost"] == "missing"
    async with running(gateway=gw, required_backends=[]) as server:
        assert (await get(port_of(server), "/ready")).status == 200


async def test_ready_without_backends_is_not_ready() -> None:
    async with running(gateway=FakeGateway()) as server:
        r = await get(port_of(server), "/ready")
        assert r.status == 503
        assert r.json()["status"] == "not_ready"
    async with running(gateway=FakeGateway(old="disabled")) as server:
        assert (await get(port_of(server), "/ready")).status == 503


async def test_metrics_exposition() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    gw = FakeGateway(files="ready", web="restarting")
    metrics = create_metrics(True)
    metrics.call_finished(
        CallRecord(None, "tools/call", "files__read", 1, {}, 0.0, backend="files", status="success")  # type: ignore[arg-type]
    )
    async with running(gateway=gw, metrics=metrics) as server:
        r = await get(port_of(server), "/metrics?x=1")
        assert r.status == 200
        assert r.headers.get("content-type") == "text/plain; version=0.0.4; charset=utf-8"
        families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
        up = {s.labels["backend"]: s.value for s in families["sentinel_backend_up"].samples}
        assert up == {"files": 1.0, "web": 0.0}
        reqs = [s for s in families["sentinel_requests"].samples if s.name == "sentinel_requests_total"]
        assert [(s.labels["tool"], s.value) for s in reqs] == [("files__read", 1.0)]
        head = await get(port_of(server), "/metrics", method="HEAD")
        assert head.status == 200
        assert head.body == b""


async def test_metrics_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    metrics = create_metrics(True)
    async with running(metrics=metrics) as server:
        r = await get(port_of(server), "/metrics")
        assert r.status == 503
        assert r.body.decode().strip() == (
            "metrics need the 'metrics' extra: pip install 'sentinel-gw[metrics]'"
        )
        assert r.headers.get("content-type") == "text/plain; charset=utf-8"
        # Everything else works.
        assert (await get(port_of(server), "/health")).status == 200
        assert (await get(port_of(server), "/ready")).status == 200


async def test_metrics_disabled_says_so() -> None:
    async with running(metrics=Metrics()) as server:
        r = await get(port_of(server), "/metrics")
        assert r.status == 503
        assert b"disabled" in r.body


# --- token ------------------------------------------------------------------------------------------


async def test_token_guards_every_route_but_health() -> None:
    async with running(token=TOKEN) as server:
        port = port_of(server)
        for path in ("/metrics", "/ready"):
            r = await get(port, path)
            assert r.status == 401, path
            assert (r.headers.get("www-authenticate") or "").startswith("Bearer")
            assert TOKEN.encode() not in r.body

            wrong = await get(port, path, headers={"Authorization": "Bearer not-the-token"})
            assert wrong.status == 401
            assert "invalid_token" in (wrong.headers.get("www-authenticate") or "")
            prefix = await get(port, path, headers={"Authorization": f"Bearer {TOKEN[:-1]}"})
            assert prefix.status == 401
            longer = await get(port, path, headers={"Authorization": f"Bearer {TOKEN}x"})
            assert longer.status == 401
            basic = await get(port, path, headers={"Authorization": f"Basic {TOKEN}"})
            assert basic.status == 401

            ok = await get(port, path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status == 200, path
            lower = await get(port, path, headers={"Authorization": f"bearer {TOKEN}"})
            assert lower.status == 200

        # Two Authorization headers are refused, even if one is right.
        raw = (
            "GET /metrics HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\nAuthorization: Bearer nope\r\n\r\n"
        ).encode()
        assert parse(await exchange(port, raw)).status == 401

        assert (await get(port, "/health")).status == 200


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        AdminServer("127.0.0.1:0", token="", gateway=FakeGateway(), metrics=None)


# --- methods and paths ------------------------------------------------------------------------------


async def test_unknown_path_and_method() -> None:
    async with running() as server:
        port = port_of(server)
        assert (await get(port, "/")).status == 404
        assert (await get(port, "/metrics/extra")).status == 404
        assert (await get(port, "/admin")).status == 404
        r = await get(port, "/metrics", method="POST", headers={"Content-Length": "0"})
        assert r.status == 405
        assert r.headers.get("allow") == "GET, HEAD"
        assert (await get(port, "/health", method="DELETE")).status == 405


# --- hardening --------------------------------------------------------------------------------------


async def test_slowloris_is_cut_off() -> None:
    async with running(header_timeout=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        try:
            writer.write(b"GET /health HTTP/1.1\r\n")
            await writer.drain()

            async def trickle() -> None:
                for i in range(200):
                    writer.write(f"X-Slow-{i}: a\r\n".encode())
                    await writer.drain()
                    await asyncio.sleep(0.1)

            sender = asyncio.ensure_future(trickle())
            try:
                data = await asyncio.wait_for(reader.read(), GUARD)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        finally:
            writer.close()
        # The head never completed: the server answered 408 and closed instead of waiting.
        assert parse(data).status == 408


async def test_oversized_headers_get_431() -> None:
    async with running() as server:
        raw = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        r = parse(await exchange(port_of(server), raw))
        assert r.status == 431
        many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-H%d: %s\r\n" % (i, b"v" * 60) for i in range(200)
        )
        assert parse(await exchange(port_of(server), many + b"\r\n")).status == 431


async def test_request_smuggling_is_refused() -> None:
    async with running() as server:
        port = port_of(server)
        cl_te = (
            b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        assert parse(await exchange(port, cl_te)).status == 400
        two_cl = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n"
        assert parse(await exchange(port, two_cl)).status == 400
        folded = b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n"
        assert parse(await exchange(port, folded)).status == 400
        bare_lf = b"GET /health HTTP/1.1\nHost: x\n\n"
        assert parse(await exchange(port, bare_lf)).status == 400


async def test_request_bodies_are_refused() -> None:
    async with running() as server:
        port = port_of(server)
        body = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        assert parse(await exchange(port, body)).status == 413
        chunked = (
            b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        assert parse(await exchange(port, chunked)).status == 413
        empty = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        assert parse(await exchange(port, empty)).status == 200


async def test_connection_limit() -> None:
    async with running(max_connections=2, header_timeout=GUARD) as server:
        port = port_of(server)
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, w in idle:
            w.write(b"GET /health HTTP/1.1\r\n")  # never finished
            await w.drain()
        for _ in range(400):
            if len(server._tasks) >= 2:
                break
            await asyncio.sleep(0.01)
        assert len(server._tasks) == 2
        try:
            raw = await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert parse(raw).status == 503
        finally:
            for _, w in idle:
                w.close()
        # Slots come back once those connections are gone.
        for _ in range(400):
            if not server._tasks:
                break
            await asyncio.sleep(0.01)
        assert (await get(port, "/health")).status == 200


async def test_stop_closes_open_connections() -> None:
    server = AdminServer("127.0.0.1:0", token=None, gateway=FakeGateway(), metrics=None, header_timeout=GUARD)
    assert await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.write(b"GET /health HTTP/1.1\r\n")
    await writer.drain()
    for _ in range(400):
        if server._tasks:
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(server.stop(), GUARD)
    assert await asyncio.wait_for(reader.read(), GUARD) == b""
    writer.close()
    assert not server.serving
    await server.stop()  # idempotent


# --- binding ----------------------------------------------------------------------------------------


async def test_port_taken_returns_false(caplog: pytest.LogCaptureFixture) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        server = AdminServer(f"127.0.0.1:{port}", token=None, gateway=FakeGateway(), metrics=None)
        with caplog.at_level(logging.WARNING, logger="sentinel_gw.admin"):
            started = await server.start()
        assert started is False
        assert not server.serving
        assert server.address is None
        assert "MCP serving continues" in caplog.text
        assert str(port) in caplog.text
        await server.stop()  # harmless
    finally:
        holder.close()


async def test_second_gateway_on_the_same_port() -> None:
    async with running() as first:
        port = port_of(first)
        second = AdminServer(f"127.0.0.1:{port}", token=None, gateway=FakeGateway(), metrics=None)
        assert await second.start() is False
        assert (await get(port, "/health")).status == 200  # the first one is unaffected


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9201", ("127.0.0.1", 9201)),
        (":9201", ("127.0.0.1", 9201)),
        ("9201", ("127.0.0.1", 9201)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9201", ("::1", 9201)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["", "host", "host:", "host:99999", "::1:80", "[::1]", "a:b:c", "h:-1"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)
