"""json_encoder: the per-call fast path must encode exactly like json.JSONEncoder."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sentinel_gw.protocol.jsonenc import json_encoder

OPTIONS: list[dict[str, Any]] = [
    {},
    {"ensure_ascii": True},
    {"ensure_ascii": False, "separators": (",", ":"), "allow_nan": False},
    {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": True, "allow_nan": False},
]

VALUES: list[object] = [
    None,
    True,
    0,
    -(2**100),
    1.5,
    -0.0,
    1e-300,
    "",
    "plain",
    'esc " \\ \n \t \x00 \x7f',
    "caf\u00e9 \u2603 \U0001f600",
    "\ud800 lone surrogate",
    [],
    {},
    [1, "a", None, [True, {"k": 2.5}]],
    {"b": 1, "a": {"d": [], "c": "\u00e9"}, "\u00e9": None},
    {7: "int key", 2.5: "float key", True: "bool key", None: "none key"},
]


@pytest.mark.parametrize("options", OPTIONS, ids=repr)
def test_same_output_as_jsonencoder(options: dict[str, Any]) -> None:
    fast, reference = json_encoder(**options), json.JSONEncoder(**options).encode
    for value in VALUES:
        assert _outcome(fast, value) == _outcome(reference, value), value


def _outcome(encode: Any, value: object) -> str:
    """The text, or the exception type (mixed key types cannot be sorted, for example)."""
    try:
        return str(encode(value))
    except (TypeError, ValueError) as exc:
        return type(exc).__name__


@pytest.mark.parametrize("options", OPTIONS, ids=repr)
@pytest.mark.parametrize("value", [{1, 2}, {"x": object()}, {(1, 2): "tuple key"}, b"bytes"], ids=repr)
def test_same_type_errors(options: dict[str, Any], value: object) -> None:
    with pytest.raises(TypeError):
        json.JSONEncoder(**options).encode(value)
    with pytest.raises(TypeError):
        json_encoder(**options)(value)


@pytest.mark.parametrize("value", [float("nan"), [float("inf")], {"x": float("-inf")}], ids=repr)
def test_nan_follows_allow_nan(value: object) -> None:
    assert json_encoder()(value) == json.JSONEncoder().encode(value)
    with pytest.raises(ValueError):
        json_encoder(allow_nan=False)(value)


def test_a_cycle_raises_instead_of_looping() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises((ValueError, RecursionError)):
        json_encoder()(cyclic)


def test_indent_falls_back_to_the_reference_encoder() -> None:
    assert json_encoder(indent=2)({"a": [1]}) == json.dumps({"a": [1]}, indent=2)
