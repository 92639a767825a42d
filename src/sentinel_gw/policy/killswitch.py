"""Kill switch: tools and backends disabled by config or by the host-wide kill file.

The kill file is shared by every gateway of one user, so an operator can stop a tool everywhere
with one command (``sentinel-gw kill tool NAME``) and every running gateway picks it up on its
next poll. Format::

    {"version": 1,
     "tools": {"<exposed name or glob>": {"reason": "...", "at": "<ISO 8601>", "by": "..."}},
     "backends": {"<backend name or glob>": {...}}}

Tool keys containing ``:`` match ``backend:original``, others the exposed name (as in RBAC).

Trust: a kill file that is not owned by the current user (or root), or that group/others may
write, is ignored (treated as empty, warned about once): whoever can write it could otherwise
also *remove* kills or plant misleading ones. A corrupt file keeps the last good state, since a
half-edited file must not silently revive everything.

Edits take an exclusive ``flock`` on a sibling ``.lock`` file, then write a 0600 temporary file
in the same directory, fsync it and ``os.replace`` it over the old one, so readers only ever see
a complete file and concurrent editors (several shells, several gateways) lose nothing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

from sentinel_gw.config_schema import KillSwitchConfig
from sentinel_gw.policy.rbac import GlobSet

__all__ = [
    "KillEntry",
    "KillFile",
    "KillFileError",
    "KillState",
    "KillSwitch",
    "default_kill_file_path",
    "kill",
    "list_kills",
    "revive",
]

log = logging.getLogger("sentinel_gw.policy")

Kind = Literal["tool", "backend"]
FILE_VERSION: Final = 1
_MAX_FILE_BYTES: Final = 4 * 1024 * 1024
_MEMO_LIMIT: Final = 4096
CONFIG_TOOL_REASON: Final = "disabled in config (kill_switch.tools)"
CONFIG_BACKEND_REASON: Final = "disabled in config (kill_switch.backends)"


class KillFileError(ValueError):
    """The kill file cannot be used (corrupt, untrusted, unreadable)."""


@dataclass(frozen=True, slots=True)
class KillEntry:
    reason: str = ""
    at: str = ""
    by: str = ""

    def get(self, key: str, default: str = "") -> str:
        # Lets callers treat an entry like the JSON object it was read from.
        value = getattr(self, key, None) if key in ("reason", "at", "by") else None
        return value if isinstance(value, str) else default


@dataclass(frozen=True, slots=True)
class KillState:
    tools: Mapping[str, KillEntry] = field(default_factory=lambda: MappingProxyType({}))
    backends: Mapping[str, KillEntry] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # Callers may pass plain dicts; the state is shared between tasks, so freeze a copy.
        object.__setattr__(self, "tools", MappingProxyType(dict(self.tools)))
        object.__setattr__(self, "backends", MappingProxyType(dict(self.backends)))

    def __bool__(self) -> bool:
        return bool(self.tools) or bool(self.backends)

    def to_json(self) -> dict[str, object]:
        def table(entries: Mapping[str, KillEntry]) -> dict[str, dict[str, str]]:
            return {k: {"reason": e.reason, "at": e.at, "by": e.by} for k, e in sorted(entries.items())}

        return {"version": FILE_VERSION, "tools": table(self.tools), "backends": table(self.backends)}


EMPTY_STATE: Final = KillState()


def default_kill_file_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/sentinel-gw/killswitch.json`` (default ``~/.local/state/...``)."""
    state_home = environ.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    if state_home and os.path.isabs(state_home):
        base = Path(state_home)
    else:
        home = environ.get("HOME") or os.path.expanduser("~")
        base = Path(home) / ".local" / "state"
    return base / "sentinel-gw" / "killswitch.json"


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_kill_file(data: bytes) -> KillState:
    """Strict parse; raises KillFileError saying what is wrong (never echoing the content)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise KillFileError(f"not valid JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise KillFileError("top level must be a JSON object")
    if doc.get("version") != FILE_VERSION:
        raise KillFileError(f"unsupported version (expected {FILE_VERSION})")
    unknown = set(doc) - {"version", "tools", "backends"}
    if unknown:
        raise KillFileError(f"unknown keys: {', '.join(sorted(map(str, unknown)))}")

    def table(key: str) -> Mapping[str, KillEntry]:
        raw = doc.get(key, {})
        if not isinstance(raw, dict):
            raise KillFileError(f"{key!r} must be an object")
        out: dict[str, KillEntry] = {}
        for name, entry in raw.items():
            if not name:
                raise KillFileError(f"{key!r} has an empty name")
            if not isinstance(entry, dict):
                raise KillFileError(f"{key}.{name}: entry must be an object")
            values: dict[str, str] = {}
            for attr in ("reason", "at", "by"):
                v = entry.get(attr, "")
                if not isinstance(v, str):
                    raise KillFileError(f"{key}.{name}.{attr}: must be a string")
                values[attr] = v
            out[name] = KillEntry(**values)
        return out

    return KillState(tools=table("tools"), backends=table("backends"))


def _unsafe_reason(st: os.stat_result) -> str | None:
    if st.st_uid not in (os.getuid(), 0):
        return f"owned by uid {st.st_uid}, not by the current user or root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); run chmod 600"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def _read_file(path: Path) -> tuple[os.stat_result, bytes] | None:
    """(fstat, content) of a kill file, None if missing. Raises OSError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return st, b""
        return st, f.read(_MAX_FILE_BYTES + 1)


