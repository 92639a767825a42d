"""HTTP/1.1 on asyncio streams: a sans-I/O wire core, an SSE parser and a pooled client.

The project uses no HTTP library. This module is the one place that speaks HTTP/1.1:

* **Sans-I/O core** (no sockets, no waits; shared by the HTTP backend and the HTTP front):
  `parse_response_head`, `parse_request_head`, `Headers`, `body_framing`, `keep_alive`,
  `ChunkedDecoder`, `format_request`, `format_response`, `encode_chunk`/`LAST_CHUNK`,
  `SseParser`/`SseEvent`, `format_sse_event`/`format_sse_comment`. Errors are
  `HttpProtocolError(status, reason)`; for requests the status is the one a server should answer
  (400, 413, 431, 501, 505).
* **Client**: `HttpClient` with a per-origin keep-alive pool, TLS (system CA store, optional custom
  CA, client certificate for mTLS), connect/read/total timeouts, header and body limits. It never
  follows redirects and never uses a proxy (the ``*_proxy`` environment variables are not read:
  backends are addressed directly, and a proxy would see bearer tokens).

Parsing is strict where leniency has caused request smuggling or response splitting (RFC 9112 §6.3
and §11.2): conflicting framing headers, obs-fold, whitespace before the colon, bare CR, and (for
requests) bare LF are errors. Response heads may end lines with a bare LF (RFC 9112 §2.2 permits
recipients to accept it and some small servers emit it); nothing else is relaxed for responses.

Client timeouts (`Timeouts`), exactly:

* ``pool``: waiting for a free connection slot of the origin; ``None`` = bounded by ``total`` only.
  Raises `PoolTimeout` (nothing sent).
* ``connect``: one TCP connect plus TLS handshake. Raises `ConnectTimeout` (nothing sent).
* ``read``: every single wait on the socket after the connection is ours: flushing the request
  (``drain``), each read of the response head, each read of the body. It is an inactivity timeout:
  a body that keeps trickling never hits it. Raises `ReadTimeout`.
* ``total``: a deadline fixed when `HttpClient.request` is called, covering the pool wait, connect,
  sending, the head **and the body** (every body read checks it), so it bounds the whole exchange
  as long as the caller consumes the body. For long-lived SSE streams pass ``total=None`` and bound
  the stream yourself. Raises `TotalTimeout` with ``maybe_sent`` telling whether sending had begun.

Whichever limit is closer decides which exception is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import ssl
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from . import __version__

__all__ = [
    "LAST_CHUNK",
    "BodyTooLarge",
    "ChunkedDecoder",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "Framing",
    "Headers",
    "HttpClient",
    "HttpError",
    "HttpProtocolError",
    "HttpResponse",
    "HttpTimeout",
    "PoolTimeout",
    "ProtocolError",
    "ReadTimeout",
    "RequestHead",
    "RequestReader",
    "ResponseHead",
    "SseEvent",
    "SseParser",
    "Timeouts",
    "TotalTimeout",
    "body_framing",
    "encode_chunk",
    "format_request",
    "format_response",
    "format_sse_comment",
    "format_sse_event",
    "keep_alive",
    "linger_close",
    "make_ssl_context",
    "parse_request_head",
    "parse_response_head",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 100
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_STR = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values may hold HTAB, SP, VCHAR and obs-text; every other control byte is refused.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_VALUE_STR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) ([1-9]\d\d)(?: ([\t \x21-\x7e\x80-\xff]*))?")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_DIGITS = re.compile(rb"[0-9]+")
_BARE_LF = re.compile(rb"(?<!\r)\n")
# chunk-size is strict hex (no sign, no 0x, no leading blanks); extensions are accepted and ignored.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)(?:[ \t]*;[\t \x21-\x7e\x80-\xff]*)?")
_MAX_LENGTH_DIGITS = 18  # < 2**63: no giant integers from hostile input
_MAX_CHUNK_HEX_DIGITS = 16
_SENSITIVE_HINTS = ("auth", "cookie", "token", "secret", "key", "session")


class HttpProtocolError(Exception):
    """The bytes on the wire are not acceptable HTTP/1.1.

    `status` is what a server should answer when the message was a request (400, 413, 431, 501,
    505); for responses it is 502 and only informative.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------------------------


class Headers:
    """Case-insensitive multi-dict that keeps the order and spelling of the fields.

    Iterating yields ``(name, value)`` pairs, duplicates included. `get` returns the first value;
    use `get_all` where duplicates matter (framing headers, Set-Cookie).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        if items is None:
            return
        if isinstance(items, Headers):
            self._items = list(items._items)
        elif isinstance(items, Mapping):
            self._items = [(str(k), str(v)) for k, v in items.items()]
        else:
            self._items = [(str(k), str(v)) for k, v in items]

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field called `name` by one."""
        self.remove(name)
        self._items.append((name, value))

    def remove(self, name: str) -> None:
        lname = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lname]

    def get(self, name: str, default: str | None = None) -> str | None:
        lname = name.lower()
        for k, v in self._items:
            if k.lower() == lname:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._items if k.lower() == lname]

    def tokens(self, name: str) -> list[str]:
        """Comma-separated list values of every `name` field, lower-cased (Connection, TE)."""
        out: list[str] = []
        for value in self.get_all(name):
            out.extend(t.strip().lower() for t in value.split(",") if t.strip())
        return out

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Headers:
        return Headers(self)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        lname = name.lower()
        return any(k.lower() == lname for k, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k.lower(), v) for k, v in self._items] == [(k.lower(), v) for k, v in other._items]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # Headers end up in logs and exception messages; credentials must not.
        shown = [(k, "***" if _is_sensitive(k) else v) for k, v in self._items]
        return f"Headers({shown!r})"


def _is_sensitive(name: str) -> bool:
    lname = name.lower()
    return any(h in lname for h in _SENSITIVE_HINTS)


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseHead:
    version: tuple[int, int]
    status: int
    reason: str
    headers: Headers
    head_bytes: int  # bytes of the input consumed, including the blank line


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: tuple[int, int]
    headers: Headers
    head_bytes: int
    framing: Framing  # already validated against smuggling; same as body_framing(head)


