"""Every command in docs/*.md runs, as written, in a sandbox (or is covered by a named test).

A fenced `sh` block preceded by `<!-- test: run -->` (optionally `host=NAME`) is executed with
bash -euo pipefail; `<!-- test: covered by tests/...py::test_name -->` names the test that runs
it instead; `<!-- test: script -->` marks a block that only runs scripts of `scripts/` that are
too slow for the suite (the script is its own check; it must exist); an unmarked `sh` block fails
this test. Each host is a private HOME; `dev` works in a sandbox copy of the checkout (symlinks).
Stand-ins: `scp`/`ssh` copy and run on the named host's HOME; `sudo` runs its command as the test
user (dropping `-u USER` and other options, after checking that USER exists); `useradd` records an
account and `chown` checks that the owners it is given exist, changing nothing; `/opt/`,
`/etc/sentinel-gw`, `/var/lib/sentinel-gw` and `/var/backups/sentinel-gw` are sandbox folders;
`claude` / `mcporter` are small fakes that really start the registered servers, unless the real
tools are on PATH. Fixed ports the docs use (`127.0.0.1:8080`, `127.0.0.1:9464`) become free
ports, and `https://mcp.example.com/mcp` (the gateway behind a TLS proxy) becomes the plain-HTTP
loopback address of the gateway's front. A gateway a doc starts in the background writes its pid
to `~/sentinel-gw.pid`; the sandbox stops any still running at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_add_mcp import make_bin

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT_ENTRIES = (
    "add-mcp.sh",
    "scripts",
    "src",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "sentinel.toml.example",
)
MARK = re.compile(r"<!--\s*test:\s*(.*?)\s*-->")
DOCS = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
# Absolute paths the docs use that the sandbox maps to private folders.
SANDBOX_DIRS = ("/opt/", "/etc/sentinel-gw", "/var/lib/sentinel-gw", "/var/backups/sentinel-gw")
# Fixed ports the docs use; each becomes a free port, so runs never collide with each other.
SANDBOX_PORTS = ("127.0.0.1:8080", "127.0.0.1:9464")
PUBLIC_URL = "https://mcp.example.com/mcp"  # the HTTP front behind a TLS proxy, in the docs


@dataclass
class Block:
    doc: str
    line: int
    mark: str  # "run ..." or "covered by ..." or ""
    code: str

    @property
    def host(self) -> str:
        m = re.search(r"host=(\w+)", self.mark)
        return m.group(1) if m else "dev"


def blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() in ("```sh", "```bash", "```shell"):
            start = i
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            m = MARK.fullmatch(lines[k].strip()) if k >= 0 else None
            found.append(Block(doc.name, start + 1, m.group(1) if m else "", "\n".join(lines[start + 1 : j])))
            i = j
        i += 1
    return found


# -- stand-ins -------------------------------------------------------------------------------------

MCP_CLIENT = '''
import json, os, queue, subprocess, sys, threading


def session(entry, actions):
    """Start a stdio server like a client would, run `actions(rpc)`, close it."""
    env = dict(os.environ)
    env.update(entry.get("env") or {})
    proc = subprocess.Popen([entry["command"], *entry.get("args", [])], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    lines = queue.Queue()
    pump = lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)]
    threading.Thread(target=pump, daemon=True).start()
    counter = [0]

    def rpc(method, params):
        counter[0] += 1
        message = {"jsonrpc": "2.0", "id": counter[0], "method": method, "params": params}
        proc.stdin.write(json.dumps(message) + "\\n")
        proc.stdin.flush()
        while True:
            line = lines.get(timeout=60)
            if line is None:
                raise RuntimeError("server closed its stdout")
            msg = json.loads(line)
            if msg.get("id") == counter[0] and "method" not in msg:
                if "error" in msg:
                    raise RuntimeError(msg["error"].get("message"))
                return msg["result"]

    try:
        rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "docs-test", "version": "1"}})
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\\n")
        proc.stdin.flush()
        return actions(rpc)
    finally:
        proc.stdin.close()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
'''

FAKE_CLAUDE = """
import json, os, sys
from pathlib import Path
from fakemcp import session

