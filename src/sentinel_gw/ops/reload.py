"""Hot reload: SIGHUP or a change of the config file (or its .env) -> validated snapshot -> swap.

An invalid file changes nothing: it is logged with file, key and reason, counted and audited.
Listen addresses and audit sinks are not reloaded (they need a restart); everything else is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from sentinel_gw.config import ConfigError, environment_for, load_config
from sentinel_gw.gateway import Gateway
from sentinel_gw.policy.auth import AuthError, AuthSetupError
from sentinel_gw.policy.engine import PolicyEngine

log = logging.getLogger("sentinel_gw.reload")

POLL_SECS = 1.0


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Reloader:
    def __init__(
        self,
        gateway: Gateway,
        config_path: str | os.PathLike[str],
        env_file: str | None,
        base_environ: Mapping[str, str],
        *,
        on_applied: Callable[[], None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.path = Path(config_path)
        self.env_file = env_file
        self.base_environ = dict(base_environ)
        self.on_applied = on_applied
        self.reloads = {"ok": 0, "failed": 0}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._signalled: set[asyncio.Task[bool]] = set()
        self._stamps = self._current_stamps()

    def _watched(self) -> list[Path]:
        return [self.path, Path(self.env_file) if self.env_file else self.path.parent / ".env"]

    def _current_stamps(self) -> list[tuple[int, int, int] | None]:
        return [_stamp(p) for p in self._watched()]

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="config-watch")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECS)
            stamps = self._current_stamps()
            if stamps != self._stamps and stamps[0] is not None:
                self._stamps = stamps
                await self.reload("file changed")

    async def reload(self, reason: str) -> bool:
        async with self._lock:
            self._stamps = self._current_stamps()
            try:
                environ = environment_for(self.path, self.env_file, self.base_environ)
                config = load_config(self.path, environ=environ)
                policy = PolicyEngine(config, environ=environ)
            except (ConfigError, AuthSetupError, ValueError, OSError) as exc:
                self.reloads["failed"] += 1
                log.error("config reload (%s) failed; keeping the running config: %s", reason, exc)
                self.gateway.event("config.reload", result="failed", reason=reason, error=str(exc)[:500])
                return False
            changes = await self.gateway.apply_config(config, policy)
            self._reauthenticate(policy)
            self.reloads["ok"] += 1
            log.info("config reloaded (%s): %s", reason, changes)
            self.gateway.event("config.reload", result="ok", reason=reason, **changes)
            if self.on_applied is not None:
                self.on_applied()
            return True

    def _reauthenticate(self, policy: PolicyEngine) -> None:
        """A stdio caller's token is checked again under the new auth settings."""
        for session in list(self.gateway.sessions):
            if session.transport != "stdio":
                continue
            try:
                session.identity = policy.stdio_identity()
                session.auth_error = None
            except AuthError as exc:
                session.auth_error = f"token no longer accepted after a config reload: {exc}"
                log.warning("session %s: %s", session.id, session.auth_error)

    def on_sighup(self) -> None:
        task = asyncio.ensure_future(self.reload("SIGHUP"))
        self._signalled.add(task)
        task.add_done_callback(self._signalled.discard)


def install_sighup(reloader: Reloader) -> None:
    """Installed before backends start, so an early SIGHUP reloads instead of killing us."""
    import signal

    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.on_sighup)
