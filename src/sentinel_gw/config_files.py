"""Where the configuration comes from: the config file's path, its `.env` file, `ConfigError`.

Kept apart from the loader (`config.py`) and cheap to import (only `os` and `sys`: no schema,
no dataclasses, no pathlib, no `re`, `typing` or `tomllib` until they are needed): `serve` uses it
before anything else is imported, to launch its stdio backends as early as possible (see
`early.py`), and every millisecond here delays their start.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs ~5 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


class ConfigError(Exception):
    """A configuration problem: which file, which key (dotted path), why.

    When several problems were found, this is the first one and `errors` holds them all.
    """

    def __init__(
        self,
        file: str,
        key: str,
        reason: str,
        *,
        line: int | None = None,
        others: Sequence[ConfigError] = (),
    ) -> None:
        super().__init__(file, key, reason)
        self.file = file
        self.key = key
        self.reason = reason
        self.line = line
        self.others: tuple[ConfigError, ...] = tuple(others)

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return (self, *self.others)

    def one_line(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        return ": ".join([p for p in (where, self.key) if p] + [self.reason])

    def __str__(self) -> str:
        return "\n".join(e.one_line() for e in self.errors)


# --------------------------------------------------------------------------------------------
# Paths


def expand_home(value: str, environ: Mapping[str, str] | None) -> str:
    if value != "~" and not value.startswith("~/"):
        return value
    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")
    return home + value[1:]


def absolute_path(value: str, base_dir: str, environ: Mapping[str, str] | None = None) -> str:
    """`value` as an absolute path: `~` is the home directory, relative means relative to
    `base_dir` (the config file's directory, never the CWD, which is the client's project for
    stdio clients). Empty stays empty (it means "the default" wherever it is allowed)."""
    if not value:
        return value
    return os.path.normpath(os.path.join(base_dir, expand_home(value, environ)))


def find_config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The config file to use: `explicit` (--config), else $SENTINEL_CONFIG, else ./sentinel.toml,
    else $XDG_CONFIG_HOME/sentinel-gw/sentinel.toml (default ~/.config/...). An explicit choice
    that does not exist is an error, never a silent fallback to another file."""
    env = os.environ if environ is None else environ
    if explicit:
        p = expand_home(explicit, env)
        if not os.path.isfile(p):
            raise ConfigError(explicit, "", "config file not found (given with --config)")
        return p
    from_env = env.get("SENTINEL_CONFIG")
    if from_env:
        p = expand_home(from_env, env)
        if not os.path.isfile(p):
            raise ConfigError(from_env, "", "config file not found (named by SENTINEL_CONFIG)")
        return p
    xdg = env.get("XDG_CONFIG_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    config_home = xdg if xdg and os.path.isabs(xdg) else os.path.join(expand_home("~", env), ".config")
    candidates = [
        os.path.join(os.getcwd(), "sentinel.toml"),
        os.path.join(config_home, "sentinel-gw", "sentinel.toml"),
    ]
    for c in candidates:
        if os.path.isfile(c):
            return c
    looked = ", ".join(candidates)
    raise ConfigError(
        "",
        "",
        "no configuration file found; looked at --config (not given), $SENTINEL_CONFIG (not set), "
        f"{looked}. Pass --config PATH or create one from sentinel.toml.example",
    )


def config_dir(path: str) -> str:
    """The directory relative paths in the config file `path` are resolved against."""
    return os.path.dirname(os.path.abspath(path))


def read_toml(path: str) -> dict[str, Any]:
    """The config file's TOML document, or ConfigError saying why it cannot be read."""
    return parse_toml(path, read_config_text(path))


def read_config_text(path: str) -> str:
    return _read_text(path, "utf-8", missing="file not found")


def parse_toml(path: str, text: str) -> dict[str, Any]:
    """`text` (the file `path`'s) as TOML, or ConfigError saying why it is not."""
    import importlib  # already loaded by the interpreter; tomllib is imported only here (~13 ms)

    tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"invalid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(path, "", "invalid TOML: nested too deeply") from None
    except ValueError as e:  # an integer of more than 4,300 digits (int() refuses it)
        raise ConfigError(path, "", f"invalid TOML: {e}") from None


def _read_text(path: str, encoding: str, *, missing: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(encoding)
    except FileNotFoundError:
        raise ConfigError(path, "", missing) from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not valid UTF-8") from None


# --------------------------------------------------------------------------------------------
# .env files

_ENV_LINE = r"(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*(.*)"
_DQ_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def load_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse KEY=VALUE lines. `export ` prefixes, `#` comments, 'single' (literal) and "double"
    (with \\n \\t \\r \\" \\\\ escapes) quotes. No `$VAR` interpolation: values are taken as written.
    A later assignment of the same key wins, as with `source`."""
    import re  # here: most configs have no .env, and serve's early launch reads this module

    name = os.fspath(path)
    text = _read_text(name, "utf-8-sig", missing="env file not found")
    result: dict[str, str] = {}
    # split("\n") rather than splitlines(): the latter also breaks on \f, \x1c, U+2028 ...
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(_ENV_LINE, line)
        if m is None:
            raise ConfigError(name, "", "expected KEY=VALUE (KEY from [A-Za-z_][A-Za-z0-9_]*)", line=lineno)
        key, rest = m.groups()
        value = _env_value(rest, name, lineno, key)
        if "\x00" in value:
            raise ConfigError(name, key, "value contains a NUL character", line=lineno)
        result[key] = value
    return result


def _env_value(rest: str, file: str, lineno: int, key: str) -> str:
    def after_quote(tail: str) -> None:
        tail = tail.strip()
        if tail and not tail.startswith("#"):
            raise ConfigError(file, key, "unexpected text after the closing quote", line=lineno)

    if rest.startswith("'"):
        end = rest.find("'", 1)
        if end < 0:
            raise ConfigError(file, key, "unterminated single quote", line=lineno)
        after_quote(rest[end + 1 :])
        return rest[1:end]
    if rest.startswith('"'):
        out: list[str] = []
        i = 1
        while i < len(rest):
            c = rest[i]
            if c == "\\" and i + 1 < len(rest):
                nxt = rest[i + 1]
                out.append(_DQ_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
                continue
            if c == '"':
                after_quote(rest[i + 1 :])
                return "".join(out)
            out.append(c)
            i += 1
        raise ConfigError(file, key, "unterminated double quote", line=lineno)
    import re

    comment = re.search(r"\s#", rest)
    if comment:
        rest = rest[: comment.start()]
    return rest.strip()


def env_file_warnings(path: str | os.PathLike[str]) -> list[str]:
    """Problems with how an env file is protected (it holds secrets)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if mode & 0o044:  # readable by group or others
        import shlex

        return [
            f"{os.fspath(path)}: readable by group/others (mode {mode & 0o7777:04o}) but it holds "
            f"secrets; run: chmod 600 {shlex.quote(os.fspath(path))}"
        ]
    return []


def environment_for(
    config_path: str | os.PathLike[str],
    env_file: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    warn: bool = True,
) -> dict[str, str]:
    """The environment the gateway runs with: the env file's variables overlaid by the process
    environment (an exported variable always wins). The file is `env_file` when given (it must
    exist), else `.env` next to the config file if there is one. Never the CWD or a parent
    directory: for stdio clients the CWD is the user's project, whose `.env` is not ours.
    `warn=False` skips the warning about a file others can read (the early launch reads the
    same file again later, and warns then)."""
    env = dict(os.environ if environ is None else environ)
    if env_file:
        file: str | None = env_file
    else:
        candidate = os.path.join(config_dir(os.fspath(config_path)), ".env")
        file = candidate if os.path.isfile(candidate) else None
    if file is None:
        return env
    values = load_env_file(file)
    problems = env_file_warnings(file) if warn else []
    if problems:
        import logging

        for warning in problems:
            logging.getLogger("sentinel_gw.config").warning("%s", warning)
    return {**values, **env}
