"""A configurable fault-injection MCP server for integration tests (stdio, built on miniserver).

Spawn it as a real child process: `python tests/servers/mcp_server.py [flags]`. Flags pick the
content (`--name`, `--tools`, `--page-size`, `--no-resources`, ...) and the misbehaviour (crashes,
hangs, garbage on stdout, stderr floods, ignored signals, ...); see `--help`.

With `--state-file PATH` every tools/call received is appended as `<tool> <json args>` (keys
sorted) before the tool runs, so tests can assert "sent exactly once" even for `crash`. A `slow`
call that gets cancelled also appends `cancelled:slow <json args>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from sentinel_gw.miniserver import (
    LOG_LEVELS,
    Context,
    McpError,
    MiniServer,
    complete_from,
    text_result,
)

GARBAGE = b"this is not json\n"
NAMES = ("alice", "bob", "carol", "dave")
ITEM_IDS = ("1", "2", "3", "42", "100")
# Tests and gateway suites pass arbitrary extra arguments; strict no-argument schemas would reject them.
ANY: dict[str, Any] = {"type": "object", "properties": {}}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


class FaultyServer(MiniServer):
    """MiniServer plus the wire-level faults that cannot be expressed as tools."""

    def __init__(self, opts: argparse.Namespace) -> None:
        super().__init__(opts.name, "1.0.0", instructions=f"fault-injection test server {opts.name}")
        self.page_size = opts.page_size
        self.opts = opts
        self.responses = 0

    def record(self, line: str) -> None:
        if self.opts.state_file:
            # Open/append/close per line: the `crash` tool os._exit()s right after, with no flush.
            with open(self.opts.state_file, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    async def dispatch(self, method: str, params: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if method == "initialize":
            if self.opts.crash_on_initialize:
                os._exit(4)
            if self.opts.hang_on_initialize:
                await asyncio.Event().wait()
        if method == "tools/call":
            self.record(f"{params.get('name')} {json.dumps(params.get('arguments') or {}, sort_keys=True)}")
        return await super().dispatch(method, params, ctx)

    def write_message(self, msg: dict[str, Any]) -> None:
        is_response = "id" in msg and ("result" in msg or "error" in msg)
        if is_response and self.opts.garbage:
            self.write_raw(GARBAGE)
        super().write_message(msg)
        if is_response:
            self.responses += 1
            if self.opts.exit_after is not None and self.responses >= self.opts.exit_after:
                os._exit(0)


def build_server(opts: argparse.Namespace) -> FaultyServer:
    server = FaultyServer(opts)
    name = opts.name
    base = f"test://{name}"
    extra_count = 0

    @server.tool(
        "echo",
        "Echo arguments.message; the request's _meta comes back as result _meta.",
        _obj({"message": {"type": "string"}}),
    )
    async def echo(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if opts.echo_delay:
            await asyncio.sleep(opts.echo_delay)
        result = text_result(str(args.get("message", "")))
        if ctx.meta is not None:
            result["_meta"] = ctx.meta
        return result

    @server.tool(
        "add", "Add two integers.", _obj({"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"])
    )
    async def add(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        total = args["a"] + args["b"]
        return text_result(str(total), structured={"sum": total})

    @server.tool("slow", "Sleep, reporting progress every 0.05 s.", _obj({"seconds": {"type": "number"}}))
    async def slow(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        seconds = float(args.get("seconds", 1.0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        step = 0
        try:
            while (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(0.05, left))
                step += 1
                await ctx.progress(step, None, f"slept {step * 0.05:.2f}s")
        except asyncio.CancelledError:
            server.record(f"cancelled:slow {json.dumps(args, sort_keys=True)}")
            raise
        return text_result(f"slept {seconds}s")

    @server.tool("crash", "Exit the process at once (code 3) without replying.", ANY)
    async def crash(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        os._exit(3)

    @server.tool("fail", "Always fails with isError: true.", ANY)
    async def fail(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result("tool failed on purpose", is_error=True)

    @server.tool("rpc_error", "Always answers with JSON-RPC error -32000 'boom'.", ANY)
    async def rpc_error(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        raise McpError(-32000, "boom")

    @server.tool(
        "sample", "Ask the client's model (sampling/createMessage).", _obj({"prompt": {"type": "string"}})
    )
    async def sample(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        message = {"role": "user", "content": {"type": "text", "text": args.get("prompt", "Say hello")}}
        result = await ctx.request_client("sampling/createMessage", {"messages": [message], "maxTokens": 100})
        content = result.get("content") or {}
        return text_result(str(content.get("text", "")) if isinstance(content, dict) else json.dumps(content))

    @server.tool(
        "elicit",
        "Ask the user for a name and an age (elicitation/create); then sleep arguments.then_sleep s.",
        ANY,
    )
    async def elicit(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        schema = _obj({"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}, ["name"])
        result = await ctx.request_client(
            "elicitation/create", {"message": "Who are you?", "requestedSchema": schema}
        )
        if args.get("then_sleep"):
            await asyncio.sleep(float(args["then_sleep"]))  # silent: no progress
        action = result.get("action")
        if "content" in result:
            return text_result(f"{action} {json.dumps(result['content'], sort_keys=True)}")
        return text_result(str(action))

    later: dict[str, Any] = {"outcome": "", "task": None}

    @server.tool(
        "elicit_later",
        "Answer at once; arguments.delay s later, with no call in flight, ask elicitation/create. "
        "last_answer says how that went.",
        ANY,
    )
    async def elicit_later(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        async def ask() -> None:
            await asyncio.sleep(float(args.get("delay", 0.2)))
            try:
                result = await server.request_client("elicitation/create", {"message": "Later?"})
                later["outcome"] = f"answered {json.dumps(result, sort_keys=True)}"
            except Exception as exc:
                later["outcome"] = f"failed {exc}"

        later["outcome"] = ""
        later["task"] = asyncio.ensure_future(ask())
        return text_result("scheduled")

    @server.tool("last_answer", "How the last elicit_later question went ('' while waiting).", ANY)
    async def last_answer(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result(later["outcome"])

    @server.tool("roots", "List the client's roots (roots/list), one URI per line.", ANY)
    async def roots(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        result = await ctx.request_client("roots/list", {})
        return text_result("\n".join(str(r.get("uri")) for r in result.get("roots") or []))

    @server.tool("log", "Emit one notifications/message at every level, lowest first.", ANY)
    async def log_all(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        for level in LOG_LEVELS:
            await ctx.log(level, f"{level} message", name)
        return text_result("logged")

    @server.tool("add_tool", "Register a new tool extra_<n> and send tools/list_changed.", ANY)
    async def add_tool(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        nonlocal extra_count
        extra_count += 1
        tool_name = f"extra_{extra_count}"

        async def extra(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
            return text_result(tool_name)

        server.tool(tool_name, "A tool added at run time.", ANY)(extra)
        server.set_tools_changed()
        return text_result(tool_name)

    @server.tool(
        "touch",
        "Send resources/updated for arguments.uri if subscribed.",
        _obj({"uri": {"type": "string"}}, ["uri"]),
    )
    async def touch(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result("notified" if server.resource_updated(args["uri"]) else "not subscribed")

    @server.tool(
        "big",
        "Return a text of exactly `size` bytes.",
        _obj({"size": {"type": "integer", "minimum": 0}}, ["size"]),
    )
    async def big(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result("x" * args["size"])

    @server.tool(
        "env",
        "The value of an environment variable in this process, or <unset>.",
        _obj({"name": {"type": "string"}}, ["name"]),
    )
    async def env(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result(os.environ.get(args["name"], "<unset>"))

    @server.tool("pid", "This server's process id.", ANY)
    async def pid(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result(str(os.getpid()))

    @server.tool("cwd", "This server's working directory.", ANY)
    async def cwd(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result(os.getcwd())

    for i in range(opts.tools):

        async def trivial(args: dict[str, Any], ctx: Context, i: int = i) -> dict[str, Any]:
            return text_result(f"t_{i}")

        server.tool(f"t_{i}", f"Trivial tool number {i}.", ANY)(trivial)

    if not opts.no_resources:
        server.resource(f"{base}/hello", "hello", "text/plain", text=f"hello from {name}")
        server.resource(f"{base}/blob", "blob", "application/octet-stream", text=bytes(range(256)))

        def read_item(uri: str, variables: dict[str, str]) -> str:
            return f"item {variables['id']}"

        server.resource_template(f"{base}/items/{{id}}", "items", read_item)

    if not opts.no_prompts:

        def greet(arguments: dict[str, str]) -> str:
            return f"Hello, {arguments['name']}!"

        server.prompt(
            "greet", "Greet someone.", [{"name": "name", "description": "Who", "required": True}], greet
        )

    if not opts.no_completions:

        @server.completion
        def complete(ref: dict[str, Any], argument: dict[str, Any], context: dict[str, str]) -> list[str]:
            prefix = str(argument.get("value", ""))
            if (
                ref.get("type") == "ref/prompt"
                and ref.get("name") == "greet"
                and argument.get("name") == "name"
            ):
                return complete_from(NAMES, prefix)
            if ref.get("type") == "ref/resource" and argument.get("name") == "id":
                return complete_from(ITEM_IDS, prefix)
            return []

    return server


def _stderr_forever() -> None:
    line = "stderr-forever " + "z" * 180 + "\n"
    try:
        while True:
            sys.stderr.write(line)
            sys.stderr.flush()
            time.sleep(0.01)
    except (OSError, ValueError):
        pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="test")
    p.add_argument("--tools", type=int, default=0, help="add N trivial tools t_0..t_{N-1}")
    p.add_argument("--page-size", type=int, default=None, help="paginate list results")
    p.add_argument("--no-resources", action="store_true")
    p.add_argument("--no-prompts", action="store_true")
    p.add_argument("--no-completions", action="store_true")
    p.add_argument("--crash-on-initialize", action="store_true", help="exit(4) upon initialize")
    p.add_argument("--hang-on-initialize", action="store_true", help="never answer initialize")
    p.add_argument("--startup-delay", type=float, default=0.0, help="sleep before reading stdin")
    p.add_argument("--garbage", action="store_true", help="print non-JSON lines before each response")
    p.add_argument("--stderr-flood", type=int, default=0, metavar="N", help="N stderr lines at startup")
    p.add_argument("--stderr-forever", action="store_true", help="keep writing to stderr")
    p.add_argument("--exit-after", type=int, default=None, metavar="N", help="exit(0) after N responses")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--ignore-stdin-eof", action="store_true", help="keep running after stdin EOF")
    p.add_argument("--echo-delay", type=float, default=0.0, help="seconds the echo tool waits")
    p.add_argument("--state-file", default=None, help="append '<tool> <json args>' per tools/call")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.stderr_flood:
        # Written synchronously before serving: a parent that does not drain stderr blocks us here,
        # before initialize is answered, which is exactly the deadlock this flag exists to expose.
        line = "stderr-flood " + "y" * 186 + "\n"
        for _ in range(opts.stderr_flood):
            sys.stderr.write(line)
        sys.stderr.flush()
    if opts.stderr_forever:
        threading.Thread(target=_stderr_forever, name="stderr-forever", daemon=True).start()
    if opts.startup_delay:
        time.sleep(opts.startup_delay)
    if opts.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = build_server(opts)
    return server.run(handle_signals=not opts.ignore_sigterm, exit_on_eof=not opts.ignore_stdin_eof)


if __name__ == "__main__":
    raise SystemExit(main())
