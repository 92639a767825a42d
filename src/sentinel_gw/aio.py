"""Small asyncio helpers shared by the stdio front and stdio backends."""

from __future__ import annotations

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
