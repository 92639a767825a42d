"""The systemd unit of docs/DEPLOYMENT.md (scripts/sentinel-gw.service): valid, hardened, and its
ExecStart really runs the gateway on the configuration the doc writes.

`systemd-analyze verify` needs no running systemd; the program of ExecStart must exist, so the
check runs on a copy whose program is this installation's `sentinel-gw`. The service test runs the
ExecStart command line (paths mapped into a temporary folder) the way systemd would: no stdin,
the working directory of the unit, then SIGHUP (ExecReload) and SIGTERM (stop).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "scripts" / "sentinel-gw.service"
DOC = ROOT / "docs" / "DEPLOYMENT.md"
INSTALLED = "/usr/local/bin/sentinel-gw"


def service_section() -> dict[str, list[str]]:
    """[Service] of the unit: every value of every key (systemd allows repeats)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def sentinel_gw_program() -> str:
    found = Path(sys.executable).parent / "sentinel-gw"
    if found.is_file():
        return str(found)
    which = shutil.which("sentinel-gw")
    if which is None:
        pytest.fail("no sentinel-gw command installed next to the test interpreter or on PATH")
    return which


def doc_config() -> str:
    """The sentinel.toml that docs/DEPLOYMENT.md writes with `sudo tee ... <<'EOF'`."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"sudo tee /etc/sentinel-gw/sentinel\.toml >/dev/null <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert m, "docs/DEPLOYMENT.md no longer writes /etc/sentinel-gw/sentinel.toml with a heredoc"
    return m.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unit_file_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = tmp_path / "sentinel-gw.service"
    unit.write_text(
        UNIT.read_text(encoding="utf-8").replace(INSTALLED, sentinel_gw_program()), encoding="utf-8"
    )
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # Unknown keys and bad values are only warnings with exit 0: any output is a failure.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (
        done.stdout + done.stderr
    )


def test_unit_is_hardened() -> None:
    service = service_section()

    def one(key: str) -> str:
        assert key in service, f"{key}= missing from {UNIT.name}"
        return service[key][-1]

    assert one("User") == "sentinel-gw" and one("Group") == "sentinel-gw"
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "RestrictSUIDSGID"):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"
    assert one("CapabilityBoundingSet") == "" and one("AmbientCapabilities") == ""
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one("KillMode") == "mixed"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    argv = shlex.split(one("ExecStart"))
    assert argv[0] == INSTALLED and argv[1] == "serve" and "--no-stdio" in argv
    # Everything the doc's configuration writes is under a ReadWritePaths entry.
    writable = one("ReadWritePaths").split()
    written = re.findall(r'^(?:sqlite_path|spool_dir|file)\s*=\s*"([^"]+)"', doc_config(), re.M)
    assert len(written) == 3
    for path in written:
        assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), path
    assert one("WorkingDirectory") in writable


def _get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_for(predicate, what: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the gateway exited with {proc.returncode} while waiting for {what}")
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _initialize_over_http(port: int, token: str) -> None:
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/mcp", body=json.dumps(message), headers=headers)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        assert response.getheader("Mcp-Session-Id")
        assert json.loads(body)["result"]["serverInfo"]["name"] == "sentinel-gw"
    finally:
        conn.close()


def test_service_command_serves_health_and_metrics(tmp_path: Path) -> None:
    program = sentinel_gw_program()
    etc, state = tmp_path / "etc" / "sentinel-gw", tmp_path / "var" / "lib" / "sentinel-gw"
    etc.mkdir(parents=True)
    state.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    env["HOME"] = str(state)
    env["PATH"] = f"{Path(program).parent}{os.pathsep}{env.get('PATH', '')}"

    init = [program, "init", "--dir", str(etc), "--ttl", "30d"]
    subprocess.run(init, env=env, check=True, capture_output=True)
    admin_port, http_port = free_port(), free_port()
    config = (
        doc_config()
        .replace("/etc/sentinel-gw", str(etc))
        .replace("/var/lib/sentinel-gw", str(state))
        .replace("127.0.0.1:9464", f"127.0.0.1:{admin_port}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
    )
    config_path = etc / "sentinel.toml"
    config_path.write_text(config, encoding="utf-8")
    (etc / "revoked-jti.txt").write_text("", encoding="utf-8")
    admin_token = "t" * 43
    with (etc / ".env").open("a", encoding="utf-8") as fh:
        fh.write(f"SENTINEL_ADMIN_TOKEN={admin_token}\n")
    mint = [program, "token", "--config", str(config_path), "--sub", "svc-test", "--role", "developer"]
    token = subprocess.run(mint, env=env, capture_output=True, text=True, check=True).stdout.strip()

    service = service_section()
    argv = shlex.split(service["ExecStart"][-1].replace("/etc/sentinel-gw", str(etc)))
    argv[0] = program
    cwd = service["WorkingDirectory"][-1].replace("/var/lib/sentinel-gw", str(state))
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,  # systemd's StandardInput=null
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: _get(admin_port, "/health")[0] == 200, "/health", proc)
        assert _get(admin_port, "/metrics")[0] == 401  # the admin token is required
        _wait_for(lambda: _get(http_port, "/mcp")[0] != 0, "the HTTP front", proc)
        _initialize_over_http(http_port, token)
        _wait_for(lambda: _get(admin_port, "/ready", admin_token)[0] == 200, "/ready", proc)
        status, body = _get(admin_port, "/metrics", admin_token)
        assert status == 200 and b'sentinel_backend_up{backend="demo"} 1.0' in body
        os.kill(proc.pid, signal.SIGHUP)  # ExecReload
        time.sleep(1.0)
        assert proc.poll() is None and _get(admin_port, "/health")[0] == 200
        os.kill(proc.pid, signal.SIGTERM)  # systemctl stop, KillMode=mixed: the main process only
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert (state / "audit.db").exists()  # the state directory is where the service writes
