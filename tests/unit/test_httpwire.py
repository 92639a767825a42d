"""httpwire: sans-I/O parsing, SSE, and the client over real loopback sockets (plain and TLS)."""

from __future__ import annotations

import asyncio
import datetime
import gc
import ipaddress
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sentinel_gw.httpwire import (
    LAST_CHUNK,
    BodyTooLarge,
    ChunkedDecoder,
    ConnectError,
    ConnectionLost,
    Headers,
    HttpClient,
    HttpError,
    HttpProtocolError,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    RequestHead,
    SseEvent,
    SseParser,
    Timeouts,
    TotalTimeout,
    body_framing,
    encode_chunk,
    format_request,
    format_response,
    format_sse_comment,
    format_sse_event,
    keep_alive,
    parse_request_head,
    parse_response_head,
)

pytestmark = pytest.mark.timeout(30)

# =============================================================================================
# Headers
# =============================================================================================


def test_headers_case_insensitive_multi_and_ordered() -> None:
    h = Headers([("Content-Type", "a"), ("X-Multi", "1"), ("x-multi", "2")])
    assert h.get("content-type") == "a"
    assert h.get("CONTENT-TYPE") == "a"
    assert h.get("missing") is None
    assert h.get("missing", "d") == "d"
    assert h.get_all("X-MULTI") == ["1", "2"]
    assert list(h) == [("Content-Type", "a"), ("X-Multi", "1"), ("x-multi", "2")]
    assert "x-multi" in h
    assert len(h) == 3
    h.set("x-multi", "3")
    assert h.get_all("x-multi") == ["3"]
    h.remove("CONTENT-type")
    assert "content-type" not in h
    assert Headers({"Connection": "Keep-Alive, Upgrade"}).tokens("connection") == ["keep-alive", "upgrade"]


def test_headers_repr_hides_credentials() -> None:
    r = repr(Headers({"Authorization": "Bearer s3cret", "X-Api-Key": "k3y", "Accept": "x"}))
    assert "s3cret" not in r
    assert "k3y" not in r
    assert "'x'" in r


# =============================================================================================
# Response heads
# =============================================================================================


def test_parse_response_head_incremental() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b \r\n\r\nabc"
    for i in range(raw.index(b"\r\n\r\n") + 3):
        assert parse_response_head(raw[:i]) is None
    head = parse_response_head(raw)
    assert head is not None
    assert (head.version, head.status, head.reason) == ((1, 1), 200, "OK")
    assert head.headers.get("x-a") == "b"
    assert raw[head.head_bytes :] == b"abc"


def test_parse_response_head_lf_only_and_empty_reason() -> None:
    head = parse_response_head(b"HTTP/1.0 204\nServer: x\n\nrest")
    assert head is not None
    assert head.status == 204
    assert head.reason == ""
    assert head.version == (1, 0)
    assert head.head_bytes == len(b"HTTP/1.0 204\nServer: x\n\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A : x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: x\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
    ],
)
def test_parse_response_head_malformed(raw: bytes) -> None:
    with pytest.raises(HttpProtocolError):
        parse_response_head(raw)


def test_parse_response_head_limits() -> None:
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2000
    with pytest.raises(HttpProtocolError):
        parse_response_head(big, 1024)  # incomplete but already over the limit
    with pytest.raises(HttpProtocolError):
        parse_response_head(big + b"\r\n\r\n", 1024)
    many = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(20)) + b"\r\n"
    with pytest.raises(HttpProtocolError):
        parse_response_head(many, max_headers=10)
    assert parse_response_head(many, max_headers=20) is not None


def _resp(raw: bytes):  # type: ignore[no-untyped-def]
    head = parse_response_head(raw)
    assert head is not None
    return head


@pytest.mark.parametrize(
    ("raw", "method", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET", ("length", 5)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", ("none",)),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "POST", ("none",)),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", "GET", ("none",)),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "POST", ("none",)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "POST", ("chunked",)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", "POST", ("chunked",)),
        (b"HTTP/1.1 200 OK\r\n\r\n", "POST", ("close",)),
        (b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", "POST", ("length", 0)),
    ],
)
def test_body_framing_responses(raw: bytes, method: str, expected: tuple[object, ...]) -> None:
    assert body_framing(_resp(raw), request_method=method) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_body_framing_responses_refused(raw: bytes) -> None:
    with pytest.raises(HttpProtocolError):
        body_framing(_resp(raw), request_method="POST")


