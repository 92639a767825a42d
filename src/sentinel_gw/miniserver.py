"""A tiny stdio MCP server toolkit (standard library only).

It powers `sentinel-gw demo` and the test and benchmark backends, so it must run anywhere the
gateway runs, including from a zipapp: no third-party imports, no data files.

Scope: the handshake era of MCP (2024-11-05 to 2025-11-25) over newline-delimited JSON-RPC on
stdin/stdout. Every request runs in its own asyncio task, so a slow handler never blocks `ping`
or other calls, and `notifications/cancelled` cancels the task without sending a response.

    server = MiniServer("demo", "1.0")

    @server.tool("echo", "Echo a message", {"type": "object", "properties": {...}})
    async def echo(args: dict, ctx: Context) -> dict:
        await ctx.progress(1, 1)
        return text_result(args["message"])

    raise SystemExit(server.run())
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

__all__ = [
    "LATEST_PROTOCOL_VERSION",
    "LOG_LEVELS",
    "PROTOCOL_VERSIONS",
    "Context",
    "McpError",
    "MiniServer",
    "complete_from",
    "text_result",
]

PROTOCOL_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_PROTOCOL_VERSION = PROTOCOL_VERSIONS[-1]
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
CONNECTION_CLOSED = -32000
RESOURCE_NOT_FOUND = -32002

# Tool results can be large (tests push multi-megabyte texts); asyncio's 64 KiB default is too small.
_MAX_LINE = 64 * 1024 * 1024

log = logging.getLogger(__name__)

JSONObject = dict[str, Any]
ToolHandler = Callable[[JSONObject, "Context"], Awaitable[Any]]
PromptHandler = Callable[[dict[str, str]], Any]
CompletionHandler = Callable[[JSONObject, JSONObject, dict[str, str]], Any]


class McpError(Exception):
    """Raise from any handler to answer with a JSON-RPC error instead of a result."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> JSONObject:
        err: JSONObject = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def text_result(text: str, *, is_error: bool = False, structured: Any = None) -> JSONObject:
    """A CallToolResult with one text block (and optional structuredContent)."""
    result: JSONObject = {"content": [{"type": "text", "text": text}]}
    if structured is not None:
        result["structuredContent"] = structured
    if is_error:
        result["isError"] = True
    return result


def complete_from(values: Iterable[str], prefix: str) -> list[str]:
    """Completion helper: the candidates that start with what the user typed so far."""
    return [v for v in values if v.startswith(prefix)]


async def _maybe_await(value: Any) -> Any:
    # Readers and prompt handlers are often trivial; letting them be plain functions keeps callers short.
    if inspect.isawaitable(value):
        return await value
    return value


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
    "null": type(None),
}


def check_arguments(schema: JSONObject, args: JSONObject) -> str | None:
    """A deliberately small subset of JSON Schema; returns a problem description or None.

    Spec 2025-11-25 wants input-validation failures reported as tool errors (isError), so
    handlers can then trust the basic shape of their arguments.
    """
    for key in schema.get("required") or ():
        if key not in args:
            return f"missing required argument: {key}"
    props = schema.get("properties") or {}
    for key, value in args.items():
        spec = props.get(key)
        if not isinstance(spec, dict):
            if schema.get("additionalProperties") is False:
                return f"unexpected argument: {key}"
            continue
        expected = spec.get("type")
        if isinstance(expected, str) and expected in _JSON_TYPES:
            ok = isinstance(value, _JSON_TYPES[expected])
            if expected == "integer" and isinstance(value, float):
                ok = value.is_integer()
            if isinstance(value, bool) and expected != "boolean":
                ok = False
            if not ok:
                return f"argument {key!r} must be of type {expected}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in spec and value < spec["minimum"]:
                return f"argument {key!r} must be >= {spec['minimum']}"
            if "maximum" in spec and value > spec["maximum"]:
                return f"argument {key!r} must be <= {spec['maximum']}"
    return None


@dataclass
class _Tool:
    name: str
    description: str
    input_schema: JSONObject
    handler: ToolHandler
    annotations: JSONObject | None = None
    output_schema: JSONObject | None = None
    title: str | None = None

    def describe(self) -> JSONObject:
        out: JSONObject = {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
        }
        if self.title:
            out["title"] = self.title
        if self.output_schema is not None:
            out["outputSchema"] = self.output_schema
        if self.annotations is not None:
            out["annotations"] = self.annotations
        return out


