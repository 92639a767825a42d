"""Small asyncio helpers shared by the stdio front and stdio backends."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

# asyncio's pipe transports read with os.read(fd, 256 KiB). CPython allocates the whole buffer for
# every read and glibc serves a request that large with mmap/munmap, which costs ~12 us of CPU per
# read (page faults included) however few bytes arrive. 64 KiB stays on the heap: ~1 us.
PIPE_READ_SIZE = 1 << 16


def small_reads(transport: Any) -> None:
    """Cap a read pipe transport's per-read buffer (the selector loop's transports only; uvloop
    reads into a preallocated buffer and has no such attribute to set)."""
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        with contextlib.suppress(AttributeError, TypeError):
            transport.max_size = PIPE_READ_SIZE


class CoalescingWriter:
    """Writes to a transport without a system call per message.

    The first write of a loop iteration goes out at once (no added latency when one message is in
    flight); writes that follow it in the same iteration are held and written together, in order,
    by one callback at the start of the next iteration. Replies that complete together (several
    answers in one chunk from a backend) thus cost one write and one wake-up of the reader.
    """

    __slots__ = ("_held", "_held_bytes", "_loop", "_pending", "transport")

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._pending = False  # a flush is scheduled for the next iteration

    def write(self, data: bytes) -> None:
        if self._pending:
            self._held.append(data)
            self._held_bytes += len(data)
            return
        self.transport.write(data)
        self._pending = True
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is held now (also before draining or closing)."""
        self._pending = False
        if self._held:
            data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self._held.clear()
            self._held_bytes = 0
            if not self.transport.is_closing():
                self.transport.write(data)

    def buffered(self) -> int:
        """Bytes not yet written to the pipe: held here plus the transport's own buffer."""
        return self._held_bytes + self.transport.get_write_buffer_size()
