"""`serve`'s early launch: the stdio backends start before the CLI and the gateway are imported.

An MCP server built on the official SDK takes half a second to boot; the gateway needs about
80 ms (argparse and its subcommands, the config schema, the loader) before it could fork. Launched
from here, right after the interpreter starts, the backends boot while the gateway does, and the
first complete `tools/list` arrives about when the slowest backend alone would answer.

Every millisecond before the forks is a millisecond of cold start, so this path imports only
`os`, `collections`, `ctypes` (for the parent-death signal) and small modules of ours: the config
is read by `minitoml` (the common subset of TOML; tomllib, ~13 ms with typing, re and datetime,
only when the file uses more), and the children are started by `spawn.fork_exec` (`os.fork`,
without waiting for each exec; `subprocess` and `shutil` cost ~15 ms more).

Nothing here decides anything. It reads the raw TOML the way the loader will, and any doubt (a
value of an unexpected type, a name used twice, an option it does not know) means "do not launch
that one now". Once the config is validated, `serve` computes every backend's launch spec again
from the validated config and adopts an early child only when both specs are identical; any
other is killed and reaped before its backend is launched again (`EarlyLaunches.take`), and
whatever `serve` did not adopt is killed when it returns (`EarlyLaunches.discard`). A config
that fails validation therefore costs one short-lived child per stdio backend, killed before it
received a byte, as a bad token does (see docs/SECURITY.md).

After the forks, when the children keep every CPU this process may use busy, the gateway sleeps
until one is free (the fast backends are up), at most `BOOT_YIELD_CAP`: its own start is not what
the first tools/list waits for, and a fourth runnable process on two cores slows the slowest
backend (`let_backends_boot`).
"""

from __future__ import annotations

import os
from collections import namedtuple

TYPE_CHECKING = False  # typing costs ~5 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from sentinel_gw.backends.spawn import Child, LaunchSpec

# serve's options, as argparse spells them (no abbreviations, no -cPATH): option -> field.
_VALUE_OPTIONS = {"--config": "config", "-c": "config", "--env-file": "env_file", "--log-level": ""}
_FLAGS = ("--no-stdio",)


class ServeOptions(namedtuple("ServeOptions", "config env_file")):
    __slots__ = ()
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


class RawStdioBackend(namedtuple("RawStdioBackend", "name command args cwd env env_from inherit_env")):
    """A `[[backends]]` table of type stdio as read from the TOML, before validation."""

    __slots__ = ()
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

    def __init__(self, launched: Mapping[str, tuple[LaunchSpec, Child]] | None = None) -> None:
        self._launched = dict(launched or {})
        self.waited = 0.0  # seconds launch_early stood back for the children to boot

    def pids(self) -> list[int]:
        return [child.pid for _, child in self._launched.values()]

    def __len__(self) -> int:
        return len(self._launched)

    def add(self, spec: LaunchSpec, popen: Child) -> None:
        self._launched[spec.name] = (spec, popen)

    def take(self, spec: LaunchSpec) -> Child | None:
        """The child launched early for `spec.name`, if it was launched exactly as `spec` says and
        its exec succeeded; else None, after killing and reaping it."""
        entry = self._launched.pop(spec.name, None)
        if entry is None:
            return None
        early_spec, popen = entry
        exec_error = getattr(popen, "exec_error", None)  # a Popen has exec'd when it returns
        if early_spec == spec and (exec_error is None or exec_error() is None):
            return popen  # a failed exec is left to the backend's own launch, which reports it
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
    from sentinel_gw.config_files import (
        ConfigError,
        config_dir,
        environment_for,
        find_config_path,
        parse_toml,
        read_config_text,
    )
    from sentinel_gw.minitoml import loads as quick_toml

    process_env = os.environ if environ is None else environ
    try:
        path = find_config_path(options.config, process_env)
        env = environment_for(path, options.env_file, process_env, warn=False)
        text = read_config_text(path)
        data = quick_toml(text)  # tomllib costs ~13 ms to import; this reads the common subset
        if data is None:
            data = parse_toml(path, text)
    except ConfigError:
        return EarlyLaunches()  # the CLI reports it
    from sentinel_gw.backends.spawn import SpawnError, fork_exec, launch_spec

    base_dir = config_dir(path)
    launched = EarlyLaunches()
    try:
        for backend in stdio_backends(data, base_dir, env):
            try:
                spec = launch_spec(backend, env, base_dir)
                launched.add(spec, fork_exec(spec))
            except SpawnError:
                continue  # the backend reports it when it starts
            except (ValueError, TypeError):
                continue  # exec would refuse it (a NUL byte, "=" in a name): the loader will say why
            except (RuntimeError, OSError):
                continue  # no fork here (a thread, a closed stdio descriptor, EAGAIN): serve does it
    except BaseException:
        launched.discard()
        raise
    launched.waited = let_backends_boot(launched.pids())
    return launched


# How long serve may stand back for its booting backends (see let_backends_boot): about its own
# start-up CPU, so that the worst case (backends CPU-bound for seconds) costs the first answer
# at most that much.
BOOT_YIELD_CAP = 0.2
_BOOT_POLL = 0.002


def let_backends_boot(pids: Sequence[int], cap: float = BOOT_YIELD_CAP) -> float:
    """Sleep while the children `pids` keep every CPU this process may use busy, for at most `cap`
    seconds; the time slept. The gateway's own start (imports, config, policy: ~130 ms of CPU) is
    shorter than a typical backend's boot and so is not what the first complete tools/list waits
    for; competing with the booting backends for too few cores is: on 2 cores, three booting
    backends plus the gateway delayed the slowest backend by 20-30 ms more than the backends
    alone did (bench scenario 5). So while at least as many children are running as there are cores,
    the gateway waits; once a core is free (the fast ones are up and waiting on their stdin), it
    starts. A machine with more cores than backends, or one without /proc, never waits."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return 0.0
    if len(pids) < cores:
        return 0.0
    import time

    paths = [f"/proc/{pid}/stat" for pid in pids]
    if _running(paths) < cores:
        return 0.0
    start = time.monotonic()
    deadline = start + cap
    while (now := time.monotonic()) < deadline:
        time.sleep(min(_BOOT_POLL, deadline - now))
        if _running(paths) < cores:
            break
    return time.monotonic() - start


def _running(stat_paths: Sequence[str]) -> int:
    """How many of the processes are running or runnable (state R; one that cannot be read, e.g.
    already exited, is not)."""
    running = 0
    for path in stat_paths:
        try:
            with open(path, "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # "pid (comm) S ...": comm may hold any byte, ")" included; the state follows the last ")".
        running += stat.rpartition(b")")[2][1:2] == b"R"
    return running
