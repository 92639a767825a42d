"""`sentinel-gw init` and `sentinel-gw doctor`: from nothing to a checked set-up.

`init` writes `sentinel.toml` (the example shipped in the package, only the demo backend
enabled, started by this very installation) and `.env` (mode 0600: a random signing secret under
the name `auth.secret_env` gives, and an admin token as `SENTINEL_CLIENT_TOKEN`, which add-mcp.sh
hands to the client as its `SENTINEL_TOKEN`). It never overwrites either file without `--force`.

`doctor` checks a set-up the way the gateway will use it and prints one line per check
(OK/WARN/FAIL/SKIP) with what to fix; it exits 1 if anything FAILs. It never prints a secret
or a token.

cli.py defines both commands' options and calls the handlers with these Namespaces:
  init:   dir (str), force (bool), subject (str), ttl (str)
  doctor: config (str | None), env_file (str | None), timeout (float), verbose (bool)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pkgutil
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sentinel_gw.cli import DEFAULT_INIT_TTL

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

EXIT_OK = 0
EXIT_FAIL = 1

EXAMPLE_RESOURCE = "data/sentinel.toml.example"
CONFIG_NAME = "sentinel.toml"
ENV_NAME = ".env"
DEMO_BACKEND = "demo"
MIN_SECRET_BYTES = 32
_PLACEHOLDERS = ("change-me", "changeme", "replace-me", "your-secret", "secret", "xxx", "todo")


# --------------------------------------------------------------------------------------------
# Shared helpers


def example_text() -> str:
    """The commented example config. Installed packages (wheel, pipx, zipapp) carry it as package
    data; a source checkout (editable install) reads the repository's own sentinel.toml.example.
    Either way it is the one file at the repository root: there is no copy to drift."""
    with contextlib.suppress(OSError):
        data = pkgutil.get_data("sentinel_gw", EXAMPLE_RESOURCE)
        if data is not None:
            return data.decode("utf-8")
    checkout = Path(__file__).resolve().parent.parent.parent / "sentinel.toml.example"
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise FileNotFoundError(
        "sentinel.toml.example is missing from this installation (expected as package data "
        f"sentinel_gw/{EXAMPLE_RESOURCE}); reinstall sentinel-gw"
    )


def invocation() -> str:
    """How the user runs this sentinel-gw, for the hints we print."""
    from sentinel_gw.stdio_client import self_command

    me = self_command()
    if me[1:2] != ["-m"]:  # the zipapp
        return shlex.join(["python3", me[1]])
    script = Path(sys.executable).parent / "sentinel-gw"  # console scripts sit by the interpreter
    if script.is_file():
        found = shutil.which("sentinel-gw")
        same = found is not None and Path(found).resolve() == script.resolve()
        return "sentinel-gw" if same else shlex.quote(str(script))
    return shlex.join(me)


# --------------------------------------------------------------------------------------------
# init

_TABLE = re.compile(r"^\s*\[")
_BACKENDS = re.compile(r"^\s*\[\[\s*backends\s*\]\]\s*(#.*)?$")
_SUBTABLE = re.compile(r"^\s*\[\s*backends\.")
_NAME = re.compile(r'^\s*name\s*=\s*"([^"]*)"')
_COMMAND = re.compile(r"^(\s*)command\s*=")
_ARGS = re.compile(r"^(\s*)args\s*=")


def _backend_blocks(lines: Sequence[str]) -> Iterator[tuple[int, int, str]]:
    """(start, end, name) of each uncommented [[backends]] table with its sub-tables."""
    i = 0
    while i < len(lines):
        if not _BACKENDS.match(lines[i]):
            i += 1
            continue
        start = i
        name = ""
        i += 1
        while i < len(lines) and not (_TABLE.match(lines[i]) and not _SUBTABLE.match(lines[i])):
            m = _NAME.match(lines[i])
            if m and not name:
                name = m.group(1)
            i += 1
        end = i
        # Comment lines just before the next table describe it, not this backend.
        while end > start + 1 and lines[end - 1].lstrip().startswith("#"):
            end -= 1
        yield start, end, name


def render_config(example: str, demo_command: Sequence[str]) -> str:
    """The example with every backend but the demo one commented out, and the demo backend
    started as `demo_command` (this installation) instead of `python3 -m ...`."""
    lines = example.split("\n")
    for start, end, name in list(_backend_blocks(lines)):
        for j in range(start, end):
            line = lines[j]
            if name != DEMO_BACKEND:
                if line.strip() and not line.lstrip().startswith("#"):
                    lines[j] = "# " + line
                continue
            cm = _COMMAND.match(line)
            am = _ARGS.match(line)
            if cm and start < j:
                lines[j] = f"{cm.group(1)}command = {json.dumps(demo_command[0])}"
            elif am and start < j:
                lines[j] = f"{am.group(1)}args = {json.dumps([*demo_command[1:], 'demo-server'])}"
    text = "\n".join(lines)
    header = (
        "# Written by `sentinel-gw init` from the example shipped with sentinel-gw. The demo backend\n"
        "# is started by the sentinel-gw that ran init; add your own servers under [[backends]].\n"
    )
    return header + text


def _write_private(path: Path, text: str, mode: int) -> None:
    """Write atomically with `mode` from the start (the content never exists with wider rights)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# The token add-mcp.sh hands to Claude Code is kept under its own name, not auth.token_env: the