def test_keep_alive_rules() -> None:
    assert keep_alive(_resp(b"HTTP/1.1 200 OK\r\n\r\n"))
    assert not keep_alive(_resp(b"HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n"))
    assert not keep_alive(_resp(b"HTTP/1.0 200 OK\r\n\r\n"))
    assert keep_alive(_resp(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"))


# =============================================================================================
# Request heads (server side) and smuggling defences
# =============================================================================================


def _req(raw: bytes, **kw: object) -> RequestHead:
    head = parse_request_head(raw, **kw)  # type: ignore[arg-type]
    assert head is not None
    return head


def test_parse_request_head_ok() -> None:
    raw = b"\r\nPOST /mcp?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"
    assert parse_request_head(raw[:20]) is None
    head = _req(raw)
    assert (head.method, head.target, head.version) == ("POST", "/mcp?x=1", (1, 1))
    assert head.framing == ("length", 2)
    assert body_framing(head) == ("length", 2)
    assert raw[head.head_bytes :] == b"{}"
    assert _req(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n").framing == ("none",)
    chunked = _req(b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert chunked.framing == ("chunked",)
    assert _req(b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n").target == "*"
    assert _req(b"GET http://gw/x HTTP/1.1\r\nHost: gw\r\n\r\n").target == "http://gw/x"
    assert _req(b"GET / HTTP/1.0\r\n\r\n").version == (1, 0)  # HTTP/1.0 needs no Host


SMUGGLING = [
    ("CL+TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("TE+CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 400),
    ("dup CL same", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", 400),
    ("dup CL diff", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n", 400),
    ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\n", 400),
    ("CL negative", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    ("CL plus", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n", 400),
    ("CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
    ("CL empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
    ("CL huge", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413),
    (
        "TE chunked,identity",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        400,
    ),
    (
        "TE chunked twice",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    ("TE identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
    ("TE gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("TE gzip,chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    ("TE vtab", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n", 400),
    ("TE in 1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("leading space TE", b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n", 400),
    ("obs-fold", b"POST / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tTransfer-Encoding: chunked\r\n\r\n", 400),
    ("space before colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
    ("tab before colon", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 4\r\n\r\n", 400),
    ("bare LF", b"POST / HTTP/1.1\nHost: a\n\n", 400),
    ("bare LF in field", b"POST / HTTP/1.1\r\nHost: a\nContent-Length: 4\r\n\r\n", 400),
    ("bare CR", b"POST / HTTP/1.1\r\nHost: a\rContent-Length: 4\r\n\r\n", 400),
    ("NUL in value", b"POST / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
    ("bad header name", b"POST / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", 400),
    ("no Host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("bad method", b"G(ET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("relative target", b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("ctl in target", b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bad version", b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400),
    ("lowercase version", b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),
    ("HTTP/2", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("missing version", b"GET /\r\nHost: a\r\n\r\n", 400),
]


@pytest.mark.parametrize(
    ("raw", "status"), [(r, s) for _, r, s in SMUGGLING], ids=[n for n, _, _ in SMUGGLING]
)
def test_request_smuggling_defences(raw: bytes, status: int) -> None:
    with pytest.raises(HttpProtocolError) as info:
        parse_request_head(raw)
    assert info.value.status == status


def test_request_limits() -> None:
    with pytest.raises(HttpProtocolError) as info:
        parse_request_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n", max_body_bytes=4096)
    assert info.value.status == 413
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(50)) + b"\r\n"
    with pytest.raises(HttpProtocolError) as info:
        parse_request_head(many, max_headers=20)
    assert info.value.status == 431
    with pytest.raises(HttpProtocolError) as info:
        parse_request_head(b"GET /" + b"a" * 5000, 1024)
    assert info.value.status == 431


# =============================================================================================
# Chunked
# =============================================================================================


def test_chunked_decoder_byte_by_byte_with_ext_and_trailers() -> None:
    wire = (
        b"5;name=val\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n"
        b"0\r\nX-Trailer: t\r\nContent-Length: 9\r\n\r\nNEXT"
    )
    dec = ChunkedDecoder()
    out = b""
    for i in range(len(wire)):
        out += dec.feed(wire[i : i + 1])
    assert out == b"hello 0123456789"
    assert dec.done
    assert dec.unused == b"NEXT"
    whole = ChunkedDecoder()
    assert whole.feed(wire) == b"hello 0123456789"
    assert whole.unused == b"NEXT"


def test_chunked_roundtrip_with_encoder() -> None:
    parts = [b"a", b"", b"b" * 300, b"\r\n0\r\n\r\n"]
    wire = b"".join(encode_chunk(p) for p in parts) + LAST_CHUNK
    dec = ChunkedDecoder()
    assert dec.feed(wire) == b"".join(parts)
    assert dec.done
    assert encode_chunk(b"") == b""


@pytest.mark.parametrize(
    "wire",
    [
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
        b"5\r\nhello\r\n0\r\n folded: x\r\n\r\n",
        b"1" * 17 + b"\r\n",
        b"5\rx\r\nhello\r\n0\r\n\r\n",
    ],
)
def test_chunked_decoder_rejects(wire: bytes) -> None:
    with pytest.raises(HttpProtocolError):
        ChunkedDecoder().feed(wire)


def test_chunked_decoder_limits() -> None:
    with pytest.raises(HttpProtocolError) as info:
        ChunkedDecoder(max_body_bytes=8).feed(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n")
    assert info.value.status == 413
    with pytest.raises(HttpProtocolError):
        ChunkedDecoder(max_line_bytes=16).feed(b"5;" + b"x" * 100)
    with pytest.raises(HttpProtocolError):
        ChunkedDecoder(max_trailer_bytes=64).feed(b"0\r\n" + b"X-T: y\r\n" * 20)


# =============================================================================================
# Serialisation
# =============================================================================================


def test_format_response_roundtrip() -> None:
    raw = format_response(200, {"Content-Type": "application/json"}, b'{"a":1}')
    head = _resp(raw)
    assert head.status == 200
    assert head.reason == "OK"
    assert body_framing(head, request_method="POST") == ("length", 7)
    assert raw[head.head_bytes :] == b'{"a":1}'
    assert format_response(202, {}, b"").endswith(b"Content-Length: 0\r\n\r\n")
    streamed = format_response(200, {"Transfer-Encoding": "chunked"})
    assert b"Content-Length" not in streamed
    assert format_response(204, {}, None).startswith(b"HTTP/1.1 204 No Content\r\n")
    with pytest.raises(ValueError):
        format_response(204, {}, b"x")


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-A", "a\r\nX-Evil: 1"), ("X-A", "a\nb"), ("X A", "b"), ("X-A:", "b"), ("X-A", "a\x00"), ("X-A", "€")],
)
def test_format_refuses_header_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        format_response(200, {name: value}, b"")
    with pytest.raises(ValueError):
        format_request("POST", "/", {name: value}, b"")


def test_format_request() -> None:
    raw = format_request("POST", "/mcp", [("Host", "h")], b"{}")
    assert raw == b"POST /mcp HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"
    head = _req(raw)
    assert head.framing == ("length", 2)
    with pytest.raises(ValueError):
        format_request("POST", "/a b", {}, None)
    with pytest.raises(ValueError):
        format_request("P OST", "/", {}, None)


# =============================================================================================
# SSE
# =============================================================================================

SSE_STREAM = (
    b"\xef\xbb\xbf: comment at start\r\n"
    b"id: 0\r\ndata:\r\n\r\n"  # priming: id + empty data
    b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\r\n\r\n'
    b": keep-alive\r\n\r\n"
    b"retry: 1500\nid: 7\ndata: line one\ndata:  two spaces\ndata\ndata:x\n\n"
    b"event: custom\rdata: cr only\r\r"
    b"data: tail without blank line"
)

SSE_EXPECTED = [
    SseEvent("message", "", "0", None),
    SseEvent("message", '{"jsonrpc":"2.0","method":"notifications/progress"}', None, None),
    SseEvent("message", "line one\n two spaces\n\nx", "7", 1500),
    SseEvent("custom", "cr only", None, None),
]


def test_sse_parser_whole_and_byte_by_byte() -> None:
    p = SseParser()
    assert p.feed(SSE_STREAM) == SSE_EXPECTED
    assert p.last_event_id == "7"
    assert p.retry == 1500
    q = SseParser()
    events: list[SseEvent] = []
    for i in range(len(SSE_STREAM)):
        events += q.feed(SSE_STREAM[i : i + 1])
    assert events == SSE_EXPECTED


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 11, 13])
def test_sse_parser_arbitrary_chunking(cut: int) -> None:
    p = SseParser()
    events: list[SseEvent] = []
    for i in range(0, len(SSE_STREAM), cut):
        events += p.feed(SSE_STREAM[i : i + cut])
    assert events == SSE_EXPECTED


def test_sse_crlf_split_between_feeds_is_one_line_end() -> None:
    p = SseParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n") == []  # the LF completes the CR, it is not a blank line
    assert p.feed(b"\r\n") == [SseEvent("message", "a")]


def test_sse_field_rules() -> None:
    p = SseParser()
    stream = (
        b"event: only-type\n\n"  # no data, no id: not dispatched
        b"id: a\x00b\ndata: nul id ignored\n\n"
        b"retry: 12x\ndata: bad retry ignored\n\n"
        b"retry: -5\nretry:\ndata: r\n\n"
        b"unknown: z\ndata:no space\n\n"
        b"id\ndata: empty id\n\n"
        b"data: \xff\xfe invalid utf8\n\n"
        b"\xef\xbb\xbfdata: second BOM is not stripped\n\n"
    )
    assert p.feed(stream) == [
        SseEvent("message", "nul id ignored"),
        SseEvent("message", "bad retry ignored"),
        SseEvent("message", "r"),
        SseEvent("message", "no space"),
        SseEvent("message", "empty id", ""),
        SseEvent("message", "\ufffd\ufffd invalid utf8"),
    ]
    assert p.last_event_id == ""
    assert p.retry is None


def test_sse_retry_only_block_is_surfaced() -> None:
    assert SseParser().feed(b"retry: 3000\n\n") == [SseEvent("message", "", None, 3000)]


def test_sse_bom_split_across_feeds() -> None:
    p = SseParser()
    assert p.feed(b"\xef") == []
    assert p.feed(b"\xbb") == []
    assert p.feed(b"\xbfdata: x\n\n") == [SseEvent("message", "x")]


def test_sse_event_size_limit() -> None:
    with pytest.raises(HttpProtocolError):
        SseParser(max_event_bytes=64).feed(b"data: " + b"a" * 40 + b"\ndata: " + b"b" * 40 + b"\n")
    with pytest.raises(HttpProtocolError):
        SseParser(max_event_bytes=64).feed(b"data: " + b"a" * 100)  # no line end yet
    p = SseParser(max_event_bytes=64)
    for _ in range(10):  # the limit is per event, not per stream
        assert p.feed(b"data: " + b"a" * 40 + b"\n\n") == [SseEvent("message", "a" * 40)]
    assert p.feed(b":" + b"c" * 20 + b"\n") == []


def test_format_sse_roundtrip() -> None:
    wire = (
        format_sse_event("", id="p-1")
        + format_sse_comment("keep\nalive")
        + format_sse_event("one\r\ntwo\rthree\n four", event="message", id="e-2", retry=500)
        + format_sse_event('{"x": 1}')
    )
    assert SseParser().feed(wire) == [
        SseEvent("message", "", "p-1"),
        SseEvent("message", "one\ntwo\nthree\n four", "e-2", 500),
        SseEvent("message", '{"x": 1}'),
    ]
    with pytest.raises(ValueError):
        format_sse_event("x", id="a\nb")
    with pytest.raises(ValueError):
        format_sse_event("x", event="a\rb")
    with pytest.raises(ValueError):
        format_sse_event()


# =============================================================================================
# Loopback test server
# =============================================================================================

Handler = Callable[["Server", int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A tiny asyncio server; records which connection served which request."""

    def __init__(self, handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_ctx = ssl_ctx
        self.connections = 0
        self.requests: list[tuple[int, RequestHead, bytes]] = []
        self.peercerts: list[object] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_ctx else "http"
        return f"{scheme}://127.0.0.1:{self.port}/mcp"

    def conn_ids(self) -> list[int]:
        return [cid for cid, _, _ in self.requests]

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.connections += 1
        cid = self.connections
        if self.ssl_ctx:
            self.peercerts.append(writer.get_extra_info("peercert"))
        try:
            await self.handler(self, cid, reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the test is over or the client went away: nothing to report from here
        finally:
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]


async def read_request(reader: asyncio.StreamReader, buf: bytearray) -> tuple[RequestHead, bytes] | None:
    while True:
        head = parse_request_head(buf)
        if head is not None:
            break
        data = await reader.read(65536)
        if not data:
            return None
        buf += data
    del buf[: head.head_bytes]
    if head.framing[0] == "length":
        n = head.framing[1]  # type: ignore[misc]
        while len(buf) < n:
            data = await reader.read(65536)
            if not data:
                return None
            buf += data
        body = bytes(buf[:n])
        del buf[:n]
    elif head.framing[0] == "chunked":
        dec = ChunkedDecoder()
        body = dec.feed(bytes(buf))
        buf.clear()
        while not dec.done:
            data = await reader.read(65536)
            if not data:
                return None
            body += dec.feed(data)
        buf += dec.unused
    else:
        body = b""
    return head, body


def serve(respond: Callable[[RequestHead, bytes], bytes], *, max_requests: int | None = None) -> Handler:
    """Keep-alive handler answering each request with respond(head, body)."""

    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buf = bytearray()
        served = 0
        while max_requests is None or served < max_requests:
            req = await read_request(reader, buf)
            if req is None:
                return
            srv.requests.append((cid, req[0], req[1]))
            writer.write(respond(*req))
            await writer.drain()
            served += 1

    return handler


def ok_json(_head: RequestHead, body: bytes) -> bytes:
    return format_response(200, {"Content-Type": "application/json"}, b'{"echo":' + (body or b"null") + b"}")


# =============================================================================================
# Client over loopback
# =============================================================================================


async def test_content_length_body_and_request_headers() -> None:
    async with Server(serve(ok_json)) as srv, HttpClient() as client:
        resp = await client.request("POST", srv.url, headers={"Content-Type": "application/json"}, body=b"{}")
        assert resp.status == 200
        assert resp.headers.get("content-type") == "application/json"
        assert await resp.read() == b'{"echo":{}}'
        assert resp.complete
        _, head, body = srv.requests[0]
        assert head.method == "POST"
        assert head.target == "/mcp"
        assert head.headers.get("host") == f"127.0.0.1:{srv.port}"
        assert head.headers.get("content-length") == "2"
        assert head.headers.get("connection") == "keep-alive"
        assert head.headers.get("user-agent", "").startswith("sentinel-gw/")
        assert body == b"{}"


async def test_chunked_body_and_reuse() -> None:
    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buf = bytearray()
        while (req := await read_request(reader, buf)) is not None:
            srv.requests.append((cid, *req))
            writer.write(format_response(200, {"Transfer-Encoding": "chunked"}))
            for piece in (b"hel", b"lo ", b"world"):
                wire = encode_chunk(piece)
                writer.write(wire[:2])
                await writer.drain()
                writer.write(wire[2:])
                await writer.drain()
            writer.write(LAST_CHUNK)
            await writer.drain()

    async with Server(handler) as srv, HttpClient() as client:
        for _ in range(2):
            resp = await client.request("GET", srv.url)
            chunks = [c async for c in resp.iter_bytes()]
            assert b"".join(chunks) == b"hello world"
            await resp.aclose()
        assert srv.conn_ids() == [1, 1]


async def test_keep_alive_reuses_the_same_connection() -> None:
    async with Server(serve(ok_json)) as srv, HttpClient() as client:
        r1 = await client.request("POST", srv.url, body=b"1")
        assert await r1.read() == b'{"echo":1}'
        r2 = await client.request("POST", srv.url, body=b"2")
        assert await r2.read() == b'{"echo":2}'
        assert srv.conn_ids() == [1, 1]
        assert srv.connections == 1
        assert r1.connection_id == r2.connection_id
        assert client.pool_stats(srv.url)["idle"] == 1


async def test_connection_close_response_is_not_reused() -> None:
    def respond(_h: RequestHead, _b: bytes) -> bytes:
        return format_response(200, {"Connection": "close"}, b"x")

    async with Server(serve(respond, max_requests=1)) as srv, HttpClient() as client:
        for _ in range(2):
            async with await client.request("GET", srv.url) as resp:
                assert await resp.read() == b"x"
        assert srv.conn_ids() == [1, 2]


async def test_unconsumed_body_closes_the_connection() -> None:
    async with Server(serve(ok_json)) as srv, HttpClient() as client:
        resp = await client.request("POST", srv.url, body=b"1")
        await resp.aclose()  # body not read: the connection cannot be reused
        assert client.pool_stats(srv.url)["idle"] == 0
        r2 = await client.request("POST", srv.url, body=b"2")
        assert await r2.read() == b'{"echo":2}'
        assert srv.conn_ids() == [1, 2]


async def test_body_until_close() -> None:
    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        req = await read_request(reader, bytearray())
        assert req is not None
        srv.requests.append((cid, *req))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")
        await writer.drain()
        writer.write(b"def")
        await writer.drain()

    async with Server(handler) as srv, HttpClient() as client:
        resp = await client.request("GET", srv.url)
        assert await resp.read() == b"abcdef"
        assert client.pool_stats(srv.url)["idle"] == 0


async def test_head_204_304_have_no_body_and_keep_the_connection() -> None:
    def respond(head: RequestHead, _b: bytes) -> bytes:
        if head.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        if head.target.endswith("304"):
            return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"
        return format_response(204, {})

    async with Server(serve(respond)) as srv, HttpClient() as client:
        for method, url in (("HEAD", srv.url), ("GET", srv.url + "304"), ("DELETE", srv.url)):
            resp = await client.request(method, url)
            assert resp.complete
            assert await resp.read() == b""
        assert srv.conn_ids() == [1, 1, 1]


async def test_interim_100_continue_is_skipped() -> None:
    def respond(_h: RequestHead, _b: bytes) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + format_response(
            200, {}, b"final"
        )

    async with Server(serve(respond)) as srv, HttpClient() as client:
        resp = await client.request("POST", srv.url, body=b"{}")
        assert resp.status == 200
        assert await resp.read() == b"final"


async def test_redirect_is_not_followed() -> None:
    def respond(_h: RequestHead, _b: bytes) -> bytes:
        return format_response(307, {"Location": "http://127.0.0.1:1/elsewhere"}, b"moved")

    async with Server(serve(respond)) as srv, HttpClient() as client:
        resp = await client.request("POST", srv.url, body=b"{}")
        assert resp.status == 307
        assert resp.headers.get("location") == "http://127.0.0.1:1/elsewhere"
        assert await resp.read() == b"moved"
        assert len(srv.requests) == 1


async def test_pool_limit_makes_the_next_request_wait() -> None:
    release = asyncio.Event()

    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buf = bytearray()
        while (req := await read_request(reader, buf)) is not None:
            srv.requests.append((cid, *req))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            await writer.drain()
            await release.wait()
            writer.write(b"cd")
            await writer.drain()

    async with Server(handler) as srv, HttpClient(max_connections=1) as client:
        first = await client.request("GET", srv.url)
        second = asyncio.ensure_future(client.request("GET", srv.url))
        with pytest.raises(PoolTimeout) as info:
            await client.request("GET", srv.url, timeouts=Timeouts(pool=0.2))
        assert info.value.maybe_sent is False
        assert not second.done()  # still waiting for the only slot
        assert srv.connections == 1
        assert len(srv.requests) == 1
        release.set()
        assert await first.read() == b"abcd"
        resp2 = await asyncio.wait_for(second, 10)
        assert await resp2.read() == b"abcd"
        assert srv.conn_ids() == [1, 1]


async def test_pool_allows_max_connections_in_parallel() -> None:
    release = asyncio.Event()

    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buf = bytearray()
        while (req := await read_request(reader, buf)) is not None:
            srv.requests.append((cid, *req))
            await release.wait()
            writer.write(format_response(200, {}, b"ok"))
            await writer.drain()

    async with Server(handler) as srv, HttpClient(max_connections=3) as client:
        tasks = [asyncio.ensure_future(client.request("GET", srv.url)) for _ in range(4)]
        for _ in range(500):
            if len(srv.requests) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(srv.requests) == 3
        assert srv.connections == 3
        release.set()
        for t in tasks:
            resp = await asyncio.wait_for(t, 10)
            assert await resp.read() == b"ok"
        assert srv.connections == 3
        assert len(srv.requests) == 4


async def _wait_until(pred: Callable[[], bool]) -> None:
    for _ in range(500):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_idle_connection_closed_by_server_is_replaced_before_sending() -> None:
    # The server answers one request, then (once told) hangs up without "Connection: close", as
    # a server whose keep-alive timer expired does.
    hang_up = asyncio.Event()

    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buf = bytearray()
        req = await read_request(reader, buf)
        assert req is not None
        srv.requests.append((cid, *req))
        writer.write(ok_json(*req))
        await writer.drain()
        await hang_up.wait()

    async with Server(handler) as srv, HttpClient() as client:
        r1 = await client.request("POST", srv.url, body=b"1")
        assert await r1.read() == b'{"echo":1}'
        idle = next(iter(client._pools.values())).idle[0]
        assert idle.alive()
        hang_up.set()
        await _wait_until(lambda: not idle.alive())
        r2 = await client.request("POST", srv.url, body=b"2")  # not idempotent, still fine
        assert await r2.read() == b'{"echo":2}'
        assert srv.conn_ids() == [1, 2]


def _close_after_reading_second(srv_requests_limit: int = 1) -> Handler:
    """Connection 1 answers one request, then reads the next and hangs up without answering
    (the race in which a server's idle close crosses our request). Later connections answer."""

    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buf = bytearray()
        served = 0
        while (req := await read_request(reader, buf)) is not None:
            srv.requests.append((cid, *req))
            if cid == 1 and served == srv_requests_limit:
                writer.transport.abort()
                return
            writer.write(ok_json(*req))
            await writer.drain()
            served += 1

    return handler


async def test_stale_reused_connection_is_not_retried_for_unsafe_requests() -> None:
    async with Server(_close_after_reading_second()) as srv, HttpClient() as client:
        r1 = await client.request("POST", srv.url, body=b"1")
        await r1.read()
        with pytest.raises(ConnectionLost) as info:
            await client.request("POST", srv.url, body=b"2")
        assert info.value.maybe_sent is True
        assert srv.conn_ids() == [1, 1]  # the server did receive it: re-sending could run it twice


async def test_stale_reused_connection_is_retried_once_when_idempotent() -> None:
    async with Server(_close_after_reading_second()) as srv, HttpClient() as client:
        r1 = await client.request("POST", srv.url, body=b"1")
        await r1.read()
        r2 = await client.request("POST", srv.url, body=b"2", idempotent=True)
        assert await r2.read() == b'{"echo":2}'
        assert srv.conn_ids() == [1, 1, 2]


async def test_fresh_connection_closed_without_response_is_not_retried() -> None:
    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        req = await read_request(reader, bytearray())
        assert req is not None
        srv.requests.append((cid, *req))
        writer.transport.abort()

    async with Server(handler) as srv, HttpClient() as client:
        with pytest.raises(ConnectionLost) as info:
            await client.request("GET", srv.url, idempotent=True)
        assert info.value.maybe_sent is True
        assert srv.connections == 1


async def test_connection_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    async with HttpClient() as client:
        with pytest.raises(ConnectError) as info:
            await client.request("POST", f"http://127.0.0.1:{port}/mcp", body=b"{}")
        assert info.value.maybe_sent is False


async def test_total_timeout_before_connecting_was_not_sent() -> None:
    async with HttpClient() as client:
        with pytest.raises(TotalTimeout) as info:
            await client.request("GET", "http://127.0.0.1:9/", timeouts=Timeouts(total=0))
        assert info.value.maybe_sent is False


async def test_slow_headers_read_timeout() -> None:
    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        req = await read_request(reader, bytearray())
        assert req is not None
        srv.requests.append((cid, *req))
        await asyncio.sleep(3600)

    async with Server(handler) as srv, HttpClient() as client:
        with pytest.raises(ReadTimeout) as info:
            await client.request("POST", srv.url, body=b"{}", timeouts=Timeouts(read=0.2))
        assert info.value.maybe_sent is True
        assert client.pool_stats(srv.url)["idle"] == 0


async def test_total_timeout_while_headers_trickle() -> None:
    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        req = await read_request(reader, bytearray())
        assert req is not None
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 10000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    async with Server(handler) as srv, HttpClient() as client:
        with pytest.raises(TotalTimeout) as info:
            await client.request("GET", srv.url, timeouts=Timeouts(read=5, total=0.3))
        assert info.value.maybe_sent is True


async def test_total_timeout_covers_the_body() -> None:
    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        req = await read_request(reader, bytearray())
        assert req is not None
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n")
        for _ in range(10000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    async with Server(handler) as srv, HttpClient() as client:
        resp = await client.request("GET", srv.url, timeouts=Timeouts(read=5, total=0.5))
        with pytest.raises(TotalTimeout):
            await resp.read()
        assert client.pool_stats(srv.url)["idle"] == 0


async def test_body_read_timeout() -> None:
    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader, bytearray())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(3600)

    async with Server(handler) as srv, HttpClient() as client:
        resp = await client.request("GET", srv.url, timeouts=Timeouts(read=0.2))
        with pytest.raises(ReadTimeout):
            await resp.read()


def _raw_responder(raw: bytes) -> Handler:
    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        req = await read_request(reader, bytearray())
        if req is not None:
            srv.requests.append((cid, *req))
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(0.2)

    return handler


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-",  # closed inside the head
    ],
)
async def test_malformed_responses_raise_protocol_error(raw: bytes) -> None:
    async with Server(_raw_responder(raw)) as srv, HttpClient() as client:
        with pytest.raises(ProtocolError) as info:
            resp = await client.request("GET", srv.url)
            await resp.read()
        assert info.value.maybe_sent is True


async def test_oversized_headers() -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 5000 + b"\r\nContent-Length: 0\r\n\r\n"
    async with Server(_raw_responder(raw)) as srv, HttpClient(max_header_bytes=1024) as client:
        with pytest.raises(ProtocolError):
            await client.request("GET", srv.url)


async def test_oversized_body_content_length_and_chunked() -> None:
    big = format_response(200, {}, b"z" * 5000)
    async with Server(_raw_responder(big)) as srv, HttpClient() as client:
        resp = await client.request("GET", srv.url)
        with pytest.raises(BodyTooLarge) as info:
            await resp.read(limit=1000)
        assert info.value.maybe_sent is True
        assert client.pool_stats(srv.url)["idle"] == 0
    chunked = (
        format_response(200, {"Transfer-Encoding": "chunked"}) + encode_chunk(b"z" * 600) * 3 + LAST_CHUNK
    )
    async with Server(_raw_responder(chunked)) as srv, HttpClient(max_body_bytes=1000) as client:
        resp = await client.request("GET", srv.url)
        with pytest.raises(BodyTooLarge):
            await resp.read()


async def test_connection_closed_mid_body() -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"
    async with Server(_raw_responder(short)) as srv, HttpClient() as client:
        resp = await client.request("GET", srv.url)
        with pytest.raises(ProtocolError):
            await resp.read()
    chunked = format_response(200, {"Transfer-Encoding": "chunked"}) + encode_chunk(b"abc")
    async with Server(_raw_responder(chunked)) as srv, HttpClient() as client:
        resp = await client.request("GET", srv.url)
        with pytest.raises(ProtocolError):
            await resp.read()


async def test_garbage_after_body_prevents_reuse() -> None:
    raw = format_response(200, {}, b"ok") + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
    async with Server(_raw_responder(raw)) as srv, HttpClient() as client:
        resp = await client.request("GET", srv.url)
        assert await resp.read() == b"ok"
        assert client.pool_stats(srv.url)["idle"] == 0


async def test_sse_response_notifications_before_result() -> None:
    progress = {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": 1, "progress": 1},
    }
    result = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "a\nb"}]}}
    stream = (
        format_sse_event("", id="s1-0", retry=1000)
        + format_sse_comment("ping")
        + format_sse_event(json.dumps(progress), event="message", id="s1-1")
        + format_sse_event(json.dumps(result, indent=1), event="message", id="s1-2")
    )

    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buf = bytearray()
        while (req := await read_request(reader, buf)) is not None:
            srv.requests.append((cid, *req))
            writer.write(
                format_response(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
            )
            for i in range(0, len(stream), 7):  # chunks cut at arbitrary points
                writer.write(encode_chunk(stream[i : i + 7]))
                await writer.drain()
            writer.write(LAST_CHUNK)
            await writer.drain()

    async with Server(handler) as srv, HttpClient() as client:
        for _ in range(2):
            resp = await client.request("POST", srv.url, body=b"{}")
            assert resp.headers.get("content-type") == "text/event-stream"
            events = [ev async for ev in resp.sse()]
            assert events[0] == SseEvent("message", "", "s1-0", 1000)  # priming event surfaced
            assert json.loads(events[1].data) == progress
            assert json.loads(events[2].data) == result
            assert [e.id for e in events] == ["s1-0", "s1-1", "s1-2"]
            await resp.aclose()
        assert srv.conn_ids() == [1, 1]


async def test_sse_event_over_limit() -> None:
    body = format_sse_event("x" * 5000)
    raw = format_response(200, {"Content-Type": "text/event-stream"}, body)
    async with Server(_raw_responder(raw)) as srv, HttpClient() as client:
        resp = await client.request("GET", srv.url)
        with pytest.raises(BodyTooLarge):
            async for _ in resp.sse(max_event_bytes=1000):
                pass


async def test_request_validation_happens_before_io() -> None:
    async with Server(serve(ok_json)) as srv, HttpClient() as client:
        with pytest.raises(ValueError):
            await client.request("POST", srv.url, headers={"X-Arg": "a\r\nX-Injected: 1"}, body=b"{}")
        for managed in ("Host", "Content-Length", "transfer-encoding", "Connection"):
            with pytest.raises(ValueError):
                await client.request("POST", srv.url, headers={managed: "x"}, body=b"{}")
        for bad in ("ftp://127.0.0.1/", "http://user:pw@127.0.0.1/", "http:///x", "http://127.0.0.1/é"):
            with pytest.raises(ValueError):
                await client.request("GET", bad)
        assert srv.connections == 0


async def test_proxy_environment_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:1")
    async with Server(serve(ok_json)) as srv, HttpClient() as client:
        resp = await client.request("POST", srv.url, body=b"1")
        assert await resp.read() == b'{"echo":1}'


async def test_idle_timeout_closes_pooled_connections() -> None:
    async with Server(serve(ok_json)) as srv, HttpClient(idle_timeout=0.05) as client:
        resp = await client.request("POST", srv.url, body=b"1")
        await resp.read()
        await _wait_until(lambda: client.pool_stats(srv.url)["idle"] == 0)
        resp = await client.request("POST", srv.url, body=b"2")
        await resp.read()
        assert srv.conn_ids() == [1, 2]


async def test_forgotten_response_gives_its_slot_back(caplog: pytest.LogCaptureFixture) -> None:
    async with Server(serve(ok_json)) as srv, HttpClient(max_connections=1) as client:
        resp = await client.request("POST", srv.url, body=b"1")
        del resp  # never read, never closed
        gc.collect()
        resp = await client.request("POST", srv.url, body=b"2", timeouts=Timeouts(pool=5))
        assert await resp.read() == b'{"echo":2}'
        assert srv.conn_ids() == [1, 2]
    assert any("never closed" in r.getMessage() for r in caplog.records)


async def test_closed_client_refuses_requests() -> None:
    client = HttpClient()
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.request("GET", "http://127.0.0.1:1/")


async def test_cancelled_body_read_drops_the_connection() -> None:
    async def handler(
        srv: Server, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buf = bytearray()
        while (req := await read_request(reader, buf)) is not None:
            srv.requests.append((cid, *req))
            if cid == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
                await writer.drain()
                continue
            writer.write(format_response(200, {}, b"fresh"))
            await writer.drain()

    started = asyncio.Event()

    async def call(client: HttpClient, url: str) -> bytes:
        async with await client.request("GET", url) as resp:
            started.set()
            return await resp.read()

    async with Server(handler) as srv, HttpClient(max_connections=1) as client:
        reading = asyncio.ensure_future(call(client, srv.url))
        await started.wait()
        await asyncio.sleep(0.05)  # let it block on the missing body bytes
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        # The slot came back (max_connections=1) and the half-read connection was not reused.
        resp2 = await asyncio.wait_for(client.request("GET", srv.url), 10)
        assert await resp2.read() == b"fresh"
        assert srv.conn_ids() == [1, 2]


# =============================================================================================
# TLS
# =============================================================================================


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(path)


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


class Pki:
    def __init__(self, root: Path) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("sentinel test CA"))
            .issuer_name(_name("sentinel test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca = str(root / "ca.pem")
        (root / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
        local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        for stem, cn, sans, usage in (
            ("server", "localhost", local, ExtendedKeyUsageOID.SERVER_AUTH),
            ("wrong", "other.example", [x509.DNSName("other.example")], ExtendedKeyUsageOID.SERVER_AUTH),
            ("client", "gateway-client", [], ExtendedKeyUsageOID.CLIENT_AUTH),
        ):
            key, cert = _leaf(ca_key, ca_cert, cn, sans, usage)
            (root / f"{stem}.pem").write_bytes(cert.public_bytes(pem))
            _write_key(key, root / f"{stem}.key")
        self.root = root

    def cert(self, stem: str) -> tuple[str, str]:
        return str(self.root / f"{stem}.pem"), str(self.root / f"{stem}.key")

    def server_ctx(self, stem: str = "server", *, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*self.cert(stem))
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


async def test_tls_with_custom_ca(pki: Pki) -> None:
    async with Server(serve(ok_json), pki.server_ctx()) as srv, HttpClient(cafile=pki.ca) as client:
        for body in (b"1", b"2"):
            resp = await client.request("POST", srv.url, body=body)
            assert await resp.read() == b'{"echo":' + body + b"}"
        assert srv.conn_ids() == [1, 1]
        localhost = srv.url.replace("127.0.0.1", "localhost")
        resp = await client.request("POST", localhost, body=b"3")
        assert resp.status == 200
        await resp.read()


async def test_tls_verify_failure_without_the_ca(pki: Pki) -> None:
    async with Server(serve(ok_json), pki.server_ctx()) as srv, HttpClient() as client:
        with pytest.raises(ConnectError) as info:
            await client.request("POST", srv.url, body=b"{}")
        assert info.value.maybe_sent is False
        assert "verif" in str(info.value).lower()
        assert srv.requests == []


async def test_tls_hostname_mismatch(pki: Pki) -> None:
    async with Server(serve(ok_json), pki.server_ctx("wrong")) as srv, HttpClient(cafile=pki.ca) as client:
        with pytest.raises(ConnectError) as info:
            await client.request("POST", srv.url, body=b"{}")
        assert info.value.maybe_sent is False
        assert srv.requests == []


async def test_tls_verify_false_is_explicit_and_warned(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sentinel_gw.httpwire"):
        client = HttpClient(verify=False)
    assert any("DISABLED" in r.getMessage() for r in caplog.records)
    async with Server(serve(ok_json), pki.server_ctx("wrong")) as srv, client:
        resp = await client.request("POST", srv.url, body=b"1")
        assert await resp.read() == b'{"echo":1}'


async def test_mtls_client_certificate_accepted(pki: Pki) -> None:
    cert, key = pki.cert("client")
    ctx = pki.server_ctx(require_client_cert=True)
    async with (
        Server(serve(ok_json), ctx) as srv,
        HttpClient(cafile=pki.ca, certfile=cert, keyfile=key) as client,
    ):
        resp = await client.request("POST", srv.url, body=b"1")
        assert await resp.read() == b'{"echo":1}'
        peer = srv.peercerts[0]
        assert isinstance(peer, dict)
        assert tuple(peer["subject"]) == ((("commonName", "gateway-client"),),)


async def test_mtls_without_client_certificate_fails(pki: Pki) -> None:
    ctx = pki.server_ctx(require_client_cert=True)
    async with Server(serve(ok_json), ctx) as srv, HttpClient(cafile=pki.ca) as client:
        with pytest.raises(HttpError):
            resp = await client.request("POST", srv.url, body=b"1")
            await resp.read()
        assert srv.requests == []
