"""backends/process.py with real child processes: launch specs, launch(), and ChildProcess on both
event loops (the standard one and uvloop) with both exit watches (pidfd and the waiting thread).
Every child test runs with both launchers: `launch()` (Popen) and serve's early `fork_exec()`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sentinel_gw import accel
from sentinel_gw.backends.process import (
    ChildProcess,
    SpawnError,
    child_environment,
    discard,
    kill_group,
    launch,
    launch_spec,
)
from sentinel_gw.backends.spawn import fork_exec
from sentinel_gw.backends.stdio import SpawnError as SpawnErrorFromStdio
from sentinel_gw.backends.stdio import child_environment as child_environment_from_stdio
from sentinel_gw.config_schema import BackendConfig

LOOPS = ["asyncio", "uvloop"]
WATCHES = ["pidfd", "thread"]
WAIT = 20.0  # a bound on every wait, never a measurement


LAUNCHERS = ["popen", "fork"]


@pytest.fixture(params=LAUNCHERS)
def start(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], Any]:
    """`launch` (Popen), or `fork_exec` as serve's early launch uses it. fork_exec refuses a
    process with threads (pytest's may have some, from earlier tests): allowed here, since its
    child runs only os calls until the exec, as Popen's preexec_fn does in the same process."""
    if request.param == "popen":
        return launch
    from sentinel_gw.backends import spawn

    monkeypatch.setattr(spawn, "single_threaded", lambda: True)
    return fork_exec


def finish(child: Any) -> bytes:
    """Close the child's stdin, read its stdout to the end and reap it: its stdout."""
    child.stdin.close()
    out = child.stdout.read()
    child.wait()
    child.stdout.close()
    child.stderr.close()
    return out


def stdio_cfg(*args: str, **keys: Any) -> BackendConfig:
    return BackendConfig(name="t", type="stdio", command=sys.executable, args=args, **keys)


def script(code: str) -> tuple[str, ...]:
    return ("-c", textwrap.dedent(code))


def on_loop(kind: str, body: Callable[[], Awaitable[None]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `body` on the standard event loop or on uvloop (installed with the test extras)."""
    monkeypatch.setenv(accel.ENV, "0" if kind == "asyncio" else "loop")

    async def checked() -> None:
        module = type(asyncio.get_running_loop()).__module__
        assert module.startswith(kind), module
        await asyncio.wait_for(body(), WAIT)

    accel.run(checked())


def gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


# -- launch specs ----------------------------------------------------------------------------------


def test_stdio_module_still_exports_what_moved() -> None:
    assert SpawnErrorFromStdio is SpawnError
    assert child_environment_from_stdio is child_environment


def test_launch_spec_resolves_on_the_childs_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "my-server"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    (tmp_path / "work").mkdir()
    cfg = BackendConfig(
        name="t",
        type="stdio",
        command="my-server",
        args=("a", "b"),
        cwd="work",
        env={"LITERAL": "1"},
        env_from={"KEY": "SECRET_KEY"},
    )
    environ = {"PATH": str(bin_dir), "HOME": "/home/x", "SECRET_KEY": "s3", "OTHER_SECRET": "no"}
    spec = launch_spec(cfg, environ, str(tmp_path))
    assert spec.command == str(tool)
    assert spec.argv == [str(tool), "a", "b"]
    assert spec.cwd == str(tmp_path / "work")
    assert spec.env == {"PATH": str(bin_dir), "HOME": "/home/x", "LITERAL": "1", "KEY": "s3"}
    # Looked up on the child's PATH, not the gateway's.
    with pytest.raises(SpawnError, match="command not found"):
        launch_spec(cfg, {**environ, "PATH": "/nonexistent"}, str(tmp_path))


@pytest.mark.parametrize(
    ("keys", "environ", "message"),
    [
        (
            {"command": "no-such-command-xyz"},
            {"PATH": "/usr/bin"},
            "command not found: 'no-such-command-xyz'",
        ),
        (
            {"command": "sh", "cwd": "missing"},
            {"PATH": "/usr/bin:/bin"},
            "cwd does not exist: {base}/missing",
        ),
        (
            {"command": "sh", "env_from": {"K": "UNSET_VAR"}},
            {"PATH": "/usr/bin:/bin"},
            "env_from refers to unset variable(s) UNSET_VAR in the gateway's environment",
        ),
    ],
)
def test_launch_spec_errors(
    tmp_path: Path, keys: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    cfg = BackendConfig(name="t", type="stdio", **keys)
    with pytest.raises(SpawnError) as err:
        launch_spec(cfg, environ, str(tmp_path))
    assert str(err.value) == "backend 't': " + message.format(base=tmp_path)


def test_launch_failure_is_a_spawn_error(tmp_path: Path) -> None:
    not_executable = tmp_path / "server"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o755)
    spec = launch_spec(BackendConfig(name="t", type="stdio", command=str(not_executable)), {}, str(tmp_path))
    not_executable.chmod(0o644)  # found a moment ago, no longer executable: the exec fails
    with pytest.raises(SpawnError, match=r"^backend 't': cannot start .*server: Permission denied$"):
        launch(spec)


def test_launch_own_session_minimal_env_no_inherited_fds(tmp_path: Path, start: Any) -> None:
    r, w = os.pipe()  # an fd of ours the child must not inherit, even an inheritable one
    os.set_inheritable(w, True)
    try:
        spec = launch_spec(
            stdio_cfg(
                *script(
                    f"""
                    import os, sys
                    try:
                        os.fstat({w}); inherited = True
                    except OSError:
                        inherited = False
                    print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid(), inherited,
                          "SECRET" not in os.environ)
                    """
                )
            ),
            {"PATH": os.environ["PATH"], "SECRET": "x"},
            str(tmp_path),
        )
        out = finish(start(spec))
    finally:
        os.close(r)
        os.close(w)
    assert out.split() == [b"True", b"True", b"False", b"True"]


def test_discard_kills_and_reaps(tmp_path: Path, start: Any) -> None:
    spec = launch_spec(stdio_cfg(*script("import time; time.sleep(60)")), os.environ, str(tmp_path))
    popens = [start(spec), start(spec)]  # discarded at once: fork_exec's may not have exec'd yet
    discard(popens)
    assert [p.returncode for p in popens] == [-signal.SIGKILL, -signal.SIGKILL]
    assert all(p.stdin is not None and p.stdin.closed for p in popens)
    for p in popens:
        with pytest.raises(ProcessLookupError):
            os.kill(p.pid, 0)  # reaped: not even a zombie is left


# -- ChildProcess: the event loop side -----------------------------------------------------------

CHILD = """
import os, sys
sys.stdout.write("early\\n"); sys.stdout.flush()
sys.stderr.write("ready\\n"); sys.stderr.flush()
data = sys.stdin.buffer.read()  # until we close its stdin
sys.stderr.write("got %d bytes\\n" % len(data)); sys.stderr.flush()
sys.stdout.write(data.decode().upper()); sys.stdout.flush()
sys.exit(3)
"""


@pytest.mark.parametrize("watch", WATCHES)
@pytest.mark.parametrize("loop", LOOPS)
def test_child_io_early_stdout_stderr_stdin_close_and_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str, watch: str, start: Any
) -> None:
    popen = start(launch_spec(stdio_cfg(*script(CHILD)), os.environ, str(tmp_path)))
    assert popen.stderr is not None
    # As when `serve` launched it before the loop existed: its first output waits in the pipe.
    # "ready" on stderr comes after "early" on stdout, so "early" is in the pipe before we attach.
    assert os.read(popen.stderr.fileno(), 6) == b"ready\n"

    async def body() -> None:
        child = await ChildProcess.attach(popen, pidfd=watch == "pidfd")
        assert child.exit_watch == watch
        assert child.pid == popen.pid and child.returncode is None
        while not child._stdout._early:  # read before any parser is attached: kept for it
            await asyncio.sleep(0.005)
        chunks: list[bytes] = []
        child.attach_parser(chunks.append)
        assert b"".join(chunks) == b"early\n"  # handed over at once, in order
        assert child.stdin is not None and child.stderr is not None
        child.stdin.transport.write(b"hello ")
        child.stdin.write(b"world")
        await child.stdin.drain()
        assert not child.stdin.is_closing()
        child.stdin.close()  # the end of input: the child reads EOF
        assert child.stdin.is_closing()
        assert await child.stderr.readline() == b"got 11 bytes\n"
        await child.stdout_closed()
        assert b"".join(chunks) == b"early\nHELLO WORLD"
        assert await child.wait() == 3
        assert child.returncode == 3 and popen.returncode == 3  # reaped
        assert await child.stderr.read() == b""
        child.close()

    on_loop(loop, body, monkeypatch)


@pytest.mark.parametrize("watch", WATCHES)
@pytest.mark.parametrize("loop", LOOPS)
def test_kill_group_reaches_grandchildren(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str, watch: str, start: Any
) -> None:
    code = """
    import subprocess, sys, time
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(p.pid, flush=True)
    time.sleep(60)
    """
    popen = start(launch_spec(stdio_cfg(*script(code)), os.environ, str(tmp_path)))

    async def body() -> None:
        child = await ChildProcess.attach(popen, pidfd=watch == "pidfd")
        lines: list[bytes] = []
        got = asyncio.Event()

        def parse(chunk: bytes) -> None:
            lines.append(chunk)
            if b"\n" in b"".join(lines):
                got.set()

        child.attach_parser(parse)
        await got.wait()
        grandchild = int(b"".join(lines))
        waiter = asyncio.ensure_future(child.wait())
        waiter.cancel()  # cancelling a waiter never cancels the watch
        kill_group(child.pid)
        assert await child.wait() == -signal.SIGKILL
        await child.stdout_closed()
        while not gone_or_zombie(grandchild):  # SIGKILLed with its group; reaped by init
            await asyncio.sleep(0.01)
        kill_group(child.pid)  # gone already: no error
        child.close()

    on_loop(loop, body, monkeypatch)


@pytest.mark.parametrize("watch", WATCHES)
@pytest.mark.parametrize("loop", LOOPS)
def test_drain_fails_when_the_child_stops_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str, watch: str, start: Any
) -> None:
    code = """
    import os, sys, time
    os.close(0)
    print("closed", flush=True)
    time.sleep(60)
    """
    popen = start(launch_spec(stdio_cfg(*script(code)), os.environ, str(tmp_path)))

    async def body() -> None:
        child = await ChildProcess.attach(popen, pidfd=watch == "pidfd")
        closed = asyncio.Event()
        child.attach_parser(lambda chunk: closed.set())
        await closed.wait()
        assert child.stdin is not None
        with pytest.raises(ConnectionError):
            for _ in range(1000):  # the broken pipe is noticed on a write, or by the transport
                if not child.stdin.is_closing():  # as StdioBackend does: never write once closing
                    child.stdin.write(b"x" * (1 << 20))
                await child.stdin.drain()
        kill_group(child.pid)
        assert await child.wait() == -signal.SIGKILL
        child.close()

    on_loop(loop, body, monkeypatch)


@pytest.mark.parametrize("reaped", [False, True])
@pytest.mark.parametrize("loop", LOOPS)
def test_attach_a_child_that_already_exited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str, reaped: bool, start: Any
) -> None:
    popen = start(launch_spec(stdio_cfg(*script("print('bye')")), os.environ, str(tmp_path)))
    if reaped:
        popen.wait()
    else:  # a zombie: exited, not reaped yet (the pidfd is readable at once)
        os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT)

    async def body() -> None:
        child = await ChildProcess.attach(popen)
        chunks: list[bytes] = []
        child.attach_parser(chunks.append)
        assert await child.wait() == 0
        await child.stdout_closed()
        assert b"".join(chunks) == b"bye\n"
        child.close()

    on_loop(loop, body, monkeypatch)


@pytest.mark.parametrize("loop", LOOPS)
def test_cancelled_attach_kills_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str, start: Any
) -> None:
    popen = start(launch_spec(stdio_cfg(*script("import time; time.sleep(60)")), os.environ, str(tmp_path)))

    async def body() -> None:
        task = asyncio.ensure_future(ChildProcess.attach(popen))
        await asyncio.sleep(0)  # inside attach, connecting the pipes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while popen.returncode is None:  # the exit watch still reaps it
            await asyncio.sleep(0.01)
        assert popen.returncode == -signal.SIGKILL

    on_loop(loop, body, monkeypatch)
