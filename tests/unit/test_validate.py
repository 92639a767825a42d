"""The tool-argument validator: every keyword, the JSON traps, refs, limits and real MCP schemas."""

from __future__ import annotations

from typing import Any

import pytest

from sentinel_gw.policy.validate import (
    MAX_INSTANCE_DEPTH,
    MAX_SCHEMA_DEPTH,
    MAX_SUBSCHEMAS,
    SchemaError,
    ValidationFailure,
    compile_schema,
    validate_arguments,
)

OK = None

# (id, schema, instance, expected): expected None = valid, else (pointer, keyword) of the first failure
CASES: list[tuple[str, Any, Any, tuple[str, str] | None]] = [
    # --- type -----------------------------------------------------------------------------------
    ("type-object", {"type": "object"}, {}, OK),
    ("type-object-list", {"type": "object"}, [], ("", "type")),
    ("type-array", {"type": "array"}, [1], OK),
    ("type-array-dict", {"type": "array"}, {}, ("", "type")),
    ("type-string", {"type": "string"}, "x", OK),
    ("type-string-int", {"type": "string"}, 1, ("", "type")),
    ("type-null", {"type": "null"}, None, OK),
    ("type-null-false", {"type": "null"}, False, ("", "type")),
    ("type-boolean", {"type": "boolean"}, True, OK),
    ("type-boolean-0", {"type": "boolean"}, 0, ("", "type")),
    ("type-integer", {"type": "integer"}, 3, OK),
    ("type-integer-1.0", {"type": "integer"}, 1.0, OK),
    ("type-integer-1.5", {"type": "integer"}, 1.5, ("", "type")),
    ("type-integer-true", {"type": "integer"}, True, ("", "type")),
    ("type-integer-false", {"type": "integer"}, False, ("", "type")),
    ("type-integer-inf", {"type": "integer"}, float("inf"), ("", "type")),
    ("type-number-int", {"type": "number"}, 3, OK),
    ("type-number-float", {"type": "number"}, 2.5, OK),
    ("type-number-true", {"type": "number"}, True, ("", "type")),
    ("type-number-nan", {"type": "number"}, float("nan"), ("", "type")),
    ("type-number-str", {"type": "number"}, "1", ("", "type")),
    ("type-union", {"type": ["string", "null"]}, None, OK),
    ("type-union-str", {"type": ["string", "null"]}, "a", OK),
    ("type-union-int", {"type": ["string", "null"]}, 1, ("", "type")),
    ("type-union-int-bool", {"type": ["integer", "boolean"]}, False, OK),
    ("type-union-number-integer", {"type": ["number", "integer"]}, 1.5, OK),
    # --- properties / required / additionalProperties ----------------------------------------
    ("props-ok", {"properties": {"a": {"type": "string"}}}, {"a": "x"}, OK),
    ("props-absent", {"properties": {"a": {"type": "string"}}}, {}, OK),
    ("props-bad", {"properties": {"a": {"type": "string"}}}, {"a": 1}, ("/a", "type")),
    (
        "props-sorted-first",
        {"properties": {"b": {"type": "string"}, "a": {"type": "string"}}},
        {"b": 1, "a": 1},
        ("/a", "type"),
    ),
    ("props-escaped", {"properties": {"a/b~c": {"type": "string"}}}, {"a/b~c": 1}, ("/a~1b~0c", "type")),
    ("props-non-object-ignored", {"properties": {"a": {"type": "string"}}}, [1], OK),
    ("required-ok", {"required": ["a"]}, {"a": None}, OK),
    ("required-missing", {"required": ["b", "a"]}, {}, ("", "required")),
    ("required-non-object", {"required": ["a"]}, "x", OK),
    ("required-draft3-bool-ignored", {"properties": {"a": {"type": "string", "required": True}}}, {}, OK),
    ("addl-false-ok", {"properties": {"a": {}}, "additionalProperties": False}, {"a": 1}, OK),
    (
        "addl-false-extra",
        {"properties": {"a": {}}, "additionalProperties": False},
        {"a": 1, "z": 1, "y": 2},
        ("/y", "additionalProperties"),
    ),
    (
        "addl-schema",
        {"properties": {"a": {}}, "additionalProperties": {"type": "integer"}},
        {"a": "x", "b": 1, "c": "no"},
        ("/c", "type"),
    ),
    ("addl-true", {"additionalProperties": True}, {"x": 1}, OK),
    (
        "props-before-addl",
        {"properties": {"z": {"type": "string"}}, "additionalProperties": False},
        {"a": 1, "z": 1},
        ("/z", "type"),
    ),
    # --- patternProperties / propertyNames ----------------------------------------------------
    (
        "patprops-ok",
        {"patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": False},
        {"x-a": "1"},
        OK,
    ),
    (
        "patprops-bad",
        {"patternProperties": {"^x-": {"type": "string"}}},
        {"x-a": 1, "other": 1},
        ("/x-a", "type"),
    ),
    (
        "patprops-addl",
        {"patternProperties": {"^x-": {}}, "additionalProperties": False},
        {"x-a": 1, "b": 1},
        ("/b", "additionalProperties"),
    ),
    ("propnames-ok", {"propertyNames": {"maxLength": 3}}, {"abc": 1}, OK),
    ("propnames-bad", {"propertyNames": {"maxLength": 3}}, {"abcd": 1, "a": 1}, ("/abcd", "propertyNames")),
    (
        "propnames-pattern",
        {"propertyNames": {"pattern": "^[a-z]+$"}},
        {"ok": 1, "Bad": 2},
        ("/Bad", "propertyNames"),
    ),
    # --- min/maxProperties, dependentRequired, dependentSchemas -------------------------------
    ("minprops", {"minProperties": 1}, {}, ("", "minProperties")),
    ("maxprops", {"maxProperties": 1}, {"a": 1, "b": 2}, ("", "maxProperties")),
    ("maxprops-ok", {"maxProperties": 1}, {"a": 1}, OK),
    ("depreq-ok", {"dependentRequired": {"a": ["b"]}}, {"a": 1, "b": 1}, OK),
    ("depreq-bad", {"dependentRequired": {"a": ["b"]}}, {"a": 1}, ("", "dependentRequired")),
    ("depreq-absent", {"dependentRequired": {"a": ["b"]}}, {"c": 1}, OK),
    ("dependencies-draft7", {"dependencies": {"a": ["b"]}}, {"a": 1}, ("", "dependentRequired")),
    ("depschema-bad", {"dependentSchemas": {"a": {"required": ["b"]}}}, {"a": 1}, ("", "required")),
    # --- items / prefixItems / additionalItems / contains -------------------------------------
    ("items-ok", {"items": {"type": "integer"}}, [1, 2], OK),
    ("items-bad", {"items": {"type": "integer"}}, [1, "x", "y"], ("/1", "type")),
    ("items-draft7-array", {"items": [{"type": "string"}, {"type": "integer"}]}, ["a", "b"], ("/1", "type")),
    ("items-draft7-extra-ok", {"items": [{"type": "string"}]}, ["a", 1], OK),
    (
        "additionalItems-false",
        {"items": [{"type": "string"}], "additionalItems": False},
        ["a", 1],
        ("/1", "additionalItems"),
    ),
    ("prefix-ok", {"prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, ["a", 1, 2], OK),
    ("prefix-bad", {"prefixItems": [{"type": "string"}]}, [1], ("/0", "type")),
    (
        "prefix-rest-bad",
        {"prefixItems": [{"type": "string"}], "items": {"type": "integer"}},
        ["a", 1, "b"],
        ("/2", "type"),
    ),
    ("prefix-items-false", {"prefixItems": [{}], "items": False}, [1, 2], ("/1", "items")),
    ("prefix-short", {"prefixItems": [{"type": "string"}, {"type": "string"}]}, ["a"], OK),
    ("contains-ok", {"contains": {"type": "string"}}, [1, "a"], OK),
    ("contains-bad", {"contains": {"type": "string"}}, [1, 2], ("", "contains")),
    ("mincontains", {"contains": {"type": "string"}, "minContains": 2}, ["a", 1], ("", "minContains")),
    ("maxcontains", {"contains": {"type": "string"}, "maxContains": 1}, ["a", "b"], ("", "maxContains")),
    ("minitems", {"minItems": 2}, [1], ("", "minItems")),
    ("maxitems", {"maxItems": 1}, [1, 2], ("", "maxItems")),
    ("minitems-float-count", {"minItems": 1.0}, [1], OK),
    # --- uniqueItems ---------------------------------------------------------------------------
    ("unique-ok", {"uniqueItems": True}, [1, "1", True, None, [1], {"a": 1}], OK),
    ("unique-int-float", {"uniqueItems": True}, [1, 1.0], ("", "uniqueItems")),
    ("unique-bool-int", {"uniqueItems": True}, [1, True], OK),
    ("unique-false-0", {"uniqueItems": True}, [0, False], OK),
    (
        "unique-objects",
        {"uniqueItems": True},
        [{"a": 1, "b": [2]}, {"b": [2.0], "a": 1}],
        ("", "uniqueItems"),
    ),
    ("unique-false-keyword", {"uniqueItems": False}, [1, 1], OK),
    # --- enum / const --------------------------------------------------------------------------
    ("enum-ok", {"enum": ["a", "b"]}, "b", OK),
    ("enum-bad", {"enum": ["a", "b"]}, "c", ("", "enum")),
    ("enum-int-float", {"enum": [1, 2]}, 1.0, OK),
    ("enum-bool-not-int", {"enum": [1, 0]}, True, ("", "enum")),
    ("enum-int-not-bool", {"enum": [True]}, 1, ("", "enum")),
    ("enum-null", {"enum": [None]}, None, OK),
    ("enum-object", {"enum": [{"a": [1]}]}, {"a": [1.0]}, OK),
    ("enum-object-bad", {"enum": [{"a": [1]}]}, {"a": [True]}, ("", "enum")),
    ("const-ok", {"const": 1}, 1.0, OK),
    ("const-bool", {"const": 1}, True, ("", "const")),
    ("const-false", {"const": False}, 0, ("", "const")),
    ("const-null", {"const": None}, None, OK),
    ("const-null-bad", {"const": None}, 0, ("", "const")),
    ("const-array", {"const": [1, "a"]}, [1, "a"], OK),
    ("const-array-order", {"const": [1, "a"]}, ["a", 1], ("", "const")),
    # --- numbers -------------------------------------------------------------------------------
    ("minimum-ok", {"minimum": 1}, 1, OK),
    ("minimum-bad", {"minimum": 1}, 0.5, ("", "minimum")),
    ("minimum-non-number-ignored", {"minimum": 1}, "0", OK),
    ("minimum-bool-ignored", {"minimum": 1}, False, OK),
    ("maximum-ok", {"maximum": 1.5}, 1.5, OK),
    ("maximum-bad", {"maximum": 1.5}, 2, ("", "maximum")),
    ("exmin-ok", {"exclusiveMinimum": 0}, 0.001, OK),
    ("exmin-bad", {"exclusiveMinimum": 0}, 0, ("", "exclusiveMinimum")),
    ("exmax-bad", {"exclusiveMaximum": 10}, 10, ("", "exclusiveMaximum")),
    ("draft4-exmin", {"minimum": 0, "exclusiveMinimum": True}, 0, ("", "exclusiveMinimum")),
    ("draft4-exmin-ok", {"minimum": 0, "exclusiveMinimum": True}, 1, OK),
    ("draft4-exmax", {"maximum": 5, "exclusiveMaximum": True}, 5, ("", "exclusiveMaximum")),
    ("draft4-exmax-false", {"maximum": 5, "exclusiveMaximum": False}, 5, OK),
    ("min-before-max", {"minimum": 5, "maximum": 1}, 3, ("", "minimum")),
    ("bigint-vs-float", {"maximum": 9007199254740992.0}, 9007199254740993, ("", "maximum")),
    ("multipleOf-0.1", {"multipleOf": 0.1}, 0.3, OK),
    ("multipleOf-0.1-bad", {"multipleOf": 0.1}, 0.35, ("", "multipleOf")),
    ("multipleOf-0.01", {"multipleOf": 0.01}, 19.99, OK),
    ("multipleOf-int", {"multipleOf": 3}, 9, OK),
    ("multipleOf-int-bad", {"multipleOf": 3}, 10, ("", "multipleOf")),
    ("multipleOf-int-float", {"multipleOf": 3}, 9.0, OK),
    ("multipleOf-int-fraction", {"multipleOf": 3}, 4.5, ("", "multipleOf")),
    ("multipleOf-half", {"multipleOf": 0.5}, 4.5, OK),
    ("multipleOf-bigint", {"multipleOf": 0.5}, 10**400, OK),
    ("multipleOf-inf", {"multipleOf": 2}, float("inf"), ("", "multipleOf")),
    # --- strings -------------------------------------------------------------------------------
    ("minlen-ok", {"minLength": 2}, "ab", OK),
    ("minlen-bad", {"minLength": 2}, "a", ("", "minLength")),
    ("maxlen-bad", {"maxLength": 2}, "abc", ("", "maxLength")),
    ("maxlen-emoji", {"maxLength": 2}, "😀😀", OK),
    ("minlen-emoji", {"minLength": 3}, "😀😀", ("", "minLength")),
    ("maxlen-combining", {"maxLength": 1}, "e\u0301", ("", "maxLength")),
    ("len-non-string-ignored", {"maxLength": 1}, 12345, OK),
    ("pattern-search", {"pattern": "b"}, "abc", OK),
    ("pattern-search-bad", {"pattern": "z"}, "abc", ("", "pattern")),
    ("pattern-anchored", {"pattern": "^a+$"}, "aaa", OK),
    ("pattern-anchored-bad", {"pattern": "^a+$"}, "baaa", ("", "pattern")),
    ("pattern-dollar-newline", {"pattern": "^[a-z]+$"}, "abc\n", ("", "pattern")),
    ("pattern-dollar-in-class", {"pattern": "^[$]+$"}, "$$", OK),
    ("pattern-escaped-dollar", {"pattern": "^\\$\\d$"}, "$5", OK),
    ("pattern-ascii-digit", {"pattern": "^\\d+$"}, "١٢", ("", "pattern")),
    ("pattern-named-group", {"pattern": "^(?<w>a)\\k<w>$"}, "aa", OK),
    ("pattern-named-group-bad", {"pattern": "^(?<w>a)\\k<w>$"}, "ab", ("", "pattern")),
    ("pattern-lookbehind-kept", {"pattern": "(?<=a)b"}, "ab", OK),
    ("pattern-too-long-input", {"pattern": "a"}, "a" * 100_001, ("", "pattern")),
    ("pattern-non-string-ignored", {"pattern": "^a$"}, 5, OK),
    # --- combinators ---------------------------------------------------------------------------
    ("allOf-ok", {"allOf": [{"type": "integer"}, {"minimum": 1}]}, 2, OK),
    ("allOf-bad", {"allOf": [{"type": "integer"}, {"minimum": 1}]}, 0, ("", "minimum")),
    ("anyOf-ok", {"anyOf": [{"type": "string"}, {"type": "null"}]}, None, OK),
    ("anyOf-bad", {"anyOf": [{"type": "string"}, {"type": "null"}]}, 1, ("", "anyOf")),
    ("oneOf-ok", {"oneOf": [{"type": "integer"}, {"type": "string"}]}, 1, OK),
    ("oneOf-two", {"oneOf": [{"type": "integer"}, {"minimum": 0}]}, 1, ("", "oneOf")),
    ("oneOf-none", {"oneOf": [{"type": "integer"}, {"type": "string"}]}, None, ("", "oneOf")),
    ("not-ok", {"not": {"type": "string"}}, 1, OK),
    ("not-bad", {"not": {"type": "string"}}, "a", ("", "not")),
    ("if-then", {"if": {"minimum": 10}, "then": {"multipleOf": 5}, "else": {"maximum": 3}}, 15, OK),
    (
        "if-then-bad",
        {"if": {"minimum": 10}, "then": {"multipleOf": 5}, "else": {"maximum": 3}},
        12,
        ("", "multipleOf"),
    ),
    (
        "if-else-bad",
        {"if": {"minimum": 10}, "then": {"multipleOf": 5}, "else": {"maximum": 3}},
        4,
        ("", "maximum"),
    ),
    ("if-only", {"if": {"minimum": 10}}, 4, OK),
    (
        "if-object",
        {
            "if": {"properties": {"kind": {"const": "file"}}, "required": ["kind"]},
            "then": {"required": ["path"]},
        },
        {"kind": "file"},
        ("", "required"),
    ),
    # --- order: type first, then enum, then type-specific, then applicators --------------------
    ("order-type-first", {"type": "string", "enum": [1], "not": {}}, 1, ("", "type")),
    ("order-enum-before-length", {"enum": ["abc"], "maxLength": 1}, "abcd", ("", "enum")),
    ("order-length-before-not", {"maxLength": 1, "not": {}}, "ab", ("", "maxLength")),
    (
        "order-required-before-props",
        {"required": ["z"], "properties": {"a": {"type": "string"}}},
        {"a": 1},
        ("", "required"),
    ),
    # --- boolean schemas -----------------------------------------------------------------------
    ("bool-true", True, {"anything": [1]}, OK),
    ("bool-false", False, {}, ("", "false")),
    ("bool-false-property", {"properties": {"a": False}}, {"a": 1}, ("/a", "false")),
    ("bool-false-absent", {"properties": {"a": False}}, {"b": 1}, OK),
    ("empty-schema", {}, [1, {"a": None}], OK),
    # --- unknown / annotation keywords ---------------------------------------------------------
    ("format-ignored", {"type": "string", "format": "email"}, "not an email", OK),
    ("unknown-ignored", {"x-whatever": {"type": 5}, "description": "d", "title": "t", "default": 3}, 1, OK),
    # --- $ref ----------------------------------------------------------------------------------
    ("ref-defs", {"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"}, "x", ("", "type")),
    (
        "ref-definitions",
        {"definitions": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/definitions/n"}}},
        {"a": 1},
        OK,
    ),
    (
        "ref-definitions-bad",
        {"definitions": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/definitions/n"}}},
        {"a": "1"},
        ("/a", "type"),
    ),
    (
        "ref-nested",
        {
            "$defs": {
                "addr": {
                    "type": "object",
                    "properties": {"zip": {"$ref": "#/$defs/zip"}},
                    "required": ["zip"],
                },
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "properties": {"home": {"$ref": "#/$defs/addr"}},
        },
        {"home": {"zip": "1234"}},
        ("/home/zip", "pattern"),
    ),
    (
        "ref-escaped",
        {"$defs": {"a/b": {"type": "string"}, "c~d": {"$ref": "#/$defs/a~1b"}}, "$ref": "#/$defs/c~0d"},
        1,
        ("", "type"),
    ),
    ("ref-percent", {"$defs": {"a b": {"type": "string"}}, "$ref": "#/$defs/a%20b"}, 1, ("", "type")),
    (
        "ref-to-property",
        {"properties": {"a": {"type": "string"}, "b": {"$ref": "#/properties/a"}}},
        {"b": 2},
        ("/b", "type"),
    ),
    (
        "ref-to-array-index",
        {"anyOf": [{"type": "object"}, {"type": "string"}], "properties": {"b": {"$ref": "#/anyOf/1"}}},
        {"b": "x"},
        OK,
    ),
    (
        "ref-to-array-index-bad",
        {"anyOf": [{"type": "object"}, {"type": "string"}], "properties": {"b": {"$ref": "#/anyOf/1"}}},
        {"b": 1},
        ("/b", "type"),
    ),
    (
        "ref-with-siblings",
        {"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 2},
        "abc",
        ("", "maxLength"),
    ),
    (
        "ref-root-recursive-ok",
        {"properties": {"next": {"$ref": "#"}, "v": {"type": "integer"}}},
        {"v": 1, "next": {"v": 2, "next": {"v": 3}}},
        OK,
    ),
    (
        "ref-root-recursive-bad",
        {"properties": {"next": {"$ref": "#"}, "v": {"type": "integer"}}},
        {"v": 1, "next": {"v": 2, "next": {"v": "3"}}},
        ("/next/next/v", "type"),
    ),
]


@pytest.mark.parametrize(
    ("schema", "instance", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_keyword(schema: Any, instance: Any, expected: tuple[str, str] | None) -> None:
    failure = compile_schema(schema).validate(instance)
    if expected is None:
        assert failure is None
    else:
        assert failure is not None, "expected a failure"
        assert (failure.pointer, failure.keyword) == expected, failure


def test_case_ids_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# --- messages ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "instance", "message"),
    [
        ({"type": "integer"}, "x", "expected integer, got string"),
        ({"type": "integer"}, True, "expected integer, got boolean"),
        ({"type": "integer"}, 1.5, "expected integer, got number"),
        ({"type": ["string", "null"]}, 3, "expected string or null, got integer"),
        ({"type": "object"}, [], "expected object, got array"),
        ({"required": ["b", "a", "c"]}, {"c": 1}, 'missing required property "a" (and 1 more)'),
        ({"minimum": 5}, 3, "must be >= 5, got 3"),
        ({"exclusiveMaximum": 5}, 5.0, "must be < 5, got 5.0"),
        ({"maxLength": 2}, "abc", "must be at most 2 characters long, got 3"),
        ({"enum": ["a", "b"]}, "c", 'must be one of ["a", "b"]'),
        ({"const": "x"}, "y", 'must be "x"'),
        ({"multipleOf": 0.1}, 0.35, "must be a multiple of 0.1"),
        ({"uniqueItems": True}, [1, 2, 1], "items 0 and 2 are equal"),
        ({"additionalProperties": False}, {"zz": 1}, 'unexpected property "zz"'),
        ({"oneOf": [{}, {}]}, 1, "must match exactly one alternative, matches 0 and 1"),
        (
            {"anyOf": [{"type": "string"}, {"type": "null"}]},
            1,
            "none of the 2 alternatives match; first: expected string, got integer",
        ),
        (
            {"properties": {"a": {"anyOf": [{"properties": {"b": {"type": "string"}}}]}}},
            {"a": {"b": 1}},
            "/b: expected string, got integer",
        ),
    ],
)
def test_messages(schema: Any, instance: Any, message: str) -> None:
    failure = compile_schema(schema).validate(instance)
    assert failure is not None
    assert failure.message == message


def test_messages_cap_echoed_values() -> None:
    long = "x" * 10_000
    cases: list[tuple[Any, Any]] = [
        ({"enum": [long, "b"]}, "c"),
        ({"const": long}, "c"),
        ({"pattern": "^(" + "a|" * 400 + "b)$"}, "c"),
        ({"additionalProperties": False}, {long: 1}),
        ({"propertyNames": {"maxLength": 3}}, {long: 1}),
        ({"required": [long]}, {}),
        ({"maximum": 1}, 10**70),
        ({"dependentRequired": {long: [long + "y"]}}, {long: 1}),
    ]
    for schema, instance in cases:
        failure = compile_schema(schema).validate(instance)
        assert failure is not None
        assert "x" * 81 not in failure.message
        assert len(failure.message) <= 400
        assert "x" * 81 not in failure.pointer


def test_messages_do_not_echo_rejected_strings() -> None:
    secret = "sk-live-" + "s" * 200
    for schema in (
        {"type": "integer"},
        {"maxLength": 3},
        {"pattern": "^a$"},
        {"enum": ["a"]},
        {"format": "x", "not": {}},
    ):
        failure = compile_schema(schema).validate(secret)
        assert failure is not None
        assert "sk-live" not in failure.message


def test_messages_escape_control_characters() -> None:
    failure = compile_schema({"additionalProperties": False}).validate({"a\nb\x1b[31m": 1})
    assert failure is not None
    assert "\n" not in failure.message and "\x1b" not in failure.message


# --- $ref recursion, cycles and limits ---------------------------------------------------------

TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}


def chain(levels: int, leaf: Any = None) -> dict[str, Any]:
    """A tree that is a path: every level adds two to the instance depth (object, then array)."""
    node: dict[str, Any] = {"name": "leaf"} if leaf is None else leaf
    for i in range(levels):
        node = {"name": f"n{i}", "children": [node]}
    return node


def test_recursive_tree_valid() -> None:
    v = compile_schema(TREE)
    assert v.validate({"name": "root", "children": [{"name": "a"}, {"name": "b", "children": []}]}) is None


def test_recursive_tree_reports_deep_pointer() -> None:
    v = compile_schema(TREE)
    failure = v.validate(chain(3, leaf={"name": 5}))
    assert failure == ValidationFailure(
        "/children/0/children/0/children/0/name", "type", "expected string, got integer"
    )


def test_recursive_tree_depth_limit() -> None:
    v = compile_schema(TREE)
    # the leaf's "name" in chain(n) has a pointer of 2n + 1 segments; at most 128 are allowed
    assert v.validate(chain(MAX_INSTANCE_DEPTH // 2 - 1)) is None
    failure = v.validate(chain(MAX_INSTANCE_DEPTH // 2))
    assert failure is not None
    assert failure.keyword == "depth"
    assert "too deeply nested" in failure.message
    assert failure.pointer == "/children/0" * (MAX_INSTANCE_DEPTH // 2) + "/name"


def test_linked_list_depth_limit_exact() -> None:
    v = compile_schema({"type": "object", "properties": {"next": {"$ref": "#"}}})
    inst: dict[str, Any] = {}
    for _ in range(MAX_INSTANCE_DEPTH):
        inst = {"next": inst}
    assert v.validate(inst) is None
    failure = v.validate({"next": inst})
    assert failure is not None and failure.keyword == "depth"
    assert failure.pointer == "/next" * (MAX_INSTANCE_DEPTH + 1)


@pytest.mark.parametrize("wrapper", ["not", "anyOf", "oneOf", "if"])
def test_depth_failure_is_not_inverted(wrapper: str) -> None:
    deep = {"type": "object", "properties": {"next": {"$ref": "#/$defs/deep"}}}
    sub: Any = {"$ref": "#/$defs/deep"}
    if wrapper == "not":
        schema: dict[str, Any] = {"not": sub}
    elif wrapper == "anyOf":
        schema = {"anyOf": [sub, {"type": "string"}]}
    elif wrapper == "oneOf":
        schema = {"oneOf": [sub, {"type": "string"}]}
    else:
        schema = {"if": sub, "then": {}, "else": {}}
        schema["else"] = {"type": "integer"}  # would pass the object under `then` only
    schema["$defs"] = {"deep": deep}
    inst: dict[str, Any] = {}
    for _ in range(MAX_INSTANCE_DEPTH + 5):
        inst = {"next": inst}
    failure = compile_schema(schema).validate(inst)
    assert failure is not None and failure.keyword == "depth"


def test_deep_enum_instance_is_bounded() -> None:
    inst: Any = []
    for _ in range(MAX_INSTANCE_DEPTH + 10):
        inst = [inst]
    failure = compile_schema({"enum": [[1]]}).validate(inst)
    assert failure is not None and failure.keyword == "depth"


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        {"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "properties": {"x": {"$ref": "#/$defs/a"}}},
        {"anyOf": [{"type": "string"}, {"not": {"$ref": "#"}}]},
        {"$defs": {"a": {"if": {"$ref": "#/$defs/a"}}}, "$ref": "#/$defs/a"},
    ],
    ids=["self", "two-step", "allOf", "anyOf-not", "if"],
)
def test_inplace_ref_cycles_rejected_at_compile(schema: Any) -> None:
    with pytest.raises(SchemaError, match="cycle"):
        compile_schema(schema)


def test_ref_cycle_through_descent_is_fine() -> None:
    schema = {
        "$defs": {"a": {"items": {"$ref": "#/$defs/b"}}, "b": {"items": {"$ref": "#/$defs/a"}}},
        "$ref": "#/$defs/a",
    }
    v = compile_schema(schema)
    assert v.validate([[[[]]]]) is None


def test_long_ref_chain_does_not_crash() -> None:
    # 4000 definitions each referring to the next in place: compiles (no cycle), then either validates
    # or reports "too complex" - never a RecursionError
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(4000)}
    defs["d4000"] = {"type": "integer"}
    v = compile_schema({"$defs": defs, "$ref": "#/$defs/d0"})
    failure = v.validate(1)
    assert failure is None or failure.keyword == "budget"


def test_unused_broken_definition_is_harmless() -> None:
    v = compile_schema({"$defs": {"broken": {"pattern": "("}}, "type": "object"})
    assert v.validate({}) is None


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        ({"$ref": "https://example.com/schema.json"}, "only local"),
        ({"$ref": "other.json#/a"}, "only local"),
        ({"$ref": "#anchor"}, "anchors"),
        ({"$ref": "#/$defs/missing"}, "does not resolve"),
        ({"$ref": 5}, "must be a string"),
        ({"pattern": "("}, "invalid regular expression"),
        ({"pattern": "\\p{L}+"}, "invalid regular expression"),
        ({"patternProperties": {"[": {}}}, "invalid regular expression"),
        ({"pattern": "a" * 1001}, "longer than 1000"),
        ({"type": "text"}, "unknown type"),
        ({"type": []}, "type"),
        ({"minLength": -1}, "non-negative integer"),
        ({"minLength": "3"}, "non-negative integer"),
        ({"minimum": "3"}, "must be a number"),
        ({"multipleOf": 0}, "greater than 0"),
        ({"properties": []}, "must be an object"),
        ({"properties": {"a": 5}}, "must be an object or a boolean"),
        ({"anyOf": []}, "non-empty array"),
        ({"required": "a"}, "array of strings"),
        ({"enum": "a"}, "must be an array"),
        ({"uniqueItems": "yes"}, "boolean"),
        (5, "must be an object or a boolean"),
    ],
)
def test_schema_errors(schema: Any, match: str) -> None:
    with pytest.raises(SchemaError, match=match):
        compile_schema(schema)


def test_schema_error_is_value_error_and_names_location() -> None:
    with pytest.raises(ValueError, match=r"#/properties/a/pattern"):
        compile_schema({"properties": {"a": {"pattern": "("}}})


def nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"properties": {"a": schema}}
    return schema


def test_schema_depth_limit() -> None:
    compile_schema(nested_schema(MAX_SCHEMA_DEPTH))
    with pytest.raises(SchemaError, match="deeper than 64"):
        compile_schema(nested_schema(MAX_SCHEMA_DEPTH + 1))


def test_schema_depth_limit_under_defs() -> None:
    # a definition is one level below the root, and its content counts from there
    with pytest.raises(SchemaError, match="deeper than 64"):
        compile_schema({"$defs": {"d": nested_schema(MAX_SCHEMA_DEPTH)}, "$ref": "#/$defs/d"})


def test_schema_size_limit() -> None:
    compile_schema({"properties": {f"p{i}": {"type": "string"} for i in range(MAX_SUBSCHEMAS - 1)}})
    with pytest.raises(SchemaError, match="more than 5000 subschemas"):
        compile_schema({"properties": {f"p{i}": {"type": "string"} for i in range(MAX_SUBSCHEMAS)}})


def test_work_budget() -> None:
    v = compile_schema({"type": "array", "items": {"type": "integer"}})
    assert v.validate(list(range(100_000))) is None
    failure = v.validate(list(range(250_000)))
    assert failure == ValidationFailure("", "budget", "arguments too complex to validate")


def test_work_budget_is_not_inverted_by_not() -> None:
    v = compile_schema({"not": {"items": {"type": "string"}}}, work_budget=100)
    failure = v.validate([1] * 1000)
    assert failure is not None and failure.keyword == "budget"


def test_work_budget_combinatorial_schema() -> None:
    # each level evaluates the one below twice, and every branch fails late: 2**30 without a budget
    defs: dict[str, Any] = {"d0": {"type": "integer"}}
    for i in range(1, 31):
        below = {"$ref": f"#/$defs/d{i - 1}"}
        defs[f"d{i}"] = {
            "anyOf": [{"allOf": [below, {"type": "string"}]}, {"allOf": [below, {"type": "null"}]}]
        }
    failure = compile_schema({"$defs": defs, "$ref": "#/$defs/d30"}).validate(1)
    assert failure is not None and failure.keyword == "budget"


def test_validator_is_reusable() -> None:
    v = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    for _ in range(3):
        assert v.validate({"a": 1}) is None
        failure = v.validate({"a": "x"})
        assert failure is not None and failure.pointer == "/a"


# --- validate_arguments ------------------------------------------------------------------------


def test_validate_arguments_missing_means_empty_object() -> None:
    v = compile_schema({"type": "object", "required": ["path"]})
    assert validate_arguments(v, None) == ValidationFailure(
        "", "required", 'missing required property "path"'
    )
    assert validate_arguments(compile_schema({"type": "object"}), None) is None


def test_validate_arguments_requires_an_object() -> None:
    v = compile_schema({})
    assert validate_arguments(v, [1]) == ValidationFailure(
        "", "type", "arguments must be an object, got array"
    )
    assert validate_arguments(None, "x") == ValidationFailure(
        "", "type", "arguments must be an object, got string"
    )
    assert validate_arguments(None, {"a": 1}) is None


# --- real-world MCP tool schemas ---------------------------------------------------------------

FS_READ_FILE = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "head": {"type": "number", "description": "If provided, returns only the first N lines of the file"},
        "tail": {"type": "number"},
    },
    "required": ["path"],
    "additionalProperties": False,
    "$schema": "http://json-schema.org/draft-07/schema#",
}

FS_EDIT_FILE = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "edits": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "oldText": {"type": "string", "description": "Text to search for - must match exactly"},
                    "newText": {"type": "string"},
                },
                "required": ["oldText", "newText"],
                "additionalProperties": False,
            },
        },
        "dryRun": {"type": "boolean", "default": False},
    },
    "required": ["path", "edits"],
    "additionalProperties": False,
    "$schema": "http://json-schema.org/draft-07/schema#",
}

