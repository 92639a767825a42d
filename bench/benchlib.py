"""Shared code of the benchmark suite: configs, tokens, lean clients, statistics, result rows.

Everything here is standard library plus `sentinel_gw.policy.auth.mint_token` (to sign the
bench tokens). The clients are deliberately lean (pre-encoded requests, one parse per response,
no task per call) so that the load generator costs as little as possible and the same client
drives the direct connection and the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sentinel_gw.policy.auth import mint_token  # noqa: E402

PY = sys.executable
SERVERS = ROOT / "tests" / "servers"
ECHO = [PY, str(SERVERS / "echo_server.py")]
MINI = [PY, str(SERVERS / "mcp_server.py"), "--name", "mini"]
SDK = [PY, str(SERVERS / "sdk_server.py"), "sdk"]
HTTP_DIRECT = [PY, str(SERVERS / "http_server.py"), "--port", "0"]
GATEWAY = [PY, "-m", "sentinel_gw"]
SECRET = "bench-secret-" + "k" * 40
ROLE = "bench"
HANDSHAKE_VERSION = "2025-06-18"
ACCEL_ENV = "SENTINEL_GW_ACCEL"  # passed on to the gateway: "0" forces the pure standard library
MODERN_VERSION = "2026-07-28"

# -- statistics -----------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank, as the first benchmark did)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else math.nan


@dataclass
class Row:
    """One line of the result table. `direct` / `gateway` hold one value per round; `ratios` the
    per-round gateway/direct ratios (rounds are interleaved, so a per-round ratio cancels most
    of the noise a shared machine adds). `passed` is None when no target applies."""

    scenario: str
    unit: str
    gateway: list[float]
    direct: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    target: str = ""
    passed: bool | None = None
    direct_label: str = ""  # shown instead of figures when there is no direct counterpart
    digits: int = 3

    def fmt(self, value: float) -> str:
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{self.digits}g}" if abs(value) < 1 else f"{value:.{max(self.digits - 2, 1)}f}"

    def cell(self, values: list[float]) -> str:
        if not values:
            return self.direct_label or "n/a"
        if len(values) == 1:
            return self.fmt(values[0])
        return f"{self.fmt(median(values))} ({self.fmt(min(values))}-{self.fmt(max(values))})"

    def ratio_cell(self) -> str:
        if not self.ratios:
            return ""
        r = median(self.ratios)
        if len(self.ratios) == 1:
            return f"{r:.2f}x"
        return f"{r:.2f}x ({min(self.ratios):.2f}-{max(self.ratios):.2f})"

    def verdict(self) -> str:
        return "" if self.passed is None else ("**pass**" if self.passed else "**FAIL**")

    def markdown(self) -> str:
        cells = (
            self.scenario,
            self.unit,
            self.cell(self.direct),
            self.cell(self.gateway),
            self.ratio_cell(),
            self.target,
            self.verdict(),
        )
        return "| " + " | ".join(cells) + " |"


TABLE_HEAD = [
    "| scenario | unit | direct: median (min-max) | gateway: median (min-max) "
    "| ratio gateway/direct: median (min-max) | target | result |",
    "|---|---|---:|---:|---:|---|---|",
]


def ratios(gateway: Sequence[float], direct: Sequence[float]) -> list[float]:
    return [g / d for g, d in zip(gateway, direct, strict=True) if d]


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    return (
        f"{os.cpu_count()} CPUs ({model}){mem}, {platform.system()} {platform.release()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def accel_in_use() -> str:
    """What the gateway will run on, given this process's SENTINEL_GW_ACCEL."""
    from sentinel_gw import accel

    return accel.describe() or "pure standard library"


@contextlib.contextmanager
def accel_mode(value: str | None) -> Iterator[None]:
    """Set SENTINEL_GW_ACCEL for the gateways started inside (None: leave it as it is)."""
    old = os.environ.get(ACCEL_ENV)
    if value is not None:
        os.environ[ACCEL_ENV] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ACCEL_ENV, None)
        else:
            os.environ[ACCEL_ENV] = old


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------------


