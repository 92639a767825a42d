"""The stdio front: one client on stdin/stdout, newline-delimited JSON-RPC.

stdout carries protocol bytes only; everything else goes to stderr through logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

from sentinel_gw.aio import CoalescingWriter, small_reads
from sentinel_gw.gateway import Gateway
from sentinel_gw.lifecycle import Shutdown
from sentinel_gw.policy.identity import Identity
from sentinel_gw.protocol import jsonrpc
from sentinel_gw.protocol.framing import LineSplitter, TooLong
from sentinel_gw.session import Session

log = logging.getLogger("sentinel_gw.stdio")

_READ_CHUNK = 1 << 16
_WRITE_HIGH_WATER = 1 << 20
# A client that stops reading: first shed what can be lost (progress, logs), then give up on it.
_SHED_NOTIFICATIONS_AT = 16 << 20
_CLOSE_SESSION_AT = 256 << 20
_SHEDDABLE = ("notifications/progress", "notifications/message")


class _PipeWriter:
    """Writes without a flush per message (replies finished in the same loop iteration share one
    write); drains only when the client falls behind."""

    def __init__(self, transport: asyncio.WriteTransport, protocol: asyncio.BaseProtocol) -> None:
        self.transport = transport
        self.protocol = protocol
        self.out = CoalescingWriter(transport)
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken or self.transport.is_closing():
            self.broken = True
            return
        self.out.write(data)

    async def drain(self) -> None:
        self.out.flush()
        if self.transport.get_write_buffer_size() and not self.transport.is_closing():
            drain = getattr(self.protocol, "_drain_helper", None)
            if drain is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await drain()

    def buffered(self) -> int:
        return 0 if self.transport.is_closing() else self.out.buffered()

    def close(self) -> None:
        self.out.flush()
        self.transport.close()


def _watchable(stream: IO[bytes]) -> bool:
    """A pipe or a socket: what the event loop can watch. Anything else (a regular file, a
    terminal, /dev/null) is read in a thread and written directly: the stdlib loop refuses regular
    files, and uvloop aborts the whole process on a file or a character device."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _FileWriter:
    """stdout that is no pipe (a regular file, a terminal, /dev/null): plain writes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False

    def write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            self.broken = True

    async def drain(self) -> None:
        return None

    def buffered(self) -> int:
        return 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.broken = True


async def _open_writer(stream: IO[bytes]) -> _PipeWriter | _FileWriter:
    if not _watchable(stream):
        return _FileWriter(os.dup(stream.fileno()))
    loop = asyncio.get_running_loop()
    # A dup keeps closing the transport from closing the process's own fd 1.
    fileobj = os.fdopen(os.dup(stream.fileno()), "wb", buffering=0)
    try:
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, fileobj)
    except ValueError:
        fileobj.close()
        return _FileWriter(os.dup(stream.fileno()))
    return _PipeWriter(transport, protocol)


async def _file_chunks(stream: IO[bytes]) -> AsyncIterator[bytes]:
    """Chunks of a stdin that is no pipe (see _watchable), read in a thread."""
    loop = asyncio.get_running_loop()
    read = stream.read1 if hasattr(stream, "read1") else stream.read
    while data := await loop.run_in_executor(None, read, _READ_CHUNK):
        yield data


async def _chunks(stream: IO[bytes]) -> AsyncIterator[bytes]:
    """Async chunks of stdin: a pipe transport when possible, a thread for files."""
    if not _watchable(stream):
        async for data in _file_chunks(stream):
            yield data
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READ_CHUNK)
    try:
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
    except (ValueError, OSError):
        async for data in _file_chunks(stream):
            yield data
    else:
        small_reads(transport)
        while True:
            data = await reader.read(_READ_CHUNK)
            if not data:
                return
            yield data


class _ChunkProtocol(asyncio.Protocol):
    """Hands each chunk to `on_chunk` inside the transport's read callback: one loop iteration
    less per message than a StreamReader, whose reader task wakes up in the next iteration."""

    def __init__(self, on_chunk: Callable[[bytes], None]) -> None:
        self.on_chunk = on_chunk
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            self.on_chunk(data)
        except Exception as exc:
            self.done.set_exception(exc)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)


async def _feed_chunks(stream: IO[bytes], on_chunk: Callable[[bytes], None]) -> None:
    """Feed stdin to `on_chunk` until end of input (or until `on_chunk` raises `_Stop`): from the
    pipe transport's callback when stdin is a pipe, from a thread when it is a file."""
    loop = asyncio.get_running_loop()
    protocol = _ChunkProtocol(on_chunk)
    try:
        if not _watchable(stream):
            raise ValueError("not a pipe")
        transport, _ = await loop.connect_read_pipe(lambda: protocol, stream)
    except (ValueError, OSError):
        async for data in _file_chunks(stream):
            try:
                on_chunk(data)
            except _Stop:
                return
        return
    small_reads(transport)
    try:
        await protocol.done
    except _Stop:
        return
    finally:
        # Nothing more is read once the front stops (the transport keeps fd 0 until exit).
        with contextlib.suppress(Exception):
            transport.pause_reading()


