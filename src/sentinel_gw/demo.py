"""`sentinel-gw demo`: the real gateway, on an embedded config, driven by a scripted client.

Each gateway below is a real `sentinel-gw serve` process started exactly as Claude Code would
start it (stdio, token in the environment), in front of two copies of the demo MCP server that
ships inside the package. Nothing is simulated; the output is what came back over the wire.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from sentinel_gw.policy.auth import mint_token
from sentinel_gw.policy.killswitch import kill
from sentinel_gw.stdio_client import RpcError, StdioClient, self_command

SECRET_ENV = "SENTINEL_DEMO_SECRET"  # noqa: S105 - a variable name, not a secret


def demo_config(tmp: Path) -> str:
    """The embedded config: two demo backends, three roles, a rate limit, a private kill file."""
    me = self_command()
    backend_args = [*me[1:], "demo-server"]
    return textwrap.dedent(f"""\
        [gateway]
        name = "sentinel-demo"
        instructions = "Demo gateway: two copies of the demo server behind one policy."

        [auth]
        mode = "jwt"
        algorithms = ["HS256"]
        secret_env = "{SECRET_ENV}"
        issuer = "sentinel-demo"
        audience = "sentinel-demo"

        [rbac.roles.viewer]
        permissions = ["tools.list", "resources.list", "prompts.list"]

        [rbac.roles.developer]
        inherits = ["viewer"]
        permissions = ["tools.call", "resources.read", "prompts.get", "completion"]
        deny_tools = ["*delete*"]

        [rate_limits]
        algorithm = "sliding_window"
        [rate_limits.tools.add]
        requests = 3
        window_secs = 60

        [kill_switch]
        file = {json.dumps(str(tmp / "killswitch.json"))}

        [[backends]]
        name = "demo"
        type = "stdio"
        command = {json.dumps(me[0])}
        args = {json.dumps([*backend_args, "--name", "demo"])}
        inherit_env = ["PYTHONPATH"]

        [[backends]]
        name = "notes"
        type = "stdio"
        prefix = "notes"
        command = {json.dumps(me[0])}
        args = {json.dumps([*backend_args, "--name", "notes"])}
        inherit_env = ["PYTHONPATH"]
        """)


class Printer:
    def __init__(self) -> None:
        self.step = 0

    def section(self, title: str) -> None:
        self.step += 1
        print(f"\n== {self.step}. {title}")

    @staticmethod
    def sent(text: str) -> None:
        print(f"  -> {text}")

    @staticmethod
    def got(text: str) -> None:
        print(f"  <- {text}")

    @staticmethod
    def note(text: str) -> None:
        print(f"     {text}")


def _text(result: dict[str, Any]) -> str:
    parts = [c.get("text", "") for c in result.get("content", []) if isinstance(c, dict)]
    return " ".join(p for p in parts if p)[:160]


def _error(exc: RpcError) -> str:
    data = f" data={json.dumps(exc.data)}" if exc.data is not None else ""
    return f"error {exc.code}: {exc.message}{data}"


class Demo:
    def __init__(self, tmp: Path, verbose: bool) -> None:
        self.tmp = tmp
        self.verbose = verbose
        self.secret = secrets.token_urlsafe(48)
        self.config = tmp / "sentinel.toml"
        self.config.write_text(demo_config(tmp))
        self.p = Printer()
        self.failures = 0

    def token(self, subject: str, roles: list[str], ttl: float = 3600, now: float | None = None) -> str:
        return mint_token(
            self.secret,
            subject=subject,
            roles=roles,
            ttl_secs=ttl,
            issuer="sentinel-demo",
            audience="sentinel-demo",
            now=now,
        )

    def env(self, token: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "TMPDIR")}
        env[SECRET_ENV] = self.secret
        env["XDG_STATE_HOME"] = str(self.tmp / "state")
        if token is not None:
            env["SENTINEL_TOKEN"] = token
        return env

    async def gateway(self, token: str | None) -> StdioClient:
        client = StdioClient(
            [*self_command(), "serve", "--config", str(self.config)],
            env=self.env(token),
            stderr=None if self.verbose else asyncio.subprocess.DEVNULL,
        )
        await client.start()
        return client

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures += 1
            print(f"  !! unexpected: {what}")

    async def run(self) -> int:
        p = self.p
        print("sentinel-gw demo: a real gateway process, real MCP servers, a scripted client.")
        print(f"config: {self.config} (embedded; two backends: 'demo' and 'notes' with prefix 'notes')")

        p.section("A developer connects (JWT in SENTINEL_TOKEN, verified before any backend is used)")
        dev = await self.gateway(self.token("alice", ["developer"]))
        try:
            await self.developer_session(dev)
        finally:
            await dev.close()

        p.section("A viewer connects: sees tools, may not call them")
        viewer = await self.gateway(self.token("bob", ["viewer"]))
        try:
            await viewer.initialize(client_name="demo-viewer")
            tools = (await viewer.request("tools/list"))["tools"]
            p.got(f"tools/list: {len(tools)} tools visible")
            try:
                await viewer.request("tools/call", {"name": "word_count", "arguments": {"text": "hi"}})
                self.expect(False, "viewer call allowed")
            except RpcError as exc:
                p.sent("tools/call word_count")
                p.got(_error(exc))
                self.expect(exc.code == -32003, "viewer refused with -32003")
        finally:
            await viewer.close()

        p.section("Bad tokens never reach a backend")
        for label, token in (
            ("expired token", self.token("carol", ["developer"], ttl=600, now=time.time() - 3600)),
            (
                "token signed with another secret",
                mint_token(
                    "x" * 48,
                    subject="eve",
                    roles=["admin"],
                    ttl_secs=60,
                    issuer="sentinel-demo",
                    audience="sentinel-demo",
                ),
            ),
            ("no token at all", None),
        ):
            proc = await asyncio.create_subprocess_exec(
                *self_command(),
                "serve",
                "--config",
                str(self.config),
                env=self.env(token),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            p.got(f"{label}: exit {proc.returncode}: {err.decode().strip().splitlines()[-1]}")
            self.expect(proc.returncode == 2, f"{label} refused at start")

        p.section("The audit trail: every call and refusal above, hash-chained (sqlite, next to the config)")
        self.show_audit()

        print()
        if self.failures:
            print(f"demo finished with {self.failures} unexpected result(s)")
            return 1
        print("demo finished: every step behaved as expected.")
        return 0

    def show_audit(self) -> None:
        from sentinel_gw.config import load_config
        from sentinel_gw.ops import audit

        sink = audit.open_sink_for_cli(load_config(self.config, environ=self.env(None)))
        events = [e for e in audit.tail(sink, 200) if e.kind != "gateway"]
        for event in events:
            args = f" args={json.dumps(event.args)}" if event.args else ""
            print(f"     {event.subject:6} {event.method:14} {event.tool or '':24} {event.status:12}{args}")
        result = audit.verify(sink)
        p = self.p
        p.got(
            f"sentinel-gw audit verify: {'OK' if result.ok else 'BROKEN'}, {result.checked} events "
            f"(including gateway events: startup, backends started, kill switch change, shutdown)"
        )
        self.expect(result.ok and len(events) >= 10, "audit trail recorded and verified")

    async def developer_session(self, dev: StdioClient) -> None:
        p = self.p
        init = await dev.initialize(capabilities={}, client_name="demo-client")
        p.sent("initialize (protocol 2025-11-25)")
        info = init["serverInfo"]
        p.got(
            f"{info['name']} {info['version']}, protocol {init['protocolVersion']}, "
            f"capabilities {sorted(init['capabilities'])}"
        )

        p.section("Aggregated tools from both backends (names prefixed per backend where configured)")
        tools = (await dev.request("tools/list"))["tools"]
        names = [t["name"] for t in tools]
        p.got(f"tools/list: {', '.join(names)}")
        self.expect("echo" in names and "notes_echo" in names, "tools of both backends listed")
        self.expect(not any("delete" in n for n in names), "denied tools hidden")

        p.section("Calls are routed to the right backend under the backend's own tool name")
        for name, args in (
            ("echo", {"message": "hello through the gateway"}),
            ("notes_add", {"a": 2, "b": 40}),
        ):
            res = await dev.request("tools/call", {"name": name, "arguments": args})
            p.sent(f"tools/call {name} {json.dumps(args)}")
            p.got(_text(res))

        p.section("Progress notifications are relayed with the client's own token")
        seen: list[Any] = []
        dev.on_notification = lambda m: (
            seen.append(m["params"].get("progress")) if m.get("method") == "notifications/progress" else None
        )
        res = await dev.request(
            "tools/call",
            {"name": "countdown", "arguments": {"seconds": 3}, "_meta": {"progressToken": "demo-progress"}},
        )
        p.got(f"{len(seen)} progress notifications {seen}, then: {_text(res)}")

        p.section("Resources, prompts and completions pass through too")
        resources = (await dev.request("resources/list"))["resources"]
        p.got(f"resources/list: {', '.join(r['uri'] for r in resources)}")
        if resources:
            read = await dev.request("resources/read", {"uri": resources[0]["uri"]})
            text = read["contents"][0].get("text", "")
            p.got(f"resources/read {resources[0]['uri']}: {text[:70]!r}...")
        prompts = (await dev.request("prompts/list"))["prompts"]
        p.got(f"prompts/list: {', '.join(x['name'] for x in prompts)}")
        got = await dev.request("prompts/get", {"name": "summarize", "arguments": {"text": "MCP gateways"}})
        p.got(f"prompts/get summarize: {len(got['messages'])} message(s)")

        p.section("Refusals, each with a stable code and a reason")
        for label, params in (
            ("unknown or hidden tool", {"name": "delete_everything", "arguments": {}}),
            ("invalid arguments", {"name": "add", "arguments": {"a": "two", "b": 2}}),
        ):
            try:
                await dev.request("tools/call", params)
                self.expect(False, f"{label} allowed")
            except RpcError as exc:
                p.sent(f"tools/call {params['name']} {json.dumps(params['arguments'])}  ({label})")
                p.got(_error(exc))
        p.note("rate limit: tools.add allows 3 calls per 60 s (true sliding window)")
        for i in range(4):
            try:
                await dev.request("tools/call", {"name": "add", "arguments": {"a": i, "b": 1}})
                p.got(f"add #{i + 1}: ok")
            except RpcError as exc:
                p.got(f"add #{i + 1}: {_error(exc)}")
                self.expect(exc.code == -32004 and i == 3, "4th add rate limited")

        p.section("Kill switch: an operator disables a tool on every gateway of the host")
        changed = asyncio.Event()
        dev.on_notification = lambda m: (
            changed.set() if m.get("method") == "notifications/tools/list_changed" else None
        )
        kill(self.tmp / "killswitch.json", "tool", "echo", "incident #42", "demo-operator")
        p.sent("sentinel-gw kill tool echo --reason 'incident #42'")
        try:
            await asyncio.wait_for(changed.wait(), 5)
            p.got("notifications/tools/list_changed")
        except asyncio.TimeoutError:
            self.expect(False, "list_changed after kill")
        names = [t["name"] for t in (await dev.request("tools/list"))["tools"]]
        p.got(f"tools/list no longer has echo: {'echo' not in names}")
        try:
            await dev.request("tools/call", {"name": "echo", "arguments": {"message": "x"}})
            self.expect(False, "killed tool callable")
        except RpcError as exc:
            p.got(_error(exc))


async def run_demo(verbose: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="sentinel-demo-") as tmp:
        try:
            return await Demo(Path(tmp), verbose).run()
        except (RpcError, ConnectionError, asyncio.TimeoutError) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
