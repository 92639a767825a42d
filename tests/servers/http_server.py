"""A Streamable HTTP MCP test server (standard library + sentinel_gw.miniserver's tool registry;
the official SDK's header decoder checks 2026-07-28 requests).

Handshake-era Streamable HTTP (POST/GET/DELETE on one endpoint, JSON or SSE responses, sessions)
or, with `legacy_sse`, the 2024-11-05 HTTP+SSE transport (GET /sse announces an endpoint, POSTs
there get 202 and every answer travels on the GET stream). Asyncio on 127.0.0.1.

Tests usually run it in-process (`HttpMcpServer(Options(...))`, `await server.start()`) so they
can flip fault knobs and read counters between calls; `python tests/servers/http_server.py
--port 0 [flags]` runs it standalone and prints `PORT <n>`.

Counters: `received[call_id]` counts tools/call POSTs carrying ``arguments.call_id`` as they
arrive (before any fault), `executed[call_id]` counts executions of the `record` tool: together
they prove "never sent twice". `messages` keeps every JSON-RPC message with its headers.

Faults (each applies to the next N JSON-RPC *requests* other than initialize, or to those whose
method is in `fault_methods` when set): `fail` (list of statuses: 500/502/503 with an HTML body
that must never reach a client), `drop_mid_sse` (execute, send one event, reset the
connection), `slow_headers` (seconds before the response head), `malformed_sse`, `oversized`
(bytes of padding in a JSON body), `never_answer`. `expire_sessions()` forgets every session.

Protocol era (`era`, may be flipped while running to play a redeployed server): `legacy` (the
above), `modern` (2026-07-28 only: no initialize, no sessions, GET/DELETE 405; every POST must
carry MCP-Protocol-Version, Mcp-Method and Mcp-Name matching its body, checked with the official
SDK's decoder, else HTTP 400 + -32020/-32022/-32602; `subscriptions/listen` keeps an SSE stream
that `broadcast` feeds; closing a response stream cancels its request, counted in
`stream_closes`) or `dual` (a POST whose MCP-Protocol-Version is not a handshake-era version is
served as 2026-07-28, anything else as legacy). The `ask` tool answers 2026-07-28 callers with
`input_required` (an elicitation) until it is retried with the answer and the request state.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import secrets
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mcp.shared.inbound import decode_header_value

from sentinel_gw.httpwire import (
    LAST_CHUNK,
    ChunkedDecoder,
    HttpProtocolError,
    encode_chunk,
    format_response,
    format_sse_event,
    parse_request_head,
)
from sentinel_gw.miniserver import Context, McpError, MiniServer, text_result
from sentinel_gw.protocol.mcp import (
    CLIENT_CAPABILITIES_KEY,
    HANDSHAKE_VERSIONS,
    HEADER_MISMATCH,
    MODERN_VERSIONS,
    PROTOCOL_VERSION_KEY,
    SERVER_INFO_KEY,
    SUBSCRIPTION_ID_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
)

SECRET_BODY = b"<html><body>Traceback: internal-secret-token-XYZ at db.internal:5432</body></html>"


@dataclass
class Options:
    json_response: bool = False  # JSON bodies instead of SSE streams for POST answers
    sessions: bool = True
    get_stream: bool = True  # False: GET answers 405
    legacy_sse: bool = False
    priming: bool = False  # send an id-only priming event first on SSE answers
    poll: bool = False  # 2025-11-25 polling: end each SSE answer after its priming event; resume by GET
    get_retry_ms: int | None = None  # `retry:` hint on the GET stream
    # fault knobs
    fail: list[int] = field(default_factory=list)
    fault_methods: set[str] | None = None
    drop_mid_sse: int = 0
    slow_headers: float = 0.0
    slow_headers_count: int = 0
    malformed_sse: int = 0
    oversized: int = 0
    oversized_bytes: int = 256 * 1024
    never_answer: int = 0
    drop_get_after: int | None = None  # close the GET stream after N events
    era: str = "legacy"  # "legacy", "modern" (2026-07-28 only) or "dual"


class _Session:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.get_queue: asyncio.Queue[dict[str, Any] | None] | None = None
        self.legacy_queue: asyncio.Queue[dict[str, Any] | None] | None = None


class _Channel:
    """Where a running request's notifications and server->client requests go."""

    def __init__(self, server: HttpMcpServer, queue: asyncio.Queue[dict[str, Any] | None] | None) -> None:
        self.srv = server
        self.queue = queue

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        if self.queue is not None:
            msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
            if params is not None:
                msg["params"] = params
            self.queue.put_nowait(msg)

    def log(self, level: str, data: Any, logger: str | None = None) -> None:
        self.notify("notifications/message", {"level": level, "data": data})

    async def request_client(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.queue is None:
            raise McpError(-32603, "no stream to ask the client on (JSON response mode)")
        rid = f"s{next(self.srv._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.srv._client_requests[rid] = fut
        self.queue.put_nowait({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
        reply = await fut
        if "error" in reply:
            raise McpError(reply["error"].get("code", -32603), reply["error"].get("message", ""))
        return reply.get("result") or {}


def build_tools(srv: HttpMcpServer) -> MiniServer:
    mini = MiniServer("http-test", "1.0.0", instructions="HTTP test server")
    any_args: dict[str, Any] = {"type": "object", "properties": {}}

    @mini.tool("echo", "Echo arguments.message", any_args, annotations={"readOnlyHint": True})
    async def echo(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result(str(args.get("message", "")))

    @mini.tool("record", "Count one execution per arguments.call_id (not idempotent)", any_args)
    async def record(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        key = str(args.get("call_id"))
        srv.executed[key] += 1
        return text_result(f"executed {srv.executed[key]}")

    @mini.tool("progress", "Send progress and notifications before the result", any_args)
    async def progress(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        steps = int(args.get("steps", 3))
        ctx.notify("notifications/message", {"level": "info", "data": "starting"})
        ctx.notify("notifications/tools/list_changed")
        for i in range(1, steps + 1):
            await ctx.progress(i, steps, f"step {i}")
            await asyncio.sleep(float(args.get("delay", 0.0)))
        ctx.notify("notifications/progress", {"progressToken": ctx.progress_token, "progress": 1})  # regress
        return text_result("done")

    @mini.tool(
        "sample", "Ask the client to sample, on the POST stream; then sleep arguments.then_sleep s", any_args
    )
    async def sample(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        res = await ctx.request_client(
            "sampling/createMessage",
            {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}], "maxTokens": 5},
        )
        if args.get("then_sleep"):
            await asyncio.sleep(float(args["then_sleep"]))  # silent: no progress
        return text_result("sampled: " + str((res.get("content") or {}).get("text")))

    @mini.tool("hang", "Never finishes (until cancelled)", any_args)
    async def hang(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            srv.cancelled_tools.append(str(args.get("call_id")))
            raise
        return text_result("unreachable")

    @mini.tool("fail_next", "Answer the next requests with arguments.statuses (e.g. [503, 503])", any_args)
    async def fail_next(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        srv.opts.fail.extend(int(x) for x in args.get("statuses", []))
        return text_result("ok")

    @mini.tool("slow", "Sleep arguments.seconds, reporting progress", any_args)
    async def slow(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        seconds = float(args.get("seconds", 1.0))
        steps = max(1, int(seconds / 0.05))
        for i in range(1, steps + 1):
            await asyncio.sleep(seconds / steps)
            await ctx.progress(i, steps)
        return text_result(f"slept {seconds}")

    @mini.tool("boom", "A tool error (isError)", any_args)
    async def boom(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result("tool failed", is_error=True)

    @mini.tool("grüß", "Echo, under a name that is not header-safe", any_args)
    async def gruss(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result("grüß " + str(args.get("message", "")))

    @mini.tool("ask", "Ask the caller's name (input_required in 2026-07-28)", any_args)
    async def ask(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result("ask needs a 2026-07-28 caller", is_error=True)

    @mini.tool("add_tool", "Register another tool and announce the change", any_args)
    async def add_tool(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        name = f"extra_{len(srv.added) + 1}"
        srv.added.append(name)

        @mini.tool(name, "Added at run time", any_args)
        async def extra(a: dict[str, Any], c: Context) -> dict[str, Any]:
            return text_result(name)

        srv.broadcast("notifications/tools/list_changed")
        return text_result(name)

    @mini.tool("touch", "Announce that resource arguments.uri changed", any_args)
    async def touch(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result(str(srv.broadcast("notifications/resources/updated", {"uri": args.get("uri")})))

    mini.resource("test://http/hello", "hello", text="hello over http")
    mini.resource("test://http/café", "café", text="un café")
    mini.prompt(
        "greet",
        "Greet someone",
        [{"name": "name", "required": True}],
        lambda a: f"Hello, {a['name']}!",
    )
    return mini


ASK_STATE = "ask-state-1"


def ask_result(params: dict[str, Any]) -> dict[str, Any]:
    """The `ask` tool in 2026-07-28: input_required until retried with the answer and state."""
    answers = params.get("inputResponses")
    answer = answers.get("name") if isinstance(answers, dict) else None
    if not isinstance(answer, dict):
        schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
        return {
            "resultType": "input_required",
            "inputRequests": {
                "name": {
                    "method": "elicitation/create",
                    "params": {"mode": "form", "message": "What is your name?", "requestedSchema": schema},
                }
            },
            "requestState": ASK_STATE,
        }
    if params.get("requestState") != ASK_STATE:
        raise McpError(-32602, "requestState was not sent back unchanged")
    content = answer.get("content")
    who = content.get("name") if isinstance(content, dict) else None
    return text_result(f"Hello, {who}!")


class HttpMcpServer:
    def __init__(self, opts: Options | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.opts = opts or Options()
        self.host = host
        self.port = port
        self.mini = build_tools(self)
        self.sessions: dict[str, _Session] = {}
        self._nosession = _Session("")
        self.received: collections.Counter[str] = collections.Counter()
        self.executed: collections.Counter[str] = collections.Counter()
        self.cancelled: list[Any] = []  # requestIds of notifications/cancelled
        self.cancelled_tools: list[str] = []
        self.messages: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.get_requests: list[dict[str, str]] = []
        self.deletes: list[str] = []
        self.client_responses: list[dict[str, Any]] = []
        self.initializes = 0
        self._client_requests: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._polled: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self.resumes: list[str] = []
        self.added: list[str] = []
        self.discovers = 0
        self.listens: list[dict[str, Any]] = []  # params of each subscriptions/listen POST
        self.stream_closes = 0  # 2026-07-28 response streams the client closed before the answer
        self._listeners: list[tuple[Any, dict[str, Any], asyncio.Queue[dict[str, Any] | None]]] = []
        self._ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}" + ("/sse" if self.opts.legacy_sse else "/mcp")

    async def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def expire_sessions(self) -> None:
        for session in self.sessions.values():
            if session.get_queue is not None:
                session.get_queue.put_nowait(None)
        self.sessions.clear()

    def end_listens(self) -> None:
        """End every subscriptions/listen stream gracefully (as a redeploy would)."""
        for _, _, queue in self._listeners:
            queue.put_nowait(None)

    def broadcast(self, method: str, params: dict[str, Any] | None = None) -> int:
        """An unsolicited notification on every open GET stream, and on every listen stream whose
        filter asked for it (list kinds, resourceSubscriptions); returns how many got it."""
        msg = {"jsonrpc": "2.0", "method": method, "params": params or {}}
        n = 0
        for session in [*self.sessions.values(), self._nosession]:
            queue = session.get_queue or session.legacy_queue
            if queue is not None:
                queue.put_nowait(msg)
                n += 1
        kind = method.split("/")[1] if method.endswith("/list_changed") else ""
        uri = (params or {}).get("uri") if method == "notifications/resources/updated" else None
        for sub_id, wanted, queue in self._listeners:
            uris = wanted.get("resourceSubscriptions")
            if (kind and wanted.get(f"{kind}ListChanged")) or (
                uri and isinstance(uris, list) and uri in uris
            ):
                meta = {SUBSCRIPTION_ID_KEY: sub_id}
                queue.put_nowait({**msg, "params": {**(params or {}), "_meta": meta}})
                n += 1
        return n

    def methods(self) -> list[str]:
        return [m.get("method", "<response>") for m, _ in self.messages]

    # -- connection handling ------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        buf = bytearray()
        try:
            while True:
                head = None
                while head is None:
                    try:
                        head = parse_request_head(buf, max_body_bytes=16 * 1024 * 1024)
                    except HttpProtocolError as exc:
                        writer.write(format_response(exc.status, {"Connection": "close"}, b""))
                        return
                    if head is None:
                        data = await reader.read(65536)
                        if not data:
                            return
                        buf += data
                del buf[: head.head_bytes]
                body = await self._read_body(reader, buf, head.framing)
                if body is None:
                    return
                keep = await self._handle(
                    head.method, head.target, dict(_lower(head.headers)), body, writer, reader, buf
                )
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # stop() cancels handlers; ending quietly keeps asyncio's connection callback from
            # reporting the cancellation as an unhandled error (Python 3.11).
            return
        finally:
            self._conns.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, buf: bytearray, framing: Any) -> bytes | None:
        if framing[0] == "length":
            n = framing[1]
            while len(buf) < n:
                data = await reader.read(65536)
                if not data:
                    return None
                buf += data
            body = bytes(buf[:n])
            del buf[:n]
            return body
        if framing[0] == "chunked":
            dec = ChunkedDecoder()
            out = bytearray(dec.feed(bytes(buf)))
            buf.clear()
            while not dec.done:
                data = await reader.read(65536)
                if not data:
                    return None
                out += dec.feed(data)
            buf += dec.unused
            return bytes(out)
        return b""

    async def _handle(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        buf: bytearray,
    ) -> bool:
        path = urlsplit(target).path
        if self.opts.legacy_sse:
            if path == "/sse" and method == "GET":
                return await self._legacy_stream(writer)
            if path == "/messages" and method == "POST":
                sid = parse_qs(urlsplit(target).query).get("session_id", [""])[0]
                return await self._legacy_post(sid, headers, body, writer)
            return self._respond(writer, 405 if path == "/sse" else 404, b"")
        if path != "/mcp":
            return self._respond(writer, 404, b"not found")
        if self._serves_modern(method, headers):
            if method != "POST":
                return self._respond(writer, 405, b"", extra={"Allow": "POST"})
            return await self._post_modern(headers, body, writer, reader, buf)
        if method == "POST":
            return await self._post(headers, body, writer)
        if method == "GET":
            return await self._get(headers, writer)
        if method == "DELETE":
            sid = headers.get("mcp-session-id", "")
            self.deletes.append(sid)
            if not self.opts.sessions:
                return self._respond(writer, 405, b"")
            self.sessions.pop(sid, None)
            return self._respond(writer, 200, b"")
        return self._respond(writer, 405, b"")

    def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        ctype: str = "text/plain",
        extra: dict[str, str] | None = None,
    ) -> bool:
        headers = {"Content-Type": ctype, **(extra or {})}
        writer.write(format_response(status, headers, body))
        return True

    def _session_for(self, headers: dict[str, str], writer: asyncio.StreamWriter) -> _Session | None:
        if not self.opts.sessions:
            return self._nosession
        sid = headers.get("mcp-session-id")
        if sid is None:
            self._respond(writer, 400, b"missing session")
            return None
        session = self.sessions.get(sid)
        if session is None:
            self._respond(
                writer,
                404,
                json.dumps(
                    {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
                ).encode(),
                "application/json",
            )
        return session

    def _fault(self, msg: dict[str, Any]) -> str | None:
        method = msg.get("method")
        if "id" not in msg or method is None or method == "initialize":
            return None
        if self.opts.fault_methods is not None and method not in self.opts.fault_methods:
            return None
        o = self.opts
        if o.fail:
            return f"status:{o.fail.pop(0)}"
        for knob in ("never_answer", "drop_mid_sse", "malformed_sse", "oversized", "slow_headers_count"):
            if getattr(o, knob) > 0:
                setattr(o, knob, getattr(o, knob) - 1)
                return knob
        return None

    async def _post(self, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> bool:
        try:
            msg = json.loads(body)
        except ValueError:
            return self._respond(writer, 400, b"bad json")
        if not isinstance(msg, dict):
            return self._respond(writer, 400, b"batches not supported here")
        self.messages.append((msg, headers))
        method = msg.get("method")
        extra: dict[str, str] = {}
        if method == "initialize":
            self.initializes += 1
            session = self._nosession
            if self.opts.sessions:
                sid = secrets.token_hex(8)
                session = self.sessions[sid] = _Session(sid)
                extra["Mcp-Session-Id"] = sid
        else:
            found = self._session_for(headers, writer)
            if found is None:
                return True
            session = found
        if method is None or "id" not in msg:
            self._inbound(msg, session)
            writer.write(format_response(202, {}, b""))
            return True
        if method == "tools/call":
            call_id = ((msg.get("params") or {}).get("arguments") or {}).get("call_id")
            if call_id is not None:
                self.received[str(call_id)] += 1
        fault = self._fault(msg)
        if fault is not None and fault.startswith("status:"):
            return self._respond(writer, int(fault[7:]), SECRET_BODY, "text/html")
        if fault == "never_answer":
            await self._stopped.wait()
            return False
        if fault == "slow_headers_count":
            await asyncio.sleep(self.opts.slow_headers)
        if fault == "malformed_sse":
            writer.write(
                format_response(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
            )
            writer.write(
                encode_chunk(b"data: {this is not json\n\nevent: message\ndata: [1, 2\n\n: comment\n\n")
            )
            writer.write(encode_chunk(b'data: {"jsonrpc": "2.0", "id": "nope", "result": 7}\n\n'))
            writer.write(LAST_CHUNK)
            return True
        if fault == "oversized":
            pad = "x" * self.opts.oversized_bytes
            payload = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"pad": pad}}).encode()
            return self._respond(writer, 200, payload, "application/json")
        if self.opts.json_response:
            reply = await self._run(msg, session, None)
            if reply is None:
                return self._respond(writer, 202, b"")
            return self._respond(writer, 200, json.dumps(reply).encode(), "application/json", extra)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        if self.opts.poll:
            key = f"p{next(self._event_ids)}"
            self._polled[key] = queue
            runner = asyncio.ensure_future(self._run(msg, session, queue))
            self._conns.add(runner)
            runner.add_done_callback(self._conns.discard)
            runner.add_done_callback(lambda t: queue.put_nowait(None if t.cancelled() else t.result()))
            writer.write(
                format_response(
                    200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked", **extra}
                )
            )
            writer.write(encode_chunk(format_sse_event("", id=f"{key}-0", retry=30)))
            writer.write(LAST_CHUNK)
            return True
        writer.write(
            format_response(
                200,
                {
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "Transfer-Encoding": "chunked",
                    **extra,
                },
            )
        )
        if self.opts.priming:
            writer.write(encode_chunk(format_sse_event("", id=f"e{next(self._event_ids)}")))
        runner = asyncio.ensure_future(self._run(msg, session, queue))
        runner.add_done_callback(lambda t: queue.put_nowait(None))
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if fault == "drop_mid_sse":
                    await runner  # the work is done; only the answer is lost
                    writer.write(encode_chunk(format_sse_event(json.dumps(item))))
                    await writer.drain()
                    writer.transport.abort()
                    return False
                writer.write(encode_chunk(format_sse_event(json.dumps(item))))
                await writer.drain()
            reply = runner.result()
            if fault == "drop_mid_sse":
                writer.write(encode_chunk(b": about to break\n\n"))
                await writer.drain()
                writer.transport.abort()
                return False
            if reply is not None:
                writer.write(encode_chunk(format_sse_event(json.dumps(reply))))
            writer.write(LAST_CHUNK)
            await writer.drain()
            return True
        finally:
            if not runner.done():
                runner.cancel()

    def _inbound(self, msg: dict[str, Any], session: _Session) -> None:
        method = msg.get("method")
        if method is None:
            self.client_responses.append(msg)
            fut = self._client_requests.pop(str(msg.get("id")), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif method == "notifications/cancelled":
            rid = (msg.get("params") or {}).get("requestId")
            self.cancelled.append(rid)
            task = session.tasks.get(str(rid))
            if task is not None:
                task.cancel()

    async def _run(
        self, msg: dict[str, Any], session: _Session, queue: asyncio.Queue[dict[str, Any] | None] | None
    ) -> dict[str, Any] | None:
        rid = msg["id"]
        params = msg.get("params") or {}
        meta = params.get("_meta")
        ctx = Context(_Channel(self, queue), rid, meta if isinstance(meta, dict) else None)  # type: ignore[arg-type]
        task = asyncio.ensure_future(self.mini.dispatch(msg["method"], params, ctx))
        session.tasks[str(rid)] = task
        try:
            result = await task
        except asyncio.CancelledError:
            if task.cancelled():
                return None  # cancelled by the client: no response
            raise
        except McpError as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": exc.to_dict()}
        finally:
            session.tasks.pop(str(rid), None)
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    async def _get(self, headers: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        self.get_requests.append(headers)
        last = headers.get("last-event-id", "")
        if last.startswith("p") and last.split("-")[0] in self._polled:
            return await self._resume_polled(last, writer)
        if not self.opts.get_stream:
            return self._respond(writer, 405, b"")
        session = self._session_for(headers, writer)
        if session is None:
            return True
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        session.get_queue = queue
        writer.write(
            format_response(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
        )
        if self.opts.get_retry_ms is not None:
            writer.write(encode_chunk(format_sse_event(None, retry=self.opts.get_retry_ms)))
        await writer.drain()
        sent = 0
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                writer.write(encode_chunk(format_sse_event(json.dumps(item), id=f"g{next(self._event_ids)}")))
                await writer.drain()
                sent += 1
                if self.opts.drop_get_after is not None and sent >= self.opts.drop_get_after:
                    break
            writer.write(LAST_CHUNK)
            await writer.drain()
            return True
        finally:
            if session.get_queue is queue:
                session.get_queue = None

    async def _resume_polled(self, last: str, writer: asyncio.StreamWriter) -> bool:
        """Replay a polled answer stream one event per GET, so clients must resume repeatedly."""
        key, _, n = last.partition("-")
        self.resumes.append(last)
        queue = self._polled[key]
        writer.write(
            format_response(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
        )
        item = await queue.get()
        if item is not None:
            writer.write(encode_chunk(format_sse_event(json.dumps(item), id=f"{key}-{int(n) + 1}", retry=10)))
            if "method" not in item:
                self._polled.pop(key, None)
        writer.write(LAST_CHUNK)
        await writer.drain()
        return True

    # -- 2026-07-28 (stateless) --------------------------------------------------------------

    def _serves_modern(self, method: str, headers: dict[str, str]) -> bool:
        if self.opts.era == "modern":
            return True
        if self.opts.era != "dual" or method != "POST":
            return False
        version = headers.get("mcp-protocol-version")
        return version is not None and version not in HANDSHAKE_VERSIONS

    def _rpc_error(
        self, writer: asyncio.StreamWriter, status: int, rid: Any, code: int, message: str, data: Any = None
    ) -> bool:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        body = json.dumps({"jsonrpc": "2.0", "id": rid, "error": error}).encode()
        return self._respond(writer, status, body, "application/json")

    def _modern_rejection(self, msg: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, Any] | None:
        """Why a 2026-07-28 request is refused before it runs: (code, message, data), or None."""
        version = headers.get("mcp-protocol-version")
        if version not in MODERN_VERSIONS:
            return (
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                {
                    "supported": list(MODERN_VERSIONS),
                    "requested": version,
                },
            )
        params = msg.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if (
            not isinstance(meta, dict)
            or PROTOCOL_VERSION_KEY not in meta
            or CLIENT_CAPABILITIES_KEY not in meta
        ):
            return -32602, "params._meta lacks the protocol version or client capabilities", None
        assert isinstance(params, dict)
        if meta[PROTOCOL_VERSION_KEY] != version:
            return HEADER_MISMATCH, "MCP-Protocol-Version differs from _meta", None
        if headers.get("mcp-method") != msg.get("method"):
            return HEADER_MISMATCH, "Mcp-Method differs from the body", None
        key = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}.get(
            str(msg.get("method"))
        )
        if key is not None and decode_header_value(headers.get("mcp-name")) != params.get(key):
            return HEADER_MISMATCH, f"Mcp-Name differs from params.{key}", None
        return None

    async def _post_modern(
        self,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        buf: bytearray,
    ) -> bool:
        try:
            msg = json.loads(body)
        except ValueError:
            return self._rpc_error(writer, 400, None, -32700, "Parse error")
        if not isinstance(msg, dict):
            return self._rpc_error(writer, 400, None, -32600, "one message per POST")
        self.messages.append((msg, headers))
        if "id" not in msg:
            return self._respond(writer, 202, b"")
        rid = msg["id"]
        method = msg.get("method")
        rejection = self._modern_rejection(msg, headers)
        if rejection is not None:
            return self._rpc_error(writer, 400, rid, *rejection)
        params = msg.get("params") or {}
        if method == "tools/call":
            call_id = (params.get("arguments") or {}).get("call_id")
            if call_id is not None:
                self.received[str(call_id)] += 1
        if method == "subscriptions/listen":
            return await self._listen_stream(rid, params, writer, reader, buf)
        if self.opts.json_response:
            reply = await self._run_modern(msg, None)
            status = 404 if reply.get("error", {}).get("code") == -32601 else 200
            return self._respond(writer, status, json.dumps(reply).encode(), "application/json")
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        runner = asyncio.ensure_future(self._run_modern(msg, queue))
        runner.add_done_callback(lambda t: queue.put_nowait(None))
        watcher = asyncio.ensure_future(self._watch_close(reader, buf, runner))
        writer.write(
            format_response(
                200,
                {
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "Transfer-Encoding": "chunked",
                },
            )
        )
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                writer.write(encode_chunk(format_sse_event(json.dumps(item))))
                await writer.drain()
            if runner.cancelled():
                return False  # the client closed the stream: that was the cancellation
            writer.write(encode_chunk(format_sse_event(json.dumps(runner.result()))))
            writer.write(LAST_CHUNK)
            await writer.drain()
            return True
        finally:
            await self._stop_watching(watcher)
            if not runner.done():
                runner.cancel()

    @staticmethod
    async def _stop_watching(watcher: asyncio.Future[None]) -> None:
        # The connection loop reads next: the watcher's read must be over first.
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    async def _watch_close(
        self, reader: asyncio.StreamReader, buf: bytearray, runner: asyncio.Future[Any], *, count: bool = True
    ) -> None:
        data = await reader.read(65536)
        if data:
            buf += data  # the client's next request: keep it for the connection loop
            return
        if not runner.done():
            self.stream_closes += count
            runner.cancel()

    async def _run_modern(
        self, msg: dict[str, Any], queue: asyncio.Queue[dict[str, Any] | None] | None
    ) -> dict[str, Any]:
        rid = msg["id"]
        method = msg.get("method")
        params = msg.get("params") or {}
        meta = params.get("_meta")
        try:
            if method == "server/discover":
                self.discovers += 1
                result: dict[str, Any] = {
                    "supportedVersions": list(MODERN_VERSIONS)
                    + (list(HANDSHAKE_VERSIONS) if self.opts.era == "dual" else []),
                    "capabilities": self.mini.capabilities(),
                    "instructions": self.mini.instructions,
                    "ttlMs": 0,
                    "cacheScope": "public",
                }
            elif method in ("initialize", "ping", "logging/setLevel", "resources/subscribe"):
                raise McpError(-32601, f"{method} does not exist in 2026-07-28")
            elif method == "tools/call" and params.get("name") == "ask":
                result = ask_result(params)
            else:
                ctx = Context(_Channel(self, queue), rid, meta if isinstance(meta, dict) else None)  # type: ignore[arg-type]
                result = await self.mini.dispatch(str(method), params, ctx)
        except McpError as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": exc.to_dict()}
        result.setdefault("resultType", "complete")
        result["_meta"] = {SERVER_INFO_KEY: {"name": self.mini.name, "version": self.mini.version}}
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    async def _listen_stream(
        self,
        rid: Any,
        params: dict[str, Any],
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        buf: bytearray,
    ) -> bool:
        wanted = params.get("notifications")
        wanted = wanted if isinstance(wanted, dict) else {}
        self.listens.append(params)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        entry = (rid, wanted, queue)
        self._listeners.append(entry)
        gone = asyncio.get_running_loop().create_future()
        watcher = asyncio.ensure_future(self._watch_close(reader, buf, gone, count=False))
        watcher.add_done_callback(lambda t: queue.put_nowait(None))
        writer.write(
            format_response(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
        )
        ack = {
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": wanted, "_meta": {SUBSCRIPTION_ID_KEY: rid}},
        }
        writer.write(encode_chunk(format_sse_event(json.dumps(ack))))
        await writer.drain()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                writer.write(encode_chunk(format_sse_event(json.dumps(item))))
                await writer.drain()
            if gone.cancelled():
                return False
            end = {
                "jsonrpc": "2.0",
                "id": rid,
                "result": {"resultType": "complete", "_meta": {SUBSCRIPTION_ID_KEY: rid}},
            }
            writer.write(encode_chunk(format_sse_event(json.dumps(end))))
            writer.write(LAST_CHUNK)
            await writer.drain()
            return True
        finally:
            await self._stop_watching(watcher)
            self._listeners.remove(entry)

    # -- legacy HTTP+SSE (2024-11-05) --------------------------------------------------------

    async def _legacy_stream(self, writer: asyncio.StreamWriter) -> bool:
        sid = secrets.token_hex(8)
        session = self.sessions[sid] = _Session(sid)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        session.legacy_queue = queue
        self.get_requests.append({"legacy": sid})
        writer.write(
            format_response(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
        )
        writer.write(encode_chunk(format_sse_event(f"/messages?session_id={sid}", event="endpoint")))
        await writer.drain()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                writer.write(encode_chunk(format_sse_event(json.dumps(item), event="message")))
                await writer.drain()
            writer.write(LAST_CHUNK)
            return True
        finally:
            self.sessions.pop(sid, None)

    async def _legacy_post(
        self, sid: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        session = self.sessions.get(sid)
        if session is None or session.legacy_queue is None:
            return self._respond(writer, 404, b"unknown session")
        try:
            msg = json.loads(body)
        except ValueError:
            return self._respond(writer, 400, b"bad json")
        self.messages.append((msg, headers))
        if msg.get("method") == "initialize":
            self.initializes += 1
        if msg.get("method") is None or "id" not in msg:
            self._inbound(msg, session)
            return self._respond(writer, 202, b"Accepted")
        if msg.get("method") == "tools/call":
            call_id = ((msg.get("params") or {}).get("arguments") or {}).get("call_id")
            if call_id is not None:
                self.received[str(call_id)] += 1
        queue = session.legacy_queue

        async def run() -> None:
            reply = await self._run(msg, session, queue)
            if reply is not None:
                queue.put_nowait(reply)

        task = asyncio.ensure_future(run())
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)
        return self._respond(writer, 202, b"Accepted")


def _lower(headers: Any) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in headers]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--json", action="store_true", help="JSON responses instead of SSE")
    p.add_argument("--no-sessions", action="store_true")
    p.add_argument("--no-get", action="store_true", help="GET answers 405")
    p.add_argument("--legacy-sse", action="store_true", help="2024-11-05 HTTP+SSE transport")
    p.add_argument("--fail", default="", help="comma-separated statuses for the next requests, e.g. 500,502")
    p.add_argument("--drop-mid-sse", type=int, default=0, metavar="N")
    p.add_argument("--slow-headers", type=float, default=0.0, metavar="SECS")
    p.add_argument("--slow-count", type=int, default=0, metavar="N", help="requests that get --slow-headers")
    p.add_argument("--malformed-sse", type=int, default=0, metavar="N")
    p.add_argument("--oversized", type=int, default=0, metavar="N")
    p.add_argument("--never-answer", type=int, default=0, metavar="N")
    a = p.parse_args(argv)
    opts = Options(
        json_response=a.json,
        sessions=not a.no_sessions,
        get_stream=not a.no_get,
        legacy_sse=a.legacy_sse,
        fail=[int(x) for x in a.fail.split(",") if x],
        drop_mid_sse=a.drop_mid_sse,
        slow_headers=a.slow_headers,
        slow_headers_count=a.slow_count,
        malformed_sse=a.malformed_sse,
        oversized=a.oversized,
        never_answer=a.never_answer,
    )
    return a, opts


async def _serve(port: int, opts: Options) -> None:
    server = HttpMcpServer(opts, port=port)
    await server.start()
    print(f"PORT {server.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args, opts = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