store = Path(os.environ["HOME"]) / ".fake-claude.json"
servers = json.loads(store.read_text()) if store.exists() else {}
args = sys.argv[1:]
if args[:1] != ["mcp"]:
    sys.exit("fake claude: only `claude mcp ...` is supported")
args = args[1:]
scope = "local"
if "-s" in args:
    i = args.index("-s"); scope = args[i + 1]; del args[i:i + 2]
cmd, rest = args[0], args[1:]
key = lambda name: f"{scope}:{name}"
if cmd == "add-json":
    name, spec = rest
    if key(name) in servers:
        sys.exit(f"MCP server {name} already exists in {scope} config")
    servers[key(name)] = json.loads(sys.stdin.read() if spec == "-" else spec)
    print(f"Added stdio MCP server {name} to {scope} config")
elif cmd == "remove":
    if servers.pop(key(rest[0]), None) is None:
        sys.exit(f"No MCP server named {rest[0]} in {scope} config")
    print(f"Removed MCP server {rest[0]} from {scope} config")
elif cmd == "get":
    matches = {k: v for k, v in servers.items() if k.split(":", 1)[1] == rest[0]}
    if not matches:
        sys.exit(f"No MCP server found with name: {rest[0]}")
    for k, v in matches.items():
        print(f"{rest[0]}:\\n  Scope: {k.split(':')[0]}\\n  Command: {v['command']}")
        print(f"  Args: {' '.join(v['args'])}")
        print("  Environment:\\n" + "".join(f"    {e}=...\\n" for e in v.get("env", {})))
elif cmd == "list":
    print("Checking MCP server health...")
    for k, v in servers.items():
        try:
            session(v, lambda rpc: rpc("tools/list", {}))
            health = "✔ Connected"
        except Exception as exc:
            health = f"✘ Failed to connect — {exc}"
        print(f"{k.split(':', 1)[1]}: {v['command']} {' '.join(v['args'])} - {health}")
else:
    sys.exit(f"fake claude: unsupported: mcp {cmd}")
store.write_text(json.dumps(servers))
"""

FAKE_MCPORTER = """
import json, os, sys
from pathlib import Path
from fakemcp import session

args = sys.argv[1:]
if args[:1] == ["daemon"]:
    print("Daemon stopped (if it was running).")
    sys.exit(0)
for path in (Path("config/mcporter.json"), Path(os.environ["HOME"]) / ".mcporter" / "mcporter.json"):
    if path.exists():
        servers = json.loads(path.read_text())["mcpServers"]
        break
else:
    sys.exit("fake mcporter: no mcporter.json")
if args[0] == "list":
    tools = session(servers[args[1]], lambda rpc: rpc("tools/list", {}))["tools"]
    print(args[1])
    for t in tools:
        print(f"  function {t['name']}(...);  // {t.get('description', '')}")
elif args[0] == "call":
    server, tool = args[1].split(".", 1)
    arguments = json.loads(args[args.index("--args") + 1]) if "--args" in args else {}
    result = session(servers[server], lambda rpc: rpc("tools/call", {"name": tool, "arguments": arguments}))
    print("\\n".join(c.get("text", "") for c in result.get("content", [])))
    sys.exit(1 if result.get("isError") else 0)
else:
    sys.exit(f"fake mcporter: unsupported: {args[0]}")
"""

FAKE_SSH = """
import os, subprocess, sys
args = sys.argv[1:]
with_value = {"-o", "-i", "-p", "-l", "-F", "-J", "-E", "-c", "-b", "-L", "-R", "-D", "-W", "-S"}
while args and args[0].startswith("-"):
    args = args[2:] if args[0] in with_value else args[1:]
host, command = args[0], " ".join(args[1:])
home = os.environ["SANDBOX_HOMES"] + "/" + ("gateway" if "gateway" in host else "openclaw")
env = dict(os.environ, HOME=home)
sys.exit(subprocess.run(["bash", "-c", command or "exec bash"], cwd=home, env=env).returncode)
"""

FAKE_SCP = """
import os, shutil, sys
args = [a for a in sys.argv[1:] if not a.startswith("-")]
*sources, target = args
host, _, path = target.partition(":")
home = os.environ["SANDBOX_HOMES"] + "/" + ("gateway" if "gateway" in host else "openclaw")
dest = os.path.join(home, os.path.expanduser(path) if path.startswith("/") else path)
for src in sources:
    shutil.copy(src, dest if not os.path.isdir(dest) else os.path.join(dest, os.path.basename(src)))
