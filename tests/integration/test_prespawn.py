"""`sentinel-gw serve` launches its stdio backends before authenticating (cold start): the
gateway adopts those processes, and when it cannot start, none of them is left behind."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sentinel_gw.backends.base import BackendState
from sentinel_gw.backends.process import launch, launch_spec
from sentinel_gw.backends.stdio import StdioBackend
from sentinel_gw.config_schema import BackendConfig
from tests.conftest import ECHO_SERVER, GATEWAY, gateway_env, make_token, render_config
from tests.helpers_stdio import RawStdioClient

PRESPAWNED = re.compile(r"backend (\w+): launched before authentication \(pid (\d+)\)")
STARTED = re.compile(r"backend (\w+): started \S+ \(pid (\d+)\)")
ACCEL = ["0", "loop"]  # the standard event loop, and uvloop


def recording_backend(name: str, tmp_path: Path, marker: str = "") -> dict[str, object]:
    """The echo server, behind a shell that appends its pid (the server keeps it: exec) to
    <name>.pids and copies its stdin to <name>.in when `marker` is set (then it never answers)."""
    pids = shlex.quote(str(tmp_path / f"{name}.pids"))
    if marker:
        run = f"exec cat > {shlex.quote(str(tmp_path / f'{name}.in'))}"
    else:
        run = f"exec {shlex.quote(sys.executable)} {shlex.quote(ECHO_SERVER)}"
    return {
        "name": name,
        "type": "stdio",
        "command": "sh",
        "args": ["-c", f"echo $$ >> {pids}; {run}", marker or name],
        "prefix": name,
    }


def pid_lines(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("accel", ACCEL)
async def test_prespawned_backends_are_adopted(make_config, tmp_path: Path, accel: str) -> None:
    cfg = make_config([recording_backend("one", tmp_path), recording_backend("two", tmp_path)])
    env = gateway_env(tmp_path, SENTINEL_GW_ACCEL=accel)
    argv = [*GATEWAY, "serve", "--config", str(cfg), "--log-level", "debug"]
    async with await RawStdioClient.start(argv, env=env) as gw:
        await gw.initialize()
        reply = await gw.request("tools/list")
        names = {t["name"] for t in reply["result"]["tools"]}
        assert {"one_echo", "two_echo"} <= names, names
        reply = await gw.request("tools/call", {"name": "two_echo", "arguments": {"message": "hi"}})
        assert reply["result"]["content"][0]["text"] == "hi"
        log = gw.stderr.decode("utf-8", "replace")
    prespawned = dict(PRESPAWNED.findall(log))
    started = dict(STARTED.findall(log))
    assert set(prespawned) == {"one", "two"}, log
    assert started == prespawned, log  # adopted: the pid launched before auth is the one serving
    for name in ("one", "two"):
        assert pid_lines(tmp_path / f"{name}.pids") == [int(prespawned[name])]  # launched once


@pytest.mark.parametrize("accel", ACCEL)
async def test_a_backend_that_cannot_be_launched_fails_as_before(
    make_config, tmp_path: Path, accel: str
) -> None:
    ghost = {"name": "ghost", "type": "stdio", "command": "no-such-command-sentinel-test"}
    cfg = make_config([ghost, recording_backend("one", tmp_path)])
    env = gateway_env(tmp_path, SENTINEL_GW_ACCEL=accel)
    argv = [*GATEWAY, "serve", "--config", str(cfg), "--log-level", "debug"]
    async with await RawStdioClient.start(argv, env=env) as gw:
        await gw.initialize()
        reply = await gw.request("tools/list")
        assert "one_echo" in {t["name"] for t in reply["result"]["tools"]}
        log = gw.stderr.decode("utf-8", "replace")
    assert set(dict(PRESPAWNED.findall(log))) == {"one"}, log
    # Reported by the backend when it starts, as without pre-spawning: the error, then giving up.
    message = "backend 'ghost': command not found: 'no-such-command-sentinel-test'"
    lines = [line for line in log.splitlines() if message in line]
    assert len(lines) == 2 and lines[0].endswith(f"sentinel_gw.backend: {message}"), log
    assert lines[1].endswith(f"backend ghost: giving up: {message}"), log


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad token", "authentication failed"),
        ("expired token", "authentication failed"),
        ("no signing secret", "auth: "),
        ("audit sink fails", "audit: "),
    ],
)
@pytest.mark.parametrize("accel", ACCEL)
async def test_no_backend_outlives_a_failed_start(
    make_config, tmp_path: Path, accel: str, case: str, expected: str
) -> None:
    marker = f"sentinel-prespawn-{secrets.token_hex(8)}"
    extra = '[auth]\nmode = "jwt"\n[rbac.roles.admin]\npermissions = ["*"]\n'
    if case == "audit sink fails":
        extra += '[audit]\nsinks = ["postgres"]\npostgres_url_env = "SENTINEL_TEST_UNSET_PG_URL"\n'
    cfg = make_config(
        [recording_backend("one", tmp_path, marker), recording_backend("two", tmp_path, marker)],
        extra=extra,
        auth="jwt",
    )
    token = {
        "bad token": "not-a-jwt",
        "expired token": make_token(ttl=60, now=time.time() - 3600),
    }.get(case) or make_token()
    env = gateway_env(tmp_path, token, SENTINEL_GW_ACCEL=accel)
    if case == "no signing secret":
        del env["SENTINEL_JWT_SECRET"]
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY,
        "serve",
        "--config",
        str(cfg),
        "--log-level",
        "debug",
        env=env,
        stdin=asyncio.subprocess.PIPE,  # open: a gateway that started would wait for a client
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    log = err.decode("utf-8", "replace")
    assert proc.returncode == 2, log
    assert expected in log, log
    assert "auth: auth" not in log, log  # the key is named once
    prespawned = {name: int(pid) for name, pid in PRESPAWNED.findall(log)}
    assert set(prespawned) == {"one", "two"}, log  # they were launched before the failure
    for name, pid in prespawned.items():
        assert not alive(pid), f"backend {name} (pid {pid}) outlived the gateway"
        assert pid_lines(tmp_path / f"{name}.pids") in ([], [pid])
        received = tmp_path / f"{name}.in"
        assert not received.exists() or received.read_bytes() == b""  # not one byte reached it
    assert processes_with(marker) == []


@pytest.mark.parametrize("how", ["stop", "kill then stop", "start then stop"])
async def test_a_backend_stopped_before_adopting_its_process_reaps_it(tmp_path: Path, how: str) -> None:
    cfg = BackendConfig(
        name="t", type="stdio", command=sys.executable, args=("-c", "import time; time.sleep(60)")
    )
    popen = launch(launch_spec(cfg, os.environ, str(tmp_path)))
    backend = StdioBackend(cfg, events=None, environ=os.environ, process=popen)  # type: ignore[arg-type]
    if how == "kill then stop":
        backend.kill()  # forced shutdown: SIGKILL at once
    if how == "start then stop":
        await backend.start()  # its supervisor has not run yet
    await backend.stop()
    assert popen.returncode == -signal.SIGKILL  # killed and reaped
    assert backend.state is BackendState.STOPPED


def test_backends_are_launched_before_the_heavy_imports(tmp_path: Path) -> None:
    """What `serve` imports before it launches the backends (the parser, the config, the launcher)
    leaves out asyncio, the JWT stack and ssl: those load while the backends boot."""
    code = (
        "import sys\n"
        "from sentinel_gw import cli\n"
        "args = cli.build_parser().parse_args(['serve', '--config', sys.argv[1]])\n"
        "path, environ, config = cli._load(args)\n"
        "import sentinel_gw.backends.process\n"
        "heavy = ('asyncio', 'jwt', 'cryptography', 'ssl', 'uvloop', 'sentinel_gw.gateway')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    cfg = tmp_path / "sentinel.toml"
    cfg.write_text(render_config([recording_backend("one", tmp_path)]))
    done = subprocess.run(
        [sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_early_launch_imports_nothing_heavy(tmp_path: Path) -> None:
    """`serve` launches its backends from the raw config before the CLI, the schema (dataclasses),
    argparse, logging or pathlib are imported (early.py), and for a common config without tomllib,
    subprocess, shutil or typing either (with re, datetime, enum...: ~25 ms before the first fork)."""
    code = (
        "import sys\n"
        "from sentinel_gw.early import launch_early\n"
        "early = launch_early(['serve', '--config', sys.argv[1]])\n"
        "heavy = ('argparse', 'dataclasses', 'pathlib', 'logging', 'asyncio', 'jwt', 'ssl', 'json',\n"
        "         'sentinel_gw.cli', 'sentinel_gw.config', 'sentinel_gw.config_schema',\n"
        "         'tomllib', 'tomli', 'subprocess', 'shutil', 'typing', 're', 'datetime', 'enum',\n"
        "         'signal', 'threading', 'locale', 'selectors')\n"
        "print(len(early), sorted(m for m in heavy if m in sys.modules))\n"
        "early.discard()\n"
    )
    marker = f"sentinel-early-{secrets.token_hex(8)}"
    cfg = tmp_path / "sentinel.toml"
    cfg.write_text(render_config([recording_backend("one", tmp_path, marker)]))
    done = subprocess.run(
        [sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "1 []", done.stdout + done.stderr
    assert processes_with(marker) == []


@pytest.mark.parametrize("accel", ACCEL)
async def test_a_config_that_fails_validation_leaves_no_backend(
    make_config, tmp_path: Path, accel: str
) -> None:
    """The early launch reads only the backends: the rest of the config may be invalid. The
    gateway reports the error and the children launched from it are killed before one byte."""
    marker = f"sentinel-early-{secrets.token_hex(8)}"
    cfg = make_config(
        [recording_backend("one", tmp_path, marker), recording_backend("two", tmp_path, marker)],
        extra="[gateway]\nno_such_key = 1\n",
    )
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY,
        "serve",
        "--config",
        str(cfg),
        env=gateway_env(tmp_path, SENTINEL_GW_ACCEL=accel),
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    log = err.decode("utf-8", "replace")
    assert proc.returncode == 2, log
    assert "gateway.no_such_key" in log, log
    for name in ("one", "two"):
        (pid,) = pid_lines(tmp_path / f"{name}.pids")  # launched early, exactly once
        assert not alive(pid), f"backend {name} (pid {pid}) outlived the gateway"
        assert (tmp_path / f"{name}.in").read_bytes() == b""  # not one byte reached it
    assert processes_with(marker) == []


def test_serve_adopts_only_an_identical_early_child(tmp_path: Path) -> None:
    """`_prespawn` adopts an early child only when its launch spec equals the validated config's;
    one launched differently, and one for a backend the config does not start, are killed and
    reaped (the differing one before its backend is launched again)."""
    from sentinel_gw.backends.process import launch as real_launch
    from sentinel_gw.cli import _prespawn
    from sentinel_gw.config import load_config
    from sentinel_gw.early import EarlyLaunches

    sleeper = {"type": "stdio", "command": sys.executable, "args": ["-c", "import time; time.sleep(60)"]}
    path = tmp_path / "sentinel.toml"
    path.write_text(render_config([{"name": "same", **sleeper}, {"name": "changed", **sleeper}]))
    environ = {"PATH": os.environ["PATH"]}
    config = load_config(path, environ=environ)
    specs = {b.name: launch_spec(b, environ, config.base_dir) for b in config.backends}
    early = EarlyLaunches()
    kept = real_launch(specs["same"])
    early.add(specs["same"], kept)
    stale = real_launch(specs["changed"]._replace(env={**specs["changed"].env, "OLD": "1"}))
    early.add(specs["changed"]._replace(env={**specs["changed"].env, "OLD": "1"}), stale)
    orphan = real_launch(specs["same"]._replace(name="gone"))
    early.add(specs["same"]._replace(name="gone"), orphan)
    launched = _prespawn(config, environ, early)
    try:
        assert launched["same"] is kept
        assert launched["changed"] is not stale
        assert stale.returncode == -signal.SIGKILL and orphan.returncode == -signal.SIGKILL  # reaped
        assert launched["changed"].poll() is None and kept.poll() is None
        assert len(early) == 0
    finally:
        from sentinel_gw.backends.process import discard

        discard(launched.values())


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('args = ["a\\u0000b"]', "backends[0].args[0]: must not contain NUL characters"),
        ('env = { A = "x\\u0000y" }', "backends[0].env.A: must not contain NUL characters"),
        ('env = { "A=B" = "x" }', 'backends[0].env."A=B": invalid environment variable name'),
    ],
)
def test_what_popen_refuses_is_reported_by_the_loader(tmp_path: Path, line: str, reason: str) -> None:
    """The early launch runs before validation: a table Popen refuses is left to the loader."""
    cfg = tmp_path / "sentinel.toml"
    cfg.write_text(render_config([]) + f'[[backends]]\nname = "b"\ntype = "stdio"\ncommand = "sh"\n{line}\n')
    done = subprocess.run(
        [*GATEWAY, "serve", "--config", str(cfg)],
        input="",
        capture_output=True,
        text=True,
        env=gateway_env(tmp_path),
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert reason in done.stderr and "Traceback" not in done.stderr, done.stderr


# -- standing back while the early children boot (early.let_backends_boot) ------------------------


def _state(pid: int) -> bytes:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rpartition(b")")[2][1:2]


@pytest.fixture
def children() -> Iterator[Callable[..., list[int]]]:
    """Start processes (argv lists); all are killed and reaped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argvs: list[str]) -> list[int]:
        started.extend(subprocess.Popen(argv, stdin=subprocess.DEVNULL) for argv in argvs)
        return [p.pid for p in started[-len(argvs) :]]

    yield start
    for p in started:
        p.kill()
        p.wait()


