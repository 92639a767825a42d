"""The `sentinel-gw` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sentinel_gw import __version__

if TYPE_CHECKING:
    from sentinel_gw.backends.spawn import Child
    from sentinel_gw.config_schema import Config
    from sentinel_gw.early import EarlyLaunches

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2

DEFAULT_INIT_TTL = "90d"  # lifetime of the admin token `init` writes

DESCRIPTION = """\
sentinel-gw: an MCP security gateway. It stands between MCP clients (Claude Code, mcporter,
any MCP client) and the MCP servers they use, adding authentication, role-based access, rate
limits, a kill switch, argument validation, supervision of stdio servers and an audit trail.
"""

EPILOG = """\
Start here:
  sentinel-gw demo                         see the gateway work, no config needed
  sentinel-gw check --config sentinel.toml validate a config and print a summary
  sentinel-gw serve --config sentinel.toml run as a stdio MCP server (what clients start)
  sentinel-gw serve --no-stdio             run as an HTTP service only ([http] listen)
  sentinel-gw bridge https://gw/mcp        reach a remote gateway from a stdio-only client

The config file is found in this order: --config, $SENTINEL_CONFIG, ./sentinel.toml,
~/.config/sentinel-gw/sentinel.toml. Secrets are never in the config: it names environment
variables, which may also come from a .env file next to the config (or --env-file).
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        help="config file (default: $SENTINEL_CONFIG, ./sentinel.toml, ~/.config/sentinel-gw/sentinel.toml)",
    )
    p.add_argument(
        "--env-file",
        metavar="PATH",
        help="read environment variables from this file (default: .env next to the config)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel-gw",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sentinel-gw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        help="run the gateway as a stdio MCP server (and on HTTP when [http] listen is set)",
        description="Run the gateway on stdin/stdout for one MCP client and, when [http] listen is "
        "set, on Streamable HTTP for many. Logs go to stderr.",
    )
    _add_config_args(p)
    p.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override gateway.log_level"
    )
    p.add_argument(
        "--no-stdio",
        action="store_true",
        help="serve HTTP only (needs [http] listen; no SENTINEL_TOKEN); runs until SIGTERM/SIGINT",
    )

    p = sub.add_parser(
        "bridge",
        help="a stdio MCP server forwarding to a remote sentinel-gw over HTTP",
        description="Serve MCP on stdin/stdout and forward every message to the sentinel-gw at URL "
        "(Streamable HTTP) with the caller's own token. Logs go to stderr.",
    )
    p.add_argument("url", help="the gateway's MCP endpoint, e.g. https://gw.example.com/mcp")
    p.add_argument(
        "--token-env",
        default="SENTINEL_TOKEN",
        metavar="NAME",
        help="environment variable holding the bearer token (default SENTINEL_TOKEN)",
    )
    p.add_argument("--cafile", metavar="PATH", help="trust this CA bundle instead of the system store")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="default warning",
    )

    p = sub.add_parser(
        "check",
        help="validate a config file and print a summary",
        description="Validate the config (strictly) and the auth set-up; print backends, "
        "roles and limits. Exit 2 with file, key and reason on error.",
    )
    _add_config_args(p)

    p = sub.add_parser(
        "demo",
        help="run a scripted session through the gateway (no config needed)",
        description="Start the gateway on an embedded config in front of the demo MCP server "
        "shipped in the package, drive a client session through it and print what "
        "happened.",
    )
    p.add_argument("--verbose", action="store_true", help="also show the gateway's log lines")

    p = sub.add_parser(
        "token",
        help="mint a JWT signed with the configured secret",
        description="Mint an HS* token from the secret named by auth.secret_env.",
    )
    _add_config_args(p)
    p.add_argument("--sub", required=True, help="subject (who the token is for)")
    p.add_argument("--role", action="append", required=True, help="role (repeat for several)")
    p.add_argument("--ttl", default="8h", help="lifetime, e.g. 90s, 30m, 8h, 7d (default 8h)")
    p.add_argument("--tenant", help="optional tenant claim")

    p = sub.add_parser(
        "kill",
        help="disable a tool or backend on every gateway sharing the kill file",
        description="Edit the kill file (atomically): kill_switch.file, by default "
        "~/.local/state/sentinel-gw/killswitch.json: every gateway of this user, or every gateway "
        "naming the same file (trusted only if owned by the gateway's user or root). Running "
        "gateways notice within a second; "
        "callers get -32005 and the kill is audited.",
    )
    _add_config_args(p)
    p.add_argument("kind", nargs="?", choices=["tool", "backend"])
    p.add_argument("name", nargs="?", help="exposed tool name or backend name (globs allowed)")
    p.add_argument("--reason", default="killed by operator", help="shown to callers and in the audit trail")
    p.add_argument("--list", action="store_true", help="list what is killed")

    p = sub.add_parser(
        "revive",
        help="undo a kill",
        description="Remove a tool or backend from the kill file (atomically); running gateways "
        "serve it again within a second. Kills in the config's [kill_switch] stay until the config "
        "changes.",
    )
    _add_config_args(p)
    p.add_argument("kind", choices=["tool", "backend"])
    p.add_argument("name")

    p = sub.add_parser(
        "explain",
        help="show each policy decision for a role or token and a tool",
        description="Walk a call through the policy as the gateway would (kill switch, RBAC, rate "
        "limit, argument validation) and print each decision and why. Nothing is forwarded and "
        "no rate limit is consumed.",
    )
    _add_config_args(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--role", action="append", help="role (repeat for several)")
    who.add_argument("--token", help="a JWT (checked like a client's)")
    p.add_argument("--tool", required=True, help="exposed tool name")
    p.add_argument("--backend", help="backend owning the tool (default: the part before the prefix)")
    p.add_argument("--args", default="{}", help="arguments as JSON (rate limits are peeked, not consumed)")

    p = sub.add_parser(
        "audit",
        help="read and verify the audit trail",
        description="Read the audit trail from the configured sink (sqlite by default).",
    )
    _add_config_args(p)
    p.add_argument("--sink", help="which configured sink to read (default: the first readable one)")
    audit_sub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    a = audit_sub.add_parser("tail", help="the last N events")
    a.add_argument("-n", type=int, default=20)
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a = audit_sub.add_parser("query", help="events matching filters (newest last)")
    a.add_argument("--subject")
    a.add_argument("--tool", help="glob over exposed tool names")
    a.add_argument("--status", help="success, error, timeout, denied, rate_limited, killed, ...")
    a.add_argument("--since", help="15m, 2h, 7d or an ISO 8601 time")
    a.add_argument("--limit", type=int, default=100)
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    audit_sub.add_parser("verify", help="check the hash chain (detects modified, deleted or moved rows)")
    a = audit_sub.add_parser("export", help="every event as JSON lines")
    a.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")

    p = sub.add_parser(
        "init",
        help="write sentinel.toml and .env (secret + admin token) to start from",
        description="Write sentinel.toml (the shipped example, only the demo backend enabled) and "
        ".env (mode 0600) with a random signing secret and an admin token. Existing files are "
        "never replaced without --force.",
    )
    p.add_argument("--dir", default=".", metavar="D", help="where to write them (default: current directory)")
    p.add_argument("--force", action="store_true", help="replace existing files (old tokens stop working)")
    p.add_argument("--subject", default="admin", help="subject of the admin token (default: admin)")
    p.add_argument(
        "--ttl", default=DEFAULT_INIT_TTL, help=f"admin token lifetime (default {DEFAULT_INIT_TTL})"
    )

    p = sub.add_parser(
        "doctor",
        help="check a set-up: config, secrets, auth, backends, audit, kill file",
        description="Check everything the gateway needs, one line per check (OK, WARN, FAIL, "
        "SKIP) with what to fix. Starts each backend and lists its tools. Never prints secrets. "
        "Exit 1 if any check fails.",
    )
    _add_config_args(p)
    p.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to wait for each backend (default 20)"
    )
    p.add_argument("--verbose", action="store_true", help="also show the gateway's log lines")
    return parser


