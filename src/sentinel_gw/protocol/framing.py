"""Newline-delimited framing with a size limit. Sans-I/O: feed bytes, get lines.

A line longer than the limit is not buffered: its bytes are counted and dropped until its
newline arrives, then reported once as `TooLong`, so a hostile peer cannot grow our memory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TooLong:
    size: int  # bytes seen for the oversized line (at least the limit)


class LineSplitter:
    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = 0  # >0 while skipping the rest of an oversized line

    def feed(self, data: bytes) -> list[bytes | TooLong]:
        out: list[bytes | TooLong] = []
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            if self._discarding:
                if nl < 0:
                    self._discarding += n - start
                    return out
                out.append(TooLong(self._discarding + nl - start))
                self._discarding = 0
                start = nl + 1
                continue
            if nl < 0:
                self._buf += data[start:]
                if len(self._buf) > self.max_line:
                    self._discarding = len(self._buf)
                    self._buf.clear()
                return out
            if self._buf:
                self._buf += data[start:nl]
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = data[start:nl]
            start = nl + 1
            if len(line) > self.max_line:
                out.append(TooLong(len(line)))
            elif line.strip():
                out.append(line)
        return out

    def pending(self) -> int:
        return len(self._buf) + self._discarding
