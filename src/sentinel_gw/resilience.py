"""Resilience decisions: circuit breaker, retry policy and budget, backoff, health state.

Everything here is pure: no I/O, no sleeping, no asyncio. Time comes from an injectable
`clock` (monotonic seconds) and randomness from an injectable `rng`, so every decision is
testable without waiting. The backends do the sleeping and the sending.

How the pieces fit for one backend request:

1. `CircuitBreaker.allow()`; refused -> answer "circuit open" with `retry_after()`.
2. Send. Classify the outcome: transport errors, timeouts and HTTP 5xx are *failures*
   (`record_failure`); any answer from the server, including a JSON-RPC error or a tool result
   with ``isError``, is a *success* for the breaker (the backend is alive). A request cancelled
   by the client before an outcome calls `release()`.
3. On failure: `should_retry(...)` with ``retry_safe = is_retry_safe(...)`` and the error's
   ``maybe_sent``; then `RetryBudget.withdraw()`; then sleep the next `backoff_delays` value
   (bounded by what is left of the request's own timeout) and go to 1.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentinel_gw.config_schema import BreakerConfig

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "HealthState",
    "HealthTracker",
    "RetryBudget",
    "backoff_delays",
    "is_retry_safe",
    "should_retry",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class _SlidingCounts:
    """Two counters over a sliding window, kept in `buckets` time slices so memory stays bounded
    at any request rate. The window is approximate by one slice (window / buckets)."""

    def __init__(self, window_secs: float, clock: Clock, buckets: int = 20) -> None:
        if window_secs <= 0:
            raise ValueError("window_secs must be > 0")
        self._width = window_secs / buckets
        self._buckets = buckets
        self._clock = clock
        self._slices: deque[list[float]] = deque()  # [slice index, a, b]

    def _prune(self) -> int:
        now_slice = math.floor(self._clock() / self._width)
        while self._slices and self._slices[0][0] <= now_slice - self._buckets:
            self._slices.popleft()
        return now_slice

    def add(self, a: float = 0.0, b: float = 0.0) -> None:
        now_slice = self._prune()
        if self._slices and self._slices[-1][0] == now_slice:
            self._slices[-1][1] += a
            self._slices[-1][2] += b
        else:
            self._slices.append([now_slice, a, b])

    def totals(self) -> tuple[float, float]:
        self._prune()
        return (sum(s[1] for s in self._slices), sum(s[2] for s in self._slices))

    def clear(self) -> None:
        self._slices.clear()


# ---------------------------------------------------------------------------------------------
# Circuit breaker
# ---------------------------------------------------------------------------------------------


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


StateListener = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    """Per-backend circuit breaker.

    *Closed*: everything passes. Opens when `failure_threshold` failures happen in a row, or when
    at least `min_calls` outcomes were recorded in the last `window_secs` and the share of failures
    among them is >= `failure_rate` (None disables the rate rule).

    *Open*: `allow()` refuses until `cooldown_secs` have passed since opening; the first `allow()`
    after that moves to *half-open* and admits that caller as the single probe.

    *Half-open*: while the probe is out every other `allow()` is refused. The probe's success
    closes the breaker (all counters reset); its failure re-opens it for another cooldown. A probe
    that ends without an outcome must call `release()`; a probe that never reports at all is
    presumed lost after `probe_timeout_secs` (default: the cooldown) and another one is admitted,
    so a leaked probe cannot wedge the backend shut.

    Outcomes recorded while *open* (late answers to requests admitted earlier) change nothing.
    The breaker cannot tell a late answer from the probe's while half-open, so any outcome there
    counts as the probe's. `state` does not move by itself: an open breaker reports "open" until
    an `allow()` after the cooldown admits a probe.

    `on_state_change(old, new)` is called on every transition (logging, metrics); an exception
    from it is logged and swallowed.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        failure_rate: float | None = 0.5,
        window_secs: float = 60,
        min_calls: int = 10,
        cooldown_secs: float = 30,
        clock: Clock = time.monotonic,
        probe_timeout_secs: float | None = None,
        on_state_change: StateListener | None = None,
        name: str = "",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if failure_rate is not None and not 0.0 < failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1] or None")
        if min_calls < 1:
            raise ValueError("min_calls must be >= 1")
        if cooldown_secs < 0:
            raise ValueError("cooldown_secs must be >= 0")
        self.failure_threshold = failure_threshold
        self.failure_rate = failure_rate
        self.min_calls = min_calls
        self.cooldown_secs = cooldown_secs
        self.probe_timeout_secs = cooldown_secs if probe_timeout_secs is None else probe_timeout_secs
        self.name = name
        self.on_state_change = on_state_change
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._window = _SlidingCounts(window_secs, clock)  # (calls, failures)
        self._opened_at = 0.0
        self._probe_started: float | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def window_counts(self) -> tuple[int, int]:
        """(calls, failures) recorded in the current window while closed."""
        calls, failures = self._window.totals()
        return int(calls), int(failures)

    @classmethod
    def from_config(
        cls, cfg: BreakerConfig, *, name: str = "", on_state_change: StateListener | None = None
    ) -> CircuitBreaker:
        """The breaker a backend's `[backends.breaker]` table describes."""
        return cls(
            failure_threshold=cfg.failure_threshold,
            failure_rate=cfg.failure_rate,
            window_secs=cfg.window_secs,
            min_calls=cfg.min_calls,
            cooldown_secs=cfg.cooldown_secs,
            on_state_change=on_state_change,
            name=name,
        )

    def allow(self) -> bool:
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if now - self._opened_at < self.cooldown_secs:
                return False
            self._transition(BreakerState.HALF_OPEN)
            self._probe_started = now
            return True
        if self._probe_started is not None and now - self._probe_started < self.probe_timeout_secs:
            return False
        self._probe_started = now
        return True

    def release(self) -> None:
        """The admitted request ended without an outcome (e.g. cancelled): free the probe slot."""
        if self._state is BreakerState.HALF_OPEN:
            self._probe_started = None

    def record_success(self) -> None:
        if self._state is BreakerState.OPEN:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._close()
            return
        self._consecutive = 0
        self._window.add(1, 0)

    def record_failure(self) -> None:
        if self._state is BreakerState.OPEN:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._consecutive += 1
        self._window.add(1, 1)
        if self._consecutive >= self.failure_threshold:
            self._open()
            return
        if self.failure_rate is not None:
            calls, failures = self._window.totals()
            if calls >= self.min_calls and failures / calls >= self.failure_rate:
                self._open()

    def retry_after(self) -> float:
        """Seconds until a call may be admitted again (0 when one would be now)."""
        now = self._clock()
        if self._state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self.cooldown_secs - now)
        if self._state is BreakerState.HALF_OPEN and self._probe_started is not None:
            return max(0.0, self._probe_started + self.probe_timeout_secs - now)
        return 0.0

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probe_started = None
        self._transition(BreakerState.OPEN)

    def _close(self) -> None:
        self._consecutive = 0
        self._window.clear()
        self._probe_started = None
        self._transition(BreakerState.CLOSED)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        if old is new or self.on_state_change is None:
            return
        try:
            self.on_state_change(old, new)
        except Exception:
            log.exception("circuit breaker %s: state listener failed", self.name or "?")