BUSY = [sys.executable, "-c", "while True: pass"]
IDLE = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_running_is_read_after_the_last_parenthesis(tmp_path: Path) -> None:
    from sentinel_gw.early import _running

    odd = tmp_path / "odd"
    odd.write_bytes(b"12 (a) R (b) S 1 12 12 0 -1\n")  # a command name holding ") R ("
    running = tmp_path / "running"
    running.write_bytes(b"13 (python3) R 1 13 13 0 -1\n")
    zombie = tmp_path / "zombie"
    zombie.write_bytes(b"14 (python3) Z 1 14 14 0 -1\n")
    assert _running([str(odd), str(running), str(zombie), str(tmp_path / "gone")]) == 1


def test_serve_stands_back_while_its_children_keep_every_core_busy(
    children: Callable[..., list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentinel_gw import early

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    pids = children(BUSY, BUSY)
    # A busy loop is always running or runnable: nothing frees a core before the cap.
    assert early.let_backends_boot(pids, cap=0.3) >= 0.3
    # With one of them gone a core is free: no wait at all.
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _state(pids[0]) not in (b"Z", b"X") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert early.let_backends_boot(pids, cap=0.3) == 0.0


def test_serve_does_not_wait_for_idle_children_or_with_a_core_to_spare(
    children: Callable[..., list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentinel_gw import early

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    idle = children(IDLE, IDLE)
    deadline = time.monotonic() + 30
    while any(_state(pid) != b"S" for pid in idle):  # booted: asleep
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert early.let_backends_boot(idle, cap=5) == 0.0
    assert early.let_backends_boot(children(BUSY), cap=5) == 0.0  # fewer children than cores
