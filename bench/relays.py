"""Reference stdio relays: the floor issue 8 quotes for a Python proxy between a client and a backend.

    python bench/relays.py copy -- BACKEND ARGV...       # copies bytes both ways, no parsing
    python bench/relays.py reencode -- BACKEND ARGV...   # splits lines, json.loads + json.dumps each

Issue 8: "a bare Python relay that only copies bytes costs 1.5x direct, and one that parses and
re-encodes every message 2.0x" (trivial echo backend over stdio, one call in flight). These are
such relays, in plain asyncio on the default event loop and the standard library only (no uvloop,
no orjson), so that scenario 1/2 can show, in the same interleaved rounds, what this machine and
this client make of that floor. Both start the backend as a child, relay its stdout to ours and our
stdin to its stdin, and exit when either side closes. The backend's stderr is inherited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Sequence

MODES = ("copy", "reencode")


def _reencoder() -> Callable[[bytes], bytes]:
    """A stateful chunk transformer: complete lines are parsed and re-encoded; a partial line is
    kept for the next chunk. Lines that are not JSON are passed on unchanged."""
    buf = b""
    loads, dumps = json.loads, json.dumps

    def feed(data: bytes) -> bytes:
        nonlocal buf
        lines = (buf + data).split(b"\n")
        buf = lines.pop()
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                out.append(dumps(loads(line), separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
            except ValueError:
                out.append(line + b"\n")
        return b"".join(out)

    return feed


class _Pump(asyncio.Protocol):
    """Reads one pipe and writes each chunk (transformed or not) to a target transport."""

    def __init__(self, transform: Callable[[bytes], bytes] | None, done: asyncio.Future[None]) -> None:
        self.transform = transform
        self.done = done
        self.target: asyncio.WriteTransport | None = None

    def data_received(self, data: bytes) -> None:
        if self.transform is not None:
            data = self.transform(data)
        if data and self.target is not None:
            self.target.write(data)

    def eof_received(self) -> bool | None:
        if not self.done.done():
            self.done.set_result(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Child(asyncio.SubprocessProtocol):
    def __init__(self, pump: _Pump, done: asyncio.Future[None]) -> None:
        self.pump = pump
        self.done = done

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.pump.data_received(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and not self.done.done():
            self.done.set_result(None)

    def process_exited(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def relay(mode: str, argv: Sequence[str]) -> int:
    loop = asyncio.get_running_loop()
    transform = _reencoder if mode == "reencode" else None
    client_closed: asyncio.Future[None] = loop.create_future()
    backend_closed: asyncio.Future[None] = loop.create_future()
    # backend stdout -> our stdout
    down = _Pump(transform() if transform else None, backend_closed)
    child, _ = await loop.subprocess_exec(
        lambda: _Child(down, backend_closed),
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out_transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout.buffer)
    down.target = out_transport  # type: ignore[assignment]
    # our stdin -> backend stdin
    up = _Pump(transform() if transform else None, client_closed)
    up.target = child.get_pipe_transport(0)  # type: ignore[assignment]
    await loop.connect_read_pipe(lambda: up, sys.stdin.buffer)
    await asyncio.wait([client_closed, backend_closed], return_when=asyncio.FIRST_COMPLETED)
    stdin = child.get_pipe_transport(0)
    if stdin is not None:
        stdin.close()  # EOF to the backend: it answers what it has and exits
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(backend_closed), 2.0)
    while out_transport.get_write_buffer_size() and not out_transport.is_closing():
        await asyncio.sleep(0.005)
    for _ in range(100):
        if child.get_returncode() is not None:
            break
        await asyncio.sleep(0.02)
    else:
        child.kill()
    child.close()
    return 0


def main(args: Sequence[str]) -> int:
    if len(args) < 3 or args[0] not in MODES or args[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    return asyncio.run(relay(args[0], args[2:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
