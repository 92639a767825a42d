"""Optional accelerators: chosen by SENTINEL_GW_ACCEL, never required."""

from __future__ import annotations

import asyncio
import builtins
import importlib.util
from typing import Any

import pytest

from sentinel_gw import accel

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAVE_ORJSON = importlib.util.find_spec("orjson") is not None


@pytest.mark.parametrize(
    ("value", "json_on", "loop_on"),
    [
        (None, True, True),
        ("", True, True),
        ("1", True, True),
        ("auto", True, True),
        ("0", False, False),
        ("off", False, False),
        ("False", False, False),
        ("pure", False, False),
        ("json", True, False),
        ("loop", False, True),
        ("json,loop", True, True),
    ],
)
def test_wanted(value: str | None, json_on: bool, loop_on: bool) -> None:
    env = {} if value is None else {accel.ENV: value}
    assert accel.wanted("json", env) is json_on
    assert accel.wanted("loop", env) is loop_on


def test_forced_off_means_none_even_when_installed() -> None:
    env = {accel.ENV: "0"}
    assert accel.orjson(env) is None
    assert accel.uvloop(env) is None


def test_absent_modules_mean_the_standard_library(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_accelerators(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in ("orjson", "uvloop"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_accelerators)
    monkeypatch.delenv(accel.ENV, raising=False)
    assert accel.orjson() is None
    assert accel.uvloop() is None
    assert accel.describe() == "none (standard library)"

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert accel.run(which()).startswith("asyncio")


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_run_on_the_standard_loop_when_forced_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(accel.ENV, "0")
    assert accel.run(_loop_module()).startswith("asyncio")


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed")
def test_run_on_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accel.ENV, raising=False)
    assert accel.run(_loop_module()).startswith("uvloop")
    assert "uvloop" in accel.describe()


@pytest.mark.skipif(not HAVE_ORJSON, reason="orjson not installed")
def test_describe_names_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(accel.ENV, "json")
    assert accel.describe().startswith("orjson ")