GITHUB_CREATE_ISSUE = {
    "type": "object",
    "properties": {
        "owner": {"type": "string", "minLength": 1},
        "repo": {"type": "string", "minLength": 1},
        "title": {"type": "string", "minLength": 1, "maxLength": 256},
        "body": {"type": "string"},
        "assignees": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "labels": {"type": "array", "items": {"type": "string"}},
        "milestone": {"type": "number"},
        "type": {"type": "string", "enum": ["bug", "feature", "task"]},
    },
    "required": ["owner", "repo", "title"],
    "additionalProperties": False,
}

# what pydantic (FastMCP) emits for `def search(query: str, limit: int = 10, filters: Filters | None = None)`
PYDANTIC_SEARCH = {
    "$defs": {
        "Filters": {
            "properties": {
                "language": {
                    "anyOf": [{"type": "string"}, {"type": "null"}],
                    "default": None,
                    "title": "Language",
                },
                "since": {"anyOf": [{"format": "date", "type": "string"}, {"type": "null"}], "default": None},
                "sort": {"enum": ["stars", "updated"], "title": "Sort", "type": "string", "default": "stars"},
            },
            "title": "Filters",
            "type": "object",
        }
    },
    "properties": {
        "query": {"title": "Query", "type": "string"},
        "limit": {"default": 10, "title": "Limit", "type": "integer", "minimum": 1, "maximum": 100},
        "filters": {"anyOf": [{"$ref": "#/$defs/Filters"}, {"type": "null"}], "default": None},
    },
    "required": ["query"],
    "title": "searchArguments",
    "type": "object",
}