def pss_mib(pid: int) -> float:
    """Proportional set size of one process (children excluded), MiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def pss_anon_mib(pid: int) -> float:
    """The anonymous part of the PSS (heap, Python's arenas, malloc, SQLite's caches), MiB: what a
    leak adds. The file-backed part (code of python and its libraries) is shared with every other
    process mapping the same files, so it moves by MiB when other processes start or exit."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def token(subject: str, roles: Sequence[str] = (ROLE,)) -> str:
    return mint_token(
        SECRET,
        subject=subject,
        roles=list(roles),
        ttl_secs=3600,
        issuer="sentinel-gw",
        audience="sentinel-gw",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Backend:
    name: str
    argv: list[str]
    prefix: str = ""
    max_in_flight: int = 0  # 0: the default (32)


def config_text(tmp: Path, backends: Sequence[Backend], http: str = "") -> str:
    """The realistic configuration: JWT auth, RBAC with a deny pattern, a token-bucket rate limit
    (high enough never to refuse), argument validation (always on), the kill-file watcher and the
    default audit sink (SQLite), written explicitly so that a changed default cannot turn it off."""
    parts = [
        "[auth]",
        'mode = "jwt"',
        'secret_env = "BENCH_SECRET"',
        f"[rbac.roles.{ROLE}]",
        'permissions = ["tools.list", "tools.call"]',
        'deny_tools = ["*forbidden*"]',
        "[rate_limits]",
        'algorithm = "token_bucket"',
        "default = { requests = 10000000, window_secs = 1 }",
        "[kill_switch]",
        f"file = {json.dumps(str(tmp / 'kill.json'))}",
        "[audit]",
        'sinks = ["sqlite"]',
        f"sqlite_path = {json.dumps(str(tmp / 'audit.db'))}",
    ]
    if http:
        parts += ["[http]", http]
    for b in backends:
        parts += [
            "[[backends]]",
            f"name = {json.dumps(b.name)}",
            'type = "stdio"',
            f"command = {json.dumps(b.argv[0])}",
            f"args = {json.dumps(b.argv[1:])}",
        ]
        if b.prefix:
            parts.append(f"prefix = {json.dumps(b.prefix)}")
        if b.max_in_flight:
            parts.append(f"max_in_flight = {b.max_in_flight}")
    return "\n".join(parts) + "\n"


def echo_backends(n: int, max_in_flight: int = 0) -> list[Backend]:
    return [Backend(f"echo{i}", ECHO, f"e{i}" if i else "", max_in_flight) for i in range(n)]


def write_config(tmp: Path, backends: Sequence[Backend], http: str = "", name: str = "sentinel.toml") -> Path:
    path = tmp / name
    path.write_text(config_text(tmp, backends, http))
    return path


def gateway_env(tmp: Path, stdio_token: bool = True) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "BENCH_PROFILE_OUT", ACCEL_ENV)
    }
    env["PYTHONPATH"] = str(ROOT / "src")
    env["BENCH_SECRET"] = SECRET
    env["XDG_STATE_HOME"] = str(tmp)
    if stdio_token:
        env["SENTINEL_TOKEN"] = token("bench")
    return env


def gateway_argv(wrapper: Sequence[str] | None = None) -> list[str]:
    """How to start the gateway: `python -m sentinel_gw`, or through a profiling wrapper."""
    return list(wrapper) if wrapper else list(GATEWAY)


def audit_rows(tmp: Path) -> int:
    """Rows in the bench audit database (proof that the audit sink really ran)."""
    import sqlite3

    path = tmp / "audit.db"
    if not path.exists():
        return 0
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return max((con.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables), default=0)
    finally:
        con.close()


# -- a lean stdio JSON-RPC client -----------------------------------------------------------------

CALL_TEMPLATE = (
    b'{"jsonrpc":"2.0","id":%d,"method":"tools/call",'
    b'"params":{"name":"echo","arguments":{"message":"hello"}}}\n'
)


class _StdioProtocol(asyncio.SubprocessProtocol):
    def __init__(self, client: RawStdio) -> None:
        self.client = client
        self.buf = b""
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        for line in lines:
            self.client.on_line(line)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)
        self.client.fail_all(ConnectionError("the process exited"))


