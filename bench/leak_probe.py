"""Leak probe: what grows in the gateway over a long stdio run (scenario 4, taken apart).

    python bench/leak_probe.py --calls 300000 --audit sqlite,jsonl,none
    python bench/leak_probe.py --calls 200000 --audit sqlite --tracemalloc --snap-at 10000,50000,100000,200000
    python bench/leak_probe.py --calls 100000 --audit sqlite --gc default     # without cli._tune_gc

The driver starts the gateway (3 echo backends, the bench config of benchlib: JWT, RBAC, rate
limit, validation, kill file) with the audit sink named by --audit (sqlite / jsonl / none), under
this same file as a wrapper (`leak_probe.py wrap serve ...`), and sends `--calls` calls with
`--concurrency` in flight. Every `--step` calls it records:

- from outside: PSS of the gateway process, split by mapping from /proc/PID/smaps (heap = brk
  arena, anon = other anonymous mappings: pymalloc arenas and large mallocs, shm = SQLite's WAL
  index, file = code and other files);
- from inside (SIGUSR1 -> the wrapper writes a JSON file): Python objects tracked by the GC and
  the top types by count, sys.getallocatedblocks(), pymalloc's arenas (sys._debugmallocstats),
  glibc malloc (mallinfo2: arena, mmapped, in use, free), SQLite's own heap
  (sqlite3_memory_used / highwater, through ctypes on the same libsqlite3), the GC counts and
  thresholds, and tracemalloc's total when it is on.

With --tracemalloc the wrapper starts tracemalloc (--frames deep) at launch and dumps a snapshot at
each of --snap-at; the report lists the top allocation differences (by line and by traceback)
between consecutive snapshots, which names any Python-level growth by file:line. tracemalloc
slows the gateway 2-3x and adds its own memory (subtracted in the report); the PSS figures of a
tracemalloc run are therefore not the bench's.

`leak_probe.py sqlite-batches [BATCHES] [MAX_BATCH]` measures SQLite's heap against batch sizes
on the sink alone (its prepared-statement cache was the growth fixed in commit 550ffd2).

--gc default replaces cli._tune_gc (gc.freeze + gc.set_threshold(50_000, 20, 20)) by a no-op, to
see whether the raised thresholds are what grows. Output goes to --out (a folder, kept) as
JSON lines (samples.jsonl) plus the printed report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# -- the wrapper: runs inside the gateway process ------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


@functools.cache
def _libc() -> Any:
    with contextlib.suppress(OSError):
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(lib, "mallinfo2"):
            lib.mallinfo2.restype = _MallInfo2
        return lib
    return None


@functools.cache
def _libsqlite() -> Any:
    """The libsqlite3 the sqlite3 module uses (dlopen returns the already-loaded library)."""
    import _sqlite3

    for name in (_sqlite3.__file__, ctypes.util.find_library("sqlite3") or "libsqlite3.so.0"):
        with contextlib.suppress(OSError, AttributeError):
            lib = ctypes.CDLL(name)
            lib.sqlite3_memory_used.restype = ctypes.c_int64
            lib.sqlite3_memory_highwater.restype = ctypes.c_int64
            lib.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
            return lib
    return None


def _pymalloc() -> dict[str, int]:
    """The summary lines of sys._debugmallocstats() (it prints to the C stderr; nothing while
    tracemalloc hooks the allocator)."""
    out: dict[str, int] = {}
    with tempfile.TemporaryFile() as f:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("#") and "=" in line:
            key, _, value = line[1:].partition("=")
            with contextlib.suppress(ValueError):
                out[" ".join(key.split())] = int(value.strip().replace(",", ""))
        elif "=" in line and "bytes in" in line:
            key, _, value = line.partition("=")
            with contextlib.suppress(ValueError):
                out[" ".join(key.split())] = int(value.strip().replace(",", ""))
    return out


def _inside_stats() -> dict[str, Any]:
    objs = gc.get_objects()
    types = Counter(type(o).__name__ for o in objs)
    del objs
    stats: dict[str, Any] = {
        "gc_objects": sum(types.values()),
        "gc_frozen": gc.get_freeze_count(),
        "gc_count": gc.get_count(),
        "gc_threshold": gc.get_threshold(),
        "gc_collections": [s["collections"] for s in gc.get_stats()],
        "allocated_blocks": sys.getallocatedblocks(),
        "top_types": types.most_common(25),
        "threads": len(sys._current_frames()),
    }
    pm = _pymalloc()
    stats["pymalloc"] = {
        k: v
        for k, v in pm.items()
        if k.startswith(("arenas allocated current", "arenas highwater", "bytes in allocated blocks"))
        or k.startswith(("bytes in available blocks", "bytes lost to pool", "bytes lost to quant"))
    }
    libc = _libc()
    if libc is not None and hasattr(libc, "mallinfo2"):
        mi = libc.mallinfo2()
        stats["malloc"] = {
            "arena": mi.arena,
            "mmapped": mi.hblkhd,
            "in_use": mi.uordblks,
            "free": mi.fordblks,
            "top_releasable": mi.keepcost,
        }
    lib = _libsqlite()
    if lib is not None:
        stats["sqlite_memory_used"] = lib.sqlite3_memory_used()
        stats["sqlite_memory_highwater"] = lib.sqlite3_memory_highwater(0)
    if tracemalloc.is_tracing():
        current, _peak = tracemalloc.get_traced_memory()
        stats["tracemalloc_traced"] = current
        stats["tracemalloc_own"] = tracemalloc.get_tracemalloc_memory()
    return stats


_BACKLOG = {"peak": 0, "interval_peak": 0}  # audit events queued in memory (AuditLog channels)


def _track_audit_backlog() -> None:
    """Wraps AuditLog._push to record the longest in-memory audit queue: a backlog allocates
    events (and their strings and dicts) in bulk, which can leave pymalloc arenas that stay."""
    from sentinel_gw.ops import audit

    push = audit.AuditLog._push

    def _push(self: Any, ch: Any, item: Any) -> None:
        push(self, ch, item)
        n = len(ch.mem)
        if n > _BACKLOG["interval_peak"]:
            _BACKLOG["interval_peak"] = n
            _BACKLOG["peak"] = max(_BACKLOG["peak"], n)

    audit.AuditLog._push = _push  # type: ignore[method-assign]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    out = Path(os.environ["BENCH_LEAK_OUT"])
    tag = (out / "request").read_text().strip()
    stats = _inside_stats()
    stats["audit_backlog_peak"] = _BACKLOG["peak"]
    stats["audit_backlog_interval_peak"] = _BACKLOG["interval_peak"]
    _BACKLOG["interval_peak"] = 0
    if tracemalloc.is_tracing() and tag.startswith("snap") and not tag.endswith("+gc"):
        tracemalloc.take_snapshot().dump(str(out / f"{tag}.tracemalloc"))
    if tag.endswith("+gc"):
        before = stats["gc_objects"]
        freed = gc.collect()
        stats = _inside_stats()
        stats["gc_collect_freed"] = freed
        stats["gc_objects_before_collect"] = before
    tmp = out / f"{tag}.json.tmp"
    tmp.write_text(json.dumps(stats))
    tmp.rename(out / f"{tag}.json")


def wrap(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC"]))
    import sentinel_gw.cli as cli

    if os.environ.get("BENCH_GC") == "default":
        cli._tune_gc = lambda: None  # type: ignore[attr-defined]
    _track_audit_backlog()
    signal.signal(signal.SIGUSR1, _on_signal)
    return int(cli.main(argv) or 0)


# -- the driver -----------------------------------------------------------------------------------


def smaps_split(pid: int) -> dict[str, Any]:
    """PSS (MiB) of one process by kind of mapping, plus USS (private pages, what a leak adds:
    PSS also moves when other processes mapping the same files start or exit), RSS, and the PSS of
    the largest file mappings."""
    kinds = ("heap", "anon", "shm", "file", "stack")
    split: dict[str, Any] = dict.fromkeys(kinds, 0.0)
    uss: dict[str, float] = dict.fromkeys(kinds, 0.0)
    files: dict[str, float] = {}
    rss = 0.0
    kind, name = "anon", ""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):
                    parts = line.split(None, 5)
                    name = parts[5].strip() if len(parts) > 5 else ""
                    if name == "[heap]":
                        kind = "heap"
                    elif name.startswith("[stack"):
                        kind = "stack"
                    elif name.endswith("-shm"):
                        kind = "shm"
                    elif name.startswith("/"):
                        kind = "file"
                    else:
                        kind = "anon"
                elif first == "Pss:":
                    kib = int(line.split()[1]) / 1024
                    split[kind] += kib
                    if kind == "file":
                        files[name] = files.get(name, 0.0) + kib
                elif first in ("Private_Clean:", "Private_Dirty:"):
                    uss[kind] += int(line.split()[1]) / 1024
                elif first == "Rss:":
                    rss += int(line.split()[1]) / 1024
    except OSError:
        pass
    split["total"] = sum(split[k] for k in kinds)
    split["uss"] = sum(uss.values())
    split["uss_by_kind"] = uss
    split["rss"] = rss
    split["top_files"] = sorted(files.items(), key=lambda kv: -kv[1])[:5]
    return split


def audit_toml(tmp: Path, sink: str) -> str:
    if sink == "none":
        return "sinks = []"
    if sink == "jsonl":
        return f'sinks = ["jsonl"]\njsonl_path = {json.dumps(str(tmp / "audit.jsonl"))}'
    return f'sinks = ["sqlite"]\nsqlite_path = {json.dumps(str(tmp / "audit.db"))}'


async def ask(pid: int, out: Path, tag: str, timeout: float = 120) -> dict[str, Any]:
    path = out / f"{tag}.json"
    path.unlink(missing_ok=True)  # an earlier run into the same --out left one
    (out / "request").write_text(tag)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway did not answer {tag}")
        await asyncio.sleep(0.05)
    return json.loads(path.read_text())


async def probe(args: argparse.Namespace, sink: str, out: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(HERE))
    from benchlib import PY, config_text, echo_backends, gateway_env, open_stdio, progress, throughput

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="leak-", dir=out))
    text = config_text(tmp, echo_backends(3))
    head, _, rest = text.partition('sinks = ["sqlite"]\n')
    rest = rest.split("\n", 1)[1]  # drop the sqlite_path line
    cfg = tmp / "sentinel.toml"
    cfg.write_text(head + audit_toml(tmp, sink) + "\n" + rest)
    env = gateway_env(tmp)
    env["BENCH_LEAK_OUT"] = str(out)
    if args.tracemalloc:
        env["BENCH_TRACEMALLOC"] = str(args.frames)
    if args.gc == "default":
        env["BENCH_GC"] = "default"
    if args.accel is not None:
        env["SENTINEL_GW_ACCEL"] = args.accel
    snaps = {int(x) for x in args.snap_at.split(",") if x}
    gw = await open_stdio([PY, str(Path(__file__).resolve()), "wrap", "serve", "--config", str(cfg)], env)
    samples: list[dict[str, Any]] = []
    log = open(out / "samples.jsonl", "a")  # noqa: SIM115
    try:
        await asyncio.sleep(1.0)
        done = 0
        while True:
            await asyncio.sleep(args.settle)
            tag = f"{'snap' if done in snaps else 'step'}-{done}"
            inside = await ask(gw.pid, out, tag)
            sample = {
                "sink": sink,
                "gc": args.gc,
                "calls": done,
                "t": time.time(),
                "pss": smaps_split(gw.pid),
            }
            sample.update(inside)
            if args.collect:
                sample["after_collect"] = await ask(gw.pid, out, f"{tag}+gc")
                sample["pss_after_collect"] = smaps_split(gw.pid)
            samples.append(sample)
            log.write(json.dumps(sample) + "\n")
            log.flush()
            progress(f"[{sink}] {brief(sample)}")
            if done >= args.calls:
                break
            n = min(args.step, args.calls - done)
            await throughput(gw, n, args.concurrency)
            done += n
    finally:
        log.close()
        await gw.close()
    return samples


def brief(s: dict[str, Any]) -> str:
    p = s["pss"]
    pm = s.get("pymalloc", {})
    mi = s.get("malloc", {})
    text = (
        f"{s['calls']:>7} calls: PSS {p['total']:.1f} MiB (heap {p['heap']:.1f}, anon {p['anon']:.1f}, "
        f"shm {p['shm']:.2f}, file {p['file']:.1f}), USS {p['uss']:.1f}, RSS {p['rss']:.1f}; "
        f"objects {s['gc_objects']:,}, blocks "
        f"{s['allocated_blocks']:,}, pymalloc arenas {pm.get('arenas allocated current', 0)}, "
        f"malloc in use {mi.get('in_use', 0) / 2**20:.2f} free {mi.get('free', 0) / 2**20:.2f} "
        f"mmapped {mi.get('mmapped', 0) / 2**20:.2f} MiB, "
        f"sqlite {s.get('sqlite_memory_used', 0) / 2**20:.2f} MiB"
    )
    peak, run_peak = s.get("audit_backlog_interval_peak", 0), s.get("audit_backlog_peak", 0)
    text += f", audit backlog peak {peak} (run {run_peak})"
    if "tracemalloc_traced" in s:
        text += f", traced {s['tracemalloc_traced'] / 2**20:.2f} MiB"
    return text


def tracemalloc_report(out: Path, top: int) -> str:
    files = sorted(out.glob("snap-*.tracemalloc"), key=lambda p: int(p.stem.split("-")[1]))
    lines: list[str] = []
    flt = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib*")]
    prev = None
    for f in files:
        snap = tracemalloc.Snapshot.load(str(f)).filter_traces(flt)
        if prev is not None:
            a, b = prev[0], f.stem
            total = sum(s.size for s in snap.statistics("filename")) - sum(
                s.size for s in prev[1].statistics("filename")
            )
            lines.append(f"\n== {a} -> {b}: traced {total / 1024:+.0f} KiB; top by line")
            for stat in snap.compare_to(prev[1], "lineno")[:top]:
                if stat.size_diff == 0:
                    continue
                fr = stat.traceback[0]
                lines.append(
                    f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
                    f"{short(fr.filename)}:{fr.lineno}  (now {stat.size / 1024:.0f} KiB)"
                )
            lines.append(f"-- {a} -> {b}: top by traceback")
            for stat in snap.compare_to(prev[1], "traceback")[: max(3, top // 3)]:
                if stat.size_diff <= 0:
                    continue
                lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
                for fr in stat.traceback[-6:]:  # oldest first: the allocation site last
                    lines.append(f"      {short(fr.filename)}:{fr.lineno}")
        prev = (f.stem, snap)
    return "\n".join(lines)


def short(path: str) -> str:
    for marker in ("/src/", "/lib/python3"):
        i = path.find(marker)
        if i >= 0:
            return path[i + 1 :] if marker == "/src/" else "stdlib" + path[path.find("/", i + 5) :]
    return path


def table(samples: list[dict[str, Any]]) -> str:
    head = (
        "| sink | calls | PSS | USS | heap | anon | file | objects | blocks | pymalloc arenas "
        "| malloc in use | malloc free | sqlite heap | audit backlog peak |"
    )
    lines = [head, "|" + "---|" * 14]
    for s in samples:
        p, pm, mi = s["pss"], s.get("pymalloc", {}), s.get("malloc", {})
        lines.append(
            f"| {s['sink']} | {s['calls']:,} | {p['total']:.2f} | {p['uss']:.2f} | {p['heap']:.2f} "
            f"| {p['anon']:.2f} | {p['file']:.2f} | {s['gc_objects']:,} | {s['allocated_blocks']:,} "
            f"| {pm.get('arenas allocated current', 0)} | {mi.get('in_use', 0) / 2**20:.2f} "
            f"| {mi.get('free', 0) / 2**20:.2f} | {s.get('sqlite_memory_used', 0) / 2**20:.2f} "
            f"| {s.get('audit_backlog_interval_peak', 0)} |"
        )
    return "\n".join(lines)


def type_growth(samples: list[dict[str, Any]], first: int, top: int = 10) -> str:
    """Object counts by type: the sample at `first` calls against the last one."""
    base = next((s for s in samples if s["calls"] >= first), samples[0])
    last = samples[-1]
    a, b = dict(base["top_types"]), dict(last["top_types"])
    diff = sorted(((b.get(k, 0) - a.get(k, 0), k) for k in set(a) | set(b)), reverse=True)
    return ", ".join(f"{k} {d:+,}" for d, k in diff[:top] if d)


# -- the SQLite sink alone: statement cache against batch sizes -----------------------------------


def sqlite_batches(batches: int, seed: int, max_batch: int) -> None:
    """Writes `batches` batches of random sizes (1..max_batch, as the audit pipeline's batches
    vary with load) through SqliteSink._write_sync, as shipped, and prints SQLite's heap
    (sqlite3_memory_used) and the write time per row as it goes."""
    import random

    sys.path.insert(0, str(ROOT / "src"))
    from sentinel_gw.ops import audit

    lib = _libsqlite()
    cols = len(audit._COLUMNS)

    print(f"audit columns {cols}, rows per INSERT {audit._ROWS_PER_INSERT}, batches 1..{max_batch}")
    variant = "as shipped"
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as d:
        sink = audit.SqliteSink(Path(d) / "audit.db")
        sink._open_sync()
        assert sink._conn is not None
        cache = sink._conn.execute("PRAGMA cache_size").fetchone()[0]
        base = lib.sqlite3_memory_used()
        rows = 0
        spent = 0.0
        trail = []
        seq = 0
        for b in range(1, batches + 1):
            n = rng.randint(1, max_batch)
            events = []
            for _ in range(n):
                seq += 1
                events.append(
                    audit.AuditEvent(
                        method="tools/call",
                        status="ok",
                        id=f"{seq:032x}",
                        time="2026-01-01T00:00:00.000Z",
                        subject="bench",
                        roles=["bench"],
                        tool="echo",
                        args={"message": "hello"},
                        hash=f"{seq:064x}",
                    )
                )
            t0 = time.perf_counter()
            sink._write_sync(events)
            spent += time.perf_counter() - t0
            rows += n
            if b % max(1, batches // 10) == 0:
                trail.append(f"{b}: {(lib.sqlite3_memory_used() - base) / 2**20:.2f}")
        print(
            f"{variant:>13} (cache_size {cache}): SQLite heap growth by batches (MiB) "
            + ", ".join(trail)
            + f"; {spent / rows * 1e6:.1f} µs per row written"
        )
        sink._close_sync()
        gc.collect()


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out or tempfile.mkdtemp(prefix="leak-probe-"))
    everything: list[dict[str, Any]] = []
    for sink in [s.strip() for s in args.audit.split(",") if s.strip()]:
        samples = await probe(args, sink, out / sink)
        everything += samples
        print(
            f"\n[{sink}] object types, {args.step:,} calls -> {samples[-1]['calls']:,}: "
            + type_growth(samples, args.step)
        )
        if args.tracemalloc:
            print(
                f"\n[{sink}] tracemalloc (own memory not counted):" + tracemalloc_report(out / sink, args.top)
            )
    print()
    print(table(everything))
    print(f"\nraw samples: {out}/*/samples.jsonl")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "wrap":
        sys.exit(wrap(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "sqlite-batches":
        sqlite_batches(
            int(sys.argv[2]) if len(sys.argv) > 2 else 3000,
            seed=1,
            max_batch=int(sys.argv[3]) if len(sys.argv) > 3 else 200,
        )
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--step", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--audit", default="sqlite", help="comma-separated sinks to run one after the other")
    ap.add_argument("--gc", choices=("tuned", "default"), default="tuned")
    ap.add_argument("--accel", choices=("0", "1"), default=None, help="SENTINEL_GW_ACCEL for the gateway")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--frames", type=int, default=6, help="tracemalloc traceback depth")
    ap.add_argument("--snap-at", default="10000,50000,100000,200000,300000")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--collect", action="store_true", help="also sample after a gc.collect() each step")
    ap.add_argument("--settle", type=float, default=0.3, help="seconds between load and sample")
    ap.add_argument("--out", help="folder for samples and snapshots (default: a new temporary one)")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
