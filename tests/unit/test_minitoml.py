"""minitoml must return exactly tomllib's result, or None ("ask tomllib"), and never raise.

The early launch trusts its answer to start processes before the real config is read, so the
tests check it against tomllib itself: on the repository's own TOML, on hand-written documents
both ways (every invalid one is shown to be rejected by tomllib too), and on a few thousand
generated and mutated documents.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10 (the guard keeps vermin's 3.10 check green)
    import tomli as tomllib

from sentinel_gw.minitoml import loads

ROOT = Path(__file__).resolve().parents[2]


def _typed(value: Any) -> Any:
    """A comparable form that tells bool from int from float and keeps the key order."""
    if isinstance(value, dict):
        return ("dict", [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, value)


def _reference(doc: str) -> dict[str, Any] | None:
    """tomllib's result, None when it rejects the document.

    Besides TOMLDecodeError, tomllib raises ValueError for an integer over 4300 digits and
    RecursionError for deep nesting: all are rejections.
    """
    try:
        return tomllib.loads(doc)
    except (ValueError, RecursionError):
        return None


def _agrees(doc: str) -> tuple[bool, bool]:
    """Assert the contract on one document; return (tomllib accepts, minitoml answers)."""
    want = _reference(doc)
    got = loads(doc)
    if got is not None:
        assert want is not None, f"tomllib rejects, minitoml accepts: {doc!r}"
        assert _typed(got) == _typed(want), f"results differ: {doc!r}"
    return want is not None, got is not None


def _exact(doc: str) -> dict[str, Any]:
    got = loads(doc)
    assert got is not None, f"minitoml said None: {doc!r}"
    assert _typed(got) == _typed(tomllib.loads(doc))
    return got


# -- the repository's own TOML ------------------------------------------------------------


def test_example_config() -> None:
    got = _exact((ROOT / "sentinel.toml.example").read_text(encoding="utf-8"))
    assert got["backends"][0]["name"] == "demo"


def test_repository_toml_files() -> None:
    skip = {"build", "dist", "node_modules"}  # build output; dot-directories (.git, .venv) too
    paths = [
        p
        for p in ROOT.rglob("*.toml")
        if not any(part.startswith(".") or part in skip for part in p.relative_to(ROOT).parts)
    ]
    assert ROOT / "pyproject.toml" in paths
    for path in paths:
        _exact(path.read_text(encoding="utf-8"))  # pyproject.toml included: it is in the subset


def test_documentation_toml_blocks() -> None:
    # Every ```toml block of README.md and docs/*.md (today three in README.md, all inside the
    # subset; none falls outside it). A block may be a fragment: None-or-equal for each.
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        blocks += re.findall(r"^```toml\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert blocks
    answered = 0
    for block in blocks:
        answered += _agrees(block)[1]
    assert answered * 2 > len(blocks)


GATEWAY = """\
# A team gateway: three backends behind JWT auth.
[gateway]
name = "team-gw"
log_level = "info"
max_message_bytes = 4_194_304
shutdown_grace_secs = 5.0

[auth]
mode = "jwt"
algorithms = ["HS256", "HS384"]
secret_env = "SENTINEL_JWT_SECRET"
issuer = "sentinel-gw"
leeway_secs = 30.0
anonymous_roles = []

[rbac.roles.admin]
permissions = ["*"]

[rbac.roles.developer]
inherits = ["viewer"]
permissions = [
  "tools.call",      # run tools
  "resources.read",
  "prompts.get",
]
deny_tools = ["*delete*", 'fs:write_*']

[rbac.roles.viewer]
permissions = ["tools.list", "resources.list", "prompts.list"]

[rate_limits]
algorithm = "token_bucket"
default = { requests = 100, window_secs = 60 }
subject = { requests = 600, window_secs = 60.0, burst = 0 }

[rate_limits.tools.fs_write_file]
requests = 10
window_secs = 60.0

[kill_switch]
tools = []
backends = ["legacy-*"]

[audit]
sinks = ["sqlite", "jsonl"]
args = "redacted"
tool_args = { fs_write_file = "shape", "github:create_issue" = "full" }
jsonl_path = "-"
queue_size = 10_000
flush_interval_secs = 0.2

