"""A backend built with the official MCP Python SDK (MCPServer over stdio): it speaks 2026-07-28
and the handshake era, so the gateway's era probing and modern requests are tested against the
reference implementation."""

from __future__ import annotations

import sys
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit, Resolve
from pydantic import BaseModel

app = MCPServer(sys.argv[1] if len(sys.argv) > 1 else "sdk-backend")


@app.tool()
def echo(message: str) -> str:
    """Echo a message."""
    return message


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Name(BaseModel):
    name: str


def ask_name() -> Elicit[Name]:
    return Elicit("What is your name?", Name)


@app.tool()
def greet(who: Annotated[Name, Resolve(ask_name)]) -> str:
    """Greet whoever the client says it is (asks for input: input_required in 2026-07-28)."""
    return f"Hello, {who.name}!"


@app.resource("sdk://counter")
def counter() -> str:
    """A resource whose updates `bump` announces (2026-07-28: on listen streams only)."""
    return "counter"


@app.tool()
async def bump(ctx: Context) -> str:
    """Announce an update of sdk://counter."""
    await ctx.notify_resource_updated("sdk://counter")
    return "bumped"


if __name__ == "__main__":
    app.run("stdio")