# gateway reads this .env itself, and a client that forgot its own token must be refused, not
# silently run with this one.
CLIENT_TOKEN_ENV = "SENTINEL_CLIENT_TOKEN"  # noqa: S105 - a variable name


def _env_text(
    secret_name: str, secret: str, token_name: str, token: str, *, subject: str, expires: str
) -> str:
    return (
        "# Written by `sentinel-gw init`. It holds secrets: keep it private (mode 0600), never\n"
        "# commit it. The gateway reads it from next to sentinel.toml; exported variables win.\n"
        "#\n"
        f"# The signing secret (auth.secret_env). Only the gateway and `sentinel-gw token` need it;\n"
        f"# never give it to a client (they get tokens).\n"
        f"{secret_name}={secret}\n"
        "#\n"
        f"# A token for you: subject {subject!r}, role admin, expires {expires}. add-mcp.sh hands it\n"
        "# to Claude Code as its SENTINEL_TOKEN; mint narrower ones for agents with `sentinel-gw token`.\n"
        f"{token_name}={token}\n"
    )


def cmd_init(args: argparse.Namespace) -> int:
    from sentinel_gw.config import ConfigError, parse_config
    from sentinel_gw.policy.auth import mint_token, parse_duration
    from sentinel_gw.stdio_client import self_command

    directory = Path(getattr(args, "dir", None) or ".").expanduser().resolve()
    force = bool(getattr(args, "force", False))
    subject = getattr(args, "subject", None) or "admin"
    try:
        ttl = parse_duration(getattr(args, "ttl", None) or DEFAULT_INIT_TTL)
    except ValueError as exc:
        print(f"sentinel-gw init: --ttl: {exc}", file=sys.stderr)
        return 2
    config_path = directory / CONFIG_NAME
    env_path = directory / ENV_NAME
    existing = [p for p in (config_path, env_path) if p.exists()]
    if existing and not force:
        names = " and ".join(str(p) for p in existing)
        print(
            f"sentinel-gw init: {names} already exist{'s' if len(existing) == 1 else ''}; nothing "
            "was written. Use --force to replace (the old signing secret and tokens stop working).",
            file=sys.stderr,
        )
        return EXIT_FAIL

    try:
        text = render_config(example_text(), self_command())
    except FileNotFoundError as exc:
        print(f"sentinel-gw init: {exc}", file=sys.stderr)
        return EXIT_FAIL
    try:
        config = parse_config(tomllib.loads(text), source=str(config_path), base_dir=str(directory))
    except (ConfigError, tomllib.TOMLDecodeError) as exc:  # pragma: no cover - the example is tested
        print(f"sentinel-gw init: the shipped example does not load: {exc}", file=sys.stderr)
        return EXIT_FAIL
    auth = config.auth
    hmac_algs = [a for a in auth.algorithms if a.startswith("HS")]
    if auth.mode != "jwt" or not hmac_algs or not auth.secret_env:  # pragma: no cover
        print("sentinel-gw init: the example does not use an HS* signing secret", file=sys.stderr)
        return EXIT_FAIL

    secret = secrets.token_urlsafe(48)
    token = mint_token(
        secret,
        subject=subject,
        roles=["admin"],
        ttl_secs=ttl,
        issuer=auth.issuer,
        audience=auth.audience,
        algorithm=hmac_algs[0],
        roles_claim=auth.roles_claim or "roles",
    )
    expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + ttl))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_private(config_path, text, 0o644)
        _write_private(
            env_path,
            _env_text(auth.secret_env, secret, CLIENT_TOKEN_ENV, token, subject=subject, expires=expires),
            0o600,
        )
    except OSError as exc:
        print(f"sentinel-gw init: cannot write in {directory}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL

    me = invocation()
    cfg = shlex.quote(str(config_path))
    print(f"wrote {config_path} (the demo backend enabled, the other examples commented out)")
    print(
        f"wrote {env_path} (mode 0600): {auth.secret_env} (signing secret) and {CLIENT_TOKEN_ENV} "
        f"(admin token for {subject!r}, expires {expires})"
    )
    print()
    print("Next steps:")
    print(f"  1. check the set-up:          {me} doctor --config {cfg}")
    print(f"  2. add your MCP servers:      edit {cfg} ([[backends]]; docs/CONFIGURATION.md)")
    print(f"  3. register with Claude Code: add-mcp.sh --config {cfg}   (or by hand: docs/CLAUDE-CODE.md)")
    print(
        f"  4. tokens for agents:         {me} token --config {cfg} --sub agent1 --role developer --ttl 30d"
    )
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# doctor


@dataclasses.dataclass
class Check:
    status: str  # OK WARN FAIL SKIP
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<5} {self.name}: {self.detail}"
        return f"{text}\n      fix: {self.fix}" if self.fix else text


