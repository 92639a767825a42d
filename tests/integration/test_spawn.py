"""backends/spawn.py: serve's early launcher (`fork_exec`) against `process.launch()` (Popen), and
`which` against `shutil.which`. The children are real processes; what both launchers share
(session, environment, descriptors, attaching to the loop) is tested in test_process.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sentinel_gw.backends import spawn
from sentinel_gw.backends.process import discard, launch
from sentinel_gw.backends.spawn import ForkedChild, LaunchSpec, fork_exec, which
from sentinel_gw.early import EarlyLaunches

WAIT = 20.0  # a bound on every wait, never a measurement


@pytest.fixture
def forking(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest's process may hold threads from earlier tests; fork_exec refuses those (see
    test_process.py's `start` fixture for why allowing it here is sound)."""
    monkeypatch.setattr(spawn, "single_threaded", lambda: True)


def spec(*argv: str, cwd: str | None = None, env: dict[str, str] | None = None) -> LaunchSpec:
    return LaunchSpec("t", argv[0], tuple(argv[1:]), env if env is not None else {"PATH": os.defpath}, cwd)


def output(child: Any) -> str:
    child.stdin.close()
    out = child.stdout.read().decode()
    child.wait()
    child.stdout.close()
    child.stderr.close()
    return out


def test_fork_exec_starts_the_child_as_popen_does(tmp_path: Path, forking: None) -> None:
    """Same cwd, environment (nothing else), signal dispositions and mask (SIGPIPE back to the
    default Python changed it from) and session as launch(), for the same spec."""
    probe = spec(
        "/bin/sh",
        "-c",
        'pwd; env | sort; grep -E "^Sig(Ign|Blk)" /proc/self/status; ps -o sid= -o pgid= -p $$',
        cwd=str(tmp_path),
        env={"PATH": os.defpath, "ONLY": "this"},
    )
    forked, popen = fork_exec(probe), launch(probe)
    assert forked.exec_error() is None
    got, expected = output(forked), output(popen)
    assert got.replace(str(forked.pid), "PID") == expected.replace(str(popen.pid), "PID")
    assert got.splitlines()[0] == str(tmp_path)
    assert "ONLY=this" in got and "SECRET" not in got
    assert forked.returncode == popen.returncode == 0


def test_the_parent_returns_before_the_exec_and_a_failed_exec_is_reported(
    tmp_path: Path, forking: None
) -> None:
    server = tmp_path / "server"
    server.write_text("#!/bin/sh\n")
    server.chmod(0o644)  # not executable: the exec fails in the child
    child = fork_exec(spec(str(server)))
    assert child.exec_error() == "Permission denied"
    assert child.wait() == 127
    missing_cwd = fork_exec(spec("/bin/true", cwd=str(tmp_path / "gone")))
    assert missing_cwd.exec_error() == "No such file or directory"
    ok = fork_exec(spec("/bin/true"))
    assert ok.exec_error() is None and ok.exec_error() is None  # asked twice: same answer
    assert ok.wait() == 0 and ok.poll() == 0
    for c in (child, missing_cwd, ok):
        for pipe in (c.stdin, c.stdout, c.stderr):
            pipe.close()
    missing_cwd.wait()


def test_serve_does_not_adopt_an_early_child_whose_exec_failed(tmp_path: Path, forking: None) -> None:
    server = tmp_path / "server"
    server.write_text("#!/bin/sh\n")
    server.chmod(0o644)
    failed = spec(str(server))
    early = EarlyLaunches()
    child = fork_exec(failed)
    early.add(failed, child)
    assert early.take(failed) is None  # its backend launches it again and reports why
    assert child.returncode is not None  # reaped
    assert child.stdin.closed