Framing = (
    tuple[Literal["length"], int]
    | tuple[Literal["chunked"]]
    | tuple[Literal["close"]]
    | tuple[Literal["none"]]
)


def _head_end(data: bytes | bytearray, start: int, strict: bool) -> int:
    """Index just past the blank line ending the head, or -1 while incomplete."""
    if strict:
        i = data.find(b"\r\n\r\n", start)
        return -1 if i < 0 else i + 4
    a = data.find(b"\n\n", start)
    b = data.find(b"\n\r\n", start)
    ends = [e for e in ((a + 2) if a >= 0 else -1, (b + 3) if b >= 0 else -1) if e >= 0]
    return min(ends) if ends else -1


def _split_head(
    data: bytes | bytearray, start: int, max_header_bytes: int, strict: bool, err: int
) -> tuple[list[bytes], int] | None:
    end = _head_end(data, start, strict)
    if end < 0 and strict and _BARE_LF.search(data, start):
        # An LF-only request would otherwise wait for a CRLFCRLF that never comes.
        raise HttpProtocolError(err, "bare LF in the header section")
    if end < 0:
        if len(data) > max_header_bytes:
            raise HttpProtocolError(
                431 if err == 400 else err, f"header section over {max_header_bytes} bytes"
            )
        return None
    if end > max_header_bytes:
        raise HttpProtocolError(431 if err == 400 else err, f"header section over {max_header_bytes} bytes")
    head = bytes(data[start:end])
    if strict:
        lines = head[:-4].split(b"\r\n")
        for line in lines:
            if b"\n" in line or b"\r" in line:
                raise HttpProtocolError(err, "bare CR or LF in the header section")
    else:
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in head.split(b"\n")]
        while lines and not lines[-1]:
            lines.pop()
        for line in lines:
            if b"\r" in line:
                raise HttpProtocolError(err, "bare CR in the header section")
    return lines, end


def _parse_fields(lines: list[bytes], max_headers: int, err: int) -> Headers:
    if len(lines) > max_headers:
        raise HttpProtocolError(431 if err == 400 else err, f"more than {max_headers} header fields")
    headers = Headers()
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            # obs-fold (or whitespace before the first field): the classic smuggling vector.
            raise HttpProtocolError(err, "obsolete line folding or leading whitespace in a header line")
        name, sep, value = line.partition(b":")
        if not sep:
            raise HttpProtocolError(err, "header line without a colon")
        if name != name.rstrip(b" \t"):
            raise HttpProtocolError(err, "whitespace between header name and colon")
        if not _TOKEN.fullmatch(name):
            raise HttpProtocolError(err, "invalid header name")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise HttpProtocolError(err, f"control character in the value of {name.decode('ascii')}")
        headers.add(name.decode("ascii"), value.decode("latin-1"))
    return headers


