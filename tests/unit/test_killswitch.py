from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sentinel_gw.config_schema import KillSwitchConfig
from sentinel_gw.policy.killswitch import (
    CONFIG_BACKEND_REASON,
    CONFIG_TOOL_REASON,
    KillEntry,
    KillFile,
    KillFileError,
    KillState,
    KillSwitch,
    default_kill_file_path,
    kill,
    list_kills,
    revive,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def write_state(
    path: Path, tools: dict[str, dict[str, str]] | None = None, backends: dict | None = None
) -> None:
    path.write_text(json.dumps({"version": 1, "tools": tools or {}, "backends": backends or {}}))
    path.chmod(0o600)


def bump(path: Path, n: int) -> None:
    # Distinct mtimes whatever the filesystem's timestamp granularity.
    os.utime(path, ns=(n * 1_000_000_000, n * 1_000_000_000))


# ---------------------------------------------------------------------------------------------
# paths


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}, "/x/state/sentinel-gw/killswitch.json"),
        ({"HOME": "/home/u"}, "/home/u/.local/state/sentinel-gw/killswitch.json"),
        ({"XDG_STATE_HOME": "", "HOME": "/home/u"}, "/home/u/.local/state/sentinel-gw/killswitch.json"),
        ({"XDG_STATE_HOME": "rel", "HOME": "/home/u"}, "/home/u/.local/state/sentinel-gw/killswitch.json"),
    ],
)
def test_default_kill_file_path(env: dict[str, str], expected: str) -> None:
    assert str(default_kill_file_path(env)) == expected


# ---------------------------------------------------------------------------------------------
# decisions


@pytest.mark.parametrize(
    ("cfg_tools", "file_tools", "exposed", "backend", "original", "expected"),
    [
        ((), {}, "fs_read", "fs", "read", None),
        (("fs_*",), {}, "fs_read", "fs", "read", CONFIG_TOOL_REASON),
        (("fs_*",), {}, "fsread", "fs", "read", None),
        (("fs:*",), {}, "files_read", "fs", "read", CONFIG_TOOL_REASON),  # backend:original form
        (("fs:*",), {}, "files_read", "fsx", "read", None),
        ((), {"db_*": "incident 42"}, "db_drop", "db", "drop", "incident 42"),
        ((), {"db:drop": "too dangerous"}, "x_drop", "db", "drop", "too dangerous"),
        ((), {"exact": ""}, "exact", "b", "exact", "killed (kill file)"),
        ((), {"exact": "r"}, "Exact", "b", "Exact", None),  # names are case-sensitive
        ((), {"a[1]": "r"}, "a[1]", "b", "a[1]", "r"),  # literal match of glob metachars
        ((), {"a[1]": "r"}, "a1", "b", "a1", "r"),
        (("t",), {"t": "file reason"}, "t", "b", "t", CONFIG_TOOL_REASON),  # config first
    ],
)
def test_tool_kills(
    cfg_tools: tuple[str, ...],
    file_tools: dict[str, str],
    exposed: str,
    backend: str,
    original: str,
    expected: str | None,
) -> None:
    state = KillState(tools={k: KillEntry(reason=v, at="t", by="me") for k, v in file_tools.items()})
    ks = KillSwitch(KillSwitchConfig(tools=cfg_tools), state)
    assert ks.tool_killed(exposed, backend, original) == expected
    assert ks.tool_killed(exposed, backend, original) == expected  # memoised


def test_backend_kills() -> None:
    state = KillState(backends={"db-*": KillEntry(reason="migration")})
    ks = KillSwitch(KillSwitchConfig(backends=("legacy",)), state)
    assert ks.backend_killed("legacy") == CONFIG_BACKEND_REASON
    assert ks.backend_killed("db-eu") == "migration"
    assert ks.backend_killed("fs") is None
    assert ks.tool_killed("legacy_x", "legacy", "x") is None  # tool check does not include the backend


# ---------------------------------------------------------------------------------------------
# editing


def test_edit_functions_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state" / "killswitch.json"
    assert not list_kills(path)
    kill(path, "tool", "fs_*", "incident 7", "alice")
    kill(path, "backend", "db", "maintenance", "bob")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    state = list_kills(path)
    assert set(state.tools) == {"fs_*"}
    assert state.tools["fs_*"].reason == "incident 7" and state.tools["fs_*"].by == "alice"
    assert state.tools["fs_*"].at.endswith("Z")
    assert state.backends["db"].get("reason") == "maintenance"
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and set(doc) == {"version", "tools", "backends"}
    assert revive(path, "tool", "fs_*") is True
    assert revive(path, "tool", "fs_*") is False
    assert revive(path, "backend", "nope") is False
    assert set(list_kills(path).backends) == {"db"}
    assert not list_kills(path).tools
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize(("kind", "name"), [("tools", "x"), ("tool", ""), ("tool", " x ")])
def test_edit_rejects_bad_arguments(tmp_path: Path, kind: str, name: str) -> None:
    with pytest.raises(ValueError):
        kill(tmp_path / "k.json", kind, name, "r", "me")  # type: ignore[arg-type]