class _Stop(Exception):
    """Raised by a chunk handler: stop reading stdin."""


async def serve_stdio(
    gateway: Gateway,
    identity: Identity,
    *,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    shutdown: Shutdown | None = None,
) -> int:
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    writer = await _open_writer(stdout)
    pending_drain: list[asyncio.Task[None]] = []

    def send(message: dict[str, Any] | list[Any], related: Any = None) -> None:
        backlog = writer.buffered()
        if backlog > _SHED_NOTIFICATIONS_AT:
            if isinstance(message, dict) and message.get("method") in _SHEDDABLE:
                return
            if backlog > _CLOSE_SESSION_AT:
                log.error("client is not reading its stdout (%d bytes queued); closing the session", backlog)
                writer.broken = True
                shutdown.request("client not reading")
                return
        try:
            data = jsonrpc.encode(message)
        except (TypeError, ValueError):
            log.exception("could not encode a message for the client")
            if isinstance(message, dict) and "id" in message and "method" not in message:
                data = jsonrpc.encode(
                    jsonrpc.error(
                        message["id"], jsonrpc.INTERNAL_ERROR, "the result cannot be encoded as JSON"
                    )
                )
            else:
                return
        writer.write(data)
        if writer.buffered() > _WRITE_HIGH_WATER and not pending_drain:
            task = asyncio.ensure_future(writer.drain())
            pending_drain.append(task)
            task.add_done_callback(lambda _t: pending_drain.clear())

    session = Session(identity, send, transport="stdio")
    gateway.open_session(session)
    shutdown = shutdown or Shutdown()

    def force() -> None:
        for task in list(session.in_flight.values()):
            task.cancel()

    shutdown.on_force(force)

    max_bytes = gateway.config.gateway.max_message_bytes
    splitter = LineSplitter(max_bytes)

    def on_chunk(chunk: bytes) -> None:
        for line in splitter.feed(chunk):
            if isinstance(line, TooLong):
                send(
                    jsonrpc.error(
                        None,
                        jsonrpc.INVALID_REQUEST,
                        f"Invalid Request: message of {line.size} bytes exceeds the limit of "
                        f"{max_bytes} bytes",
                        {"reason": "message_too_large", "limit": max_bytes},
                    )
                )
                continue
            try:
                message = jsonrpc.decode(line)
            except jsonrpc.JsonRpcError as exc:
                send(jsonrpc.error_from(None, exc))
                continue
            gateway.receive(session, message)
        if writer.broken:
            log.info("stdout closed by the client")
            raise _Stop

    async def pump() -> None:
        await _feed_chunks(stdin, on_chunk)

    reading = asyncio.create_task(pump(), name="stdin")
    stopping = asyncio.create_task(shutdown.requested.wait())
    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if reading.done() and not reading.cancelled() and reading.exception() is not None:
        log.error("reading stdin failed", exc_info=reading.exception())
    shutdown.request("end of input")
    log.info("stdio front closing (%s); %d request(s) in flight", shutdown.reason, len(session.in_flight))
    reading.cancel()
    stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await reading
    grace = 0.0 if shutdown.forced.is_set() else gateway.config.gateway.shutdown_grace_secs
    await gateway.close_session(session, grace)
    await writer.drain()
    # Clients that wait for our stdout to close (the Inspector) need not wait for backend teardown.
    writer.close()
    return 0