class RawStdio:
    """A JSON-RPC client over a child's stdin/stdout: one write per request, one `json.loads` per
    response line, futures matched by id. Server-to-client requests are answered with an error
    (the bench declares no client capabilities, so none should come)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.env = env
        self.pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.transport: asyncio.SubprocessTransport | None = None
        self.proto: _StdioProtocol | None = None
        self.stdin: asyncio.WriteTransport | None = None

    async def start(self) -> RawStdio:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.subprocess_exec(
            lambda: _StdioProtocol(self),
            *self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )
        self.transport, self.proto = transport, proto
        self.stdin = transport.get_pipe_transport(0)  # type: ignore[assignment]
        return self

    @property
    def pid(self) -> int:
        assert self.transport is not None
        return self.transport.get_pid()

    def on_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict) or "id" not in msg:
            return
        if "method" in msg:
            self.write(
                b'{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"not supported"}}\n'
                % json.dumps(msg["id"]).encode()
            )
            return
        fut = self.pending.pop(msg["id"], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def fail_all(self, exc: BaseException) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()

    def write(self, data: bytes) -> None:
        assert self.stdin is not None
        self.stdin.write(data)

    def call(self, template: bytes = CALL_TEMPLATE) -> asyncio.Future[dict[str, Any]]:
        """Send one pre-encoded request (`template % id`); the future resolves with the reply."""
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        self.write(template % self.next_id)
        return fut

    async def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.write(json.dumps(msg).encode() + b"\n")
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def initialize(self) -> Any:
        result = await self.request(
            "initialize",
            {
                "protocolVersion": HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "sentinel-bench", "version": "1"},
            },
        )
        self.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        return result

    async def list_tools(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor = None
        while True:
            result = await self.request("tools/list", {"cursor": cursor} if cursor else {})
            tools += result.get("tools", [])
            cursor = result.get("nextCursor")
            if not cursor:
                return tools

    async def close(self, timeout: float = 15.0) -> None:
        if self.transport is None:
            return
        with contextlib.suppress(Exception):
            assert self.stdin is not None
            self.stdin.close()
        assert self.proto is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.proto.exited), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.transport.send_signal(signal.SIGKILL)
            await self.proto.exited
        self.transport.close()


async def open_stdio(argv: Sequence[str], env: dict[str, str] | None = None) -> RawStdio:
    client = await RawStdio(argv, env).start()
    await client.initialize()
    await client.list_tools()
    return client


async def latency(client: RawStdio, n: int) -> list[float]:
    """n sequential calls, one in flight: each call's round trip in seconds."""
    out = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        reply = await client.call()
        out.append(clock() - t0)
        if "result" not in reply:
            raise RuntimeError(f"call failed: {reply}")
    return out


async def throughput(client: RawStdio, n: int, concurrency: int) -> float:
    """n calls with `concurrency` in flight at all times: calls per second."""
    left = [n]
    failures = [0]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            reply = await client.call()
            if "result" not in reply:
                failures[0] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    if failures[0]:
        raise RuntimeError(f"{failures[0]} of {n} calls failed")
    return n / elapsed


async def interleaved_rounds(
    sides: dict[str, Any],
    rounds: int,
    calls: int,
    concurrency: int,
    measure_latency: Callable[[Any, int], Any],
    measure_throughput: Callable[[Any, int, int], Any],
    label: str,
    per_round: list[dict[str, float]] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Scenarios 1 and 2 on every side, round by round: `calls` sequential calls (p50, p99 in ms)
    then `2 * calls` with `concurrency` in flight (calls/s). The order rotates every round, and
    is reversed every other one, so no side always goes first. `per_round` receives one dict per
    round: `{side}_p50` (ms) and `{side}_tput` (calls/s)."""
    names = list(sides)
    res: dict[str, dict[str, list[float]]] = {n: {"p50": [], "p99": [], "tput": []} for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            lat = await measure_latency(sides[name], calls)
            res[name]["p50"].append(pct(lat, 0.50) * 1e3)
            res[name]["p99"].append(pct(lat, 0.99) * 1e3)
        for name in order:
            res[name]["tput"].append(await measure_throughput(sides[name], calls * 2, concurrency))
        last = {f"{n}_{k}": res[n][k][-1] for n in names for k in ("p50", "tput")}
        if per_round is not None:
            per_round.append(last)
        progress(
            f"{label} round {r + 1}/{rounds} ({' / '.join(names)}): p50 "
            + " / ".join(f"{last[n + '_p50'] * 1e3:.0f}" for n in names)
            + " µs, calls/s "
            + " / ".join(f"{last[n + '_tput']:.0f}" for n in names)
        )
    return res


# -- a lean HTTP/1.1 keep-alive client ------------------------------------------------------------


class HttpError(RuntimeError):
    pass


class _HttpProtocol(asyncio.Protocol):
    """Reads HTTP/1.1 responses (Content-Length or chunked) off one keep-alive connection."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        parsed = self._parse()
        if parsed is not None:
            self.waiter.set_result(parsed)

    def _parse(self) -> tuple[int, bytes, bytes] | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end])
        status = int(head[9:12])
        lower = head.lower()
        i = lower.find(b"\r\ncontent-length:")
        if i >= 0:
            j = lower.find(b"\r\n", i + 2)
            n = int(lower[i + 17 : j if j >= 0 else len(lower)])
            if len(buf) < end + 4 + n:
                return None
            body = bytes(buf[end + 4 : end + 4 + n])
            del buf[: end + 4 + n]
            return status, head, body
        if b"\r\ntransfer-encoding: chunked" in lower:
            pos = end + 4
            chunks = []
            while True:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    return None
                size = int(bytes(buf[pos:nl]).split(b";")[0], 16)
                if size == 0:
                    if len(buf) < nl + 4:
                        return None
                    del buf[: nl + 4]  # no trailers are sent
                    return status, head, b"".join(chunks)
                if len(buf) < nl + 2 + size + 2:
                    return None
                chunks.append(bytes(buf[nl + 2 : nl + 2 + size]))
                pos = nl + 2 + size + 2
        del buf[: end + 4]  # no body (e.g. 202 without Content-Length)
        return status, head, b""

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes, bytes]]:
        if self.lost is not None:
            raise self.lost
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