def parse_response_head(
    data: bytes | bytearray,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    *,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> ResponseHead | None:
    """Parse a status line and header fields from the start of `data`.

    Returns None while the head is incomplete (feed more bytes and call again); the body starts at
    ``head.head_bytes``. Raises `HttpProtocolError` (status 502) for malformed or oversized heads.
    """
    split = _split_head(data, 0, max_header_bytes, strict=False, err=502)
    if split is None:
        return None
    lines, end = split
    if not lines:
        raise HttpProtocolError(502, "empty response head")
    m = _STATUS_LINE.fullmatch(lines[0])
    if not m:
        raise HttpProtocolError(502, f"malformed status line {lines[0][:80]!r}")
    version = (int(m.group(1)), int(m.group(2)))
    if version[0] != 1:
        raise HttpProtocolError(502, f"unsupported HTTP version {version[0]}.{version[1]}")
    headers = _parse_fields(lines[1:], max_headers, 502)
    reason = (m.group(4) or b"").decode("latin-1")
    return ResponseHead(version, int(m.group(3)), reason, headers, end)


def parse_request_head(
    data: bytes | bytearray,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    *,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_body_bytes: int | None = None,
) -> RequestHead | None:
    """Parse a request line and header fields for a server, refusing anything ambiguous.

    Returns None while incomplete. Raises `HttpProtocolError` whose status the server should send
    (then close the connection): 400 malformed/ambiguous framing, 413 declared body over
    `max_body_bytes`, 431 head too large, 501 unsupported transfer coding, 505 HTTP version.
    Line ends must be CRLF; up to a few empty lines before the request line are skipped
    (RFC 9112 §2.2).
    """
    start = 0
    while data.startswith(b"\r\n", start) and start < 8:
        start += 2
    split = _split_head(data, start, max_header_bytes, strict=True, err=400)
    if split is None:
        return None
    lines, end = split
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpProtocolError(400, "malformed request line")
    raw_method, raw_target, raw_version = parts
    if not _TOKEN.fullmatch(raw_method):
        raise HttpProtocolError(400, "invalid method")
    vm = _VERSION.fullmatch(raw_version)
    if not vm:
        raise HttpProtocolError(400, "invalid HTTP version")
    version = (int(vm.group(1)), int(vm.group(2)))
    if version[0] != 1:
        raise HttpProtocolError(505, "HTTP version not supported")
    method = raw_method.decode("ascii")
    if not _TARGET.fullmatch(raw_target):
        raise HttpProtocolError(400, "invalid request target")
    target = raw_target.decode("ascii")
    if not _target_form_ok(method, target):
        raise HttpProtocolError(400, "invalid request target form")
    headers = _parse_fields(lines[1:], max_headers, 400)
    hosts = headers.get_all("host")
    if len(hosts) > 1 or (version >= (1, 1) and not hosts):
        raise HttpProtocolError(400, "exactly one Host header is required")
    if hosts and _BAD_VALUE.search(hosts[0].encode("latin-1")):
        raise HttpProtocolError(400, "invalid Host header")
    head = RequestHead(method, target, version, headers, end, ("none",))
    framing = _request_framing(head, max_body_bytes)
    return RequestHead(method, target, version, headers, end, framing)


def _target_form_ok(method: str, target: str) -> bool:
    if target.startswith("/"):
        return True
    if target == "*":
        return method == "OPTIONS"
    if method == "CONNECT":
        return ":" in target and "/" not in target
    lower = target.lower()
    return lower.startswith(("http://", "https://")) and len(target) > lower.index("//") + 2


def _parse_length(values: list[str], err: int) -> int:
    if len(values) != 1:
        raise HttpProtocolError(err, "multiple Content-Length headers")
    raw = values[0].encode("latin-1")
    if not _DIGITS.fullmatch(raw):
        # Also catches "1, 1", "+5", "-1", "0x10", empty.
        raise HttpProtocolError(err, "invalid Content-Length")
    if len(raw) > _MAX_LENGTH_DIGITS:
        raise HttpProtocolError(413 if err == 400 else err, "Content-Length too large")
    return int(raw)


def _transfer_coding(headers: Headers, err: int) -> None:
    codings = headers.tokens("transfer-encoding")
    if codings == ["chunked"]:
        return
    if "chunked" in codings:
        # "chunked, identity", "chunked, chunked", "gzip, chunked": two parsers can disagree
        # about where the body ends, so only a lone "chunked" is accepted.
        raise HttpProtocolError(err, "Transfer-Encoding must be exactly 'chunked'")
    raise HttpProtocolError(501 if err == 400 else err, "unsupported Transfer-Encoding")


def _request_framing(head: RequestHead, max_body_bytes: int | None) -> Framing:
    headers = head.headers
    has_te = "transfer-encoding" in headers
    cls = headers.get_all("content-length")
    if has_te:
        if cls:
            raise HttpProtocolError(400, "both Transfer-Encoding and Content-Length")
        if head.version < (1, 1):
            raise HttpProtocolError(400, "Transfer-Encoding in an HTTP/1.0 request")
        _transfer_coding(headers, 400)
        return ("chunked",)
    if cls:
        n = _parse_length(cls, 400)
        if max_body_bytes is not None and n > max_body_bytes:
            raise HttpProtocolError(413, f"body of {n} bytes exceeds {max_body_bytes}")
        return ("length", n)
    return ("none",)


def body_framing(head: RequestHead | ResponseHead, *, request_method: str | None = None) -> Framing:
    """How the body after `head` is delimited (RFC 9112 §6.3).

    For a response pass the method of the request it answers (HEAD responses have no body).
    ``("length", n)``: exactly n bytes; ``("chunked",)``: use `ChunkedDecoder`; ``("close",)``:
    read until the connection closes (responses only); ``("none",)``: no body.
    Conflicting or invalid framing raises `HttpProtocolError`.
    """
    if isinstance(head, RequestHead):
        return _request_framing(head, None)
    status = head.status
    if request_method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return ("none",)
    headers = head.headers
    cls = headers.get_all("content-length")
    if "transfer-encoding" in headers:
        if cls:
            # RFC 9112 says TE wins, but the pair is a response-splitting signature: refuse.
            raise HttpProtocolError(502, "both Transfer-Encoding and Content-Length")
        if head.version < (1, 1):
            raise HttpProtocolError(502, "Transfer-Encoding in an HTTP/1.0 response")
        _transfer_coding(headers, 502)
        return ("chunked",)
    if cls:
        return ("length", _parse_length(cls, 502))
    return ("close",)


def keep_alive(head: RequestHead | ResponseHead) -> bool:
    """Whether the connection may carry another message after this one (RFC 9112 §9.3)."""
    tokens = head.headers.tokens("connection")
    if "close" in tokens:
        return False
    if head.version >= (1, 1):
        return True
    return "keep-alive" in tokens


# ---------------------------------------------------------------------------------------------
# Chunked transfer coding
# ---------------------------------------------------------------------------------------------

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    """Incremental decoder for ``Transfer-Encoding: chunked``.

    `feed` returns the body bytes decoded so far; once `done`, bytes after the last chunk are in
    `unused`. Every line must end in CRLF; chunk sizes are plain hex (at most 16 digits);
    extensions and trailer fields are read, bounded and ignored (never merged into headers, so a
    trailer cannot smuggle a framing header). Errors raise `HttpProtocolError` with `error_status`
    (400 by default, 413 for a body over `max_body_bytes`).
    """

    def __init__(
        self,
        *,
        max_body_bytes: int | None = None,
        max_line_bytes: int = 4096,
        max_trailer_bytes: int = 16 * 1024,
        error_status: int = 400,
    ) -> None:
        self._buf = bytearray()
        self._state = _SIZE
        self._remaining = 0
        self._trailer = 0
        self.total = 0
        self._max_body = max_body_bytes
        self._max_line = max_line_bytes
        self._max_trailer = max_trailer_bytes
        self._err = error_status

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def unused(self) -> bytes:
        return bytes(self._buf) if self._state == _DONE else b""

    def _line(self, limit: int) -> bytes | None:
        buf = self._buf
        j = buf.find(b"\n")
        if j < 0:
            if len(buf) > limit:
                raise HttpProtocolError(self._err, "chunk line too long")
            return None
        if j == 0 or buf[j - 1] != 0x0D:
            raise HttpProtocolError(self._err, "bare LF in chunked body")
        line = bytes(buf[: j - 1])
        del buf[: j + 1]
        if b"\r" in line:
            raise HttpProtocolError(self._err, "bare CR in chunked body")
        if len(line) > limit:
            raise HttpProtocolError(self._err, "chunk line too long")
        return line

    def feed(self, data: bytes | bytearray) -> bytes:
        self._buf += data
        out = bytearray()
        buf = self._buf
        while self._state != _DONE:
            if self._state == _SIZE:
                line = self._line(self._max_line)
                if line is None:
                    break
                m = _CHUNK_SIZE.fullmatch(line)
                if not m or len(m.group(1)) > _MAX_CHUNK_HEX_DIGITS:
                    raise HttpProtocolError(self._err, "invalid chunk size")
                size = int(m.group(1), 16)
                if size == 0:
                    self._state = _TRAILER
                    continue
                if self._max_body is not None and self.total + size > self._max_body:
                    raise HttpProtocolError(413, f"chunked body exceeds {self._max_body} bytes")
                self._remaining = size
                self._state = _DATA
            elif self._state == _DATA:
                if not buf:
                    break
                take = min(self._remaining, len(buf))
                out += buf[:take]
                del buf[:take]
                self._remaining -= take
                self.total += take
                if self._remaining == 0:
                    self._state = _DATA_END
            elif self._state == _DATA_END:
                if len(buf) < 2:
                    if buf and buf[0] != 0x0D:
                        raise HttpProtocolError(self._err, "chunk data not followed by CRLF")
                    break
                if buf[:2] != b"\r\n":
                    raise HttpProtocolError(self._err, "chunk data not followed by CRLF")
                del buf[:2]
                self._state = _SIZE
            else:  # _TRAILER
                line = self._line(self._max_trailer)
                if line is None:
                    if len(buf) + self._trailer > self._max_trailer:
                        raise HttpProtocolError(self._err, "trailer section too large")
                    break
                self._trailer += len(line) + 2
                if self._trailer > self._max_trailer:
                    raise HttpProtocolError(self._err, "trailer section too large")
                if not line:
                    self._state = _DONE
                    break
                name, sep, _ = line.partition(b":")
                if not sep or not _TOKEN.fullmatch(name):
                    raise HttpProtocolError(self._err, "malformed trailer field")
        return bytes(out)


LAST_CHUNK = b"0\r\n\r\n"


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body. Empty data gives b"" (an empty chunk would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


# ---------------------------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------------------------


def _check_field(name: str, value: str) -> None:
    # Values may come from tool arguments (Mcp-Param-*): CR/LF here would be header injection.
    if not _TOKEN_STR.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if _BAD_VALUE_STR.search(value) or value != value.strip(" \t"):
        raise ValueError(f"invalid value for header {name!r}")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {name!r} is not latin-1; encode it first") from None


def _format_fields(headers: Headers) -> bytes:
    out = []
    for name, value in headers:
        _check_field(name, value)
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode("latin-1")


def format_request(
    method: str,
    target: str,
    headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes | None = None,
) -> bytes:
    """Serialise a request. Adds Content-Length for a body unless framing headers are present."""
    if not _TOKEN_STR.fullmatch(method):
        raise ValueError(f"invalid method {method!r}")
    if not target.isascii() or not _TARGET.fullmatch(target.encode("ascii")):
        raise ValueError(f"invalid request target {target!r}")
    hdrs = Headers(headers)
    if body is not None and "content-length" not in hdrs and "transfer-encoding" not in hdrs:
        hdrs.add("Content-Length", str(len(body)))
    head = f"{method} {target} HTTP/1.1\r\n".encode("ascii") + _format_fields(hdrs) + b"\r\n"
    return head + body if body else head


def format_response(
    status: int,
    headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes | None = None,
    *,
    reason: str | None = None,
) -> bytes:
    """Serialise a response head (and body). Adds Content-Length when `body` is given and the
    headers do not already frame it; for a chunked or SSE body pass body=None and send
    `encode_chunk(...)` pieces followed by `LAST_CHUNK`."""
    if not 100 <= status <= 999:
        raise ValueError(f"invalid status {status}")
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    if _BAD_VALUE_STR.search(reason):
        raise ValueError("invalid reason phrase")
    hdrs = Headers(headers)
    no_body = 100 <= status < 200 or status in (204, 304)
    if body and no_body:
        raise ValueError(f"status {status} cannot carry a body")
    if body is not None and not no_body and "content-length" not in hdrs and "transfer-encoding" not in hdrs:
        hdrs.add("Content-Length", str(len(body)))
    head = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1") + _format_fields(hdrs) + b"\r\n"
    return head + body if body else head


# ---------------------------------------------------------------------------------------------
# Server-sent events
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event. `id`/`retry` are the values set *in this event's block* (None when
    absent); the spec's sticky "last event ID" is `SseParser.last_event_id`."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


_EOL = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"


class SseParser:
    """Incremental ``text/event-stream`` parser (WHATWG HTML §9.2.6).

    Lines end with CRLF, LF or CR (a CR at the end of one feed and an LF at the start of the next
    are one line end). One leading UTF-8 BOM is dropped. Invalid UTF-8 becomes U+FFFD.
    ``data`` lines are joined with "\\n"; one space after the colon is removed; comments are
    ignored; an ``id`` containing NUL is ignored; ``retry`` is honoured only if all ASCII digits.

    One deliberate extension: a block with no ``data`` line is dropped as the spec says *unless*
    it set ``id`` or ``retry``; such blocks are surfaced with ``data=""`` so a client sees MCP
    priming events (an id with empty data) and reconnection hints. (A block with an empty
    ``data:`` line is dispatched by the spec itself.) An unterminated event at end of stream is
    never dispatched. An event whose field lines exceed `max_event_bytes` raises
    `HttpProtocolError(413, ...)`.
    """

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_event_bytes
        self._started = False
        self._skip_lf = False
        self._size = 0
        self._data: list[str] = []
        self._has_data = False
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, data: bytes | bytearray) -> list[SseEvent]:
        buf = self._buf
        buf += data
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(bytes(buf)):
                return []
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
            self._started = True
        events: list[SseEvent] = []
        pos = 0
        n = len(buf)
        while pos < n:
            if self._skip_lf:
                self._skip_lf = False
                if buf[pos] == 0x0A:
                    pos += 1
                    continue
            m = _EOL.search(buf, pos)
            if m is None:
                break
            i = m.start()
            line = bytes(buf[pos:i])
            self._skip_lf = buf[i] == 0x0D
            pos = i + 1
            ev = self._line(line)
            if ev is not None:
                events.append(ev)
        del buf[:pos]
        if len(buf) + self._size > self._max:
            raise HttpProtocolError(413, f"SSE event exceeds {self._max} bytes")
        return events

    def _line(self, raw: bytes) -> SseEvent | None:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            return None
        self._size += len(raw) + 1
        if self._size > self._max:
            raise HttpProtocolError(413, f"SSE event exceeds {self._max} bytes")
        line = raw.decode("utf-8", "replace")
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
            self.retry = self._retry
        return None

    def _dispatch(self) -> SseEvent | None:
        ev: SseEvent | None = None
        if self._has_data or self._id is not None or self._retry is not None:
            ev = SseEvent(self._event or "message", "\n".join(self._data), self._id, self._retry)
        self._data = []
        self._has_data = False
        self._event = ""
        self._id = None
        self._retry = None
        self._size = 0
        return ev


