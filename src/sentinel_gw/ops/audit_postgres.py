"""The PostgreSQL audit sink (extra `audit`: psycopg 3).

Registered lazily in `ops/audit.py` as `postgres`; this is the only module that imports psycopg,
and it is imported only when a config names the sink (a missing psycopg is then one clear
`PluginError` naming `pip install 'sentinel-gw[audit]'`).

- The URL comes from the environment variable named by `[audit] postgres_url_env`. Its password
  never appears in a log line, an error message or `repr()`: errors are re-raised as `AuditError`
  with the password scrubbed and without the original exception attached.
- Blocking psycopg calls run on one dedicated daemon thread per sink (`_Worker`, as for SQLite):
  calls run in submission order, so a write that the pipeline gave up on (write timeout) still
  lands before its retry, and a call hung on a dead network never blocks the event loop or the
  interpreter's exit. The CLI reading methods are synchronous and use their own connection.
- Schema migrations are versioned in `sentinel_schema_migrations` and applied in one transaction
  under a transaction-scoped advisory lock, with `IF NOT EXISTS` everywhere, so gateways starting
  together neither collide nor apply a migration twice. They are checked again on every reconnect.
- A batch is one transaction of `INSERT ... ON CONFLICT (id) DO NOTHING` (psycopg's pipelined
  `executemany`), so a replayed batch is idempotent. Any error discards the connection; the next
  call reconnects. Backoff between attempts is the pipeline's (`AuditLog` retries with exponential
  backoff and spools meanwhile); libpq's `connect_timeout` and TCP keepalives bound each attempt.
- Exact read-back: the hash chain needs every field back exactly as it was hashed. A few values
  cannot be stored exactly in the typed columns (a NUL character in text, a time that is not
  RFC 3339 UTC with milliseconds, JSON numbers that `jsonb` rewrites such as `1e+16` or `-0.0`).
  Those rows store a sanitised value in the typed column (for queries) and the exact value in the
  `verbatim` column (a JSON object by field name; NULL for ordinary rows). Over-long subjects and
  tool names (btree index entries are limited to ~2700 bytes) are handled the same way. A verbatim value is
  used on read only if it is consistent with its typed column, so editing either is detected.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from sentinel_gw.ops.audit import (
    _COLUMNS,
    AuditError,
    AuditEvent,
    AuditFormatError,
    ThreadedSink,
    _rfc3339,
    _Worker,
    sql_where,
)

if TYPE_CHECKING:
    from sentinel_gw.config_schema import Config

__all__ = ["SCHEMA_VERSION", "PostgresSink", "create_sink", "redact_url"]

log = logging.getLogger("sentinel_gw.audit")

MIGRATIONS_TABLE = "sentinel_schema_migrations"
# pg_advisory_xact_lock key: "SENTINEL" in ASCII, shared by every sentinel-gw migrating this database.
_MIGRATION_LOCK = 0x53454E54494E454C

# Append-only: migration N (1-based) takes the schema from version N-1 to N. Every statement is
# idempotent on its own (IF NOT EXISTS), in case a schema was created by hand or half-restored.
_MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "audit_events",
        (
            """CREATE TABLE IF NOT EXISTS audit_events (
                id TEXT PRIMARY KEY,
                seq BIGINT GENERATED ALWAYS AS IDENTITY,
                time TIMESTAMPTZ,
                kind TEXT NOT NULL,
                method TEXT NOT NULL,
                status TEXT NOT NULL,
                session TEXT,
                subject TEXT,
                roles JSONB NOT NULL,
                client_name TEXT,
                transport TEXT,
                tool TEXT,
                original TEXT,
                backend TEXT,
                args JSONB,
                error TEXT,
                latency_ms DOUBLE PRECISION,
                request_id TEXT,
                upstream_id TEXT,
                detail JSONB,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL,
                verbatim TEXT
            )""",
            "CREATE UNIQUE INDEX IF NOT EXISTS audit_events_seq ON audit_events (seq)",
            "CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time)",
            "CREATE INDEX IF NOT EXISTS audit_events_subject ON audit_events (subject, seq)",
            "CREATE INDEX IF NOT EXISTS audit_events_tool ON audit_events (tool, seq)",
            "CREATE INDEX IF NOT EXISTS audit_events_status ON audit_events (status, seq)",
        ),
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_TEXT_REQUIRED = frozenset({"id", "kind", "method", "status", "prev_hash", "hash"})
_JSON_COLUMNS = frozenset({"roles", "args", "detail"})
# A btree index entry holds at most ~2700 bytes: a longer subject or tool name (a client can send
# any tool name) would make its batch unwritable forever. The typed column keeps a prefix.
_INDEXED_TEXT = frozenset({"subject", "tool", "status"})
_INDEXED_MAX_CHARS = 600
_ALL_COLUMNS = (*_COLUMNS, "verbatim")
_INSERT = (
    f"INSERT INTO audit_events ({', '.join(_ALL_COLUMNS)}) "  # noqa: S608 - fixed column names
    f"VALUES ({', '.join('%s' for _ in _ALL_COLUMNS)}) ON CONFLICT (id) DO NOTHING"
)
_SELECT = f"SELECT {', '.join(_ALL_COLUMNS)} FROM audit_events"  # noqa: S608 - fixed column names

# libpq defaults applied only when the URL does not set them.
_CONNECT_DEFAULTS: dict[str, str] = {
    "connect_timeout": "10",
    "application_name": "sentinel-gw audit",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


# ---------------------------------------------------------------------------------------------
# Password redaction


def redact_url(url: str) -> str:
    """The URL (or key=value conninfo) with any password replaced by `***`."""
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            return "<invalid PostgreSQL URL>"
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hosts}"
        query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)


def _passwords(url: str) -> list[str]:
    """Every spelling of the password that could show up in a message, longest first."""
    found: set[str] = set()
    with contextlib.suppress(Exception):
        pw = conninfo_to_dict(url).get("password")
        if pw:
            found.add(str(pw))
    if "://" in url:
        with contextlib.suppress(ValueError):
            parts = urlsplit(url)
            userinfo = parts.netloc.rpartition("@")[0]
            if ":" in userinfo:
                raw = userinfo.split(":", 1)[1]
                found.update({raw, unquote(raw)})
            for m in re.finditer(r"(?i)(?:^|&)password=([^&]*)", parts.query):
                found.update({m.group(1), unquote(m.group(1))})
    else:
        for m in re.finditer(r"(?i)\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url):
            found.update({m.group(1), m.group(1).strip("'")})
    for pw in list(found):
        found.add(quote(pw, safe=""))
    return sorted((p for p in found if p), key=len, reverse=True)


# ---------------------------------------------------------------------------------------------
# Rows: typed columns plus `verbatim`


def _clean_text(s: str) -> str:
    """What a TEXT column can hold: no NUL, valid UTF-8."""
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def _json_image(v: Any) -> Any:
    """What a JSONB column can hold (strings and keys cleaned, non-finite numbers as text)."""
    if isinstance(v, str):
        return _clean_text(v)
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {_clean_text(k if isinstance(k, str) else json.dumps(k)): _json_image(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_image(x) for x in v]
    return _clean_text(str(v))


def _jsonb_readback(v: Any) -> Any:
    """What PostgreSQL's jsonb gives back for `v`: numbers are `numeric`, which has no negative
    zero and prints a float written with an exponent and no fraction (`1e+16`) as an integer."""
    if isinstance(v, float):
        if v == 0:
            return 0.0
        if abs(v) >= 1e16:
            return int(Decimal(repr(v)))  # numeric parses the decimal text exactly
        return v
    if isinstance(v, dict):
        return {k: _jsonb_readback(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonb_readback(x) for x in v]
    return v


def _canon(v: Any) -> str | None:
    try:
        return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError):
        return None


def _parse_time(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    text = v.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _latency_image(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _image(name: str, v: Any) -> tuple[Any, bool]:
    """(the value for the typed column, whether it reads back exactly as `v`)."""
    if name == "time":
        dt = _parse_time(v)
        return dt, dt is not None and _rfc3339(dt) == v
    if name == "latency_ms":
        f = _latency_image(v)
        return f, v is None or (f is not None and type(v) is float and _canon(f) == _canon(v))
    if name in _JSON_COLUMNS:
        if v is None:
            return ([], False) if name == "roles" else (None, True)
        img = _json_image(v)
        exact = _canon(v)
        return img, exact is not None and _canon(_jsonb_readback(img)) == exact
    if v is None:
        return ("", False) if name in _TEXT_REQUIRED else (None, True)
    img = _clean_text(v if type(v) is str else str(v))
    if name in _INDEXED_TEXT and len(img) > _INDEXED_MAX_CHARS:
        img = img[:_INDEXED_MAX_CHARS]
    return img, img is v or img == v


def _to_row(ev: AuditEvent) -> tuple[Any, ...]:
    row: list[Any] = []
    verbatim: dict[str, Any] = {}
    for name in _COLUMNS:
        value = getattr(ev, name)
        img, exact = _image(name, value)
        if not exact:
            verbatim[name] = value
        row.append(Jsonb(img) if name in _JSON_COLUMNS and img is not None else img)
    row.append(json.dumps(verbatim, ensure_ascii=True, default=str) if verbatim else None)
    return tuple(row)


def _consistent(name: str, original: Any, column: Any) -> bool:
    """Whether the typed column holds what storing `original` would have put there."""
    img, _ = _image(name, original)
    if name in _JSON_COLUMNS:
        return _canon(_jsonb_readback(img)) == _canon(column)
    return bool(img == column)


def _from_row(row: tuple[Any, ...]) -> AuditEvent:
    data: dict[str, Any] = {}
    for name, raw in zip(_COLUMNS, row[: len(_COLUMNS)], strict=True):
        data[name] = _rfc3339(raw) if name == "time" and isinstance(raw, datetime) else raw
    verbatim_text = row[len(_COLUMNS)]
    if verbatim_text is not None:
        try:
            verbatim = json.loads(verbatim_text)
        except ValueError:
            raise AuditFormatError(f"row {data.get('id')!r}: the verbatim column is not JSON") from None
        if not isinstance(verbatim, dict):
            raise AuditFormatError(f"row {data.get('id')!r}: the verbatim column is not a JSON object")
        for name, original in verbatim.items():
            if name not in data:
                continue
            # Only when consistent with the typed column: an edit of either one breaks the hash.
            if _consistent(name, original, row[_COLUMNS.index(name)]):
                data[name] = original
    if data.get("roles") is None:
        data["roles"] = []
    return AuditEvent.from_dict(data)


def _glob_regex(pattern: str) -> str:
    """A shell glob (`*`, `?`, `[abc]`, `[!abc]`, as fnmatch and SQLite GLOB) as an anchored
    PostgreSQL regular expression."""
    out = ["^"]
    i, n = 0, len(pattern)

    def lit(c: str) -> str:
        return c if c.isalnum() else "\\" + c

    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            body = pattern[i:j]
            i = j + 1
            neg = body[:1] in ("!", "^")
            if neg:
                body = body[1:]
            out.append("[" + ("^" if neg else "") + "".join(c if c == "-" else lit(c) for c in body) + "]")
        else:
            out.append(lit(c))
    out.append("$")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# The sink


class PostgresSink(ThreadedSink):
    """Audit events in a PostgreSQL table. See the module docstring."""

    def __init__(self, url: str, *, name: str = "postgres") -> None:
        if not url.strip():
            raise AuditError("the PostgreSQL audit sink needs a URL")
        self.name = name
        self._url = url
        self.display_url = redact_url(url)
        self._secrets = _passwords(url)
        self._worker = _Worker(f"sentinel-audit-{name}")
        self._conn: psycopg.Connection[Any] | None = None  # touched only by the worker thread

    def __repr__(self) -> str:
        return f"PostgresSink({self.display_url!r}, name={self.name!r})"

    # -- errors and connections --

    def _scrub(self, text: str) -> str:
        if self._url in text:
            text = text.replace(self._url, self.display_url)
        for pw in self._secrets:
            text = text.replace(pw, "***")
        return text

    def _error(self, action: str, exc: BaseException) -> AuditError:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return AuditError(self._scrub(f"{self.display_url}: {action}: {detail}"))

    def _conninfo(self) -> str:
        given = conninfo_to_dict(self._url)
        missing = {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in given}
        return make_conninfo(self._url, **missing)

    def _connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        failure: AuditError | None = None
        try:
            return psycopg.connect(self._conninfo(), autocommit=autocommit)
        except psycopg.Error as exc:
            failure = self._error("cannot connect", exc)
        raise failure  # outside the except block: the original exception is not chained

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- writer (worker thread) --

    def _ensure_conn(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._discard()
        conn = self._connect()
        try:
            self._migrate(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        self._conn = conn
        return conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        failure: BaseException | None = None
        try:
            with conn.transaction():
                # Held until commit: concurrent gateways migrate one after the other.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute(
                    f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                        version INTEGER PRIMARY KEY,
                        description TEXT NOT NULL,
                        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                    )"""
                )
                row = conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {MIGRATIONS_TABLE}").fetchone()  # noqa: S608
                current = int(row[0]) if row else 0
                if current > SCHEMA_VERSION:
                    raise AuditError(
                        f"{self.display_url}: audit schema version {current} is newer than this "
                        f"sentinel-gw understands ({SCHEMA_VERSION}); upgrade sentinel-gw"
                    )
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    description, statements = _MIGRATIONS[version - 1]
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} (version, description) VALUES (%s, %s)",  # noqa: S608
                        (version, description),
                    )
                    log.info("audit database %s: schema migrated to version %d", self.display_url, version)
        except psycopg.Error as exc:
            failure = self._error("schema migration failed", exc)
        if failure is not None:
            raise failure

    def _open_sync(self) -> None:
        self._ensure_conn()

    def _write_sync(self, events: list[AuditEvent]) -> None:
        rows = [_to_row(ev) for ev in events]
        conn = self._ensure_conn()
        failure: AuditError | None = None
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_INSERT, rows)
        except psycopg.Error as exc:
            # Whatever went wrong, start the next attempt from a fresh connection.
            self._discard()
            failure = self._error(f"writing {len(rows)} audit event(s) failed", exc)
        except BaseException:
            self._discard()
            raise
        if failure is not None:
            raise failure

    def _last_hash_sync(self) -> str | None:
        conn = self._ensure_conn()
        failure: AuditError | None = None
        try:
            row = conn.execute("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        except psycopg.Error as exc:
            self._discard()
            failure = self._error("reading the last hash failed", exc)
        if failure is not None:
            raise failure
        return None if row is None else str(row[0])

    def _close_sync(self) -> None:
        self._discard()

    # -- reading (CLI, caller's thread, own connection) --

    def _reader(self) -> psycopg.Connection[Any]:
        conn = self._connect(autocommit=False)
        failure: AuditError | None = None
        try:
            row = conn.execute("SELECT to_regclass('audit_events') IS NOT NULL").fetchone()
            if not row or not row[0]:
                failure = AuditError(
                    f"{self.display_url} is not a sentinel-gw audit database (no audit_events)"
                )
        except psycopg.Error as exc:
            failure = self._error("cannot read", exc)
        if failure is not None:
            conn.close()
            raise failure
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
        when = None if since is None else _parse_time(since)
        if since is not None and when is None:
            raise AuditError(f"--since: not a time: {since!r}")
        regex = None if tool is None else _glob_regex(tool)
        where, params = sql_where(
            (("subject =", subject), ("tool ~", regex), ("status =", status), ("time >=", when)), "%s"
        )
        sql = _SELECT + where + " ORDER BY seq DESC LIMIT %s"
        params.append(max(0, limit))
        conn = self._reader()
        failure: AuditError | None = None
        try:
            rows = conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            failure = self._error("query failed", exc)
        finally:
            conn.close()
        if failure is not None:
            raise failure
        return [_from_row(r) for r in reversed(rows)]

    def tail(self, n: int) -> list[AuditEvent]:
        return self.query(limit=n)

    def iter_all(self) -> Iterator[AuditEvent]:
        """Every event in storage order, streamed through a server-side cursor."""
        conn = self._reader()
        failure: AuditError | None = None
        try:
            with conn.cursor(name=f"sentinel_audit_{secrets.token_hex(4)}") as cur:
                cur.itersize = 1000
                cur.execute(_SELECT + " ORDER BY seq")
                for row in cur:
                    yield _from_row(row)
        except psycopg.Error as exc:
            failure = self._error("reading failed", exc)
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        if failure is not None:
            raise failure


def create_sink(
    cfg: Config, base_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> PostgresSink:
    """The `postgres` audit sink factory: the URL is read from the environment variable named by
    `[audit] postgres_url_env` — in `environ` when given, else the process environment (the
    registry calls factories as `factory(config, base_dir)`)."""
    var = cfg.audit.postgres_url_env
    source = os.environ if environ is None else environ
    url = (source.get(var) or "").strip() if var else ""
    if not url:
        raise AuditError(
            f"audit sink 'postgres': the environment variable {var or '(postgres_url_env is empty)'} "
            "is not set; it must hold the PostgreSQL URL, e.g. postgresql://user@host:5432/db"
        )
    return PostgresSink(url)
