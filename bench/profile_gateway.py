"""Profile the gateway under load and list its top costs per call.

    python bench/profile_gateway.py --scenario stdio [--calls 20000]   # scenario 1: 1 in flight
    python bench/profile_gateway.py --scenario stdio --concurrency 16  # scenario 2: 16 in flight
    python bench/profile_gateway.py --scenario http [--seconds 10]     # scenario 6: 16 clients
    python bench/profile_gateway.py --scenario stdio --py-spy          # sampling, all threads

cProfile (default): the gateway runs under bench/cprofile_gateway.py, which profiles the main
thread (the event loop) between two signals sent around the measured load only; the report gives
each function's own time (tottime) and inclusive time (cumtime) divided by the number of calls
made, in microseconds per tools/call, plus the calls per tools/call. cProfile's own overhead
inflates small, often-called functions: read the ranking, not the absolute figures.

--py-spy: `py-spy record` (if installed) samples every thread, the audit writer's included, for
the whole life of the process (start-up is small next to the load); the report lists the leaf
functions (self time) and the functions on the stack (inclusive), per tools/call.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    PY,
    HttpGateway,
    RawStdio,
    echo_backends,
    gateway_env,
    http_clients,
    http_load,
    latency,
    open_stdio,
    progress,
    throughput,
    write_config,
)

HERE = Path(__file__).resolve().parent
WRAPPER = [PY, str(HERE / "cprofile_gateway.py")]


def short(path: str) -> str:
    i = path.find("/src/")
    if i >= 0:
        return path[i + 1 :]
    i = path.find("/lib/python3")
    if i >= 0:
        return "stdlib" + path[path.find("/", i + 5) :]
    return path


def cprofile_report(stats_file: Path, calls: int, top: int) -> str:
    st = pstats.Stats(str(stats_file))
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = f"{short(file)}:{line}:{func}" if line else func
        rows.append((where, nc / calls, tt / calls * 1e6, ct / calls * 1e6))
    total = sum(r[2] for r in rows)
    out = [
        f"cProfile of the event-loop thread, {calls:,} tools/call; total profiled own time "
        f"{total:.1f} µs per call (inflated by cProfile)",
        "",
        "Top by own time (tottime), per tools/call:",
        "| function | calls/call | own µs/call | incl. µs/call |",
        "|---|---:|---:|---:|",
    ]
    for where, n, tt, ct in sorted(rows, key=lambda r: -r[2])[:top]:
        out.append(f"| `{where}` | {n:.2f} | {tt:.2f} | {ct:.2f} |")
    out += [
        "",
        "Top sentinel_gw functions by inclusive time (cumtime), per tools/call:",
        "| function | calls/call | own µs/call | incl. µs/call |",
        "|---|---:|---:|---:|",
    ]
    ours = [r for r in rows if r[0].startswith("src/sentinel_gw") or r[0].startswith("sentinel_gw")]
    for where, n, tt, ct in sorted(ours, key=lambda r: -r[3])[:top]:
        out.append(f"| `{where}` | {n:.2f} | {tt:.2f} | {ct:.2f} |")
    return "\n".join(out)


def pyspy_report(raw: Path, calls: int, rate: int, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        samples += n
        threads[frames[0]] += n
        own[frames[-1]] += n
        for f in set(frames[1:]):
            incl[f] += n
    per = 1e6 / rate / calls  # µs of one sample, per call
    out = [
        f"py-spy, {samples:,} samples at {rate} Hz (whole process life, idle excluded), {calls:,} tools/call",
        "",
        "Threads: " + ", ".join(f"{t} {n * per:.1f} µs/call" for t, n in threads.most_common()),
        "",
        "Top by own time (leaf), per tools/call:",
        "| function | own µs/call |",
        "|---|---:|",
        *(f"| `{f}` | {n * per:.2f} |" for f, n in own.most_common(top)),
        "",
        "Top by inclusive time, per tools/call:",
        "| function | incl. µs/call |",
        "|---|---:|",
        *(f"| `{f}` | {n * per:.2f} |" for f, n in incl.most_common(top)),
    ]
    return "\n".join(out)


async def drive_stdio(
    tmp: Path, argv_prefix: list[str], calls: int, concurrency: int, use_signals: bool
) -> tuple[int, int]:
    cfg = write_config(tmp, echo_backends(3))
    client: RawStdio = await open_stdio([*argv_prefix, "serve", "--config", str(cfg)], gateway_env(tmp))
    pid = client.pid
    try:
        await latency(client, 500)  # warm-up
        if use_signals:
            os.kill(pid, signal.SIGUSR1)
            await asyncio.sleep(0.1)
        t0 = time.perf_counter()
        if concurrency > 1:
            await throughput(client, calls, concurrency)
        else:
            await latency(client, calls)
        progress(f"{calls} calls ({concurrency} in flight) in {time.perf_counter() - t0:.1f} s")
        if use_signals:
            os.kill(pid, signal.SIGUSR2)
            await asyncio.sleep(1.0)
    finally:
        await client.close()
    return calls, pid


async def drive_http(tmp: Path, argv_prefix: list[str], seconds: float, use_signals: bool) -> int:
    gw = await HttpGateway(tmp, echo_backends(1), wrapper=argv_prefix).start()
    try:
        clients = await http_clients(gw.port, 16, "profile")
        await http_load(clients, 1.0)  # warm-up
        if use_signals:
            os.kill(gw.pid, signal.SIGUSR1)
            await asyncio.sleep(0.1)
        rate, lat = await http_load(clients, seconds)
        if use_signals:
            os.kill(gw.pid, signal.SIGUSR2)
            await asyncio.sleep(1.0)
        for c in clients:
            c.close()
        progress(f"{len(lat) + len(clients)} calls, {rate:.0f} calls/s")
        return len(lat) + len(clients)
    finally:
        await gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=("stdio", "http"), default="stdio")
    ap.add_argument("--calls", type=int, default=20000, help="stdio: calls profiled")
    ap.add_argument("--concurrency", type=int, default=1, help="stdio: calls in flight (scenario 2: 16)")
    ap.add_argument("--seconds", type=float, default=10.0, help="http: seconds of load profiled")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--py-spy", action="store_true", help="sample with py-spy instead of cProfile")
    ap.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    ap.add_argument("--output", help="also write the report (and keep the raw profile next to it)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.py_spy:
            spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
            if not Path(spy).exists():
                sys.exit("py-spy not found (pip install py-spy)")
            raw = tmp / "pyspy.txt"
            prefix = [
                spy,
                "record",
                "-r",
                str(args.rate),
                "-f",
                "raw",
                "-t",
                "-o",
                str(raw),
                "--",
                PY,
                "-m",
                "sentinel_gw",
            ]
        else:
            raw = tmp / "gateway.prof"
            os.environ["BENCH_PROFILE_OUT"] = str(raw)
            prefix = list(WRAPPER)
        signals = not args.py_spy
        if args.scenario == "stdio":
            calls, _ = asyncio.run(drive_stdio(tmp, prefix, args.calls, args.concurrency, signals))
        else:
            calls = asyncio.run(drive_http(tmp, prefix, args.seconds, signals))
        for _ in range(100):
            if raw.exists() and raw.stat().st_size:
                break
            time.sleep(0.1)
        if args.py_spy:
            report = pyspy_report(raw, calls, args.rate, args.top)
        else:
            report = cprofile_report(raw, calls, args.top)
        print(report)
        if args.output:
            Path(args.output).write_text(report + "\n")
            shutil.copy(raw, Path(args.output).with_suffix(".raw" if args.py_spy else ".prof"))


if __name__ == "__main__":
    main()