@dataclass
class _Resource:
    uri: str
    name: str
    mime_type: str
    text: str | bytes | None
    reader: Callable[[str], Any] | None
    description: str | None

    def describe(self) -> JSONObject:
        out: JSONObject = {"uri": self.uri, "name": self.name, "mimeType": self.mime_type}
        if self.description:
            out["description"] = self.description
        return out


class _Template:
    """An RFC 6570 level-1/2 template (`{var}` matches one path segment, `{+var}` anything)."""

    def __init__(
        self, uri_template: str, name: str, reader: Callable[[str, dict[str, str]], Any], mime_type: str
    ) -> None:
        self.uri_template = uri_template
        self.name = name
        self.reader = reader
        self.mime_type = mime_type
        pattern, pos = [], 0
        for m in re.finditer(r"\{(\+?)([A-Za-z0-9_]+)\}", uri_template):
            pattern.append(re.escape(uri_template[pos : m.start()]))
            pattern.append(f"(?P<{m.group(2)}>{'.+' if m.group(1) else '[^/?#]+'})")
            pos = m.end()
        pattern.append(re.escape(uri_template[pos:]))
        self.regex = re.compile("".join(pattern))

    def describe(self) -> JSONObject:
        return {"uriTemplate": self.uri_template, "name": self.name, "mimeType": self.mime_type}


@dataclass
class _Prompt:
    name: str
    description: str
    arguments: list[JSONObject]
    handler: PromptHandler

    def describe(self) -> JSONObject:
        return {"name": self.name, "description": self.description, "arguments": self.arguments}


class Context:
    """What a tool handler may do while it runs, on behalf of the request being served."""

    def __init__(self, server: MiniServer, request_id: int | str, meta: JSONObject | None) -> None:
        self.server = server
        self.request_id = request_id
        self.meta = meta

    @property
    def progress_token(self) -> int | str | None:
        return (self.meta or {}).get("progressToken")

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """Report progress; a no-op unless the request carried `_meta.progressToken`."""
        token = self.progress_token
        if token is None:
            return
        params: JSONObject = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        self.server.notify("notifications/progress", params)

    async def request_client(self, method: str, params: JSONObject | None = None) -> JSONObject:
        """Send a server->client request and wait for its result (raises McpError on error)."""
        return await self.server.request_client(method, params)

    async def log(self, level: str, data: Any, logger: str | None = None) -> None:
        self.server.log(level, data, logger)

    def notify(self, method: str, params: JSONObject | None = None) -> None:
        self.server.notify(method, params)