def test_edit_refuses_corrupt_or_unsafe_file(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(KillFileError, match="not valid JSON"):
        kill(path, "tool", "x", "r", "me")
    assert path.read_text() == "{not json"  # nothing overwritten
    write_state(path)
    path.chmod(0o666)
    with pytest.raises(KillFileError, match="writable by group or others"):
        list_kills(path)


_WORKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from sentinel_gw.policy.killswitch import kill
    for i in range(int(sys.argv[4])):
        kill(sys.argv[2], "tool", f"{sys.argv[3]}_{i}", "load test", sys.argv[3])
    """
)


def test_concurrent_edits_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    n = 40
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, SRC, str(path), who, str(n)])
        for who in ("p1", "p2", "p3")
    ]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    tools = list_kills(path).tools
    assert len(tools) == 3 * n
    assert {tools[f"p2_{i}"].by for i in range(n)} == {"p2"}


# ---------------------------------------------------------------------------------------------
# polling


def test_poll_picks_up_edits(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    clock = FakeClock()
    kf = KillFile(path, clock=clock)
    assert kf.poll() is False  # missing file: nothing killed, nothing changed
    assert not kf.state

    kill(path, "tool", "fs_*", "incident", "me")
    assert kf.poll() is False  # throttled: polled again too soon
    clock.t += 0.25
    assert kf.poll() is True
    assert set(kf.state.tools) == {"fs_*"}
    clock.t += 0.25
    assert kf.poll() is False  # unchanged: one stat, no re-read

    revive(path, "tool", "fs_*")
    clock.t += 0.25
    assert kf.poll() is True
    assert not kf.state.tools

    kill(path, "backend", "db", "r", "me")
    assert kf.poll(force=True) is True
    path.unlink()
    assert kf.poll(force=True) is True
    assert not kf.state


def test_poll_detects_same_size_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    clock = FakeClock()
    write_state(path, {"aaa": {"reason": "r"}})
    bump(path, 1)
    kf = KillFile(path, clock=clock)
    assert kf.poll() is True
    with open(path, "r+") as f:  # in place, same size, same inode
        data = f.read().replace("aaa", "bbb")
        f.seek(0)
        f.write(data)
    bump(path, 2)
    clock.t += 1
    assert kf.poll() is True
    assert set(kf.state.tools) == {"bbb"}


def test_unsafe_permissions_ignored_and_warned_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "k.json"
    clock = FakeClock()
    write_state(path, {"t": {"reason": "r"}})
    kf = KillFile(path, clock=clock)
    assert kf.poll() is True and set(kf.state.tools) == {"t"}

    path.chmod(0o620)  # group-writable
    with caplog.at_level(logging.WARNING, logger="sentinel_gw.policy"):
        clock.t += 1
        assert kf.poll() is True
        assert not kf.state
        for _ in range(3):
            clock.t += 1
            assert kf.poll() is False
    assert sum("ignored" in r.message for r in caplog.records) == 1

    path.chmod(0o600)
    clock.t += 1
    assert kf.poll() is True
    assert set(kf.state.tools) == {"t"}


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown to another user")
def test_file_owned_by_another_user_ignored(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    write_state(path, {"t": {"reason": "r"}})
    os.chown(path, 12345, 12345)
    kf = KillFile(path, clock=FakeClock())
    kf.poll()
    assert not kf.state
    with pytest.raises(KillFileError, match="owned by uid 12345"):
        list_kills(path)


@pytest.mark.parametrize(
    "bad",
    [
        "{truncated",
        "[]",
        '{"version": 2, "tools": {}}',
        '{"version": 1, "tools": []}',
        '{"version": 1, "tools": {"x": "not an object"}}',
        '{"version": 1, "tools": {"x": {"reason": 5}}}',
        '{"version": 1, "tools": {}, "extra": 1}',
    ],
)
def test_corrupt_file_keeps_last_good_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: str
) -> None:
    path = tmp_path / "k.json"
    clock = FakeClock()
    write_state(path, {"t": {"reason": "r"}})
    bump(path, 1)
    kf = KillFile(path, clock=clock)
    assert kf.poll() is True
    path.write_text(bad)
    bump(path, 2)
    with caplog.at_level(logging.WARNING, logger="sentinel_gw.policy"):
        for _ in range(3):
            clock.t += 1
            assert kf.poll() is False
    assert set(kf.state.tools) == {"t"}
    assert sum("invalid" in r.message for r in caplog.records) == 1
    write_state(path, {"u": {"reason": "r"}})
    bump(path, 3)
    clock.t += 1
    assert kf.poll() is True
    assert set(kf.state.tools) == {"u"}


def test_killswitch_rebuilt_from_polled_state(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    kf = KillFile(path, clock=FakeClock())
    cfg = KillSwitchConfig(tools=("cfg_tool",))
    ks = KillSwitch(cfg, kf.state)
    assert ks.tool_killed("x_run", "x", "run") is None
    kill(path, "tool", "x:run", "bad output", "ops")
    assert kf.poll(force=True)
    ks = KillSwitch(cfg, kf.state)
    assert ks.tool_killed("x_run", "x", "run") == "bad output"
    assert ks.tool_killed("cfg_tool", "y", "cfg_tool") == CONFIG_TOOL_REASON