class Report:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, status: str, name: str, detail: str, fix: str = "") -> None:
        check = Check(status, name, detail, fix)
        self.checks.append(check)
        print(check.line(), flush=True)

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)


def _secret_problem(value: str) -> str | None:
    lowered = value.lower()
    if any(p in lowered for p in _PLACEHOLDERS) and len(set(value)) < 20:
        return "looks like a placeholder"
    if len(value.encode("utf-8")) < MIN_SECRET_BYTES:
        return f"is {len(value.encode('utf-8'))} bytes; at least {MIN_SECRET_BYTES} are needed"
    if len(set(value)) < 10:
        return f"has only {len(set(value))} distinct characters"
    return None


def _where_to_set(env_path: Path | None, name: str) -> str:
    if env_path is not None:
        return f"add {name}=... to {env_path} (or export it)"
    return f"export {name}=... or put it in a .env file next to the config"


def _check_secrets(report: Report, config: Any, environ: Mapping[str, str], env_path: Path | None) -> None:
    auth = config.auth
    if auth.mode == "none":
        report.add("WARN", "auth", 'auth.mode = "none": clients are not authenticated', 'use mode = "jwt"')
    elif any(a.startswith("HS") for a in auth.algorithms):
        name = auth.secret_env
        value = environ.get(name, "")
        if not value:
            report.add(
                "FAIL",
                "signing secret",
                f"{name} is not set",
                _where_to_set(env_path, name) + "; `sentinel-gw init` makes one",
            )
        else:
            problem = _secret_problem(value)
            if problem:
                report.add(
                    "FAIL",
                    "signing secret",
                    f"{name} {problem}",
                    "replace it: python3 -c 'import secrets; print(secrets.token_urlsafe(48))' "
                    "(tokens signed with the old one stop working)",
                )
            else:
                report.add("OK", "signing secret", f"{name} is set ({len(value.encode('utf-8'))} bytes)")
    needed: list[tuple[str, str]] = []
    for b in config.backends:
        if not b.enabled:
            continue
        for child_var, source in (getattr(b, "env_from", None) or {}).items():
            needed.append((f"backend {b.name}", f"{source} (env_from {child_var})"))
        for header, source in (getattr(b, "headers_from_env", None) or {}).items():
            needed.append((f"backend {b.name}", f"{source} (header {header})"))
    if "postgres" in config.audit.sinks:
        needed.append(("audit", f"{config.audit.postgres_url_env} (audit.postgres_url_env)"))
    for owner, described in needed:
        var = described.split(" ", 1)[0]
        if environ.get(var):
            report.add("OK", f"{owner} secret", f"{described} is set")
        else:
            report.add("FAIL", f"{owner} secret", f"{described} is not set", _where_to_set(env_path, var))


