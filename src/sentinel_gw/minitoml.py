"""An import-free reader for the common subset of TOML, used before the first fork.

`sentinel-gw serve` forks its stdio backends as soon as the interpreter starts, so they boot
while the gateway does. Reading the config with tomllib first would cost ~13 ms of imports
(typing, re, datetime, string, functools) before that fork; this module imports nothing at run
time and reads a typical config in a fraction of a millisecond.

Contract: `loads(text)` returns exactly what `tomllib.loads(text)` returns (same keys, same value
types, same nesting) or None, and never raises. None means "ask tomllib": the document is
invalid, or it uses something outside the subset: multi-line strings, dates and times,
hex/octal/binary integers, inf/nan, nesting of arrays/inline tables/dotted keys deeper than 32,
bare keys over 255 characters, numbers over 63 characters. The result only picks which
processes start early and the validated config has the last word, but a wrong answer would
still start a wrong process, so in doubt the answer is None.

The parser follows tomllib's `_parser.py` statement by statement, including its bookkeeping of
explicitly declared and frozen (inline) namespaces, so that what it accepts is exactly what
tomllib accepts. Every rejection raises `_No` (or an IndexError at the end of a truncated text,
a ValueError from int/float), and `loads` turns any exception into None.
"""

# No `from __future__ import annotations`: that statement imports the __future__ module at run
# time. Annotations naming typing's Any are quoted instead, and typing is imported only by type
# checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Flags = dict[str, list[Any]]  # namespace nodes, see _EXPLICIT below

Key = tuple[str, ...]  # a builtin alias: costs no import

_MAX_DEPTH = 32
_WS = " \t"
# Character sets as strings, for str.lstrip: it measures a run of them in C.
_BARE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_KEY_START = frozenset(_BARE + "\"'")
_NUM = "0123456789_+-.eE"
_HEX = "0123456789abcdefABCDEF"
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}
# tomllib rejects these raw characters everywhere (in strings, in comments and elsewhere; only
# tab and LF are allowed): one pass over the whole text spares a scan of every string/comment.
_CTRL = (*(chr(i) for i in range(32) if i not in (9, 10)), "\x7f")
# Flag slots of a namespace node [explicit, frozen, children], as tomllib's Flags: EXPLICIT is
# never recursive there (the exact key was declared), FROZEN always is (an inline array/table).
_EXPLICIT, _FROZEN = 0, 1


class _No(Exception):
    """Invalid TOML or outside the subset: the caller asks tomllib."""


def loads(text: str) -> "dict[str, Any] | None":
    """tomllib.loads(text), or None when the text is invalid or outside the subset."""
    if not isinstance(text, str):
        return None
    src = text.replace("\r\n", "\n")  # as tomllib does; a lone CR is then a control character
    for c in _CTRL:
        if c in src:
            return None
    try:
        # The trailing LF ends the last line like end of text does, so scans stop at it.
        return _document(src + "\n")
    except Exception:  # _No, or an index past the end of a truncated document: ask tomllib
        return None


def _document(src: str) -> "dict[str, Any]":
    root: dict[str, Any] = {}
    flags: Flags = {}
    pending: list[Key] = []  # dotted-key tables, explicit from the next header on (tomllib)
    header: Key = ()
    table = root  # the table of the current header
    pos, end = 0, len(src)
    while pos < end:
        c = src[pos]
        while c in _WS:
            pos += 1
            c = src[pos]
        if c == "\n":
            pos += 1
            continue
        if c == "#":
            pos = src.index("\n", pos) + 1
            continue
        if c in _KEY_START:
            pos, key, value = _pair(src, pos, 0)
            # Short cut for an undotted key: the header rules made sure that its table
            # exists and is not frozen, and no key/value pair can change that.
            nest = table
            if len(key) > 1:
                for i in range(1, len(key)):
                    # A dotted key may not reopen a declared table, nor be reopened later.
                    sub = header + key[:i]
                    if _explicit(flags, sub):
                        raise _No
                    pending.append(sub)
                parent = header + key[:-1]
                if _frozen(flags, parent):
                    raise _No
                nest = _nest(root, parent)
            if key[-1] in nest:
                raise _No
            if isinstance(value, (dict, list)):
                _mark(flags, header + key, _FROZEN)
            nest[key[-1]] = value
        elif c == "[":
            for sub in pending:
                _mark(flags, sub, _EXPLICIT)
            pending.clear()
            if src[pos + 1] == "[":
                pos, header = _key(src, _skip_ws(src, pos + 2))
                if _frozen(flags, header):
                    raise _No
                # A new element: its sub-tables may be declared again, the array itself not.
                _unset_all(flags, header)
                _mark(flags, header, _EXPLICIT)
                parent = _nest(root, header[:-1])
                array = parent.get(header[-1])
                table = {}
                if array is None:
                    parent[header[-1]] = [table]
                elif isinstance(array, list):
                    array.append(table)
                else:
                    raise _No
                if not src.startswith("]]", pos):
                    raise _No
                pos += 2
            else:
                pos, header = _key(src, _skip_ws(src, pos + 1))
                if _explicit(flags, header) or _frozen(flags, header):
                    raise _No
                _mark(flags, header, _EXPLICIT)
                table = _nest(root, header)
                if src[pos] != "]":
                    raise _No
                pos += 1
        else:
            raise _No
        while src[pos] in _WS:
            pos += 1
        if src[pos] == "#":
            pos = src.index("\n", pos)
        if src[pos] != "\n":
            raise _No
        pos += 1
    return root


