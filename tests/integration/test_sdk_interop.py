"""The official MCP Python SDK (`mcp` 2.x) as the client, through a real gateway process, for
every method the gateway relays."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.conftest import GATEWAY, backend, gateway_env, make_token


def params(config: Path, tmp_path: Path, token: str | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=GATEWAY[0],
        args=[*GATEWAY[1:], "serve", "--config", str(config)],
        env=gateway_env(tmp_path, token),
    )


async def test_every_method_through_the_gateway(make_config, tmp_path):
    cfg = make_config([backend("a"), backend("b", prefix="b")])
    logs: list[types.LoggingMessageNotificationParams] = []
    progress: list[float] = []
    sampled: list[str] = []

    async def on_log(p: types.LoggingMessageNotificationParams) -> None:
        logs.append(p)

    async def on_sampling(ctx, p: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        sampled.append(p.messages[0].content.text)  # type: ignore[union-attr]
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="from sdk"), model="test-model"
        )

    async def on_roots(ctx) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///project", name="project")])

    async def on_elicit(ctx, p) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Ada", "age": 36})

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(
        params(cfg, tmp_path),
        mode="legacy",
        logging_callback=on_log,
        sampling_callback=on_sampling,
        list_roots_callback=on_roots,
        elicitation_callback=on_elicit,
    ) as client:
        assert client.server_info is not None and client.server_info.name == "sentinel-gw"
        tools = (await client.list_tools()).tools
        names = {t.name for t in tools}
        assert {"echo", "b_echo", "slow", "b_slow"} <= names

        res = await client.call_tool("b_echo", {"message": "through"})
        assert res.content[0].text == "through"  # type: ignore[union-attr]
        res = await client.call_tool("add", {"a": 2, "b": 3})
        assert "5" in res.content[0].text  # type: ignore[union-attr]
        res = await client.call_tool("fail", {})
        assert res.is_error

        res = await client.call_tool("slow", {"seconds": 0.3}, progress_callback=on_progress)
        assert progress and progress == sorted(progress)

        resources = (await client.list_resources()).resources
        uris = {str(r.uri) for r in resources}
        assert {"test://a/hello", "test://b/hello"} <= uris
        read = await client.read_resource("test://b/hello")
        assert read.contents[0].text  # type: ignore[union-attr]
        blob = await client.read_resource("test://a/blob")
        assert blob.contents[0].blob  # type: ignore[union-attr]
        templates = (await client.list_resource_templates()).resource_templates
        assert any(t.uri_template == "test://a/items/{id}" for t in templates)
        item = await client.read_resource("test://a/items/7")
        assert "7" in item.contents[0].text  # type: ignore[union-attr]
        with pytest.raises(MCPError):
            await client.read_resource("test://nobody/x")

        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {"greet", "b_greet"} <= prompts
        got = await client.get_prompt("b_greet", {"name": "Grace"})
        assert "Grace" in got.messages[0].content.text  # type: ignore[union-attr]

        comp = await client.complete(
            types.PromptReference(type="ref/prompt", name="b_greet"), {"name": "name", "value": "a"}
        )
        assert comp.completion.values == ["alice"]
        comp = await client.complete(
            types.ResourceTemplateReference(type="ref/resource", uri="test://a/items/{id}"),
            {"name": "id", "value": "4"},
        )
        assert comp.completion.values == ["42"]

        await client.set_logging_level("warning")
        await client.call_tool("log", {})
        await client.subscribe_resource("test://a/hello")
        await client.call_tool("touch", {"uri": "test://a/hello"})
        await client.unsubscribe_resource("test://a/hello")
        assert await client.send_ping() is not None

        res = await client.call_tool("sample", {})
        assert "from sdk" in res.content[0].text  # type: ignore[union-attr]
        res = await client.call_tool("roots", {})
        assert "file:///project" in res.content[0].text  # type: ignore[union-attr]
        res = await client.call_tool("elicit", {})
        assert "accept" in res.content[0].text  # type: ignore[union-attr]
        assert sampled

        for _ in range(50):
            if logs:
                break
            await asyncio.sleep(0.05)
        assert logs and all(
            entry.level in ("warning", "error", "critical", "alert", "emergency") for entry in logs
        )


async def test_sdk_sees_policy(make_config, tmp_path):
    extra = """
[auth]
mode = "jwt"
[rbac.roles.viewer]
permissions = ["tools.list"]
[rbac.roles.dev]
permissions = ["tools.call"]
deny_tools = ["crash", "a:fail"]
[rate_limits]
algorithm = "sliding_window"
[rate_limits.tools.add]
requests = 2
window_secs = 60
"""
    cfg = make_config([backend("a")], extra=extra, auth="jwt")
    async with Client(params(cfg, tmp_path, make_token("vera", ["viewer"])), mode="legacy") as viewer:
        names = {t.name for t in (await viewer.list_tools()).tools}
        assert "echo" in names
        with pytest.raises(MCPError) as err:
            await viewer.call_tool("echo", {"message": "x"})
        assert err.value.error.code == -32003

    async with Client(params(cfg, tmp_path, make_token("dan", ["dev"])), mode="legacy") as dev:
        names = {t.name for t in (await dev.list_tools()).tools}
        assert "echo" in names and "crash" not in names and "fail" not in names
        with pytest.raises(MCPError) as err:
            await dev.call_tool("crash", {})
        assert err.value.error.code == -32602 and "Unknown tool" in err.value.error.message
        for _ in range(2):
            await dev.call_tool("add", {"a": 1, "b": 1})
        with pytest.raises(MCPError) as err:
            await dev.call_tool("add", {"a": 1, "b": 1})
        assert err.value.error.code == -32004
        data = err.value.error.data
        assert data["retry_after_ms"] > 0 and data["retryAfter"] >= 1
        with pytest.raises(MCPError) as err:
            await dev.call_tool("add", {"a": "x", "b": 1})
        assert err.value.error.code in (-32602, -32004)


async def test_kill_file_hides_tool_within_a_second(make_config, tmp_path):
    from sentinel_gw.policy.killswitch import kill, revive

    kill_file = tmp_path / "kill.json"
    cfg = make_config([backend("a")])
    changed = asyncio.Event()

    async def on_message(message) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with Client(params(cfg, tmp_path), mode="legacy", message_handler=on_message) as client:
        assert "echo" in {t.name for t in (await client.list_tools()).tools}
        changed.clear()
        kill(kill_file, "tool", "echo", "incident", "test")
        await asyncio.wait_for(changed.wait(), 2.0)  # polled every 250 ms; 2 s absorbs a loaded CI box
        assert "echo" not in {t.name for t in (await client.list_tools()).tools}
        with pytest.raises(MCPError) as err:
            await client.call_tool("echo", {"message": "x"})
        assert err.value.error.code == -32005 and "incident" in err.value.error.message
        changed.clear()
        revive(kill_file, "tool", "echo")
        await asyncio.wait_for(changed.wait(), 2.0)
        assert "echo" in {t.name for t in (await client.list_tools()).tools}


def test_sdk_is_a_test_dependency_only():
    # The core must not import the SDK or an extra it did not ask for (pyjwt itself loads
    # `cryptography` when the optional `crypto` extra is installed; that is allowed).
    import subprocess

    code = (
        "import sys, sentinel_gw.gateway, sentinel_gw.cli, sentinel_gw.fronts.stdio; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types', 'pydantic', 'anyio', "
        "'psycopg', 'prometheus_client')]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