def _check_auth(report: Report, config: Any, environ: Mapping[str, str]) -> Any:
    from sentinel_gw.policy.auth import AuthError, AuthSetupError
    from sentinel_gw.policy.engine import PolicyEngine

    try:
        policy = PolicyEngine(config, environ=environ)
    except (AuthSetupError, ValueError) as exc:
        message = str(exc).removeprefix("auth: ")
        report.add("FAIL", "auth", message, "fix [auth] in the config or the secret it names")
        return None
    auth = config.auth
    if auth.mode == "jwt":
        report.add(
            "OK",
            "auth",
            f"jwt {', '.join(auth.algorithms)}; issuer {auth.issuer or '(any)'}, "
            f"audience {auth.audience or '(any)'}",
        )
        token_name = auth.token_env if environ.get(auth.token_env, "").strip() else CLIENT_TOKEN_ENV
        if environ.get(token_name, "").strip():
            try:
                who = policy.authenticate(environ[token_name].strip())
            except AuthError as exc:
                report.add(
                    "FAIL",
                    "token",
                    f"{token_name} is refused: {exc}",
                    f"mint a new one: {invocation()} token --config ... --sub NAME --role ROLE",
                )
            else:
                left = ""
                if who.expires_at is not None:
                    days = (who.expires_at - time.time()) / 86400
                    left = f", expires in {days:.1f} days" if days < 2 else f", expires in {days:.0f} days"
                status = (
                    "WARN" if who.expires_at is not None and who.expires_at - time.time() < 86400 else "OK"
                )
                report.add(
                    status,
                    "token",
                    f"{token_name} is valid: subject {who.subject!r}, "
                    f"roles {', '.join(who.roles) or '(none)'}{left}",
                )
        else:
            report.add(
                "SKIP",
                "token",
                f"{auth.token_env} is not set here; each client must pass its own "
                f"(`{invocation()} token` mints one)",
            )
    return policy


def _check_kill_file(report: Report, config: Any, environ: Mapping[str, str]) -> None:
    from sentinel_gw.policy.killswitch import KillFileError, default_kill_file_path, list_kills

    raw = config.kill_switch.file
    path = Path(raw if os.path.isabs(raw or "") else os.path.join(config.base_dir, raw)) if raw else None
    path = path or default_kill_file_path(environ)
    try:
        state = list_kills(path)
    except (KillFileError, OSError) as exc:
        report.add(
            "FAIL",
            "kill switch",
            str(exc),
            f"repair or remove {path} (`{invocation()} kill --list` shows what it holds)",
        )
        return
    if not path.exists():
        report.add("OK", "kill switch", f"{path} does not exist yet (nothing killed)")
        return
    killed = len(state.tools) + len(state.backends)
    report.add("OK", "kill switch", f"{path} readable ({killed} kill{'s' if killed != 1 else ''})")


async def _check_audit(report: Report, config: Any, timeout: float) -> None:
    import asyncio

    from sentinel_gw.ops import audit

    if not config.audit.sinks:
        report.add("WARN", "audit", "audit.sinks is empty: nothing is audited", 'set sinks = ["sqlite"]')
        return
    try:
        sinks = audit.build_sinks(config)
    except Exception as exc:
        report.add("FAIL", "audit", f"cannot set up the sinks: {exc}", "see [audit] in docs/CONFIGURATION.md")
        return
    for sink in sinks:
        name = getattr(sink, "name", "?")
        where = getattr(sink, "path", None) or ""
        try:
            await asyncio.wait_for(sink.open(), timeout)
            await asyncio.wait_for(sink.last_hash(), timeout)
        except Exception as exc:
            report.add(
                "FAIL",
                f"audit {name}",
                f"cannot open{f' {where}' if where else ''}: {exc or type(exc).__name__}",
                "check the path's directory and permissions, or the database URL",
            )
        else:
            report.add("OK", f"audit {name}", f"sink opens{f' ({where})' if where else ''}")
        finally:
            with contextlib.suppress(Exception):
                await sink.close()