class MiniServer:
    """A stdio MCP server whose capabilities follow from what is registered on it."""

    def __init__(
        self,
        name: str,
        version: str = "0.1.0",
        instructions: str | None = None,
        *,
        page_size: int | None = None,
        eof_grace: float = 1.0,
    ) -> None:
        self.name = name
        self.version = version
        self.instructions = instructions
        self.page_size = page_size
        # After stdin EOF, requests already read still get this long to answer, so piping a
        # fixed script into the server (`printf ... | server`) yields all the responses.
        self.eof_grace = eof_grace
        self.log_level = "debug"
        self.protocol_version: str | None = None
        self.client_info: JSONObject = {}
        self.client_capabilities: JSONObject = {}
        self.initialized = False
        self.subscriptions: set[str] = set()
        self._tools: dict[str, _Tool] = {}
        self._resources: dict[str, _Resource] = {}
        self._templates: list[_Template] = []
        self._prompts: dict[str, _Prompt] = {}
        self._completion: CompletionHandler | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[str, asyncio.Future[JSONObject]] = {}
        self._next_id = 0
        self._out: IO[bytes] | None = None
        self._stop: asyncio.Event | None = None
        self._methods: dict[str, Callable[[JSONObject, Context], Awaitable[JSONObject]]] = {
            "initialize": self._initialize,
            "ping": self._ping,
            "tools/list": self._tools_list,
            "tools/call": self._tools_call,
            "resources/list": self._resources_list,
            "resources/templates/list": self._templates_list,
            "resources/read": self._resources_read,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
            "prompts/list": self._prompts_list,
            "prompts/get": self._prompts_get,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
        }

    # ----------------------------------------------------------------- registration

    def tool(
        self,
        name: str,
        description: str = "",
        input_schema: JSONObject | None = None,
        annotations: JSONObject | None = None,
        *,
        output_schema: JSONObject | None = None,
        title: str | None = None,
    ) -> Callable[[ToolHandler], ToolHandler]:
        """Decorator registering `async def handler(args, ctx) -> CallToolResult dict | str`."""
        schema = input_schema or {"type": "object", "additionalProperties": False}

        def register(handler: ToolHandler) -> ToolHandler:
            self._tools[name] = _Tool(name, description, schema, handler, annotations, output_schema, title)
            return handler

        return register

    def remove_tool(self, name: str) -> bool:
        return self._tools.pop(name, None) is not None

    def resource(
        self,
        uri: str,
        name: str,
        mime_type: str = "text/plain",
        *,
        text: str | bytes | None = None,
        reader: Callable[[str], Any] | None = None,
        description: str | None = None,
    ) -> None:
        """A fixed resource: static `text` (bytes become a blob) or `reader(uri) -> str | bytes`."""
        if (text is None) == (reader is None):
            raise ValueError("give exactly one of text= or reader=")
        self._resources[uri] = _Resource(uri, name, mime_type, text, reader, description)

    def resource_template(
        self,
        uri_template: str,
        name: str,
        reader: Callable[[str, dict[str, str]], Any],
        mime_type: str = "text/plain",
    ) -> None:
        """`reader(uri, variables) -> str | bytes | None`; None means "not found" (-32002)."""
        self._templates.append(_Template(uri_template, name, reader, mime_type))

    def prompt(
        self, name: str, description: str, arguments: list[JSONObject], handler: PromptHandler
    ) -> None:
        """`handler(arguments) -> GetPromptResult dict | str` (a str becomes one user message)."""
        self._prompts[name] = _Prompt(name, description, arguments, handler)

    def completion(self, handler: CompletionHandler) -> CompletionHandler:
        """`handler(ref, argument, context_arguments) -> list[str] | completion dict`."""
        self._completion = handler
        return handler

    def capabilities(self) -> JSONObject:
        caps: JSONObject = {"logging": {}}
        if self._tools:
            caps["tools"] = {"listChanged": True}
        if self._resources or self._templates:
            caps["resources"] = {"subscribe": True, "listChanged": True}
        if self._prompts:
            caps["prompts"] = {"listChanged": True}
        if self._completion is not None:
            caps["completions"] = {}
        return caps

    # ----------------------------------------------------------------- outbound messages

    def write_raw(self, data: bytes) -> None:
        out = self._out
        if out is None:
            return
        try:
            out.write(data)
            out.flush()
        except (OSError, ValueError):
            # The client is gone: nothing more can be said, so shut down like on EOF.
            self._out = None
            if self._stop is not None:
                self._stop.set()

    def write_message(self, msg: JSONObject) -> None:
        """Send one JSON-RPC message as one compact line (subclasses may hook here)."""
        try:
            data = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError:
            # Lone surrogates (legal in JSON escapes) cannot be UTF-8 encoded; keep them escaped.
            data = json.dumps(msg, separators=(",", ":")).encode()
        self.write_raw(data + b"\n")

    def notify(self, method: str, params: JSONObject | None = None) -> None:
        msg: JSONObject = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.write_message(msg)

    def log(self, level: str, data: Any, logger: str | None = None) -> None:
        """notifications/message, if `level` passes the client's logging/setLevel threshold."""
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {level!r}")
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(self.log_level):
            return
        params: JSONObject = {"level": level, "data": data}
        if logger is not None:
            params["logger"] = logger
        self.notify("notifications/message", params)

    def set_tools_changed(self) -> None:
        self.notify("notifications/tools/list_changed")

    def set_prompts_changed(self) -> None:
        self.notify("notifications/prompts/list_changed")

    def set_resources_changed(self) -> None:
        self.notify("notifications/resources/list_changed")

    def resource_updated(self, uri: str) -> bool:
        """Tell the client `uri` changed; only subscribed URIs are announced."""
        if uri not in self.subscriptions:
            return False
        self.notify("notifications/resources/updated", {"uri": uri})
        return True

    async def request_client(self, method: str, params: JSONObject | None = None) -> JSONObject:
        self._next_id += 1
        rid = self._next_id
        key = str(rid)
        fut: asyncio.Future[JSONObject] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        msg: JSONObject = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        try:
            self.write_message(msg)
            reply = await fut
        except asyncio.CancelledError:
            if key in self._pending:
                # Our own caller was cancelled: tell the client to stop asking its user/model.
                self.notify("notifications/cancelled", {"requestId": rid, "reason": "request cancelled"})
            raise
        finally:
            self._pending.pop(key, None)
        error = reply.get("error")
        if isinstance(error, dict):
            raise McpError(
                int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "")), error.get("data")
            )
        result = reply.get("result")
        return result if isinstance(result, dict) else {}

    # ----------------------------------------------------------------- inbound messages

    def handle_message(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            reason = "Batches are not supported" if isinstance(msg, list) else "Invalid request"
            self._send_error(None, INVALID_REQUEST, reason)
            return
        method = msg.get("method")
        params = msg.get("params")
        if params is None:
            params = {}
        if isinstance(method, str) and "id" not in msg:
            if isinstance(params, dict):
                self.handle_notification(method, params)
            return
        rid = msg.get("id")
        if rid is None or isinstance(rid, bool) or not isinstance(rid, (int, str)):
            self._send_error(None, INVALID_REQUEST, "Invalid request id")
            return
        key = str(rid)  # "7" and 7 correlate as one id, like the SDKs do
        if isinstance(method, str):
            if key in self._inflight:
                self._send_error(rid, INVALID_REQUEST, "Duplicate request id")
            elif not isinstance(params, dict):
                self._send_error(rid, INVALID_PARAMS, "params must be an object")
            else:
                task = asyncio.create_task(self._run_request(rid, method, params))
                self._inflight[key] = task
                task.add_done_callback(
                    lambda t, k=key: self._inflight.pop(k) if self._inflight.get(k) is t else None
                )
        elif "result" in msg or "error" in msg:
            fut = self._pending.get(key)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        else:
            self._send_error(rid, INVALID_REQUEST, "Invalid request")

    def handle_notification(self, method: str, params: JSONObject) -> None:
        if method == "notifications/cancelled":
            task = self._inflight.get(str(params.get("requestId")))
            if task is not None:
                task.cancel()
        elif method == "notifications/initialized":
            self.initialized = True

    async def dispatch(self, method: str, params: JSONObject, ctx: Context) -> JSONObject:
        """Answer one request (subclasses override this to inject faults)."""
        handler = self._methods.get(method)
        if handler is None:
            raise McpError(METHOD_NOT_FOUND, f"Method not found: {method}")
        return await handler(params, ctx)

    def _send_error(self, rid: int | str | None, code: int, message: str, data: Any = None) -> None:
        self.write_message({"jsonrpc": "2.0", "id": rid, "error": McpError(code, message, data).to_dict()})

    async def _run_request(self, rid: int | str, method: str, params: JSONObject) -> None:
        meta = params.get("_meta")
        ctx = Context(self, rid, meta if isinstance(meta, dict) else None)
        try:
            result = await self.dispatch(method, params, ctx)
        except McpError as exc:
            self.write_message({"jsonrpc": "2.0", "id": rid, "error": exc.to_dict()})
        except Exception as exc:
            log.exception("%s failed", method)
            self._send_error(rid, INTERNAL_ERROR, f"Internal error: {exc}")
        else:
            self.write_message({"jsonrpc": "2.0", "id": rid, "result": result})

    # ----------------------------------------------------------------- method handlers

    async def _initialize(self, params: JSONObject, ctx: Context) -> JSONObject:
        requested = params.get("protocolVersion")
        self.protocol_version = requested if requested in PROTOCOL_VERSIONS else LATEST_PROTOCOL_VERSION
        self.client_info = params.get("clientInfo") or {}
        self.client_capabilities = params.get("capabilities") or {}
        result: JSONObject = {
            "protocolVersion": self.protocol_version,
            "capabilities": self.capabilities(),
            "serverInfo": {"name": self.name, "version": self.version},
        }
        if self.instructions:
            result["instructions"] = self.instructions
        return result

    async def _ping(self, params: JSONObject, ctx: Context) -> JSONObject:
        return {}

    def _require(self, capability: str) -> None:
        if capability not in self.capabilities():
            raise McpError(METHOD_NOT_FOUND, f"Server does not support {capability}")

    def _page(self, kind: str, items: list[JSONObject], params: JSONObject) -> JSONObject:
        cursor = params.get("cursor")
        start = 0 if cursor is None else self._decode_cursor(kind, cursor, len(items))
        result: JSONObject = {kind: items[start:]}
        if self.page_size and self.page_size > 0:
            end = start + self.page_size
            result[kind] = items[start:end]
            if end < len(items):
                result["nextCursor"] = base64.urlsafe_b64encode(f"{kind}:{end}".encode()).decode()
        return result

    @staticmethod
    def _decode_cursor(kind: str, cursor: Any, size: int) -> int:
        try:
            prefix, _, offset = base64.urlsafe_b64decode(str(cursor).encode()).decode().partition(":")
            start = int(offset)
        except (ValueError, binascii.Error):
            start = -1
            prefix = ""
        if prefix != kind or not 0 <= start <= size:
            raise McpError(INVALID_PARAMS, "Invalid cursor", {"cursor": cursor})
        return start

    async def _tools_list(self, params: JSONObject, ctx: Context) -> JSONObject:
        self._require("tools")
        return self._page("tools", [t.describe() for t in self._tools.values()], params)

    async def _tools_call(self, params: JSONObject, ctx: Context) -> JSONObject:
        name = params.get("name")
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            raise McpError(INVALID_PARAMS, f"Unknown tool: {name}")
        args = params.get("arguments")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise McpError(INVALID_PARAMS, "arguments must be an object")
        problem = check_arguments(tool.input_schema, args)
        if problem:
            return text_result(f"Invalid arguments for {name}: {problem}", is_error=True)
        try:
            result = await _maybe_await(tool.handler(args, ctx))
        except McpError:
            raise
        except Exception as exc:
            # A crashing tool is a tool failure the model may recover from, not a protocol error.
            log.exception("tool %s failed", name)
            return text_result(f"{name} failed: {exc}", is_error=True)
        return text_result(result) if isinstance(result, str) else result

    async def _resources_list(self, params: JSONObject, ctx: Context) -> JSONObject:
        self._require("resources")
        return self._page("resources", [r.describe() for r in self._resources.values()], params)

    async def _templates_list(self, params: JSONObject, ctx: Context) -> JSONObject:
        self._require("resources")
        return self._page("resourceTemplates", [t.describe() for t in self._templates], params)

    async def _resources_read(self, params: JSONObject, ctx: Context) -> JSONObject:
        self._require("resources")
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise McpError(INVALID_PARAMS, "uri must be a string")
        content: Any = None
        mime_type = "text/plain"
        res = self._resources.get(uri)
        if res is not None:
            content = res.text if res.reader is None else await _maybe_await(res.reader(uri))
            mime_type = res.mime_type
        else:
            for tpl in self._templates:
                m = tpl.regex.fullmatch(uri)
                if m is not None:
                    content = await _maybe_await(tpl.reader(uri, m.groupdict()))
                    mime_type = tpl.mime_type
                    break
        if content is None:
            raise McpError(RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri})
        if isinstance(content, dict):
            return {"contents": [{"uri": uri, "mimeType": mime_type, **content}]}
        if isinstance(content, (bytes, bytearray)):
            blob = base64.b64encode(bytes(content)).decode()
            return {"contents": [{"uri": uri, "mimeType": mime_type, "blob": blob}]}
        return {"contents": [{"uri": uri, "mimeType": mime_type, "text": str(content)}]}

    async def _subscribe(self, params: JSONObject, ctx: Context) -> JSONObject:
        self._require("resources")
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise McpError(INVALID_PARAMS, "uri must be a string")
        self.subscriptions.add(uri)
        return {}

    async def _unsubscribe(self, params: JSONObject, ctx: Context) -> JSONObject:
        self._require("resources")
        self.subscriptions.discard(str(params.get("uri")))
        return {}

    async def _prompts_list(self, params: JSONObject, ctx: Context) -> JSONObject:
        self._require("prompts")
        return self._page("prompts", [p.describe() for p in self._prompts.values()], params)

    async def _prompts_get(self, params: JSONObject, ctx: Context) -> JSONObject:
        self._require("prompts")
        name = params.get("name")
        prompt = self._prompts.get(name) if isinstance(name, str) else None
        if prompt is None:
            raise McpError(INVALID_PARAMS, f"Unknown prompt: {name}")
        args = params.get("arguments") or {}
        if not isinstance(args, dict):
            raise McpError(INVALID_PARAMS, "arguments must be an object")
        missing = [a["name"] for a in prompt.arguments if a.get("required") and a["name"] not in args]
        if missing:
            raise McpError(INVALID_PARAMS, f"Missing required argument: {', '.join(missing)}")
        result = await _maybe_await(prompt.handler(args))
        if isinstance(result, str):
            result = {"messages": [{"role": "user", "content": {"type": "text", "text": result}}]}
        if prompt.description:
            result.setdefault("description", prompt.description)
        return result

    async def _complete(self, params: JSONObject, ctx: Context) -> JSONObject:
        self._require("completions")
        assert self._completion is not None
        ref, argument = params.get("ref"), params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise McpError(INVALID_PARAMS, "ref and argument must be objects")
        context_args = (params.get("context") or {}).get("arguments") or {}
        values = await _maybe_await(self._completion(ref, argument, context_args))
        if isinstance(values, dict):
            return {"completion": values}
        values = list(values or [])
        return {"completion": {"values": values[:100], "total": len(values), "hasMore": len(values) > 100}}

    async def _set_level(self, params: JSONObject, ctx: Context) -> JSONObject:
        level = params.get("level")
        if level not in LOG_LEVELS:
            raise McpError(INVALID_PARAMS, f"Invalid log level: {level}", {"levels": list(LOG_LEVELS)})
        self.log_level = level
        return {}

    # ----------------------------------------------------------------- running

    def run(self, *, handle_signals: bool = True, exit_on_eof: bool = True) -> int:
        """Serve stdio until EOF or SIGTERM/SIGINT; returns a process exit code."""
        try:
            asyncio.run(self.serve(handle_signals=handle_signals, exit_on_eof=exit_on_eof))
        except KeyboardInterrupt:
            return 130
        return 0

    async def serve(self, *, handle_signals: bool = True, exit_on_eof: bool = True) -> None:
        """Serve stdin/stdout. Takes over the process's stdio (see `_claim_stdout`)."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._out = _claim_stdout()
        reader, transport = await _open_stdin(loop)
        signals: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._stop.set)
                    signals.append(sig)
        read_task = asyncio.create_task(self._read_loop(reader))
        stop_task = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({read_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if read_task.done() and not self._stop.is_set():
                self._fail_pending()  # nobody is left to answer our own requests
                if exit_on_eof:
                    if self._inflight:
                        await asyncio.wait(list(self._inflight.values()), timeout=self.eof_grace)
                else:
                    await stop_task
        finally:
            for task in (read_task, stop_task, *self._inflight.values()):
                task.cancel()
            await asyncio.gather(read_task, stop_task, *self._inflight.values(), return_exceptions=True)
            self._fail_pending()
            for sig in signals:
                loop.remove_signal_handler(sig)
            if transport is not None:
                transport.close()
            out, self._out = self._out, None
            if out is not None:
                with contextlib.suppress(OSError, ValueError):
                    out.close()

    def _fail_pending(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(McpError(CONNECTION_CLOSED, "Connection closed"))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                self._send_error(None, PARSE_ERROR, "Message too large")
                continue
            if not line:
                return
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self._send_error(None, PARSE_ERROR, "Parse error")
                continue
            self.handle_message(msg)


def _claim_stdout() -> IO[bytes]:
    """Keep a private handle on the real stdout and point fd 1 and sys.stdout at stderr.

    A stray print() or a grandchild process writing to fd 1 would otherwise corrupt the
    protocol stream; and closing our private handle then really closes the client's pipe.
    """
    try:
        sys.stdout.flush()
        fd = os.dup(1)
        os.dup2(2, 1)
    except (OSError, AttributeError, ValueError):
        return sys.stdout.buffer
    sys.stdout = sys.stderr
    return os.fdopen(fd, "wb")


async def _open_stdin(
    loop: asyncio.AbstractEventLoop,
) -> tuple[asyncio.StreamReader, asyncio.BaseTransport | None]:
    reader = asyncio.StreamReader(limit=_MAX_LINE)
    stdin = sys.stdin.buffer if sys.stdin is not None else None
    if stdin is None:
        reader.feed_eof()
        return reader, None
    # A terminal is left in non-blocking mode by connect_read_pipe, which upsets the shell
    # afterwards; regular files are refused by it. Both get a plain reader thread instead.
    if not stdin.isatty():
        try:
            transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
            return reader, transport
        except (OSError, ValueError, NotImplementedError):
            pass

    def pump() -> None:
        try:
            while line := stdin.readline():
                loop.call_soon_threadsafe(reader.feed_data, line)
        except (OSError, ValueError, RuntimeError):
            pass  # stdin broke or the loop is gone: either way this is the end of input
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(reader.feed_eof)

    threading.Thread(target=pump, name="mcp-stdin", daemon=True).start()
    return reader, None