_SPLIT_LINES = re.compile(r"\r\n|\r|\n")


def format_sse_event(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Serialise one event (LF line ends). Multi-line `data` becomes several ``data:`` lines;
    ``data=""`` with an `id` is an MCP priming event."""
    lines: list[str] = []
    if event is not None:
        if _SPLIT_LINES.search(event) or "\0" in event:
            raise ValueError("SSE event type must be one line")
        lines.append(f"event: {event}")
    if id is not None:
        if _SPLIT_LINES.search(id) or "\0" in id:
            raise ValueError("SSE id must be one line without NUL")
        lines.append(f"id: {id}")
    if retry is not None:
        if retry < 0:
            raise ValueError("SSE retry must be >= 0")
        lines.append(f"retry: {int(retry)}")
    if data is not None:
        lines.extend(f"data: {part}" for part in _SPLIT_LINES.split(data))
    if not lines:
        raise ValueError("empty SSE event")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def format_sse_comment(text: str = "") -> bytes:
    """A comment block (keep-alive); ignored by parsers."""
    return ("".join(f": {part}\n" if part else ":\n" for part in _SPLIT_LINES.split(text)) + "\n").encode(
        "utf-8"
    )


# ---------------------------------------------------------------------------------------------
# Client errors
# ---------------------------------------------------------------------------------------------


class HttpError(Exception):
    """Base of client errors. `maybe_sent` is False only when the request certainly did not leave
    this process (so repeating it cannot execute anything twice)."""

    maybe_sent: bool = True

    def __init__(self, message: str, *, maybe_sent: bool | None = None) -> None:
        super().__init__(message)
        if maybe_sent is not None:
            self.maybe_sent = maybe_sent


class ConnectError(HttpError):
    """DNS, TCP or TLS failure before anything was written (includes certificate errors)."""

    maybe_sent = False


class HttpTimeout(HttpError):
    """Base of the timeouts."""


class ConnectTimeout(HttpTimeout):
    maybe_sent = False


class PoolTimeout(ConnectTimeout):
    """No connection slot became free in time."""


class ReadTimeout(HttpTimeout):
    """The peer was silent for longer than ``Timeouts.read`` after sending began."""


class TotalTimeout(HttpTimeout):
    """The ``Timeouts.total`` deadline passed; `maybe_sent` says whether sending had begun."""


class ConnectionLost(HttpError):
    """The connection broke (reset, EOF, TLS alert) after sending began."""


class ProtocolError(HttpError):
    """The server's response is not valid HTTP/1.1 (or breaks our framing rules)."""


class BodyTooLarge(HttpError):
    """The response body (or one SSE event) is over the limit; the connection is dropped."""


def _from_wire(exc: HttpProtocolError) -> HttpError:
    if exc.status == 413:
        return BodyTooLarge(exc.reason)
    return ProtocolError(exc.reason)


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; None = no limit. See the module docstring for exactly what each one covers."""

    connect: float | None = 10.0
    read: float | None = 60.0
    total: float | None = None
    pool: float | None = None


def make_ssl_context(
    *,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """Client TLS context: system CA store, or only `cafile` when given (a private CA is then the
    sole trust anchor); optional client certificate for mTLS; hostname checking on unless
    `verify` is False (logged as a warning: it makes the link open to interception)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    if not verify:
        log.warning("TLS certificate verification is DISABLED for this HTTP client")
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with contextlib.suppress(NotImplementedError):
        ctx.set_alpn_protocols(["http/1.1"])
    return ctx


_CONN_IDS = itertools.count(1)
_MANAGED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "expect", "te"}
)
_T = TypeVar("_T")
Origin = tuple[str, str, int]