async def _check_backends(
    report: Report, config: Any, environ: Mapping[str, str], policy: Any, timeout: float
) -> None:
    import asyncio

    from sentinel_gw.gateway import Gateway
    from sentinel_gw.policy.engine import PolicyEngine

    if not config.backends:
        report.add("WARN", "backends", "none configured: the gateway serves nothing", "add [[backends]]")
        return
    if policy is None:  # auth is broken (reported above); still try the backends
        relaxed = dataclasses.replace(config, auth=dataclasses.replace(config.auth, mode="none"))
        policy = PolicyEngine(relaxed, environ=environ)
    gateway = Gateway(config, environ=environ, policy=policy)
    gateway.set_upstream_capabilities({})  # no client: backends handshake at once
    started = time.monotonic()
    try:
        await gateway.start()
        backends = list(gateway.backends.values())

        async def probe(backend: Any) -> tuple[str, str, str]:
            cfg = backend.cfg
            if not cfg.enabled:
                return "OK", "disabled (enabled = false): not started", ""
            wait = min(timeout, cfg.startup_timeout_secs)
            if not await backend.wait_ready(wait):
                why = backend.last_error or f"not ready within {wait:g} s"
                state = getattr(backend.state, "value", backend.state)
                if "command not found" in why:
                    fix = "install it, or give its full path in `command`"
                elif "env_from" in why:
                    fix = "set the variable (see the secret checks above)"
                else:
                    fix = (
                        "run the backend's command by hand to see why, or `doctor --verbose` "
                        "(its stderr is logged)"
                    )
                return "FAIL", f"{state}: {why}", fix
            took = time.monotonic() - started
            caps = getattr(backend, "capabilities", {}) or {}
            info = getattr(backend, "server_info", {}) or {}
            server = f"{info.get('name', '?')} {info.get('version', '')}".strip()
            if "tools" not in caps:
                return "OK", f"ready in {took:.1f} s ({server}; no tools)", ""
            try:
                reply = await backend.request("tools/list", {}, timeout=min(timeout, cfg.timeout_secs))
            except Exception as exc:
                return "FAIL", f"started but tools/list failed: {exc}", "check the server's own logs"
            tools = reply.get("tools", []) if isinstance(reply, dict) else []
            return "OK", f"ready in {took:.1f} s ({server}), answers tools/list: {len(tools)} tools", ""

        results = await asyncio.gather(*(probe(b) for b in backends), return_exceptions=True)
        for backend, result in zip(backends, results, strict=True):
            if isinstance(result, BaseException):
                report.add("FAIL", f"backend {backend.name}", f"check crashed: {result!r}")
            else:
                report.add(result[0], f"backend {backend.name}", result[1], result[2])
    finally:
        await gateway.stop()


async def _doctor_async(
    report: Report, config: Any, environ: Mapping[str, str], policy: Any, timeout: float
) -> None:
    await _check_audit(report, config, timeout)
    await _check_backends(report, config, environ, policy, timeout)


def cmd_doctor(args: argparse.Namespace) -> int:
    import asyncio

    from sentinel_gw.config import (
        ConfigError,
        config_warnings,
        env_file_warnings,
        environment_for,
        find_config_path,
        load_config,
    )
    from sentinel_gw.logs import setup_logging

    verbose = bool(getattr(args, "verbose", False))
    timeout = float(getattr(args, "timeout", None) or 20.0)
    setup_logging("debug" if verbose else "critical")
    report = Report()
    env_file = getattr(args, "env_file", None)
    try:
        path = Path(find_config_path(getattr(args, "config", None), os.environ))
        print(f"sentinel-gw doctor: {path.resolve()}")
        environ = environment_for(path, env_file, os.environ)
        config = load_config(path, environ=environ)
    except ConfigError as exc:
        report.add("FAIL", "config", str(exc), f"`{invocation()} init` writes a working one")
        return _summary(report)
    enabled = sum(1 for b in config.backends if b.enabled)
    report.add(
        "OK",
        "config",
        f"valid; {len(config.backends)} backend{'s' if len(config.backends) != 1 else ''} "
        f"({enabled} enabled), {len(config.rbac.roles)} roles",
    )
    for warning in config_warnings(config):
        report.add("WARN", "config", warning)

    env_path: Path | None = Path(env_file) if env_file else path.resolve().parent / ENV_NAME
    if env_path is not None and env_path.is_file():
        problems = env_file_warnings(env_path)
        if problems:
            mode = env_path.stat().st_mode & 0o777
            report.add(
                "WARN",
                "env file",
                f"{env_path} is readable by group/others (mode {mode:04o}) but holds secrets",
                f"chmod 600 {shlex.quote(str(env_path))}",
            )
        else:
            report.add("OK", "env file", f"{env_path} (private)")
    else:
        report.add("SKIP", "env file", f"no {env_path}: secrets come from the environment only")
        env_path = None

    _check_secrets(report, config, environ, env_path)
    policy = _check_auth(report, config, environ)
    _check_kill_file(report, config, environ)
    try:
        asyncio.run(_doctor_async(report, config, environ, policy, timeout))
    except KeyboardInterrupt:
        return 130
    report.add(
        "SKIP",
        "ports",
        "the stdio front listens on no port; nothing to check until the HTTP/admin listeners exist",
    )
    return _summary(report)


def _summary(report: Report) -> int:
    fails, warns = report.count("FAIL"), report.count("WARN")
    verdict = "ready" if not fails else "not ready"
    plural = ("s" if fails != 1 else "", "s" if warns != 1 else "")
    print(f"doctor: {verdict}: {fails} problem{plural[0]}, {warns} warning{plural[1]}")
    return EXIT_FAIL if fails else EXIT_OK


# --------------------------------------------------------------------------------------------
# argparse wiring
