"""How a stdio backend's child is started: its launch spec, and `serve`'s early fork.

Imported by `serve` right after the interpreter starts, before anything else (see early.py), so
this module imports only `os`, `sys` and `collections` at run time: `subprocess` (with `locale`,
`re`, `enum`, `selectors`, `threading`), `shutil` and `typing` together cost ~20 ms before the
first backend could be forked, which is time a cold start waits for.

* `launch_spec()` is pure: the resolved command, its arguments, the child's minimal environment
  and its working directory, or the `SpawnError` that says why the backend cannot start. Early
  and validated launches share it, so equal configs give equal specs.
* `fork_exec()` starts a spec the way `process.launch()` does (pipes, own session, no inherited
  descriptor, default SIGPIPE, parent-death signal on Linux), with `os.fork` and without waiting
  for the exec: three backends are forked in ~1.5 ms instead of ~10 ms. It is for a process with
  one thread only (forking a threaded process can deadlock the child): `serve`'s early launch.
  Everything later (restarts, reloads, a spec that changed) goes through `process.launch()`.
"""

from __future__ import annotations

import os
import sys
from collections import namedtuple

TYPE_CHECKING = False  # typing costs ~5 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping, Sequence
    from typing import Protocol, TypeAlias

    # A started child: launched by `process.launch()` (Popen) or by `fork_exec()`.
    Child: TypeAlias = "subprocess.Popen[bytes] | ForkedChild"

    class StdioCommand(Protocol):
        """What starting a child reads from a stdio backend's config: a `BackendConfig`, or the
        raw reading `serve` launches from before the config is validated (early.py)."""

        @property
        def name(self) -> str: ...
        @property
        def command(self) -> str: ...
        @property
        def args(self) -> Sequence[str]: ...
        @property
        def cwd(self) -> str: ...
        @property
        def env(self) -> Mapping[str, str]: ...
        @property
        def env_from(self) -> Mapping[str, str]: ...
        @property
        def inherit_env(self) -> Sequence[str]: ...


# Variables a child gets from the gateway's environment without asking; nothing secret.
SAFE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "TMPDIR")


class SpawnError(Exception):
    """Starting the child failed in a way a restart cannot fix (bad command, missing secret)."""


def child_environment(
    cfg: StdioCommand, environ: Mapping[str, str], *, safe: tuple[str, ...] = SAFE_ENV
) -> dict[str, str]:
    """The minimal environment: safe variables, then `inherit_env`, `env`, `env_from` in that order."""
    env = {k: environ[k] for k in safe if k in environ}
    for key in cfg.inherit_env:
        if key in environ:
            env[key] = environ[key]
    env.update(cfg.env)
    missing = [src for src in cfg.env_from.values() if src not in environ]
    if missing:
        raise SpawnError(
            f"backend '{cfg.name}': env_from refers to unset variable(s) {', '.join(sorted(missing))} "
            "in the gateway's environment"
        )
    for child_key, source in cfg.env_from.items():
        env[child_key] = environ[source]
    return env


def _executable(path: str) -> bool:
    return os.path.exists(path) and os.access(path, os.F_OK | os.X_OK) and not os.path.isdir(path)


def which(command: str, path: str) -> str | None:
    """`shutil.which(command, path=path)` on POSIX, without importing shutil (~5 ms): a command
    with a slash is taken as it is (if executable), else the first executable on `path`."""
    if os.path.dirname(command):
        return command if _executable(command) else None
    if not path:
        return None
    seen: set[str] = set()
    for directory in path.split(os.pathsep):
        if directory in seen:
            continue
        seen.add(directory)
        candidate = os.path.join(directory, command)
        if _executable(candidate):
            return candidate
    return None


class LaunchSpec(namedtuple("LaunchSpec", "name command args env cwd")):
    """Everything a launch needs: nothing is looked up or resolved after this. Fields: `name`
    (the backend's, for messages), `command` (resolved on the child's PATH), `args` (a tuple),
    `env` (the child's whole environment) and `cwd` (None: the gateway's). A named tuple from
    `collections` (not typing's NamedTuple, not a dataclass): see the module docstring."""

    __slots__ = ()
    name: str
    command: str
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None

    @property
    def argv(self) -> list[str]:
        return [self.command, *self.args]


def launch_spec(cfg: StdioCommand, environ: Mapping[str, str], base_dir: str) -> LaunchSpec:
    """How to start `cfg`'s child, or SpawnError (unset `env_from` variable, command not found on
    the child's PATH, missing working directory). Pure apart from the file system lookups."""
    env = child_environment(cfg, environ)
    command = which(cfg.command, env.get("PATH", os.defpath))
    if command is None:
        raise SpawnError(f"backend '{cfg.name}': command not found: {cfg.command!r}")
    cwd = cfg.cwd or None
    if cwd and not os.path.isabs(cwd):
        cwd = os.path.join(base_dir, cwd)
    if cwd and not os.path.isdir(cwd):
        raise SpawnError(f"backend '{cfg.name}': cwd does not exist: {cwd}")
    return LaunchSpec(cfg.name, command, tuple(cfg.args), env, cwd)


# -- parent-death signal -------------------------------------------------------------------------

_prctl: list[object] = []  # [libc.prctl] once resolved in the gateway process, [None] if unavailable
PR_SET_PDEATHSIG = 1
SIGKILL = 9  # the same number on every Linux architecture; spares importing signal (enum)


def resolve_prctl() -> object:
    """libc's prctl, loaded in the gateway once (None if unavailable): a child loading ctypes
    between fork and exec would cost milliseconds per spawn."""
    if not _prctl:
        try:
            import ctypes

            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl)
        except Exception:
            _prctl.append(None)
    return _prctl[0]


