"""A supervised stdio MCP server: spawn, handshake, multiplex, restart, stop without orphans."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sentinel_gw import __version__
from sentinel_gw.aio import CoalescingWriter
from sentinel_gw.backends.base import (
    BackendError,
    BackendEvents,
    BackendState,
    Caller,
    OpenQuestions,
    ProgressCallback,
)
from sentinel_gw.backends.process import (
    SAFE_ENV,
    ChildProcess,
    SpawnError,
    child_environment,
    discard,
    kill_group,
    launch,
    launch_spec,
)
from sentinel_gw.config_schema import BackendConfig
from sentinel_gw.observe import current_client_caps
from sentinel_gw.protocol import jsonrpc
from sentinel_gw.protocol.framing import LineSplitter, TooLong
from sentinel_gw.protocol.mcp import (
    HANDSHAKE_VERSIONS,
    LATEST_HANDSHAKE,
    MODERN_VERSIONS,
    REMOVED_IN_MODERN,
    UNSUPPORTED_PROTOCOL_VERSION,
    modern_meta,
    parse_discover,
    with_modern_meta,
)
from sentinel_gw.resilience import CircuitBreaker, HealthState, HealthTracker

if TYPE_CHECKING:
    from sentinel_gw.backends.spawn import Child

log = logging.getLogger("sentinel_gw.backend")

# SAFE_ENV, SpawnError and child_environment moved to backends/process.py; still importable here.
__all__ = ["SAFE_ENV", "SpawnError", "StdioBackend", "child_environment"]

STDERR_LINES_PER_SEC = 20.0
STDERR_BURST = 100.0
STDERR_MAX_LINE = 2000
STOP_STDIN_GRACE = 2.0
STOP_TERM_GRACE = 2.0
_READ_CHUNK = 1 << 16
LISTEN_TIMEOUT = 10 * 365 * 86400.0  # a listen stream lives as long as the child
_WRITE_HIGH_WATER = 1 << 18


class _Expired(Exception):
    """The request's timer fired (internal: becomes BackendError "timeout")."""


class _Pending:
    __slots__ = ("deadline", "expires", "future", "idle", "last_progress", "method", "on_progress")

    def __init__(
        self,
        future: asyncio.Future[dict[str, Any]],
        method: str,
        on_progress: ProgressCallback | None,
        idle: float,
        deadline: float,
    ) -> None:
        self.future = future
        self.method = method
        self.on_progress = on_progress
        self.last_progress: float | None = None
        self.idle = idle  # seconds without an answer (or progress) before giving up
        self.deadline = deadline  # hard cap: progress never extends past it
        self.expires = deadline  # loop time at which the call times out (see StdioBackend._sweep)

    def arm(self, now: float, *, held: bool = False) -> float:
        """Start the idle timer again; `held` (the child is waiting for the user) leaves only the
        cap. Returns the new expiry, for StdioBackend._watch."""
        self.expires = self.deadline if held else min(now + self.idle, self.deadline)
        return self.expires


# An expiry this close counts as reached: uvloop's timers have millisecond resolution and may fire
# that much before the time asked for (the per-call timers this sweep replaces did the same).
_SWEEP_SLACK = 0.001


