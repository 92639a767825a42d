"""The gateway as a real process in front of real stdio MCP servers, driven over raw JSON-RPC."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentinel_gw.stdio_client import StdioClient
from tests.conftest import GATEWAY, backend, gateway_env


def texts(result: dict) -> str:
    return " ".join(c.get("text", "") for c in result.get("content", []))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead for our purposes
        return f.read().split(") ", 1)[1][0] != "Z"


async def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def backend_pids(gw: StdioClient, names: list[str]) -> dict[str, int]:
    pids = {}
    for name in names:
        tool = "pid" if name == names[0] else f"{name}_pid"
        res = await gw.request("tools/call", {"name": tool, "arguments": {}})
        pids[name] = int(texts(res))
    return pids


async def test_handshake_and_version_negotiation(make_config, open_gateway):
    cfg = make_config([backend("a")])
    gw = await open_gateway(cfg, initialize=False)
    res = await gw.request(
        "initialize",
        {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    )
    assert res["protocolVersion"] == "2025-06-18"
    assert res["serverInfo"]["name"] == "sentinel-gw"
    assert res["capabilities"]["tools"] == {"listChanged": True}
    gw.notify("notifications/initialized")
    again = await gw.request_raw("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}})
    assert again["error"]["code"] == -32600

    gw2 = await open_gateway(cfg, initialize=False)
    res = await gw2.request("initialize", {"protocolVersion": "1999-01-01", "capabilities": {}})
    assert res["protocolVersion"] == "2025-11-25"


async def test_lifecycle_and_malformed_input(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a")]), initialize=False)
    assert await gw.request("ping") == {}
    early = await gw.request_raw("tools/list")
    assert early["error"]["code"] == -32600
    probe = await gw.request_raw("server/discover", {})
    assert probe["error"]["code"] == -32601  # Claude Code then falls back to the handshake
    await gw.initialize()
    assert gw.proc and gw.proc.stdin
    # Garbage, bad envelopes and an oversized line: each answered, the gateway keeps going.
    for raw in (
        b"{not json\n",
        b'{"jsonrpc":"1.0","id":7,"method":"ping"}\n',
        b"[]\n",
        b'{"jsonrpc":"2.0","id":true,"method":"ping"}\n',
    ):
        gw.proc.stdin.write(raw)
    gw.proc.stdin.write(
        b'{"jsonrpc":"2.0","id":"big","method":"ping","params":{"x":"' + b"a" * 5_000_000 + b'"}}\n'
    )
    res = await gw.request("tools/list")
    assert any(t["name"] == "echo" for t in res["tools"])
    errors = [(m.get("id"), m["error"]["code"]) for m in gw.unmatched]
    assert (None, -32700) in errors  # not JSON
    assert (7, -32600) in errors  # wrong jsonrpc version, id still echoed
    assert errors.count((None, -32600)) >= 2  # empty batch outside 2025-03-26; boolean id
    too_big = [m for m in gw.unmatched if (m["error"].get("data") or {}).get("reason") == "message_too_large"]
    assert len(too_big) == 1


async def test_batches_only_in_2025_03_26(make_config, open_gateway, tmp_path):
    cfg = make_config([backend("a")])
    gw = await open_gateway(cfg, initialize=False)
    await gw.request("initialize", {"protocolVersion": "2025-03-26", "capabilities": {}})
    gw.notify("notifications/initialized")
    fut = asyncio.get_running_loop().create_future()
    reader_dispatch = gw._dispatch

    def capture(msg):
        if isinstance(msg, dict) and msg.get("id") in ("b1", "b2") and not fut.done():
            fut.set_result(msg)
        reader_dispatch(msg)

    gw._dispatch = capture  # type: ignore[method-assign]
    gw.send(
        [
            {"jsonrpc": "2.0", "id": "b1", "method": "ping"},  # type: ignore[arg-type]
            {
                "jsonrpc": "2.0",
                "id": "b2",
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": "batched"}},
            },
        ]
    )
    first = await asyncio.wait_for(fut, 10)
    assert first["id"] in ("b1", "b2")


async def test_aggregation_prefix_and_original_names(make_config, open_gateway, tmp_path):
    state = tmp_path / "calls.log"
    cfg = make_config([backend("a", "--state-file", str(state)), backend("b", prefix="bee")])
    gw = await open_gateway(cfg)
    names = [t["name"] for t in (await gw.request("tools/list"))["tools"]]
    assert "echo" in names and "bee_echo" in names
    assert names.index("echo") < names.index("bee_echo")  # config order, deterministic
    res = await gw.request("tools/call", {"name": "bee_echo", "arguments": {"message": "hi"}})
    assert "hi" in texts(res)
    res = await gw.request("tools/call", {"name": "echo", "arguments": {"message": "yo"}})
    assert "yo" in texts(res)
    assert state.read_text().splitlines()[0].startswith("echo ")  # backend saw its own name
    unknown = await gw.request_raw("tools/call", {"name": "nope", "arguments": {}})
    assert unknown["error"]["code"] == -32602 and "Unknown tool" in unknown["error"]["message"]


async def test_collisions_resolved_deterministically(make_config, open_gateway, tmp_path):
    cfg = make_config([backend("one"), backend("two")])
    gw = await open_gateway(cfg)
    names = [t["name"] for t in (await gw.request("tools/list"))["tools"]]
    assert "echo" in names and "two_echo" in names
    pid_one = int(texts(await gw.request("tools/call", {"name": "pid", "arguments": {}})))
    pid_two = int(texts(await gw.request("tools/call", {"name": "two_pid", "arguments": {}})))
    assert pid_one != pid_two


async def test_concurrency_slow_call_does_not_block(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a")]))
    slow = asyncio.ensure_future(gw.request("tools/call", {"name": "slow", "arguments": {"seconds": 3}}))
    await asyncio.sleep(0.2)
    assert await gw.request("ping") == {}
    assert "x" in texts(await gw.request("tools/call", {"name": "echo", "arguments": {"message": "x"}}))
    await gw.request("tools/list")
    assert not slow.done()  # everything above was answered while the slow call ran
    await slow


async def test_cancellation_reaches_backend(make_config, open_gateway, tmp_path):
    gw = await open_gateway(make_config([backend("a")]))
    assert gw.proc and gw.proc.stdin
    gw.send(
        {
            "jsonrpc": "2.0",
            "id": "c1",
            "method": "tools/call",
            "params": {"name": "slow", "arguments": {"seconds": 30}},
        }
    )
    await asyncio.sleep(0.3)
    gw.notify("notifications/cancelled", {"requestId": "c1", "reason": "user"})
    # No reply for a cancelled request; the gateway and backend stay usable.
    assert "ok" in texts(await gw.request("tools/call", {"name": "echo", "arguments": {"message": "ok"}}))
    await asyncio.sleep(0.3)
    assert not any(m.get("id") == "c1" for m in gw.notifications)


async def test_progress_relayed_with_client_token(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a")]))
    res = await gw.request(
        "tools/call", {"name": "slow", "arguments": {"seconds": 0.3}, "_meta": {"progressToken": "tok-7"}}
    )
    assert res
    progress = [n["params"] for n in gw.notifications if n["method"] == "notifications/progress"]
    assert progress and all(p["progressToken"] == "tok-7" for p in progress)
    values = [p["progress"] for p in progress]
    assert values == sorted(values)


async def test_timeout_cancels_upstream_and_answers(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a", timeout_secs=0.5)]))
    reply = await gw.request_raw("tools/call", {"name": "slow", "arguments": {"seconds": 20}})
    assert reply["error"]["code"] == -32008
    assert reply["error"]["data"]["reason"] == "timeout"
    assert "did not answer tools/call within 0.5 s" in reply["error"]["message"]
    assert "y" in texts(await gw.request("tools/call", {"name": "echo", "arguments": {"message": "y"}}))


async def test_crash_mid_call_fails_fast_and_restarts(make_config, open_gateway):
    cfg = make_config([backend("a", restart={"backoff_initial_secs": 0.1, "backoff_max_secs": 0.2})])
    gw = await open_gateway(cfg)
    pid1 = int(texts(await gw.request("tools/call", {"name": "pid", "arguments": {}})))
    reply = await gw.request_raw("tools/call", {"name": "crash", "arguments": {}}, timeout=10)
    assert reply["error"]["code"] == -32006
    assert reply["error"]["data"]["reason"] == "crashed"
    # The crash removed its tools (list_changed); the call below waits for the restart.
    pid2 = int(texts(await gw.request("tools/call", {"name": "pid", "arguments": {}})))
    assert pid2 != pid1
    assert not pid_alive(pid1)


async def test_crash_during_initialize_gives_up_others_serve(make_config, open_gateway):
    cfg = make_config(
        [
            backend("good"),
            backend(
                "bad",
                "--crash-on-initialize",
                restart={"max_restarts": 2, "backoff_initial_secs": 0.05, "backoff_max_secs": 0.1},
            ),
        ]
    )
    gw = await open_gateway(cfg)
    tools = [t["name"] for t in (await gw.request("tools/list"))["tools"]]
    assert "echo" in tools and not any(n.startswith("bad_") for n in tools)
    assert "z" in texts(await gw.request("tools/call", {"name": "echo", "arguments": {"message": "z"}}))


async def test_hang_on_initialize_bounded_by_startup_timeout(make_config, open_gateway):
    cfg = make_config(
        [
            backend("good"),
            backend("hang", "--hang-on-initialize", startup_timeout_secs=1.0, restart={"max_restarts": 0}),
        ]
    )
    gw = await open_gateway(cfg)
    res = await gw.request("tools/list", timeout=15)
    assert any(t["name"] == "echo" for t in res["tools"])


async def test_garbage_and_stderr_flood(make_config, open_gateway):
    cfg = make_config([backend("g", "--garbage"), backend("f", "--stderr-flood", "20000", prefix="f")])
    gw = await open_gateway(cfg)
    names = [t["name"] for t in (await gw.request("tools/list", timeout=20))["tools"]]
    assert "echo" in names and "f_echo" in names
    assert "q" in texts(await gw.request("tools/call", {"name": "f_echo", "arguments": {"message": "q"}}))
    assert "q" in texts(await gw.request("tools/call", {"name": "echo", "arguments": {"message": "q"}}))


async def test_exit_before_reply(make_config, open_gateway):
    cfg = make_config([backend("a", "--exit-after", "3", restart={"max_restarts": 0})])
    gw = await open_gateway(cfg)
    # initialize + tools/list (+ maybe other lists) consumed the budget; the next call finds it gone.
    for _ in range(3):
        reply = await gw.request_raw(
            "tools/call", {"name": "echo", "arguments": {"message": "m"}}, timeout=10
        )
        if "error" in reply:
            assert reply["error"]["code"] in (-32006, -32602)
            break
    else:
        pytest.fail("backend never went away")


async def test_env_isolation_and_env_from(make_config, open_gateway, tmp_path):
    cfg = make_config([backend("a", env={"LITERAL": "lit"}, env_from={"CHILD_TOKEN": "PARENT_TOKEN"})])
    env = gateway_env(tmp_path, None, PARENT_TOKEN="s3cret", UNRELATED_SECRET="nope")
    gw = await open_gateway(cfg, env=env)

    async def child(var: str) -> str:
        return texts(await gw.request("tools/call", {"name": "env", "arguments": {"name": var}}))

    assert await child("CHILD_TOKEN") == "s3cret"
    assert await child("LITERAL") == "lit"
    assert await child("UNRELATED_SECRET") == "<unset>"
    assert await child("SENTINEL_JWT_SECRET") == "<unset>"
    assert await child("PARENT_TOKEN") == "<unset>"


async def test_resources_prompts_completion(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a"), backend("b", prefix="b")]))
    uris = [r["uri"] for r in (await gw.request("resources/list"))["resources"]]
    assert "test://a/hello" in uris and "test://b/hello" in uris
    read = await gw.request("resources/read", {"uri": "test://b/hello"})
    assert read["contents"][0]["uri"] == "test://b/hello"
    templ = await gw.request("resources/read", {"uri": "test://a/items/42"})
    assert "42" in json.dumps(templ)
    missing = await gw.request_raw("resources/read", {"uri": "test://nowhere/x"})
    assert missing["error"]["code"] == -32002
    templates = (await gw.request("resources/templates/list"))["resourceTemplates"]
    assert {t["uriTemplate"] for t in templates} >= {"test://a/items/{id}", "test://b/items/{id}"}
    prompts = [p["name"] for p in (await gw.request("prompts/list"))["prompts"]]
    assert "greet" in prompts and "b_greet" in prompts
    got = await gw.request("prompts/get", {"name": "b_greet", "arguments": {"name": "Ada"}})
    assert "Ada" in json.dumps(got)
    comp = await gw.request(
        "completion/complete",
        {"ref": {"type": "ref/prompt", "name": "b_greet"}, "argument": {"name": "name", "value": ""}},
    )
    assert isinstance(comp["completion"]["values"], list)


async def test_subscriptions_and_updates(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a")]))
    await gw.request("resources/subscribe", {"uri": "test://a/hello"})
    await gw.request("tools/call", {"name": "touch", "arguments": {"uri": "test://a/hello"}})
    assert await wait_until(
        lambda: any(n["method"] == "notifications/resources/updated" for n in gw.notifications), 5
    )
    await gw.request("resources/unsubscribe", {"uri": "test://a/hello"})


async def test_logging_relay_filtered(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a")]))
    await gw.request("logging/setLevel", {"level": "error"})
    await gw.request("tools/call", {"name": "log", "arguments": {}})
    await asyncio.sleep(0.3)
    logs = [n["params"] for n in gw.notifications if n["method"] == "notifications/message"]
    assert logs and all(p["level"] in ("error", "critical", "alert", "emergency") for p in logs)
    assert all(p["logger"].startswith("a") for p in logs)
    bad = await gw.request_raw("logging/setLevel", {"level": "loud"})
    assert bad["error"]["code"] == -32602


async def test_server_to_client_requests(make_config, open_gateway):
    asked: list[str] = []

    def answer(method: str, params: dict):
        asked.append(method)
        if method == "sampling/createMessage":
            return {"role": "assistant", "content": {"type": "text", "text": "sampled!"}, "model": "m"}
        if method == "roots/list":
            return {"roots": [{"uri": "file:///work", "name": "work"}]}
        if method == "elicitation/create":
            assert params["message"].startswith("[a] ")
            return {"action": "accept", "content": {"answer": "yes"}}
        raise AssertionError(method)

    caps = {"sampling": {}, "roots": {"listChanged": True}, "elicitation": {}}
    gw = await open_gateway(make_config([backend("a")]), capabilities=caps, on_request=answer)
    assert "sampled!" in texts(await gw.request("tools/call", {"name": "sample", "arguments": {}}))
    assert "file:///work" in texts(await gw.request("tools/call", {"name": "roots", "arguments": {}}))
    assert "accept" in texts(await gw.request("tools/call", {"name": "elicit", "arguments": {}}))
    assert asked == ["sampling/createMessage", "roots/list", "elicitation/create"]


async def test_server_to_client_refused_without_capability(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a")]), capabilities={})
    reply = await gw.request_raw("tools/call", {"name": "sample", "arguments": {}})
    # The backend was never told the client can sample, so its request fails (relayed as an error).
    assert "error" in reply or reply["result"].get("isError")


def slow_user(delay: float, release: asyncio.Event | None = None):
    """A client whose user answers elicitations after `delay` s (or only once `release` is set)."""
    asked: list[str] = []

    async def answer(method: str, params: dict):
        asked.append(method)
        if release is not None:
            await release.wait()
        await asyncio.sleep(delay)
        return {"action": "accept", "content": {"name": "Ada"}}

    return asked, answer


async def test_open_question_suspends_the_idle_timeout(make_config, open_gateway):
    # The user takes longer than timeout_secs to answer: the backend is waiting for them, not hung.
    asked, answer = slow_user(1.5)
    cfg = make_config([backend("a", timeout_secs=0.5, max_timeout_secs=30)])
    gw = await open_gateway(cfg, capabilities={"elicitation": {}}, on_request=answer)
    reply = await gw.request_raw("tools/call", {"name": "elicit", "arguments": {}}, timeout=20)
    assert "result" in reply, reply
    assert "accept" in texts(reply["result"]) and "Ada" in texts(reply["result"])
    assert asked == ["elicitation/create"]


async def test_unanswered_question_ends_at_the_hard_deadline(make_config, open_gateway):
    release = asyncio.Event()
    asked, answer = slow_user(0, release)
    cfg = make_config([backend("a", timeout_secs=0.5, max_timeout_secs=2)])
    gw = await open_gateway(cfg, capabilities={"elicitation": {}}, on_request=answer)
    try:
        reply = await gw.request_raw("tools/call", {"name": "elicit", "arguments": {}}, timeout=20)
    finally:
        release.set()
    assert asked == ["elicitation/create"]
    assert reply["error"]["code"] == -32008
    assert reply["error"]["data"]["reason"] == "timeout"
    # The limit that ended it is the cap, not the idle timeout the open question suspended.
    assert "did not finish tools/call within max_timeout_secs (2 s)" in reply["error"]["message"]
    assert "y" in texts(await gw.request("tools/call", {"name": "echo", "arguments": {"message": "y"}}))


async def test_idle_timeout_restarts_once_the_question_is_answered(make_config, open_gateway):
    # After the answer the backend goes silent for longer than timeout_secs: that is a timeout
    # again (long before the 20 s sleep or the 30 s cap would end the call).
    asked, answer = slow_user(1.0)
    cfg = make_config([backend("a", timeout_secs=0.5, max_timeout_secs=30)])
    gw = await open_gateway(cfg, capabilities={"elicitation": {}}, on_request=answer)
    call = {"name": "elicit", "arguments": {"then_sleep": 20}}
    reply = await gw.request_raw("tools/call", call, timeout=10)
    assert asked == ["elicitation/create"]
    assert reply["error"]["data"]["reason"] == "timeout"
    assert "did not answer tools/call within 0.5 s" in reply["error"]["message"]


async def test_short_timeout_fires_while_a_longer_call_is_pending(make_config, open_gateway):
    # The backend keeps one timer for all pending calls, set for the earliest expiry: a call with
    # a short timeout that arrives after a long one must move it earlier. Here the echo (0.5 s
    # idle timeout, never answered in time) must time out while the 4 s call is still running,
    # not when the 30 s call would have.
    cfg = make_config([backend("a", "--echo-delay", "30", timeout_secs=0.5, tool_timeouts={"slow": 30})])
    gw = await open_gateway(cfg)
    order: list[str] = []

    async def call(name: str, arguments: dict) -> dict:
        reply = await gw.request_raw("tools/call", {"name": name, "arguments": arguments}, timeout=25)
        order.append(name)
        return reply

    slow = asyncio.ensure_future(call("slow", {"seconds": 4}))
    await asyncio.sleep(0.3)  # the slow call is pending (and re-armed by its progress)
    echo = await call("echo", {"message": "late"})
    assert echo["error"]["data"]["reason"] == "timeout"
    assert order == ["echo"], order  # the slow call was still running
    assert "result" in await slow


def count(gw: StdioClient, method: str) -> int:
    return sum(1 for n in gw.notifications if n["method"] == method)


async def test_list_changed_relisted(make_config, open_gateway):
    gw = await open_gateway(make_config([backend("a")]))
    await gw.request("tools/list")
    before = count(gw, "notifications/tools/list_changed")
    await gw.request("tools/call", {"name": "add_tool", "arguments": {}})
    # The gateway re-lists the backend first and only then tells the client.
    assert await wait_until(lambda: count(gw, "notifications/tools/list_changed") > before, 5)
    names = [t["name"] for t in (await gw.request("tools/list"))["tools"]]
    assert any(n.startswith("extra_") for n in names)


async def test_pagination_both_ways(make_config, open_gateway):
    cfg = make_config([backend("a", "--tools", "25", "--page-size", "4")], extra="[gateway]\npage_size = 7\n")
    gw = await open_gateway(cfg)
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        page = await gw.request("tools/list", {"cursor": cursor} if cursor else {})
        seen += [t["name"] for t in page["tools"]]
        cursor = page.get("nextCursor")
        if not cursor:
            break
    assert len(seen) == len(set(seen)) and {f"t_{i}" for i in range(25)} <= set(seen)
    bad = await gw.request_raw("tools/list", {"cursor": "forged.cursor"})
    assert bad["error"]["code"] == -32602


async def test_client_disconnect_cleans_up_children(make_config, tmp_path):
    cfg = make_config([backend("a"), backend("b", prefix="b")])
    client = StdioClient([*GATEWAY, "serve", "--config", str(cfg)], env=gateway_env(tmp_path))
    await client.start()
    await client.initialize()
    pids = await backend_pids(client, ["a", "b"])
    slow = asyncio.ensure_future(
        client.request_raw("tools/call", {"name": "slow", "arguments": {"seconds": 60}})
    )
    await asyncio.sleep(0.3)
    rc = await client.close(timeout=20)
    slow.cancel()
    assert rc == 0
    for pid in pids.values():
        assert await wait_until(lambda pid=pid: not pid_alive(pid), 10), f"backend {pid} outlived the gateway"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_gateway_signals_leave_no_orphans(make_config, tmp_path, sig):
    cfg = make_config([backend("a", "--ignore-sigterm")])
    client = StdioClient([*GATEWAY, "serve", "--config", str(cfg)], env=gateway_env(tmp_path))
    await client.start()
    await client.initialize()
    pid = int(texts(await client.request("tools/call", {"name": "pid", "arguments": {}})))
    assert client.proc is not None
    client.proc.send_signal(sig)
    await asyncio.wait_for(client.proc.wait(), 20)
    assert await wait_until(lambda: not pid_alive(pid), 10)


async def test_check_command_reports_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nnmae = "x"\n')
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY,
        "check",
        "--config",
        str(bad),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    text = err.decode()
    assert "bad.toml" in text and "gateway.nmae" in text and "name" in text


def test_version_flag():
    import subprocess

    out = subprocess.run([*GATEWAY, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("sentinel-gw ")
    assert sys.executable
    assert Path(__file__).exists()


@pytest.mark.parametrize("accel", ["0", "loop"])
def test_stdin_and_stdout_as_regular_files(make_config, tmp_path, accel):
    # Files are no pipes: the front reads stdin in a thread and writes stdout directly. (uvloop
    # aborted the whole process on `serve < file`, `> file` or `> /dev/null`; the stdlib loop
    # refused them.) Every request is answered before the gateway exits at the end of input.
    cfg = make_config([backend("a")])
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "f", "version": "1"}}
    call = {"name": "echo", "arguments": {"message": "from a file"}}
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call},
    ]
    requests, answers = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    requests.write_text("".join(json.dumps(m) + "\n" for m in lines))
    with requests.open("rb") as stdin, answers.open("wb") as stdout:
        done = subprocess.run(
            [*GATEWAY, "serve", "--config", str(cfg)],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=gateway_env(tmp_path, SENTINEL_GW_ACCEL=accel),
            timeout=60,
            check=False,
        )
    log = done.stderr.decode()[-2000:]
    assert done.returncode == 0, log
    replies = {r.get("id"): r for r in map(json.loads, answers.read_text().splitlines())}
    assert replies[1]["result"]["serverInfo"]["name"] == "sentinel-gw", log
    assert "from a file" in json.dumps(replies[2]["result"]), log
