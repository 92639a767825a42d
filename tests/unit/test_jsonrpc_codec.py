"""JSON-RPC encoding and decoding mean the same on both paths: the standard library alone, and
orjson where it is exact (see protocol/jsonrpc.py). Every test runs on both."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterator

import pytest

from sentinel_gw import accel
from sentinel_gw.protocol import jsonrpc


@pytest.fixture(params=["stdlib", "orjson"])
def codec(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "orjson":
        jsonrpc.use_orjson(pytest.importorskip("orjson"))
    else:
        jsonrpc.use_orjson(None)
    assert jsonrpc.json_backend() == request.param
    yield request.param
    jsonrpc.use_orjson(accel.orjson())


def same(a: object, b: object) -> bool:
    """Equal, with NaN equal to NaN and the types of numbers kept apart (1 is not 1.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return a == b


STDLIB = json.JSONDecoder()

INPUTS = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"m":"hi"}}}',
    b'{"jsonrpc":"2.0","id":"abc","result":{"content":[{"type":"text","text":"\\u00e9\\u2028 \xc3\xa9"}]}}',
    b'{"a":1,"a":2}',  # duplicate keys: the last one wins on both
    b'{"id":18446744073709551616}',  # beyond 64 bits: stays an exact int
    b'{"id":-9223372036854775809}',
    b'{"id":123456789012345678901234567890}',
    b'{"id":18446744073709551615,"x":9223372036854775807}',
    b"[NaN, Infinity, -Infinity]",  # not JSON, but the stdlib has always accepted them
    b"[1e400, -1e400, -0, -0.0, 1E5, 0.1, 1.0, 5e-324]",
    b'"\\ud800 lone surrogate"',
    b'"\\u0000"',
    b' {"spaced" : [ 1 , 2 ] } ',
    b"[" * 200 + b"]" * 200,
    b'{"long":"' + b"x" * 2000 + b'","n":12345678901234567890123}',
]


@pytest.mark.parametrize("data", INPUTS)
def test_decode_matches_the_stdlib(codec: str, data: bytes) -> None:
    assert same(jsonrpc.decode(data), STDLIB.decode(data.decode("utf-8")))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a":', "Parse error: Expecting value"),
        (b'{"a":1}x', "Parse error: Extra data"),
        (b"\xff{}", "Parse error: message is not valid UTF-8"),
        (b'"\xed\xa0\x80"', "Parse error: message is not valid UTF-8"),
        (b"\xef\xbb\xbf{}", "Parse error: Expecting value"),
        (b"[" * 100_000 + b"]" * 100_000, "Parse error: nesting too deep"),
        (b"", "Parse error: Expecting value"),
    ],
)
def test_decode_errors_are_worded_the_same(codec: str, data: bytes, reason: str) -> None:
    with pytest.raises(jsonrpc.JsonRpcError) as info:
        jsonrpc.decode(data)
    assert info.value.code == jsonrpc.PARSE_ERROR
    assert info.value.message == reason


def test_the_fast_path_is_taken_for_ordinary_messages(codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if codec != "orjson":
        assert jsonrpc._fast_loads is None  # the pure path never reaches for orjson
        return
    seen: list[bytes] = []
    loads = jsonrpc._fast_loads

    def counting(data: bytes) -> object:
        seen.append(data)
        return loads(data)

    monkeypatch.setattr(jsonrpc, "_fast_loads", counting)
    jsonrpc.decode(INPUTS[0])
    jsonrpc.decode(b'{"id":12345678901234567890}')  # 20 digits: the stdlib keeps it exact
    jsonrpc.decode(b"[" + b"1," * 400 + b"1]")  # longer than FAST_DECODE_MAX
    assert seen == [INPUTS[0]]


MESSAGES: list[object] = [
    {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "é \u2028 😀 \x00 \x7f"}]}},
    {"jsonrpc": "2.0", "id": 2, "result": {"n": [2**64, -(2**63) - 1, 10**30, 2**63, -(2**63)]}},
    {"jsonrpc": "2.0", "id": 3, "result": {1: "int key", 2.5: "float key", False: "bool key", None: "null"}},
    {
        "jsonrpc": "2.0",
        "id": 4,
        "result": {"floats": [0.1, 1e-05, 1e16, 1e22, -0.0, 5e-324, 1.7976931348623157e308]},
    },
    {"jsonrpc": "2.0", "id": 5, "result": ("tuple", "is", "an", "array")},
    {"jsonrpc": "2.0", "id": 6, "result": OrderedDict([("b", 1), ("a", 2)])},
    {"jsonrpc": "2.0", "id": 7, "result": [[[[[[[[[[[[["deep"]]]]]]]]]]]]] * 3},
    {"jsonrpc": "2.0", "id": 8, "result": {"deeper": [[] for _ in range(3)]}},
]


class Text(str):
    pass


@pytest.mark.parametrize("message", MESSAGES)
def test_encode_means_what_the_stdlib_encoding_means(codec: str, message: object) -> None:
    data = jsonrpc.encode(message)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    expected = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    assert same(json.loads(data), json.loads(expected))


def test_encode_str_subclasses_and_very_deep_values(codec: str) -> None:
    deep: list[object] = ["x"]
    for _ in range(300):  # deeper than orjson encodes: the stdlib takes over
        deep = [deep]
    for message in ({"id": 1, "result": Text("sub")}, {"id": 2, "result": deep}):
        assert json.loads(jsonrpc.encode(message)) == json.loads(json.dumps(message))


def test_encode_non_finite_and_lone_surrogates_never_lose_the_reply(codec: str) -> None:
    data = jsonrpc.encode({"jsonrpc": "2.0", "id": 1, "result": {"x": math.nan, "y": -math.inf, "z": 1.5}})
    assert json.loads(data) == {"jsonrpc": "2.0", "id": 1, "result": {"x": None, "y": None, "z": 1.5}}
    data = jsonrpc.encode({"jsonrpc": "2.0", "id": 2, "result": {"s": "cut \ud83d"}})
    assert data.isascii()
    assert json.loads(data)["result"]["s"] == "cut \ud83d"


def test_encode_refuses_what_json_cannot_hold(codec: str) -> None:
    with pytest.raises(TypeError):
        jsonrpc.encode({"id": 1, "result": {1, 2}})
    with pytest.raises(TypeError):
        jsonrpc.encode({"id": 1, "result": object()})


@pytest.mark.parametrize("data", INPUTS)
def test_round_trip(codec: str, data: bytes) -> None:
    value = jsonrpc.decode(data)
    assert same(jsonrpc.decode(jsonrpc.encode(value).rstrip(b"\n")), _finite(value))


def _finite(value: object) -> object:
    return jsonrpc._finite(value)
