"""HTTP front benchmark: `sentinel-gw serve --no-stdio` with `[http]` versus a direct Streamable
HTTP MCP server with the same `echo` tool (tests/servers/http_server.py), same run.

Scenarios (direct and gateway interleaved round by round, the order alternating):
- throughput and p99 with 1, 16 and 64 concurrent clients (issue 8: 16 clients >= 3,000 calls/s,
  p99 < 10 ms). Each client has its own keep-alive connection, its own JWT (its own subject) and
  its own handshake-era session (initialize -> Mcp-Session-Id, notifications/initialized), and
  keeps one call in flight. Optionally the 2026-07-28 stateless flow (no session; the version,
  method and name in headers and `_meta`).
- 1,000 idle sessions (1,000 tokens, 1,000 initialize handshakes): the gateway's PSS increase
  (issue 8: <= 20 MiB).

The gateway's backend is the stdio echo server; auth, RBAC, the rate limit, validation and the
SQLite audit sink are on. The load generator is an asyncio HTTP/1.1 client with pre-encoded
requests (bench/benchlib.py); it runs on the same 2 cores as the server it measures.

    python bench/bench_http.py [--clients 1,16,64] [--seconds 2] [--rounds 3] [--sessions 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    TABLE_HEAD,
    HttpClient,
    HttpDirect,
    HttpError,
    HttpGateway,
    Row,
    audit_rows,
    echo_backends,
    http_clients,
    http_load,
    median,
    pct,
    progress,
    pss_mib,
    ratios,
    token,
)

HTTP_EXTRA = "max_sessions = 1100\n"
# The default backends[].max_in_flight (32) refuses the 33rd concurrent call (-32004, overloaded)
# instead of queueing it: 64 clients need more.
BACKEND_IN_FLIGHT = 128


async def _close(clients: Sequence[HttpClient]) -> None:
    for c in clients:
        c.close()
    await asyncio.sleep(0.05)


async def http_throughput(
    tmp: Path,
    counts: Sequence[int],
    seconds: float,
    rounds: int,
    modern: bool = True,
    wrapper: Sequence[str] | None = None,
    suffix: str = "",
) -> list[Row]:
    """Scenario 6: for each client count, `rounds` interleaved rounds of `seconds` each."""
    gw = await HttpGateway(tmp, echo_backends(1, BACKEND_IN_FLIGHT), HTTP_EXTRA, wrapper).start()
    direct = await HttpDirect().start()
    rows: list[Row] = []
    try:
        variants = [(n, False) for n in counts] + ([(16, True)] if modern else [])
        for n, is_modern in variants:
            sides = {
                "gateway": await http_clients(gw.port, n, f"client{n}{'m' if is_modern else ''}", is_modern),
                "direct": await http_clients(direct.port, n, f"client{n}"),
            }
            res: dict[str, dict[str, list[float]]] = {"direct": {}, "gateway": {}}
            try:
                for clients in sides.values():  # warm-up outside the figures
                    await http_load(clients, 0.3)
                for r in range(rounds):
                    order = ["direct", "gateway"] if r % 2 == 0 else ["gateway", "direct"]
                    for name in order:
                        rate, lat = await http_load(sides[name], seconds)
                        res[name].setdefault("rate", []).append(rate)
                        res[name].setdefault("p50", []).append(pct(lat, 0.50) * 1e3)
                        res[name].setdefault("p99", []).append(pct(lat, 0.99) * 1e3)
                    progress(
                        f"HTTP {n} clients{' (2026-07-28)' if is_modern else ''} round {r + 1}/{rounds}: "
                        f"calls/s {res['direct']['rate'][-1]:.0f} / {res['gateway']['rate'][-1]:.0f}, "
                        f"p99 {res['direct']['p99'][-1]:.2f} / {res['gateway']['p99'][-1]:.2f} ms"
                    )
            finally:
                await _close([*sides["gateway"], *sides["direct"]])
            d, g = res["direct"], res["gateway"]
            label = f"{n} client{'s' if n > 1 else ''}"
            if is_modern:
                label += ", 2026-07-28 stateless (direct: handshake)"
            label += suffix
            at16 = n == 16 and not is_modern
            rows += [
                Row(
                    f"6. HTTP front throughput, {label}",
                    "calls/s",
                    g["rate"],
                    d["rate"],
                    ratios(g["rate"], d["rate"]),
                    "≥ 3,000 calls/s" if at16 else "",
                    median(g["rate"]) >= 3000 if at16 else None,
                ),
                Row(
                    f"6. HTTP front latency p99, {label}",
                    "ms",
                    g["p99"],
                    d["p99"],
                    ratios(g["p99"], d["p99"]),
                    "< 10 ms" if at16 else "",
                    median(g["p99"]) < 10 if at16 else None,
                ),
            ]
            if n == 1 and not is_modern:
                rows.append(
                    Row(
                        f"6. HTTP front latency p50, {label}",
                        "ms",
                        g["p50"],
                        d["p50"],
                        ratios(g["p50"], d["p50"]),
                    )
                )
    finally:
        await gw.stop()
        await direct.stop()
    progress(f"audit rows after the HTTP runs: {audit_rows(tmp)}")
    return rows


async def idle_sessions(tmp: Path, sessions: int, rounds: int, connections: int = 8) -> list[Row]:
    """Scenario 7: per round a fresh gateway; PSS before and after `sessions` handshake-era
    sessions (each with its own token) that then stay idle. The handshakes share `connections`
    keep-alive connections, which stay open (the sessions do not depend on them)."""
    increase: list[float] = []
    per_session: list[float] = []
    for r in range(rounds):
        sub = tmp / f"sessions{r}"
        sub.mkdir()
        gw = await HttpGateway(sub, echo_backends(1), HTTP_EXTRA).start()
        try:
            warm = await http_clients(gw.port, 1, "warm")  # the backend is up, first-call costs paid
            await http_load(warm, 0.2)
            await warm[0].delete()
            await _close(warm)
            await asyncio.sleep(1.0)
            before = pss_mib(gw.pid)
            conns = [HttpClient("127.0.0.1", gw.port, "/mcp", "") for _ in range(connections)]
            await asyncio.gather(*(c.connect() for c in conns))

            async def open_many(c: HttpClient, ids: range, r: int = r) -> None:
                for i in ids:
                    c.bearer = token(f"idle-{r}-{i}")
                    c.session = None
                    await c.handshake()

            await asyncio.gather(
                *(open_many(c, range(k, sessions, connections)) for k, c in enumerate(conns))
            )
            await asyncio.sleep(1.0)
            after = pss_mib(gw.pid)
            # still there? (a call on the last session of each connection)
            for c in conns:
                status, _, body = await c.call()
                if status != 200:
                    raise HttpError(f"idle session gone: HTTP {status} {body[:200]!r}")
            await _close(conns)
        finally:
            await gw.stop()
        increase.append(after - before)
        per_session.append((after - before) * 1024 * 1024 / sessions)
        progress(f"idle sessions round {r + 1}/{rounds}: PSS {before:.1f} -> {after:.1f} MiB")
    return [
        Row(
            f"7. HTTP front: PSS increase with {sessions:,} idle sessions "
            f"(≈{median(per_session) / 1024:.1f} KiB each)",
            "MiB",
            increase,
            direct_label="n/a (absolute)",
            target="≤ 20 MiB",
            passed=median(increase) <= 20,
        )
    ]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,16,64", help="comma-separated client counts")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--no-modern", action="store_true", help="skip the 2026-07-28 variant")
    ap.add_argument("--markdown", help="write the result table to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        counts = [int(x) for x in args.clients.split(",") if x]
        rows = await http_throughput(tmp, counts, args.seconds, args.rounds, not args.no_modern)
        rows += await idle_sessions(tmp, args.sessions, max(1, min(args.rounds, 3)))
    text = "\n".join([*TABLE_HEAD, *(row.markdown() for row in rows)])
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
