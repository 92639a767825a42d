"""resilience: breaker, backoff, retry budget, retry safety, health — all on a fake clock."""

from __future__ import annotations

import random

import pytest

from sentinel_gw.httpwire import (
    BodyTooLarge,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    TotalTimeout,
)
from sentinel_gw.resilience import (
    BreakerState,
    CircuitBreaker,
    HealthState,
    HealthTracker,
    RetryBudget,
    backoff_delays,
    is_retry_safe,
    should_retry,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def breaker(clock: FakeClock, **kw: object) -> tuple[CircuitBreaker, list[tuple[BreakerState, BreakerState]]]:
    changes: list[tuple[BreakerState, BreakerState]] = []
    kw.setdefault("failure_rate", None)
    b = CircuitBreaker(clock=clock, on_state_change=lambda old, new: changes.append((old, new)), **kw)  # type: ignore[arg-type]
    return b, changes


# =============================================================================================
# Circuit breaker
# =============================================================================================


def test_opens_after_consecutive_failures() -> None:
    clock = FakeClock()
    b, changes = breaker(clock, failure_threshold=3, cooldown_secs=10)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state is CLOSED
    assert b.consecutive_failures == 2
    b.record_failure()
    assert b.state is OPEN
    assert not b.allow()
    assert b.retry_after() == pytest.approx(10)
    assert changes == [(CLOSED, OPEN)]


def test_success_resets_the_consecutive_count() -> None:
    b, _ = breaker(FakeClock(), failure_threshold=3)
    for _ in range(5):
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.state is CLOSED


def test_opens_on_failure_rate_over_window_with_min_calls() -> None:
    clock = FakeClock()
    b, changes = breaker(clock, failure_threshold=100, failure_rate=0.5, window_secs=60, min_calls=6)
    # 50 % failures but fewer than min_calls: stays closed.
    for _ in range(2):
        b.record_success()
        b.record_failure()
    assert b.state is CLOSED
    assert b.window_counts() == (4, 2)
    b.record_success()
    assert b.state is CLOSED  # 2/5
    b.record_failure()  # 3/6 = 50 %
    assert b.state is OPEN
    assert changes == [(CLOSED, OPEN)]


def test_failure_rate_below_threshold_stays_closed() -> None:
    b, _ = breaker(FakeClock(), failure_threshold=100, failure_rate=0.5, min_calls=4)
    for _ in range(20):
        b.record_success()
        b.record_success()
        b.record_failure()  # 33 %
    assert b.state is CLOSED


def test_old_outcomes_leave_the_window() -> None:
    clock = FakeClock()
    b, _ = breaker(clock, failure_threshold=100, failure_rate=0.5, window_secs=60, min_calls=4)
    for _ in range(3):
        b.record_success()
        b.record_success()
        b.record_failure()  # 1 in 3: under 50 %
    assert b.window_counts() == (9, 3)
    clock.advance(120)
    assert b.window_counts() == (0, 0)
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state is CLOSED  # 2/3 but only 3 calls in the window
    b.record_failure()
    assert b.state is OPEN  # 3/4


def test_half_open_admits_exactly_one_probe() -> None:
    clock = FakeClock()
    b, changes = breaker(clock, failure_threshold=1, cooldown_secs=30)
    b.record_failure()
    clock.advance(29.9)
    assert not b.allow()
    assert b.retry_after() == pytest.approx(0.1)
    clock.advance(0.1)
    assert b.state is OPEN  # does not move until someone asks
    assert b.allow()  # the probe
    assert b.state is HALF_OPEN
    assert not b.allow()
    assert not b.allow()
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_probe_failure_reopens_for_a_new_cooldown() -> None:
    clock = FakeClock()
    b, changes = breaker(clock, failure_threshold=1, cooldown_secs=30)
    b.record_failure()
    clock.advance(30)
    assert b.allow()
    b.record_failure()
    assert b.state is OPEN
    assert b.retry_after() == pytest.approx(30)
    assert not b.allow()
    clock.advance(30)
    assert b.allow()
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (OPEN, HALF_OPEN)]


def test_probe_success_closes_and_resets_counters() -> None:
    clock = FakeClock()
    b, changes = breaker(clock, failure_threshold=2, failure_rate=0.5, min_calls=2, cooldown_secs=5)
    b.record_failure()
    b.record_failure()
    assert b.state is OPEN
    clock.advance(5)
    assert b.allow()
    b.record_success()
    assert b.state is CLOSED
    assert b.consecutive_failures == 0
    assert b.window_counts() == (0, 0)
    assert b.allow()
    assert b.allow()
    b.record_failure()  # one failure after closing: counters started over
    assert b.state is CLOSED
    assert changes[-1] == (HALF_OPEN, CLOSED)


def test_released_probe_frees_the_slot() -> None:
    clock = FakeClock()
    b, _ = breaker(clock, failure_threshold=1, cooldown_secs=5)
    b.record_failure()
    clock.advance(5)
    assert b.allow()
    assert not b.allow()
    b.release()  # e.g. the client cancelled the probe
    assert b.allow()
    assert not b.allow()


