"""Starting a stdio backend's process, and attaching it to the event loop.

Spawning is split so that `serve` can launch its backends before the event loop exists (they
boot while the gateway starts) and the backends adopt those processes later:

* `launch_spec()` (in spawn.py, re-exported here) is pure: the resolved command, its arguments,
  the child's minimal environment and its working directory, or the `SpawnError` that says why
  the backend cannot start;
* `launch()` starts it (synchronously, no event loop needed): pipes on stdin, stdout and stderr,
  its own session and process group, a parent-death signal on Linux; serve's early launch uses
  `spawn.fork_exec()` instead, which does the same with `os.fork` before any thread exists;
* `ChildProcess.attach()` connects a running `Popen` (or a `ForkedChild`) to the running loop:
  what `StdioBackend` needs from it (stdin as a transport, stdout straight to a parser from the
  pipe's read callback, stderr as a `StreamReader`, the end of stdout, and the exit status).

Every spawn after serve's early launch takes `launch()`: restarts, reloads, a changed spec.
The exit is detected with a pidfd watched by the loop (Linux 5.3 and later; the standard loop
and uvloop alike), otherwise by a thread waiting on the `Popen`: never a SIGCHLD handler or a
`waitpid(-1)` that could reap someone else's child.

This module is imported before the event loop starts, so asyncio is imported only where it is
used (the protocols below need no asyncio base class: transports call them by name).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sentinel_gw.backends.spawn import (
    SAFE_ENV,
    ForkedChild,
    LaunchSpec,
    SpawnError,
    child_environment,
    launch_spec,
    resolve_prctl,
    set_pdeathsig,
)

if TYPE_CHECKING:
    import asyncio

    from sentinel_gw.backends.spawn import Child, StdioCommand

# Re-exported: the launch spec lives in spawn.py (light enough for serve's early launch).
__all__ = [
    "SAFE_ENV",
    "ChildProcess",
    "ForkedChild",
    "LaunchSpec",
    "SpawnError",
    "StdioCommand",
    "child_environment",
    "discard",
    "kill_group",
    "launch",
    "launch_spec",
]

STDERR_READ_LIMIT = 1 << 16  # the stderr StreamReader's limit (it pauses the pipe at twice this)


def launch(spec: LaunchSpec) -> subprocess.Popen[bytes]:
    """Start the child (no event loop needed): pipes on stdin, stdout and stderr, its own session
    and process group (so the whole tree can be signalled), no other inherited descriptor, and on
    Linux a parent-death signal. An OSError from the exec becomes SpawnError."""
    linux = sys.platform.startswith("linux")
    if linux:
        resolve_prctl()
    try:
        return subprocess.Popen(
            spec.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # raw pipes: the event loop's transports do the buffering
            env=spec.env,
            cwd=spec.cwd,
            close_fds=True,
            start_new_session=True,  # own process group: we can signal the whole tree
            preexec_fn=set_pdeathsig if linux else None,  # noqa: PLW1509 - resolved beforehand, no locks
        )
    except OSError as exc:
        raise SpawnError(
            f"backend '{spec.name}': cannot start {spec.command}: {exc.strerror or exc}"
        ) from None


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group `pid` leads (it may be gone already)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def discard(popens: Iterable[Child]) -> None:
    """Launched children nobody will use: SIGKILL each one's process group, close its pipes and
    reap it. Blocks until they are reaped (milliseconds: SIGKILL cannot be caught)."""
    popens = list(popens)
    for popen in popens:
        kill_group(popen.pid)
        # And the child itself: one from fork_exec may not have called setsid() yet, so its
        # group may not exist (harmless for the others: the pid is ours until it is reaped).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(popen.pid, signal.SIGKILL)
    for popen in popens:
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        popen.wait()


# -- attached to the event loop ------------------------------------------------------------------


class _StdinProtocol:
    """Flow control for the child's stdin: `drain()` waits while the transport is paused."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._paused = False
        self._lost = False
        self._waiters: list[asyncio.Future[None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._paused = False
        self._wake(exc or ConnectionResetError("Connection lost"))

    def _wake(self, exc: BaseException | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.done():
                continue
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def drain(self) -> None:
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter


class ChildStdin:
    """The child's stdin: what StdioBackend used of asyncio's StreamWriter."""

    __slots__ = ("_protocol", "transport")

    def __init__(self, transport: asyncio.WriteTransport, protocol: _StdinProtocol) -> None:
        self.transport = transport
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        """The end of input: buffered bytes are still written first."""
        self.transport.close()

    async def drain(self) -> None:
        """Until the transport's buffer is below its high-water mark; ConnectionResetError once the
        pipe is closed."""
        if self.transport.is_closing():
            import asyncio

            await asyncio.sleep(0)  # let connection_lost run, as StreamWriter.drain does
        await self._protocol.drain()


class _StdoutProtocol:
    """The child's stdout goes straight to a parser from the pipe's read callback (one loop
    iteration less per reply than a reader task); chunks that arrive before the parser is
    attached are kept for it. `closed` ends with stdout (with the error, if reading failed)."""

    def __init__(self, closed: asyncio.Future[None]) -> None:
        self.closed = closed
        self._parse: Callable[[bytes], None] | None = None
        self._early: list[bytes] = []  # stdout that arrived before the parser was attached

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from sentinel_gw.aio import small_reads  # imported by then (asyncio is running)

        small_reads(transport)

    def attach(self, parse: Callable[[bytes], None]) -> None:
        self._parse = parse
        early, self._early = self._early, []
        for chunk in early:
            parse(chunk)

    def data_received(self, data: bytes) -> None:
        if self._parse is None:
            self._early.append(bytes(data))
        else:
            self._parse(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed.done():
            return
        if exc is None:
            self.closed.set_result(None)
        else:
            self.closed.set_exception(exc)


class _ReaderProtocol:
    """Feeds a StreamReader (the child's stderr), with its flow control."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from sentinel_gw.aio import small_reads  # imported by then (asyncio is running)

        small_reads(transport)
        self.reader.set_transport(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.reader.feed_data(data)

    def eof_received(self) -> bool:
        self.reader.feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self.reader.feed_eof()
        else:
            self.reader.set_exception(exc)


class ChildProcess:
    """A running `Popen` attached to the event loop; what StdioBackend used of
    asyncio.subprocess.Process: `pid`, `returncode`, `wait()`, `stdin`, `stderr`, plus stdout
    delivered to a parser (`attach_parser`) and its end (`stdout_closed()`).

    Create it with `await ChildProcess.attach(popen)` in the running loop.
    """

    def __init__(self, popen: Child, loop: asyncio.AbstractEventLoop) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._loop = loop
        self._exit: asyncio.Future[int] = loop.create_future()
        self._stdout_end: asyncio.Future[None] = loop.create_future()
        # A read error nobody waits for any more (the reader task was cancelled) is not an error.
        self._stdout_end.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._stdout: _StdoutProtocol = _StdoutProtocol(self._stdout_end)
        self._transports: list[asyncio.BaseTransport] = []
        self._pidfd: int | None = None
        self.exit_watch = ""  # "pidfd" or "thread": how the exit is detected
        self.stdin: ChildStdin | None = None
        self.stderr: asyncio.StreamReader | None = None

    @classmethod
    async def attach(cls, popen: Child, *, pidfd: bool = True) -> ChildProcess:
        """Connect `popen` (from `launch()`) to the running loop. `pidfd=False` forces the thread
        that waits for the exit (what platforms without pidfds get). If this fails or is cancelled,
        the child's process group is killed (and still reaped by the exit watch)."""
        import asyncio

        if isinstance(popen, ForkedChild):
            # Returns once the child has exec'd (at once, by adoption time): its setsid() has
            # run, so kill_group() reaches it from here on.
            failed = popen.exec_error()
            if failed is not None:
                discard([popen])
                raise SpawnError(f"cannot start {popen.args[0]}: {failed}")
        loop = asyncio.get_running_loop()
        child = cls(popen, loop)
        child._watch_exit(pidfd)  # first: whatever happens next, the child gets reaped
        connecting = asyncio.ensure_future(child._connect(loop))
        try:
            await asyncio.shield(connecting)
        except BaseException:
            kill_group(child.pid)
            # Cancelled: the pipes still finish connecting (one loop iteration each), so that
            # each is closed exactly once, by its transport.
            with contextlib.suppress(BaseException):
                await connecting
            child.close()
            raise
        return child

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        import asyncio

        popen = self.popen
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        transport: Any
        transport, protocol = await loop.connect_write_pipe(lambda: _StdinProtocol(loop), popen.stdin)
        self._transports.append(transport)
        self.stdin = ChildStdin(transport, protocol)
        transport, _ = await loop.connect_read_pipe(lambda: self._stdout, popen.stdout)  # type: ignore[arg-type,return-value]
        self._transports.append(transport)
        reader = asyncio.StreamReader(limit=STDERR_READ_LIMIT)
        transport, _ = await loop.connect_read_pipe(lambda: _ReaderProtocol(reader), popen.stderr)  # type: ignore[arg-type,return-value]
        self._transports.append(transport)
        self.stderr = reader

    @property
    def returncode(self) -> int | None:
        """The exit status once the child is reaped (negative: killed by that signal), else None."""
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> int:
        """Until the child exits (cancelling a waiter never cancels the watch)."""
        import asyncio

        return await asyncio.shield(self._exit)

    def attach_parser(self, parse: Callable[[bytes], None]) -> None:
        """From now on stdout chunks go to `parse` (what came before goes first)."""
        self._stdout.attach(parse)

    async def stdout_closed(self) -> None:
        """Until the child's stdout ends (raises the error if reading it failed)."""
        import asyncio

        await asyncio.shield(self._stdout_end)

    def close(self) -> None:
        """Close the pipes (the exit watch goes on until the child is reaped)."""
        for transport in self._transports:
            transport.close()
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            # Pipes never handed to a transport (attach failed half-way) are closed here.
            if pipe is not None and not any(t.get_extra_info("pipe") is pipe for t in self._transports):
                with contextlib.suppress(OSError):
                    pipe.close()

    # -- exit detection ------------------------------------------------------------------------

    def _watch_exit(self, pidfd: bool) -> None:
        if self.popen.returncode is not None:  # reaped already
            self._exited(self.popen.returncode)
            return
        if pidfd and hasattr(os, "pidfd_open"):
            try:
                fd = os.pidfd_open(self.pid)
            except OSError:  # ENOSYS (kernel < 5.3), EPERM (seccomp): the thread does it
                pass
            else:
                try:
                    self._loop.add_reader(fd, self._pidfd_ready)
                except (NotImplementedError, OSError, ValueError):
                    os.close(fd)
                else:
                    self._pidfd = fd
                    self.exit_watch = "pidfd"
                    return
        self.exit_watch = "thread"
        threading.Thread(target=self._wait_in_thread, name=f"wait:{self.pid}", daemon=True).start()

    def _pidfd_ready(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is None:
            return
        self._loop.remove_reader(fd)
        os.close(fd)
        code = self.popen.poll()  # readable: it exited, so this reaps it without blocking
        if code is None:  # pragma: no cover - a pidfd is readable only once the process exited
            self.exit_watch = "thread"
            threading.Thread(target=self._wait_in_thread, daemon=True).start()
            return
        self._exited(code)

    def _wait_in_thread(self) -> None:
        code = self.popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._exited, code)

    def _exited(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)
