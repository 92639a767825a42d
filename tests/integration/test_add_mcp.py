"""Set-up and registration: `sentinel-gw init`, `sentinel-gw doctor`, scripts/setup.sh and
add-mcp.sh (the JSON it registers with Claude Code carries the token, never the signing secret)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sentinel_gw.config import load_env_file
from sentinel_gw.stdio_client import StdioClient

ROOT = Path(__file__).resolve().parents[2]
ADD_MCP = ROOT / "add-mcp.sh"
SETUP = ROOT / "scripts" / "setup.sh"


def make_bin(directory: Path) -> Path:
    """A bin directory with a `sentinel-gw` that runs this checkout with this interpreter, through
    the same entry point as the installed command."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "sentinel-gw"
    shim.write_text(
        textwrap.dedent(f"""\
            #!{sys.executable}
            from sentinel_gw.__main__ import main

            raise SystemExit(main())
            """),
        encoding="utf-8",
    )
    shim.chmod(0o755)
    return directory


def sandbox_env(tmp: Path, bin_dir: Path, *, path_tail: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")}
    env["HOME"] = str(tmp / "home")
    env["PATH"] = f"{bin_dir}{os.pathsep}{path_tail if path_tail is not None else os.environ['PATH']}"
    (tmp / "home").mkdir(exist_ok=True)
    return env


def run(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, **kw
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False, **kw
    )


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    return make_bin(tmp_path / "bin")


@pytest.fixture
def gw_dir(tmp_path: Path, bin_dir: Path) -> Path:
    """A set-up made by `sentinel-gw init` (as a user would), in its own directory."""
    out = run(["sentinel-gw", "init", "--dir", str(tmp_path / "gw")], sandbox_env(tmp_path, bin_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    return tmp_path / "gw"


def fake_claude(bin_dir: Path, log: Path, exit_code: int = 0) -> None:
    """A `claude` that records each call's argv and stdin as one JSON line."""
    script = bin_dir / "claude"
    script.write_text(
        textwrap.dedent(f"""\
            #!{sys.executable}
            import json, sys
            data = "" if sys.stdin.isatty() else sys.stdin.read()
            with open({str(log)!r}, "a") as fh:
                fh.write(json.dumps({{"argv": sys.argv[1:], "stdin": data}}) + "\\n")
            raise SystemExit({exit_code} if sys.argv[1:3] == ["mcp", "add-json"] else 0)
            """),
        encoding="utf-8",
    )
    script.chmod(0o755)


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# -- init ---------------------------------------------------------------------------------------


def test_init_writes_config_and_private_env(gw_dir: Path) -> None:
    env_file = gw_dir / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = load_env_file(env_file)
    secret, token = values["SENTINEL_JWT_SECRET"], values["SENTINEL_CLIENT_TOKEN"]
    assert len(secret) >= 64 and len(set(secret)) > 20
    assert token.count(".") == 2

    from sentinel_gw.config import load_config
    from sentinel_gw.policy.engine import PolicyEngine

    config = load_config(gw_dir / "sentinel.toml")
    assert [b.name for b in config.backends] == ["demo"]  # the other examples stay commented out
    assert config.backends[0].args[-1] == "demo-server"  # started by the sentinel-gw that ran init
    engine = PolicyEngine(config, environ={**values})
    identity = engine.authenticate(token)
    assert identity.subject == "admin" and identity.roles == ("admin",)
    # The gateway reads this .env too: a client without its own token must not run with this one.
    import pytest

    from sentinel_gw.policy.auth import AuthError

    with pytest.raises(AuthError):
        engine.stdio_identity()
    text = (gw_dir / "sentinel.toml").read_text()
    assert "# [[backends]]" in text and secret not in text and token not in text


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    env = sandbox_env(tmp_path, bin_dir)
    before = (gw_dir / ".env").read_text()
    out = run(["sentinel-gw", "init", "--dir", str(gw_dir)], env)
    assert out.returncode == 1
    assert "already exist" in out.stderr and "--force" in out.stderr
    assert (gw_dir / ".env").read_text() == before
    (gw_dir / ".env").unlink()  # one of the two existing is enough to refuse
    out = run(["sentinel-gw", "init", "--dir", str(gw_dir)], env)
    assert out.returncode == 1 and not (gw_dir / ".env").exists()
    out = run(["sentinel-gw", "init", "--dir", str(gw_dir), "--force"], env)
    assert out.returncode == 0, out.stderr
    assert (gw_dir / ".env").read_text() != before
    assert stat.S_IMODE((gw_dir / ".env").stat().st_mode) == 0o600


def test_init_output_never_shows_secrets(tmp_path: Path, bin_dir: Path) -> None:
    out = run(["sentinel-gw", "init", "--dir", str(tmp_path / "g")], sandbox_env(tmp_path, bin_dir))
    assert out.returncode == 0, out.stderr
    values = load_env_file(tmp_path / "g" / ".env")
    for value in values.values():
        assert value not in out.stdout + out.stderr
    assert "Next steps" in out.stdout and "doctor" in out.stdout


# -- doctor ---------------------------------------------------------------------------------------


def test_doctor_passes_on_a_fresh_setup(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    out = run(
        ["sentinel-gw", "doctor", "--config", str(gw_dir / "sentinel.toml")], sandbox_env(tmp_path, bin_dir)
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for check in ("config", "env file", "signing secret", "auth", "token", "kill switch", "audit sqlite"):
        assert any(line.startswith("OK") and f" {check}:" in line for line in lines), check
    assert any(line.startswith("OK    backend demo: ready") and "tools/list" in line for line in lines)
    assert any(line.startswith("SKIP  ports:") for line in lines)
    for value in load_env_file(gw_dir / ".env").values():
        assert value not in out.stdout + out.stderr


def test_doctor_reports_what_to_fix(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    env_file = gw_dir / ".env"
    env_file.write_text("SENTINEL_JWT_SECRET=change-me\n")
    env_file.chmod(0o644)
    with (gw_dir / "sentinel.toml").open("a") as fh:
        fh.write(
            '\n[[backends]]\nname = "ghost"\ntype = "stdio"\ncommand = "no-such-command-anywhere"\n'
            '\n[[backends]]\nname = "keyed"\ntype = "stdio"\ncommand = "true"\n'
            'env_from = { API_KEY = "KEYED_API_KEY" }\n'
        )
    out = run(
        ["sentinel-gw", "doctor", "--config", str(gw_dir / "sentinel.toml"), "--timeout", "10"],
        sandbox_env(tmp_path, bin_dir),
    )
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert "WARN  env file:" in text and "chmod 600" in text
    assert "FAIL  signing secret: SENTINEL_JWT_SECRET looks like a placeholder" in text
    assert "FAIL  backend keyed secret: KEYED_API_KEY" in text
    assert "FAIL  auth:" in text
    assert "FAIL  backend ghost:" in text and "command not found" in text
    assert "OK    backend demo: ready" in text  # the good backend is still checked
    assert "change-me" not in text
    assert text.rstrip().splitlines()[-1].startswith("doctor: not ready:")


def test_doctor_without_config(tmp_path: Path, bin_dir: Path) -> None:
    out = run(
        ["sentinel-gw", "doctor", "--config", str(tmp_path / "nope.toml")], sandbox_env(tmp_path, bin_dir)
    )
    assert out.returncode == 1
    assert "FAIL  config:" in out.stdout and "init" in out.stdout


# -- scripts/setup.sh -------------------------------------------------------------------------------


def test_setup_sh_runs_init_then_doctor(tmp_path: Path, bin_dir: Path) -> None:
    out = run(["bash", str(SETUP), "--dir", str(tmp_path / "s")], sandbox_env(tmp_path, bin_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "s" / "sentinel.toml").is_file() and (tmp_path / "s" / ".env").is_file()
    assert "doctor: ready" in out.stdout


# -- add-mcp.sh ----------------------------------------------------------------------------------------


def dry_run(tmp_path: Path, bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["bash", str(ADD_MCP), "--dry-run", *args], sandbox_env(tmp_path, bin_dir), cwd=tmp_path)


def test_dry_run_json_has_the_token_and_never_the_secret(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    out = dry_run(tmp_path, bin_dir, "--config", str(gw_dir / "sentinel.toml"))
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)
    values = load_env_file(gw_dir / ".env")
    assert spec == {
        "type": "stdio",
        "command": str(bin_dir / "sentinel-gw"),
        "args": ["serve", "--config", str((gw_dir / "sentinel.toml").resolve())],
        "env": {"SENTINEL_TOKEN": values["SENTINEL_CLIENT_TOKEN"]},
    }
    assert values["SENTINEL_JWT_SECRET"] not in out.stdout + out.stderr


def test_dry_run_with_zipapp_and_relative_config(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    pyz = tmp_path / "dist" / "sentinel-gw.pyz"
    pyz.parent.mkdir()
    pyz.write_bytes(b"")  # only its path matters here; test_packaging runs the real archive
    argv = ["bash", str(ADD_MCP), "--dry-run", "--config", "gw/sentinel.toml"]
    argv += ["--zipapp", "dist/sentinel-gw.pyz", "--python", sys.executable]
    out = run(argv, sandbox_env(tmp_path, bin_dir), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)
    assert spec["command"] == sys.executable
    assert spec["args"] == [
        str(pyz.resolve()),
        "serve",
        "--config",
        str((gw_dir / "sentinel.toml").resolve()),
    ]
    assert list(spec["env"]) == ["SENTINEL_TOKEN"]


def test_registered_command_really_serves(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    """Start the server exactly as the JSON says (from another directory, with no secret in the
    environment): the gateway finds its secret in the .env and accepts the token."""
    spec = json.loads(dry_run(tmp_path, bin_dir, "--config", str(gw_dir / "sentinel.toml")).stdout)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), **spec["env"]}

    async def session() -> list[str]:
        client = StdioClient([spec["command"], *spec["args"]], env=env)
        await client.start()
        try:
            await client.initialize()
            result = await client.request("tools/list", {})
            return [t["name"] for t in result["tools"]]
        finally:
            await client.close()

    names = asyncio.run(session())
    assert "echo" in names


def test_registers_through_claude_with_token_on_stdin(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    log = tmp_path / "claude.log"
    fake_claude(bin_dir, log)
    env = sandbox_env(tmp_path, bin_dir)
    out = run(["bash", str(ADD_MCP), "--config", str(gw_dir / "sentinel.toml")], env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    (call,) = calls(log)
    assert call["argv"] == ["mcp", "add-json", "-s", "local", "sentinel", "-"]
    values = load_env_file(gw_dir / ".env")
    spec = json.loads(call["stdin"])
    assert spec["env"] == {"SENTINEL_TOKEN": values["SENTINEL_CLIENT_TOKEN"]}
    assert values["SENTINEL_CLIENT_TOKEN"] not in " ".join(call["argv"])  # never on a command line
    assert values["SENTINEL_JWT_SECRET"] not in json.dumps(call) + out.stdout + out.stderr


def test_scope_name_and_replace(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    log = tmp_path / "claude.log"
    fake_claude(bin_dir, log)
    env = sandbox_env(tmp_path, bin_dir)
    config = str(gw_dir / "sentinel.toml")
    out = run(
        ["bash", str(ADD_MCP), "--config", config, "--scope", "user", "--name", "gw2", "--replace"], env
    )
    assert out.returncode == 0, out.stderr
    out = run(["bash", str(ADD_MCP), "--config", config, "--scope=project", "--name=gw3"], env)
    assert out.returncode == 0, out.stderr
    assert "do not commit" in out.stderr  # project scope writes the token into ./.mcp.json
    argvs = [c["argv"] for c in calls(log)]
    assert argvs == [
        ["mcp", "remove", "gw2", "-s", "user"],
        ["mcp", "add-json", "-s", "user", "gw2", "-"],
        ["mcp", "add-json", "-s", "project", "gw3", "-"],
    ]


def test_claude_failure_is_explained(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    fake_claude(bin_dir, tmp_path / "claude.log", exit_code=1)
    out = run(
        ["bash", str(ADD_MCP), "--config", str(gw_dir / "sentinel.toml")], sandbox_env(tmp_path, bin_dir)
    )
    assert out.returncode == 1
    assert "--replace" in out.stderr


def test_clear_errors(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    config = str(gw_dir / "sentinel.toml")
    # `claude` missing (PATH without it; dry-run still works)
    env = sandbox_env(tmp_path, bin_dir, path_tail="/usr/bin:/bin")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 for the JSON
    out = run(["bash", str(ADD_MCP), "--config", config], env)
    if (Path("/usr/bin/claude")).exists() or (Path("/bin/claude")).exists():  # pragma: no cover
        pytest.skip("a system-wide claude is installed")
    assert out.returncode == 1 and "`claude` command is not on PATH" in out.stderr
    assert "--dry-run" in out.stderr
    env = sandbox_env(tmp_path, bin_dir)
    # no config / no .env: run init first
    out = dry_run(tmp_path, bin_dir, "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 1 and "sentinel-gw init" in out.stderr
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "sentinel.toml").write_text((gw_dir / "sentinel.toml").read_text())
    out = dry_run(tmp_path, bin_dir, "--config", str(lonely / "sentinel.toml"))
    assert out.returncode == 1 and ".env" in out.stderr and "sentinel-gw init" in out.stderr
    # token missing, or a placeholder
    secret_line = next(
        line for line in (gw_dir / ".env").read_text().splitlines() if line.startswith("SENTINEL_JWT")
    )
    (gw_dir / ".env").write_text(secret_line + "\n")
    out = dry_run(tmp_path, bin_dir, "--config", config)
    assert out.returncode == 1 and "SENTINEL_CLIENT_TOKEN is missing" in out.stderr
    assert secret_line.split("=", 1)[1] not in out.stderr
    (gw_dir / ".env").write_text(secret_line + "\nSENTINEL_TOKEN=generate-after-setup-see-below\n")
    out = dry_run(tmp_path, bin_dir, "--config", config)
    assert out.returncode == 1 and "placeholder" in out.stderr
    # bad arguments
    out = dry_run(tmp_path, bin_dir, "--config", config, "--scope", "global")
    assert out.returncode == 1 and "--scope must be local, user or project" in out.stderr
    out = dry_run(tmp_path, bin_dir, "--config", config, "--name", "bad name")
    assert out.returncode == 1 and "--name" in out.stderr
    out = dry_run(tmp_path, bin_dir, "--config", config, "--zipapp", str(tmp_path / "none.pyz"))
    assert out.returncode == 1 and "build-zipapp.sh" in out.stderr


def test_custom_token_env_is_honoured(tmp_path: Path, bin_dir: Path, gw_dir: Path) -> None:
    config = gw_dir / "sentinel.toml"
    config.write_text(config.read_text().replace('token_env = "SENTINEL_TOKEN"', 'token_env = "MY_GW_TOKEN"'))
    env_file = gw_dir / ".env"
    env_file.write_text(env_file.read_text().replace("SENTINEL_TOKEN=", "MY_GW_TOKEN="))
    out = dry_run(tmp_path, bin_dir, "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert list(json.loads(out.stdout)["env"]) == ["MY_GW_TOKEN"]