[[backends]]
name = "files"
type = "stdio"
command = "npx"
args = [
  "-y",
  "@modelcontextprotocol/server-filesystem",  # pinned in package.json
  "/srv/data",
]
env = { NODE_ENV = "production", LANG = "C.UTF-8" }
env_from = { API_KEY = "FILES_API_KEY" }
inherit_env = ["HTTP_PROXY", "HTTPS_PROXY"]
cwd = "/srv"
prefix = "fs"
enabled = true
timeout_secs = 60

[backends.breaker]
failure_threshold = 5

[[backends]]
name = "github"
command = "/opt/mcp/github-server"
args = ["--read-only", "--toolsets=repos,issues"]
env = {}
env_from = { GITHUB_TOKEN = "GH_TOKEN" }
inherit_env = []
cwd = ""
prefix = "gh"
enabled = false

[[backends]]
name = "py-tools"
command = "python3"
args = ['-m', 'tools.server', "--log=C:\\\\logs\\\\tools.log"]  # a Windows path, escaped
env = { PYTHONUNBUFFERED = "1", "GREETING" = "h\\u00e9llo w\u00f6rld" }
tool_timeouts = { build = 900.0, "deploy.prod" = 1_800.0 }
"""


def test_gateway_config() -> None:
    got = _exact(GATEWAY)
    assert got["rate_limits"]["default"] == {"requests": 100, "window_secs": 60}
    assert [b["name"] for b in got["backends"]] == ["files", "github", "py-tools"]
    assert got["backends"][0]["args"][-1] == "/srv/data"
    assert got["backends"][2]["args"][2] == "--log=C:\\logs\\tools.log"
    assert got["backends"][2]["env"]["GREETING"] == "héllo wörld"
    _exact(GATEWAY.replace("\n", "\r\n"))


# -- hand-written documents ---------------------------------------------------------------

VALID = [
    "",
    " \t\n\n",
    "# only a comment",
    "#\na = 1\n#\n#x\nb = 2\n  #\n[c]",
    "a = 1",  # no final newline
    'a = "\\b\\t\\n\\f\\r\\"\\\\ \\u00e9 \\U0001F600 \\u0000"',
    'a = "x\ty"  # a raw tab in a string\tand in a comment',
    "'lit' = 'C:\\Users\\x\\e \"quoted\"'",
    '"a.b" = 1\n\'c d\' = 2\n"" = 3\n"\\u0064" = 4',
    'a.b.c = 1\na.b.d = 2\na . "x y" . z = 3\n\'q\'."r" = 4',
    "true = true\nfalse = false\n1 = 2\n-_- = 3\n0123 = 4",
    'a = [[1, 2], ["x", [true]], [], [{}], [[[]]]]',
    'a = [1, "x", 2.5, true, [], {}, { b = 1 }]',
    "a = []\nb = {}\n[c]\n[d.e]\n[f]",
    "a = [ ]\nb = { }\nc = [\n]\nd=[1,]",
    'a = 1\r\n[b]\r\nc = "x" # comment\r\nd = [\r\n  1,\r\n]\r\n',
    "# top\n[a] # header\nb = [ # open\n  1, # one\n  # alone\n\n  2, # trailing\n] # after\n# end",
    "\t a\t=\t1 \t\n [ t . u ] \n\tv=2\n [[ arr ]]\t\n [[ arr ]] # again\n",
    'a = "x"#no space\nb=[1]#\nc={}#',
    'name = "café ☕"\n\'lit\' = \'naïve\'\n# ünïcödé comment ✓\n"ключ" = "значение"',
    "[a.b]\nx = 1\n[a]\ny = 2",
    "[a.b.c]\n[a.b]\n[a]",
    "[[a]]\nx = 1\n[[a.b]]\ny = 2\n[[a.b]]\n[[a]]\n[[a.b]]",
    "[[a]]\n[a.c]\nz = 1\n[[a]]\n[a.c]\nz = 2",
    "[[a]]\nb.c = 1\n[[a]]\nb.c = 2",
    "[[a.b]]\n[a]\nc = 1",
    "[a]\nb.c = 1\nb.d = 2\n[a.b.e]\nf = 3",
    'a = { b = 1, c = { d = "x" }, e.f = [1, 2], e.g = {} }',
    "a = [ { x = 1 }, { x = 2, y = [{ z = 3 }] } ]",
    "a = { b = [\n  1, # inside an inline table, an array may span lines\n  2\n] }",
    "a = [0, -0, +0, 1_000, -17, +99, 9_223_372_036_854_775_808]",
    "a = [3.14, -0.01, 5e+22, 1e06, -2E-2, 6.626e-34, 224_617.445_991, 0.0, +1.5, 1e1_0, 1e400]",
    'a = {"x.y" = 1, \'z\' = 2, "" = 3}',
    "[\"quoted header\".'and literal']\nk = 1",
]

INVALID = [
    "a = 1\na = 2",  # duplicate key
    'a = 1\n"a" = 2',  # the same key, quoted
    '"\\u0061" = 1\na = 2',  # the same key, escaped
    "[a]\n[a]",  # table declared twice
    "[a]\nb = 1\n[a.b]",  # a table over a value
    "a = 1\n[a]",
    "a = {}\n[a.b]",  # an inline table is closed
    "a = { b = 1 }\na.c = 2",
    "a = { b = {} }\n[a.b.c]",
    "a = []\n[[a]]",  # a static array is not an array of tables
    "x = [{ a = 1 }]\n[[x]]",
    "[[a]]\n[a]",
    "[a]\n[[a]]",
    "[[a]]\nb = 1\n[a.b]",
    "a.b = 1\n[a]",  # a dotted-key table cannot be declared afterwards
    "[a.b]\nc = 1\n[a]\nb.d = 2",  # ... nor a declared table extended by a dotted key
    "a.b = 1\na = 2",
    "a = 1\na.b = 2",
    'a = "\\ud800"',  # bad escapes
    'a = "\\U00110000"',
    'a = "\\u00g0"',
    'a = "\\u12"',
    'a = "\\ "',
    'a = "abc',  # unterminated strings
    "a = 'abc",
    'a = "\\"',
    'a = "x\ny"',
    "a = 'x\ny'",
    'a = "x\x01y"',  # control characters
    "a = 1 # \x00",
    "a = 1 # \x7f",
    "a = 'x\x1fy'",
    "a = 1\rb = 2",  # a lone CR
    "a = 1\r",
    "a = 01",  # numbers
    "a = 00",
    "a = 0_1",
    "a = 1__0",
    "a = _1",
    "a = 1_",
    "a = 1.",
    "a = .5",
    "a = 1.e5",
    "a = 1e",
    "a = 1e_5",
    "a = +-1",
    "a = 1.5.3",
    "a = 1 2",  # trailing garbage
    "a = true1",
    "a = tru",
    "a = True",
    "a =",  # missing value
    "a = \nb = 1",
    'key = "a" "b"',
    "a = { b = 1, b = 2 }",
    "a = { b = {}, b.c = 1 }",
    "a = { b.c = 1, b = 2 }",
    "a = { b = [1], b.c = 2 }",
    "a = [1,,2]",
    "a = [,]",
    "a = [1 2]",
    "a = [1",
    "[a",
    "[a]]",
    "[[a]",
    "[[a] ]",
    "[ [a]]",
    "[]",
    "[a.]",
    "[.a]",
    "a..b = 1",
    "= 1",
    "a b = 1",
    "é = 1",  # non-ASCII bare key
    "\ufeffa = 1",  # a byte-order mark
    "a = 1 b = 2",
    "[a] b = 1",
    '"""a""" = 1',
    "a = [1] ]",
]

# Valid TOML on purpose outside the subset: minitoml says None and tomllib answers.
OUTSIDE = [
    'a = """multi\nline"""',
    'a = """one line"""',
    "a = '''literal'''",
    "a = 1979-05-27",
    "a = 1979-05-27T07:32:00Z",
    "a = 1979-05-27 07:32:00",
    "a = 07:32:00",
    "a = 0x1F",
    "a = 0o17",
    "a = 0b101",
    "a = inf",
    "a = -nan",
    "a = [1, inf]",
    "a = " + "[" * 40 + "]" * 40,
    "a = " + "1" * 100,
]


@pytest.mark.parametrize("doc", VALID)
def test_valid(doc: str) -> None:
    _exact(doc)


@pytest.mark.parametrize("doc", INVALID)
def test_invalid(doc: str) -> None:
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(doc)
    assert loads(doc) is None


# Invalid in TOML 1.0 (tomllib up to 3.14), valid in TOML 1.1 (tomli >= 2.3, the reference on
# Python 3.10): outside the subset either way.
TOML_1_1 = [
    'a = "\\e"',
    'a = "\\x41"',
    "a = { b = 1,\n c = 2 }",  # a newline inside an inline table
    "a = {\n}",
    "a = { b = 1\n}",
    "a = { b = 1\n, c = 2 }",
    "a = { b = 1, }",  # a trailing comma in an inline table
]


@pytest.mark.parametrize("doc", TOML_1_1)
def test_toml_1_1_is_left_to_tomllib(doc: str) -> None:
    assert loads(doc) is None


@pytest.mark.parametrize("doc", OUTSIDE)
def test_outside_subset(doc: str) -> None:
    tomllib.loads(doc)
    assert loads(doc) is None


def test_never_raises() -> None:
    deep = "a = " + "[" * 5000 + "]" * 5000
    assert loads(deep) is None  # tomllib: RecursionError
    assert loads("a = " + "{b = " * 5000 + "1" + "}" * 5000) is None
    assert loads("a = " + "1" * 5000) is None  # tomllib: ValueError (int digits limit)
    assert loads(".".join(["a"] * 5000) + " = 1") is None
    assert loads("[" + "a." * 5000 + "a]") is None
    for doc in ["[", "[[", "a", "a.", '"', "'", "a = [", "a = {", 'a = "\\', "a = 1e", "{", "[a] x"]:
        assert loads(doc) is None


# -- differential fuzzing -----------------------------------------------------------------

KEYS = ["a", "b", "c", "d", "x1", "_", "-", "1", "true", '"a"', "'b'", '"a.b"', '""', '"é t"', '"\\u0063"']
HEADER_KEYS = ["t", "u", "a", '"t"', "v"]
ODD_KEYS = ["a b", "é", "a..b", ".a", "a.", '"a', "'''a'''", '"\\e"', "[a]", "a=b", "a\tb"]
GOOD = [
    "1",
    "0",
    "-17",
    "+3",
    "1_000",
    "3.5",
    "-0.0",
    "1e3",
    "2E-2",
    "6.02e+23",
    "1_0.2_5",
    "true",
    "false",
    '"x"',
    '""',
    '"a\\tb"',
    '"\\u00e9\\U0001F600"',
    '"café"',
    "'lit\\eral'",
    "''",
    '"q\\"q"',
    '"\\\\"',
]
OUTSIDE_VALUES = [
    '"""ml"""',
    '"""\nml\n"""',
    "'''ml'''",
    "1979-05-27",
    "1979-05-27T07:32:00Z",
    "1979-05-27 07:32:00",
    "07:32:00",
    "0x1F",
    "0o17",
    "0b101",
    "inf",
    "-inf",
    "nan",
]
BAD_VALUES = [
    "01",
    "1__0",
    "_1",
    "1_",
    "1.",
    ".5",
    "1e",
    "+-1",
    "tru",
    '"\\e"',
    '"\\x41"',
    '"\\ud800"',
    '"abc',
    "'abc",
    '"a" "b"',
    "1 2",
    "",
    '"\\u12"',
    "1.e3",
    "True",
    "0x",
    "1979-13-01",
    '"tab\x01"',
]


def _key(r: random.Random, pool: list[str]) -> str:
    if r.random() < 0.02:
        return r.choice(ODD_KEYS)
    parts = [r.choice(pool) for _ in range(r.choice((1, 1, 1, 2, 3)))]
    return r.choice([".", ".", " . ", ". ", "\t.\t"]).join(parts)


def _value(r: random.Random, depth: int = 0) -> str:
    x = r.random()
    if depth < 3 and x < 0.12:
        items = [_value(r, depth + 1) for _ in range(r.randint(0, 3))]
        sep = r.choice([", ", ",", " ,\n  ", ",\n  # c\n  ", ",\r\n"])
        body = sep.join(items) + (r.choice([",", ", ", ",\n"]) if items and r.random() < 0.3 else "")
        return "[" + r.choice(["", " ", "\n  ", " # c\n  "]) + body + r.choice(["", " ", "\n"]) + "]"
    if depth < 3 and x < 0.2:
        pairs = [f"{_key(r, KEYS)} = {_value(r, depth + 1)}" for _ in range(r.randint(0, 3))]
        sep = ", " if r.random() < 0.95 else r.choice([",\n", "\n", ",,", " "])
        tail = "," if pairs and r.random() < 0.03 else ""
        pad = r.choice(["", " "])
        return "{" + pad + sep.join(pairs) + tail + pad + "}"
    y = r.random()
    if y < 0.03:
        return r.choice(OUTSIDE_VALUES)
    if y < 0.05:
        return r.choice(BAD_VALUES)
    return r.choice(GOOD)


def _document(r: random.Random) -> str:
    lines = []
    for _ in range(r.randint(1, 8)):
        x = r.random()
        indent = r.choice(["", "", "", " ", "\t"])
        comment = r.choice(["", "", "", " # note", "#", " #é"])
        if x < 0.55:
            eq = r.choice(["=", " = ", " = ", " =\t", "= "])
            lines.append(f"{indent}{_key(r, KEYS)}{eq}{_value(r)}{comment}")
        elif x < 0.7:
            lines.append(
                f"{indent}[{r.choice(['', ' '])}{_key(r, HEADER_KEYS)}{r.choice(['', ' '])}]{comment}"
            )
        elif x < 0.82:
            lines.append(f"{indent}[[{r.choice(['', ' '])}{_key(r, HEADER_KEYS)}]]{comment}")
        elif x < 0.92:
            lines.append(f"{indent}# a comment")
        else:
            lines.append(indent)
    newline = r.choice(["\n"] * 16 + ["\r\n"] * 3 + ["\r"])
    return newline.join(lines) + r.choice(["", "\n", newline])


MUTATION_CHARS = "[]{}=,.\"'#\n\\ab1 \t"


def _mutate(r: random.Random, doc: str) -> str:
    for _ in range(r.randint(1, 2)):
        op = r.random()
        i = r.randint(0, len(doc))
        if op < 0.25 and doc:
            doc = doc[:i] + doc[i + 1 :]  # delete
        elif op < 0.5:
            doc = doc[:i] + r.choice(MUTATION_CHARS) + doc[i:]  # insert
        elif op < 0.65 and doc:
            doc = doc[:i] + doc[i : i + 1] + doc[i:]  # duplicate a character
        else:
            lines = doc.split("\n")
            j, k = r.randrange(len(lines)), r.randrange(len(lines))
            if op < 0.8:
                lines.insert(j, lines[k])  # duplicate a line
            else:
                lines[j], lines[k] = lines[k], lines[j]  # swap two lines
            doc = "\n".join(lines)
    return doc


def test_differential_fuzz() -> None:
    r = random.Random(20240611)
    valid = answered = 0
    seeds: list[str] = [GATEWAY, *VALID]
    for _ in range(4000):
        doc = _document(r)
        ok, got = _agrees(doc)
        valid += ok
        answered += got
        if ok and len(seeds) < 400:
            seeds.append(doc)
    # The grammar must give valid documents, and most of them inside the subset, or the test
    # would pass with a reader that always says None.
    assert valid > 1000, valid
    assert answered > 0.3 * valid, (answered, valid)
    for _ in range(3000):
        _agrees(_mutate(r, r.choice(seeds)))


# -- no imports ---------------------------------------------------------------------------


def test_imports_nothing() -> None:
    code = (
        "import sys; before = set(sys.modules); import sentinel_gw.minitoml; "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['sentinel_gw', 'sentinel_gw.minitoml']"