"""


FAKE_SUDO = """
import os, sys
from pathlib import Path

users = Path(os.environ["SANDBOX_USERS"])
known = {"root", *users.read_text().split()} if users.exists() else {"root"}
args = sys.argv[1:]
while args and args[0].startswith("-"):
    option = args.pop(0)
    if option in ("-u", "-g"):
        who = args.pop(0)
        if who not in known:
            sys.exit(f"sudo: unknown user {who}")
os.execvp(args[0], args)
"""

FAKE_USERADD = """
import os, sys
from pathlib import Path

users = Path(os.environ["SANDBOX_USERS"])
name = sys.argv[-1]
known = users.read_text().split() if users.exists() else []
if name in known:
    sys.exit(f"useradd: user '{name}' already exists")
users.write_text(" ".join([*known, name]))
"""

FAKE_CHOWN = """
import os, sys
from pathlib import Path

users = Path(os.environ["SANDBOX_USERS"])
known = {"root", *users.read_text().split()} if users.exists() else {"root"}
args = [a for a in sys.argv[1:] if not a.startswith("-")]
owner, paths = args[0], args[1:]
for name in owner.replace(":", " ").split():
    if name not in known:
        sys.exit(f"chown: invalid user or group: {name!r}")
for path in paths:
    if not os.path.lexists(path):
        sys.exit(f"chown: cannot access {path!r}: No such file or directory")
