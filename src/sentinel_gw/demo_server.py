"""The demo MCP server behind `sentinel-gw demo` and the example configuration.

Run it as `python -m sentinel_gw.demo_server [--name NAME]`. Several copies can run side by side
under different names; the name is the serverInfo name and the host part of every resource URI
(`demo://<name>/readme`, `demo://<name>/notes/{topic}`), so aggregated listings stay distinct.

`delete_everything` is harmless: it exists so the demo can show RBAC denial and the kill switch
on a tool that *claims* to be destructive.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from datetime import datetime, timezone
from typing import Any

from sentinel_gw import __version__
from sentinel_gw.miniserver import Context, MiniServer, complete_from, text_result

DEFAULT_NAME = "demo"

README = """# sentinel-gw demo server

sentinel-gw is a security gateway for the Model Context Protocol. It sits between AI agents and
MCP servers and adds authentication, role-based access control, rate limits, an audit trail,
process supervision and a kill switch. This server is a harmless backend to try it with.
"""

NOTES: dict[str, str] = {
    "audit": "Every tool call through the gateway is recorded with who called what, when, and the outcome.",
    "gateway": "The gateway aggregates several MCP servers behind one endpoint and prefixes their tools.",
    "killswitch": "The kill switch blocks a tool, a server or everything at once, without restarts.",
    "ratelimit": "Rate limits cap calls per principal and tool so a runaway agent cannot flood a backend.",
    "rbac": "Roles decide who may list and call which tools; denied calls never reach the backend.",
}


def _obj(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def build_server(name: str = DEFAULT_NAME) -> MiniServer:
    server = MiniServer(
        name,
        __version__,
        instructions="A harmless demo server for sentinel-gw: echo, arithmetic, a countdown with progress, "
        "and a pretend-destructive tool for trying RBAC and the kill switch.",
    )
    base = f"demo://{name}"
    read_only = {
        "readOnlyHint": True,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": False,
    }

    @server.tool(
        "echo",
        "Return the given message unchanged.",
        _obj({"message": {"type": "string", "description": "Text to echo back"}}, ["message"]),
        read_only,
    )
    async def echo(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result(args["message"])

    @server.tool(
        "add",
        "Add two integers.",
        _obj({"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"]),
        read_only,
        output_schema=_obj({"sum": {"type": "integer"}}, ["sum"]),
    )
    async def add(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        total = int(args["a"]) + int(args["b"])
        return text_result(str(total), structured={"sum": total})

    @server.tool(
        "word_count",
        "Count the words, lines and characters of a text.",
        _obj({"text": {"type": "string"}}, ["text"]),
        read_only,
        output_schema=_obj(
            {"words": {"type": "integer"}, "lines": {"type": "integer"}, "characters": {"type": "integer"}},
            ["words", "lines", "characters"],
        ),
    )
    async def word_count(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        text: str = args["text"]
        counts = {"words": len(text.split()), "lines": len(text.splitlines()), "characters": len(text)}
        summary = f"{counts['words']} words, {counts['lines']} lines, {counts['characters']} characters"
        return text_result(summary, structured=counts)

    @server.tool(
        "current_time",
        "The current UTC time in ISO 8601 format.",
        None,
        {"readOnlyHint": True, "destructiveHint": False, "openWorldHint": False},
    )
    async def current_time(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return text_result(datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @server.tool(
        "countdown",
        "Count down from `seconds`, reporting progress at each tick (ticks are sped up to 0.1 s).",
        _obj({"seconds": {"type": "integer", "minimum": 1, "maximum": 10}}, ["seconds"]),
        read_only,
    )
    async def countdown(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        seconds = int(args["seconds"])
        await ctx.log("info", f"countdown from {seconds} started", "demo")
        for tick in range(1, seconds + 1):
            await asyncio.sleep(0.1)
            await ctx.progress(tick, seconds, f"{seconds - tick} to go")
        return text_result(f"Liftoff after {seconds} ticks")

    @server.tool(
        "delete_everything",
        "Delete all data. (Demo only: nothing is deleted. Use it to see RBAC and the kill switch at work.)",
        {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "additionalProperties": False},
        {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True, "openWorldHint": False},
    )
    async def delete_everything(args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        await ctx.log("warning", "delete_everything was called (pretend deletion)", "demo")
        return text_result("pretend deletion: nothing was deleted")

    server.resource(f"{base}/readme", "readme", "text/markdown", text=README, description="About sentinel-gw")

    def read_note(uri: str, variables: dict[str, str]) -> str | None:
        note = NOTES.get(variables["topic"])
        return None if note is None else f"# {variables['topic']}\n\n{note}\n"

    server.resource_template(f"{base}/notes/{{topic}}", "notes", read_note, "text/markdown")

    def summarize(arguments: dict[str, str]) -> str:
        return f"Please summarize the following text in two or three sentences:\n\n{arguments['text']}"

    server.prompt(
        "summarize",
        "Ask the model for a short summary of a text.",
        [{"name": "text", "description": "The text to summarize", "required": True}],
        summarize,
    )

    @server.completion
    def complete(ref: dict[str, Any], argument: dict[str, Any], context: dict[str, str]) -> list[str]:
        if ref.get("type") == "ref/resource" and argument.get("name") == "topic":
            return complete_from(sorted(NOTES), str(argument.get("value", "")))
        return []

    return server


def _server_name(value: str) -> str:
    # The name becomes a URI host and, in the gateway, a tool-name prefix.
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise argparse.ArgumentTypeError("use 1-64 characters from A-Z a-z 0-9 _ -")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentinel_gw.demo_server", description=__doc__.splitlines()[0])
    parser.add_argument("--name", type=_server_name, default=DEFAULT_NAME, help="server name (default: demo)")
    args = parser.parse_args(argv)
    return build_server(args.name).run()


if __name__ == "__main__":
    raise SystemExit(main())
