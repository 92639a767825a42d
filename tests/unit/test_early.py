"""early.py: what `serve` reads from the raw config before the loader runs must be exactly what the
loader will say, or nothing at all (then the backend is launched later, from the validated config)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sentinel_gw.backends.process import SpawnError, launch_spec
from sentinel_gw.config import ConfigError, environment_for, load_config
from sentinel_gw.config_files import read_toml
from sentinel_gw.early import ServeOptions, serve_options, stdio_backends


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ServeOptions(None, None)),
        (["--config", "a.toml"], ServeOptions("a.toml", None)),
        (["-c", "a.toml"], ServeOptions("a.toml", None)),
        (["--config=a.toml", "--env-file=x.env"], ServeOptions("a.toml", "x.env")),
        (["--env-file", "x.env", "--no-stdio", "--log-level", "debug"], ServeOptions(None, "x.env")),
        (["-c", "a.toml", "--config", "b.toml"], ServeOptions("b.toml", None)),  # the last wins, as argparse
        (["--config", ""], ServeOptions("", None)),
    ],
)
def test_serve_options_reads_what_argparse_reads(argv: list[str], expected: ServeOptions) -> None:
    assert serve_options(argv) == expected
    from sentinel_gw.cli import build_parser

    args = build_parser().parse_args(["serve", *argv])
    assert (args.config, args.env_file) == tuple(expected)


@pytest.mark.parametrize(
    "argv",
    [
        ["--conf", "a.toml"],  # an abbreviation argparse accepts: not guessed at here
        ["-ca.toml"],
        ["-c=a.toml"],
        ["--config"],
        ["--config", "-x"],
        ["--help"],
        ["-h"],
        ["extra"],
        ["--log-level"],
        ["--no-stdio=1"],
    ],
)
def test_serve_options_gives_up_on_anything_else(argv: list[str]) -> None:
    assert serve_options(argv) is None


CONFIG_HEAD = '[auth]\nmode = "none"\nanonymous_subject = "t"\n[rbac.roles.r]\npermissions = ["*"]\n'

BACKENDS = """
[[backends]]
name = "plain"
type = "stdio"
command = "sh"
args = ["-c", "true", "x y"]

[[backends]]
name = "everything"
type = "stdio"
command = "sh"
args = []
cwd = "sub/../sub"
env = { LITERAL = "1", PATH = "/bin:/usr/bin" }
env_from = { CHILD_SECRET = "FROM_ENV_FILE", OTHER = "FROM_PROCESS" }
inherit_env = ["INHERITED", "NOT_SET_ANYWHERE"]
enabled = true

[[backends]]
name = "home"
type = "stdio"
command = "sh"
cwd = "~/work"

[[backends]]
name = "off"
type = "stdio"
command = "sh"
enabled = false

[[backends]]
name = "remote"
type = "http"
url = "http://127.0.0.1:9/mcp"
"""


def test_raw_reading_gives_the_launch_specs_of_the_validated_config(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "home" / "work").mkdir(parents=True)
    path = tmp_path / "sentinel.toml"
    path.write_text(CONFIG_HEAD + BACKENDS)
    (tmp_path / ".env").write_text("FROM_ENV_FILE=s3cret\n")
    (tmp_path / ".env").chmod(0o600)
    process_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "INHERITED": "i"}
    process_env["FROM_PROCESS"] = "p"
    environ = environment_for(path, None, process_env)
    config = load_config(path, environ=environ)

    raw = stdio_backends(read_toml(str(path)), str(tmp_path), environ)

    expected = [b for b in config.backends if b.type == "stdio" and b.enabled]
    assert [b.name for b in raw] == [b.name for b in expected] == ["plain", "everything", "home"]
    for r, v in zip(raw, expected, strict=True):
        assert launch_spec(r, environ, str(tmp_path)) == launch_spec(v, environ, config.base_dir)
    spec = launch_spec(raw[1], environ, str(tmp_path))
    assert spec.env["CHILD_SECRET"] == "s3cret" and spec.cwd == str(tmp_path / "sub")


@pytest.mark.parametrize(
    "table",
    [
        'name = "b"\ntype = "stdio"\ncommand = 1',
        'name = "b"\ntype = "stdio"\ncommand = ""',
        'name = "b"\ntype = "stdio"\ncommand = "sh"\nargs = "-c true"',
        'name = "b"\ntype = "stdio"\ncommand = "sh"\nargs = ["-c", 1]',
        'name = "b"\ntype = "stdio"\ncommand = "sh"\nenv = { A = 1 }',
        'name = "b"\ntype = "stdio"\ncommand = "sh"\nenv_from = ["A"]',
        'name = "b"\ntype = "stdio"\ncommand = "sh"\ninherit_env = "A"',
        'name = "b"\ntype = "stdio"\ncommand = "sh"\ncwd = 3',
        'name = "b"\ntype = "stdio"\ncommand = "sh"\nenabled = "yes"',
        'name = 2\ntype = "stdio"\ncommand = "sh"',
        'name = "b"\ncommand = "sh"',  # type is required
    ],
)
def test_a_table_the_loader_rejects_is_not_launched(tmp_path: Path, table: str) -> None:
    path = tmp_path / "sentinel.toml"
    path.write_text(CONFIG_HEAD + "[[backends]]\n" + table + "\n")
    with pytest.raises(ConfigError):
        load_config(path, environ={})
    assert stdio_backends(read_toml(str(path)), str(tmp_path), {}) == []


def test_a_name_used_twice_launches_neither(tmp_path: Path) -> None:
    table = '[[backends]]\nname = "twin"\ntype = "stdio"\ncommand = "sh"\n'
    other = '[[backends]]\nname = "other"\ntype = "stdio"\ncommand = "sh"\n'
    path = tmp_path / "sentinel.toml"
    path.write_text(CONFIG_HEAD + table + other + table)
    assert [b.name for b in stdio_backends(read_toml(str(path)), str(tmp_path), {})] == ["other"]


@pytest.mark.parametrize("backends", [[], {}, "x", [1, "x", None]])
def test_backends_of_the_wrong_shape_launch_nothing(backends: object) -> None:
    assert stdio_backends({"backends": backends}, "/", {}) == []


def test_an_unset_env_from_variable_is_a_spawn_error_for_both_readings(tmp_path: Path) -> None:
    path = tmp_path / "sentinel.toml"
    path.write_text(
        CONFIG_HEAD + '[[backends]]\nname = "b"\ntype = "stdio"\ncommand = "sh"\nenv_from = { A = "UNSET" }\n'
    )
    (raw,) = stdio_backends(read_toml(str(path)), str(tmp_path), {})
    with pytest.raises(SpawnError, match="UNSET"):
        launch_spec(raw, {}, str(tmp_path))