def header_value(head: bytes, name: bytes) -> str | None:
    lower = head.lower()
    i = lower.find(b"\r\n" + name.lower() + b":")
    if i < 0:
        return None
    j = head.find(b"\r\n", i + 2)
    return head[i + 3 + len(name) : j if j >= 0 else len(head)].decode().strip()


def sse_or_json(body: bytes) -> dict[str, Any]:
    """The JSON-RPC response in a JSON body or in the last `data:` line of an SSE body."""
    if body.startswith(b"{"):
        return json.loads(body)
    data = [line[5:].strip() for line in body.split(b"\n") if line.startswith(b"data:")]
    data = [d for d in data if d]
    if not data:
        raise HttpError(f"no data in SSE body {body[:200]!r}")
    return json.loads(data[-1])


class HttpClient:
    """One client: its own keep-alive connection, its own token and (handshake era) its own
    session. `call()` sends the pre-encoded tools/call and resolves with (status, body)."""

    def __init__(self, host: str, port: int, path: str, bearer: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.bearer = bearer
        self.proto: _HttpProtocol | None = None
        self.session: str | None = None
        self.prefix = b""
        self.suffix = b""
        self.counter = 0

    async def connect(self) -> HttpClient:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_HttpProtocol, self.host, self.port)
        sock = proto.transport.get_extra_info("socket") if proto.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proto = proto
        return self

    def encode(self, body: bytes, extra: Sequence[tuple[str, str]] = ()) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Authorization: Bearer {self.bearer}",
            "Accept: application/json, text/event-stream",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in extra),
        ]
        if self.session:
            lines.append(f"Mcp-Session-Id: {self.session}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def post(
        self, message: dict[str, Any], extra: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, bytes, bytes]:
        assert self.proto is not None
        return await self.proto.send(self.encode(json.dumps(message).encode(), extra))

    async def handshake(self) -> None:
        """initialize (creates the session: Mcp-Session-Id), notifications/initialized, then the
        fixed-size tools/call template of the handshake era."""
        status, head, body = await self.post(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": HANDSHAKE_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "sentinel-bench", "version": "1"},
                },
            }
        )
        if status != 200:
            raise HttpError(f"initialize: HTTP {status} {body[:300]!r}")
        self.session = header_value(head, b"mcp-session-id")
        version = ("MCP-Protocol-Version", HANDSHAKE_VERSION)
        status, _, body = await self.post(
            {"jsonrpc": "2.0", "method": "notifications/initialized"}, [version]
        )
        if status != 202:
            raise HttpError(f"notifications/initialized: HTTP {status} {body[:300]!r}")
        # Ids are fixed-width strings, so Content-Length never changes: prefix + id + suffix.
        body_t = (
            b'{"jsonrpc":"2.0","id":"%s","method":"tools/call",'
            b'"params":{"name":"echo","arguments":{"message":"hello"}}}'
        )
        self._template(body_t, [version])

    def modern(self) -> None:
        """The 2026-07-28 stateless flow: no session; every POST names its version and method."""
        self.session = None
        meta = (
            '"_meta":{"io.modelcontextprotocol/protocolVersion":"' + MODERN_VERSION + '",'
            '"io.modelcontextprotocol/clientCapabilities":{}}'
        )
        body_t = (
            b'{"jsonrpc":"2.0","id":"%s","method":"tools/call",'
            b'"params":{"name":"echo","arguments":{"message":"hello"},' + meta.encode() + b"}}"
        )
        extra = [("MCP-Protocol-Version", MODERN_VERSION), ("Mcp-Method", "tools/call"), ("Mcp-Name", "echo")]
        self._template(body_t, extra)

    def _template(self, body_t: bytes, extra: Sequence[tuple[str, str]]) -> None:
        marker = b"\x00" * 10
        raw = self.encode(body_t.replace(b"%s", marker), extra)
        self.prefix, _, self.suffix = raw.partition(marker)

    def call(self) -> asyncio.Future[tuple[int, bytes, bytes]]:
        assert self.proto is not None
        self.counter += 1
        return self.proto.send(self.prefix + b"%010d" % self.counter + self.suffix)

    async def delete(self) -> int:
        assert self.proto is not None
        lines = [
            f"DELETE {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Authorization: Bearer {self.bearer}",
            f"Mcp-Session-Id: {self.session}",
        ]
        status, _, _ = await self.proto.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return status

    def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()