# zod-to-json-schema output with a discriminated union (TypeScript SDK servers)
ZOD_QUERY = {
    "type": "object",
    "properties": {
        "target": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"kind": {"type": "string", "const": "table"}, "name": {"type": "string"}},
                    "required": ["kind", "name"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {
                        "kind": {"type": "string", "const": "sql"},
                        "sql": {"type": "string", "maxLength": 10000},
                    },
                    "required": ["kind", "sql"],
                    "additionalProperties": False,
                },
            ]
        },
        "timeoutMs": {"type": "integer", "exclusiveMinimum": 0, "maximum": 60000},
    },
    "required": ["target"],
    "additionalProperties": False,
    "$schema": "http://json-schema.org/draft-07/schema#",
}

REAL_CASES: list[tuple[str, dict[str, Any], Any, tuple[str, str] | None]] = [
    ("fs-read-ok", FS_READ_FILE, {"path": "/tmp/a.txt"}, OK),
    ("fs-read-head", FS_READ_FILE, {"path": "/tmp/a.txt", "head": 10}, OK),
    ("fs-read-no-path", FS_READ_FILE, {}, ("", "required")),
    ("fs-read-path-number", FS_READ_FILE, {"path": 5}, ("/path", "type")),
    ("fs-read-head-bool", FS_READ_FILE, {"path": "a", "head": True}, ("/head", "type")),
    ("fs-read-extra", FS_READ_FILE, {"path": "a", "mode": "rw"}, ("/mode", "additionalProperties")),
    ("fs-edit-ok", FS_EDIT_FILE, {"path": "a", "edits": [{"oldText": "x", "newText": "y"}]}, OK),
    (
        "fs-edit-bad-edit",
        FS_EDIT_FILE,
        {"path": "a", "edits": [{"oldText": "x", "newText": "y"}, {"oldText": "x"}]},
        ("/edits/1", "required"),
    ),
    (
        "fs-edit-extra-in-edit",
        FS_EDIT_FILE,
        {"path": "a", "edits": [{"oldText": "x", "newText": "y", "regex": True}]},
        ("/edits/0/regex", "additionalProperties"),
    ),
    ("fs-edit-dryrun-string", FS_EDIT_FILE, {"path": "a", "edits": [], "dryRun": "yes"}, ("/dryRun", "type")),
    (
        "gh-ok",
        GITHUB_CREATE_ISSUE,
        {"owner": "o", "repo": "r", "title": "t", "labels": ["bug"], "type": "bug"},
        OK,
    ),
    (
        "gh-milestone-float",
        GITHUB_CREATE_ISSUE,
        {"owner": "o", "repo": "r", "title": "t", "milestone": 3.0},
        OK,
    ),
    (
        "gh-empty-title",
        GITHUB_CREATE_ISSUE,
        {"owner": "o", "repo": "r", "title": ""},
        ("/title", "minLength"),
    ),
    (
        "gh-bad-type",
        GITHUB_CREATE_ISSUE,
        {"owner": "o", "repo": "r", "title": "t", "type": "epic"},
        ("/type", "enum"),
    ),
    (
        "gh-bad-label",
        GITHUB_CREATE_ISSUE,
        {"owner": "o", "repo": "r", "title": "t", "labels": ["a", 2]},
        ("/labels/1", "type"),
    ),
    (
        "gh-dup-assignee",
        GITHUB_CREATE_ISSUE,
        {"owner": "o", "repo": "r", "title": "t", "assignees": ["a", "a"]},
        ("/assignees", "uniqueItems"),
    ),
    ("py-ok", PYDANTIC_SEARCH, {"query": "x"}, OK),
    ("py-null-filters", PYDANTIC_SEARCH, {"query": "x", "filters": None}, OK),
    ("py-filters", PYDANTIC_SEARCH, {"query": "x", "filters": {"language": None, "sort": "updated"}}, OK),
    ("py-limit-float-integral", PYDANTIC_SEARCH, {"query": "x", "limit": 5.0}, OK),
    ("py-limit-too-big", PYDANTIC_SEARCH, {"query": "x", "limit": 101}, ("/limit", "maximum")),
    ("py-bad-sort", PYDANTIC_SEARCH, {"query": "x", "filters": {"sort": "forks"}}, ("/filters", "anyOf")),
    ("py-extra-allowed", PYDANTIC_SEARCH, {"query": "x", "other": 1}, OK),
    ("zod-table", ZOD_QUERY, {"target": {"kind": "table", "name": "t"}}, OK),
    ("zod-sql", ZOD_QUERY, {"target": {"kind": "sql", "sql": "select 1"}, "timeoutMs": 100}, OK),
    ("zod-mixed", ZOD_QUERY, {"target": {"kind": "sql", "name": "t"}}, ("/target", "anyOf")),
    (
        "zod-timeout-zero",
        ZOD_QUERY,
        {"target": {"kind": "table", "name": "t"}, "timeoutMs": 0},
        ("/timeoutMs", "exclusiveMinimum"),
    ),
]


@pytest.mark.parametrize(
    ("schema", "instance", "expected"), [c[1:] for c in REAL_CASES], ids=[c[0] for c in REAL_CASES]
)
def test_real_world_schemas(schema: dict[str, Any], instance: Any, expected: tuple[str, str] | None) -> None:
    failure = validate_arguments(compile_schema(schema), instance)
    if expected is None:
        assert failure is None
    else:
        assert failure is not None, "expected a failure"
        assert (failure.pointer, failure.keyword) == expected, failure


def test_anyof_message_names_the_first_alternative() -> None:
    failure = compile_schema(PYDANTIC_SEARCH).validate({"query": "x", "filters": {"sort": "forks"}})
    assert failure is not None
    assert failure.message.startswith("none of the 2 alternatives match; first: /sort: must be one of")


def test_type_object_compiles_to_a_single_check() -> None:
    # the common "no parameters" tool: the validator's root is the bare type test
    v = compile_schema({"type": "object", "description": "no arguments", "properties": {}})
    assert v._check.__name__ == "check_one"
    assert v.validate({}) is None
