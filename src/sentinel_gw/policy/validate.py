"""Tool-argument validation: a JSON Schema (2020-12, plus the draft-4/7 forms tools still emit) validator.

Our own, standard library only, because it runs on every `tools/call` and must be cheap, bounded and
predictable whatever a backend advertises:

- `compile_schema` walks the schema once and builds a tree of closures; `Validator.validate` never
  looks at the raw dict again. Keywords that cannot apply to the instance's JSON type are skipped by
  one dict lookup, and `{"type": "object"}` compiles to a single type test.
- The first failure is reported, in a fixed order: `type`, `enum`/`const`, the keywords of the
  instance's type, then the in-place applicators (`$ref`, `allOf`, `anyOf`, `oneOf`, `not`,
  `if`). Property names are visited in sorted order, so the answer does not depend on dict order.
- Everything is bounded: schema depth and size at compile time; instance depth and a work budget at
  validation time, reported as failures (`depth`, `budget`) that `not`/`anyOf`/`oneOf`/`if` never
  turn into a pass.
- `$ref` is local only (`#`, `#/$defs/x`, any JSON pointer). A remote `$ref`, an invalid regex or a
  `$ref` cycle that never descends into the instance raise `SchemaError` at compile time: the caller
  skips validation for that tool (the backend still validates) and logs once.

Deliberately ignored: `format` (annotation only), `unevaluatedProperties`/`unevaluatedItems`,
`$dynamicRef`, `$id` (refs resolve against the document root) and unknown keywords. Ignoring a keyword
only ever makes us accept more; the backend remains the authority on its own arguments.

`pattern` follows ECMA-262 where Python differs in ways that matter: `search` semantics, ASCII `\\d`
`\\w` `\\b`, `$` only at the very end (Python's `$` also matches before a final newline, which would let
`"abc\\n"` through `^[a-z]+$`), `(?<name>...)` and `\\k<name>` groups. Other ECMA-only syntax
(`\\p{...}`, `\\u{...}`) fails to compile, which makes the schema a `SchemaError`. Python's `re` can
backtrack catastrophically on hostile patterns; the backend wrote the pattern, the client only
controls the input, which is capped at 100 000 characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from urllib.parse import unquote

__all__ = [
    "MAX_INSTANCE_DEPTH",
    "MAX_PATTERN_INPUT",
    "MAX_PATTERN_LENGTH",
    "MAX_SCHEMA_DEPTH",
    "MAX_SUBSCHEMAS",
    "WORK_BUDGET",
    "SchemaError",
    "ValidationFailure",
    "Validator",
    "compile_schema",
    "validate_arguments",
]

MAX_SCHEMA_DEPTH = 64
MAX_SUBSCHEMAS = 5000
MAX_INSTANCE_DEPTH = 128
WORK_BUDGET = 200_000
MAX_PATTERN_LENGTH = 1000
MAX_PATTERN_INPUT = 100_000
MAX_ECHO = 80
_MAX_MESSAGE = 400
_MAX_CONST_DEPTH = 128


class SchemaError(ValueError):
    """The schema cannot be compiled; skip validation for that tool and log once."""


@dataclass(frozen=True, slots=True)
class ValidationFailure:
    pointer: str  # JSON pointer of the instance location ("" = the arguments object itself)
    keyword: str
    message: str


class _Fail:
    """A failure on its way up: each level that descended appends its segment (cheaper than a path)."""

    __slots__ = ("fatal", "keyword", "message", "segments")

    def __init__(self, keyword: str, message: str, fatal: bool = False) -> None:
        self.keyword = keyword
        self.message = message
        self.fatal = fatal  # depth/budget: must never be inverted into a pass by `not`, `anyOf`...
        self.segments: list[str] = []


class _Ctx:
    __slots__ = ("budget",)

    def __init__(self, budget: int) -> None:
        self.budget = budget


_Check = Callable[[object, int, _Ctx], "_Fail | None"]
_Path = tuple[str, ...]
_MISSING = object()
_NoneType = type(None)


def _budget_fail() -> _Fail:
    return _Fail("budget", "arguments too complex to validate", fatal=True)


def _too_deep(segment: str) -> _Fail:
    f = _Fail("depth", f"too deeply nested (more than {MAX_INSTANCE_DEPTH} levels)", fatal=True)
    f.segments.append(segment)
    return f


def _accept(inst: object, depth: int, ctx: _Ctx) -> _Fail | None:
    return None


def _reject(inst: object, depth: int, ctx: _Ctx) -> _Fail | None:
    return _Fail("false", "no value is allowed here")


# --- small helpers -------------------------------------------------------------------------------


def _kind(inst: object) -> type | None:
    """The canonical Python type of a JSON value (exact JSON-decoder types take the fast path)."""
    t = type(inst)
    if t in _JSON_NAMES:
        return t
    if isinstance(inst, bool):
        return bool
    if isinstance(inst, int):
        return int
    if isinstance(inst, float):
        return float
    if isinstance(inst, str):
        return str
    if isinstance(inst, Mapping):
        return dict
    if isinstance(inst, (list, tuple)):
        return list
    return None


_JSON_NAMES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    _NoneType: "null",
}


def _got(inst: object) -> str:
    k = _kind(inst)
    if k is None:
        return type(inst).__name__
    if k is float and not _finite(inst):  # type: ignore[arg-type]
        return "non-finite number"
    return _JSON_NAMES[k]


def _finite(x: float) -> bool:
    return x - x == 0.0  # inf - inf and nan - nan are nan


def _cap(text: str, limit: int = MAX_ECHO) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: object) -> str:
    """A short, log-safe rendering of a value: never more than MAX_ECHO characters."""
    if isinstance(value, str):
        return _cap(json.dumps(value[:MAX_ECHO]))
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        # str() of a huge int is slow and, past 4300 digits, an error
        return _cap(str(value)) if value.bit_length() <= 256 else "<large integer>"
    if isinstance(value, float):
        return _cap(repr(value))
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return _cap("[" + ", ".join(_show(v) for v in value[:10]) + "]")
    return _cap(type(value).__name__)


def _segment(seg: str) -> str:
    return _cap(seg).replace("~", "~0").replace("/", "~1")


def _pointer(segments: list[str]) -> str:
    return "".join("/" + _segment(s) for s in reversed(segments))


def _where(path: _Path) -> str:
    return "#" + "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def _describe(f: _Fail) -> str:
    rel = _pointer(f.segments)
    return f"{rel}: {f.message}" if rel else f.message


# --- JSON equality: a hashable key per value, equal iff the values are JSON-equal --------------------
# Strings and numbers are their own keys (Python already has 1 == 1.0 with equal hashes); booleans and
# null are tagged so True never equals 1; containers become tuples / frozensets of keys.

_TRUE_KEY = (1, True)
_FALSE_KEY = (1, False)
_NULL_KEY = (0,)


class _KeyAbort(Exception):
    def __init__(self, fail: _Fail) -> None:
        self.fail = fail


def _key(value: object, depth: int, ctx: _Ctx | None) -> object:
    t = type(value)
    if t is str or t is int or t is float:
        return value
    if t is bool:
        return _TRUE_KEY if value else _FALSE_KEY
    if value is None:
        return _NULL_KEY
    k = _kind(value)
    if depth > MAX_INSTANCE_DEPTH:
        raise _KeyAbort(_too_deep(""))
    if k is list:
        if ctx is not None:
            ctx.budget -= len(value)  # type: ignore[arg-type]
            if ctx.budget < 0:
                raise _KeyAbort(_budget_fail())
        return (4, tuple(_key(v, depth + 1, ctx) for v in value))  # type: ignore[attr-defined]
    if k is dict:
        if ctx is not None:
            ctx.budget -= len(value)  # type: ignore[arg-type]
            if ctx.budget < 0:
                raise _KeyAbort(_budget_fail())
        return (5, frozenset((n, _key(v, depth + 1, ctx)) for n, v in value.items()))  # type: ignore[attr-defined]
    if k is bool:
        return _TRUE_KEY if value else _FALSE_KEY
    if k in (str, int, float):
        return k(value)  # type: ignore[misc]
    return (9, id(value))  # not JSON: equal to nothing but itself


def _schema_key(value: object, where: str) -> object:
    try:
        return _key(value, MAX_INSTANCE_DEPTH - _MAX_CONST_DEPTH, None)
    except _KeyAbort:
        raise SchemaError(f"{where}: value nested too deeply") from None


def _instance_key(value: object, depth: int, ctx: _Ctx) -> object | _Fail:
    try:
        return _key(value, depth, ctx)
    except _KeyAbort as e:
        e.fail.segments.clear()
        return e.fail


# --- ECMA-262 pattern translation --------------------------------------------------------------------


def _ecma_to_python(pattern: str) -> str:
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if pattern.startswith("k<", i + 1) and not in_class:
                end = pattern.find(">", i + 3)
                if end > 0:
                    out.append(f"(?P={pattern[i + 3 : end]})")
                    i = end + 1
                    continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
        elif c == "$":
            out.append(r"\Z")
            i += 1
            continue
        elif c == "(" and pattern.startswith("(?<", i) and pattern[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


# --- the compiler --------------------------------------------------------------------------------

_MAP_KWS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"}
)
_LIST_KWS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_TYPE_MAP: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (_NoneType,),
    "number": (int, float),
    "integer": (int,),
}


def _static_depth(path: _Path) -> int:
    depth = i = 0
    while i < len(path):
        seg = path[i]
        two = (
            seg in _MAP_KWS
            or seg in _LIST_KWS
            or (seg == "items" and i + 1 < len(path) and path[i + 1].isdigit())
        )
        i += 2 if two else 1
        depth += 1
    return depth


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fraction(x: int | float) -> Fraction:
    # The shortest repr of a float is the decimal its author wrote: 0.1 -> 1/10, so 0.3 % 0.1 == 0.
    return Fraction(x) if isinstance(x, int) else Fraction(repr(x))


class _Compiler:
    def __init__(self, root: object) -> None:
        self.root = root
        self.count = 0
        self.nodes: dict[_Path, _Check] = {}
        self.inplace: dict[_Path, list[_Path]] = {}  # edges that stay on the same instance location
        self.cells: dict[_Path, list[_Check]] = {}  # $ref targets, filled once everything is compiled

    # entry point
    def build(self) -> _Check:
        root = self.compile(self.root, (), 0)
        done: set[_Path] = set()
        while len(done) < len(self.cells):
            for target in [p for p in self.cells if p not in done]:
                done.add(target)
                if target not in self.nodes:
                    self.compile(self._resolve(target), target, _static_depth(target))
        for target, cell in self.cells.items():
            cell[0] = self.nodes[target]
        self._check_cycles()
        return root

    def compile(self, schema: object, path: _Path, depth: int) -> _Check:
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(f"{_where(path)}: schema nested deeper than {MAX_SCHEMA_DEPTH} levels")
        self.count += 1
        if self.count > MAX_SUBSCHEMAS:
            raise SchemaError(f"schema has more than {MAX_SUBSCHEMAS} subschemas")
        if schema is True:
            fn: _Check = _accept
        elif schema is False:
            fn = _reject
        elif isinstance(schema, Mapping):
            fn = self._object(schema, path, depth)
        else:
            raise SchemaError(f"{_where(path)}: a schema must be an object or a boolean")
        self.nodes[path] = fn
        return fn

    def _sub(self, schema: object, path: _Path, depth: int, *, inplace: bool, parent: _Path) -> _Check:
        if inplace:
            self.inplace.setdefault(parent, []).append(path)
        return self.compile(schema, path, depth + 1)

    # $ref resolution --------------------------------------------------------------------------------

    def _ref_target(self, ref: object, path: _Path) -> _Path:
        where = _where(path)
        if not isinstance(ref, str):
            raise SchemaError(f"{where}/$ref: must be a string")
        if not ref.startswith("#"):
            raise SchemaError(f"{where}/$ref: only local references are supported, got {_show(ref)}")
        if ref == "#":
            return ()
        if not ref.startswith("#/"):
            raise SchemaError(f"{where}/$ref: anchors are not supported, got {_show(ref)}")
        target = tuple(unquote(s).replace("~1", "/").replace("~0", "~") for s in ref[2:].split("/"))
        self._resolve(target, where)  # fail early, with the referring location
        return target

    def _resolve(self, target: _Path, where: str = "") -> object:
        node = self.root
        for seg in target:
            if isinstance(node, Mapping) and seg in node:
                node = node[seg]
            elif isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
                node = node[int(seg)]
            else:
                raise SchemaError(f"{where or _where(target)}/$ref: {_show(_where(target))} does not resolve")
        return node

    def _check_cycles(self) -> None:
        """Reject in-place cycles ({"$ref": "#"}): they would recurse forever on every value."""
        state: dict[_Path, int] = {}  # 1 = on the stack, 2 = done
        for start in self.nodes:
            if state.get(start):
                continue
            stack: list[tuple[_Path, int]] = [(start, 0)]
            state[start] = 1
            while stack:
                node, i = stack[-1]
                edges = self.inplace.get(node, ())
                if i < len(edges):
                    stack[-1] = (node, i + 1)
                    nxt = edges[i]
                    s = state.get(nxt)
                    if s == 1:
                        raise SchemaError(f"{_where(nxt)}: $ref cycle that never descends into the value")
                    if s is None:
                        state[nxt] = 1
                        stack.append((nxt, 0))
                else:
                    state[node] = 2
                    stack.pop()

    # one schema object ----------------------------------------------------------------------------

    def _object(self, s: Mapping[str, object], path: _Path, depth: int) -> _Check:
        head: list[_Check] = []
        num: list[_Check] = []
        text: list[_Check] = []
        arr: list[_Check] = []
        obj: list[_Check] = []
        tail: list[_Check] = []
        where = _where(path)

        if "type" in s:
            head.append(_type_check(s["type"], where))
        if "enum" in s:
            head.append(_enum_check(s["enum"], where))
        if "const" in s:
            head.append(_const_check(s["const"], where))

        self._numeric(s, where, num)
        self._string(s, where, text)
        self._array(s, path, depth, arr)
        self._objectkw(s, path, depth, obj)
        self._applicators(s, path, depth, tail)

        shared = head + tail
        table: dict[type, tuple[_Check, ...]] = {
            dict: tuple(head + obj + tail),
            list: tuple(head + arr + tail),
            str: tuple(head + text + tail),
            int: tuple(head + num + tail),
            float: tuple(head + num + tail),
            bool: tuple(shared),
            _NoneType: tuple(shared),
        }
        other = tuple(shared)
        distinct = {checks for checks in table.values()}
        if distinct == {()}:
            return _accept
        if len(distinct) == 1:
            (only,) = distinct
            if len(only) == 1:
                return only[0]  # e.g. {"type": "object"}: one type test, no bookkeeping

        def node(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
            ctx.budget -= 1
            if ctx.budget < 0:
                return _budget_fail()
            checks = table.get(type(inst))
            if checks is None:
                k = _kind(inst)
                checks = table[k] if k is not None else other
            for check in checks:
                f = check(inst, d, ctx)
                if f is not None:
                    return f
            return None

        return node

    def _numeric(self, s: Mapping[str, object], where: str, out: list[_Check]) -> None:
        excl_min, excl_max = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
        for kw, op in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        ):
            if kw not in s:
                continue
            bound = s[kw]
            if kw.startswith("exclusive") and isinstance(bound, bool):
                continue  # draft-4 form: it modifies minimum/maximum below
            if not _is_number(bound):
                raise SchemaError(f"{where}/{kw}: must be a number")
            if kw == "minimum" and excl_min is True:
                out.append(_bound_check("exclusiveMinimum", ">", bound))  # type: ignore[arg-type]
            elif kw == "maximum" and excl_max is True:
                out.append(_bound_check("exclusiveMaximum", "<", bound))  # type: ignore[arg-type]
            else:
                out.append(_bound_check(kw, op, bound))  # type: ignore[arg-type]
        if "multipleOf" in s:
            m = s["multipleOf"]
            if not _is_number(m) or not m > 0 or not _finite(float(m)):  # type: ignore[operator, arg-type]
                raise SchemaError(f"{where}/multipleOf: must be a number greater than 0")
            out.append(_multiple_check(m))  # type: ignore[arg-type]

    def _string(self, s: Mapping[str, object], where: str, out: list[_Check]) -> None:
        lo = _count(s, "minLength", where)
        hi = _count(s, "maxLength", where)
        if lo is not None:

            def min_length(inst: object, d: int, ctx: _Ctx, lo: int = lo) -> _Fail | None:
                n = len(inst)  # type: ignore[arg-type]
                if n < lo:
                    return _Fail("minLength", f"must be at least {lo} characters long, got {n}")
                return None

            out.append(min_length)
        if hi is not None:

            def max_length(inst: object, d: int, ctx: _Ctx, hi: int = hi) -> _Fail | None:
                n = len(inst)  # type: ignore[arg-type]
                if n > hi:
                    return _Fail("maxLength", f"must be at most {hi} characters long, got {n}")
                return None

            out.append(max_length)
        if "pattern" in s:
            out.append(_pattern_check(s["pattern"], f"{where}/pattern"))

    def _array(self, s: Mapping[str, object], path: _Path, depth: int, out: list[_Check]) -> None:
        where = _where(path)
        lo = _count(s, "minItems", where)
        hi = _count(s, "maxItems", where)
        if lo is not None:

            def min_items(inst: object, d: int, ctx: _Ctx, lo: int = lo) -> _Fail | None:
                n = len(inst)  # type: ignore[arg-type]
                return _Fail("minItems", f"must have at least {lo} items, got {n}") if n < lo else None

            out.append(min_items)
        if hi is not None:

            def max_items(inst: object, d: int, ctx: _Ctx, hi: int = hi) -> _Fail | None:
                n = len(inst)  # type: ignore[arg-type]
                return _Fail("maxItems", f"must have at most {hi} items, got {n}") if n > hi else None

            out.append(max_items)
        unique = s.get("uniqueItems", False)
        if not isinstance(unique, bool):
            raise SchemaError(f"{where}/uniqueItems: must be a boolean")
        if unique:
            out.append(_unique_check)

        # prefixItems + items (2020-12), or items as an array + additionalItems (draft 7)
        items = s.get("items")
        prefix_raw: object = None
        prefix_kw, rest_kw = "prefixItems", "items"
        rest_raw: object = None
        if isinstance(items, list):
            prefix_raw, rest_raw = items, s.get("additionalItems")
            prefix_kw, rest_kw = "items", "additionalItems"
        else:
            prefix_raw, rest_raw = s.get("prefixItems"), items
        prefix: list[_Check] = []
        if prefix_raw is not None:
            if not isinstance(prefix_raw, list):
                raise SchemaError(f"{where}/{prefix_kw}: must be an array of schemas")
            prefix = [
                self._sub(sub, (*path, prefix_kw, str(i)), depth, inplace=False, parent=path)
                for i, sub in enumerate(prefix_raw)
            ]
        rest: _Check | None = None
        if rest_raw is not None:
            rest = self._sub(rest_raw, (*path, rest_kw), depth, inplace=False, parent=path)
        if any(p is not _accept for p in prefix):
            out.append(_prefix_check(tuple(prefix)))
        if rest is not None and rest is not _accept:
            out.append(_rest_check(rest, len(prefix), rest_kw))

        if "contains" in s:
            contains = self._sub(s["contains"], (*path, "contains"), depth, inplace=False, parent=path)
            min_c = _count(s, "minContains", where)
            max_c = _count(s, "maxContains", where)
            out.append(_contains_check(contains, 1 if min_c is None else min_c, max_c))

    def _objectkw(self, s: Mapping[str, object], path: _Path, depth: int, out: list[_Check]) -> None:
        where = _where(path)
        required = s.get("required")
        # draft-3 put `"required": true` on the property itself; it means nothing here, so ignore it
        if isinstance(required, list):
            if not all(isinstance(r, str) for r in required):
                raise SchemaError(f"{where}/required: must be an array of strings")
            if required:
                out.append(_required_check(tuple(sorted(set(required)))))
        elif required is not None and not isinstance(required, bool):
            raise SchemaError(f"{where}/required: must be an array of strings")

        lo = _count(s, "minProperties", where)
        hi = _count(s, "maxProperties", where)
        if lo is not None:

            def min_props(inst: object, d: int, ctx: _Ctx, lo: int = lo) -> _Fail | None:
                n = len(inst)  # type: ignore[arg-type]
                return (
                    _Fail("minProperties", f"must have at least {lo} properties, got {n}") if n < lo else None
                )

            out.append(min_props)
        if hi is not None:

            def max_props(inst: object, d: int, ctx: _Ctx, hi: int = hi) -> _Fail | None:
                n = len(inst)  # type: ignore[arg-type]
                return (
                    _Fail("maxProperties", f"must have at most {hi} properties, got {n}") if n > hi else None
                )

            out.append(max_props)

        if "propertyNames" in s:
            names = self._sub(s["propertyNames"], (*path, "propertyNames"), depth, inplace=False, parent=path)
            if names is not _accept:
                out.append(_property_names_check(names))

        props = self._schema_map(s, "properties", path, depth, inplace=False)
        declared = frozenset(props)
        live = tuple(sorted((n, fn) for n, fn in props.items() if fn is not _accept))
        if live:
            out.append(_properties_check(live))
        patterns: list[tuple[re.Pattern[str], _Check]] = []
        for name, fn in sorted(self._schema_map(s, "patternProperties", path, depth, inplace=False).items()):
            patterns.append((_compile_pattern(name, f"{where}/patternProperties"), fn))
        additional: _Check | None = None
        if "additionalProperties" in s:
            additional = self._sub(
                s["additionalProperties"], (*path, "additionalProperties"), depth, inplace=False, parent=path
            )
            if additional is _accept:
                additional = None
        if additional is _reject and not patterns:
            out.append(_no_extras_check(declared))
        elif additional is not None or any(fn is not _accept for _, fn in patterns):
            out.append(_extras_check(declared, tuple(patterns), additional))

        dep_required: dict[str, tuple[str, ...]] = {}
        dep_schemas: dict[str, _Check] = {}
        for kw in ("dependentRequired", "dependentSchemas", "dependencies"):
            raw = s.get(kw)
            if raw is None:
                continue
            if not isinstance(raw, Mapping):
                raise SchemaError(f"{where}/{kw}: must be an object")
            for name, value in raw.items():
                if isinstance(value, list) and kw != "dependentSchemas":
                    if not all(isinstance(v, str) for v in value):
                        raise SchemaError(f"{where}/{kw}/{name}: must be an array of strings")
                    dep_required[name] = tuple(sorted(set(value)))
                elif kw != "dependentRequired":
                    dep_schemas[name] = self._sub(value, (*path, kw, name), depth, inplace=True, parent=path)
                else:
                    raise SchemaError(f"{where}/{kw}/{name}: must be an array of strings")
        if dep_required:
            out.append(_dependent_required_check(tuple(sorted(dep_required.items()))))
        live_deps = tuple(sorted((n, fn) for n, fn in dep_schemas.items() if fn is not _accept))
        if live_deps:
            out.append(_dependent_schemas_check(live_deps))

    def _schema_map(
        self, s: Mapping[str, object], kw: str, path: _Path, depth: int, *, inplace: bool
    ) -> dict[str, _Check]:
        raw = s.get(kw)
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise SchemaError(f"{_where(path)}/{kw}: must be an object")
        return {
            name: self._sub(sub, (*path, kw, name), depth, inplace=inplace, parent=path)
            for name, sub in raw.items()
        }

    def _applicators(self, s: Mapping[str, object], path: _Path, depth: int, out: list[_Check]) -> None:
        where = _where(path)
        # $defs/definitions are compiled only when referenced: an unused broken definition is harmless
        if "$ref" in s:
            target = self._ref_target(s["$ref"], path)
            self.inplace.setdefault(path, []).append(target)
            cell = self.cells.setdefault(target, [_accept])

            def ref(inst: object, d: int, ctx: _Ctx, cell: list[_Check] = cell) -> _Fail | None:
                ctx.budget -= 1
                if ctx.budget < 0:
                    return _budget_fail()
                return cell[0](inst, d, ctx)

            out.append(ref)
        branches: dict[str, tuple[_Check, ...]] = {}
        for kw in ("allOf", "anyOf", "oneOf"):
            if kw not in s:
                continue
            raw = s[kw]
            if not isinstance(raw, list) or not raw:
                raise SchemaError(f"{where}/{kw}: must be a non-empty array of schemas")
            branches[kw] = tuple(
                self._sub(sub, (*path, kw, str(i)), depth, inplace=True, parent=path)
                for i, sub in enumerate(raw)
            )
        if "allOf" in branches:
            live = tuple(b for b in branches["allOf"] if b is not _accept)
            if live:
                out.append(_all_of_check(live))
        if "anyOf" in branches and _accept not in branches["anyOf"]:
            out.append(_any_of_check(branches["anyOf"]))
        if "oneOf" in branches:
            out.append(_one_of_check(branches["oneOf"]))
        if "not" in s:
            out.append(_not_check(self._sub(s["not"], (*path, "not"), depth, inplace=True, parent=path)))
        if "if" in s:
            cond = self._sub(s["if"], (*path, "if"), depth, inplace=True, parent=path)
            then = (
                self._sub(s["then"], (*path, "then"), depth, inplace=True, parent=path)
                if "then" in s
                else None
            )
            other = (
                self._sub(s["else"], (*path, "else"), depth, inplace=True, parent=path)
                if "else" in s
                else None
            )
            then = None if then is _accept else then
            other = None if other is _accept else other
            if then is not None or other is not None:
                out.append(_if_check(cond, then, other))


def _count(s: Mapping[str, object], kw: str, where: str) -> int | None:
    if kw not in s:
        return None
    v = s[kw]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise SchemaError(f"{where}/{kw}: must be a non-negative integer")
    return v


# --- keyword checks ------------------------------------------------------------------------------


def _type_check(raw: object, where: str) -> _Check:
    names = (raw,) if isinstance(raw, str) else raw
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
        raise SchemaError(f"{where}/type: must be a type name or a non-empty array of them")
    ok: set[type] = set()
    for name in names:
        if name not in _TYPE_MAP:
            raise SchemaError(f"{where}/type: unknown type {_show(name)}")
        ok.update(_TYPE_MAP[name])
    integral_floats = "integer" in names and "number" not in names
    expected = " or ".join(dict.fromkeys(names))  # type: ignore[arg-type]
    okf = frozenset(ok)

    def slow(inst: object) -> _Fail | None:
        t = type(inst)
        if t is float:
            if float in okf and _finite(inst):  # type: ignore[arg-type]
                return None
            if integral_floats and inst.is_integer():  # type: ignore[attr-defined]
                return None  # 1.0 is an integer in JSON Schema
        elif t not in _JSON_NAMES:
            k = _kind(inst)
            if k is not None and k in okf:
                return (
                    None
                    if k is not float or _finite(inst)
                    else _Fail("type", f"expected {expected}, got {_got(inst)}")
                )  # type: ignore[arg-type]
            if integral_floats and k is float and float(inst).is_integer():  # type: ignore[arg-type]
                return None
        return _Fail("type", f"expected {expected}, got {_got(inst)}")

    if len(okf) == 1:
        (only,) = okf

        def check_one(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
            if type(inst) is only:
                return None
            return slow(inst)

        return check_one

    no_float = frozenset(okf - {float})

    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        if type(inst) in no_float:
            return None
        return slow(inst)

    return check


def _enum_check(raw: object, where: str) -> _Check:
    if not isinstance(raw, list):
        raise SchemaError(f"{where}/enum: must be an array")
    keys = frozenset(_schema_key(v, f"{where}/enum") for v in raw)
    message = f"must be one of {_show(raw)}"

    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        t = type(inst)
        if t is str or t is int or t is float:
            if inst in keys:
                return None
        else:
            k = _instance_key(inst, d, ctx)
            if isinstance(k, _Fail):
                return k
            if k in keys:
                return None
        return _Fail("enum", message)

    return check


def _const_check(raw: object, where: str) -> _Check:
    want = _schema_key(raw, f"{where}/const")
    message = f"must be {_show(raw)}"

    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        k = _instance_key(inst, d, ctx)
        if isinstance(k, _Fail):
            return k
        return None if k == want else _Fail("const", message)

    return check


def _bound_check(kw: str, op: str, bound: int | float) -> _Check:
    shown = _show(bound)

    def fail(inst: object) -> _Fail:
        return _Fail(kw, f"must be {op} {shown}, got {_show(inst)}")

    if op == ">=":

        def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
            return None if inst >= bound else fail(inst)  # type: ignore[operator]

    elif op == ">":

        def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
            return None if inst > bound else fail(inst)  # type: ignore[operator]

    elif op == "<=":

        def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
            return None if inst <= bound else fail(inst)  # type: ignore[operator]

    else:

        def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
            return None if inst < bound else fail(inst)  # type: ignore[operator]

    return check


def _multiple_check(m: int | float) -> _Check:
    m_int = m if isinstance(m, int) else (int(m) if m.is_integer() else None)
    m_frac = _fraction(m)
    message = f"must be a multiple of {_show(m)}"

    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        if type(inst) is int and m_int is not None:
            return None if inst % m_int == 0 else _Fail("multipleOf", message)
        if isinstance(inst, float) and not _finite(inst):
            return _Fail("multipleOf", message)
        return None if (_fraction(inst) / m_frac).denominator == 1 else _Fail("multipleOf", message)  # type: ignore[arg-type]

    return check


def _compile_pattern(raw: object, where: str) -> re.Pattern[str]:
    if not isinstance(raw, str):
        raise SchemaError(f"{where}: must be a string")
    if len(raw) > MAX_PATTERN_LENGTH:
        raise SchemaError(f"{where}: longer than {MAX_PATTERN_LENGTH} characters")
    try:
        return re.compile(_ecma_to_python(raw), re.ASCII)
    except (re.error, OverflowError, RecursionError) as e:
        raise SchemaError(f"{where}: invalid regular expression {_show(raw)}: {e}") from None


def _pattern_check(raw: object, where: str) -> _Check:
    rx = _compile_pattern(raw, where)
    search = rx.search
    message = f"does not match pattern {_show(raw)}"

    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        if len(inst) > MAX_PATTERN_INPUT:  # type: ignore[arg-type]
            return _Fail(
                "pattern", f"too long to check against a pattern (limit {MAX_PATTERN_INPUT} characters)"
            )
        return None if search(inst) is not None else _Fail("pattern", message)  # type: ignore[arg-type]

    return check


def _unique_check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
    items: list[object] = inst  # type: ignore[assignment]
    if len(items) < 2:
        return None
    seen: dict[object, int] = {}
    for i, v in enumerate(items):
        k = _instance_key(v, d + 1, ctx)
        if isinstance(k, _Fail):
            return k
        j = seen.setdefault(k, i)
        if j != i:
            return _Fail("uniqueItems", f"items {j} and {i} are equal")
    return None


def _prefix_check(prefix: tuple[_Check, ...]) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        ctx.budget -= len(prefix)
        if ctx.budget < 0:
            return _budget_fail()
        items: list[object] = inst  # type: ignore[assignment]
        d1 = d + 1
        for i, fn in enumerate(prefix[: len(items)]):
            if d1 > MAX_INSTANCE_DEPTH:
                return _too_deep(str(i))
            f = fn(items[i], d1, ctx)
            if f is not None:
                f.segments.append(str(i))
                return f
        return None

    return check


def _rest_check(fn: _Check, start: int, kw: str) -> _Check:
    if fn is _reject:

        def no_more(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
            if len(inst) > start:  # type: ignore[arg-type]
                f = _Fail(kw, f"must have at most {start} items")
                f.segments.append(str(start))
                return f
            return None

        return no_more

    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        items: list[object] = inst  # type: ignore[assignment]
        n = len(items)
        if n <= start:
            return None
        ctx.budget -= n - start
        if ctx.budget < 0:
            return _budget_fail()
        d1 = d + 1
        if d1 > MAX_INSTANCE_DEPTH:
            return _too_deep(str(start))
        for i in range(start, n):
            f = fn(items[i], d1, ctx)
            if f is not None:
                f.segments.append(str(i))
                return f
        return None

    return check


def _contains_check(fn: _Check, lo: int, hi: int | None) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        items: list[object] = inst  # type: ignore[assignment]
        ctx.budget -= len(items)
        if ctx.budget < 0:
            return _budget_fail()
        d1 = d + 1
        matched = 0
        for i, v in enumerate(items):
            if d1 > MAX_INSTANCE_DEPTH:
                return _too_deep(str(i))
            f = fn(v, d1, ctx)
            if f is None:
                matched += 1
            elif f.fatal:
                f.segments.append(str(i))
                return f
        if matched < lo:
            return _Fail(
                "contains" if lo == 1 else "minContains", f"must contain at least {lo} matching item(s)"
            )
        if hi is not None and matched > hi:
            return _Fail("maxContains", f"must contain at most {hi} matching item(s), got {matched}")
        return None

    return check


def _required_check(names: tuple[str, ...]) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        for name in names:
            if name not in inst:  # type: ignore[operator]
                missing = sum(1 for n in names if n not in inst)  # type: ignore[operator]
                more = f" (and {missing - 1} more)" if missing > 1 else ""
                return _Fail("required", f"missing required property {_show(name)}{more}")
        return None

    return check


def _properties_check(props: tuple[tuple[str, _Check], ...]) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        ctx.budget -= len(props)
        if ctx.budget < 0:
            return _budget_fail()
        get = inst.get  # type: ignore[attr-defined]
        d1 = d + 1
        for name, fn in props:
            v = get(name, _MISSING)
            if v is _MISSING:
                continue
            if d1 > MAX_INSTANCE_DEPTH:
                return _too_deep(name)
            f = fn(v, d1, ctx)
            if f is not None:
                f.segments.append(name)
                return f
        return None

    return check


def _no_extras_check(declared: frozenset[str]) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        for name in inst:  # type: ignore[attr-defined]
            if name not in declared:
                first = min(n for n in inst if n not in declared)  # type: ignore[attr-defined]
                f = _Fail("additionalProperties", f"unexpected property {_show(first)}")
                f.segments.append(first)
                return f
        return None

    return check


def _extras_check(
    declared: frozenset[str], patterns: tuple[tuple[re.Pattern[str], _Check], ...], additional: _Check | None
) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        obj: Mapping[str, object] = inst  # type: ignore[assignment]
        n = len(obj)
        if not n:
            return None
        ctx.budget -= n
        if ctx.budget < 0:
            return _budget_fail()
        d1 = d + 1
        for name in sorted(obj) if n > 1 else obj:
            matched = name in declared
            for rx, fn in patterns:
                if len(name) > MAX_PATTERN_INPUT:
                    f = _Fail("patternProperties", "property name too long to check against a pattern")
                    f.segments.append(name)
                    return f
                if rx.search(name) is None:
                    continue
                matched = True
                if d1 > MAX_INSTANCE_DEPTH:
                    return _too_deep(name)
                f = fn(obj[name], d1, ctx)
                if f is not None:
                    f.segments.append(name)
                    return f
            if matched or additional is None:
                continue
            if additional is _reject:
                f = _Fail("additionalProperties", f"unexpected property {_show(name)}")
            else:
                if d1 > MAX_INSTANCE_DEPTH:
                    return _too_deep(name)
                f = additional(obj[name], d1, ctx)  # type: ignore[assignment]
            if f is not None:
                f.segments.append(name)
                return f
        return None

    return check


def _property_names_check(fn: _Check) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        obj: Mapping[str, object] = inst  # type: ignore[assignment]
        ctx.budget -= len(obj)
        if ctx.budget < 0:
            return _budget_fail()
        for name in sorted(obj) if len(obj) > 1 else obj:
            f = fn(name, d + 1, ctx)
            if f is not None:
                if not f.fatal:
                    f = _Fail(
                        "propertyNames", _cap(f"property name {_show(name)}: {f.message}", _MAX_MESSAGE)
                    )
                f.segments.append(name)
                return f
        return None

    return check


def _dependent_required_check(deps: tuple[tuple[str, tuple[str, ...]], ...]) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        for name, needs in deps:
            if name in inst:  # type: ignore[operator]
                for need in needs:
                    if need not in inst:  # type: ignore[operator]
                        return _Fail(
                            "dependentRequired", f"property {_show(name)} requires property {_show(need)}"
                        )
        return None

    return check


def _dependent_schemas_check(deps: tuple[tuple[str, _Check], ...]) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        ctx.budget -= len(deps)
        if ctx.budget < 0:
            return _budget_fail()
        for name, fn in deps:
            if name in inst:  # type: ignore[operator]
                f = fn(inst, d, ctx)
                if f is not None:
                    return f
        return None

    return check


def _all_of_check(branches: tuple[_Check, ...]) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        ctx.budget -= len(branches)
        if ctx.budget < 0:
            return _budget_fail()
        for fn in branches:
            f = fn(inst, d, ctx)
            if f is not None:
                return f
        return None

    return check


def _any_of_check(branches: tuple[_Check, ...]) -> _Check:
    n = len(branches)

    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        ctx.budget -= n
        if ctx.budget < 0:
            return _budget_fail()
        first: _Fail | None = None
        for fn in branches:
            f = fn(inst, d, ctx)
            if f is None:
                return None
            if f.fatal:
                return f
            if first is None:
                first = f
        assert first is not None
        detail = "" if n == 1 else f"none of the {n} alternatives match; first: "
        return _Fail("anyOf", _cap(detail + _describe(first), _MAX_MESSAGE))

    return check


def _one_of_check(branches: tuple[_Check, ...]) -> _Check:
    n = len(branches)

    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        ctx.budget -= n
        if ctx.budget < 0:
            return _budget_fail()
        matched: list[int] = []
        first: _Fail | None = None
        for i, fn in enumerate(branches):
            f = fn(inst, d, ctx)
            if f is None:
                matched.append(i)
                if len(matched) > 1:
                    return _Fail("oneOf", f"must match exactly one alternative, matches {matched[0]} and {i}")
            elif f.fatal:
                return f
            elif first is None:
                first = f
        if matched:
            return None
        assert first is not None
        return _Fail(
            "oneOf", _cap(f"none of the {n} alternatives match; first: {_describe(first)}", _MAX_MESSAGE)
        )

    return check


def _not_check(fn: _Check) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        ctx.budget -= 1
        if ctx.budget < 0:
            return _budget_fail()
        f = fn(inst, d, ctx)
        if f is None:
            return _Fail("not", "must not match the schema in 'not'")
        return f if f.fatal else None

    return check


def _if_check(cond: _Check, then: _Check | None, other: _Check | None) -> _Check:
    def check(inst: object, d: int, ctx: _Ctx) -> _Fail | None:
        ctx.budget -= 1
        if ctx.budget < 0:
            return _budget_fail()
        f = cond(inst, d, ctx)
        if f is None:
            return then(inst, d, ctx) if then is not None else None
        if f.fatal:
            return f
        return other(inst, d, ctx) if other is not None else None

    return check


# --- public API ----------------------------------------------------------------------------------


class Validator:
    """A compiled schema. Stateless and reusable; `validate` allocates only a budget counter."""

    __slots__ = ("_check", "_work")

    def __init__(self, check: _Check, work: int = WORK_BUDGET) -> None:
        self._check = check
        self._work = work

    def validate(self, instance: object) -> ValidationFailure | None:
        try:
            f = self._check(instance, 0, _Ctx(self._work))
        except RecursionError:
            # Long chains of $ref between definitions can outgrow the stack before the budget runs out.
            return ValidationFailure("", "budget", "arguments too complex to validate")
        if f is None:
            return None
        return ValidationFailure(_pointer(f.segments), f.keyword, _cap(f.message, _MAX_MESSAGE))


def compile_schema(schema: object, *, work_budget: int = WORK_BUDGET) -> Validator:
    """Compile once per tool (per `tools/list` answer); raise SchemaError if it cannot be enforced."""
    try:
        return Validator(_Compiler(schema).build(), work_budget)
    except RecursionError:
        raise SchemaError("schema too deeply nested") from None


_NO_ARGUMENTS: Mapping[str, object] = {}


def validate_arguments(validator: Validator | None, arguments: object) -> ValidationFailure | None:
    """MCP `tools/call` semantics: absent (or null) `arguments` means `{}`; anything else must be an object.

    `validator` None = the tool's schema did not compile: only the object shape is enforced.
    """
    if arguments is None:
        arguments = _NO_ARGUMENTS
    elif not isinstance(arguments, Mapping):
        return ValidationFailure("", "type", f"arguments must be an object, got {_got(arguments)}")
    if validator is None:
        return None
    return validator.validate(arguments)
