"""Distribution: the zipapp (deterministic, small, runs like the installed command on 3.10+),
`pip install` / `pipx install` into isolated environments, the example config shipped in the
package, and the static Python 3.10 compatibility check."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sentinel_gw import __version__

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build-zipapp.sh"
MAX_BYTES = 300_000
DEMO_OK = "every step behaved as expected"
VERMIN = [sys.executable, "-c", "import sys, vermin; sys.argv[0] = 'vermin'; sys.exit(vermin.main())"]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """What a user's shell would pass: no PYTHONPATH, no virtualenv, a private HOME."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    env["HOME"] = str(home)
    env.update(extra)
    return env


def build(output: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["PYTHON"] = sys.executable
    out = subprocess.run(
        ["bash", str(BUILD), str(output)], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def find_python310() -> str | None:
    """A working Python 3.10 interpreter (pyenv shims exist but fail when 3.10 is not selected)."""
    candidates = [shutil.which("python3.10")]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.10*", "bin", "python3.10")))
    candidates += ["/usr/bin/python3.10", "/usr/local/bin/python3.10"]
    for c in candidates:
        if not c or not os.path.exists(c):
            continue
        probe = subprocess.run(
            [c, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return c
    return None


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zipapp") / "sentinel-gw.pyz"
    result = build(out)
    assert str(out) in result.stdout and "bytes" in result.stdout  # the size is printed
    return out


@pytest.fixture(scope="module")
def secret_env() -> dict[str, str]:
    return {"SENTINEL_JWT_SECRET": "packaging-test-secret-" + "k" * 40}


# -- the archive ------------------------------------------------------------------------------


def test_build_is_deterministic(zipapp: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.pyz"
    build(again)
    assert hashlib.sha256(zipapp.read_bytes()).hexdigest() == hashlib.sha256(again.read_bytes()).hexdigest()


def test_size_within_budget(zipapp: Path) -> None:
    size = zipapp.stat().st_size
    assert size <= MAX_BYTES, f"{zipapp.name} is {size} bytes (budget {MAX_BYTES})"


def test_archive_layout(zipapp: Path) -> None:
    data = zipapp.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    assert os.access(zipapp, os.X_OK)
    with zipfile.ZipFile(zipapp) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
    assert names == sorted(names), "entries must be in a fixed (sorted) order"
    assert "__main__.py" in names
    assert "sentinel_gw/cli.py" in names
    assert "sentinel_gw/data/sentinel.toml.example" in names
    assert "jwt/__init__.py" in names
    assert "tomli/__init__.py" in names  # Python 3.10 has no tomllib
    assert "LICENSE" in names
    assert any(n.endswith("licenses/LICENSE") and n.startswith("pyjwt-") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert not [n for n in names if n.endswith("/")], "no directory entries"
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}


def test_version_and_check_without_site_packages(zipapp: Path, tmp_path: Path, secret_env) -> None:
    """-S: no site-packages at all, so everything must come from the archive."""
    env = clean_env(tmp_path, **secret_env)
    out = subprocess.run(
        [sys.executable, "-S", str(zipapp), "--version"], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"sentinel-gw {__version__}"
    out = subprocess.run(
        [sys.executable, "-S", str(zipapp), "check", "--config", str(ROOT / "sentinel.toml.example")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert ": OK" in out.stdout


def test_modules_come_from_the_archive(zipapp: Path, tmp_path: Path) -> None:
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import jwt, sentinel_gw; "
        "print(jwt.__file__); print(sentinel_gw.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(zipapp)],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert line.startswith(str(zipapp) + os.sep), line


def test_demo_runs_from_the_archive(zipapp: Path, tmp_path: Path) -> None:
    """The demo re-launches itself (gateway and backends) from the archive."""
    out = subprocess.run(
        [sys.executable, str(zipapp), "demo"],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert DEMO_OK in out.stdout


def test_archive_on_python310(zipapp: Path, tmp_path: Path, secret_env) -> None:
    python = find_python310()
    if python is None:
        pytest.skip("no Python 3.10 interpreter on this machine")
    env = clean_env(tmp_path, **secret_env)
    out = subprocess.run(
        [python, str(zipapp), "--version"], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"sentinel-gw {__version__}"
    out = subprocess.run(
        [python, str(zipapp), "check", "--config", str(ROOT / "sentinel.toml.example")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [python, str(zipapp), "demo"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert DEMO_OK in out.stdout


# -- the example config shipped in the package -------------------------------------------------


def test_zipapp_carries_the_example_config(zipapp: Path) -> None:
    """`init` reads the example as package data; it is the repository's file, never a copy."""
    with zipfile.ZipFile(zipapp) as zf:
        packaged = zf.read("sentinel_gw/data/sentinel.toml.example")
    assert packaged == (ROOT / "sentinel.toml.example").read_bytes()


def test_source_checkout_reads_the_repository_example() -> None:
    from sentinel_gw.setup_cmds import example_text

    assert example_text() == (ROOT / "sentinel.toml.example").read_text(encoding="utf-8")


# -- isolated installs ---------------------------------------------------------------------------


def test_pip_install_into_fresh_venv(tmp_path: Path) -> None:
    """`pip install .` into a new virtualenv: the console script, the demo, and package data."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = clean_env(tmp_path)
    exe = venv / "bin" / "sentinel-gw"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env, check=False)
    assert out.stdout.strip() == f"sentinel-gw {__version__}", out.stderr
    # The example config is package data: the installed wheel must carry the repository's file.
    out = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from sentinel_gw.setup_cmds import example_text as e; print(e(), end='')",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == (ROOT / "sentinel.toml.example").read_text(encoding="utf-8")
    out = subprocess.run(
        [
            str(exe),
            "init",
            "--dir",
            str(tmp_path / "cfg"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [
            str(exe),
            "doctor",
            "--config",
            str(tmp_path / "cfg" / "sentinel.toml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK    backend demo: ready" in out.stdout


def test_pipx_install_with_extras(tmp_path: Path) -> None:
    """`pipx install '.[audit,metrics]'` in a private PIPX_HOME gives a working sentinel-gw."""
    if importlib.util.find_spec("pipx") is None:
        pytest.fail("pipx is not installed in the test environment: pip install -e '.[test]'")
    env = clean_env(
        tmp_path,
        PIPX_HOME=str(tmp_path / "pipx"),
        PIPX_BIN_DIR=str(tmp_path / "bin"),
        PIPX_MAN_DIR=str(tmp_path / "man"),
    )
    out = subprocess.run(
        [sys.executable, "-m", "pipx", "install", "--python", sys.executable, f"{ROOT}[audit,metrics]"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [str(tmp_path / "bin" / "sentinel-gw"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.stdout.strip() == f"sentinel-gw {__version__}", out.stderr
    venv_python = tmp_path / "pipx" / "venvs" / "sentinel-gw" / "bin" / "python"
    out = subprocess.run(
        [str(venv_python), "-c", "import psycopg, prometheus_client"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


# -- Python 3.10 compatibility, checked statically --------------------------------------------------


def test_code_is_python310_compatible() -> None:
    """vermin reports syntax and standard-library use newer than 3.10 (tomllib without fallback,
    asyncio.TaskGroup/timeout, except*, ExceptionGroup, typing.Self ...) with any interpreter."""
    if importlib.util.find_spec("vermin") is None:
        pytest.fail("vermin is not installed in the test environment: pip install -e '.[test]'")
    out = subprocess.run(
        [
            *VERMIN, "--target=3.10-", "--violations", "--eval-annotations",
            "--no-tips", "-q", "src", "scripts", "tests", "bench",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_vermin_catches_newer_features(tmp_path: Path) -> None:
    """The check above is only worth something if it flags what 3.10 lacks."""
    if importlib.util.find_spec("vermin") is None:
        pytest.fail("vermin is not installed in the test environment: pip install -e '.[test]'")
    sample = tmp_path / "new.py"
    sample.write_text(
        "import asyncio\nimport tomllib\nfrom typing import Self\n\n"
        "async def f():\n    async with asyncio.TaskGroup():\n        pass\n"
        "    async with asyncio.timeout(1):\n        pass\n\n"
        "def g():\n    try:\n        pass\n    except* ValueError:\n        pass\n",
        encoding="utf-8",
    )
    out = subprocess.run(
        [*VERMIN, "--target=3.10-", "--violations", "--no-tips", str(sample)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode != 0
    for feature in ("tomllib", "asyncio.TaskGroup", "asyncio.timeout", "typing.Self", "except*"):
        assert feature in out.stdout, feature