"""


def write_tool(directory: Path, name: str, source: str) -> None:
    path = directory / name
    path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(directory)!r})\n{source}")
    path.chmod(0o755)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sandbox:
    root: Path
    env: dict[str, str]
    real: dict[str, str]  # the real tools used instead of fakes
    ports: dict[str, str]  # documented address -> sandbox address

    def cwd(self, host: str) -> Path:
        return self.root / "checkout" if host == "dev" else self.root / "homes" / host

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        code = block.code.replace(PUBLIC_URL, f"http://{self.ports[SANDBOX_PORTS[0]]}/mcp")
        for documented, actual in self.ports.items():
            code = code.replace(documented, actual)
        for path in SANDBOX_DIRS:
            code = code.replace(path, f"{self.root}{path}")
        env = dict(self.env, HOME=str(self.root / "homes" / block.host))
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=self.cwd(block.host),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for entry in CHECKOUT_ENTRIES:
        (checkout / entry).symlink_to(ROOT / entry)
    for host in ("dev", "openclaw", "gateway"):
        (tmp_path / "homes" / host).mkdir(parents=True)
    for path in ("opt", "etc", "var/lib", "var/backups"):
        (tmp_path / path).mkdir(parents=True)
    tools = tmp_path / "fakes"
    tools.mkdir()
    (tools / "fakemcp.py").write_text(textwrap.dedent(MCP_CLIENT))
    real = {name: found for name in ("claude", "mcporter") if (found := shutil.which(name))}
    if "claude" not in real:
        write_tool(tools, "claude", FAKE_CLAUDE)
    if "mcporter" not in real:
        write_tool(tools, "mcporter", FAKE_MCPORTER)
    write_tool(tools, "ssh", FAKE_SSH)
    write_tool(tools, "scp", FAKE_SCP)
    write_tool(tools, "sudo", FAKE_SUDO)
    write_tool(tools, "useradd", FAKE_USERADD)
    write_tool(tools, "chown", FAKE_CHOWN)
    make_bin(tools)  # `sentinel-gw`, as pipx would put it on PATH
    env = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")}
    env["PATH"] = f"{tools}{os.pathsep}{os.environ['PATH']}"
    env["PYTHON"] = sys.executable  # builds the zipapp (needs pip to fetch the pinned wheels)
    env["SANDBOX_HOMES"] = str(tmp_path / "homes")
    env["SANDBOX_USERS"] = str(tmp_path / "users")
    box = Sandbox(tmp_path, env, real, {address: f"127.0.0.1:{free_port()}" for address in SANDBOX_PORTS})
    yield box
    for pid_file in (tmp_path / "homes").glob("*/sentinel-gw.pid"):
        # A doc that failed before stopping its background gateway (only if it is still ours).
        pid = pid_file.read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline")
        with contextlib.suppress(OSError):
            if pid.isdigit() and str(tmp_path) in cmdline.read_text(errors="replace"):
                os.kill(int(pid), signal.SIGTERM)
    if "mcporter" in real:  # a real mcporter may have left its keep-alive daemon running
        for host in ("openclaw", "gateway"):
            subprocess.run(
                ["mcporter", "daemon", "stop"],
                env=dict(env, HOME=str(tmp_path / "homes" / host)),
                capture_output=True,
                timeout=60,
                check=False,
            )


def run_doc(sandbox: Sandbox, doc: Path) -> list[str]:
    outputs = []
    for block in blocks(doc):
        if not block.mark.startswith("run"):
            continue
        out = sandbox.run(block)
        assert out.returncode == 0, (
            f"{doc.name}:{block.line} (host {block.host}) failed with {out.returncode}:\n{block.code}\n"
            f"--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
        )
        outputs.append(out.stdout)
    return outputs


# -- the rules ------------------------------------------------------------------------------------------


def test_the_rule_sees_the_docs() -> None:
    """The rule below runs over every doc in docs/ (a new doc cannot slip past it)."""
    assert {"CLAUDE-CODE.md", "OPENCLAW.md", "DEPLOYMENT.md", "PERFORMANCE.md"} <= set(DOCS)
    assert all(blocks(ROOT / "docs" / name) for name in ("CLAUDE-CODE.md", "DEPLOYMENT.md"))


@pytest.mark.parametrize("name", DOCS)
def test_every_command_block_is_run_or_covered(name: str) -> None:
    for block in blocks(ROOT / "docs" / name):
        assert block.mark, f"{name}:{block.line}: sh block without a <!-- test: ... --> mark"
        if block.mark.startswith("run"):
            continue
        if block.mark == "script":
            for line in block.code.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                words = [w for w in line.split() if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w)]
                assert words and words[0].startswith("scripts/"), f"{name}:{block.line}: not a script: {line}"
                assert (ROOT / words[0]).is_file(), f"{name}:{block.line}: no {words[0]}"
            continue
        m = re.fullmatch(r"covered by (tests/\S+\.py)::(test_\w+)", block.mark)
        assert m, f"{name}:{block.line}: unknown mark {block.mark!r}"
        source = (ROOT / m.group(1)).read_text(encoding="utf-8")
        assert f"def {m.group(2)}(" in source, f"{name}:{block.line}: {m.group(1)} has no {m.group(2)}"


def test_readme_commands_run(sandbox: Sandbox) -> None:
    """README.md: its first two blocks are CI's own (the demo: tests/integration/test_demo.py and
    test_packaging.py::test_pip_install_into_fresh_venv; the test command: `.ci/run`, verbatim);
    every later block is marked and run, with `.venv/bin/sentinel-gw` this checkout's command."""
    readme = ROOT / "README.md"
    demo, suite, *rest = blocks(readme)
    assert demo.code.strip().endswith(".venv/bin/sentinel-gw demo")
    assert suite.code.strip() in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert rest, "the README's walk-through has no command block"
    for block in rest:
        assert block.mark.startswith("run"), f"README.md:{block.line}: sh block not marked `run`"
    make_bin(sandbox.cwd("dev") / ".venv" / "bin")
    text = "\n".join(run_doc(sandbox, readme))
    assert "doctor: ready" in text
    assert "eyJ" in text  # a token
    assert "incident 42" in text  # kill --list


def test_claude_code_doc_runs(sandbox: Sandbox) -> None:
    outputs = run_doc(sandbox, ROOT / "docs" / "CLAUDE-CODE.md")
    text = "\n".join(outputs)
    assert "doctor: ready" in text
    assert text.count("✔ Connected") >= 3  # sentinel, sentinel-pyz and sentinel-by-hand
    assert "Failed to connect" not in text
    env_file = sandbox.root / "homes" / "dev" / ".config" / "sentinel-gw" / ".env"
    secret = next(
        line.split("=", 1)[1]
        for line in env_file.read_text().splitlines()
        if line.startswith("SENTINEL_JWT_SECRET=")
    )
    assert "roles developer" in text  # step 5 swapped in the narrower token
    for path in (sandbox.root / "homes" / "dev").rglob("*"):
        if path.is_file() and path.name != ".env":
            assert secret not in path.read_text(errors="replace"), f"signing secret leaked into {path}"