def _frozen(flags: "Flags", key: Key) -> bool:
    for k in key:
        node = flags.get(k)
        if node is None:
            return False
        if node[_FROZEN]:
            return True
        flags = node[2]
    return False


def _explicit(flags: "Flags", key: Key) -> bool:
    node = None
    for k in key:
        node = flags.get(k)
        if node is None:
            return False
        flags = node[2]
    return node is not None and node[_EXPLICIT]


def _mark(flags: "Flags", key: Key, slot: int) -> None:
    node: list[Any] = []
    for k in key:
        node = flags.get(k)
        if node is None:
            node = flags[k] = [False, False, {}]
        flags = node[2]
    node[slot] = True


def _unset_all(flags: "Flags", key: Key) -> None:
    for k in key[:-1]:
        node = flags.get(k)
        if node is None:
            return
        flags = node[2]
    flags.pop(key[-1], None)


def _nest(cont: "dict[str, Any]", key: Key, lists: bool = True) -> "dict[str, Any]":
    """The table at key, created if missing; through arrays of tables, their last element."""
    for k in key:
        sub = cont.get(k)
        if sub is None:
            sub = cont[k] = {}
        elif lists and isinstance(sub, list):
            sub = sub[-1]
        if not isinstance(sub, dict):
            raise _No
        cont = sub
    return cont


def _skip_ws(src: str, pos: int) -> int:
    while src[pos] in _WS:
        pos += 1
    return pos


def _skip_array_ws(src: str, pos: int) -> int:
    """Spaces, newlines and comments, which arrays allow between their items."""
    while True:
        c = src[pos]
        if c in " \t\n":
            pos += 1
        elif c == "#":
            pos = src.index("\n", pos)
        else:
            return pos


def _key(src: str, pos: int) -> tuple[int, Key]:
    key: Key = ()
    while True:
        c = src[pos]
        if c == '"':
            pos, part = _basic(src, pos + 1)
        elif c == "'":
            pos, part = _literal(src, pos + 1)
        else:
            chunk = src[pos : pos + 256]
            size = len(chunk) - len(chunk.lstrip(_BARE))
            if not 0 < size < 256:  # not a key, or one too long to bother
                raise _No
            part = chunk[:size]
            pos += size
        key += (part,)
        while src[pos] in _WS:
            pos += 1
        if src[pos] != ".":
            return pos, key
        if len(key) >= _MAX_DEPTH:
            raise _No
        pos = _skip_ws(src, pos + 1)


def _pair(src: str, pos: int, depth: int) -> "tuple[int, Key, Any]":
    pos, key = _key(src, pos)
    if src[pos] != "=":
        raise _No
    pos += 1
    while src[pos] in _WS:
        pos += 1
    pos, value = _value(src, pos, depth)
    return pos, key, value


