"""The audit trail: events, the hash chain, the non-blocking delivery pipeline and the built-in sinks.

Delivery (`AuditLog`):

- `emit()` is synchronous and O(1) on the event loop: it stamps id and time, links the event into
  the hash chain, and appends it to one bounded in-memory queue per sink. It never raises and
  never waits. Each sink has its own queue, writer task and spool, so a slow or dead sink delays
  only itself.
- Per sink the delivery order is: [already in the sink] ++ [spool segments, oldest first] ++
  [memory queue]. A writer replays spool segments before it takes anything from memory, so each
  sink receives events exactly in emit order.
- When a memory queue is full, its *oldest* events are moved to a new spool segment (never the
  new event: that would overtake the queue) — the file write runs on the spool thread, not on the
  loop. When a write fails, the batch and the rest of the memory queue are spooled and the sink is
  retried with exponential backoff.
- Spool segments are JSONL files, fsync'd, written to a temporary name and renamed, under
  `<spool_dir>/<sink name>/<run>/<first seq>.jsonl`. One run directory per process, locked with
  flock while the process lives, so several gateways can share a spool directory: at `open()` a
  process adopts (and replays) only the run directories whose owner is gone.
- `close()` lets writers drain for up to `shutdown_deadline` seconds, then cancels them and spools
  whatever is left (including an in-flight batch and the unreplayed rest of a partly replayed
  segment).

Guarantees: nothing is dropped while the process lives; events in memory are lost only if the
process is killed without `close()`. Delivery is at-least-once around the edges (a write that
timed out or was cut off by the shutdown deadline may have landed): the SQLite sink ignores a
repeated id, the JSONL sink rolls back a failed batch but can repeat one that timed out.

The chain: `hash = sha256(prev_hash + canonical_json(event))`, where the canonical form has sorted
keys, no whitespace, ASCII only, and excludes `hash`. The first event after a restart links to the
previous run's last event (the first sink's spool tail, else its last row). `verify_chain` accepts
rows of several gateway processes interleaved in one sink (each row must link to *some* earlier
row), which still detects a modified, deleted or moved row.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import fnmatch
import functools
import hashlib
import itertools
import json
import logging
import math
import operator
import os
import queue
import re
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from sentinel_gw.ops import plugins
from sentinel_gw.ops.redact import POLICIES, ArgsPolicy, redact_args, redact_text
from sentinel_gw.protocol.jsonenc import json_encoder

if TYPE_CHECKING:
    from sentinel_gw.config_schema import AuditConfig, Config

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: one gateway per spool directory
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CALL_STATUSES",
    "GATEWAY_EVENTS",
    "GENESIS",
    "AuditError",
    "AuditEvent",
    "AuditFormatError",
    "AuditLog",
    "AuditSink",
    "JsonlSink",
    "SqliteSink",
    "VerifyResult",
    "args_policy",
    "build_sinks",
    "canonical_json",
    "compute_hash",
    "export_jsonl",
    "format_event",
    "new_event_id",
    "open_sink_for_cli",
    "parse_since",
    "query",
    "tail",
    "verify",
    "verify_chain",
]

log = logging.getLogger("sentinel_gw.audit")

GENESIS = "0" * 64
DEFAULT_SQLITE = "sentinel-audit.db"
DEFAULT_JSONL = "sentinel-audit.jsonl"
DEFAULT_SPOOL = "sentinel-audit-spool"

EventKind = Literal["call", "resource", "prompt", "gateway"]
CALL_STATUSES: tuple[str, ...] = (
    "success",
    "error",
    "timeout",
    "denied",
    "rate_limited",
    "killed",
    "invalid_args",
    "circuit_open",
    "cancelled",
)
# `method` of kind="gateway" events; their status is "ok" or "failed", specifics go in `detail`.
GATEWAY_EVENTS: tuple[str, ...] = (
    "startup",
    "shutdown",
    "config.reload",
    "killswitch.change",
    "backend.started",
    "backend.crashed",
    "backend.restarted",
    "backend.gave_up",
    "backend.circuit_open",
)

_ERROR_MAX_BYTES = 2048
_DETAIL_MAX_BYTES = 8192


class AuditError(Exception):
    """An audit store cannot be used (missing file, newer schema, unreadable sink)."""


class AuditFormatError(AuditError):
    """A stored row or line is not a valid audit event."""


# ---------------------------------------------------------------------------------------------
# Events and the chain


@dataclass(slots=True)
class AuditEvent:
    """One audit row. `args` must already be redacted (see `args_policy` and `redact_args`)."""

    kind: EventKind = "call"
    method: str = ""
    status: str = ""
    id: str = ""  # set by emit(): 32 hex chars, sortable by time within a process
    time: str = ""  # set by emit(): RFC 3339 UTC with milliseconds
    session: str | None = None
    subject: str | None = None
    roles: list[str] = field(default_factory=list)
    client_name: str | None = None
    transport: str | None = None
    tool: str | None = None  # the exposed name (or resource URI / prompt name)
    original: str | None = None  # the name at the backend
    backend: str | None = None
    args: object = None
    error: str | None = None
    latency_ms: float | None = None
    request_id: str | None = None  # the client's JSON-RPC id, as a string
    upstream_id: str | None = None  # the id the gateway used towards the backend
    detail: dict[str, Any] | None = None  # gateway events
    prev_hash: str = ""
    hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELD_ORDER}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEvent:
        if not isinstance(data, dict):
            raise AuditFormatError(f"an audit event must be a JSON object, got {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in _FIELD_NAMES}
        try:
            return cls(**known)
        except TypeError as exc:
            raise AuditFormatError(str(exc)) from None


_FIELD_ORDER: tuple[str, ...] = tuple(f.name for f in fields(AuditEvent))
_FIELD_NAMES = frozenset(_FIELD_ORDER)
_STR_FIELDS = tuple(
    f.name
    for f in fields(AuditEvent)
    if f.name not in {"roles", "args", "latency_ms", "detail", "kind", "prev_hash", "hash"}
)


# One encoder per form, built once: json.dumps with options builds a new JSONEncoder per call.
_CANONICAL = json_encoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_LINE = json_encoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_COLUMN = json_encoder(ensure_ascii=True)
_HASHED_FIELDS: tuple[str, ...] = tuple(n for n in _FIELD_ORDER if n != "hash")
_CANONICAL_FIELDS = tuple(sorted(_HASHED_FIELDS))
_CANONICAL_PREFIXES = tuple(
    ("{" if i == 0 else ",") + _CANONICAL(name) + ":" for i, name in enumerate(_CANONICAL_FIELDS)
)
_canonical_values = operator.attrgetter(*_CANONICAL_FIELDS)
_encode_ascii = json.encoder.encode_basestring_ascii  # the C implementation when available


def canonical_json(event: AuditEvent) -> str:
    """The hashed form: every field but `hash`, sorted keys, no whitespace, ASCII only.

    Byte for byte `_CANONICAL(dict of those fields)` (stored chains verify either way), built
    field by field: the top-level keys are fixed and the values are nearly always str or None,
    which skips the encoder's per-call setup and key sort (7 -> 2 us per event). Anything else
    (args, detail, roles) goes through the encoder itself.
    """
    parts = []
    for prefix, value in zip(_CANONICAL_PREFIXES, _canonical_values(event)):  # noqa: B905 - fixed lengths
        kind = type(value)
        if kind is str:
            text = _encode_ascii(value)
        elif value is None:
            text = "null"
        elif kind is float and math.isfinite(value):  # NaN/Infinity: the encoder raises
            text = float.__repr__(value)
        elif kind is int:
            text = int.__repr__(value)
        else:
            text = _CANONICAL(value)
        parts.append(prefix)
        parts.append(text)
    parts.append("}")
    return "".join(parts)


def compute_hash(event: AuditEvent) -> str:
    return hashlib.sha256((event.prev_hash + canonical_json(event)).encode("ascii")).hexdigest()


_id_lock = threading.Lock()
_id_state = [0, 0]  # last millisecond, sequence within it
_RANDOM_BATCH = 512  # ids per getrandom() call
_random_pool = b""
_random_pos = 0


def _stamp() -> tuple[str, str]:
    """A new event id and the matching RFC 3339 time, from one clock reading.

    The id is 48-bit milliseconds + 16-bit sequence + 64 random bits, in hex: unique, and sortable
    by creation order within a process (ULID-like, without a base32 dependency). The random bits
    come from os.urandom in batches: one system call per 512 ids instead of one per id.
    """
    global _random_pool, _random_pos
    now_ns = time.time_ns()
    ms = now_ns // 1_000_000
    with _id_lock:
        last_ms, seq = _id_state
        if ms <= last_ms:
            ms, seq = last_ms, seq + 1
            if seq > 0xFFFF:
                ms, seq = ms + 1, 0
        else:
            seq = 0
        _id_state[0], _id_state[1] = ms, seq
        if _random_pos >= len(_random_pool):
            _random_pool, _random_pos = os.urandom(8 * _RANDOM_BATCH), 0
        rand = _random_pool[_random_pos : _random_pos + 8]
        _random_pos += 8
    return f"{ms:012x}{seq:04x}{rand.hex()}", _time_text(now_ns)


def _forget_random_pool() -> None:
    global _random_pool, _random_pos
    _random_pool, _random_pos = b"", 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_random_pool)  # a child must never repeat our ids


def new_event_id() -> str:
    """48-bit milliseconds + 16-bit sequence + 64 random bits, in hex: unique, and sortable by
    creation order within a process (ULID-like, without a base32 dependency)."""
    return _stamp()[0]


_second_cache: list[Any] = [-1, ""]  # [epoch second, "YYYY-MM-DDTHH:MM:SS."]


def _time_text(now_ns: int) -> str:
    """`now_rfc3339()` for a time.time_ns() value; the date part is formatted once per second."""
    sec, ns = divmod(now_ns, 1_000_000_000)
    cached_sec, prefix = _second_cache
    if sec != cached_sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        _second_cache[0], _second_cache[1] = sec, prefix
    return f"{prefix}{ns // 1_000_000:03d}Z"


def _rfc3339(dt: datetime) -> str:
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def now_rfc3339() -> str:
    return _time_text(time.time_ns())


def _clean_str(s: object) -> str:
    # Lone surrogates (legal in JSON strings) cannot be stored as UTF-8 by SQLite or psycopg; a
    # batch that can never be written would block its sink forever, so they are replaced here.
    text = s if isinstance(s, str) else str(s)
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _normalise(ev: AuditEvent) -> None:
    """Make the event storable and hashable as it will read back from any sink."""
    for name in _STR_FIELDS:
        value = getattr(ev, name)
        # Fast path: an ASCII str (nearly every value) is already clean.
        if value is not None and (type(value) is not str or not value.isascii()):
            setattr(ev, name, _clean_str(value))
    kind = ev.kind
    if type(kind) is not str or not kind.isascii():
        ev.kind = _clean_str(kind)  # type: ignore[assignment]
    roles = ev.roles
    ev.roles = [r if type(r) is str and r.isascii() else _clean_str(r) for r in (roles or ())]
    if ev.latency_ms is not None:
        # Stored as REAL / double: an int would read back as a float and change the hash.
        lat = float(ev.latency_ms)
        ev.latency_ms = round(lat, 3) if math.isfinite(lat) else None
    if ev.error is not None:
        ev.error = redact_text(ev.error, max_bytes=_ERROR_MAX_BYTES)
    if ev.detail is not None:
        detail = redact_args(ev.detail, "full", max_bytes=_DETAIL_MAX_BYTES)
        ev.detail = detail if isinstance(detail, dict) else {"value": detail}


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_id: str | None = None
    reason: str = ""
    position: int | None = None  # 0-based index of the first bad row in storage order
    duplicates: int = 0  # rows repeated verbatim (at-least-once delivery), not an error
    starts: int = 0  # rows that start a chain from GENESIS


def verify_chain(events: Iterable[AuditEvent]) -> VerifyResult:
    """Check hashes and links in storage order.

    Each row's hash must match its content (else: modified). Each row after the first must link
    to a row seen earlier (else: a row was deleted or rows were reordered) or to GENESIS. Linking
    to *any* earlier row, not only the previous one, accepts several gateway processes that share
    one sink and interleave their chains.
    """
    seen: set[int] = set()
    checked = duplicates = starts = 0
    prev_row: str | None = None
    for pos, ev in enumerate(events):
        if compute_hash(ev) != ev.hash:
            return VerifyResult(
                False, checked, ev.id, "hash does not match the row: the row was modified", pos
            )
        key = int(ev.hash[:16], 16)
        if ev.prev_hash == GENESIS:
            starts += 1
        elif pos and ev.prev_hash != prev_row:
            try:
                linked = int(ev.prev_hash[:16], 16) in seen
            except ValueError:
                linked = False
            if not linked:
                return VerifyResult(
                    False,
                    checked,
                    ev.id,
                    "prev_hash links to no earlier row: a row was deleted, or rows were reordered",
                    pos,
                )
        if key in seen:
            duplicates += 1
        seen.add(key)
        prev_row = ev.hash
        checked += 1
    return VerifyResult(True, checked, duplicates=duplicates, starts=starts)


# ---------------------------------------------------------------------------------------------
# Sinks


class AuditSink(Protocol):
    """Where events are stored. Async methods run on the event loop and must not block it.

    `write_batch` raises on failure and must be idempotent per event id when a batch is retried
    (or roll back a failed batch). `last_hash` continues the chain across restarts. The sync
    reading methods are for the CLI and run without an event loop.
    """

    name: str

    async def open(self) -> None: ...

    async def write_batch(self, events: list[AuditEvent]) -> None: ...

    async def close(self) -> None: ...

    async def last_hash(self) -> str | None: ...

    def query(
        self,
        *,
        subject: str | None = None,
        tool: str | None = None,
        status: str | None = None,
        since: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]: ...

    def tail(self, n: int) -> list[AuditEvent]: ...

    def iter_all(self) -> Iterator[AuditEvent]: ...


T = TypeVar("T")


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class _Worker:
    """One daemon thread running submitted calls in order.

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so a database call that
    hangs forever would hang the gateway's exit too. A daemon thread is abandoned instead.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._q: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None
        ]
        self._q = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue `fn`; must be called on the event loop thread."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self.start()
        self._q.put((fn, loop, fut))
        return fut

    async def run(self, fn: Callable[[], T]) -> T:
        return await self.submit(fn)

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread = None

    def _main(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, loop, fut = item
            try:
                value, ok = fn(), True
            except BaseException as exc:
                value, ok = exc, False
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, fut, ok, value)