def test_lost_probe_expires() -> None:
    clock = FakeClock()
    b, _ = breaker(clock, failure_threshold=1, cooldown_secs=5, probe_timeout_secs=20)
    b.record_failure()
    clock.advance(5)
    assert b.allow()
    clock.advance(19)
    assert not b.allow()
    assert b.retry_after() == pytest.approx(1)
    clock.advance(1)
    assert b.allow()


def test_outcomes_while_open_change_nothing() -> None:
    clock = FakeClock()
    b, changes = breaker(clock, failure_threshold=1, cooldown_secs=10)
    b.record_failure()
    clock.advance(5)
    b.record_success()  # a late answer to a request admitted before opening
    b.record_failure()
    assert b.state is OPEN
    assert b.retry_after() == pytest.approx(5)
    assert changes == [(CLOSED, OPEN)]


def test_listener_errors_do_not_break_the_breaker() -> None:
    def boom(_old: BreakerState, _new: BreakerState) -> None:
        raise RuntimeError("metrics down")

    b = CircuitBreaker(failure_threshold=1, failure_rate=None, clock=FakeClock(), on_state_change=boom)
    b.record_failure()
    assert b.state is OPEN


def test_closed_breaker_allows_and_has_no_retry_after() -> None:
    b, _ = breaker(FakeClock())
    assert b.allow()
    assert b.retry_after() == 0.0
    assert b.state == "closed"


@pytest.mark.parametrize(
    "kw",
    [
        {"failure_threshold": 0},
        {"failure_rate": 0.0},
        {"failure_rate": 1.5},
        {"min_calls": 0},
        {"window_secs": 0},
    ],
)
def test_breaker_rejects_bad_settings(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kw)  # type: ignore[arg-type]


# =============================================================================================
# Backoff
# =============================================================================================


def _take(it: object, n: int) -> list[float]:
    return [next(it) for _ in range(n)]  # type: ignore[call-overload]


def test_full_jitter_caps_grow_to_the_maximum() -> None:
    assert _take(backoff_delays(0.1, 1.0, rng=lambda: 1.0), 6) == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert _take(backoff_delays(0.1, 1.0, rng=lambda: 0.0), 4) == [0.0, 0.0, 0.0, 0.0]
    assert _take(backoff_delays(0.5, 10.0, multiplier=3, rng=lambda: 0.5), 4) == pytest.approx(
        [0.25, 0.75, 2.25, 5.0]
    )


def test_full_jitter_stays_within_bounds() -> None:
    rng = random.Random(7)
    delays = _take(backoff_delays(0.05, 2.0, rng=rng.random), 200)
    for n, d in enumerate(delays):
        assert 0.0 <= d <= min(2.0, 0.05 * 2**n)
    assert len(set(delays)) > 150  # actually jittered


def test_other_jitter_modes() -> None:
    assert _take(backoff_delays(1, 4, jitter="none"), 4) == [1, 2, 4, 4]
    assert _take(backoff_delays(1, 4, jitter="equal", rng=lambda: 0.0), 3) == [0.5, 1.0, 2.0]
    assert _take(backoff_delays(1, 4, jitter="equal", rng=lambda: 1.0), 3) == [1.0, 2.0, 4.0]


def test_backoff_survives_many_attempts() -> None:
    it = backoff_delays(1.0, 30.0, rng=lambda: 1.0)
    assert _take(it, 5000)[-1] == 30.0


@pytest.mark.parametrize(
    "kw", [{"jitter": "sometimes"}, {"multiplier": 0.5}, {"initial": -1.0}, {"maximum": -1.0}]
)
def test_backoff_rejects_bad_settings(kw: dict[str, object]) -> None:
    args: dict[str, object] = {"initial": 0.1, "maximum": 1.0, **kw}
    with pytest.raises(ValueError):
        backoff_delays(args.pop("initial"), args.pop("maximum"), **args)  # type: ignore[arg-type]


# =============================================================================================
# Retry budget
# =============================================================================================


def test_budget_reserve_allows_a_few_retries_on_a_quiet_backend() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_sec=0.5, window_secs=10, clock=clock)
    granted = [budget.withdraw() for _ in range(10)]
    assert granted.count(True) == 5  # 0.5/s over 10 s
    assert not budget.withdraw()


def test_budget_caps_retries_at_a_fraction_of_traffic() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_sec=0.0, window_secs=10, clock=clock)
    for _ in range(100):
        budget.deposit()
    granted = sum(budget.withdraw() for _ in range(100))
    assert granted == 20
    assert budget.balance() < 1


def test_budget_recovers_after_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_sec=0.1, window_secs=10, clock=clock)
    while budget.withdraw():
        pass
    assert not budget.withdraw()
    clock.advance(11)
    assert budget.withdraw()


def test_budget_rejects_negative_settings() -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio=-0.1)


# =============================================================================================
# Retry safety
# =============================================================================================

IDEM = frozenset({"search", "get_page"})


