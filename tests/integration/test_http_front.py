"""The Streamable HTTP front, over real loopback sockets, in front of a real gateway process
(`sentinel-gw serve --no-stdio`) and real backend processes."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel_gw.httpwire import HttpClient, Timeouts, parse_response_head
from tests.conftest import GATEWAY, backend, gateway_env, make_token, render_config
from tests.servers.http_server import HttpMcpServer, Options

GUARD = 15.0  # bounded waits: generous, never asserted on
ACCEPT = "application/json, text/event-stream"

POLICY = """
[auth]
mode = "jwt"
[rbac.roles.admin]
permissions = ["*"]
[rbac.roles.viewer]
permissions = ["tools.call"]
allow_tools = ["echo", "add"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    """`sentinel-gw serve --no-stdio` as a child process listening on a free loopback port."""

    def __init__(
        self,
        directory: Path,
        http: str,
        *,
        policy: str = POLICY,
        gateway: str = "",
        backends: list[dict[str, Any]] | None = None,
    ) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        extra = f'{policy}\n[gateway]\n{gateway}\n[http]\nlisten = "127.0.0.1:{self.port}"\n{http}\n'
        extra += f'[kill_switch]\nfile = "{directory / "kill.json"}"\n'
        self.config = directory / "sentinel.toml"
        self.config.write_text(render_config(backends or [backend("a")], extra, auth="jwt"))
        self.log = directory / "gateway.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [*GATEWAY, "serve", "--no-stdio", "--config", str(self.config)],
                env=gateway_env(directory),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.05)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(
        tmp_path_factory.mktemp("gw"),
        'allowed_origins = ["https://app.example.com"]\nsse_keepalive_secs = 0.3\n',
    )
    yield g
    assert g.stop() == 0, g.log.read_text()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Small limits: sessions, body size, header time, keep-alive ticks."""
    g = Gateway(
        tmp_path_factory.mktemp("tight"),
        "max_sessions = 10\nsession_idle_secs = 0.6\nheader_timeout_secs = 0.5\nsse_keepalive_secs = 0.2\n",
        gateway="max_message_bytes = 6000",
    )
    yield g
    assert g.stop() == 0, g.log.read_text()


ALICE = make_token("alice", ["admin"])
BOB = make_token("bob", ["admin"])
VERA = make_token("vera", ["viewer"])


class Reply:
    def __init__(self, status: int, headers: Any, messages: list[Any], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.messages = messages
        self.raw = raw

    @property
    def body(self) -> Any:
        return self.messages[-1] if self.messages else None


class Mcp:
    """A minimal handshake-era Streamable HTTP client for probing the front."""

    def __init__(self, client: HttpClient, url: str, token: str | None = ALICE) -> None:
        self.client = client
        self.url = url
        self.token = token
        self.sid: str | None = None
        self.version = "2025-11-25"
        self.next_id = 0

    def headers(self, extra: dict[str, str] | None = None, *, session: bool = True) -> list[tuple[str, str]]:
        h = [("Accept", ACCEPT), ("Content-Type", "application/json")]
        if self.token:
            h.append(("Authorization", f"Bearer {self.token}"))
        if session and self.sid:
            h += [("Mcp-Session-Id", self.sid), ("MCP-Protocol-Version", self.version)]
        for k, v in (extra or {}).items():
            h = [(a, b) for a, b in h if a.lower() != k.lower()]
            if v is not None:
                h.append((k, v))
        return h

    async def send(self, method: str, url: str | None = None, **kw: Any) -> Reply:
        resp = await self.client.request(
            method, url or self.url, timeouts=Timeouts(read=GUARD, total=GUARD), **kw
        )
        async with resp:
            ctype = resp.headers.get("content-type") or ""
            if ctype.startswith("text/event-stream"):
                messages = [json.loads(e.data) async for e in resp.sse() if e.data]
                return Reply(resp.status, resp.headers, messages, b"")
            raw = await resp.read()
            messages = [json.loads(raw)] if raw and ctype.startswith("application/json") else []
            return Reply(resp.status, resp.headers, messages, raw)

    async def post(self, message: Any, extra: dict[str, str] | None = None, *, session: bool = True) -> Reply:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        return await self.send("POST", headers=self.headers(extra, session=session), body=body)

    async def request(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Reply:
        self.next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        return await self.post(msg, **kw)

    async def initialize(
        self, version: str = "2025-11-25", capabilities: dict[str, Any] | None = None
    ) -> Reply:
        self.sid = None
        r = await self.request(
            "initialize",
            {"protocolVersion": version, "capabilities": capabilities or {}, "clientInfo": {"name": "probe"}},
        )
        assert r.status == 200, r.raw
        self.sid = r.headers.get("mcp-session-id")
        self.version = r.body["result"]["protocolVersion"]
        assert (await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})).status == 202
        return r

    async def delete(self) -> int:
        return (await self.send("DELETE", headers=self.headers())).status


@pytest.fixture
async def client() -> Any:
    c = HttpClient(max_connections=64)
    yield c
    await c.aclose()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes; everything the server sends until it closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), GUARD)
    finally:
        writer.close()


def status_of(data: bytes) -> int:
    head = parse_response_head(data)
    assert head is not None, data
    return head.status


# --- the official SDK ---------------------------------------------------------------------------


async def test_sdk_client_in_handshake_mode(gw: Gateway) -> None:
    import mcp_types as types
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {ALICE}"})
    async with http, Client(streamable_http_client(gw.url, http_client=http), mode="legacy") as sdk:
        assert sdk.server_info is not None and sdk.server_info.name == "sentinel-gw"
        names = {t.name for t in (await sdk.list_tools()).tools}
        assert {"echo", "slow", "sample"} <= names
        res = await sdk.call_tool("echo", {"message": "over http"})
        assert res.content[0].text == "over http"  # type: ignore[union-attr]
        res = await sdk.call_tool("slow", {"seconds": 0.2}, progress_callback=on_progress)
        assert progress and progress == sorted(progress)
        read = await sdk.read_resource("test://a/hello")
        assert read.contents[0].text == "hello from a"  # type: ignore[union-attr]
        got = await sdk.get_prompt("greet", {"name": "Grace"})
        assert "Grace" in got.messages[0].content.text  # type: ignore[union-attr]
        comp = await sdk.complete(
            types.PromptReference(type="ref/prompt", name="greet"), {"name": "name", "value": "a"}
        )
        assert comp.completion.values == ["alice"]
        results = await asyncio.gather(*(sdk.call_tool("add", {"a": i, "b": 1}) for i in range(10)))
        assert [r.structured_content["sum"] for r in results] == [i + 1 for i in range(10)]  # type: ignore[index]


# --- sessions -------------------------------------------------------------------------------------


async def test_concurrent_sessions_see_their_roles(gw: Gateway, client: HttpClient) -> None:
    async def one(i: int) -> tuple[str, set[str]]:
        token = ALICE if i % 2 else VERA
        m = Mcp(client, gw.url, token)
        await m.initialize()
        names = {t["name"] for t in (await m.request("tools/list")).body["result"]["tools"]}
        echo = await m.request("tools/call", {"name": "echo", "arguments": {"message": str(i)}})
        assert echo.body["result"]["content"][0]["text"] == str(i)
        assert await m.delete() == 204
        return token, names

    seen = await asyncio.gather(*(one(i) for i in range(20)))
    admin = [names for token, names in seen if token == ALICE]
    viewer = [names for token, names in seen if token == VERA]
    assert all(names == viewer[0] == {"echo", "add"} for names in viewer)
    assert all(names == admin[0] and {"slow", "sample", "echo"} <= names for names in admin)


async def test_session_is_bound_to_its_identity(gw: Gateway, client: HttpClient) -> None:
    alice = Mcp(client, gw.url, ALICE)
    await alice.initialize()
    bob = Mcp(client, gw.url, BOB)
    bob.sid, bob.version = alice.sid, alice.version
    r = await bob.request("tools/list")
    assert r.status == 404
    assert r.body["error"] == {"code": -32600, "message": "Session not found"}
    assert r.body["id"] == bob.next_id
    assert await bob.delete() == 404  # bob cannot end it either
    assert (await alice.request("tools/list")).status == 200

    r = await alice.request("tools/list", extra={"Mcp-Session-Id": None})
    assert r.status == 400
    r = await alice.request("tools/list", extra={"MCP-Protocol-Version": "2025-06-18"})
    assert r.status == 400
    r = await alice.request("tools/list", extra={"MCP-Protocol-Version": None})
    assert r.status == 200  # absent: the negotiated version is assumed
    assert await alice.delete() == 204


async def test_get_stream_carries_unrelated_messages(gw: Gateway, client: HttpClient) -> None:
    m = Mcp(client, gw.url)
    await m.initialize()
    headers = [(k, v) for k, v in m.headers() if k != "Content-Type"]
    resp = await client.request("GET", gw.url, headers=headers, timeouts=Timeouts(read=GUARD))
    try:
        assert resp.status == 200
        assert resp.headers.get("content-type") == "text/event-stream"
        second = await m.send("GET", headers=headers)
        assert second.status == 409
        events = resp.sse()
        call = asyncio.ensure_future(m.request("tools/call", {"name": "add_tool", "arguments": {}}))

        async def changed() -> None:
            async for event in events:
                if event.data and json.loads(event.data).get("method") == "notifications/tools/list_changed":
                    return

        await asyncio.wait_for(changed(), GUARD)
        assert (await call).status == 200
        await events.aclose()
    finally:
        await resp.aclose()
    assert await m.delete() == 204


async def test_cancelled_request_ends_its_stream(gw: Gateway, client: HttpClient) -> None:
    m = Mcp(client, gw.url)
    await m.initialize()
    call = asyncio.ensure_future(m.request("tools/call", {"name": "slow", "arguments": {"seconds": 30}}))
    await asyncio.sleep(0.3)
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": m.next_id}}
    assert (await m.post(cancel)).status == 202
    r = await asyncio.wait_for(call, GUARD)
    assert r.status == 200 and not any("result" in msg for msg in r.messages)
    assert (await m.request("ping")).body["result"] == {}
    assert await m.delete() == 204


# --- authentication -------------------------------------------------------------------------------


async def test_bearer_challenge_and_metadata(gw: Gateway, client: HttpClient) -> None:
    meta_url = f"http://127.0.0.1:{gw.port}/.well-known/oauth-protected-resource/mcp"
    init = {"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {}}

    r = await Mcp(client, gw.url, None).post(init)
    assert r.status == 401
    assert r.headers.get("www-authenticate") == f'Bearer resource_metadata="{meta_url}"'
    assert r.body["id"] == 7 and r.body["error"]["code"] == -32001

    expired = make_token("alice", ["admin"], ttl=60, now=time.time() - 3600)
    for token in ("not-a-jwt", ALICE[:-4] + "AAAA", expired):
        r = await Mcp(client, gw.url, token).post(init)
        assert r.status == 401, token
        challenge = r.headers.get("www-authenticate")
        assert f'resource_metadata="{meta_url}"' in challenge and 'error="invalid_token"' in challenge
        assert r.body["id"] == 7

    m = Mcp(client, gw.url)
    r = await m.send(
        "POST", url=gw.url + "?access_token=" + ALICE, headers=m.headers(), body=json.dumps(init).encode()
    )
    assert r.status == 400
    doubled = [*m.headers(), ("Authorization", f"Bearer {BOB}")]
    r = await m.send("POST", headers=doubled, body=json.dumps(init).encode())
    assert r.status == 400

    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        r = await m.send("GET", url=f"http://127.0.0.1:{gw.port}{path}", headers=[])
        assert r.status == 200
        assert r.body["resource"] == gw.url
        assert r.body["bearer_methods_supported"] == ["header"]
        assert r.body["resource_name"] == "sentinel-gw"
        assert "authorization_servers" in r.body


# --- DNS rebinding and HTTP hygiene ---------------------------------------------------------------


async def test_origin_and_host_checks(gw: Gateway, client: HttpClient) -> None:
    m = Mcp(client, gw.url)
    for origin in ("https://evil.example", "null", "http://localhost.evil.example"):
        r = await m.request("initialize", {}, extra={"Origin": origin})
        assert r.status == 403, origin
    for origin in ("https://app.example.com", "http://localhost:3000", "http://127.0.0.1:9"):
        r = await m.request(
            "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}}, extra={"Origin": origin}
        )
        assert r.status == 200, origin
        m.sid = r.headers.get("mcp-session-id")
        assert await m.delete() == 204
        m.sid = None
    data = await raw_exchange(
        gw.port,
        b"GET /.well-known/oauth-protected-resource HTTP/1.1\r\nHost: attacker.example:80\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status_of(data) == 421


async def test_http_level_errors(gw: Gateway, client: HttpClient) -> None:
    m = Mcp(client, gw.url)
    assert (await m.send("GET", url=f"http://127.0.0.1:{gw.port}/other", headers=m.headers())).status == 404
    r = await m.send("PUT", headers=m.headers(), body=b"{}")
    assert r.status == 405 and r.headers.get("allow") == "GET, POST, DELETE"
    assert (await m.request("initialize", {}, extra={"Accept": "application/json"})).status == 406
    assert (await m.request("initialize", {}, extra={"Content-Type": "text/plain"})).status == 415
    r = await m.post(b"{not json")
    assert r.status == 400 and r.body["error"]["code"] == -32700
    r = await m.request("initialize", {}, extra={"MCP-Protocol-Version": "2099-01-01"})
    assert r.status == 400
    assert r.body["error"]["code"] == -32022 and r.body["error"]["data"]["requested"] == "2099-01-01"

    await m.initialize("2025-06-18")
    r = await m.post([{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
    assert r.status == 400  # batches only in 2025-03-26
    assert await m.delete() == 204
    await m.initialize("2025-03-26")
    r = await m.post(
        [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": 2, "method": "ping"}]
    )
    assert r.status == 200 and sorted(x["id"] for x in r.body) == [1, 2]
    assert await m.delete() == 204


async def test_request_smuggling_is_refused(gw: Gateway) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    base = (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json, text/event-stream\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + ALICE.encode() + b"\r\n"
    )
    attacks = [
        base + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body) + body,
        base + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body)) + body,
        base + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        base + b"Content-Length: 5\r\n X-Folded: yes\r\n\r\nhello",
    ]
    for attack in attacks:
        data = await raw_exchange(gw.port, attack)
        assert status_of(data) == 400, attack
        assert data.count(b"HTTP/1.1 ") == 1  # nothing smuggled behind it was answered


# --- limits (tight gateway) -----------------------------------------------------------------------


async def test_oversized_body_gets_413(tight: Gateway) -> None:
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * 8000 + b'"}}'
    head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    data = await raw_exchange(tight.port, head + b"Content-Length: %d\r\n\r\n" % len(big) + big)
    assert status_of(data) == 413
    chunked = b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
    data = await raw_exchange(tight.port, head + chunked)
    assert status_of(data) == 413


async def test_slow_headers_are_cut_off(tight: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.port)
    try:
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()

        async def trickle() -> None:
            for i in range(100):
                writer.write(b"X-Slow-%d: a\r\n" % i)
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
    assert status_of(data) == 408


async def test_expiry_and_delete_give_404(tight: Gateway, client: HttpClient) -> None:
    m = Mcp(client, tight.url)
    await m.initialize()
    assert await m.delete() == 204
    r = await m.request("tools/list")
    assert r.status == 404 and r.body["error"]["message"] == "Session not found"
    assert await m.delete() == 404

    await m.initialize()
    await asyncio.sleep(1.5)  # idle expiry is 0.6 s
    r = await m.request("tools/list")
    assert r.status == 404
    assert r.body == {
        "jsonrpc": "2.0",
        "id": m.next_id,
        "error": {"code": -32600, "message": "Session not found"},
    }


async def test_thousand_sessions_leave_nothing_behind(tight: Gateway, client: HttpClient) -> None:
    for _ in range(1000):
        m = Mcp(client, tight.url)
        r = await m.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        assert r.status == 200, r.raw
        m.sid = r.headers.get("mcp-session-id")
        assert await m.delete() == 204
    # max_sessions = 10: all ten fit, so none of the thousand is still held...
    held = [Mcp(client, tight.url) for _ in range(10)]
    for m in held:
        await m.initialize()
    # ... and the cap is real.
    r = await Mcp(client, tight.url).request(
        "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}}
    )
    assert r.status == 503
    for m in held:
        assert await m.delete() == 204


async def test_client_leaving_mid_sse_is_not_a_cancel(tight: Gateway, client: HttpClient) -> None:
    m = Mcp(client, tight.url)
    await m.initialize()
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 99,
            "method": "tools/call",
            "params": {"name": "slow", "arguments": {"seconds": 0.8}, "_meta": {"progressToken": "t"}},
        }
    ).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in m.headers())
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.port)
    writer.write(
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"progress"), GUARD)
    assert first.startswith(b"HTTP/1.1 200")
    writer.close()  # gone mid-stream

    # The gateway stays healthy and the call runs to its end: its audit row says success.
    assert (
        await m.request("tools/call", {"name": "echo", "arguments": {"message": "still here"}})
    ).status == 200
    db = tight.dir / "sentinel-audit.db"
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if db.exists():
            con = sqlite3.connect(db)
            try:
                rows = list(con.execute("SELECT status, subject FROM audit_events WHERE tool = 'slow'"))
            except sqlite3.OperationalError:
                rows = []
            finally:
                con.close()
            if rows:
                assert rows == [("success", "alice")]
                break
    else:
        pytest.fail("the abandoned call was never audited")
    assert await m.delete() in (204, 404)  # 404: it may have expired (0.6 s idle) meanwhile


# --- 2026-07-28 (stateless) over HTTP -----------------------------------------------------------

MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def test_sdk_client_in_2026_mode(gw: Gateway) -> None:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {ALICE}"})
    async with http, Client(streamable_http_client(gw.url, http_client=http), mode="2026-07-28") as sdk:
        assert sdk.protocol_version == "2026-07-28"
        names = {t.name for t in (await sdk.list_tools()).tools}
        assert {"echo", "slow"} <= names
        res = await sdk.call_tool("echo", {"message": "stateless"})
        assert res.content[0].text == "stateless"  # type: ignore[union-attr]
        read = await sdk.read_resource("test://a/hello")
        assert read.contents[0].text == "hello from a"  # type: ignore[union-attr]
        async with sdk.listen(tools_list_changed=True) as sub:  # a long-lived SSE POST
            await sdk.call_tool("add_tool", {})

            async def first_event() -> Any:
                async for event in sub:
                    return event
                return None

            assert await asyncio.wait_for(first_event(), 10) is not None
    vera = create_mcp_http_client(headers={"Authorization": f"Bearer {VERA}"})
    async with vera, Client(streamable_http_client(gw.url, http_client=vera), mode="auto") as sdk:
        assert sdk.protocol_version == "2026-07-28"  # the discover probe succeeded
        from mcp.shared.exceptions import MCPError

        assert {t.name for t in (await sdk.list_tools()).tools} == {"echo", "add"}
        with pytest.raises(MCPError) as err:
            await sdk.call_tool("slow", {"seconds": 0.1})
        assert err.value.error.code == -32602  # hidden from this role: unknown


async def test_2026_header_checks(gw: Gateway, client: HttpClient) -> None:
    m = Mcp(client, gw.url)

    async def modern(message: Any, headers: dict[str, str]) -> Reply:
        hdrs = {"MCP-Protocol-Version": "2026-07-28", **headers}
        return await m.post(message, extra=hdrs, session=False)

    call = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hi"}, "_meta": MODERN_META},
    }
    ok = await modern(call, {"Mcp-Method": "tools/call", "Mcp-Name": "echo"})
    assert ok.status == 200 and ok.body["result"]["resultType"] == "complete"
    wrong_name = await modern(call, {"Mcp-Method": "tools/call", "Mcp-Name": "add"})
    assert (
        wrong_name.status == 400 and wrong_name.body["error"]["code"] == -32020 and wrong_name.body["id"] == 9
    )
    no_method = await modern(call, {"Mcp-Name": "echo"})
    assert no_method.status == 400 and no_method.body["error"]["code"] == -32020
    b64 = await modern(call, {"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?ZWNobw==?="})
    assert b64.status == 200
    unknown = {"jsonrpc": "2.0", "id": 10, "method": "nope/nope", "params": {"_meta": MODERN_META}}
    r = await modern(unknown, {"Mcp-Method": "nope/nope"})
    assert r.status == 404 and r.body["error"]["code"] == -32601
    version = {
        **call,
        "params": {
            **call["params"],
            "_meta": {**MODERN_META, "io.modelcontextprotocol/protocolVersion": "2027-01-01"},
        },
    }
    r = await m.post(
        version,
        extra={"MCP-Protocol-Version": "2027-01-01", "Mcp-Method": "tools/call", "Mcp-Name": "echo"},
        session=False,
    )
    assert (
        r.status == 400
        and r.body["error"]["code"] == -32022
        and "2026-07-28" in r.body["error"]["data"]["supported"]
    )
    discover = {"jsonrpc": "2.0", "id": 11, "method": "server/discover", "params": {"_meta": MODERN_META}}
    r = await modern(discover, {"Mcp-Method": "server/discover"})
    assert r.status == 200 and r.body["result"]["cacheScope"] == "private"
    assert (
        await m.send("GET", headers=m.headers({"MCP-Protocol-Version": "2026-07-28"}, session=False))
    ).status == 405


async def test_backend_logs_go_to_one_tenant_only(tmp_path: Path, client: HttpClient) -> None:
    """A stdio backend's log lines belong to no request: they are relayed while every session
    that may see the backend acts for one identity, and to nobody once another identity is
    connected (a log line may describe someone else's call)."""
    outsider_role = '[rbac.roles.outsider]\npermissions = ["tools.call"]\nallow_tools = ["nothing"]\n'
    g = Gateway(tmp_path, "sse_keepalive_secs = 0.3\n", policy=POLICY + outsider_role)
    streams: list[Any] = []
    try:

        async def watch(token: str) -> Any:
            m = Mcp(client, g.url, token)
            await m.initialize()
            headers = [(k, v) for k, v in m.headers() if k != "Content-Type"]
            resp = await client.request("GET", g.url, headers=headers, timeouts=Timeouts(read=GUARD))
            assert resp.status == 200
            streams.append(resp)
            return resp.sse()

        async def seen_until_list_changed(events: Any) -> list[str]:
            seen: list[str] = []
            async for event in events:
                method = json.loads(event.data).get("method") if event.data else None
                if method == "notifications/tools/list_changed":
                    return seen
                if method:
                    seen.append(method)
            raise AssertionError("stream ended")

        async def log_then_change(caller: Mcp) -> None:
            assert (await caller.request("tools/call", {"name": "log", "arguments": {}})).status == 200
            assert (await caller.request("tools/call", {"name": "add_tool", "arguments": {}})).status == 200

        alice = Mcp(client, g.url, ALICE)
        await alice.initialize()
        alice_watch = await watch(ALICE)
        # Another identity whose roles show it nothing of the backend: not a recipient, and not a
        # second tenant either.
        outsider_watch = await watch(make_token("olga", ["outsider"]))
        await log_then_change(alice)
        seen = await asyncio.wait_for(seen_until_list_changed(alice_watch), GUARD)
        assert seen.count("notifications/message") == 8  # one identity: relayed (every level)
        seen = await asyncio.wait_for(seen_until_list_changed(outsider_watch), GUARD)
        assert "notifications/message" not in seen

        bob_watch = await watch(BOB)
        await log_then_change(alice)
        for events in (alice_watch, bob_watch):
            seen = await asyncio.wait_for(seen_until_list_changed(events), GUARD)
            assert "notifications/message" not in seen
    finally:
        for resp in streams:
            await resp.aclose()
        assert g.stop() == 0, g.log.read_text()


async def test_a_question_goes_to_the_caller_on_whose_stream_it_came(
    tmp_path: Path, client: HttpClient
) -> None:
    """Two users call the same HTTP backend; each call asks its user a question on its own
    response stream. The gateway knows whose it is from the stream (it used to refuse a question
    while two callers had calls in flight there: it could not tell which one asked)."""
    srv = HttpMcpServer(Options())
    await srv.start()
    entry = {"name": "h", "type": "http", "url": srv.url, "prefix": "h", "health_interval_secs": 0}
    g = Gateway(tmp_path, "", backends=[entry])
    alice_answered = asyncio.Event()
    try:

        async def call_sample(token: str, answer: str, then_sleep: float) -> Any:
            m = Mcp(client, g.url, token)
            await m.initialize(capabilities={"sampling": {}})
            m.next_id += 1
            msg = {"jsonrpc": "2.0", "id": m.next_id, "method": "tools/call"}
            msg["params"] = {"name": "h_sample", "arguments": {"then_sleep": then_sleep}}
            resp = await client.request(
                "POST",
                g.url,
                headers=m.headers(),
                body=json.dumps(msg).encode(),
                timeouts=Timeouts(read=GUARD),
            )
            async with resp:
                assert resp.status == 200
                async for event in resp.sse():
                    got = json.loads(event.data) if event.data else {}
                    if got.get("method") == "sampling/createMessage":
                        content = {"type": "text", "text": answer}
                        result = {"role": "assistant", "content": content, "model": "m"}
                        reply = await m.post({"jsonrpc": "2.0", "id": got["id"], "result": result})
                        assert reply.status == 202
                        if answer == "alice":
                            alice_answered.set()
                    elif got.get("id") == m.next_id:
                        return got
            raise AssertionError("the stream ended without the answer")

        async def bob_after_alice() -> Any:
            await asyncio.wait_for(alice_answered.wait(), GUARD)  # her call is still running
            return await call_sample(BOB, "bob", 0)

        alice, bob = await asyncio.wait_for(
            asyncio.gather(call_sample(ALICE, "alice", 3.0), bob_after_alice()), 4 * GUARD
        )
        assert alice["result"]["content"][0]["text"] == "sampled: alice", alice
        assert bob["result"]["content"][0]["text"] == "sampled: bob", bob
    finally:
        assert g.stop() == 0, g.log.read_text()
        await asyncio.wait_for(srv.stop(), GUARD)


async def test_a_question_about_no_call_goes_to_no_other_identity(tmp_path: Path, client: HttpClient) -> None:
    """A stdio backend asks while no call is in flight (about some earlier call, perhaps another
    user's): it goes to the one capable session only while every session that may see the
    backend acts for one identity; with another identity connected it is refused."""
    g = Gateway(tmp_path, "sse_keepalive_secs = 0.3\n")
    alice = Mcp(client, g.url, ALICE)
    await alice.initialize(capabilities={"elicitation": {}})
    headers = [(k, v) for k, v in alice.headers() if k != "Content-Type"]
    stream = await client.request("GET", g.url, headers=headers, timeouts=Timeouts(read=GUARD))
    asked: list[str] = []

    async def answer_questions() -> None:
        async for event in stream.sse():
            got = json.loads(event.data) if event.data else {}
            if got.get("method") == "elicitation/create":
                asked.append(got["params"]["message"])
                reply = {"jsonrpc": "2.0", "id": got["id"], "result": {"action": "decline"}}
                assert (await alice.post(reply)).status == 202

    async def outcome_of_a_later_question() -> str:
        r = await alice.request("tools/call", {"name": "elicit_later", "arguments": {"delay": 0.2}})
        assert r.body["result"]["content"][0]["text"] == "scheduled"
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:
            r = await alice.request("tools/call", {"name": "last_answer", "arguments": {}})
            if text := r.body["result"]["content"][0]["text"]:
                return str(text)
            await asyncio.sleep(0.05)
        raise AssertionError("the backend never finished asking")

    answering = asyncio.ensure_future(answer_questions())
    try:
        bob = Mcp(client, g.url, BOB)  # sees the backend, cannot be asked
        await bob.initialize()
        outcome = await outcome_of_a_later_question()
        assert outcome.startswith("failed") and "Cannot tell which client" in outcome, outcome
        assert asked == []
        assert await bob.delete() == 204
        assert await outcome_of_a_later_question() == 'answered {"action": "decline"}'
        assert asked == ["[a] Later?"]
    finally:
        answering.cancel()
        await stream.aclose()
        assert g.stop() == 0, g.log.read_text()
