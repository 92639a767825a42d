"""A throwaway PostgreSQL cluster for tests, built from the system's PostgreSQL binaries.

`PgServer` runs `initdb` into a fresh temporary directory, listens on a free loopback TCP port
with trust authentication (loopback only), and can be stopped and started again with the same
data directory and port (outage tests). When the tests run as root, every PostgreSQL command runs
as the `postgres` OS user (PostgreSQL refuses to run as root), and the directory is chowned to it.

Only the binaries are needed here (no psycopg), so the fixture works, and reports clearly, even
when the `audit` extra is missing.

`unavailable(reason)`: a missing PostgreSQL is a skip on a developer's machine and a failure in CI
(`CI` set and not "0"/"false").
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["PgError", "PgServer", "find_bindir", "in_ci", "unavailable"]

_NEEDED = ("initdb", "pg_ctl", "postgres", "createdb")
_CMD_TIMEOUT = 120.0  # seconds any single PostgreSQL command may take
_START_TIMEOUT = 60  # pg_ctl -t


class PgError(RuntimeError):
    """A PostgreSQL command failed; the message includes its output and the server log's tail."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str, *, module_level: bool = False) -> NoReturn:
    """Skip locally; fail in CI, where a missing PostgreSQL must not pass silently."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: the PostgreSQL tests must run in CI)", pytrace=False)
    pytest.skip(f"{reason} (a failure when CI is set)", allow_module_level=module_level)


def _version_key(path: str) -> tuple[int, ...]:
    m = re.search(r"/postgresql/([\d.]+)/bin$", path)
    return tuple(int(p) for p in m.group(1).split(".") if p) if m else (0,)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl, postgres and createdb: initdb's on PATH first (symlinks
    resolved), then the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates += [Path(os.path.realpath(initdb)).parent, Path(initdb).parent]
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += [Path(d) for d in dirs]
    for d in candidates:
        if all(os.access(d / name, os.X_OK) for name in _NEEDED):
            return d
    return None


def _traversable_by_all(path: Path) -> bool:
    p = path.resolve()
    return all(os.stat(d).st_mode & 0o001 for d in (p, *p.parents))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One throwaway cluster. `start()`, `stop()`, `restart()`, `create_database()`, `remove()`."""

    def __init__(self, bindir: Path, *, os_user: str | None = None) -> None:
        self.bindir = bindir
        self.os_user = os_user
        parent = tempfile.gettempdir()
        if os_user is not None and not _traversable_by_all(Path(parent)):
            parent = "/tmp"  # e.g. TMPDIR under /root: the postgres user could not reach it
        self.root = Path(tempfile.mkdtemp(prefix="sentinel-pg-", dir=parent))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.logfile = self.root / "postgres.log"
        self.port = 0
        self.running = False
        self._initialised = False

    @classmethod
    def for_this_process(cls, bindir: Path) -> PgServer:
        """As root, run the server as the `postgres` user (raises PgError if there is none)."""
        if os.geteuid() != 0:
            return cls(bindir)
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise PgError("tests run as root but there is no 'postgres' OS user to run PostgreSQL") from None
        return cls(bindir, os_user="postgres")

    # -- commands --

    def _argv(self, argv: Sequence[str]) -> list[str]:
        if self.os_user is None:
            return list(argv)
        runuser = shutil.which("runuser") or (
            "/usr/sbin/runuser" if os.path.exists("/usr/sbin/runuser") else None
        )
        if runuser:
            return [runuser, "-u", self.os_user, "--", *argv]
        return ["su", self.os_user, "-s", "/bin/sh", "-c", shlex.join(argv)]

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = self._argv(argv)
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.root,  # the caller's CWD may not be readable by the postgres user
                capture_output=True,
                text=True,
                timeout=_CMD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgError(f"{shlex.join(argv)} did not finish within {_CMD_TIMEOUT:.0f}s") from exc
        if check and proc.returncode != 0:
            raise PgError(
                f"{shlex.join(argv)} failed with exit code {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}{self.log_tail()}"
            )
        return proc

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return ""
        return "\n--- server log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    # -- lifecycle --

    def init(self) -> None:
        if self.os_user is not None:
            shutil.chown(self.root, self.os_user, self.os_user)
        self.root.chmod(0o700)
        self._run(
            self._bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",  # for local and host connections; the server listens on loopback only
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        self._run("mkdir", "-p", str(self.sockets))
        self._initialised = True

    def _configure(self, port: int) -> None:
        # postgresql.auto.conf is read last; rewritten whole so a new port replaces the old one.
        settings = {
            "port": str(port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.sockets}'",
            "fsync": "off",  # the OS survives our "crashes"; only the server process dies
            "full_page_writes": "off",
            "shared_buffers": "'16MB'",
            "max_connections": "50",
            "logging_collector": "off",
        }
        text = "".join(f"{k} = {v}\n" for k, v in settings.items())
        tmp = self.root / "auto.conf"
        tmp.write_text(text)
        self._run("cp", str(tmp), str(self.data / "postgresql.auto.conf"))
        tmp.unlink()
        self.port = port

    def start(self) -> None:
        """Start the server (the first start picks a free port; later ones reuse it)."""
        if self.running:
            return
        if not self._initialised:
            self.init()
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            if not self.port or attempt:
                self._configure(_free_port())
            proc = self._run(
                self._bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "start",
                check=False,
            )
            if proc.returncode == 0:
                self.running = True
                return
            if "could not bind" not in self.log_tail(200) or attempt == attempts - 1:
                raise PgError(f"pg_ctl start failed:\n{proc.stdout}{proc.stderr}{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """`fast` closes sessions and shuts down cleanly; `immediate` kills the server processes
        (crash recovery at the next start)."""
        if not self.running:
            return
        self._run(self._bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database and return its URL."""
        name = name or f"t_{secrets.token_hex(6)}"
        createdb = self.bindir / "createdb"
        self._run(str(createdb), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def url(self, dbname: str = "postgres", *, password: str | None = None) -> str:
        auth = "postgres" if password is None else f"postgres:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def remove(self) -> None:
        """Stop (immediately) and delete everything; safe to call twice."""
        with contextlib.suppress(PgError):
            if self.running or (self.data / "postmaster.pid").exists():
                self.running = True
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