def _auth_setup_problem(where: str, exc: Exception) -> str:
    """`where: auth...: reason`: most auth set-up errors already name their key (auth.x: ...)."""
    text = str(exc)
    return f"{where}: {text}" if text.startswith("auth") else f"{where}: auth: {text}"


def _fail(message: str, code: int = EXIT_CONFIG) -> int:
    print(f"sentinel-gw: {message}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sentinel_gw.config import environment_for, find_config_path, load_config

    path = find_config_path(args.config, os.environ)
    environ = environment_for(path, args.env_file, os.environ)
    return path, environ, load_config(path, environ=environ)


def cmd_serve(args: argparse.Namespace) -> int:
    from sentinel_gw.config import ConfigError

    try:
        path, environ, config = _load(args)
    except ConfigError as exc:
        return _fail(str(exc))
    admin_token = None
    if config.admin.listen and config.admin.token_env:
        admin_token = environ.get(config.admin.token_env, "")
        if not admin_token:
            # Fail closed: a configured admin token that is missing must not mean "no auth".
            return _fail(
                f"{config.source}: admin.token_env: environment variable {config.admin.token_env} is unset"
            )
    if args.no_stdio and not config.http.listen:
        return _fail(f"{config.source}: --no-stdio needs [http] listen")
    # Spawn, then authenticate: the stdio backends boot (an SDK server takes half a second) while
    # the rest of the gateway starts (policy and keys, auth, asyncio and its imports), so the first
    # tools/list is ready about when the slowest backend is. A bad token costs one spawn per
    # backend, killed and reaped before we exit; no backend receives a byte before the client is
    # authenticated (their handshake waits for the client's initialize, read after auth). The
    # stdio token is no boundary against the OS user who starts us: that user can read the same
    # env file and run the backends directly. See docs/SECURITY.md.
    prespawned = _prespawn(config, environ, args.early_launches)
    try:
        return _serve_with(args, path, config, environ, admin_token=admin_token, prespawned=prespawned)
    finally:
        # Whatever the gateway did not take over (it failed to start before it did): no orphan.
        from sentinel_gw.backends.process import discard

        discard(prespawned.values())
        prespawned.clear()


def _prespawn(config: Config, environ: Mapping[str, str], early: EarlyLaunches | None) -> dict[str, Child]:
    """Launch every enabled stdio backend now, before the event loop exists (see cmd_serve),
    adopting the child `early` launched for it when it was launched exactly so (early.py). One
    that cannot be launched is left out: its backend reports the error when it starts, as always."""
    from sentinel_gw.backends.process import SpawnError, launch, launch_spec

    launched: dict[str, Child] = {}
    for cfg in config.backends:
        if cfg.type != "stdio" or not cfg.enabled:
            continue
        try:
            spec = launch_spec(cfg, environ, config.base_dir)
            adopted = early.take(spec) if early is not None else None
            launched[cfg.name] = adopted or launch(spec)
        except SpawnError:
            continue
    if early is not None:
        early.discard()  # launched for a backend the validated config does not start
    return launched


def _serve_with(  # type: ignore[no-untyped-def]
    args, path, config, environ, *, admin_token, prespawned: dict[str, Child]
) -> int:
    import logging

    from sentinel_gw.logs import setup_logging
    from sentinel_gw.policy.auth import AuthError, AuthSetupError
    from sentinel_gw.policy.engine import PolicyEngine

    setup_logging(args.log_level or config.gateway.log_level, config.gateway.log_format)
    log = logging.getLogger("sentinel_gw.serve")
    for name, popen in prespawned.items():
        log.debug("backend %s: launched before authentication (pid %d)", name, popen.pid)
    waited = getattr(args.early_launches, "waited", 0.0)
    if waited:
        log.debug("start-up stood back %.0f ms while the booting backends kept every CPU busy", waited * 1e3)
    try:
        policy = PolicyEngine(config, environ=environ)
        # HTTP callers bring their own tokens, so --no-stdio needs none.
        identity = None if args.no_stdio else policy.stdio_identity()
    except (AuthSetupError, ValueError) as exc:
        return _fail(_auth_setup_problem(config.source, exc))
    except AuthError as exc:
        return _fail(f"authentication failed: {exc}")
    from sentinel_gw import accel

    return accel.run(
        _serve(
            args,
            path,
            config,
            environ,
            policy=policy,
            identity=identity,
            admin_token=admin_token,
            prespawned=prespawned,
        )
    )


async def _serve(args, path, config, environ, *, policy, identity, admin_token, prespawned) -> int:  # type: ignore[no-untyped-def]
    import asyncio
    import logging
    import ssl

    from sentinel_gw.fronts.stdio import serve_stdio
    from sentinel_gw.gateway import Gateway
    from sentinel_gw.lifecycle import Shutdown
    from sentinel_gw.logs import setup_logging
    from sentinel_gw.ops.reload import Reloader, install_sighup

    log = logging.getLogger("sentinel_gw.serve")
    log.info("accelerators: %s", _accelerators())
    gateway = Gateway(config, environ=environ, policy=policy, prespawned=prespawned)
    audit = recorder = None
    if config.audit.sinks:
        from sentinel_gw.ops.audit import AuditError, AuditLog
        from sentinel_gw.ops.plugins import PluginError
        from sentinel_gw.ops.recorder import AuditRecorder

        try:
            audit = AuditLog.from_config(config, environ=environ)
        except (AuditError, PluginError) as exc:
            return _fail(f"{config.source}: audit: {exc}")
        recorder = AuditRecorder(audit, config.audit)
        gateway.observers.append(recorder)

    def applied() -> None:
        setup_logging(args.log_level or gateway.config.gateway.log_level, gateway.config.gateway.log_format)
        if recorder is not None:
            recorder.cfg = gateway.config.audit  # redaction policy reloads; sinks need a restart

    admin = None
    if config.admin.listen:  # listen addresses are not reloaded: they need a restart
        from sentinel_gw.ops.admin import AdminServer
        from sentinel_gw.ops.metrics import create_metrics

        metrics = create_metrics(config.metrics.enabled, gateway=gateway, audit=audit)
        gateway.observers.append(metrics)
        admin = AdminServer(
            config.admin.listen,
            token=admin_token,
            gateway=gateway,
            metrics=metrics,
            audit=audit,
            required_backends=config.admin.required_backends,
        )

    http = None
    if config.http.listen:  # like admin: the listen address needs a restart to change
        from sentinel_gw.fronts.http import HttpFront

        http = HttpFront(gateway)

    reloader = Reloader(gateway, path, args.env_file, os.environ, on_applied=applied)
    shutdown = Shutdown()
    shutdown.on_force(gateway.kill_backends)
    if http is not None:
        shutdown.on_force(http.cancel_calls)
    # Handlers stay installed until every backend is gone: a SIGTERM during teardown escalates
    # instead of killing us with children still running.
    shutdown.install()
    install_sighup(reloader)
    if args.no_stdio:
        # No single client to take capabilities from: many HTTP clients share the backends, so
        # declare nothing a backend could ask for (modern backends still get each caller's own
        # capabilities per request). Backends start at once and /ready can become true.
        gateway.set_upstream_capabilities({})
    try:
        # Events emitted before the sinks are open are held, so opening never delays serving.
        await asyncio.gather(gateway.start(), audit.open() if audit else asyncio.sleep(0))
        # Here, while the backends start: a full collection later would stall calls in flight.
        _tune_gc()
        if admin is not None:
            await admin.start()  # False (logged) when the port is taken: MCP service goes on
        if http is not None:
            try:
                await http.start()
            except (OSError, ssl.SSLError) as exc:
                if args.no_stdio:
                    return _fail(f"cannot serve HTTP on {config.http.listen}: {exc}", EXIT_ERROR)
                # Several stdio clients may start gateways sharing one config: stdio goes on.
                log.warning("HTTP front not started on %s (%s); serving stdio only", config.http.listen, exc)
                http = None
        reloader.start()
        if args.no_stdio:
            await shutdown.requested.wait()
            return EXIT_OK
        return await serve_stdio(gateway, identity, shutdown=shutdown)
    finally:
        reloader.stop()
        if http is not None:
            grace = 0.0 if shutdown.forced.is_set() else gateway.config.gateway.shutdown_grace_secs
            await http.stop(grace)
        if admin is not None:
            await admin.stop()
        await gateway.stop(force=shutdown.forced.is_set())
        if audit is not None:
            await audit.close()  # flushed within audit.shutdown_deadline_secs; the rest is spooled
        shutdown.uninstall()


def _accelerators() -> str:
    """What this process runs on: "json orjson, event loop uvloop" or the standard library's."""
    import asyncio

    from sentinel_gw.protocol import jsonrpc

    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return f"json {jsonrpc.json_backend()}, event loop {loop}"


def _tune_gc() -> None:
    """Startup objects (config, catalog, modules) never die: freeze them out of the collector, and
    collect young objects less often, so a request is rarely stopped for a collection."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def cmd_check(args: argparse.Namespace) -> int:
    from sentinel_gw.config import ConfigError, summarize
    from sentinel_gw.policy.auth import AuthSetupError
    from sentinel_gw.policy.engine import PolicyEngine

    try:
        path, environ, config = _load(args)
        PolicyEngine(config, environ=environ)
    except ConfigError as exc:
        return _fail(str(exc))
    except (AuthSetupError, ValueError) as exc:
        return _fail(_auth_setup_problem(args.config or "config", exc))
    print(f"{path}: OK")
    print(summarize(config))
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from sentinel_gw.config import ConfigError
    from sentinel_gw.policy.auth import mint_token, parse_duration

    try:
        _, environ, config = _load(args)
    except ConfigError as exc:
        return _fail(str(exc))
    auth = config.auth
    hmac_algs = [a for a in auth.algorithms if a.startswith("HS")]
    if not hmac_algs:
        return _fail(
            "token minting needs an HS* algorithm in auth.algorithms (asymmetric keys are minted "
            "by your identity provider)"
        )
    secret = environ.get(auth.secret_env, "")
    if not secret:
        return _fail(f"the signing secret is not set: export {auth.secret_env} (or put it in .env)")
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        return _fail(str(exc))
    print(
        mint_token(
            secret,
            subject=args.sub,
            roles=args.role,
            ttl_secs=ttl,
            issuer=auth.issuer,
            audience=auth.audience,
            algorithm=hmac_algs[0],
            tenant=args.tenant,
            roles_claim=auth.roles_claim,
        )
    )
    return EXIT_OK


def _kill_path(args: argparse.Namespace) -> Path:
    from sentinel_gw.config import ConfigError
    from sentinel_gw.policy.killswitch import default_kill_file_path

    try:
        _, environ, config = _load(args)
    except ConfigError:
        if args.config:
            raise
        return default_kill_file_path(os.environ)
    return Path(config.kill_switch.file) if config.kill_switch.file else default_kill_file_path(environ)


def cmd_kill(args: argparse.Namespace) -> int:
    from sentinel_gw.config import ConfigError
    from sentinel_gw.policy.killswitch import kill, list_kills

    try:
        path = _kill_path(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.list or not args.kind:
        state = list_kills(path)
        print(f"kill file: {path}")
        for kind, table in (("tool", state.tools), ("backend", state.backends)):
            for name, info in sorted(table.items()):
                who = f"({info.get('by', '?')}, {info.get('at', '?')})"
                print(f"  {kind:7} {name:30} {info.get('reason', '')}  {who}")
        if not state.tools and not state.backends:
            print("  nothing is killed")
        return EXIT_OK
    if not args.name:
        return _fail("kill: name a tool or backend")
    by = os.environ.get("USER") or str(os.getuid())
    kill(path, args.kind, args.name, args.reason, by)
    print(f"killed {args.kind} {args.name!r} ({args.reason}); gateways on this host apply it within a second")
    return EXIT_OK


def cmd_revive(args: argparse.Namespace) -> int:
    from sentinel_gw.config import ConfigError
    from sentinel_gw.policy.killswitch import revive

    try:
        path = _kill_path(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if revive(path, args.kind, args.name):
        print(f"revived {args.kind} {args.name!r}")
        return EXIT_OK
    return _fail(f"{args.kind} {args.name!r} was not killed in {path}", EXIT_ERROR)


def cmd_explain(args: argparse.Namespace) -> int:
    from sentinel_gw.config import ConfigError
    from sentinel_gw.explain import explain

    try:
        _, environ, config = _load(args)
        arguments = json.loads(args.args)
    except ConfigError as exc:
        return _fail(str(exc))
    except json.JSONDecodeError as exc:
        return _fail(f"--args is not valid JSON: {exc}")
    lines, allowed = explain(
        config,
        environ,
        roles=args.role,
        token=args.token,
        tool=args.tool,
        backend=args.backend,
        arguments=arguments,
    )
    print("\n".join(lines))
    return EXIT_OK if allowed else EXIT_ERROR


def cmd_audit(args: argparse.Namespace) -> int:
    from sentinel_gw.config import ConfigError
    from sentinel_gw.ops import audit
    from sentinel_gw.ops.plugins import PluginError

    try:
        _, environ, config = _load(args)
        sink = audit.open_sink_for_cli(config, name=args.sink, environ=environ)
    except ConfigError as exc:
        return _fail(str(exc))
    except (audit.AuditError, PluginError) as exc:
        return _fail(f"audit: {exc}", EXIT_ERROR)
    action = args.audit_command
    try:
        if action in ("tail", "query"):
            if action == "tail":
                events = audit.tail(sink, args.n)
            else:
                events = audit.query(
                    sink,
                    subject=args.subject,
                    tool=args.tool,
                    status=args.status,
                    since=args.since,
                    limit=args.limit,
                )
            for event in events:
                line = (
                    json.dumps(event.to_dict(), ensure_ascii=False)
                    if args.json
                    else audit.format_event(event)
                )
                print(line)
            return EXIT_OK
        if action == "export":
            count = audit.export_jsonl(sink, sys.stdout if args.output == "-" else args.output)
            print(f"exported {count} events", file=sys.stderr)
            return EXIT_OK
        result = audit.verify(sink)
        if result.ok:
            extra = f"; {result.starts} chain starts" if result.starts > 1 else ""
            print(f"audit chain OK: {result.checked} events verified{extra}")
            return EXIT_OK
        where = f"event {result.first_bad_id} (position {result.position})"
        print(f"audit chain BROKEN at {where}: {result.reason}")
        return EXIT_ERROR
    except ValueError as exc:
        return _fail(f"audit {action}: {exc}")


def cmd_bridge(args: argparse.Namespace) -> int:
    import asyncio

    from sentinel_gw.fronts.bridge import run_bridge
    from sentinel_gw.logs import setup_logging

    setup_logging(args.log_level)
    token = os.environ.get(args.token_env, "").strip() or None
    try:
        return asyncio.run(run_bridge(args.url, token=token, cafile=args.cafile))
    except ValueError as exc:
        return _fail(f"bridge: {exc}")


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from sentinel_gw.demo import run_demo

    return asyncio.run(run_demo(verbose=args.verbose))


def cmd_init(args: argparse.Namespace) -> int:
    from sentinel_gw.setup_cmds import cmd_init as init

    return init(args)


def cmd_doctor(args: argparse.Namespace) -> int:
    from sentinel_gw.setup_cmds import cmd_doctor as doctor

    return doctor(args)


COMMANDS = {
    "serve": cmd_serve,
    "bridge": cmd_bridge,
    "check": cmd_check,
    "demo": cmd_demo,
    "token": cmd_token,
    "kill": cmd_kill,
    "revive": cmd_revive,
    "explain": cmd_explain,
    "audit": cmd_audit,
    "init": cmd_init,
    "doctor": cmd_doctor,
}


def main(argv: Sequence[str] | None = None, *, early: EarlyLaunches | None = None) -> int:
    """The command line. `early`: the stdio backends `serve` launched before this module was
    imported (see __main__.py and early.py); whatever `serve` does not adopt, the caller kills."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo-server"]:
        # Internal: how the demo starts its backend, so it also works from the zipapp.
        from sentinel_gw.demo_server import main as demo_main

        return demo_main(argv[1:])
    if argv == ["--version"]:
        # Answered before the parser (and the modules its subcommands import) is built.
        print(f"sentinel-gw {__version__}")
        return EXIT_OK
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    if args.command == "serve":
        args.early_launches = early
    handler = COMMANDS[args.command]
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        return 130