# ---------------------------------------------------------------------------------------------
# Backoff and retry budget
# ---------------------------------------------------------------------------------------------


def backoff_delays(
    initial: float,
    maximum: float,
    *,
    multiplier: float = 2.0,
    jitter: str = "full",
    rng: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Endless delays for attempt n = 0, 1, 2...: with cap = min(maximum, initial * multiplier**n),
    ``"full"`` gives uniform(0, cap) (AWS "full jitter": retrying clients spread out instead of
    retrying in lockstep), ``"equal"`` uniform(cap/2, cap), ``"none"`` exactly cap.
    The caller stops iterating (attempt limit, budget, remaining timeout)."""
    if initial < 0 or maximum < 0:
        raise ValueError("delays must be >= 0")
    if multiplier < 1:
        raise ValueError("multiplier must be >= 1")
    if jitter not in ("full", "equal", "none"):
        raise ValueError(f"unknown jitter {jitter!r}")
    return _backoff(initial, maximum, multiplier, jitter, rng)


def _backoff(
    initial: float, maximum: float, multiplier: float, jitter: str, rng: Callable[[], float]
) -> Iterator[float]:
    cap = min(initial, maximum)
    while True:
        if jitter == "full":
            yield rng() * cap
        elif jitter == "equal":
            yield cap / 2 + rng() * cap / 2
        else:
            yield cap
        # Stop growing once at the ceiling: no float overflow on very long retry loops.
        cap = min(maximum, cap * multiplier)


class RetryBudget:
    """Caps retries at a fraction of traffic (the Finagle/Envoy "retry budget").

    Every original request `deposit()`s `ratio` tokens; every retry must `withdraw()` one. Both
    expire after `window_secs`. On top, `min_per_sec * window_secs` retries are always allowed
    per window so a quiet backend can still be retried. When a backend fails hard, retries are
    thus limited to about ratio x requests instead of multiplying the load it is failing under.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_sec: float = 1.0,
        window_secs: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if ratio < 0 or min_per_sec < 0:
            raise ValueError("ratio and min_per_sec must be >= 0")
        self.ratio = ratio
        self.reserve = min_per_sec * window_secs
        self._counts = _SlidingCounts(window_secs, clock)  # (requests, retries)

    def deposit(self) -> None:
        """Record one original (non-retry) request."""
        self._counts.add(1, 0)

    def balance(self) -> float:
        requests, retries = self._counts.totals()
        return self.reserve + self.ratio * requests - retries

    def withdraw(self) -> bool:
        """Take one retry from the budget; False means do not retry."""
        # The epsilon keeps 100 requests x 0.2 worth exactly 20 retries despite float rounding.
        if self.balance() < 1.0 - 1e-9:
            return False
        self._counts.add(0, 1)
        return True


# ---------------------------------------------------------------------------------------------
# Retry safety
# ---------------------------------------------------------------------------------------------

# Requests that change nothing on the server, so a duplicate is harmless. completion/complete
# only computes suggestions, logging/setLevel sets a value (idempotent), initialize is repeated
# by every reconnecting client anyway. Deliberately absent: tools/call (see is_retry_safe),
# resources/subscribe|unsubscribe and subscriptions/listen (stateful streams, re-issued by their
# own logic), responses to server requests, notifications, and anything unknown.
SAFE_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
    }
)


