"""`serve`'s early launch: the stdio backends start before the CLI and the gateway are imported.

An MCP server built on the official SDK takes half a second to boot; the gateway needs about
80 ms (argparse and its subcommands, the config schema, the loader) before it could fork. Launched
from here, right after the interpreter starts (tomllib and subprocess are all this imports), the
backends boot while the gateway does, and the first complete `tools/list` arrives about when the
slowest backend alone would answer.

Nothing here decides anything. It reads the raw TOML the way the loader will, and any doubt (a
value of an unexpected type, a name used twice, an option it does not know) means "do not launch
that one now". Once the config is validated, `serve` computes every backend's launch spec again
from the validated config and adopts an early child only when both specs are identical; any
other is killed and reaped before its backend is launched again (`EarlyLaunches.take`), and
whatever `serve` did not adopt is killed when it returns (`EarlyLaunches.discard`). A config
that fails validation therefore costs one short-lived child per stdio backend, killed before it
received a byte, as a bad token does (see docs/SECURITY.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import subprocess

    from sentinel_gw.backends.process import LaunchSpec

# serve's options, as argparse spells them (no abbreviations, no -cPATH): option -> field.
_VALUE_OPTIONS = {"--config": "config", "-c": "config", "--env-file": "env_file", "--log-level": ""}
_FLAGS = ("--no-stdio",)


class ServeOptions(NamedTuple):
    config: str | None
    env_file: str | None


def serve_options(argv: Sequence[str]) -> ServeOptions | None:
    """`serve`'s --config and --env-file from its arguments (those after "serve"), or None when
    they are anything but plain (argparse parses them later and reports what is wrong)."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in _FLAGS:
            continue
        option, eq, value = arg.partition("=")
        if not (eq and option.startswith("--") and option in _VALUE_OPTIONS):
            if arg not in _VALUE_OPTIONS or i >= len(argv):
                return None
            option, value = arg, argv[i]
            i += 1
        if value.startswith("-"):
            return None  # argparse takes it for an option
        if _VALUE_OPTIONS[option]:
            found[_VALUE_OPTIONS[option]] = value
    return ServeOptions(found.get("config"), found.get("env_file"))


class RawStdioBackend(NamedTuple):
    """A `[[backends]]` table of type stdio as read from the TOML, before validation."""

    name: str
    command: str
    args: tuple[str, ...]
    cwd: str  # absolute, resolved as the loader resolves it
    env: Mapping[str, str]
    env_from: Mapping[str, str]
    inherit_env: tuple[str, ...]


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _is_str_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def stdio_backends(
    data: Mapping[str, Any], base_dir: str, environ: Mapping[str, str]
) -> list[RawStdioBackend]:
    """The enabled stdio backends of a raw config document. A table with anything unexpected,
    and every table whose name is used more than once, is left out: the loader will say why."""
    from sentinel_gw.config_files import absolute_path

    tables = data.get("backends")
    if not isinstance(tables, list):
        return []
    found: list[RawStdioBackend] = []
    for t in tables:
        if not isinstance(t, dict) or t.get("type") != "stdio" or t.get("enabled", True) is not True:
            continue
        name, command, cwd = t.get("name"), t.get("command"), t.get("cwd", "")
        args, inherit = t.get("args", []), t.get("inherit_env", [])
        env, env_from = t.get("env", {}), t.get("env_from", {})
        if not (isinstance(name, str) and isinstance(command, str) and command and isinstance(cwd, str)):
            continue
        if not (_is_str_list(args) and _is_str_list(inherit) and _is_str_map(env) and _is_str_map(env_from)):
            continue
        found.append(
            RawStdioBackend(
                name,
                command,
                tuple(args),
                absolute_path(cwd, base_dir, environ),
                env,
                env_from,
                tuple(inherit),
            )
        )
    names = [b.name for b in found]
    return [b for b in found if names.count(b.name) == 1]


class EarlyLaunches:
    """Children launched early, by backend name, until `serve` adopts or discards them."""

    def __init__(
        self, launched: Mapping[str, tuple[LaunchSpec, subprocess.Popen[bytes]]] | None = None
    ) -> None:
        self._launched = dict(launched or {})

    def __len__(self) -> int:
        return len(self._launched)

    def add(self, spec: LaunchSpec, popen: subprocess.Popen[bytes]) -> None:
        self._launched[spec.name] = (spec, popen)

    def take(self, spec: LaunchSpec) -> subprocess.Popen[bytes] | None:
        """The child launched early for `spec.name`, if it was launched exactly as `spec` says;
        else None, after killing and reaping one launched differently."""
        entry = self._launched.pop(spec.name, None)
        if entry is None:
            return None
        early_spec, popen = entry
        if early_spec == spec:
            return popen
        from sentinel_gw.backends.process import discard

        discard([popen])
        return None

    def discard(self) -> None:
        """Kill and reap every child nobody adopted."""
        if not self._launched:
            return
        from sentinel_gw.backends.process import discard

        popens = [popen for _, popen in self._launched.values()]
        self._launched.clear()
        discard(popens)


def launch_early(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> EarlyLaunches:
    """For `sentinel-gw serve ...` (`argv` without the program name): launch the config's enabled
    stdio backends now. Anything else, or any doubt, launches nothing."""
    if argv[:1] != ["serve"]:
        return EarlyLaunches()
    options = serve_options(argv[1:])
    if options is None:
        return EarlyLaunches()
    from sentinel_gw.config_files import ConfigError, config_dir, environment_for, find_config_path, read_toml

    process_env = os.environ if environ is None else environ
    try:
        path = find_config_path(options.config, process_env)
        env = environment_for(path, options.env_file, process_env, warn=False)
        data = read_toml(path)
    except ConfigError:
        return EarlyLaunches()  # the CLI reports it
    from sentinel_gw.backends.process import SpawnError, launch, launch_spec

    base_dir = config_dir(path)
    launched = EarlyLaunches()
    try:
        for backend in stdio_backends(data, base_dir, env):
            try:
                spec = launch_spec(backend, env, base_dir)
                launched.add(spec, launch(spec))
            except SpawnError:
                continue  # the backend reports it when it starts
            except (ValueError, TypeError):
                continue  # Popen refused it (a NUL byte, "=" in a name): the loader will say why
    except BaseException:
        launched.discard()
        raise
    return launched
