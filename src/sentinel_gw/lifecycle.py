"""Process-level shutdown: signals are handled until the last backend is gone.

The first SIGTERM/SIGINT (or end of input) starts a graceful shutdown: in-flight calls get the
grace period, then backends get stdin EOF, SIGTERM, SIGKILL. A further signal during that time
(clients such as the TypeScript SDK send SIGTERM two seconds after closing stdin) forces it:
in-flight calls are cancelled (upstream too) and every backend process group is killed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

log = logging.getLogger("sentinel_gw.lifecycle")


class Shutdown:
    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.reason = ""
        self._on_force: list[Callable[[], None]] = []
        self._installed: list[signal.Signals] = []

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._signal, sig)
                self._installed.append(sig)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        self._installed.clear()

    def on_force(self, callback: Callable[[], None]) -> None:
        self._on_force.append(callback)

    def request(self, reason: str) -> None:
        if not self.requested.is_set():
            self.reason = reason
            self.requested.set()

    def _signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self.requested.is_set():
            log.info("received %s; shutting down gracefully", name)
            self.request(name)
            return
        if not self.forced.is_set():
            log.warning("received %s during shutdown: cancelling calls and killing backends now", name)
            self.forced.set()
            for callback in self._on_force:
                with contextlib.suppress(Exception):
                    callback()