def test_refused_before_forking(forking: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """What execve refuses is a ValueError in the gateway (as Popen raises it), not a child."""
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked"))
    for bad in (
        spec("/bin/true", "a\0b"),
        spec("/bin/true", env={"A=B": "x"}),
        spec("/bin/true", env={"": "x"}),
        spec("/bin/true", env={"A": "x\0y"}),
    ):
        with pytest.raises(ValueError):
            fork_exec(bad)


def test_refused_with_threads() -> None:
    """Forking a process with threads can deadlock the child: serve's early launch runs before
    any thread exists, and later launches take Popen."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not spawn.single_threaded()
        with pytest.raises(RuntimeError, match="single-threaded"):
            fork_exec(spec("/bin/true"))
    finally:
        stop.set()
        thread.join()


def test_discard_right_after_the_fork_kills_the_child(forking: None) -> None:
    """Its setsid() may not have run yet, so there is no process group to kill: discard kills
    the child by pid too, and reaps it."""
    children = [fork_exec(spec("/bin/sleep", "60")) for _ in range(5)]
    discard(children)
    assert [c.returncode for c in children] == [-signal.SIGKILL] * 5
    for c in children:
        assert c._status_fd is None  # reaping also closed the exec report's pipe
        with pytest.raises(ProcessLookupError):
            os.kill(c.pid, 0)


@pytest.mark.parametrize("launcher", ["popen", "fork"])
def test_the_child_dies_with_the_gateway(tmp_path: Path, launcher: str) -> None:
    """Linux's parent-death signal: a gateway killed with SIGKILL leaves no backend behind."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from sentinel_gw.backends.spawn import LaunchSpec, fork_exec
        from sentinel_gw.backends.process import launch
        s = LaunchSpec("t", "/bin/sleep", ("60",), {{"PATH": os.defpath}}, None)
        child = {"fork_exec" if launcher == "fork" else "launch"}(s)
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    gateway = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert gateway.stdout is not None
        pid = int(gateway.stdout.readline())
        deadline = time.monotonic() + WAIT
        sleep = Path("/bin/sleep").resolve()
        while Path(f"/proc/{pid}/exe").resolve() != sleep:  # exec'd: its pdeathsig is set
            assert time.monotonic() < deadline, "the child never exec'd"
            time.sleep(0.01)
        gateway.kill()
        gateway.wait()
        while Path(f"/proc/{pid}").exists():
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):  # killed, waiting for init to reap it
                break
            assert time.monotonic() < deadline, f"pid {pid} outlived its parent ({state})"
            time.sleep(0.01)
    finally:
        gateway.kill()
        gateway.wait()
        gateway.stdout.close()  # type: ignore[union-attr]


def test_forked_child_poll_wait(forking: None) -> None:
    child = fork_exec(spec("/bin/sh", "-c", "read x; exit 5"))
    assert isinstance(child, ForkedChild) and child.poll() is None
    child.stdin.write(b"go\n")
    assert child.wait() == 5 and child.poll() == 5 and child.returncode == 5
    assert "returncode=5" in repr(child)
    for pipe in (child.stdin, child.stdout, child.stderr):
        pipe.close()


def test_which_is_shutil_which(tmp_path: Path) -> None:
    bin_a, bin_b = tmp_path / "a", tmp_path / "b"
    bin_a.mkdir()
    bin_b.mkdir()
    (bin_a / "tool").write_text("#!/bin/sh\n")
    (bin_a / "tool").chmod(0o644)  # not executable: skipped
    (bin_b / "tool").write_text("#!/bin/sh\n")
    (bin_b / "tool").chmod(0o755)
    (bin_a / "dir").mkdir()  # a directory is never a command
    (bin_b / "dir").write_text("#!/bin/sh\n")
    (bin_b / "dir").chmod(0o755)
    paths = [
        f"{bin_a}:{bin_b}",
        f"{bin_b}:{bin_a}",
        f"{bin_a}:{bin_a}:{bin_b}",
        str(bin_a),
        "",
        ":",
        os.defpath,
        os.environ.get("PATH", os.defpath),
    ]
    commands = [
        "tool",
        "dir",
        "sh",
        "python3",
        "no-such-tool",
        str(bin_b / "tool"),
        str(bin_a / "tool"),
        "./tool",
    ]
    for path in paths:
        for command in commands:
            assert which(command, path) == shutil.which(command, path=path), (command, path)