class _Connection:
    __slots__ = (
        "buf",
        "checked_out",
        "id",
        "idle_handle",
        "idle_since",
        "origin",
        "reader",
        "rx",
        "uses",
        "writer",
    )

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Origin) -> None:
        self.reader = reader
        self.writer = writer
        self.origin = origin
        self.buf = bytearray()
        self.uses = 0
        self.rx = 0  # response bytes received during the current exchange
        self.idle_since = 0.0
        self.idle_handle: asyncio.TimerHandle | None = None
        self.checked_out = False
        self.id = next(_CONN_IDS)

    def alive(self) -> bool:
        # The loop processed any FIN/RST that arrived while the connection sat idle; a connection
        # whose server already hung up is discarded here, before a single byte is written to it.
        return not (
            self.writer.is_closing()
            or self.reader.at_eof()
            or self.reader.exception() is not None
            or self.buf
        )

    def close(self) -> None:
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self) -> None:
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class _Pool:
    def __init__(self, max_connections: int) -> None:
        self.slots = asyncio.Semaphore(max_connections)
        self.idle: deque[_Connection] = deque()


class _StaleConnection(Exception):
    def __init__(self, error: HttpError) -> None:
        super().__init__(str(error))
        self.error = error


class HttpClient:
    """Pooled HTTP/1.1 client; one instance per backend gives a per-backend pool limit.

    `max_connections` bounds the connections to one origin (scheme, host, port), idle ones
    included; further requests wait for a slot (``Timeouts.pool``). Idle connections are kept
    `idle_timeout` seconds and checked before reuse. Not thread-safe; use from one event loop.

    Stale connections: a pooled connection the server has closed while idle is detected before
    reuse and silently replaced. If a *reused* connection then fails with zero response bytes (the
    server closed it just as we sent), the request is repeated once on a fresh connection only when
    the caller passed ``idempotent=True``; otherwise `ConnectionLost` (``maybe_sent=True``) is
    raised. Zero bytes back does not prove the server did nothing: a server that processed the
    request and then crashed looks the same, so a non-idempotent request is never re-sent here.
    """

    def __init__(
        self,
        *,
        max_connections: int = 10,
        idle_timeout: float = 60.0,
        timeouts: Timeouts | None = None,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        verify: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = f"sentinel-gw/{__version__}",
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.timeouts = timeouts or Timeouts()
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self.user_agent = user_agent
        self._tls_args = {"cafile": cafile, "certfile": certfile, "keyfile": keyfile, "verify": verify}
        self._ssl_context = ssl_context
        if ssl_context is None and (cafile or certfile or not verify):
            # Built now so a missing or bad CA/certificate file fails at configuration time.
            self._ssl_context = make_ssl_context(**self._tls_args)  # type: ignore[arg-type]
        self._pools: dict[Origin, _Pool] = {}
        self._closed = False

    # -- public ------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: bytes | None = None,
        timeouts: Timeouts | None = None,
        idempotent: bool = False,
    ) -> HttpResponse:
        """Send one request and return once the response head is in.

        The body is then read from the returned `HttpResponse` (``read``, ``iter_bytes``, ``sse``);
        always finish with ``aclose()`` or ``async with``. 3xx responses are returned as they are.
        The caller may not set Host, Content-Length, Transfer-Encoding, Connection, Upgrade,
        Expect or TE: framing belongs to this client.
        """
        if self._closed:
            raise RuntimeError("HttpClient is closed")
        timeouts = timeouts or self.timeouts
        origin, target, host_header = _split_url(url)
        hdrs = Headers(headers)
        for name, _ in hdrs:
            if name.lower() in _MANAGED:
                raise ValueError(f"header {name!r} is managed by the HTTP client")
        method = method.upper()
        hdrs.add("Host", host_header)
        if "user-agent" not in hdrs and self.user_agent:
            hdrs.add("User-Agent", self.user_agent)
        hdrs.add("Connection", "keep-alive")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        raw = format_request(method, target, hdrs, body)  # validation errors before any I/O

        loop = asyncio.get_running_loop()
        deadline = None if timeouts.total is None else loop.time() + timeouts.total
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self.max_connections)
        retried = False
        while True:
            conn = await self._acquire(pool, origin, timeouts, deadline)
            try:
                return await self._exchange(
                    pool=pool,
                    conn=conn,
                    method=method,
                    url=url,
                    raw=raw,
                    timeouts=timeouts,
                    deadline=deadline,
                )
            except _StaleConnection as stale:
                self._release(pool, conn, reuse=False)
                if idempotent and not retried:
                    log.debug("retrying %s %s on a fresh connection after a stale one", method, url)
                    retried = True
                    continue
                raise stale.error from None
            except BaseException:
                self._release(pool, conn, reuse=False)
                raise

    async def aclose(self) -> None:
        """Close idle connections; connections in use close when their response is closed."""
        self._closed = True
        conns = []
        for pool in self._pools.values():
            while pool.idle:
                conn = pool.idle.pop()
                conn.close()
                conns.append(conn)
        for conn in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.writer.wait_closed(), 1.0)

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def pool_stats(self, url: str) -> dict[str, int]:
        """Idle connections of the origin of `url` (for metrics and tests)."""
        origin, _, _ = _split_url(url)
        pool = self._pools.get(origin)
        return {"idle": len(pool.idle) if pool else 0}

    # -- internals ---------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # Lazy so plain-http clients never read the system CA store; https pays it once.
            self._ssl_context = make_ssl_context(**self._tls_args)  # type: ignore[arg-type]
        return self._ssl_context

    async def _acquire(
        self, pool: _Pool, origin: Origin, timeouts: Timeouts, deadline: float | None
    ) -> _Connection:
        await _bounded(
            pool.slots.acquire(),
            timeouts.pool,
            deadline,
            lambda: PoolTimeout("timed out waiting for a free connection"),
            lambda: TotalTimeout("total timeout while waiting for a free connection", maybe_sent=False),
        )
        try:
            while pool.idle:
                conn = pool.idle.pop()  # LIFO: the most recently used is the likeliest alive
                if conn.idle_handle is not None:
                    conn.idle_handle.cancel()
                    conn.idle_handle = None
                if conn.alive():
                    conn.checked_out = True
                    return conn
                conn.abort()
            conn = await self._connect(origin, timeouts, deadline)
            conn.checked_out = True
            return conn
        except BaseException:
            pool.slots.release()
            raise

    async def _connect(self, origin: Origin, timeouts: Timeouts, deadline: float | None) -> _Connection:
        scheme, host, port = origin
        tls = self._tls() if scheme == "https" else None
        try:
            reader, writer = await _bounded(
                asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None),
                timeouts.connect,
                deadline,
                lambda: ConnectTimeout(f"timed out connecting to {host}:{port}"),
                lambda: TotalTimeout(f"total timeout while connecting to {host}:{port}", maybe_sent=False),
            )
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(f"TLS verification failed for {host}:{port}: {exc.verify_message}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return _Connection(reader, writer, origin)

    def _release(self, pool: _Pool, conn: _Connection, *, reuse: bool) -> None:
        if not conn.checked_out:
            return
        conn.checked_out = False
        if reuse and not self._closed and conn.alive():
            loop = asyncio.get_running_loop()
            conn.idle_since = loop.time()
            conn.idle_handle = loop.call_later(self.idle_timeout, self._expire, pool, conn)
            pool.idle.append(conn)
        elif reuse:
            conn.close()
        else:
            conn.abort()
        pool.slots.release()

    @staticmethod
    def _expire(pool: _Pool, conn: _Connection) -> None:
        conn.idle_handle = None
        if conn in pool.idle:
            pool.idle.remove(conn)
            conn.close()

    async def _read_some(self, conn: _Connection, timeouts: Timeouts, deadline: float | None) -> bytes:
        try:
            data = await _bounded(
                conn.reader.read(65536),
                timeouts.read,
                deadline,
                lambda: ReadTimeout("timed out reading the response"),
                lambda: TotalTimeout("total timeout while reading the response", maybe_sent=True),
            )
        except HttpError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionLost(f"connection lost: {exc!r}") from exc
        conn.rx += len(data)
        return data

    async def _exchange(
        self,
        *,
        pool: _Pool,
        conn: _Connection,
        method: str,
        url: str,
        raw: bytes,
        timeouts: Timeouts,
        deadline: float | None,
    ) -> HttpResponse:
        reused = conn.uses > 0
        conn.uses += 1
        conn.rx = 0
        try:
            try:
                conn.writer.write(raw)
                await _bounded(
                    conn.writer.drain(),
                    timeouts.read,
                    deadline,
                    lambda: ReadTimeout("timed out sending the request"),
                    lambda: TotalTimeout("total timeout while sending the request", maybe_sent=True),
                )
            except HttpError:
                raise
            except (OSError, ssl.SSLError) as exc:
                raise ConnectionLost(f"connection lost while sending: {exc!r}") from exc
            head = await self._read_head(conn, timeouts, deadline)
        except ConnectionLost as exc:
            if reused and conn.rx == 0:
                raise _StaleConnection(exc) from exc
            raise
        try:
            framing = body_framing(head, request_method=method)
        except HttpProtocolError as exc:
            raise ProtocolError(exc.reason) from None
        reusable = keep_alive(head) and framing[0] != "close"
        resp = HttpResponse(
            client=self,
            pool=pool,
            conn=conn,
            url=url,
            head=head,
            framing=framing,
            reusable=reusable,
            timeouts=timeouts,
            deadline=deadline,
        )
        if framing[0] == "none" or framing == ("length", 0):
            resp._finish()
        return resp

    async def _read_head(self, conn: _Connection, timeouts: Timeouts, deadline: float | None) -> ResponseHead:
        interim = 0
        while True:
            try:
                head = parse_response_head(conn.buf, self.max_header_bytes, max_headers=self.max_headers)
            except HttpProtocolError as exc:
                raise ProtocolError(exc.reason) from None
            if head is None:
                data = await self._read_some(conn, timeouts, deadline)
                if not data:
                    if conn.buf:
                        raise ProtocolError("connection closed inside the response head")
                    raise ConnectionLost("server closed the connection without a response")
                conn.buf += data
                continue
            del conn.buf[: head.head_bytes]
            if 100 <= head.status < 200:
                if head.status == 101:
                    raise ProtocolError("unexpected 101 Switching Protocols")
                interim += 1
                if interim > 16:
                    raise ProtocolError("too many interim responses")
                continue  # e.g. 100 Continue / 103 Early Hints; the final response follows
            return head


class HttpResponse:
    """A response whose head has arrived; the body is read on demand, once."""

    def __init__(
        self,
        *,
        client: HttpClient,
        pool: _Pool,
        conn: _Connection,
        url: str,
        head: ResponseHead,
        framing: Framing,
        reusable: bool,
        timeouts: Timeouts,
        deadline: float | None,
    ) -> None:
        self.url = url
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.http_version = f"{head.version[0]}.{head.version[1]}"
        self.connection_id = conn.id  # identifies the pooled connection (logs, tests)
        self._client = client
        self._pool = pool
        self._conn = conn
        self._framing = framing
        self._reusable = reusable
        self._timeouts = timeouts
        self._deadline = deadline
        self._remaining = framing[1] if framing[0] == "length" else 0  # type: ignore[misc]
        self._decoder = ChunkedDecoder(error_status=502) if framing[0] == "chunked" else None
        self._done = False
        self._closed = False
        self._iterating = False

    @property
    def complete(self) -> bool:
        """The whole body has been received."""
        return self._done

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status} {self.url}>"

    async def __aenter__(self) -> HttpResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _finish(self) -> None:
        self._done = True
        if not self._closed:
            self._closed = True
            # Bytes beyond the body would be mistaken for the next response: never reuse then.
            reuse = self._reusable and not self._conn.buf
            self._client._release(self._pool, self._conn, reuse=reuse)

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        # Dropped without aclose(): it would hold its pool slot forever and starve the origin.
        self._closed = True
        log.warning("HTTP response from %s was never closed; dropping its connection", self.url)
        with contextlib.suppress(Exception):
            self._client._release(self._pool, self._conn, reuse=False)

    async def aclose(self) -> None:
        """Give the connection back to the pool if the body was fully read and keep-alive is
        allowed; otherwise close it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._client._release(self._pool, self._conn, reuse=False)

    async def _next(self) -> bytes:
        conn = self._conn
        kind = self._framing[0]
        if kind == "length":
            if conn.buf:
                take = min(self._remaining, len(conn.buf))
                data = bytes(conn.buf[:take])
                del conn.buf[:take]
            else:
                data = await self._client._read_some(conn, self._timeouts, self._deadline)
                if not data:
                    raise ProtocolError(f"connection closed with {self._remaining} body bytes missing")
                if len(data) > self._remaining:
                    conn.buf += data[self._remaining :]
                    data = data[: self._remaining]
            self._remaining -= len(data)
            if self._remaining == 0:
                self._finish()
            return data
        if kind == "chunked":
            assert self._decoder is not None
            if conn.buf:
                data = bytes(conn.buf)
                conn.buf.clear()
            else:
                data = await self._client._read_some(conn, self._timeouts, self._deadline)
                if not data:
                    raise ProtocolError("connection closed inside a chunked body")
            try:
                out = self._decoder.feed(data)
            except HttpProtocolError as exc:
                raise _from_wire(exc) from None
            if self._decoder.done:
                conn.buf += self._decoder.unused
                self._finish()
            return out
        # "close": the body is everything until EOF
        if conn.buf:
            data = bytes(conn.buf)
            conn.buf.clear()
            return data
        data = await self._client._read_some(conn, self._timeouts, self._deadline)
        if not data:
            self._finish()
        return data

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        """Yield body chunks as they arrive (chunked framing removed). One pass only."""
        if self._iterating:
            raise RuntimeError("the response body can be read only once")
        self._iterating = True
        if self._closed and not self._done:
            raise RuntimeError("the response is closed")
        try:
            while not self._done:
                chunk = await self._next()
                if chunk:
                    yield chunk
        except BaseException:
            # Includes cancellation: a half-read body leaves the connection unusable.
            await self.aclose()
            raise

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; `BodyTooLarge` (and the connection dropped) when over `limit`
        (default: the client's ``max_body_bytes``)."""
        limit = self._client.max_body_bytes if limit is None else limit
        if self._framing[0] == "length" and self._remaining > limit:
            await self.aclose()
            raise BodyTooLarge(f"Content-Length {self._remaining} exceeds the limit of {limit} bytes")
        parts: list[bytes] = []
        size = 0
        it = self.iter_bytes()
        try:
            async for chunk in it:
                size += len(chunk)
                if size > limit:
                    await self.aclose()
                    raise BodyTooLarge(f"response body exceeds the limit of {limit} bytes")
                parts.append(chunk)
        finally:
            await it.aclose()
        return b"".join(parts)

    async def sse(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> AsyncGenerator[SseEvent, None]:
        """Parse the body as ``text/event-stream`` and yield events as they complete."""
        parser = SseParser(max_event_bytes=max_event_bytes)
        it = self.iter_bytes()
        try:
            async for chunk in it:
                try:
                    events = parser.feed(chunk)
                except HttpProtocolError as exc:
                    await self.aclose()
                    raise _from_wire(exc) from None
                for ev in events:
                    yield ev
        finally:
            await it.aclose()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


async def _bounded(
    aw: Awaitable[_T],
    phase_timeout: float | None,
    deadline: float | None,
    phase_error: Callable[[], HttpError],
    total_error: Callable[[], HttpError],
) -> _T:
    """Await `aw` under the tighter of a phase timeout and the total deadline, raising the
    matching error."""
    remaining = None
    if deadline is not None:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            if asyncio.iscoroutine(aw):
                aw.close()
            raise total_error()
    if phase_timeout is None and remaining is None:
        return await aw
    total_binds = remaining is not None and (phase_timeout is None or remaining <= phase_timeout)
    timeout = remaining if total_binds else phase_timeout
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise (total_error() if total_binds else phase_error()) from None


def _split_url(url: str) -> tuple[Origin, str, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme in {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in URLs are not supported; send an Authorization header")
    host = parts.hostname
    if not host:
        raise ValueError(f"URL without host: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    default = 443 if scheme == "https" else 80
    port = port or default
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if not target.isascii() or not _TARGET.fullmatch(target.encode("ascii")):
        raise ValueError(f"URL path must be percent-encoded ASCII: {url!r}")
    host_text = f"[{host}]" if ":" in host else host
    host_header = host_text if port == default else f"{host_text}:{port}"
    return (scheme, host, port), target, host_header


# ---------------------------------------------------------------------------------------------
# Server helpers (shared by the admin endpoint and the HTTP front)
# ---------------------------------------------------------------------------------------------


class RequestReader:
    """Reads requests off one server connection, keep-alive included, against slow clients.

    `read_head` returns the next head, or None when the client closed (or stayed silent for
    `idle_timeout` seconds) before sending a byte of it. Once a request has begun, the whole
    head must arrive within `header_timeout` seconds, else `HttpProtocolError(408)`; other
    errors are `parse_request_head`'s. `read_body` then returns the body (Content-Length or
    chunked) up to `max_body_bytes` (413 beyond), each read bounded by `body_timeout` (408).
    Bytes after a message stay buffered for the next one (pipelining).
    """

    __slots__ = ("_buf", "_reader", "body_timeout", "header_timeout", "max_body_bytes", "max_header_bytes")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        max_header_bytes: int,
        header_timeout: float,
        max_body_bytes: int | None = None,
        body_timeout: float | None = None,
    ) -> None:
        self._reader = reader
        self._buf = bytearray()
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self.max_body_bytes = max_body_bytes
        self.body_timeout = header_timeout if body_timeout is None else body_timeout

    async def _read(self, timeout: float | None, what: str) -> bytes:
        try:
            return await asyncio.wait_for(self._reader.read(65536), timeout)
        except asyncio.TimeoutError:
            raise HttpProtocolError(408, f"{what} not received in time") from None

    async def read_head(self, idle_timeout: float | None = None) -> RequestHead | None:
        buf = self._buf
        if not buf:
            try:
                chunk = await self._read(idle_timeout, "request")
            except HttpProtocolError:
                return None  # idle keep-alive connection: just close it
            if not chunk:
                return None
            buf += chunk
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.header_timeout
        while True:
            head = parse_request_head(buf, self.max_header_bytes, max_body_bytes=self.max_body_bytes)
            if head is not None:
                del buf[: head.head_bytes]
                return head
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise HttpProtocolError(408, "request head not received in time")
            chunk = await self._read(remaining, "request head")
            if not chunk:
                return None  # the client went away before finishing a request
            buf += chunk

    async def read_body(self, head: RequestHead) -> bytes:
        framing = head.framing
        buf = self._buf
        if framing[0] == "length":
            n: int = framing[1]  # type: ignore[misc]
            while len(buf) < n:
                chunk = await self._read(self.body_timeout, "request body")
                if not chunk:
                    raise HttpProtocolError(400, "connection closed inside the request body")
                buf += chunk
            body = bytes(buf) if len(buf) == n else bytes(buf[:n])
            del buf[:n]
            return body
        if framing[0] == "chunked":
            decoder = ChunkedDecoder(max_body_bytes=self.max_body_bytes)
            parts = [decoder.feed(buf)]
            buf.clear()
            while not decoder.done:
                chunk = await self._read(self.body_timeout, "request body")
                if not chunk:
                    raise HttpProtocolError(400, "connection closed inside the request body")
                parts.append(decoder.feed(chunk))
            buf += decoder.unused
            return b"".join(parts)
        return b""


async def linger_close(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = 1.0
) -> None:
    """Half-close, discard what the client still sends (briefly, boundedly), then close.

    Closing with unread input makes the kernel send a reset that can destroy the response still
    in flight; this is how a server ends a connection after an error response.
    """
    try:
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        discarded = 0
        while discarded < 64 * 1024 and (remaining := end - loop.time()) > 0:
            chunk = await asyncio.wait_for(reader.read(4096), remaining)
            if not chunk:
                break
            discarded += len(chunk)
    except (asyncio.TimeoutError, ConnectionError, OSError, RuntimeError):
        pass
    writer.close()