def test_openclaw_doc_runs(sandbox: Sandbox) -> None:
    outputs = run_doc(sandbox, ROOT / "docs" / "OPENCLAW.md")
    text = "\n".join(outputs)
    assert "hello from OpenClaw" in text and "hello over ssh" in text
    assert "hello through the bridge" in text
    assert "openclaw-main" in text and "openclaw-ssh" in text  # the audit trails name the agents
    assert "401" in text  # the central gateway's front answered before the bridges used it
    config = sandbox.root / "homes" / "openclaw" / ".mcporter" / "mcporter.json"
    assert oct(config.stat().st_mode & 0o777) == "0o600"


def test_deployment_doc_runs(sandbox: Sandbox) -> None:
    outputs = run_doc(sandbox, ROOT / "docs" / "DEPLOYMENT.md")
    text = "\n".join(outputs)
    assert "doctor: ready" in text
    assert "hello from the VPS" in text
    assert "smoke-test" in text  # the audit trail names the caller
    assert "incident 42" in text  # kill --list
    assert "sentinel-gw" in (sandbox.root / "users").read_text()
    backups = list((sandbox.root / "var" / "backups" / "sentinel-gw").glob("audit-*.db"))
    assert len(backups) == 1 and backups[0].stat().st_size > 0
    env_file = sandbox.root / "etc" / "sentinel-gw" / ".env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert "SENTINEL_ADMIN_TOKEN=" in env_file.read_text()


def test_bench_script_runs(tmp_path: Path) -> None:
    """The benchmark command of docs/PERFORMANCE.md and bench/README.md, with few calls: it runs
    and writes its table (the figures are not checked: no timing assertion in the tests)."""
    out = tmp_path / "perf.md"
    small = ("--calls", "40", "--rounds", "1", "--concurrency", "4")
    done = subprocess.run(
        [sys.executable, "bench/bench_stdio.py", *small, "--markdown", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = out.read_text(encoding="utf-8")
    assert "| scenario | direct | gateway | ratio (gateway/direct) |" in table
    assert "latency p50" in table and "PSS" in table


def test_bench_sdk_script_runs(tmp_path: Path) -> None:
    """The SDK-client benchmark command of docs/PERFORMANCE.md, with few calls: both pairings and
    the pure-stdlib rerun start, every call echoes (a failed call fails the script) and the table
    labels each row with its pairing (the figures are not checked)."""
    out = tmp_path / "perf-sdk.md"
    small = ("--calls", "20", "--rounds", "1", "--warmup", "5", "--concurrency", "4", "--pure")
    done = subprocess.run(
        [sys.executable, "bench/bench_sdk.py", *small, "--markdown", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = out.read_text(encoding="utf-8")
    assert "latency p50, 1 call in flight — official SDK client → stdlib echo backend |" in table
    assert "— official SDK client → SDK echo backend |" in table
    assert "— official SDK client → stdlib echo backend [pure stdlib] |" in table


TEST_REF = re.compile(r"(?:tests/)?((?:unit|integration)/test_\w+\.py)?::(test_\w+)")


@pytest.mark.parametrize("name", ["SECURITY.md", "WHITEPAPER-REQUIREMENTS.md"])
def test_named_tests_exist(name: str) -> None:
    """Every `file.py::test_name` a doc cites as proof exists (`::test_name` alone means the file
    named last in the same paragraph or table row)."""
    cited = 0
    current = None
    for number, line in enumerate((ROOT / "docs" / name).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("|"):
            current = None
        for m in TEST_REF.finditer(line):
            current = m.group(1) or current
            assert current, f"{name}:{number}: ::{m.group(2)} without a file before it"
            source = (ROOT / "tests" / current).read_text(encoding="utf-8")
            assert re.search(rf"def {m.group(2)}\(", source), f"{name}:{number}: no {m.group(2)} in {current}"
            cited += 1
    assert cited >= 20
