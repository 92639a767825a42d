"""A backend built with the official MCP Python SDK (MCPServer over stdio): it speaks 2026-07-28
and the handshake era, so the gateway's era probing and modern requests are tested against the
reference implementation."""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

app = MCPServer(sys.argv[1] if len(sys.argv) > 1 else "sdk-backend")


@app.tool()
def echo(message: str) -> str:
    """Echo a message."""
    return message


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


if __name__ == "__main__":
    app.run("stdio")