def _basic(src: str, pos: int) -> tuple[int, str]:
    """A one-line basic string from just after its opening quote."""
    quote = src.find('"', pos)
    out = src[pos:quote]
    if quote > 0 and "\\" not in out and "\n" not in out:  # the common case, no escapes
        return quote + 1, out
    eol = src.index("\n", pos)
    out = ""
    while True:
        quote = src.find('"', pos, eol)
        if quote < 0:
            raise _No
        bs = src.find("\\", pos, quote)
        if bs < 0:
            return quote + 1, out + src[pos:quote]
        out += src[pos:bs]
        c = src[bs + 1]
        if c in "uU":
            pos = bs + (6 if c == "u" else 10)
            digits = src[bs + 2 : pos]
            # Checked by hand: int(_, 16) would also take "+", "_" and spaces.
            if len(digits) != pos - bs - 2 or digits.strip(_HEX):
                raise _No
            code = int(digits, 16)
            if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:  # not a Unicode scalar value
                raise _No
            out += chr(code)
        else:
            char = _ESCAPES.get(c)
            if char is None:  # \e, \x, \', a backslash before a space...: invalid
                raise _No
            out += char
            pos = bs + 2


def _literal(src: str, pos: int) -> tuple[int, str]:
    quote = src.find("'", pos, src.index("\n", pos))
    if quote < 0:
        raise _No
    return quote + 1, src[pos:quote]


def _value(src: str, pos: int, depth: int) -> "tuple[int, Any]":
    c = src[pos]
    if c == '"':
        if src.startswith('"""', pos):
            raise _No
        return _basic(src, pos + 1)
    if c == "'":
        if src.startswith("'''", pos):
            raise _No
        return _literal(src, pos + 1)
    if c == "t" and src.startswith("true", pos):
        return pos + 4, True
    if c == "f" and src.startswith("false", pos):
        return pos + 5, False
    if c in "[{":
        if depth >= _MAX_DEPTH:
            raise _No
        return (_array if c == "[" else _inline)(src, pos + 1, depth + 1)
    if c in "+-0123456789":
        chunk = src[pos : pos + 64]  # a longer number is surely beyond the subset
        token = chunk[: len(chunk) - len(chunk.lstrip(_NUM))]
        return pos + len(token), _number(token)
    raise _No  # inf, nan, or nothing valid


def _array(src: str, pos: int, depth: int) -> "tuple[int, list[Any]]":
    out: list[Any] = []
    pos = _skip_array_ws(src, pos)
    if src[pos] == "]":
        return pos + 1, out
    while True:
        pos, value = _value(src, pos, depth)
        out.append(value)
        pos = _skip_array_ws(src, pos)
        if src[pos] == "]":
            return pos + 1, out
        if src[pos] != ",":
            raise _No
        pos = _skip_array_ws(src, pos + 1)
        if src[pos] == "]":
            return pos + 1, out


def _inline(src: str, pos: int, depth: int) -> "tuple[int, dict[str, Any]]":
    out: dict[str, Any] = {}
    frozen: set[Key] = set()  # keys holding an array or inline table: closed to dotted keys
    pos = _skip_ws(src, pos)
    if src[pos] == "}":
        return pos + 1, out
    while True:
        pos, key, value = _pair(src, pos, depth)
        if any(key[:i] in frozen for i in range(1, len(key) + 1)):
            raise _No
        nest = _nest(out, key[:-1], lists=False)
        if key[-1] in nest:
            raise _No
        nest[key[-1]] = value
        pos = _skip_ws(src, pos)
        if src[pos] == "}":
            return pos + 1, out
        if src[pos] != ",":  # also a newline: inline tables are one line (arrays in them not)
            raise _No
        if isinstance(value, (dict, list)):
            frozen.add(key)
        pos = _skip_ws(src, pos + 1)


def _digits(s: str) -> bool:
    """Digits with single underscores between them (the characters are already 0-9 _ + - . e E)."""
    return s[:1] != "_" and s[-1:] != "_" and "__" not in s and s.replace("_", "").isdigit()


def _number(tok: str) -> int | float:
    """A decimal integer or float, checked against tomllib's number grammar."""
    if tok.isdigit():  # the common case (only ASCII digits can be here)
        if tok[0] == "0" and len(tok) > 1:
            raise _No
        return int(tok)
    body = tok[1:] if tok[0] in "+-" else tok
    mantissa, e, exponent = body.replace("E", "e").partition("e")
    whole, dot, fraction = mantissa.partition(".")
    if not _digits(whole) or (whole[0] == "0" and len(whole) > 1):
        raise _No
    if dot and not _digits(fraction):
        raise _No
    if e and not _digits(exponent[1:] if exponent[:1] in ("+", "-") else exponent):
        raise _No
    # Python's int() and float() read exactly this syntax, underscores included, as tomllib
    # does with the same text (int() refuses over 4300 digits: tomllib raises, we say None).
    return float(tok) if dot or e else int(tok)