def _load_trusted(path: Path) -> KillState:
    """For the editing commands: raise on anything the poller would not trust."""
    got = _read_file(path)
    if got is None:
        return EMPTY_STATE
    st, data = got
    problem = _unsafe_reason(st)
    if problem is not None:
        raise KillFileError(f"{path}: refusing to use kill file: {problem}")
    if len(data) > _MAX_FILE_BYTES:
        raise KillFileError(f"{path}: larger than {_MAX_FILE_BYTES} bytes")
    try:
        return parse_kill_file(data)
    except KillFileError as e:
        raise KillFileError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Polling


class KillFile:
    """The kill file as seen by a running gateway.

    ``poll()`` costs one ``stat`` when nothing changed; the file is re-read only when its
    (device, inode, size, mtime, mode, owner) signature changes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.2,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._min_interval = min_interval
        self._last_poll: float | None = None
        self._sig: tuple[int, ...] | None = None
        self._state: KillState = EMPTY_STATE
        self._last_good: KillState = EMPTY_STATE
        self._warned: tuple[object, ...] | None = None

    @property
    def state(self) -> KillState:
        return self._state

    def _warn_once(self, key: tuple[object, ...], msg: str, *args: object) -> None:
        if self._warned != key:
            self._warned = key
            log.warning(msg, *args)

    def poll(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed; True when the effective state changed."""
        now = self._clock()
        if not force and self._last_poll is not None and now - self._last_poll < self._min_interval:
            return False
        self._last_poll = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._set(None, EMPTY_STATE)
        except OSError as e:
            self._warn_once(
                ("stat", e.errno), "kill file %s: cannot stat (%s); keeping last state", self.path, e
            )
            return False
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid)
        if sig == self._sig:
            return False
        try:
            got = _read_file(self.path)
        except OSError as e:
            self._warn_once(
                ("read", e.errno), "kill file %s: cannot read (%s); keeping last state", self.path, e
            )
            return False
        if got is None:
            return self._set(None, EMPTY_STATE)
        st, data = got
        # Signature of what was actually read (the file may have been replaced since the stat).
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid)
        problem = _unsafe_reason(st)
        if problem is not None:
            self._warn_once(("unsafe", sig), "kill file %s ignored: %s", self.path, problem)
            return self._set(sig, EMPTY_STATE, good=False)
        try:
            if len(data) > _MAX_FILE_BYTES:
                raise KillFileError(f"larger than {_MAX_FILE_BYTES} bytes")
            parsed = parse_kill_file(data)
        except KillFileError as e:
            self._warn_once(
                ("corrupt", sig), "kill file %s is invalid (%s); keeping last good state", self.path, e
            )
            return self._set(sig, self._last_good, good=False)
        return self._set(sig, parsed)

    def _set(self, sig: tuple[int, ...] | None, state: KillState, *, good: bool = True) -> bool:
        self._sig = sig
        if good:
            self._last_good = state
            self._warned = None
        changed = state != self._state
        self._state = state
        if changed:
            log.info(
                "kill file %s: %d tool(s), %d backend(s) killed",
                self.path,
                len(state.tools),
                len(state.backends),
            )
        return changed


# ---------------------------------------------------------------------------------------------
# Editing (CLI)