class ThreadedSink:
    """A sink whose blocking I/O runs in order on a thread of its own (`_Worker`): subclasses set
    `self._worker` and give the `*_sync` methods; the async face is the same for all of them."""

    _worker: _Worker

    def _open_sync(self) -> None:
        raise NotImplementedError

    def _write_sync(self, events: list[AuditEvent]) -> None:
        raise NotImplementedError

    def _last_hash_sync(self) -> str | None:
        raise NotImplementedError

    def _close_sync(self) -> None:
        raise NotImplementedError

    async def open(self) -> None:
        await self._worker.run(self._open_sync)

    async def write_batch(self, events: list[AuditEvent]) -> None:
        await self._worker.run(lambda: self._write_sync(events))

    async def last_hash(self) -> str | None:
        return await self._worker.run(self._last_hash_sync)

    async def close(self) -> None:
        try:
            await self._worker.run(self._close_sync)
        finally:
            self._worker.stop()


def _dumps_line(ev: AuditEvent) -> str:
    return _LINE(ev.to_dict())


def _create_private_file(path: Path) -> None:
    """Create `path` with mode 0600 (whatever the umask), and tighten an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _match_tool(pattern: str | None, tool: str | None) -> bool:
    return pattern is None or (tool is not None and fnmatch.fnmatchcase(tool, pattern))


def _filter(
    ev: AuditEvent, subject: str | None, tool: str | None, status: str | None, since: str | None
) -> bool:
    return (
        (subject is None or ev.subject == subject)
        and _match_tool(tool, ev.tool)
        and (status is None or ev.status == status)
        and (since is None or ev.time >= since)
    )


def sql_where(conditions: Iterable[tuple[str, object]], mark: str) -> tuple[str, list[Any]]:
    """`audit query` filters for an SQL sink: (" WHERE subject = ? AND ...", params) from
    ("column operator", value) pairs, leaving out those whose value is None; `mark` is the
    driver's placeholder."""
    used = [(test, value) for test, value in conditions if value is not None]
    clause = " WHERE " + " AND ".join(f"{test} {mark}" for test, _ in used) if used else ""
    return clause, [value for _, value in used]