def set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the kernel kills this (child) process when its parent dies, even by SIGKILL."""
    try:
        prctl = _prctl[0] if _prctl else None
        if prctl is None:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # type: ignore[operator]
    except Exception:  # noqa: S110 - best effort; nothing can be logged between fork and exec
        pass


# -- the early fork --------------------------------------------------------------------------------


class ForkedChild:
    """A child started by `fork_exec`: the part of `subprocess.Popen` that `process.ChildProcess`,
    `process.discard` and the backends use (`pid`, `args`, raw `stdin`/`stdout`/`stderr`,
    `returncode`, `poll()`, `wait()`), plus `exec_error()`."""

    def __init__(self, pid: int, args: list[str], fds: tuple[int, int, int], status_fd: int) -> None:
        self.pid = pid
        self.args = args
        self.stdin = open(fds[0], "wb", buffering=0)  # noqa: SIM115 - owned by the backend
        self.stdout = open(fds[1], "rb", buffering=0)  # noqa: SIM115
        self.stderr = open(fds[2], "rb", buffering=0)  # noqa: SIM115
        self.returncode: int | None = None
        self._status_fd: int | None = status_fd
        self._exec_error: str | None = None

    def exec_error(self) -> str | None:
        """None once the child has exec'd its command, else why it could not (an OSError's text).
        Blocks until one or the other: a few milliseconds after the fork at most."""
        fd, self._status_fd = self._status_fd, None
        if fd is not None:
            try:
                report = b""
                while chunk := os.read(fd, 512):  # EOF: closed on exec (close-on-exec)
                    report += chunk
            finally:
                os.close(fd)
            if report:
                self._exec_error = report.decode("utf-8", "replace")
        return self._exec_error

    def poll(self) -> int | None:
        if self.returncode is None:
            self._waitpid(os.WNOHANG)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            self._waitpid(0)
        return self.returncode

    def _waitpid(self, options: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): as Popen says
            pid, status = self.pid, 0
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)
            self.exec_error()  # gone: its report is complete (EOF at once); closes the pipe

    def __repr__(self) -> str:
        return f"<ForkedChild pid={self.pid} returncode={self.returncode}>"


def single_threaded() -> bool:
    threading = sys.modules.get("threading")
    return threading is None or threading.active_count() == 1


def _close_inherited(keep: int) -> None:  # pragma: no cover - in the child
    """Close every descriptor above 2 but `keep` (close_fds=True): the ones the gateway's own
    parent left inheritable would otherwise reach the backend. /proc/self/fd lists the open ones:
    without close_range(2), closerange() up to a container's limit of 1M descriptors is slow."""
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        os.closerange(3, keep)
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        return
    for fd in open_fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:  # the listing's own descriptor, closed already
                pass


def _check_exec_args(argv: list[str], env: Mapping[str, str], cwd: str | None) -> None:
    """ValueError for what os.execve (and Popen) refuse, found in the gateway rather than in the
    child: a NUL byte anywhere, an environment variable name that is empty or holds "="."""
    for text in (*argv, *env, *env.values(), cwd or ""):
        if "\0" in text:
            raise ValueError("embedded null byte")
    for name in env:
        if not name or "=" in name:
            raise ValueError("illegal environment variable name")


def fork_exec(spec: LaunchSpec) -> ForkedChild:
    """Start `spec` in a new session with pipes on its stdin, stdout and stderr, and return at
    once: an exec that fails (EACCES, ENOENT...) shows in `exec_error()`. One thread only."""
    if not single_threaded():
        raise RuntimeError("fork_exec needs a single-threaded process; use process.launch()")
    argv, env, cwd = spec.argv, spec.env, spec.cwd
    _check_exec_args(argv, env, cwd)
    import _signal  # built in; imported here, not between fork and exec

    linux = sys.platform.startswith("linux")
    if linux:
        resolve_prctl()
    parent = os.getpid()
    fds: list[int] = []
    try:
        for _ in range(4):
            fds.extend(os.pipe())  # close-on-exec (PEP 446)
        if min(fds) < 3:
            # The gateway runs with stdin, stdout or stderr closed: a pipe took one of 0-2 and
            # the dup2 dance below would need Popen's care. Not worth it here: launch() does it.
            raise RuntimeError("a standard descriptor of the gateway is closed")
        pid = os.fork()
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    in_r, in_w, out_r, out_w, err_r, err_w, status_r, status_w = fds  # status: EOF once exec'd
    if pid == 0:  # pragma: no cover - the child (measured by the tests from the outside)
        try:
            os.setsid()  # own session and process group: the gateway signals the whole tree
            if linux:
                set_pdeathsig()
                if os.getppid() != parent:  # the gateway died before prctl: nobody to serve
                    os._exit(1)
            # Python ignores SIGPIPE and SIGXFSZ; an exec'd program expects the defaults (Popen's
            # restore_signals).
            for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ"):
                if hasattr(_signal, name):
                    _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
            for fd, target in ((in_r, 0), (out_w, 1), (err_w, 2)):
                os.dup2(fd, target)  # inheritable copies
            _close_inherited(keep=status_w)
            if cwd:
                os.chdir(cwd)
            os.execve(argv[0], argv, env)  # noqa: S606 - an argv, no shell, as Popen runs it
        except BaseException as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
            try:
                os.write(status_w, text.encode("utf-8", "replace")[:512])
            finally:
                os._exit(127)
    for fd in (in_r, out_w, err_w, status_w):
        os.close(fd)
    return ForkedChild(pid, argv, (in_w, out_r, err_r), status_r)