class _RateLimitedLog:
    """Token bucket for a child's stderr: a flood is summarised, never allowed to drown the logs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tokens = STDERR_BURST
        self.stamp = time.monotonic()
        self.suppressed = 0

    def line(self, text: str) -> None:
        now = time.monotonic()
        self.tokens = min(STDERR_BURST, self.tokens + (now - self.stamp) * STDERR_LINES_PER_SEC)
        self.stamp = now
        if self.tokens < 1:
            self.suppressed += 1
            return
        self.tokens -= 1
        if self.suppressed:
            log.warning("backend %s: %d stderr lines suppressed (rate limit)", self.name, self.suppressed)
            self.suppressed = 0
        log.info("backend %s stderr: %s", self.name, text[:STDERR_MAX_LINE])


class StdioBackend:
    def __init__(
        self,
        cfg: BackendConfig,
        events: BackendEvents,
        *,
        environ: Mapping[str, str],
        base_dir: str = ".",
        max_message_bytes: int = 4 * 1024 * 1024,
        process: Child | None = None,
    ) -> None:
        """`process`: the child already launched for this backend (`launch()` or, by serve's early
        launch, `fork_exec()` on the same spec, see `sentinel-gw serve`); the first start adopts it
        instead of launching."""
        self.cfg = cfg
        self.name = cfg.name
        self.events = events
        self.environ = environ
        self.base_dir = base_dir
        self.max_message_bytes = max_message_bytes
        self.state = BackendState.STARTING if cfg.enabled else BackendState.DISABLED
        self.capabilities: dict[str, Any] = {}
        self.server_info: dict[str, Any] = {}
        self.instructions = ""
        self.protocol_version = ""
        self.last_error = ""
        self.restarts = 0
        self.pid: int | None = None
        self._proc: ChildProcess | None = None
        self._prespawned = process  # until the first start adopts it
        self._out: CoalescingWriter | None = None  # the child's stdin
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._ready = asyncio.Event()
        self._settled = asyncio.Event()  # ready or given up: lists stop waiting either way
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._io_tasks: list[asyncio.Task[Any]] = []
        self._server_requests: dict[Any, asyncio.Task[None]] = {}
        # Questions relayed to the client and not yet answered: while any is open, the child is
        # waiting for a human, so its calls run against their hard deadline only.
        self._questions = OpenQuestions(self._rearm_all)
        # One timer for all pending calls instead of one per call (call_at + cancel cost ~1.2 us
        # per call): it is set for the earliest expiry among them, moved earlier when a call
        # expires sooner, and at each firing times out what is due and sets itself for the next.
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf
        self._drain_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self.modern = False  # speaking 2026-07-28 to this child (decided at each start)
        self._upstream_caps: dict[str, Any] = {}
        self._health_task: asyncio.Task[None] | None = None
        self._health = HealthTracker(on_change=self._health_changed)
        # A child that keeps timing out fails fast instead of tying up every caller for timeout_secs.
        self.breaker = CircuitBreaker.from_config(cfg.breaker, name=cfg.name)
        self._restart_times: collections.deque[float] = collections.deque()
        self._wake = asyncio.Event()

    # -- public contract ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.state is BackendState.DISABLED:
            self._settled.set()
            return
        self._supervisor = asyncio.create_task(self._supervise(), name=f"backend:{self.name}")

    async def wait_ready(self, timeout: float) -> bool:
        if self._ready.is_set():
            return True
        if timeout <= 0:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)
        return self._ready.is_set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def health(self) -> HealthState:
        return self._health.state

    def in_flight(self) -> int:
        return len(self._pending)

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        caller: Caller | None = None,  # one stream for all calls: nothing in it names the caller
    ) -> dict[str, Any]:
        if not self._ready.is_set():
            raise BackendError(
                self.name, "unavailable", f"Backend '{self.name}' is not available ({self.state.value})"
            )
        if len(self._pending) >= self.cfg.max_in_flight:
            raise BackendError(
                self.name,
                "overloaded",
                f"Backend '{self.name}' has {self.cfg.max_in_flight} requests in flight; try again shortly",
                retry_after_ms=100,
            )
        if self.modern:
            if method in REMOVED_IN_MODERN:
                raise jsonrpc.JsonRpcError(
                    jsonrpc.METHOD_NOT_FOUND, f"{method} does not exist in {self.protocol_version}"
                )
            params = self._modern_params(params)
        if timeout is None:
            timeout = self.cfg.timeout_secs
            if method == "tools/call" and params is not None:
                timeout = self.cfg.tool_timeouts.get(params.get("name"), timeout)  # type: ignore[arg-type]
        if not self.breaker.allow():
            wait_ms = max(1, int(self.breaker.retry_after() * 1000))
            raise BackendError(
                self.name,
                "circuit_open",
                f"Backend '{self.name}' is failing; circuit open",
                retry_after_ms=wait_ms,
            )
        try:
            result = await self._call(method, params, timeout, on_progress)
        except BackendError as exc:
            if exc.reason in ("timeout", "crashed"):
                self.breaker.record_failure()
            else:
                self.breaker.release()
            raise
        except jsonrpc.JsonRpcError:
            self.breaker.record_success()  # an error reply is an answer: the child works
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.record_success()
        return result

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        if self._ready.is_set():
            self._write(jsonrpc.notification(method, params))

    def kill(self) -> None:
        """SIGKILL the whole process group at once (forced shutdown); stop() still reaps it."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._kill_group(signal.SIGKILL)
        if self._prespawned is not None:
            kill_group(self._prespawned.pid, signal.SIGKILL)

    async def stop(self) -> None:
        self._stopping = True
        self._stop_health_checks()
        self._wake.set()
        self._ready.clear()
        await self._terminate()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._proc is not None:  # started while the first _terminate() was waiting
            await self._terminate()
        popen, self._prespawned = self._prespawned, None
        if popen is not None:  # launched for us, never adopted (stopped before the first start)
            await asyncio.to_thread(discard, [popen])
        for task in list(self._server_requests.values()):
            task.cancel()
        self.state = BackendState.STOPPED if self.state is not BackendState.DISABLED else self.state
        self._settled.set()

    # -- requests ------------------------------------------------------------------------------

    async def _call(
        self, method: str, params: dict[str, Any] | None, timeout: float, on_progress: ProgressCallback | None
    ) -> dict[str, Any]:
        self._next_id += 1
        req_id = self._next_id
        if on_progress is not None and params is not None:
            # The upstream id doubles as our progress token: unique among this child's live requests.
            meta = params.get("_meta")
            if isinstance(meta, dict) and "progressToken" in meta:
                params = {**params, "_meta": {**meta, "progressToken": req_id}}
            else:
                on_progress = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + max(timeout, self.cfg.max_timeout_secs)
        pending = _Pending(loop.create_future(), method, on_progress, timeout, deadline)
        self._watch(pending.arm(now, held=bool(self._questions)))
        self._pending[req_id] = pending
        try:
            self._write(jsonrpc.request(req_id, method, params))
            # A plain future and a timer: cheaper than wait_for, and a cancellation of the caller
            # can never be swallowed by a reply arriving at the same moment.
            return await pending.future
        except _Expired:
            self._cancel_upstream(req_id, "timeout")
            if pending.expires >= deadline and deadline - now > timeout:
                # Progress or a question to the user kept it alive until the hard cap.
                reason = f"did not finish {method} within max_timeout_secs ({deadline - now:g} s)"
            else:
                reason = f"did not answer {method} within {timeout:g} s"
            raise BackendError(self.name, "timeout", f"Backend '{self.name}' {reason}") from None
        except asyncio.CancelledError:
            self._cancel_upstream(req_id, "cancelled by client")
            raise
        finally:
            self._pending.pop(req_id, None)

    def _watch(self, expires: float) -> None:
        """Make sure the sweep runs no later than `expires` (loop time)."""
        if expires < self._sweep_at:
            if self._sweep_timer is not None:
                self._sweep_timer.cancel()
            self._sweep_at = expires
            self._sweep_timer = asyncio.get_running_loop().call_at(expires, self._sweep)

    def _sweep(self) -> None:
        """Time out every pending call whose expiry has come; wait for the next one."""
        self._sweep_timer = None
        self._sweep_at = math.inf
        now = asyncio.get_running_loop().time()
        due = now + _SWEEP_SLACK
        soonest = math.inf
        for entry in list(self._pending.values()):
            if entry.future.done():
                continue
            if entry.expires <= due:
                entry.future.set_exception(_Expired())
            elif entry.expires < soonest:
                soonest = entry.expires
        if soonest < math.inf:
            self._watch(soonest)

    def _cancel_upstream(self, req_id: int, reason: str) -> None:
        if req_id in self._pending and self._ready.is_set():
            with contextlib.suppress(Exception):
                self._write(
                    jsonrpc.notification("notifications/cancelled", {"requestId": req_id, "reason": reason})
                )

    def _write(self, message: dict[str, Any]) -> None:
        proc = self._proc
        out = self._out
        if proc is None or out is None or proc.stdin is None or proc.stdin.is_closing():
            raise BackendError(self.name, "unavailable", f"Backend '{self.name}' is not running")
        out.write(jsonrpc.encode(message))
        if out.buffered() > _WRITE_HIGH_WATER and self._drain_task is None:
            # A child that stops reading must not make us buffer without bound.
            self._drain_task = asyncio.ensure_future(self._drain(proc, out))

    async def _drain(self, proc: ChildProcess, out: CoalescingWriter) -> None:
        try:
            assert proc.stdin is not None
            out.flush()
            await asyncio.wait_for(proc.stdin.drain(), self.cfg.timeout_secs)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            if proc.returncode is None and self._proc is proc:
                log.error("backend %s: stdin is not being read; restarting it", self.name)
                kill_group(proc.pid, signal.SIGKILL)
        finally:
            self._drain_task = None

    def _fail_pending(self, reason: str, message: str) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(BackendError(self.name, reason, message))
        # Questions the child asked the client die with it: the client's dialog is cancelled and
        # a late answer can never reach the next incarnation.
        for task in list(self._server_requests.values()):
            task.cancel()
        self._server_requests.clear()

    # -- supervision ---------------------------------------------------------------------------

    async def _supervise(self) -> None:
        window = self.cfg.restart.restart_window_secs
        while not self._stopping:
            reason = "crashed"
            try:
                await self._spawn()
                await self._handshake()
            except SpawnError as exc:
                self.last_error = str(exc)
                log.error("%s", exc)
                self._give_up(str(exc))
                return
            except Exception as exc:  # any handshake failure: crash, timeout, garbage
                if self._stopping:
                    return
                self.last_error = f"start failed: {exc}"
                log.error("backend %s: start failed: %s", self.name, exc)
                await self._terminate()
                reason = "start_failed"
            else:
                self.state = BackendState.READY
                self._ready.set()
                self._settled.set()
                log.info("backend %s ready (pid %s, protocol %s)", self.name, self.pid, self.protocol_version)
                self._health.reset()
                self.events.backend_ready(self)
                self._start_health_checks()
                if self.modern:
                    self._listen_task = asyncio.create_task(
                        self._listen_upstream(), name=f"listen:{self.name}"
                    )
                code = await self._wait_exit()
                self._ready.clear()
                self._stop_health_checks()
                if self._listen_task is not None:
                    self._listen_task.cancel()
                    self._listen_task = None
                if self._stopping:
                    return
                what = f"exited (code {code})" if code is not None else "closed its stdout"
                self.last_error = what
                log.error("backend %s %s", self.name, what)
                self._fail_pending("crashed", f"Backend '{self.name}' {what} before answering")
                self.events.backend_down(self, "crashed")
                await self._terminate()
            if self._stopping:
                return
            now = time.monotonic()
            while self._restart_times and now - self._restart_times[0] > window:
                self._restart_times.popleft()
            if len(self._restart_times) >= self.cfg.restart.max_restarts:
                self._give_up(f"{reason}; {len(self._restart_times)} restarts within {window:g} s")
                return
            delay = self._backoff(len(self._restart_times))
            self._restart_times.append(now)
            self.restarts += 1
            self.state = BackendState.RESTARTING
            log.warning("backend %s: restarting in %.2f s (restart %d)", self.name, delay, self.restarts)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _backoff(self, attempt: int) -> float:
        policy = self.cfg.restart
        base = min(policy.backoff_max_secs, policy.backoff_initial_secs * (2**attempt))
        return base * (1 - policy.backoff_jitter * random.random())

    def _give_up(self, why: str) -> None:
        self.state = BackendState.FAILED
        self.last_error = why
        self._ready.clear()
        self._settled.set()
        self._fail_pending("unavailable", f"Backend '{self.name}' is unavailable: {why}")
        log.error("backend %s: giving up: %s", self.name, why)
        self.events.backend_down(self, "gave_up")

    async def _spawn(self) -> None:
        # The first start adopts the process `serve` launched before the event loop existed (its
        # spec was computed from the same config and environment); every other start launches.
        popen, self._prespawned = self._prespawned, None
        if popen is None:
            popen = launch(launch_spec(self.cfg, self.environ, self.base_dir))
        self.state = BackendState.STARTING if self.restarts == 0 else BackendState.RESTARTING
        self.pid = popen.pid
        proc = self._proc = await ChildProcess.attach(popen)
        assert proc.stdin is not None
        self._out = CoalescingWriter(proc.stdin.transport)
        self._next_id = 0
        proc.attach_parser(self._stdout_parser(proc))
        self._io_tasks = [
            asyncio.create_task(self._stdout_closed(proc), name=f"stdout:{self.name}"),
            asyncio.create_task(self._read_stderr(proc), name=f"stderr:{self.name}"),
        ]
        log.info("backend %s: started %s (pid %d)", self.name, popen.args[0], self.pid)

    async def _handshake(self) -> None:
        caps = await self.events.upstream_capabilities()
        self._upstream_caps = caps
        self.modern = False
        if self.cfg.era != "legacy" and await self._discover(caps):
            return
        params = {
            "protocolVersion": LATEST_HANDSHAKE,
            "capabilities": caps,
            "clientInfo": {"name": "sentinel-gw", "version": __version__},
        }
        self._ready.clear()
        # Before READY, requests go straight to _call: nothing else may use the child yet.
        result = await self._call_unready("initialize", params, self.cfg.startup_timeout_secs)
        version = result.get("protocolVersion")
        if version not in HANDSHAKE_VERSIONS:
            raise RuntimeError(f"backend answered initialize with unsupported protocol version {version!r}")
        caps_out = result.get("capabilities")
        self.capabilities = caps_out if isinstance(caps_out, dict) else {}
        info = result.get("serverInfo")
        self.server_info = info if isinstance(info, dict) else {}
        instructions = result.get("instructions")
        self.instructions = instructions if isinstance(instructions, str) else ""
        self.protocol_version = version
        self._write(jsonrpc.notification("notifications/initialized"))

    async def _discover(self, caps: dict[str, Any]) -> bool:
        """2026-07-28: server/discover instead of initialize. With era = auto, any answer that is
        not a discover result (or a modern version error) means a handshake-era server."""
        timeout = self.cfg.startup_timeout_secs if self.cfg.era == "modern" else self.cfg.probe_timeout_secs
        version = MODERN_VERSIONS[0]
        try:
            result = await self._call_unready(
                "server/discover", {"_meta": modern_meta(version, caps)}, timeout
            )
        except jsonrpc.JsonRpcError as exc:
            data = exc.data if isinstance(exc.data, dict) else {}
            offered = [v for v in data.get("supported", []) if v in MODERN_VERSIONS]
            if exc.code == UNSUPPORTED_PROTOCOL_VERSION and offered:
                version = offered[0]
                result = await self._call_unready(
                    "server/discover", {"_meta": modern_meta(version, caps)}, timeout
                )
            elif self.cfg.era == "modern":
                raise
            else:
                return False
        except BackendError:
            if self.cfg.era == "modern":
                raise
            # Timed out: a handshake-era server that ignores unknown methods; initialize it.
            return False
        versions = result.get("supportedVersions")
        if not isinstance(versions, list) or version not in versions:
            if self.cfg.era == "modern":
                raise RuntimeError(f"backend does not support protocol {version}")
            return False
        self.capabilities, self.server_info, self.instructions = parse_discover(result)
        self.protocol_version = version
        self.modern = True
        return True

    def _modern_params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """Every 2026-07-28 request carries the version and capabilities in _meta: the caller's own
        (routable) ones when a client request is being served, otherwise (lists, health) what the
        gateway declared for itself."""
        caps = current_client_caps.get()
        return with_modern_meta(params, self.protocol_version, self._upstream_caps if caps is None else caps)

    async def _listen_upstream(self) -> None:
        """A modern backend sends list changes only on a listen stream: keep one open."""
        wanted = {
            k: True
            for k, cap in (
                ("toolsListChanged", "tools"),
                ("promptsListChanged", "prompts"),
                ("resourcesListChanged", "resources"),
            )
            if isinstance(self.capabilities.get(cap), dict) and self.capabilities[cap].get("listChanged")
        }
        if not wanted:
            return
        while self._ready.is_set():
            try:
                await self._call(
                    "subscriptions/listen",
                    self._modern_params({"notifications": wanted}),
                    LISTEN_TIMEOUT,
                    None,
                )
            except (jsonrpc.JsonRpcError, BackendError) as exc:
                log.info("backend %s: listen stream ended (%s); reopening", self.name, exc)
            await asyncio.sleep(1.0)

    async def _call_unready(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None
        exit_wait = asyncio.ensure_future(proc.wait())
        call = asyncio.ensure_future(self._call(method, params, timeout, None))
        try:
            done, _ = await asyncio.wait({call, exit_wait}, return_when=asyncio.FIRST_COMPLETED)
            if call in done:
                return call.result()
            raise RuntimeError(f"process exited with code {exit_wait.result()} during {method}")
        finally:
            for fut in (call, exit_wait):
                if not fut.done():
                    fut.cancel()
            with contextlib.suppress(BaseException):
                await call

    async def _wait_exit(self) -> int | None:
        """Until the child exits or its stdout ends (then it can never answer again): None."""
        proc = self._proc
        assert proc is not None
        reader = self._io_tasks[0]
        exit_wait = asyncio.ensure_future(proc.wait())
        await asyncio.wait({exit_wait, reader}, return_when=asyncio.FIRST_COMPLETED)
        self._ready.clear()  # no new request may be written to a dying child
        if not exit_wait.done():
            exit_wait.cancel()
            if not reader.cancelled() and reader.exception() is not None:
                log.error("backend %s: reading its stdout failed", self.name, exc_info=reader.exception())
            return None
        # stdout may still hold the last replies; let the reader finish them first.
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(reader), 1.0)
        return exit_wait.result()

    async def _terminate(self) -> None:
        """Close stdin, then SIGTERM, then SIGKILL the whole process group; always reap."""
        proc = self._proc
        self._ready.clear()
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                if self._out is not None:
                    self._out.flush()  # what was written goes out before the end of input
                if proc.stdin is not None:
                    proc.stdin.close()
            if not await self._wait_for(proc, STOP_STDIN_GRACE):
                self._kill_group(signal.SIGTERM)
                if not await self._wait_for(proc, STOP_TERM_GRACE):
                    self._kill_group(signal.SIGKILL)
                    await proc.wait()
        # Grandchildren left in the group (e.g. `npx` spawned `node`) must not outlive it.
        self._kill_group(signal.SIGKILL)
        tasks, self._io_tasks = self._io_tasks, []
        if self._drain_task is not None:
            tasks.append(self._drain_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._fail_pending("crashed", f"Backend '{self.name}' stopped before answering")
        proc.close()
        self._proc = None
        self._out = None

    @staticmethod
    async def _wait_for(proc: ChildProcess, timeout: float) -> bool:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.pid is not None:
            kill_group(self.pid, sig)

    # -- health ----------------------------------------------------------------------------------

    def _start_health_checks(self) -> None:
        if self.cfg.health_interval_secs > 0:
            self._health_task = asyncio.create_task(self._health_loop(), name=f"health:{self.name}")

    def _stop_health_checks(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None

    async def _health_loop(self) -> None:
        """A ping every health_interval_secs; a child that stops answering is restarted."""
        timeout = min(10.0, self.cfg.timeout_secs)
        while self._ready.is_set():
            await asyncio.sleep(self.cfg.health_interval_secs)
            try:
                if self.modern:  # ping is gone in 2026-07-28: discover is the probe
                    await self._call("server/discover", self._modern_params(None), timeout, None)
                else:
                    await self._call("ping", None, timeout, None)
                ok = True
            except jsonrpc.JsonRpcError as exc:
                ok = not isinstance(exc, BackendError)  # an error reply still proves it is alive
            self._health.record(ok)
            if self._health.state is HealthState.UNHEALTHY and self._proc is not None:
                log.error("backend %s: unhealthy (pings unanswered); restarting it", self.name)
                self._kill_group(signal.SIGKILL)
                return

    def _health_changed(self, old: HealthState, new: HealthState) -> None:
        level = logging.INFO if new is HealthState.HEALTHY else logging.WARNING
        log.log(level, "backend %s: health %s -> %s", self.name, old.value, new.value)

    # -- reading ---------------------------------------------------------------------------------

    def _stdout_parser(self, proc: ChildProcess) -> Callable[[bytes], None]:
        """The child's stdout, chunk by chunk, parsed in the pipe's read callback (see
        ChildProcess.attach_parser): a reply settles its waiter without a reader task in between."""
        splitter = LineSplitter(self.max_message_bytes)
        garbage = _RateLimitedLog(self.name)

        def feed(chunk: bytes) -> None:
            for line in splitter.feed(chunk):
                if isinstance(line, TooLong):
                    log.error(
                        "backend %s sent a %d-byte message (limit %d); dropped",
                        self.name,
                        line.size,
                        self.max_message_bytes,
                    )
                    continue
                try:
                    message = jsonrpc.decode(line)
                except jsonrpc.JsonRpcError:
                    garbage.line("non-JSON on stdout ignored: " + line[:200].decode("utf-8", "replace"))
                    continue
                if not isinstance(message, dict) or jsonrpc.check_message(message) is not None:
                    garbage.line("invalid JSON-RPC on stdout ignored")
                    continue
                try:
                    self._on_message(message, proc)
                except Exception:  # one odd message must never stop the reader
                    log.exception("backend %s: message handling failed", self.name)

        return feed

    @staticmethod
    async def _stdout_closed(proc: ChildProcess) -> None:
        """Ends when the child's stdout does (its data goes to the parser, never to this reader)."""
        await proc.stdout_closed()

    async def _read_stderr(self, proc: ChildProcess) -> None:
        assert proc.stderr is not None
        sink = _RateLimitedLog(self.name)
        splitter = LineSplitter(STDERR_MAX_LINE)
        while True:
            chunk = await proc.stderr.read(_READ_CHUNK)
            if not chunk:
                return
            for line in splitter.feed(chunk):
                if isinstance(line, TooLong):
                    sink.line(f"<{line.size} bytes without a newline>")
                else:
                    sink.line(line.decode("utf-8", "replace").rstrip())

    def _on_message(self, message: dict[str, Any], proc: ChildProcess) -> None:
        method = message.get("method")
        if method is None:
            msg_id = message.get("id")
            entry = self._pending.get(msg_id) if isinstance(msg_id, int) else None
            if entry is None or entry.future.done():
                log.debug("backend %s: response to unknown or finished id %r dropped", self.name, msg_id)
                return
            jsonrpc.settle(entry.future, message)
            return
        params = message.get("params") or {}
        if "id" in message:
            req_id = message["id"]
            task = asyncio.create_task(self._answer_server_request(proc, req_id, method, params))
            self._server_requests[req_id] = task

            def forget(t: asyncio.Task[None]) -> None:
                if self._server_requests.get(req_id) is t:
                    del self._server_requests[req_id]

            task.add_done_callback(forget)
            self._questions.opened(method, task)
            return
        if method == "notifications/progress":
            self._on_progress(params)
            return
        self.events.backend_notification(self, method, params)

    def _on_progress(self, params: dict[str, Any]) -> None:
        token = params.get("progressToken")
        entry = self._pending.get(token) if isinstance(token, int) else None
        if entry is None:
            return
        progress = params.get("progress")
        if not isinstance(progress, (int, float)) or isinstance(progress, bool):
            return
        if entry.last_progress is not None and progress <= entry.last_progress:
            return  # MCP requires strictly increasing progress; drop regressions
        entry.last_progress = progress
        # progress is life: restart the idle timer (up to the cap)
        self._watch(entry.arm(asyncio.get_running_loop().time(), held=bool(self._questions)))
        if entry.on_progress is not None:
            entry.on_progress(params)

    def _rearm_all(self, held: bool) -> None:
        """While a question is open (`held`), calls wait for their hard deadline only; after the
        last one, their idle timers start again from now."""
        now = asyncio.get_running_loop().time()
        for entry in self._pending.values():
            if not entry.future.done():
                self._watch(entry.arm(now, held=held))

    def cancel_server_request(self, req_id: Any) -> None:
        """The child withdrew a request it sent us; the client side is told by the waiter."""
        task = self._server_requests.get(req_id) if jsonrpc.valid_id(req_id) else None
        if task is not None:
            task.cancel()

    async def _answer_server_request(
        self, proc: ChildProcess, req_id: Any, method: str, params: dict[str, Any]
    ) -> None:
        if method == "ping":
            reply = jsonrpc.result(req_id, {})
        else:
            try:
                reply = jsonrpc.result(req_id, await self.events.backend_request(self, method, params))
            except jsonrpc.JsonRpcError as exc:
                reply = jsonrpc.error_from(req_id, exc)
            except asyncio.CancelledError:
                return
            except Exception as exc:  # never let a client-side failure kill the reader
                log.exception("backend %s: relaying %s failed", self.name, method)
                reply = jsonrpc.error(req_id, jsonrpc.INTERNAL_ERROR, f"gateway error: {type(exc).__name__}")
        out = self._out
        if self._proc is not proc or out is None or proc.stdin is None or proc.stdin.is_closing():
            return  # the child that asked is gone; never answer its successor
        with contextlib.suppress(ConnectionError, RuntimeError):
            out.write(jsonrpc.encode(reply))