def _ensure_dir(directory: Path) -> None:
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    _ensure_dir(path.parent)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomic(path: Path, state: KillState) -> None:
    data = (json.dumps(state.to_json(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    # mkstemp creates the file 0600 in the target directory, so os.replace stays atomic.
    import tempfile  # here: serve never writes the kill file, and tempfile brings shutil, bz2, lzma

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(dfd)


def _check(kind: str, name: str) -> None:
    if kind not in ("tool", "backend"):
        raise ValueError(f"kind must be 'tool' or 'backend', not {kind!r}")
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError("name must be a non-empty string without surrounding whitespace")


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def kill(path: str | os.PathLike[str], kind: Kind, name: str, reason: str, by: str) -> None:
    """Add (or update) a kill entry."""
    _check(kind, name)
    p = Path(path)
    with _locked(p):
        state = _load_trusted(p)
        entry = KillEntry(reason=reason, at=_now_iso(), by=by)
        if kind == "tool":
            state = KillState(tools={**state.tools, name: entry}, backends=state.backends)
        else:
            state = KillState(tools=state.tools, backends={**state.backends, name: entry})
        _write_atomic(p, state)


def revive(path: str | os.PathLike[str], kind: Kind, name: str) -> bool:
    """Remove a kill entry; False if there was none."""
    _check(kind, name)
    p = Path(path)
    with _locked(p):
        state = _load_trusted(p)
        table = dict(state.tools if kind == "tool" else state.backends)
        if table.pop(name, None) is None:
            return False
        if kind == "tool":
            state = KillState(tools=table, backends=state.backends)
        else:
            state = KillState(tools=state.tools, backends=table)
        _write_atomic(p, state)
        return True


def list_kills(path: str | os.PathLike[str]) -> KillState:
    """The kill file's entries; raises KillFileError if it is corrupt or untrusted."""
    return _load_trusted(Path(path))


# ---------------------------------------------------------------------------------------------
# Decisions


class KillSwitch:
    """Config kills + kill file state, immutable. Rebuild when either changes."""

    __slots__ = (
        "_backend_memo",
        "_cfg_backends",
        "_cfg_tools",
        "_file_backends",
        "_file_tools",
        "_tool_memo",
        "state",
    )

    def __init__(self, config: KillSwitchConfig, state: KillState = EMPTY_STATE) -> None:
        self.state = state
        self._cfg_tools = GlobSet(((p, CONFIG_TOOL_REASON) for p in config.tools), qualified_split=True)
        self._cfg_backends = GlobSet((p, CONFIG_BACKEND_REASON) for p in config.backends)
        self._file_tools = GlobSet(((p, p) for p in state.tools), qualified_split=True)
        self._file_backends = GlobSet((p, p) for p in state.backends)
        self._tool_memo: dict[tuple[str, str, str], str | None] = {}
        self._backend_memo: dict[str, str | None] = {}

    def tool_killed(self, exposed: str, backend: str, original: str) -> str | None:
        """The reason the tool is killed, or None. (The backend is checked separately.)"""
        key = (exposed, backend, original)
        try:
            return self._tool_memo[key]
        except KeyError:
            pass
        qualified = f"{backend}:{original}"
        result = _reason(self._cfg_tools, self._file_tools, self.state.tools, exposed, qualified)
        if len(self._tool_memo) >= _MEMO_LIMIT:
            self._tool_memo.clear()
        self._tool_memo[key] = result
        return result

    def backend_killed(self, backend: str) -> str | None:
        try:
            return self._backend_memo[backend]
        except KeyError:
            pass
        result = _reason(self._cfg_backends, self._file_backends, self.state.backends, backend, None)
        if len(self._backend_memo) >= _MEMO_LIMIT:
            self._backend_memo.clear()
        self._backend_memo[backend] = result
        return result


def _reason(
    cfg: GlobSet, file: GlobSet, entries: Mapping[str, KillEntry], name: str, qualified: str | None
) -> str | None:
    if cfg and cfg.match(name, qualified):
        return CONFIG_TOOL_REASON if qualified is not None else CONFIG_BACKEND_REASON
    if file and file.match(name, qualified):
        m = file.first_match(name, qualified)
        entry = entries.get(m[0]) if m is not None else None
        if entry is not None and entry.reason:
            return entry.reason
        return "killed (kill file)"
    return None
