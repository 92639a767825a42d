"""Integration fixtures: a real PostgreSQL server (see tests/pg.py).

- `pg_server` (session): one throwaway cluster for the whole run, removed at the end (also when
  tests fail). Missing binaries: skipped locally, a failure when `CI` is set.
- `pg` (function): that server, started if an earlier test left it stopped; tests may `stop()`,
  `start()` and `restart()` it (same data directory and port).
- `pg_url` (function): the URL of a fresh, empty database on it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import PgError, PgServer, find_bindir, unavailable


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = find_bindir()
    if bindir is None:
        unavailable(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres, createdb) not found on PATH or in "
            "/usr/lib/postgresql/*/bin; install the `postgresql` package"
        )
    try:
        server = PgServer.for_this_process(bindir)
    except PgError as exc:
        unavailable(str(exc))
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def pg(pg_server: PgServer) -> PgServer:
    pg_server.start()
    return pg_server


@pytest.fixture
def pg_url(pg: PgServer) -> str:
    return pg.create_database()