def is_retry_safe(
    method: str,
    *,
    tool: str | None,
    idempotent_tools: Collection[str],
    tool_idempotent_hint: bool,
    trust_hint: bool,
) -> bool:
    """Whether sending `method` twice is harmless.

    ``tools/call`` is safe only when `tool` (the backend's original name) is listed in the
    backend's ``idempotent_tools``, or the tool declares itself idempotent and the backend opts
    in with ``retry_idempotent_hint = true`` (`trust_hint`): annotations are hints from the server,
    not guarantees, so they are not trusted by default. Pass ``tool_idempotent_hint`` as
    ``idempotentHint or readOnlyHint`` (MCP: idempotentHint is meaningful only for tools that are
    not read-only, and a read-only tool is trivially idempotent).
    """
    if method == "tools/call":
        if not tool:
            return False
        return tool in idempotent_tools or (tool_idempotent_hint and trust_hint)
    return method in SAFE_METHODS


_NEVER_RETRY_STATUS = frozenset({501, 505})


def should_retry(exc_or_status: BaseException | int, *, maybe_sent: bool, retry_safe: bool) -> bool:
    """Whether one failed attempt may be repeated (budget and attempt limits are separate).

    * An HTTP status: 5xx only if `retry_safe` (the server got the request and may have acted on
      it), except 501/505 which will not change; 4xx never (429 included: the limit is surfaced
      to the client, not hammered); anything else is not a failure.
    * An exception: transport errors and timeouts (`OSError`, `TimeoutError`, the httpwire
      `HttpError`s) are always retryable when nothing was sent (``maybe_sent=False``: connection
      refused, connect timeout, no pool slot); after sending, only if `retry_safe`. A body over the
      limit is deterministic and never retried; other exceptions (bugs, bad arguments,
      cancellation) never.
    """
    if isinstance(exc_or_status, bool):
        raise TypeError("status must be an int, not a bool")
    if isinstance(exc_or_status, int):
        status = exc_or_status
        if 500 <= status <= 599:
            return retry_safe and status not in _NEVER_RETRY_STATUS
        return False
    # Imported here: only the HTTP backend retries, and stdio-only gateways never load the HTTP code.
    from .httpwire import BodyTooLarge, HttpError

    exc = exc_or_status
    if isinstance(exc, BodyTooLarge):
        return False
    if not isinstance(exc, (HttpError, OSError, TimeoutError)):
        return False
    if not maybe_sent:
        return True
    return retry_safe


# ---------------------------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------------------------


class HealthState(str, Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"


HealthListener = Callable[[HealthState, HealthState], None]


class HealthTracker:
    """Turns health-check results into a state.

    One success -> healthy. `degraded_after` consecutive failures -> degraded,
    `unhealthy_after` -> unhealthy (set both equal to skip degraded). `stop()` -> stopped, after
    which results are ignored until `reset()` (back to starting, e.g. on restart).
    `record()` returns the transition ``(old, new)`` when the state changed, else None, and the
    same pair goes to `on_change`.
    """

    def __init__(
        self,
        unhealthy_after: int = 3,
        degraded_after: int = 1,
        *,
        on_change: HealthListener | None = None,
    ) -> None:
        if degraded_after < 1 or unhealthy_after < degraded_after:
            raise ValueError("need 1 <= degraded_after <= unhealthy_after")
        self.unhealthy_after = unhealthy_after
        self.degraded_after = degraded_after
        self.on_change = on_change
        self._state = HealthState.STARTING
        self.consecutive_failures = 0

    @property
    def state(self) -> HealthState:
        return self._state

    def record(self, ok: bool) -> tuple[HealthState, HealthState] | None:
        if self._state is HealthState.STOPPED:
            return None
        if ok:
            self.consecutive_failures = 0
            return self._set(HealthState.HEALTHY)
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.unhealthy_after:
            return self._set(HealthState.UNHEALTHY)
        if self.consecutive_failures >= self.degraded_after:
            return self._set(HealthState.DEGRADED)
        return None

    def record_success(self) -> tuple[HealthState, HealthState] | None:
        return self.record(True)

    def record_failure(self) -> tuple[HealthState, HealthState] | None:
        return self.record(False)

    def stop(self) -> tuple[HealthState, HealthState] | None:
        return self._set(HealthState.STOPPED)

    def reset(self) -> tuple[HealthState, HealthState] | None:
        self.consecutive_failures = 0
        return self._set(HealthState.STARTING)

    def _set(self, new: HealthState) -> tuple[HealthState, HealthState] | None:
        old = self._state
        if old is new:
            return None
        self._state = new
        if self.on_change is not None:
            try:
                self.on_change(old, new)
            except Exception:
                log.exception("health listener failed")
        return (old, new)
