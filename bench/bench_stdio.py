"""stdio benchmark: the gateway versus a direct connection to the same echo backend, same run.

Scenarios (each repeated `--rounds` times, direct and gateway interleaved):
- latency: sequential `tools/call echo`, one in flight: p50 / p99
- throughput: `--concurrency` calls in flight: calls per second
- memory: the gateway process's PSS (from /proc/PID/smaps_rollup) idle with 3 backends, and after
  the calls
- cold start: spawn to first complete `tools/list` through the gateway with 3 backends, versus the
  slowest backend's own spawn + initialize + tools/list

The gateway runs with JWT auth, RBAC, a rate limit and argument validation on (the realistic
configuration), so the ratios include the work a security gateway must do.

    python bench/bench_stdio.py [--calls 2000] [--rounds 3] [--concurrency 32] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from sentinel_gw.policy.auth import mint_token  # noqa: E402
from sentinel_gw.stdio_client import StdioClient, self_command  # noqa: E402

ECHO = [sys.executable, str(ROOT / "tests" / "servers" / "echo_server.py")]
SECRET = "bench-secret-" + "k" * 40


def config_text(backends: int, tmp: Path) -> str:
    parts = [
        "[auth]",
        'mode = "jwt"',
        'secret_env = "BENCH_SECRET"',
        "[rbac.roles.bench]",
        'permissions = ["tools.call"]',
        'deny_tools = ["*forbidden*"]',
        "[rate_limits]",
        'algorithm = "token_bucket"',
        "default = { requests = 10000000, window_secs = 1 }",
        "[kill_switch]",
        f'file = "{tmp / "kill.json"}"',
    ]
    for i in range(backends):
        parts += [
            "[[backends]]",
            f'name = "echo{i}"',
            'type = "stdio"',
            f'command = "{ECHO[0]}"',
            f'args = ["{ECHO[1]}"]',
        ]
        if i:
            parts.append(f'prefix = "e{i}"')
    return "\n".join(parts) + "\n"


def gateway_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["BENCH_SECRET"] = SECRET
    env["XDG_STATE_HOME"] = str(tmp)
    env["SENTINEL_TOKEN"] = mint_token(
        SECRET, subject="bench", roles=["bench"], ttl_secs=3600, issuer="sentinel-gw", audience="sentinel-gw"
    )
    return env


def pss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def open_client(argv: list[str], env: dict[str, str] | None = None) -> StdioClient:
    client = StdioClient(argv, env=env)
    await client.start()
    await client.initialize()
    await client.request("tools/list")
    return client


CALL = {"name": "echo", "arguments": {"message": "hello"}}


async def latency(client: StdioClient, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.request("tools/call", CALL)
        out.append(time.perf_counter() - t0)
    return out


async def throughput(client: StdioClient, n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await client.request("tools/call", CALL)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def cold_start(tmp: Path, rounds: int) -> tuple[float, float]:
    cfg = tmp / "cold.toml"
    cfg.write_text(config_text(3, tmp))
    gw_times, direct_times = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        direct = await open_client(ECHO)
        direct_times.append(time.perf_counter() - t0)
        await direct.close()
        t0 = time.perf_counter()
        gw = await open_client([*self_command(), "serve", "--config", str(cfg)], gateway_env(tmp))
        gw_times.append(time.perf_counter() - t0)
        await gw.close()
    return statistics.median(direct_times), statistics.median(gw_times)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--markdown", help="write the result table to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = tmp / "sentinel.toml"
        cfg.write_text(config_text(3, tmp))
        direct = await open_client(ECHO)
        gw = await open_client([*self_command(), "serve", "--config", str(cfg)], gateway_env(tmp))
        assert gw.proc is not None
        await asyncio.sleep(0.5)
        pss_idle = pss_mib(gw.proc.pid)
        res: dict[str, dict[str, list[float]]] = {"direct": {}, "gateway": {}}
        for _ in range(args.rounds):
            for name, client in (("direct", direct), ("gateway", gw)):
                lat = await latency(client, args.calls)
                r = res[name]
                r.setdefault("p50", []).append(pct(lat, 0.50))
                r.setdefault("p99", []).append(pct(lat, 0.99))
                r.setdefault("tput", []).append(await throughput(client, args.calls * 2, args.concurrency))
        pss_after = pss_mib(gw.proc.pid)
        await direct.close()
        await gw.close()
        cold_direct, cold_gw = await cold_start(tmp, args.rounds)

    def med(name: str, key: str) -> float:
        return statistics.median(res[name][key])

    def spread(name: str, key: str) -> str:
        vals = res[name][key]
        return f"{min(vals):.4g}-{max(vals):.4g}"

    rows = [
        (
            "latency p50 (ms), 1 in flight",
            med("direct", "p50") * 1e3,
            med("gateway", "p50") * 1e3,
            med("gateway", "p50") / med("direct", "p50"),
        ),
        (
            "latency p99 (ms), 1 in flight",
            med("direct", "p99") * 1e3,
            med("gateway", "p99") * 1e3,
            med("gateway", "p99") / med("direct", "p99"),
        ),
        (
            f"calls/s, {args.concurrency} in flight",
            med("direct", "tput"),
            med("gateway", "tput"),
            med("gateway", "tput") / med("direct", "tput"),
        ),
        ("first tools/list, 3 backends (ms)", cold_direct * 1e3, cold_gw * 1e3, cold_gw / cold_direct),
    ]
    lines = [
        f"stdio, echo backend, {args.calls} calls x {args.rounds} rounds (interleaved), "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs",
        "",
        "| scenario | direct | gateway | ratio (gateway/direct) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {d:.3f} | {g:.3f} | {ratio:.2f}x |" for name, d, g, ratio in rows]
    lines += [
        f"| gateway PSS idle, 3 backends (MiB) | | {pss_idle:.1f} | |",
        f"| gateway PSS after {args.rounds * args.calls * 3} calls (MiB) | | {pss_after:.1f} | |",
        "",
        f"spread over rounds: direct p50 {spread('direct', 'p50')} s, "
        f"gateway p50 {spread('gateway', 'p50')} s; "
        f"cold start = the slowest backend's own start + {((cold_gw - cold_direct) * 1e3):.0f} ms",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