# SQLite --------------------------------------------------------------------------------------

_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(AuditEvent))
_JSON_COLUMNS = frozenset({"roles", "args", "detail"})

# Append-only: migration N (1-based) takes the schema from version N-1 to N.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE audit_events (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            time TEXT NOT NULL,
            kind TEXT NOT NULL,
            method TEXT NOT NULL,
            status TEXT NOT NULL,
            session TEXT,
            subject TEXT,
            roles TEXT NOT NULL,
            client_name TEXT,
            transport TEXT,
            tool TEXT,
            original TEXT,
            backend TEXT,
            args TEXT,
            error TEXT,
            latency_ms REAL,
            request_id TEXT,
            upstream_id TEXT,
            detail TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )""",
        "CREATE INDEX audit_events_time ON audit_events (time)",
        "CREATE INDEX audit_events_subject ON audit_events (subject, time)",
        "CREATE INDEX audit_events_tool ON audit_events (tool, time)",
        "CREATE INDEX audit_events_status ON audit_events (status, time)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM audit_events"  # noqa: S608 - fixed column names
# SQLite before 3.32 allows 999 variables per statement, later versions 32766.
_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
# The largest INSERT, a power of two rows: 256 rows of this table are ~0.6 MiB of prepared
# statement inside SQLite (on SQLite < 3.32, 32 rows).
_ROWS_PER_INSERT = min(256, 1 << ((_MAX_VARIABLES // len(_COLUMNS)).bit_length() - 1))
_INSERT_SHAPES = tuple(sorted({1, min(16, _ROWS_PER_INSERT), _ROWS_PER_INSERT}))
_ROW_MARKS = f"({', '.join('?' for _ in _COLUMNS)})"


def _insert_values(events: Sequence[AuditEvent]) -> Iterator[tuple[int, list[Any]]]:
    """(rows, values) per INSERT: `_ROWS_PER_INSERT` events at a time, each piece padded to the
    next of `_INSERT_SHAPES` rows by repeating its last row (INSERT OR IGNORE skips the copies:
    same id). So a batch of up to `_ROWS_PER_INSERT` events is one statement, and only three
    statement shapes are ever prepared. SQLite keeps each prepared statement (~2.4 KiB per row):
    with every power of two (9 shapes, ~1.2 MiB) each new batch size seen under a changing load
    added memory at a random time, which bench/leak_probe.py saw as a slow leak. A copied row
    costs ~4 us (binding and a unique-index probe): ~1 ms more for a batch of 17."""
    for start in range(0, len(events), _ROWS_PER_INSERT):
        chunk = events[start : start + _ROWS_PER_INSERT]
        size = next(rows for rows in _INSERT_SHAPES if rows >= len(chunk))
        values = [value for ev in chunk for value in _to_row(ev)]
        values += values[-len(_COLUMNS) :] * (size - len(chunk))
        yield size, values


@functools.lru_cache(maxsize=16)
def _insert_rows(n: int) -> str:
    """INSERT OR IGNORE of `n` rows in one statement: a row whose id is already stored is skipped."""
    return (
        f"INSERT OR IGNORE INTO audit_events ({', '.join(_COLUMNS)}) "  # noqa: S608 - fixed column names
        f"VALUES {', '.join(_ROW_MARKS for _ in range(n))}"
    )


_JSON_INDEXES = tuple(i for i, name in enumerate(_COLUMNS) if name in _JSON_COLUMNS)
_ROLES_INDEX = _COLUMNS.index("roles")
_column_values = operator.attrgetter(*_COLUMNS)


def _to_row(ev: AuditEvent) -> tuple[Any, ...]:
    row = list(_column_values(ev))
    for i in _JSON_INDEXES:
        value = row[i]
        row[i] = None if value is None and i != _ROLES_INDEX else _COLUMN(value)
    return tuple(row)


def _from_row(row: Sequence[Any]) -> AuditEvent:
    data: dict[str, Any] = {}
    for name, raw in zip(_COLUMNS, row, strict=True):
        value = raw
        if name in _JSON_COLUMNS and raw is not None:
            try:
                value = json.loads(raw)
            except ValueError:
                raise AuditFormatError(f"column {name} of a row is not JSON") from None
        data[name] = value
    if data.get("roles") is None:
        data["roles"] = []
    return AuditEvent.from_dict(data)


class SqliteSink(ThreadedSink):
    """The embedded default: one SQLite file in WAL mode, written from a dedicated thread that
    owns the only write connection. Several gateway processes may share the file."""

    def __init__(
        self, path: str | os.PathLike[str], *, name: str = "sqlite", busy_timeout_ms: int = 10000
    ) -> None:
        self.name = name
        self.path = Path(path)
        self._busy_ms = busy_timeout_ms
        self._worker = _Worker(f"sentinel-audit-{name}")
        self._conn: sqlite3.Connection | None = None  # touched only by the worker thread

    # -- writer (worker thread) --

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=self._busy_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_ms)}")
        return conn

    def _open_sync(self) -> None:
        if self._conn is not None:
            return
        _create_private_file(self.path)
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # The writer only appends: a small page cache holds the right edges of the table and
            # its indexes (the default 2 MiB would only add to the gateway's memory).
            conn.execute("PRAGMA cache_size = -512")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # IMMEDIATE: two gateways starting at once must not both run a migration.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise AuditError(
                    f"{self.path}: audit schema version {current} is newer than this sentinel-gw "
                    f"understands ({SCHEMA_VERSION}); upgrade sentinel-gw"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write_sync(self, events: list[AuditEvent]) -> None:
        conn = self._conn
        if conn is None:
            raise AuditError(f"{self.path}: audit database is not open")
        # One multi-row INSERT per batch, and no BEGIN/COMMIT around it (a statement is its own
        # transaction: the connection is in autocommit mode). Every call into SQLite releases the
        # GIL and must take it back, and while the event loop is busy each re-take can wait a
        # switch interval (5 ms): with BEGIN, a statement per 49 rows and COMMIT (7 calls per 200
        # events; executemany would be one per row) this thread fell ~7,000 events behind a
        # saturated gateway, ~10 MiB of queued events; with one call it stays within a few hundred.
        # A batch larger than one statement is written in several: if one fails, the channel
        # spools the whole batch and the replay's INSERT OR IGNORE skips the rows already written.
        for size, values in _insert_values(events):
            conn.execute(_insert_rows(size), values)

    def _last_hash_sync(self) -> str | None:
        if self._conn is None:
            raise AuditError(f"{self.path}: audit database is not open")
        row = self._conn.execute("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else str(row[0])

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- reading (CLI, caller's thread, own connection) --

    def _reader(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise AuditError(f"no audit database at {self.path}")
        conn = sqlite3.connect(
            self.path.resolve().as_uri() + "?mode=rw", uri=True, timeout=self._busy_ms / 1000
        )
        try:
            if conn.execute("SELECT name FROM sqlite_master WHERE name = 'audit_events'").fetchone() is None:
                raise AuditError(f"{self.path} is not a sentinel-gw audit database")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise AuditError(f"{self.path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def query(
        self,
        *,
        subject: str | None = None,
        tool: str | None = None,
        status: str | None = None,
        since: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        where, params = sql_where(
            (("subject =", subject), ("tool GLOB", tool), ("status =", status), ("time >=", since)), "?"
        )
        sql = _SELECT + where + " ORDER BY seq DESC LIMIT ?"
        params.append(max(0, limit))
        conn = self._reader()
        try:
            rows = conn.execute(sql, params).fetchall()
        finally:
            conn.close()
        return [_from_row(r) for r in reversed(rows)]

    def tail(self, n: int) -> list[AuditEvent]:
        return self.query(limit=n)

    def iter_all(self) -> Iterator[AuditEvent]:
        conn = self._reader()
        try:
            for row in conn.execute(_SELECT + " ORDER BY seq"):
                yield _from_row(row)
        finally:
            conn.close()


# JSONL ---------------------------------------------------------------------------------------


class JsonlSink(ThreadedSink):
    """One JSON object per line, appended to a file (mode 0600) or written to stderr (`-`).

    A failed batch is cut off again (ftruncate to where it started), so a retry does not repeat
    it; a partial last line left by a crash is removed at open.
    """

    def __init__(self, path: str | os.PathLike[str], *, name: str = "jsonl", fsync: bool = False) -> None:
        self.name = name
        self.to_stderr = str(path) == "-"
        self.path = None if self.to_stderr else Path(path)
        self.fsync = fsync
        self._worker = _Worker(f"sentinel-audit-{name}")
        self._fd: int | None = None

    def _open_sync(self) -> None:
        if self.to_stderr or self._fd is not None:
            return
        assert self.path is not None
        _create_private_file(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        try:
            self._repair(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _repair(self, fd: int) -> None:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            chunk = os.pread(fd, pos - start, start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                pos = start + nl + 1
                break
            pos = start
        log.warning(
            "%s: removing a partial last line (%d bytes) left by an interrupted write", self.path, size - pos
        )
        os.ftruncate(fd, pos)

    def _write_sync(self, events: list[AuditEvent]) -> None:
        data = "".join(_dumps_line(ev) + "\n" for ev in events)
        if self.to_stderr:
            sys.stderr.write(data)
            sys.stderr.flush()
            return
        fd = self._fd
        if fd is None:
            raise AuditError(f"{self.path}: audit file is not open")
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data.encode("ascii"))
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise

    def _last_hash_sync(self) -> str | None:
        if self.to_stderr or self.path is None or not self.path.exists():
            return None
        last = self._last_line()
        if last is None:
            return None
        try:
            return str(json.loads(last)["hash"])
        except (ValueError, KeyError, TypeError):
            raise AuditFormatError(f"{self.path}: the last line is not an audit event") from None

    def _last_line(self) -> str | None:
        assert self.path is not None
        with self.path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            buf = b""
            pos = end
            while pos > 0:
                start = max(0, pos - 65536)
                f.seek(start)
                buf = f.read(pos - start) + buf
                pos = start
                lines = buf.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or pos == 0:
                    last = lines[-1].strip()
                    return last.decode("utf-8") if last else None
        return None

    def _close_sync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def iter_all(self) -> Iterator[AuditEvent]:
        if self.to_stderr or self.path is None:
            raise AuditError("the jsonl audit sink writes to stderr; there is nothing to read")
        if not self.path.exists():
            raise AuditError(f"no audit file at {self.path}")
        with self.path.open("r", encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield AuditEvent.from_dict(json.loads(line))
                except (ValueError, AuditFormatError) as exc:
                    raise AuditFormatError(f"{self.path}:{lineno}: not an audit event ({exc})") from None

    def query(
        self,
        *,
        subject: str | None = None,
        tool: str | None = None,
        status: str | None = None,
        since: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        found: deque[AuditEvent] = deque(maxlen=max(0, limit))
        for ev in self.iter_all():
            if _filter(ev, subject, tool, status, since):
                found.append(ev)
        return list(found)

    def tail(self, n: int) -> list[AuditEvent]:
        return self.query(limit=n)


# ---------------------------------------------------------------------------------------------
# The pipeline


_RUN_RE = re.compile(r"^(\d{13})-(\d+)-(\d{6})$")
_run_counter = itertools.count()  # several AuditLogs in one process (tests, reload) never share a run
_SEGMENT_RE = re.compile(r"^(\d{12})\.jsonl$")


@dataclass
class _RunDir:
    """One process's spool directory for one sink; `lock_fd` holds its flock while it is ours."""

    name: str
    path: Path
    own: bool
    lock_fd: int | None = None
    created: bool = False