def check_reply(status: int, body: bytes) -> None:
    if status != 200:
        raise HttpError(f"HTTP {status}: {body[:300]!r}")
    reply = sse_or_json(body)
    if "result" not in reply or reply["result"].get("isError"):
        raise HttpError(f"tools/call failed: {reply}")


async def http_load(clients: Sequence[HttpClient], seconds: float) -> tuple[float, list[float]]:
    """Every client calls in a loop, one call in flight each, for `seconds`: (calls/s, latencies).
    Each response is checked cheaply (status 200, a result); the first of each client fully."""
    clock = time.perf_counter
    lat: list[float] = []
    errors: list[str] = []
    deadline = clock() + seconds

    async def run(c: HttpClient) -> None:
        status, _, body = await c.call()
        check_reply(status, body)
        append = lat.append
        while clock() < deadline:
            t0 = clock()
            status, _, body = await c.call()
            append(clock() - t0)
            if status != 200 or b'"result"' not in body:
                errors.append(f"HTTP {status}: {body[:200]!r}")

    t0 = clock()
    await asyncio.gather(*(run(c) for c in clients))
    elapsed = clock() - t0
    if errors:
        raise HttpError(f"{len(errors)} failed calls, e.g. {errors[0]}")
    return (len(lat) + len(clients)) / elapsed, lat


async def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


class HttpGateway:
    """`sentinel-gw serve --no-stdio` with `[http]` on a free loopback port. A start that fails
    (another process took the port meanwhile, a module being edited in the checkout) is retried
    once on a new port; the second failure raises with the gateway's log."""

    def __init__(
        self,
        tmp: Path,
        backends: Sequence[Backend],
        http_extra: str = "",
        wrapper: Sequence[str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.backends = list(backends)
        self.http_extra = http_extra
        self.prefix = gateway_argv(wrapper)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, attempts: int = 2) -> HttpGateway:
        for attempt in range(attempts):
            self.port = free_port()
            http = f'listen = "127.0.0.1:{self.port}"\n{self.http_extra}'
            config = write_config(self.tmp, self.backends, http)
            log_path = self.tmp / "gateway-http.log"
            self.log = open(log_path, "wb")  # noqa: SIM115
            self.proc = subprocess.Popen(
                [*self.prefix, "serve", "--no-stdio", "--config", str(config)],
                env=gateway_env(self.tmp, stdio_token=False),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.log,
            )
            try:
                await wait_port(self.port, self.proc)
                return self
            except (OSError, RuntimeError) as exc:
                await self.stop()
                tail = log_path.read_text(errors="replace")[-2000:]
                if attempt == attempts - 1:
                    raise RuntimeError(f"{exc}\n--- gateway log:\n{tail}") from None
                progress(f"gateway did not start ({exc}); retrying. Log:\n{tail}")
        raise AssertionError("unreachable")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        for _ in range(300):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class HttpDirect:
    """tests/servers/http_server.py: a direct Streamable HTTP MCP server with the same `echo` tool
    (handshake era, sessions, SSE answers), the HTTP reference."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    async def start(self) -> HttpDirect:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        self.proc = subprocess.Popen(
            HTTP_DIRECT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"http_server.py printed {line!r}")
        self.port = int(line.split()[1])
        return self

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 10)


async def http_clients(port: int, n: int, subject: str, modern: bool = False) -> list[HttpClient]:
    """n clients, each with its own connection and its own token (subject-0 .. subject-(n-1))."""
    clients = [HttpClient("127.0.0.1", port, "/mcp", token(f"{subject}-{i}")) for i in range(n)]
    await asyncio.gather(*(c.connect() for c in clients))
    if modern:
        for c in clients:
            c.modern()
    else:
        await asyncio.gather(*(c.handshake() for c in clients))
    return clients


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())
