"""The audit pipeline: sinks, hash chain, spool and replay, restarts, CLI helpers, plugin registry."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sqlite3
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sentinel_gw.config_schema import AuditConfig, Config
from sentinel_gw.ops import plugins
from sentinel_gw.ops.audit import (
    GENESIS,
    AuditError,
    AuditEvent,
    AuditLog,
    JsonlSink,
    SqliteSink,
    args_policy,
    build_sinks,
    canonical_json,
    compute_hash,
    export_jsonl,
    format_event,
    open_sink_for_cli,
    parse_since,
    query,
    tail,
    verify,
    verify_chain,
)
from sentinel_gw.ops.plugins import PluginError

# --- helpers -------------------------------------------------------------------------------------


class MemorySink:
    """A sink in memory that can be made to fail, hang, or refuse to open."""

    def __init__(self, name: str = "mem") -> None:
        self.name = name
        self.events: list[AuditEvent] = []
        self.fail = False
        self.fail_calls = 0  # fail this many more write calls
        self.fail_open = 0  # fail this many more open calls
        self.hang: asyncio.Event | None = None  # writes wait for this event
        self.writes = 0

    async def open(self) -> None:
        if self.fail_open:
            self.fail_open -= 1
            raise ConnectionError("cannot connect")

    async def write_batch(self, events: list[AuditEvent]) -> None:
        self.writes += 1
        if self.hang is not None:
            await self.hang.wait()
        if self.fail:
            raise ConnectionError("sink down")
        if self.fail_calls:
            self.fail_calls -= 1
            raise ConnectionError("sink flaky")
        self.events.extend(events)

    async def close(self) -> None:
        pass

    async def last_hash(self) -> str | None:
        return self.events[-1].hash if self.events else None

    def iter_all(self) -> Iterator[AuditEvent]:
        return iter(list(self.events))

    def tail(self, n: int) -> list[AuditEvent]:
        return self.events[-n:]

    def query(self, **kw: object) -> list[AuditEvent]:
        return list(self.events)


def call(i: int, **kw: object) -> AuditEvent:
    fields: dict[str, object] = {
        "method": "tools/call",
        "status": "success",
        "tool": f"tool{i % 3}",
        "subject": "alice" if i % 2 else "bob",
        "args": {"i": i},
        "latency_ms": i,
        "request_id": str(i),
    }
    fields.update(kw)
    return AuditEvent(**fields)  # type: ignore[arg-type]


def make_log(sinks: list[object], spool: Path, **kw: object) -> AuditLog:
    opts: dict[str, object] = {
        "queue_size": 1000,
        "batch_size": 50,
        "flush_interval": 0.005,
        "shutdown_deadline": 2.0,
        "retry_initial": 0.005,
        "retry_max": 0.02,
    }
    opts.update(kw)
    return AuditLog(sinks, spool_dir=spool, **opts)  # type: ignore[arg-type]


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


def spooled_events(spool: Path, sink: str) -> list[AuditEvent]:
    out: list[AuditEvent] = []
    base = spool / sink
    if not base.exists():
        return out
    for run in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for seg in sorted(run.glob("*.jsonl")):
            out += [AuditEvent.from_dict(json.loads(line)) for line in seg.read_text().splitlines()]
    return out


def ids(events: list[AuditEvent]) -> list[str]:
    return [e.id for e in events]


# --- events and the chain ------------------------------------------------------------------------


def test_canonical_json_and_hash() -> None:
    ev = call(1, id="abc", time="2025-01-01T00:00:00.000Z", prev_hash=GENESIS)
    text = canonical_json(ev)
    assert '"hash"' not in text
    assert " " not in text
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert compute_hash(ev) == hashlib.sha256((GENESIS + text).encode()).hexdigest()


def _reference_canonical(ev: AuditEvent) -> str:
    """The definition canonical_json must match byte for byte (stored chains depend on it)."""
    data = {k: v for k, v in ev.to_dict().items() if k != "hash"}
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class _Str(str):
    pass


CANONICAL_VALUES: list[object] = [
    None,
    "",
    "plain",
    'quote " backslash \\ newline \n tab \t nul \x00',
    "caf\u00e9 \u2603 \U0001f600",
    "\ud800 lone surrogate",
    _Str("a str subclass"),
    0,
    -7,
    2**80,
    True,
    False,
    0.1,
    1e300,
    -0.0,
    12.5,
    [],
    ["b", "a", "\u00e9"],
    {"z": 1, "a": [1, 2.5, None, {"y": "x", "b": True}], "\u00e9": "\u2603"},
]


@pytest.mark.parametrize("value", CANONICAL_VALUES, ids=repr)
def test_canonical_json_matches_the_reference_encoding(value: object) -> None:
    # Every field, each in turn, takes every kind of value the encoder may meet.
    for name in (
        "kind",
        "method",
        "status",
        "id",
        "time",
        "session",
        "subject",
        "roles",
        "tool",
        "args",
        "error",
        "latency_ms",
        "request_id",
        "detail",
        "prev_hash",
        "upstream_id",
    ):
        ev = call(3, id="abc", time="2025-01-01T00:00:00.000Z", prev_hash=GENESIS)
        setattr(ev, name, value)
        assert canonical_json(ev) == _reference_canonical(ev), name


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"x": float("-inf")}, {1: {2}}])
def test_canonical_json_refuses_what_the_reference_refuses(bad: object) -> None:
    ev = call(3, id="abc", time="2025-01-01T00:00:00.000Z", prev_hash=GENESIS)
    ev.args = bad
    with pytest.raises((TypeError, ValueError)):
        _reference_canonical(ev)
    with pytest.raises((TypeError, ValueError)):
        canonical_json(ev)


def chain(n: int) -> list[AuditEvent]:
    out: list[AuditEvent] = []
    prev = GENESIS
    for i in range(n):
        ev = call(i, id=f"{i:04d}", time="2025-01-01T00:00:00.000Z", prev_hash=prev)
        ev.hash = compute_hash(ev)
        prev = ev.hash
        out.append(ev)
    return out


def test_verify_chain_ok_and_tampering() -> None:
    events = chain(10)
    assert verify_chain(events).ok
    assert verify_chain(events).checked == 10

    modified = chain(10)
    modified[4].status = "denied"
    r = verify_chain(modified)
    assert (r.ok, r.first_bad_id, r.position) == (False, "0004", 4)
    assert "modified" in r.reason

    rehashed = chain(10)  # modified and re-hashed: the next row's link breaks
    rehashed[4].status = "denied"
    rehashed[4].hash = compute_hash(rehashed[4])
    r = verify_chain(rehashed)
    assert (r.ok, r.first_bad_id) == (False, "0005")

    deleted = chain(10)
    del deleted[6]
    r = verify_chain(deleted)
    assert (r.ok, r.first_bad_id) == (False, "0007")
    assert "deleted" in r.reason

    swapped = chain(10)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    assert not verify_chain(swapped).ok

    moved = chain(10)
    moved.append(moved.pop(3))
    assert not verify_chain(moved).ok

    # a row that starts a chain links to nothing, so it cannot be caught moving; it is counted
    restarted = chain(10)
    restarted.append(restarted.pop(0))
    assert verify_chain(restarted).starts == 1


def test_verify_chain_accepts_interleaved_chains_and_duplicates() -> None:
    a, b = chain(5), chain(5)
    for i, ev in enumerate(b):  # a second gateway's chain, forked from a's second row
        ev.id = f"b{i}"
        ev.prev_hash = a[1].hash if i == 0 else b[i - 1].hash
        ev.hash = compute_hash(ev)
    mixed = [a[0], a[1], b[0], a[2], b[1], b[2], a[3], a[4], b[3], b[4], b[4]]
    r = verify_chain(mixed)
    assert r.ok and r.checked == 11 and r.duplicates == 1


# --- sinks together ------------------------------------------------------------------------------


async def test_sqlite_and_jsonl_together(tmp_path: Path) -> None:
    db, jl = SqliteSink(tmp_path / "a.db"), JsonlSink(tmp_path / "a.jsonl")
    log = make_log([db, jl], tmp_path / "spool")
    await log.open()
    emitted = [call(i) for i in range(500)]
    emitted.append(AuditEvent(kind="gateway", method="config.reload", status="ok", detail={"file": "x.toml"}))
    for ev in emitted:
        log.emit(ev)
    assert await log.drain(20)
    await log.close()

    for sink in (db, jl):
        stored = list(sink.iter_all())
        assert [e.to_dict() for e in stored] == [e.to_dict() for e in emitted]
        r = verify(sink)
        assert r.ok and r.checked == 501 and r.starts == 1
    st = log.stats()
    assert st["dropped"] == 0 and st["spooled"] == 0
    assert st["sinks"]["sqlite"]["written"] == st["sinks"]["jsonl"]["written"] == 501
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").rglob("*.jsonl"))


async def test_events_are_stamped_and_normalised(tmp_path: Path) -> None:
    sink = MemorySink()
    log = make_log([sink], tmp_path / "spool")
    await log.open()
    ev = AuditEvent(
        method="tools/call",
        status="error",
        roles=("admin",),  # type: ignore[arg-type]
        latency_ms=3,
        error="backend said: invalid token=abcdef123 for Bearer abcdefghijklmnop",
        subject="bad\ud800surrogate",
        args={"x": {1, 2}},  # not JSON: made safe rather than raising
        detail=None,
    )
    log.emit(ev)
    assert await log.drain(10)
    await log.close()
    (stored,) = sink.events
    assert len(stored.id) == 32 and stored.time.endswith("Z") and len(stored.time) == 24
    assert stored.roles == ["admin"]
    assert stored.latency_ms == 3.0 and isinstance(stored.latency_ms, float)
    assert (
        stored.error is not None
        and "abcdef123" not in stored.error
        and "abcdefghijklmnop" not in stored.error
    )
    assert stored.subject == "bad?surrogate"
    assert isinstance(stored.args, dict)
    assert stored.prev_hash == GENESIS and stored.hash == compute_hash(stored)


async def test_ids_are_unique_and_ordered(tmp_path: Path) -> None:
    sink = MemorySink()
    log = make_log([sink], tmp_path / "spool")
    await log.open()
    for i in range(2000):
        log.emit(call(i))
    await log.close()
    got = ids(sink.events)
    assert got == sorted(got) and len(set(got)) == 2000


# --- failure, spool, replay ----------------------------------------------------------------------


async def test_failing_sink_is_spooled_and_replayed_in_order(tmp_path: Path) -> None:
    good, flaky = MemorySink("good"), MemorySink("flaky")
    spool = tmp_path / "spool"
    log = make_log([good, flaky], spool)
    await log.open()
    flaky.fail = True
    emitted: list[AuditEvent] = []
    for i in range(400):
        ev = call(i)
        emitted.append(ev)
        log.emit(ev)
        if i % 50 == 0:
            await asyncio.sleep(0.001)
    # the healthy sink is not held back by the failing one
    await until(lambda: len(good.events) == 400)
    assert flaky.events == []
    await until(lambda: log.stats()["sinks"]["flaky"]["pending_memory"] == 0)
    assert spooled_events(spool, "flaky") and log.stats()["sinks"]["flaky"]["healthy"] == 0

    flaky.fail = False
    assert await log.drain(20)
    assert ids(flaky.events) == ids(emitted)  # in order, exactly once
    assert ids(good.events) == ids(emitted)
    st = log.stats()["sinks"]["flaky"]
    assert st["replayed"] > 0 and st["written"] == 400 and st["dropped"] == 0
    assert st["spooled"] == st["replayed"]
    await log.close()
    assert spooled_events(spool, "flaky") == []


async def test_intermittent_failures_keep_order(tmp_path: Path) -> None:
    sink = MemorySink()
    log = make_log([sink], tmp_path / "spool", batch_size=7, queue_size=40)
    await log.open()
    emitted: list[AuditEvent] = []
    for rnd in range(30):
        if rnd % 4 == 1:
            sink.fail = True
        elif rnd % 4 == 3:
            sink.fail = False
        if rnd % 5 == 0:
            sink.fail_calls = 2
        for i in range(25):
            ev = call(rnd * 100 + i)
            emitted.append(ev)
            log.emit(ev)
        await asyncio.sleep(0.003)
    sink.fail = False
    assert await log.drain(30)
    assert ids(sink.events) == ids(emitted)
    await log.close()
    st = log.stats()
    assert st["dropped"] == 0 and st["spooled"] > 0 and st["replayed"] == st["spooled"]


async def test_queue_overflow_spools_instead_of_dropping(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.hang = asyncio.Event()
    spool = tmp_path / "spool"
    log = make_log([sink], spool, queue_size=10, batch_size=5)
    await log.open()
    emitted = [call(i) for i in range(100)]
    for ev in emitted:
        log.emit(ev)
    st = log.stats()
    assert st["queued"] == 100 and st["dropped"] == 0
    assert st["spooled"] >= 85 and st["pending_memory"] <= 10
    sink.hang.set()
    sink.hang = None
    assert await log.drain(20)
    assert ids(sink.events) == ids(emitted)
    await log.close()


async def test_emit_never_blocks_50k(tmp_path: Path) -> None:
    sink = MemorySink()
    log = AuditLog([sink], spool_dir=tmp_path / "spool", flush_interval=0.01, retry_initial=0.01)
    await log.open()
    emitted = [call(i) for i in range(50_000)]
    for ev in emitted:  # no await anywhere in this loop
        log.emit(ev)
    assert log.stats()["queued"] == 50_000
    assert await log.drain(60)
    assert ids(sink.events) == ids(emitted)
    await log.close()
    assert log.stats()["dropped"] == 0


async def test_emit_before_open_is_chained_at_open(tmp_path: Path) -> None:
    sink = MemorySink()
    log = make_log([sink], tmp_path / "spool")
    log.emit(call(0))
    log.emit(call(1))
    await log.open()
    log.emit(call(2))
    await log.close()
    assert [e.request_id for e in sink.events] == ["0", "1", "2"]
    assert verify_chain(sink.events).ok


async def test_sink_down_at_startup_is_not_fatal(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.fail_open = 3
    log = make_log([sink], tmp_path / "spool")
    await log.open()  # does not raise
    emitted = [call(i) for i in range(120)]
    for ev in emitted:
        log.emit(ev)
    assert await log.drain(20)
    assert ids(sink.events) == ids(emitted)
    await log.close()


# --- shutdown and restart ------------------------------------------------------------------------


async def test_shutdown_with_dead_sink_spools_everything(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    sink = MemorySink("db")
    sink.fail = True
    log = make_log([sink], spool, shutdown_deadline=0.2)
    await log.open()
    emitted = [call(i) for i in range(300)]
    for ev in emitted:
        log.emit(ev)
    await log.close()
    assert ids(spooled_events(spool, "db")) == ids(emitted)
    st = log.stats()
    assert st["pending_spool"] == 300 and st["dropped"] == 0
    for f in spool.rglob("*.jsonl"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


async def test_shutdown_with_hung_sink_meets_the_deadline(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    sink = MemorySink("db")
    sink.hang = asyncio.Event()  # never set: writes never return
    log = make_log([sink], spool, shutdown_deadline=0.1)
    await log.open()
    emitted = [call(i) for i in range(300)]
    for ev in emitted:
        log.emit(ev)
    await asyncio.sleep(0.02)  # let a batch get stuck in flight
    await log.close()
    assert ids(spooled_events(spool, "db")) == ids(emitted)


async def test_restart_replays_the_spool_and_continues_the_chain(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    dead = MemorySink("db")
    dead.fail = True
    log1 = make_log([dead], spool)
    await log1.open()
    first = [call(i) for i in range(130)]
    for ev in first:
        log1.emit(ev)
    await log1.close()

    alive = MemorySink("db")
    log2 = make_log([alive], spool)
    await log2.open()
    second = [call(1000 + i) for i in range(20)]
    for ev in second:
        log2.emit(ev)
    assert await log2.drain(20)
    await log2.close()

    assert ids(alive.events) == ids(first) + ids(second)
    assert second[0].prev_hash == first[-1].hash
    r = verify_chain(alive.events)
    assert r.ok and r.starts == 1
    assert log2.stats()["sinks"]["db"]["replayed"] == 130
    assert list((spool / "db").iterdir()) == []


async def test_partly_replayed_segment_is_not_repeated(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    dead = MemorySink("db")
    dead.fail = True
    log1 = make_log([dead], spool, batch_size=100)
    await log1.open()
    first = [call(i) for i in range(100)]
    for ev in first:
        log1.emit(ev)
    await log1.close()

    # a smaller batch size replays the 100-event segment in several writes; the sink then hangs
    slow = MemorySink("db")
    slow.fail_calls = 0
    gate = asyncio.Event()
    orig = slow.write_batch

    async def write_then_hang(events: list[AuditEvent]) -> None:
        if slow.events:
            await gate.wait()
        await orig(events)

    slow.write_batch = write_then_hang  # type: ignore[method-assign]
    log2 = make_log([slow], spool, batch_size=30, shutdown_deadline=0.05)
    await log2.open()
    await until(lambda: len(slow.events) == 30)
    await log2.close()

    final = MemorySink("db")
    log3 = make_log([final], spool)
    await log3.open()
    assert await log3.drain(20)
    await log3.close()
    assert ids(slow.events) + ids(final.events) == ids(first)


async def test_sqlite_chain_continues_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    for run in range(3):
        db = SqliteSink(path)
        log = make_log([db], tmp_path / "spool")
        await log.open()
        for i in range(10):
            log.emit(call(run * 10 + i))
        await log.close()
    r = verify(SqliteSink(path))
    assert r.ok and r.checked == 30 and r.starts == 1


async def test_live_spool_of_another_gateway_is_not_adopted(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    spool = tmp_path / "spool"
    dead = MemorySink("db")
    dead.fail = True
    log1 = make_log([dead], spool)
    await log1.open()
    for i in range(10):
        log1.emit(call(i))
    await log1.close()
    (run,) = list((spool / "db").iterdir())
    fd = os.open(run / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another gateway is alive and owns it
    try:
        other = MemorySink("db")
        log2 = make_log([other], spool)
        await log2.open()
        await log2.close()
        assert other.events == [] and run.exists()
    finally:
        os.close(fd)
    final = MemorySink("db")
    log3 = make_log([final], spool)
    await log3.open()
    assert await log3.drain(10)
    await log3.close()
    assert len(final.events) == 10


async def test_two_gateways_share_one_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    a, b = SqliteSink(path), SqliteSink(path)
    log_a, log_b = make_log([a], tmp_path / "spool"), make_log([b], tmp_path / "spool")
    await log_a.open()
    await log_b.open()
    for i in range(200):
        (log_a if i % 3 else log_b).emit(call(i))
        if i % 20 == 0:
            await asyncio.sleep(0.002)
    await log_a.close()
    await log_b.close()
    r = verify(SqliteSink(path))
    assert r.ok and r.checked == 200


# --- sqlite and jsonl details --------------------------------------------------------------------


async def test_sqlite_tampering_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = make_log([SqliteSink(path)], tmp_path / "spool")
    await log.open()
    for i in range(10):
        log.emit(call(i))
    await log.close()
    assert verify(SqliteSink(path)).ok

    def tampered(sql: str) -> str:
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())
        conn = sqlite3.connect(copy)
        conn.executescript(sql)
        conn.close()
        r = verify(SqliteSink(copy))
        assert not r.ok
        copy.unlink()
        return r.reason

    assert "modified" in tampered("UPDATE audit_events SET status = 'denied' WHERE seq = 5")
    assert "deleted" in tampered("DELETE FROM audit_events WHERE seq = 5")
    tampered(
        "UPDATE audit_events SET seq = -1 WHERE seq = 3;"
        "UPDATE audit_events SET seq = 3 WHERE seq = 4;"
        "UPDATE audit_events SET seq = 4 WHERE seq = -1;"
    )


async def test_sqlite_file_mode_schema_and_idempotent_writes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.db"
    sink = SqliteSink(path)
    await sink.open()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    events = chain(3)
    await sink.write_batch(events)
    await sink.write_batch(events)  # a retried batch: ignored by id
    assert await sink.last_hash() == events[-1].hash
    await sink.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM audit_events").fetchone()[0] == 3
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 1
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.commit()
    conn.close()
    with pytest.raises(AuditError, match="newer"):
        await SqliteSink(path).open()


async def test_jsonl_sink_repairs_a_partial_line_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    events = chain(4)
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events[:2]) + '{"id": "half')
    sink = JsonlSink(path)
    await sink.open()
    assert await sink.last_hash() == events[1].hash
    await sink.write_batch(events[2:])
    await sink.close()
    assert ids(list(sink.iter_all())) == ids(events)
    assert verify(sink).ok


async def test_jsonl_to_stderr(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sink = JsonlSink("-")
    log = make_log([sink], tmp_path / "spool")
    await log.open()
    log.emit(call(1))
    await log.close()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert json.loads(line)["request_id"] == "1"
    with pytest.raises(AuditError, match="stderr"):
        list(sink.iter_all())


def test_verify_reports_a_corrupt_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    events = chain(3)
    lines = [json.dumps(e.to_dict()) for e in events]
    lines.insert(1, "not json")
    path.write_text("\n".join(lines) + "\n")
    r = verify(JsonlSink(path))
    assert not r.ok and ":2:" in r.reason


# --- CLI functions -------------------------------------------------------------------------------


def sample_events() -> list[AuditEvent]:
    out = []
    for i, (subject, tool, status, when) in enumerate(
        [
            ("alice", "fs_read", "success", "2025-01-01T10:00:00.000Z"),
            ("bob", "fs_write", "denied", "2025-01-02T10:00:00.000Z"),
            ("alice", "fs_write", "success", "2025-01-03T10:00:00.000Z"),
            ("alice", "git_log", "error", "2025-01-04T10:00:00.000Z"),
            ("carol", "fs_read", "rate_limited", "2025-01-05T10:00:00.000Z"),
        ]
    ):
        out.append(
            AuditEvent(
                method="tools/call", subject=subject, tool=tool, status=status, time=when, args={"i": i}
            )
        )
    return out


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
async def test_query_tail_export(tmp_path: Path, kind: str) -> None:
    sink = SqliteSink(tmp_path / "a.db") if kind == "sqlite" else JsonlSink(tmp_path / "a.jsonl")
    log = make_log([sink], tmp_path / "spool")
    await log.open()
    for ev in sample_events():
        log.emit(ev)
    await log.close()

    def tools(events: list[AuditEvent]) -> list[str | None]:
        return [e.tool for e in events]

    assert tools(tail(sink, 2)) == ["git_log", "fs_read"]
    assert tools(query(sink, subject="alice")) == ["fs_read", "fs_write", "git_log"]
    assert tools(query(sink, tool="fs_*")) == ["fs_read", "fs_write", "fs_write", "fs_read"]
    assert tools(query(sink, status="denied")) == ["fs_write"]
    assert tools(query(sink, since="2025-01-03")) == ["fs_write", "git_log", "fs_read"]
    assert tools(query(sink, subject="alice", tool="fs_*", since="2025-01-02T00:00:00Z")) == ["fs_write"]
    assert tools(query(sink, subject="alice", limit=1)) == ["git_log"]
    assert query(sink, subject="nobody") == []

    buf = io.StringIO()
    assert export_jsonl(sink, buf) == 5
    lines = [AuditEvent.from_dict(json.loads(x)) for x in buf.getvalue().splitlines()]
    assert verify_chain(lines).ok and tools(lines) == tools(tail(sink, 10))
    out = tmp_path / "export.jsonl"
    assert export_jsonl(sink, out) == 5
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "alice" in format_event(lines[0]) and "fs_read" in format_event(lines[0])


def test_missing_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no audit database"):
        tail(SqliteSink(tmp_path / "nope.db"), 5)


def test_parse_since() -> None:
    from datetime import datetime, timezone

    now = datetime(2025, 1, 10, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_since("2h", now=now) == "2025-01-10T10:00:00.000Z"
    assert parse_since("7d", now=now) == "2025-01-03T12:00:00.000Z"
    assert parse_since("90s", now=now) == "2025-01-10T11:58:30.000Z"
    assert parse_since("2025-01-02") == "2025-01-02T00:00:00.000Z"
    assert parse_since("2025-01-02T03:04:05+02:00") == "2025-01-02T01:04:05.000Z"
    assert parse_since("2025-01-02T03:04:05Z") == "2025-01-02T03:04:05.000Z"
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


# --- config glue and plugins ---------------------------------------------------------------------


def test_config_defaults_and_cli_sink(tmp_path: Path) -> None:
    cfg = Config(audit=AuditConfig(sinks=("jsonl", "sqlite"), jsonl_path="-"), base_dir=str(tmp_path))
    sinks = build_sinks(cfg)
    assert isinstance(sinks[0], JsonlSink) and sinks[0].to_stderr
    assert isinstance(sinks[1], SqliteSink) and sinks[1].path == tmp_path / "sentinel-audit.db"
    assert isinstance(open_sink_for_cli(cfg, tmp_path), SqliteSink)  # stderr cannot be read back
    log = AuditLog.from_config(cfg)
    assert log._spool_dir == tmp_path / "sentinel-audit-spool"
    cfg2 = Config(audit=AuditConfig(sinks=("jsonl",), jsonl_path="logs/a.jsonl"), base_dir=str(tmp_path))
    sink = open_sink_for_cli(cfg2)
    assert isinstance(sink, JsonlSink) and sink.path == tmp_path / "logs" / "a.jsonl"


def test_args_policy_overrides() -> None:
    cfg = AuditConfig(args="redacted", tool_args={"fs_read": "full", "vault": "none", "odd": "bogus"})
    assert args_policy(cfg, "fs_read") == "full"
    assert args_policy(cfg, "vault") == "none"
    assert args_policy(cfg, "other") == "redacted"
    assert args_policy(cfg, None) == "redacted"
    assert args_policy(cfg, "odd") == "redacted"


def test_plugins_builtin_and_unknown() -> None:
    assert plugins.get("audit_sink", "sqlite") is not None
    assert {"sqlite", "jsonl", "postgres"} <= set(plugins.names("audit_sink"))
    with pytest.raises(PluginError, match=r"unknown audit sink 'nope' \(known: jsonl, postgres, sqlite"):
        plugins.get("audit_sink", "nope")


def test_plugins_missing_extra_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fake_pg_plugin_mod.py").write_text("import surely_not_installed_psycopg_x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(
        plugins._registry,
        ("audit_sink", "fakepg"),
        plugins._Entry(None, "fake_pg_plugin_mod:create_sink", "audit"),
    )
    with pytest.raises(PluginError) as info:
        plugins.get("audit_sink", "fakepg")
    assert str(info.value) == "audit sink 'fakepg' needs the 'audit' extra: pip install 'sentinel-gw[audit]'"
    assert "fake_pg_plugin_mod" not in sys.modules


def test_plugins_lazy_import_and_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fake_sink_plugin_mod.py").write_text(
        "def create_sink(cfg, base):\n    return ('made', base)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_registry", dict(plugins._registry))
    plugins.register("audit_sink", "lazy", "fake_sink_plugin_mod:create_sink", extra="audit")
    assert "fake_sink_plugin_mod" not in sys.modules  # not imported until asked for
    assert plugins.get("audit_sink", "lazy")(None, 1) == ("made", 1)

    class EP:
        name = "audit_sink:thirdparty"
        value = "fake_sink_plugin_mod:create_sink"

        def load(self) -> object:
            return lambda cfg, base: "third"

    looked: list[int] = []

    def eps() -> list[object]:
        looked.append(1)
        return [EP()]

    monkeypatch.setattr(plugins, "_entry_points", eps)
    assert plugins.get("audit_sink", "sqlite") is not None
    assert looked == []  # built-ins never touch entry points
    assert plugins.get("audit_sink", "thirdparty")(None, None) == "third"
    with pytest.raises(ValueError, match="module:attribute"):
        plugins.register("audit_sink", "bad", "no_colon")


async def test_two_logs_in_one_process_spool_separately(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    a, b = MemorySink("db"), MemorySink("db")
    a.fail = b.fail = True
    log_a, log_b = make_log([a], spool), make_log([b], spool)
    await log_a.open()
    await log_b.open()
    for i in range(60):
        (log_a if i % 2 else log_b).emit(call(i))
    await log_a.close()
    await log_b.close()
    assert len(list((spool / "db").iterdir())) == 2
    assert sorted(e.request_id for e in spooled_events(spool, "db")) == sorted(str(i) for i in range(60))
    assert log_a.stats()["dropped"] == log_b.stats()["dropped"] == 0


@pytest.mark.parametrize("n", [0, 1, 3, 46, 200, 256, 257, 1000, 1234])
def test_sqlite_inserts_cover_every_row_with_few_statement_shapes(n: int) -> None:
    from sentinel_gw.ops.audit import _COLUMNS, _INSERT_SHAPES, _ROWS_PER_INSERT, _insert_values

    events = [call(i, id=f"{i:032x}") for i in range(n)]
    pieces = list(_insert_values(events))
    assert len(pieces) == -(-n // _ROWS_PER_INSERT)  # one statement per _ROWS_PER_INSERT events
    for size, values in pieces:
        assert size in _INSERT_SHAPES and len(values) == size * len(_COLUMNS)
    ids = [
        values[i + _COLUMNS.index("id")] for _, values in pieces for i in range(0, len(values), len(_COLUMNS))
    ]
    assert list(dict.fromkeys(ids)) == [e.id for e in events]  # every event, in order; copies only repeat
    shapes = {size for m in range(1, 600) for size, _ in _insert_values([call(0)] * m)}
    assert shapes == set(_INSERT_SHAPES) and len(shapes) <= 3  # SQLite keeps a statement per shape
    assert _INSERT_SHAPES[-1] == _ROWS_PER_INSERT


@pytest.mark.parametrize("sizes", [[1], [3, 1, 200], [257], [600, 5]])
async def test_sqlite_sink_writes_every_event_once_in_order(tmp_path: Path, sizes: list[int]) -> None:
    sink = SqliteSink(tmp_path / "a.db")
    await sink.open()
    events = [call(i, id=f"{i:032x}") for i in range(sum(sizes))]
    start = 0
    for size in sizes:
        await sink.write_batch(events[start : start + size])
        start += size
    await sink.write_batch(events[:7])  # a replay after a partial failure: ignored
    await sink.close()
    con = sqlite3.connect(tmp_path / "a.db")
    try:
        stored = [row[0] for row in con.execute("SELECT id FROM audit_events ORDER BY seq")]
    finally:
        con.close()
    assert stored == [e.id for e in events]
