"""The PostgreSQL audit sink against a real server: read-back through the CLI functions, exact
round trips, tampering, migrations (repeated and concurrent), reconnects, password redaction, and
PostgreSQL killed under load (nothing lost, nothing repeated, order kept, the gateway never
blocked), including a gateway restart with a non-empty spool."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.pg import PgServer, unavailable

try:
    import psycopg
except ImportError:  # pragma: no cover - depends on the install
    unavailable("psycopg is not installed: pip install -e '.[test,audit]'", module_level=True)

from sentinel_gw.config_schema import AuditConfig, Config
from sentinel_gw.ops import plugins
from sentinel_gw.ops.audit import (
    AuditError,
    AuditEvent,
    AuditLog,
    export_jsonl,
    format_event,
    new_event_id,
    now_rfc3339,
    open_sink_for_cli,
    query,
    tail,
    verify,
    verify_chain,
)
from sentinel_gw.ops.audit_postgres import SCHEMA_VERSION, PostgresSink, create_sink, redact_url

pytestmark = pytest.mark.postgres

URL_ENV = "SENTINEL_TEST_AUDIT_PG_URL"

# --- helpers -------------------------------------------------------------------------------------


def call(i: int, **kw: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "method": "tools/call",
        "status": "success",
        "tool": f"tool{i % 3}",
        "subject": "alice" if i % 2 else "bob",
        "roles": ["dev"],
        "args": {"i": i},
        "latency_ms": i,
        "request_id": str(i),
    }
    fields.update(kw)
    return AuditEvent(**fields)


def stamped(i: int, **kw: Any) -> AuditEvent:
    """An event as emit() would stamp it, for writing to a sink directly."""
    return call(i, id=new_event_id(), time=now_rfc3339(), **kw)


def make_log(sinks: list[Any], spool: Path, **kw: Any) -> AuditLog:
    opts: dict[str, Any] = {
        "queue_size": 1000,
        "batch_size": 100,
        "flush_interval": 0.005,
        "shutdown_deadline": 10.0,
        "retry_initial": 0.02,
        "retry_max": 0.2,
        "write_timeout": 10.0,
    }
    opts.update(kw)
    return AuditLog(sinks, spool_dir=spool, **opts)


async def until(
    cond: Callable[[], bool], timeout: float = 30.0, *, meanwhile: Callable[[], Any] | None = None
) -> None:
    """Wait (bounded) for `cond`; `meanwhile` runs each round (e.g. emits one more event)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        if meanwhile is not None:
            meanwhile()
        await asyncio.sleep(0.005)


