"""The smallest, fastest stdio MCP echo server: the "direct connection" baseline for benchmarks.

Deliberately independent of miniserver (no asyncio, no task per request) so that its cost is
close to the floor and benchmark numbers measure the gateway, not this server. One `echo` tool;
the answer depends only on the request, so direct and gateway runs are comparable.
"""

from __future__ import annotations

import json
import sys
from typing import Any

VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")

TOOLS = {
    "tools": [
        {
            "name": "echo",
            "description": "Echo arguments.message.",
            "inputSchema": {
                "type": "object",
                "properties": {"message": {"type": "string"}},
                "required": ["message"],
            },
        }
    ]
}


INVALID = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid request"}}


def handle(msg: dict[str, Any]) -> dict[str, Any] | None:
    method = msg.get("method")
    if "id" not in msg or not isinstance(method, str):
        return None  # notifications and stray responses need no answer
    rid = msg["id"]
    params = msg.get("params") or {}
    if method == "tools/call":
        if params.get("name") != "echo":
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": "Unknown tool"}}
        text = str((params.get("arguments") or {}).get("message", ""))
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
    elif method == "tools/list":
        result = TOOLS
    elif method == "ping":
        result = {}
    elif method == "initialize":
        requested = params.get("protocolVersion")
        result = {
            "protocolVersion": requested if requested in VERSIONS else VERSIONS[-1],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "echo", "version": "1.0.0"},
        }
    else:
        return {
            "jsonrpc": "2.0",
            "id": rid,
            "error": {"code": -32601, "message": f"Method not found: {method}"},
        }
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            reply: dict[str, Any] | None = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32700, "message": "Parse error"},
            }
        else:
            reply = handle(msg) if isinstance(msg, dict) else INVALID
        if reply is not None:
            stdout.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            stdout.flush()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (BrokenPipeError, KeyboardInterrupt):
        raise SystemExit(0) from None