@pytest.mark.parametrize(
    ("method", "tool", "hint", "trust", "expected"),
    [
        ("initialize", None, False, False, True),
        ("ping", None, False, False, True),
        ("tools/list", None, False, False, True),
        ("resources/list", None, False, False, True),
        ("resources/templates/list", None, False, False, True),
        ("resources/read", None, False, False, True),
        ("prompts/list", None, False, False, True),
        ("prompts/get", None, False, False, True),
        ("completion/complete", None, False, False, True),
        ("logging/setLevel", None, False, False, True),
        ("tools/call", "search", False, False, True),  # listed in idempotent_tools
        ("tools/call", "delete_repo", False, False, False),
        ("tools/call", "delete_repo", True, False, False),  # hint not trusted by default
        ("tools/call", "lookup", True, True, True),  # hint + backend opted in
        ("tools/call", "lookup", False, True, False),
        ("tools/call", None, True, True, False),
        ("tools/call", "", False, False, False),
        ("resources/subscribe", None, False, False, False),
        ("subscriptions/listen", None, False, False, False),
        ("sampling/createMessage", None, False, False, False),
        ("notifications/initialized", None, False, False, False),
        ("tasks/cancel", None, False, False, False),
        ("made/up", None, False, False, False),
    ],
)
def test_retry_safety_table(method: str, tool: str | None, hint: bool, trust: bool, expected: bool) -> None:
    got = is_retry_safe(method, tool=tool, idempotent_tools=IDEM, tool_idempotent_hint=hint, trust_hint=trust)
    assert got is expected


@pytest.mark.parametrize(
    ("outcome", "maybe_sent", "safe", "expected"),
    [
        # Nothing sent: always repeatable.
        (ConnectError("refused"), False, False, True),
        (ConnectTimeout("slow connect"), False, False, True),
        (PoolTimeout("no slot"), False, False, True),
        (TotalTimeout("before connect", maybe_sent=False), False, False, True),
        (ConnectionRefusedError(), False, False, True),
        # Possibly sent: only when the request is safe to repeat.
        (ReadTimeout("slow"), True, False, False),
        (ReadTimeout("slow"), True, True, True),
        (TotalTimeout("deadline", maybe_sent=True), True, False, False),
        (ConnectionLost("reset"), True, False, False),
        (ConnectionLost("reset"), True, True, True),
        (ConnectionResetError(), True, True, True),
        (ProtocolError("garbage"), True, True, True),
        (ProtocolError("garbage"), True, False, False),
        (TimeoutError(), True, True, True),
        # Never.
        (BodyTooLarge("big"), True, True, False),
        (ValueError("bug"), False, True, False),
        (RuntimeError("bug"), True, True, False),
        # Statuses.
        (500, True, True, True),
        (502, True, True, True),
        (503, True, True, True),
        (504, True, True, True),
        (500, True, False, False),
        (503, True, False, False),
        (501, True, True, False),
        (505, True, True, False),
        (400, True, True, False),
        (404, True, True, False),
        (408, True, True, False),
        (429, True, True, False),
        (200, True, True, False),
        (302, True, True, False),
    ],
)
def test_should_retry_table(
    outcome: BaseException | int, maybe_sent: bool, safe: bool, expected: bool
) -> None:
    assert should_retry(outcome, maybe_sent=maybe_sent, retry_safe=safe) is expected


def test_should_retry_rejects_bool_status() -> None:
    with pytest.raises(TypeError):
        should_retry(True, maybe_sent=False, retry_safe=True)


# =============================================================================================
# Health
# =============================================================================================


def test_health_transitions() -> None:
    seen: list[tuple[HealthState, HealthState]] = []
    h = HealthTracker(unhealthy_after=3, degraded_after=1, on_change=lambda o, n: seen.append((o, n)))
    assert h.state is HealthState.STARTING
    assert h.record(True) == (HealthState.STARTING, HealthState.HEALTHY)
    assert h.record(True) is None
    assert h.record(False) == (HealthState.HEALTHY, HealthState.DEGRADED)
    assert h.record(False) is None
    assert h.record(False) == (HealthState.DEGRADED, HealthState.UNHEALTHY)
    assert h.record(False) is None
    assert h.consecutive_failures == 4
    assert h.record_success() == (HealthState.UNHEALTHY, HealthState.HEALTHY)
    assert h.consecutive_failures == 0
    assert h.stop() == (HealthState.HEALTHY, HealthState.STOPPED)
    assert h.record(True) is None  # ignored once stopped
    assert h.state is HealthState.STOPPED
    assert h.reset() == (HealthState.STOPPED, HealthState.STARTING)
    assert h.record_failure() == (HealthState.STARTING, HealthState.DEGRADED)
    assert seen[0] == (HealthState.STARTING, HealthState.HEALTHY)
    assert len(seen) == 7


def test_health_without_degraded_step() -> None:
    h = HealthTracker(unhealthy_after=2, degraded_after=2)
    h.record(True)
    assert h.record(False) is None
    assert h.state is HealthState.HEALTHY
    assert h.record(False) == (HealthState.HEALTHY, HealthState.UNHEALTHY)


def test_health_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        HealthTracker(unhealthy_after=1, degraded_after=2)
    with pytest.raises(ValueError):
        HealthTracker(degraded_after=0)