def stored_ids(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM audit_events ORDER BY seq")]


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def pg_config(tmp_path: Path) -> Config:
    return Config(
        audit=AuditConfig(sinks=("postgres",), postgres_url_env=URL_ENV, spool_dir=str(tmp_path / "spool")),
        base_dir=str(tmp_path),
    )


def sample_events() -> list[AuditEvent]:
    rows = [
        ("alice", "fs_read", "success", "2025-01-01T10:00:00.000Z"),
        ("bob", "fs_write", "denied", "2025-01-02T10:00:00.000Z"),
        ("alice", "fs_write", "success", "2025-01-03T10:00:00.000Z"),
        ("alice", "git_log", "error", "2025-01-04T10:00:00.000Z"),
        ("carol", "fs_read", "rate_limited", "2025-01-05T10:00:00.000Z"),
    ]
    return [
        AuditEvent(method="tools/call", subject=s, tool=t, status=st, time=when, args={"i": i})
        for i, (s, t, st, when) in enumerate(rows)
    ]


class Load:
    """Emits numbered events, remembering them in emit order."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self.events: list[AuditEvent] = []

    def one(self) -> None:
        ev = call(len(self.events))
        self.log.emit(ev)
        self.events.append(ev)

    async def run(self, n: int) -> None:
        """`n` events, yielding to the loop every 10 (the writers run meanwhile)."""
        for _ in range(n):
            self.one()
            if len(self.events) % 10 == 0:
                await asyncio.sleep(0.001)

    async def during(self, work: Awaitable[Any]) -> None:
        """Keep emitting while `work` (e.g. stopping PostgreSQL in a thread) runs."""
        task = asyncio.ensure_future(work)
        while not task.done():
            await self.run(10)
        await task

    def ids(self) -> list[str]:
        return [e.id for e in self.events]


def sink_stats(log: AuditLog, name: str = "postgres") -> dict[str, int]:
    return log.stats()["sinks"][name]  # type: ignore[no-any-return]


# --- read-back -----------------------------------------------------------------------------------


async def test_events_read_back_through_the_cli_functions(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(URL_ENV, pg_url)
    cfg = pg_config(tmp_path)
    log = AuditLog.from_config(cfg)  # through the plugin registry and create_sink
    await log.open()
    for ev in sample_events():
        log.emit(ev)
    await log.close()
    assert log.stats()["written"] == 5

    sink = open_sink_for_cli(cfg)
    assert isinstance(sink, PostgresSink)

    def tools(events: list[AuditEvent]) -> list[str | None]:
        return [e.tool for e in events]

    assert tools(tail(sink, 2)) == ["git_log", "fs_read"]
    assert tools(query(sink, subject="alice")) == ["fs_read", "fs_write", "git_log"]
    assert tools(query(sink, tool="fs_*")) == ["fs_read", "fs_write", "fs_write", "fs_read"]
    assert tools(query(sink, tool="fs_[!w]*")) == ["fs_read", "fs_read"]
    assert tools(query(sink, tool="git?log")) == ["git_log"]
    assert tools(query(sink, status="denied")) == ["fs_write"]
    assert tools(query(sink, since="2025-01-03")) == ["fs_write", "git_log", "fs_read"]
    assert tools(query(sink, subject="alice", tool="fs_*", since="2025-01-02T00:00:00Z")) == ["fs_write"]
    assert tools(query(sink, subject="alice", limit=1)) == ["git_log"]
    assert query(sink, subject="nobody") == []

    buf = io.StringIO()
    assert export_jsonl(sink, buf) == 5
    lines = [AuditEvent.from_dict(json.loads(x)) for x in buf.getvalue().splitlines()]
    assert verify_chain(lines).ok and tools(lines) == tools(tail(sink, 10))
    result = verify(sink)
    assert result.ok and result.checked == 5 and result.duplicates == 0
    assert "alice" in format_event(lines[0]) and "fs_read" in format_event(lines[0])

    # A new log continues the chain from the database's last row.
    log2 = AuditLog.from_config(cfg)
    await log2.open()
    log2.emit(call(99))
    await log2.close()
    result = verify(sink)
    assert result.ok and result.checked == 6 and result.starts == 1


async def test_values_postgres_types_would_alter_read_back_exactly(pg_url: str, tmp_path: Path) -> None:
    sink = PostgresSink(pg_url)
    log = make_log([sink], tmp_path / "spool")
    await log.open()
    odd = [
        call(0, subject="nul\x00in subject", error="nul\x00in error"),
        call(1, args={"f": 1e16, "g": -0.0, "h": 1.5e-7, "big": 1e300, "n": [1.0, 2.5, 123456789.125]}),
        call(2, args={"nul": "a\x00b", "k\x00ey": True}, detail={"why": "x\x00y"}),
        call(9, args={"lone surrogate": "\udc80", "\ud800": 1}),
        call(3, time="2025-01-01T12:00:00+02:00"),  # not RFC 3339 UTC with milliseconds
        call(4, time="2025-01-01T10:00:00.123456Z"),
        call(5, time="not a time"),
        call(6, tool="t" * 5000, subject="s" * 4000),  # longer than a btree index entry
        call(7, args=None, roles=[]),
        call(8),  # an ordinary row
    ]
    for ev in odd:
        log.emit(ev)
    await log.close()
    assert log.stats()["written"] == len(odd) and log.stats()["pending_spool"] == 0

    back = list(sink.iter_all())
    assert [e.to_dict() for e in back] == [e.to_dict() for e in odd]
    assert verify(sink).ok
    # Queries see the sanitised typed columns; only the odd rows carry a verbatim copy.
    assert [e.request_id for e in query(sink, tool="tt*")] == ["6"]
    rows = dict(sql(pg_url, "SELECT request_id, verbatim IS NOT NULL FROM audit_events"))
    assert rows == {str(i): i not in (7, 8) for i in range(10)}
    assert sql(pg_url, "SELECT subject FROM audit_events WHERE request_id = '0'") == [
        ("nul\ufffdin subject",)
    ]


async def test_verify_detects_modified_rows(pg_url: str, tmp_path: Path) -> None:
    sink = PostgresSink(pg_url)
    log = make_log([sink], tmp_path / "spool")
    await log.open()
    events = [call(i) for i in range(10)]
    events[7] = call(7, subject="nul\x00here")  # a row with a verbatim copy
    for ev in events:
        log.emit(ev)
    await log.close()
    assert verify(sink).ok

    sql(pg_url, "UPDATE audit_events SET args = '{\"i\": 999}' WHERE id = %s", (events[3].id,))
    result = verify(sink)
    assert not result.ok and result.first_bad_id == events[3].id and result.position == 3
    sql(pg_url, "UPDATE audit_events SET args = '{\"i\": 3}' WHERE id = %s", (events[3].id,))
    assert verify(sink).ok

    # Editing the typed column of a row that has a verbatim copy is detected too ...
    sql(pg_url, "UPDATE audit_events SET subject = 'mallory' WHERE id = %s", (events[7].id,))
    result = verify(sink)
    assert not result.ok and result.first_bad_id == events[7].id
    sql(pg_url, "UPDATE audit_events SET subject = %s WHERE id = %s", ("nul\ufffdhere", events[7].id))
    assert verify(sink).ok
    # ... and so is editing the verbatim copy, or deleting a row.
    sql(
        pg_url,
        "UPDATE audit_events SET verbatim = %s WHERE id = %s",
        ('{"subject": "nul\\u0000hare"}', events[7].id),
    )
    assert not verify(sink).ok
    sql(
        pg_url,
        "UPDATE audit_events SET verbatim = %s WHERE id = %s",
        ('{"subject": "nul\\u0000here"}', events[7].id),
    )
    assert verify(sink).ok
    sql(pg_url, "DELETE FROM audit_events WHERE id = %s", (events[5].id,))
    result = verify(sink)
    assert not result.ok and result.first_bad_id == events[6].id


# --- schema --------------------------------------------------------------------------------------


def versions(url: str) -> list[int]:
    return [r[0] for r in sql(url, "SELECT version FROM sentinel_schema_migrations ORDER BY version")]


async def test_migrations_are_idempotent(pg_url: str) -> None:
    for _ in range(2):
        sink = PostgresSink(pg_url)
        await sink.open()
        await sink.write_batch([call(0, id="a" * 32, time=now_rfc3339())])  # the same id twice: stored once
        assert await sink.last_hash() is not None
        await sink.close()
    assert versions(pg_url) == list(range(1, SCHEMA_VERSION + 1))
    assert sql(pg_url, "SELECT count(*) FROM audit_events") == [(1,)]
    indexes = {r[0] for r in sql(pg_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'audit_events'")}
    assert {
        "audit_events_pkey",
        "audit_events_seq",
        "audit_events_time",
        "audit_events_subject",
        "audit_events_tool",
        "audit_events_status",
    } <= indexes


async def test_concurrent_migrations_do_not_collide(pg: PgServer) -> None:
    for _ in range(3):
        url = pg.create_database()
        sinks = [PostgresSink(url, name=f"pg{i}") for i in range(6)]
        try:
            await asyncio.gather(*(s.open() for s in sinks))  # one worker thread each: a real race
            await asyncio.gather(*(s.write_batch([stamped(i)]) for i, s in enumerate(sinks)))
        finally:
            await asyncio.gather(*(s.close() for s in sinks))
        assert versions(url) == list(range(1, SCHEMA_VERSION + 1))
        assert sql(url, "SELECT count(*) FROM audit_events") == [(6,)]


async def test_newer_schema_is_refused(pg_url: str) -> None:
    sink = PostgresSink(pg_url)
    await sink.open()
    await sink.close()
    sql(pg_url, "INSERT INTO sentinel_schema_migrations (version, description) VALUES (99, 'future')")
    sink = PostgresSink(pg_url)
    with pytest.raises(AuditError, match="schema version 99 is newer"):
        await sink.open()
    await sink.close()


def test_reading_a_database_without_the_table_is_a_clear_error(pg_url: str) -> None:
    with pytest.raises(AuditError, match="not a sentinel-gw audit database"):
        tail(PostgresSink(pg_url), 5)


# --- connections, configuration, secrets ---------------------------------------------------------


async def test_a_broken_connection_is_discarded_and_reopened(pg_url: str) -> None:
    sink = PostgresSink(pg_url)
    await sink.open()
    first = [stamped(i) for i in range(3)]
    await sink.write_batch(first)
    killed = sql(
        pg_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'sentinel-gw audit' AND pid <> pg_backend_pid()",
    )
    assert killed == [(True,)]
    second = [stamped(i) for i in range(3, 6)]
    with pytest.raises(AuditError):
        await sink.write_batch(second)  # the dead connection is found out ...
    await sink.write_batch(second)  # ... and replaced by the next attempt
    await sink.write_batch(second)  # a replay is idempotent
    await sink.close()
    assert stored_ids(pg_url) == [e.id for e in first + second]


def test_create_sink_reads_the_named_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = pg_config(tmp_path)
    assert plugins.get("audit_sink", "postgres") is create_sink
    monkeypatch.delenv(URL_ENV, raising=False)
    with pytest.raises(AuditError, match=f"environment variable {URL_ENV} is not set"):
        create_sink(cfg, tmp_path)
    monkeypatch.setenv(URL_ENV, "postgresql://audit:pw-123@db.example:5432/audit")
    sink = create_sink(cfg, tmp_path)
    assert sink.display_url == "postgresql://audit:***@db.example:5432/audit"
    assert "pw-123" not in repr(sink)
    assert create_sink(cfg, tmp_path, {URL_ENV: "postgresql://x@h/db"}).display_url == "postgresql://x@h/db"


def test_redact_url() -> None:
    assert (
        redact_url("postgresql://u:p%40ss@h:5/db?sslmode=require")
        == "postgresql://u:***@h:5/db?sslmode=require"
    )
    assert (
        redact_url("postgres://h/db?user=u&password=secret&x=1") == "postgres://h/db?user=u&password=***&x=1"
    )
    assert redact_url("host=h password='a b\\' c' user=u") == "host=h password=*** user=u"
    assert redact_url("host=h password=secret user=u") == "host=h password=*** user=u"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


async def test_the_password_appears_in_no_error_and_no_log(
    pg: PgServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "Sup3r-Secret-pw"
    bad = [
        pg.url("no_such_database", password=password),  # refused by the server
        f"postgresql://postgres:{password}@127.0.0.1:1/db",  # nothing listening
        f"postgresql://postgres:{password}@127.0.0.1:{pg.port}/db?bogus_option=1",  # libpq parse error
        f"host=127.0.0.1 port={pg.port} user=postgres password={password} bogus=1",
        f"host=127.0.0.1 port={pg.port} user=postgres password='{password}' dbname=no_such_database",
    ]
    messages = []
    for url in bad:
        sink = PostgresSink(url)
        with pytest.raises(AuditError) as info:
            await sink.open()
        await sink.close()
        messages.append(str(info.value))
        with pytest.raises(AuditError) as info:
            tail(sink, 1)
        messages.append(str(info.value))
        assert password not in repr(sink)
    assert all(password not in m and "***" in m for m in messages), messages

    # The pipeline logs the sink's failures; none of those lines holds the password either.
    sink = PostgresSink(bad[0])
    log = make_log([sink], tmp_path / "spool")
    await log.open()
    for i in range(5):
        log.emit(call(i))
    await until(lambda: sink_stats(log)["failures"] >= 2)
    await log.close()
    assert log.stats()["pending_spool"] == 5
    assert "audit sink postgres" in caplog.text and password not in caplog.text


# --- outages -------------------------------------------------------------------------------------


async def test_postgres_killed_under_load_loses_and_repeats_nothing(
    pg: PgServer, pg_url: str, tmp_path: Path
) -> None:
    sink = PostgresSink(pg_url)
    # A small memory queue: the outage also overflows it into the spool.
    log = make_log([sink], tmp_path / "spool", queue_size=300)
    await log.open()
    load = Load(log)

    await load.run(1000)
    await until(lambda: sink_stats(log)["written"] > 0, meanwhile=load.one)

    # PostgreSQL dies (immediate: no clean shutdown) while events keep coming.
    await load.during(asyncio.to_thread(pg.stop, "immediate"))
    await until(
        lambda: sink_stats(log)["failures"] > 0 and sink_stats(log)["spooled"] > 0, meanwhile=load.one
    )

    # The gateway never waits for the audit database: a tight loop without a single await.
    before = log.stats()["emitted"]
    for _ in range(3000):
        load.one()
    assert log.stats()["emitted"] == before + 3000
    assert log.stats()["dropped"] == 0
    await load.run(500)

    # Back up while the load goes on; then more load on the recovered database.
    await load.during(asyncio.to_thread(pg.start))
    await load.run(1000)
    assert await log.drain(60), log.stats()
    await log.close()

    st = log.stats()
    assert st["dropped"] == 0 and st["spooled"] > 0 and st["replayed"] > 0, st
    assert st["emitted"] == len(load.events)
    # Every event exactly once, in emit order (storage order is seq).
    assert stored_ids(pg_url) == load.ids()
    result = verify(sink)
    assert result.ok and result.checked == len(load.events) and result.duplicates == 0, result
    assert not list((tmp_path / "spool").glob("postgres/*/*.jsonl"))


async def test_restart_with_a_spool_while_postgres_is_down_replays_it(
    pg: PgServer, pg_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    log1 = make_log([PostgresSink(pg_url)], spool)
    await log1.open()
    load1 = Load(log1)
    await load1.run(200)
    assert await log1.drain(30)

    pg.stop("fast")
    await load1.run(300)
    await until(lambda: sink_stats(log1)["failures"] > 0, meanwhile=load1.one)
    await log1.close()  # the database is down: the rest goes to the spool on disk
    assert log1.stats()["pending_spool"] > 0
    assert list(spool.glob("postgres/*/*.jsonl"))

    # A new gateway (same spool directory) starts while PostgreSQL is still down ...
    sink2 = PostgresSink(pg_url)
    log2 = make_log([sink2], spool)
    await log2.open()
    assert log2.stats()["pending_spool"] == log1.stats()["pending_spool"]
    load2 = Load(log2)
    await load2.run(200)
    assert sink_stats(log2)["written"] == 0

    # ... and PostgreSQL comes back: the spool is replayed first, then the new events.
    await load2.during(asyncio.to_thread(pg.start))
    assert await log2.drain(60), log2.stats()
    await log2.close()

    assert stored_ids(pg_url) == load1.ids() + load2.ids()
    assert log2.stats()["replayed"] >= log1.stats()["pending_spool"]
    result = verify(sink2)
    assert result.ok and result.starts == 1 and result.duplicates == 0, result
    assert not list(spool.glob("postgres/*/*.jsonl"))
