"""2026-07-28 helpers shared by the HTTP front and both backend kinds (sentinel_gw.protocol.mcp)."""

from __future__ import annotations

import pytest

from sentinel_gw.protocol.mcp import (
    CLIENT_CAPABILITIES_KEY,
    PROTOCOL_VERSION_KEY,
    SERVER_INFO_KEY,
    decode_header_value,
    encode_header_value,
    parse_discover,
    with_modern_meta,
)


@pytest.mark.parametrize(
    "value", ["echo", "test://a/hello", "héllo", " padded ", "tab\tname", "=?base64?x?=", ""]
)
def test_header_values_round_trip(value: str) -> None:
    encoded = encode_header_value(value)
    assert encoded is not None and encoded.isascii() and "\r" not in encoded and "\n" not in encoded
    assert decode_header_value(encoded) == value


def test_plain_values_stay_verbatim_and_bad_wrapping_decodes_to_none() -> None:
    assert encode_header_value("tools_call-1") == "tools_call-1"
    assert encode_header_value("\ud800") is None  # a lone surrogate cannot be sent
    assert decode_header_value("=?base64?!!!?=") is None
    assert decode_header_value("=?base64?/w==?=") is None  # not UTF-8
    assert decode_header_value(None) is None


def test_with_modern_meta_keeps_the_callers_meta_and_copies() -> None:
    params = {"name": "t", "_meta": {"progressToken": 7, PROTOCOL_VERSION_KEY: "old"}}
    out = with_modern_meta(params, "2026-07-28", {"elicitation": {}})
    assert out["_meta"]["progressToken"] == 7
    assert out["_meta"][PROTOCOL_VERSION_KEY] == "2026-07-28"
    assert out["_meta"][CLIENT_CAPABILITIES_KEY] == {"elicitation": {}}
    assert params["_meta"][PROTOCOL_VERSION_KEY] == "old"  # the input is not modified
    assert with_modern_meta(None, "v", {})["_meta"][PROTOCOL_VERSION_KEY] == "v"


def test_parse_discover_types_everything() -> None:
    good = {"capabilities": {"tools": {}}, "instructions": "hi", "_meta": {SERVER_INFO_KEY: {"name": "s"}}}
    assert parse_discover(good) == ({"tools": {}}, {"name": "s"}, "hi")
    assert parse_discover({"capabilities": [], "instructions": 3, "_meta": "x"}) == ({}, {}, "")