@dataclass(eq=False)
class _Segment:
    key: tuple[str, int]  # (run name, seq of the first event): the replay order
    run: _RunDir
    path: Path
    count: int
    events: list[AuditEvent] | None  # in memory until durably written, and while being replayed
    write: asyncio.Future[None] | None = None
    done: int = 0  # events of this segment the sink has acknowledged in this process
    active: bool = False  # the writer is replaying it: keep `events`

    def __lt__(self, other: _Segment) -> bool:
        return self.key < other.key


@dataclass
class _Channel:
    sink: AuditSink
    mem: deque[tuple[int, AuditEvent]] = field(default_factory=deque)
    segments: list[_Segment] = field(default_factory=list)
    adopted: list[_RunDir] = field(default_factory=list)
    own: _RunDir | None = None
    inflight: list[tuple[int, AuditEvent]] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    gathering: bool = False  # the writer is filling a batch: wake it only when the batch is full
    task: asyncio.Task[None] | None = None
    opened: bool = False
    healthy: bool = True
    first_at: float = 0.0
    queued: int = 0
    written: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    failures: int = 0


def _lock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_segment_file(path: Path, events: list[AuditEvent]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    data = "".join(_dumps_line(ev) + "\n" for ev in events).encode("ascii")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_segment_file(path: Path) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                events.append(AuditEvent.from_dict(json.loads(line)))
            except (ValueError, AuditFormatError) as exc:
                log.error("audit spool %s:%d is corrupt and is skipped: %s", path, lineno, exc)
    return events


class AuditLog:
    """The audit pipeline in front of one or more sinks. See the module docstring.

    Call `emit` from the event loop thread only. `open()` before emitting is not required
    (events wait in memory and are chained at open), but `close()` must be awaited at shutdown.
    """

    def __init__(
        self,
        sinks: Sequence[AuditSink],
        *,
        spool_dir: str | os.PathLike[str],
        queue_size: int = 10000,
        batch_size: int = 200,
        flush_interval: float = 0.2,
        shutdown_deadline: float = 5.0,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        write_timeout: float = 30.0,
        open_timeout: float = 10.0,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"audit sink names must be unique (they name spool directories): {names}")
        for n in names:
            if not n or n in (".", "..") or "/" in n or os.sep in n:
                raise ValueError(f"invalid audit sink name {n!r}")
        self._channels = [_Channel(sink) for sink in sinks]
        self._spool_dir = Path(spool_dir)
        self._queue_size = max(1, queue_size)
        self._batch_size = max(1, batch_size)
        self._flush_interval = max(0.0, flush_interval)
        self._deadline = max(0.0, shutdown_deadline)
        self._retry_initial = max(0.001, retry_initial)
        self._retry_max = max(self._retry_initial, retry_max)
        self._write_timeout = write_timeout
        self._open_timeout = open_timeout
        self._spool = _Worker("sentinel-audit-spool")
        self._spool_writes: set[asyncio.Future[None]] = set()
        self._preopen: list[AuditEvent] = []
        self._tip = GENESIS
        self._seq = 0
        self._run_name = ""
        self._state: Literal["new", "open", "closing", "closed"] = "new"
        self._closing = asyncio.Event()
        self._emitted = 0
        self._dropped = 0

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        base_dir: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> AuditLog:
        audit = cfg.audit
        base = Path(base_dir if base_dir is not None else cfg.base_dir)
        return cls(
            build_sinks(cfg, base, environ),
            spool_dir=_resolve(base, audit.spool_dir, DEFAULT_SPOOL),
            queue_size=audit.queue_size,
            batch_size=audit.batch_size,
            flush_interval=audit.flush_interval_secs,
            shutdown_deadline=audit.shutdown_deadline_secs,
        )

    @property
    def last_hash(self) -> str:
        return self._tip

    # -- emit --

    def emit(self, event: AuditEvent) -> None:
        """Record an event. Synchronous, never blocks on I/O, never raises."""
        try:
            if not event.id or not event.time:
                event_id, event_time = _stamp()
                event.id = event.id or event_id
                event.time = event.time or event_time
            _normalise(event)
            if self._state == "new":
                self._preopen.append(event)
                self._emitted += 1
                return
            if self._state == "closed":
                # Nowhere left to put it without blocking: make the loss loud and counted.
                self._dropped += 1
                log.error("audit event %s emitted after the audit log was closed; it is lost", event.id)
                return
            self._link(event)
            self._emitted += 1
        except Exception:
            self._dropped += 1
            log.exception("audit event could not be recorded")

    def _link(self, event: AuditEvent) -> None:
        event.prev_hash = self._tip
        try:
            event.hash = compute_hash(event)
        except (TypeError, ValueError, RecursionError):
            # Not JSON (a set, NaN, a tuple key, a cycle): redact_args returns JSON data. Only
            # callers that skipped redaction get here.
            event.args = redact_args(event.args, "redacted")
            event.hash = compute_hash(event)
        self._tip = event.hash
        seq = self._seq
        self._seq += 1
        for ch in self._channels:
            self._push(ch, (seq, event))

    def _push(self, ch: _Channel, item: tuple[int, AuditEvent]) -> None:
        if self._state == "closing" and ch.task is None:
            # close() has already taken the queues: straight to the spool, still in order.
            self._spill(ch, [item])
            ch.queued += 1
            return
        if len(ch.mem) >= self._queue_size:
            chunk = [ch.mem.popleft() for _ in range(min(self._batch_size, len(ch.mem)))]
            self._spill(ch, chunk)
        if not ch.mem:
            ch.first_at = time.monotonic()
        ch.mem.append(item)
        ch.queued += 1
        # A writer filling a batch sleeps until it is full or its flush timer fires: waking it for
        # every event would cost a task switch per event for nothing.
        if not ch.gathering or len(ch.mem) >= self._batch_size:
            ch.wake.set()

    # -- spool (all file work on the spool thread) --

    def _spill(self, ch: _Channel, items: list[tuple[int, AuditEvent]]) -> None:
        """Move `items` (consecutive, in order) to new spool segments."""
        for i in range(0, len(items), self._batch_size):
            chunk = items[i : i + self._batch_size]
            run = self._own_run(ch)
            events = [ev for _, ev in chunk]
            path = run.path / f"{chunk[0][0]:012d}.jsonl"
            seg = _Segment((run.name, chunk[0][0]), run, path, len(events), events)
            seg.write = self._spool.submit(lambda seg=seg, events=events: self._write_segment(seg, events))
            self._spool_writes.add(seg.write)
            seg.write.add_done_callback(lambda fut, seg=seg: self._segment_written(seg, fut))
            bisect.insort(ch.segments, seg)
            ch.spooled += len(chunk)
        if items:
            ch.wake.set()

    def _own_run(self, ch: _Channel) -> _RunDir:
        if ch.own is None:
            ch.own = _RunDir(self._run_name, self._spool_dir / ch.sink.name / self._run_name, own=True)
        return ch.own

    def _write_segment(self, seg: _Segment, events: list[AuditEvent]) -> None:
        run = seg.run
        if run.own and not run.created:
            self._create_run_dir(run)
        _write_segment_file(seg.path, events)

    def _create_run_dir(self, run: _RunDir) -> None:
        # Lock first, under a name nobody scans, then rename: another gateway scanning the spool
        # directory can never see (and adopt) a run directory that is not locked yet.
        run.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = run.path.with_name(f".{run.name}.tmp")
        tmp.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(tmp / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        if not _lock(fd):  # pragma: no cover - the name holds our pid
            os.close(fd)
            raise AuditError(f"spool directory {tmp} is locked by another process")
        os.rename(tmp, run.path)
        run.lock_fd = fd
        run.created = True

    def _segment_written(self, seg: _Segment, fut: asyncio.Future[None]) -> None:
        self._spool_writes.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            # The events stay in memory (seg.events) and are still delivered or retried at close.
            log.error("audit spool write to %s failed: %s", seg.path, exc)
            seg.write = None
            return
        if not seg.active:
            seg.events = None  # on disk now: free the memory

    def _scan_spool(self) -> None:
        """At open (spool thread): adopt the run directories whose gateway is gone."""
        existing_ms = 0
        for ch in self._channels:
            try:
                existing_ms = max(existing_ms, self._scan_sink_spool(ch))
            except OSError as exc:
                # Not fatal: delivery works without the spool; a later spill reports its own error.
                log.error("audit spool %s cannot be read: %s", self._spool_dir / ch.sink.name, exc)
        now_ms = time.time_ns() // 1_000_000
        run_ms = max(now_ms, existing_ms + 1)
        self._run_name = f"{run_ms:013d}-{os.getpid()}-{next(_run_counter) % 1_000_000:06d}"

    def _scan_sink_spool(self, ch: _Channel) -> int:
        existing_ms = 0
        base = self._spool_dir / ch.sink.name
        if base.is_dir():
            for entry in sorted(base.iterdir()):
                m = _RUN_RE.match(entry.name)
                if not m or not entry.is_dir():
                    continue
                existing_ms = max(existing_ms, int(m.group(1)))
                fd = os.open(entry / "lock", os.O_RDWR | os.O_CREAT, 0o600)
                if not _lock(fd):
                    os.close(fd)  # a live gateway owns it
                    continue
                run = _RunDir(entry.name, entry, own=False, lock_fd=fd, created=True)
                for leftover in entry.glob("*.tmp"):
                    # Written but never renamed: the process died before it counted as spooled.
                    log.warning("audit spool: removing incomplete segment %s", leftover)
                    leftover.unlink()
                segs = sorted(p for p in entry.iterdir() if _SEGMENT_RE.match(p.name))
                if not segs:
                    self._remove_run_dir(run)
                    continue
                ch.adopted.append(run)
                for p in segs:
                    count = p.read_bytes().count(b"\n")
                    ch.segments.append(_Segment((run.name, int(p.name[:12])), run, p, count, None))
            ch.segments.sort()
            if ch.segments:
                log.info("audit sink %s: %d spooled segment(s) to replay", ch.sink.name, len(ch.segments))
        return existing_ms

    def _remove_run_dir(self, run: _RunDir) -> None:
        with contextlib.suppress(FileNotFoundError):
            (run.path / "lock").unlink()
        with contextlib.suppress(OSError):
            run.path.rmdir()
        if run.lock_fd is not None:
            os.close(run.lock_fd)
            run.lock_fd = None

    def _finish_segment(self, seg: _Segment, last_of_run: bool) -> None:
        """Spool thread: a segment was fully replayed."""
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()
        if last_of_run and not seg.run.own:
            self._remove_run_dir(seg.run)

    async def _segment_events(self, seg: _Segment) -> list[AuditEvent]:
        if seg.write is not None and not seg.write.done():
            await asyncio.shield(seg.write)
        events = seg.events
        if events is None:
            events = await self._spool.run(lambda: _read_segment_file(seg.path))
        return events

    # -- lifecycle --

    async def open(self) -> None:
        """Adopt spools left by earlier runs, open the sinks (a sink that fails to open is retried
        in the background: never fatal), continue the chain, start the writers."""
        if self._state != "new":
            return
        await self._spool.run(self._scan_spool)
        await asyncio.gather(*(self._open_sink(ch) for ch in self._channels))
        self._tip = await self._find_tip()
        self._state = "open"
        for ev in self._preopen:
            self._link(ev)
        self._preopen.clear()
        for ch in self._channels:
            ch.task = asyncio.ensure_future(self._supervise(ch))

    async def _open_sink(self, ch: _Channel) -> bool:
        try:
            await asyncio.wait_for(ch.sink.open(), self._open_timeout)
        except Exception as exc:
            ch.healthy = False
            ch.failures += 1
            log.warning(
                "audit sink %s cannot be opened (events are spooled until it can): %s", ch.sink.name, exc
            )
            return False
        ch.opened = True
        return True

    async def _find_tip(self) -> str:
        for ch in self._channels:
            if ch.segments:
                try:
                    events = await self._segment_events(ch.segments[-1])
                except OSError as exc:
                    log.warning("audit spool %s unreadable: %s", ch.segments[-1].path, exc)
                    events = []
                if events:
                    return events[-1].hash
            if ch.opened:
                try:
                    h = await asyncio.wait_for(ch.sink.last_hash(), self._open_timeout)
                except Exception as exc:
                    log.warning("audit sink %s: cannot read the last hash: %s", ch.sink.name, exc)
                    continue
                if h:
                    return h
        return GENESIS

    async def close(self) -> None:
        """Flush within `shutdown_deadline`, spool the rest, close the sinks."""
        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            await self.open()
        self._state = "closing"
        self._closing.set()
        for ch in self._channels:
            ch.wake.set()
        tasks = [ch.task for ch in self._channels if ch.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self._deadline)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for ch in self._channels:
            ch.task = None
            left = list(ch.inflight or ()) + list(ch.mem)
            ch.inflight = None
            ch.mem.clear()
            if left:
                self._spill(ch, left)
            partial = [s for s in ch.segments if s.done and s.events is not None]
            for seg in partial:
                # Keep only what the sink has not acknowledged, so the next run does not repeat it.
                rest = seg.events[seg.done :] if seg.events is not None else []
                await self._spool.run(lambda seg=seg, rest=rest: _write_segment_file(seg.path, rest))
        await asyncio.gather(*(self._close_sink(ch) for ch in self._channels))
        self._state = "closed"  # from here on emit() has nowhere to put an event
        await self._drain_spool_writes()
        await self._spool.run(self._release_runs)
        self._spool.stop()
        st = self.stats()
        log.info(
            "audit log closed: %d written, %d spooled for later, %d dropped",
            st["written"],
            st["pending_spool"],
            st["dropped"],
        )

    async def _drain_spool_writes(self) -> None:
        while self._spool_writes:
            await asyncio.gather(*list(self._spool_writes), return_exceptions=True)
        for ch in self._channels:
            for seg in ch.segments:
                if seg.write is None and seg.events is not None and not seg.path.exists() and not seg.done:
                    # An earlier write failed; one more try, else the loss is counted.
                    events = seg.events
                    try:
                        await self._spool.run(lambda seg=seg, events=events: self._write_segment(seg, events))
                    except OSError as exc:
                        ch.dropped += len(events)
                        log.error(
                            "audit: %d event(s) lost, spool %s unwritable: %s", len(events), seg.path, exc
                        )

    async def _close_sink(self, ch: _Channel) -> None:
        if not ch.opened:
            return
        try:
            await asyncio.wait_for(ch.sink.close(), max(1.0, self._deadline))
        except Exception as exc:
            log.warning("audit sink %s did not close cleanly: %s", ch.sink.name, exc)

    def _release_runs(self) -> None:
        for ch in self._channels:
            runs = list(ch.adopted)
            if ch.own is not None and ch.own.created:
                runs.append(ch.own)
            for run in runs:
                if any(s.run is run for s in ch.segments):
                    if run.lock_fd is not None:  # keep the files; let the next run adopt them
                        os.close(run.lock_fd)
                        run.lock_fd = None
                else:
                    self._remove_run_dir(run)

    # -- writers --

    async def _supervise(self, ch: _Channel) -> None:
        # A bug in a writer must not silently stop one sink's delivery for the rest of the run.
        while True:
            try:
                await self._writer(ch)
                return
            except Exception:
                log.exception("audit writer for sink %s failed; restarting it", ch.sink.name)
                if ch.inflight:
                    self._spill(ch, ch.inflight)
                    ch.inflight = None
                if not await self._after_failure(ch, self._retry_max):
                    return

    async def _writer(self, ch: _Channel) -> None:
        backoff = self._retry_initial
        while True:
            if not ch.opened and (self._state != "open" or not await self._open_sink(ch)):
                if not await self._after_failure(ch, backoff):
                    return
                backoff = min(backoff * 2, self._retry_max)
                continue
            if ch.segments:
                seg = ch.segments[0]
                seg.active = True
                try:
                    events = seg.events = await self._segment_events(seg)
                except OSError as exc:
                    ch.segments.remove(seg)
                    ch.dropped += seg.count
                    log.error(
                        "audit: spool segment %s unreadable, %d event(s) lost: %s", seg.path, seg.count, exc
                    )
                    continue
                seg.count = len(events)
                while seg.done < len(events):
                    batch = events[seg.done : seg.done + self._batch_size]
                    if not await self._write(ch, batch):
                        break
                    seg.done += len(batch)
                    ch.written += len(batch)
                    ch.replayed += len(batch)
                else:
                    ch.segments.remove(seg)
                    last = not any(s.run is seg.run for s in ch.segments)
                    await self._spool.run(lambda seg=seg, last=last: self._finish_segment(seg, last))
                    backoff = self._retry_initial
                    continue
                if not await self._after_failure(ch, backoff):
                    return
                backoff = min(backoff * 2, self._retry_max)
                continue
            if ch.mem:
                await self._gather_batch(ch)
                if ch.segments:  # a spill happened while waiting; it is older than the queue
                    continue
                n = min(self._batch_size, len(ch.mem))
                ch.inflight = [ch.mem.popleft() for _ in range(n)]
                ok = await self._write(ch, [ev for _, ev in ch.inflight])
                items, ch.inflight = ch.inflight, None
                if ok:
                    ch.written += len(items)
                    backoff = self._retry_initial
                    continue
                self._spill(ch, items)
                if not await self._after_failure(ch, backoff):
                    return
                backoff = min(backoff * 2, self._retry_max)
                continue
            if self._state != "open":
                return
            ch.wake.clear()
            await ch.wake.wait()

    async def _gather_batch(self, ch: _Channel) -> None:
        """Wait until a batch is full, or the oldest queued event has waited `flush_interval`."""
        deadline = ch.first_at + self._flush_interval
        loop = asyncio.get_running_loop()
        ch.gathering = True
        try:
            while len(ch.mem) < self._batch_size and self._state == "open" and not ch.segments:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                ch.wake.clear()
                # A timer instead of wait_for: no extra task per wait.
                timer = loop.call_later(remaining, ch.wake.set)
                try:
                    await ch.wake.wait()
                finally:
                    timer.cancel()
        finally:
            ch.gathering = False

    async def _write(self, ch: _Channel, batch: list[AuditEvent]) -> bool:
        try:
            await asyncio.wait_for(ch.sink.write_batch(batch), self._write_timeout)
        except Exception as exc:
            ch.failures += 1
            if ch.healthy:
                log.warning("audit sink %s failed, spooling until it recovers: %s", ch.sink.name, exc)
            else:
                log.debug("audit sink %s still failing: %s", ch.sink.name, exc)
            ch.healthy = False
            return False
        if not ch.healthy:
            log.info("audit sink %s recovered", ch.sink.name)
            ch.healthy = True
        return True

    async def _after_failure(self, ch: _Channel, delay: float) -> bool:
        """Spool the memory queue (durability while the sink is down), then wait `delay`.
        False when the log is closing: close() spools the rest."""
        if ch.mem:
            items = list(ch.mem)
            ch.mem.clear()
            self._spill(ch, items)
        if self._state != "open":
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)
        return self._state == "open"

    # -- observation --

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: totals plus one dict per sink."""
        sinks: dict[str, dict[str, int]] = {}
        for ch in self._channels:
            sinks[ch.sink.name] = {
                "queued": ch.queued,
                "written": ch.written,
                "spooled": ch.spooled,
                "replayed": ch.replayed,
                "dropped": ch.dropped,
                "failures": ch.failures,
                "pending_memory": len(ch.mem) + len(ch.inflight or ()),
                "pending_spool": sum(s.count - s.done for s in ch.segments),
                "healthy": int(ch.healthy and ch.opened),
            }
        total: dict[str, Any] = {
            k: sum(s[k] for s in sinks.values())
            for k in (
                "queued",
                "written",
                "spooled",
                "replayed",
                "dropped",
                "pending_memory",
                "pending_spool",
            )
        }
        total["emitted"] = self._emitted
        total["dropped"] += self._dropped
        total["sinks"] = sinks
        return total

    def idle(self) -> bool:
        """Nothing waiting anywhere: every emitted event is in every sink."""
        return self._state == "open" and all(
            not ch.mem and ch.inflight is None and not ch.segments for ch in self._channels
        )

    async def drain(self, timeout: float) -> bool:
        """Wait until `idle()` or `timeout` seconds; for tests and orderly handovers."""
        end = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() >= end:
                return False
            await asyncio.sleep(0.005)
        return True


# ---------------------------------------------------------------------------------------------
# Config glue, built-in plugin registration, CLI functions


def _resolve(base: Path, configured: str, default: str) -> Path:
    p = Path(os.path.expanduser(configured)) if configured else Path(default)
    return p if p.is_absolute() else base / p


def args_policy(cfg: AuditConfig, tool: str | None) -> ArgsPolicy:
    """The args policy for an exposed tool name: `tool_args` override, else `args`."""
    policy = cfg.tool_args.get(tool, cfg.args) if tool is not None else cfg.args
    if policy not in POLICIES:
        log.warning("unknown audit args policy %r for %s; using 'redacted'", policy, tool)
        return "redacted"
    return policy  # type: ignore[return-value]


# Sink factory contract: factory(cfg, base_dir, environ) -> AuditSink. `environ` is the gateway's
# environment (process environment plus the .env next to the config): sinks read secrets from it.


def _sqlite_factory(cfg: Config, base_dir: Path, environ: Mapping[str, str] | None = None) -> SqliteSink:
    return SqliteSink(_resolve(base_dir, cfg.audit.sqlite_path, DEFAULT_SQLITE))


def _jsonl_factory(cfg: Config, base_dir: Path, environ: Mapping[str, str] | None = None) -> JsonlSink:
    if cfg.audit.jsonl_path == "-":
        return JsonlSink("-")
    return JsonlSink(_resolve(base_dir, cfg.audit.jsonl_path, DEFAULT_JSONL))


# Audit sink factories are called as factory(config: Config, base_dir: Path) -> AuditSink.
plugins.register("audit_sink", "sqlite", _sqlite_factory)
plugins.register("audit_sink", "jsonl", _jsonl_factory)
plugins.register("audit_sink", "postgres", "sentinel_gw.ops.audit_postgres:create_sink", extra="audit")


def build_sinks(
    cfg: Config, base_dir: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> list[AuditSink]:
    """One sink per `[audit] sinks` entry, through the plugin registry (raises PluginError)."""
    base = Path(base_dir if base_dir is not None else cfg.base_dir)
    sinks: list[AuditSink] = []
    for name in cfg.audit.sinks:
        factory = plugins.get("audit_sink", name)
        sinks.append(factory(cfg, base, environ))  # type: ignore[call-arg]
    return sinks


def open_sink_for_cli(
    cfg: Config,
    base_dir: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> AuditSink:
    """The sink the CLI reads: `name`, else the first configured sink that can be read back
    (JSONL to stderr cannot)."""
    base = Path(base_dir if base_dir is not None else cfg.base_dir)
    candidates = [name] if name is not None else list(cfg.audit.sinks)
    for n in candidates:
        sink = plugins.get("audit_sink", n)(cfg, base, environ)  # type: ignore[call-arg]
        if isinstance(sink, JsonlSink) and sink.to_stderr and name is None:
            continue
        return sink  # type: ignore[return-value]
    raise AuditError("no configured audit sink can be read back (jsonl to stderr only)")


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(since: str | datetime, *, now: datetime | None = None) -> str:
    """`15m`, `2h`, `7d`, `1w`, `30s`, an ISO 8601 date or time (naive = UTC), or a datetime ->
    the RFC 3339 string audit times compare against."""
    if isinstance(since, datetime):
        dt = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
        return _rfc3339(dt)
    m = _RELATIVE.match(since)
    if m:
        base = now or datetime.now(timezone.utc)
        return _rfc3339(base - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)]))
    text = since.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since: expected e.g. 15m, 2h, 7d or 2025-01-31T12:00:00Z, got {since!r}"
        ) from None
    return _rfc3339(dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc))


def tail(sink: AuditSink, n: int = 20) -> list[AuditEvent]:
    """The last `n` events, oldest first."""
    return sink.tail(n)


def query(
    sink: AuditSink,
    *,
    subject: str | None = None,
    tool: str | None = None,
    status: str | None = None,
    since: str | datetime | None = None,
    limit: int = 100,
) -> list[AuditEvent]:
    """The most recent `limit` events matching every filter given, oldest first. `tool` is a glob
    over exposed names; `since` as in `parse_since`."""
    return sink.query(
        subject=subject,
        tool=tool,
        status=status,
        since=None if since is None else parse_since(since),
        limit=limit,
    )


def export_jsonl(sink: AuditSink, out: IO[str] | str | os.PathLike[str]) -> int:
    """Write every event, in storage order, one JSON object per line; returns the count."""
    if isinstance(out, (str, os.PathLike)):
        path = Path(out)
        _create_private_file(path)
        with path.open("w", encoding="ascii") as f:
            return export_jsonl(sink, f)
    count = 0
    for ev in sink.iter_all():
        out.write(_dumps_line(ev) + "\n")
        count += 1
    return count


def verify(sink: AuditSink) -> VerifyResult:
    """Verify the hash chain of everything in the sink."""
    checked = 0

    def counted() -> Iterator[AuditEvent]:
        nonlocal checked
        for ev in sink.iter_all():
            checked += 1
            yield ev

    try:
        return verify_chain(counted())
    except AuditFormatError as exc:
        return VerifyResult(False, max(0, checked - 1), None, str(exc), checked)


def format_event(ev: AuditEvent) -> str:
    """One human-readable line for `audit tail` and `audit query`."""
    who = ev.subject or "-"
    what = ev.tool or ev.method or "-"
    where = f" @{ev.backend}" if ev.backend else ""
    lat = f" {ev.latency_ms:.0f}ms" if ev.latency_ms is not None else ""
    err = f" error={ev.error!r}" if ev.error else ""
    return f"{ev.time} {ev.kind:<8} {ev.status:<12} {who} {what}{where}{lat}{err}"
