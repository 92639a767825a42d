"""Rate limits: bucket and window arithmetic, the limiter's rules, reloads and memory bounds."""

from __future__ import annotations

import pytest

from sentinel_gw.config_schema import LimitConfig, RateLimitConfig
from sentinel_gw.policy.limits import (
    ALLOWED,
    MAX_SLIDING_REQUESTS,
    LimitDecision,
    RateLimiter,
    SlidingWindow,
    TokenBucket,
)

TB = "token_bucket"
SW = "sliding_window"


def cfg(
    algorithm: str = TB,
    default: LimitConfig | None = None,
    tools: dict[str, LimitConfig] | None = None,
    roles: dict[str, LimitConfig] | None = None,
    subject: LimitConfig | None = None,
) -> RateLimitConfig:
    return RateLimitConfig(
        algorithm=algorithm,  # type: ignore[arg-type]
        default=default,
        tools=tools or {},
        roles=roles or {},
        subject=subject,
    )


def drain(
    limiter: RateLimiter,
    n: int,
    *,
    subject: str = "alice",
    roles: tuple[str, ...] = (),
    tool: str = "t",
    now: float = 0.0,
) -> list[bool]:
    return [limiter.check(subject, roles, tool, now=now).allowed for _ in range(n)]


# --- TokenBucket -------------------------------------------------------------------------------


def test_bucket_starts_full_and_refills_at_rate() -> None:
    b = TokenBucket(6, 60.0)  # one token every 10 s
    assert [b.try_acquire(0.0) for _ in range(6)] == [0.0] * 6
    assert b.try_acquire(0.0) == pytest.approx(10.0)
    assert b.try_acquire(5.0) == pytest.approx(5.0)
    assert b.try_acquire(10.0) == 0.0
    assert b.try_acquire(10.0) == pytest.approx(10.0)


def test_bucket_burst_is_capacity() -> None:
    b = TokenBucket(6, 60.0, burst=2)
    assert [b.try_acquire(0.0) == 0.0 for _ in range(3)] == [True, True, False]
    # a long idle period refills only up to the burst
    assert [b.try_acquire(1000.0) == 0.0 for _ in range(3)] == [True, True, False]


def test_bucket_burst_larger_than_requests() -> None:
    b = TokenBucket(1, 60.0, burst=5)
    assert [b.try_acquire(0.0) == 0.0 for _ in range(6)] == [True] * 5 + [False]
    assert b.retry_after(0.0) == pytest.approx(60.0)


def test_bucket_refusal_consumes_nothing() -> None:
    b = TokenBucket(1, 10.0)
    assert b.try_acquire(0.0) == 0.0
    for _ in range(100):
        assert b.try_acquire(1.0) == pytest.approx(9.0)
    assert b.try_acquire(10.0) == 0.0


def test_bucket_peek_is_retry_after_and_does_not_consume() -> None:
    b = TokenBucket(2, 10.0)
    assert b.peek(0.0) == 0.0 and b.peek(0.0) == 0.0
    assert b.available(0.0) == 2.0
    b.consume(0.0)
    assert b.available(0.0) == 1.0


@pytest.mark.parametrize(("requests", "window"), [(3, 1.0), (7, 60.0), (1000, 3.3), (5, 0.1), (60, 60.0)])
def test_bucket_retry_after_is_exactly_enough(requests: int, window: float) -> None:
    b = TokenBucket(requests, window)
    now = 0.0
    for _ in range(requests):
        assert b.try_acquire(now) == 0.0
    for _ in range(50):
        wait = b.try_acquire(now)
        assert wait > 0.0
        now += wait
        assert b.try_acquire(now) == 0.0  # waiting the advertised time is always enough


def test_bucket_clock_stepping_back_does_not_refill() -> None:
    b = TokenBucket(1, 10.0, now=100.0)
    assert b.try_acquire(100.0) == 0.0
    assert b.try_acquire(50.0) > 0.0
    assert b.try_acquire(105.0) == pytest.approx(5.0)


def test_bucket_idle_means_full() -> None:
    b = TokenBucket(2, 10.0)
    assert b.idle(0.0)
    b.consume(0.0)
    assert not b.idle(4.9)
    assert b.idle(5.0)


@pytest.mark.parametrize(
    ("requests", "window", "burst"),
    [
        (0, 1.0, 0),
        (-1, 1.0, 0),
        (1, 0.0, 0),
        (1, -1.0, 0),
        (1, float("inf"), 0),
        (1, 1.0, -1),
        (True, 1.0, 0),
    ],
)
def test_bucket_rejects_bad_numbers(requests: int, window: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(requests, window, burst)


# --- SlidingWindow -----------------------------------------------------------------------------


def test_window_has_no_boundary_burst() -> None:
    # the original's fixed window allowed 10 here: 5 just before the boundary, 5 just after
    w = SlidingWindow(5, 60.0)
    assert [w.try_acquire(59.9) == 0.0 for _ in range(5)] == [True] * 5
    assert [w.try_acquire(60.1) == 0.0 for _ in range(5)] == [False] * 5
    assert w.retry_after(60.1) == pytest.approx(59.8)
    assert w.try_acquire(119.9) == 0.0


def test_window_any_interval_holds_at_most_requests() -> None:
    w = SlidingWindow(3, 10.0)
    admitted: list[float] = []
    now = 0.0
    while now < 100.0:
        if w.try_acquire(now) == 0.0:
            admitted.append(now)
        now = round(now + 0.7, 6)
    for t in admitted:
        assert sum(1 for u in admitted if t <= u < t + 10.0) <= 3
    assert len(admitted) >= 3 * 9  # and it is not stingy either


def test_window_event_expires_exactly_after_window() -> None:
    w = SlidingWindow(1, 10.0)
    assert w.try_acquire(5.0) == 0.0
    assert w.try_acquire(14.999) == pytest.approx(0.001)
    assert w.try_acquire(15.0) == 0.0


@pytest.mark.parametrize("window", [0.3, 1.0, 7.7, 60.0])
def test_window_retry_after_is_exactly_enough(window: float) -> None:
    w = SlidingWindow(4, window)
    now = 0.0
    for i in range(40):
        wait = w.try_acquire(now)
        if wait > 0.0:
            now += wait
            assert w.try_acquire(now) == 0.0
        now += 0.013 * i


def test_window_refusal_records_nothing_and_stays_bounded() -> None:
    w = SlidingWindow(3, 10.0)
    for _ in range(1000):
        w.try_acquire(1.0)
    assert len(w.events) == 3
    w.consume(1.0)  # misuse: consume after a refusal still cannot grow the log
    assert len(w.events) == 3


def test_window_used_and_idle() -> None:
    w = SlidingWindow(3, 10.0)
    assert w.idle(0.0) and w.used(0.0) == 0
    w.consume(1.0)
    w.consume(2.0)
    assert w.used(5.0) == 2 and not w.idle(5.0)
    assert w.used(11.5) == 1
    assert w.idle(12.0)


def test_window_size_cap() -> None:
    SlidingWindow(MAX_SLIDING_REQUESTS, 1.0)
    with pytest.raises(ValueError, match="token_bucket"):
        SlidingWindow(MAX_SLIDING_REQUESTS + 1, 1.0)
    with pytest.raises(ValueError, match=r"rate_limits\.default"):
        RateLimiter(cfg(SW, default=LimitConfig(requests=MAX_SLIDING_REQUESTS + 1)))


# --- RateLimiter: rules ------------------------------------------------------------------------


def test_no_config_is_unlimited() -> None:
    rl = RateLimiter(cfg())
    assert all(drain(rl, 1000))
    assert rl.key_counts() == (0, 0)


def test_default_applies_per_subject_and_tool() -> None:
    rl = RateLimiter(cfg(default=LimitConfig(requests=2)))
    assert drain(rl, 3) == [True, True, False]
    assert drain(rl, 3, tool="other") == [True, True, False]
    assert drain(rl, 3, subject="bob") == [True, True, False]


@pytest.mark.parametrize("algorithm", [TB, SW])
def test_decision_fields(algorithm: str) -> None:
    rl = RateLimiter(cfg(algorithm, tools={"search": LimitConfig(requests=1, window_secs=10.0)}))
    assert rl.check("a", (), "search", now=0.0) is ALLOWED
    d = rl.check("a", (), "search", now=2.5)
    assert d == LimitDecision(False, 7500, "rate_limits.tools.search")


def test_retry_after_ms_rounds_up_and_is_at_least_one() -> None:
    rl = RateLimiter(cfg(tools={"t": LimitConfig(requests=1, window_secs=1.0)}))
    assert rl.check("a", (), "t", now=0.0).allowed
    assert rl.check("a", (), "t", now=0.0001234).retry_after_ms == 1000  # 999.8766 ms -> 1000
    assert rl.check("a", (), "t", now=0.9999999).retry_after_ms == 1
    assert rl.check("a", (), "t", now=1.0).allowed


@pytest.mark.parametrize("algorithm", [TB, SW])
@pytest.mark.parametrize(
    ("requests", "window", "burst"), [(1, 1.0, 0), (5, 60.0, 0), (7, 3.3, 2), (100, 0.5, 0)]
)
def test_waiting_retry_after_ms_is_always_enough(
    algorithm: str, requests: int, window: float, burst: int
) -> None:
    rl = RateLimiter(cfg(algorithm, default=LimitConfig(requests=requests, window_secs=window, burst=burst)))
    now = 0.0
    refusals = 0
    for i in range(300):
        d = rl.check("a", (), "t", now=now)
        if not d.allowed:
            refusals += 1
            now += d.retry_after_ms / 1000.0
            assert rl.check("a", (), "t", now=now).allowed
        now += (i % 3) * 0.001
    assert refusals > 0


ROLE_CFG = cfg(
    default=LimitConfig(requests=1),
    tools={"search": LimitConfig(requests=5)},
    roles={
        "viewer": LimitConfig(requests=2),
        "editor": LimitConfig(requests=3),
        "bursty": LimitConfig(requests=1, window_secs=30.0, burst=4),  # rate 2/min, burst 4
        "same_a": LimitConfig(requests=2, window_secs=60.0, burst=3),
        "same_b": LimitConfig(requests=2, window_secs=60.0, burst=3),
    },
)


@pytest.mark.parametrize(
    ("roles", "tool", "allowed", "rule"),
    [
        ((), "search", 5, "rate_limits.tools.search"),  # tool override beats everything
        (("editor",), "search", 5, "rate_limits.tools.search"),
        ((), "other", 1, "rate_limits.default"),
        (("unknown",), "other", 1, "rate_limits.default"),
        (("viewer",), "other", 2, "rate_limits.roles.viewer"),
        (("viewer", "editor"), "other", 3, "rate_limits.roles.editor"),  # most generous
        (("editor", "viewer"), "other", 3, "rate_limits.roles.editor"),  # order does not matter
        (("viewer", "bursty"), "other", 4, "rate_limits.roles.bursty"),  # same rate, bigger burst
        (("editor", "bursty"), "other", 3, "rate_limits.roles.editor"),  # higher rate wins over burst
        (("same_b", "same_a"), "other", 3, "rate_limits.roles.same_a"),  # tie: first role name
    ],
)
def test_override_precedence(roles: tuple[str, ...], tool: str, allowed: int, rule: str) -> None:
    rl = RateLimiter(ROLE_CFG)
    assert drain(rl, allowed + 1, roles=roles, tool=tool) == [True] * allowed + [False]
    assert rl.check("alice", roles, tool, now=0.0).rule == rule


def test_tool_without_override_or_default_is_unlimited_even_with_role_limits() -> None:
    rl = RateLimiter(cfg(roles={"viewer": LimitConfig(requests=1)}))
    assert all(drain(rl, 10, roles=("editor",)))
    assert drain(rl, 2, roles=("viewer",)) == [True, False]


def test_subject_limit_spans_tools() -> None:
    rl = RateLimiter(cfg(subject=LimitConfig(requests=3)))
    assert [rl.check("a", (), t, now=0.0).allowed for t in ("x", "y", "z", "w")] == [True, True, True, False]
    d = rl.check("a", (), "x", now=0.0)
    assert d.rule == "rate_limits.subject" and d.retry_after_ms == 20_000
    assert rl.check("b", (), "x", now=0.0).allowed


def test_subject_refusal_leaves_tool_tokens_untouched() -> None:
    rl = RateLimiter(
        cfg(
            tools={"t": LimitConfig(requests=2, window_secs=10.0)},
            subject=LimitConfig(requests=1, window_secs=100.0),
        )
    )
    assert rl.check("a", (), "other", now=0.0).allowed  # uses the subject's only token
    for _ in range(50):
        d = rl.check("a", (), "t", now=0.0)
        assert not d.allowed and d.rule == "rate_limits.subject"
    assert rl.key_counts() == (0, 1)  # a refusal creates no per-tool state at all
    rl.reconfigure(cfg(tools={"t": LimitConfig(requests=2, window_secs=10.0)}))  # lift the subject limit
    assert drain(rl, 3, subject="a") == [True, True, False]  # per-tool tokens were never spent


def test_tool_refusal_leaves_subject_tokens_untouched() -> None:
    rl = RateLimiter(
        cfg(tools={"t": LimitConfig(requests=1)}, subject=LimitConfig(requests=3, window_secs=60.0))
    )
    assert rl.check("a", (), "t", now=0.0).allowed
    for _ in range(50):
        d = rl.check("a", (), "t", now=0.0)
        assert not d.allowed and d.rule == "rate_limits.tools.t"
    assert [rl.check("a", (), f"x{i}", now=0.0).allowed for i in range(3)] == [True, True, False]


def test_refusal_reports_the_longest_wait() -> None:
    rl = RateLimiter(
        cfg(
            tools={"t": LimitConfig(requests=1, window_secs=10.0)},
            subject=LimitConfig(requests=2, window_secs=100.0),
        )
    )
    assert rl.check("a", (), "t", now=0.0).allowed
    assert rl.check("a", (), "u", now=0.0).allowed
    d = rl.check("a", (), "t", now=1.0)  # tool: 9 s, subject: 49 s
    assert d == LimitDecision(False, 49_000, "rate_limits.subject")
    d = rl.check("a", (), "t", now=60.0)  # subject has one token again; tool too
    assert d is ALLOWED


def test_check_without_consume() -> None:
    rl = RateLimiter(cfg(default=LimitConfig(requests=1), subject=LimitConfig(requests=1)))
    for _ in range(5):
        assert rl.check("a", (), "t", now=0.0, consume=False) is ALLOWED
    assert rl.key_counts() == (0, 0)
    assert rl.check("a", (), "t", now=0.0).allowed
    assert not rl.check("a", (), "t", now=0.0, consume=False).allowed


def test_sliding_window_limiter_no_boundary_burst() -> None:
    rl = RateLimiter(cfg(SW, default=LimitConfig(requests=5, window_secs=60.0)))
    assert drain(rl, 5, now=59.9) == [True] * 5
    assert drain(rl, 5, now=60.1) == [False] * 5
    assert rl.check("alice", (), "t", now=60.1).retry_after_ms == 59_800


def test_roles_change_with_different_limit_starts_fresh() -> None:
    rl = RateLimiter(cfg(roles={"viewer": LimitConfig(requests=1), "editor": LimitConfig(requests=2)}))
    assert drain(rl, 2, roles=("viewer",)) == [True, False]
    assert drain(rl, 3, roles=("editor",)) == [True, True, False]


def test_equal_limit_through_another_rule_keeps_state() -> None:
    rl = RateLimiter(cfg(default=LimitConfig(requests=2), roles={"viewer": LimitConfig(requests=2)}))
    assert drain(rl, 2) == [True, True]
    assert drain(rl, 1, roles=("viewer",)) == [False]  # same limit: switching rules is no reset


@pytest.mark.parametrize(
    "bad",
    [
        cfg(default=LimitConfig(requests=0)),
        cfg(tools={"t": LimitConfig(requests=1, window_secs=0.0)}),
        cfg(roles={"r": LimitConfig(requests=1, burst=-1)}),
        cfg(subject=LimitConfig(requests=-5)),
        cfg(algorithm="leaky_bucket", default=LimitConfig(requests=1)),
    ],
)
def test_invalid_config(bad: RateLimitConfig) -> None:
    with pytest.raises(ValueError, match="rate_limits"):
        RateLimiter(bad)


# --- reconfigure -------------------------------------------------------------------------------


def test_reconfigure_keeps_unchanged_and_resets_changed() -> None:
    old = cfg(
        default=LimitConfig(requests=2),
        tools={
            "same": LimitConfig(requests=2),
            "changed": LimitConfig(requests=2),
            "removed": LimitConfig(requests=2),
        },
        roles={"viewer": LimitConfig(requests=2)},
    )
    rl = RateLimiter(old)
    for tool in ("same", "changed", "removed", "plain"):
        assert drain(rl, 3, tool=tool) == [True, True, False]
    assert drain(rl, 3, tool="byrole", roles=("viewer",)) == [True, True, False]
    new = cfg(
        default=LimitConfig(requests=2),
        tools={"same": LimitConfig(requests=2), "changed": LimitConfig(requests=2, window_secs=30.0)},
        roles={"viewer": LimitConfig(requests=2)},
    )
    rl.reconfigure(new)
    assert drain(rl, 1, tool="same") == [False]  # unchanged override: state kept
    assert drain(rl, 1, tool="plain") == [False]  # unchanged default: state kept
    assert drain(rl, 1, tool="byrole", roles=("viewer",)) == [False]  # unchanged role: kept
    assert drain(rl, 3, tool="changed") == [True, True, False]  # changed: fresh
    assert drain(rl, 3, tool="removed") == [True, True, False]  # now under the default: fresh


def test_reconfigure_burst_change_resets() -> None:
    rl = RateLimiter(cfg(default=LimitConfig(requests=2)))
    drain(rl, 2)
    rl.reconfigure(cfg(default=LimitConfig(requests=2, burst=3)))
    assert drain(rl, 4) == [True, True, True, False]


def test_reconfigure_removed_limit_drops_state() -> None:
    rl = RateLimiter(cfg(default=LimitConfig(requests=1), subject=LimitConfig(requests=5)))
    drain(rl, 3)
    assert rl.key_counts() == (1, 1)
    rl.reconfigure(cfg())
    assert rl.key_counts() == (0, 0)
    assert all(drain(rl, 10))


def test_reconfigure_subject_limit() -> None:
    rl = RateLimiter(cfg(subject=LimitConfig(requests=2)))
    drain(rl, 2)
    rl.reconfigure(cfg(subject=LimitConfig(requests=2), default=LimitConfig(requests=9)))
    assert drain(rl, 1) == [False]  # subject spec unchanged: kept
    rl.reconfigure(cfg(subject=LimitConfig(requests=3)))
    assert drain(rl, 4) == [True, True, True, False]  # changed: fresh


def test_reconfigure_algorithm_change_resets_everything() -> None:
    rl = RateLimiter(cfg(default=LimitConfig(requests=1), subject=LimitConfig(requests=1)))
    drain(rl, 1)
    rl.reconfigure(cfg(SW, default=LimitConfig(requests=1), subject=LimitConfig(requests=1)))
    assert rl.key_counts() == (0, 0)
    assert drain(rl, 2) == [True, False]


def test_reconfigure_sliding_window_ignores_burst() -> None:
    rl = RateLimiter(cfg(SW, default=LimitConfig(requests=1, burst=5)))
    drain(rl, 1)
    rl.reconfigure(cfg(SW, default=LimitConfig(requests=1, burst=7)))  # burst means nothing here
    assert drain(rl, 1) == [False]


def test_invalid_reconfigure_changes_nothing() -> None:
    rl = RateLimiter(cfg(default=LimitConfig(requests=1)))
    drain(rl, 1)
    with pytest.raises(ValueError):
        rl.reconfigure(cfg(default=LimitConfig(requests=0)))
    assert drain(rl, 1) == [False]
    assert rl.key_counts() == (1, 0)


# --- memory bounds -----------------------------------------------------------------------------


def test_eviction_bounds_memory_with_200k_subjects() -> None:
    rl = RateLimiter(cfg(default=LimitConfig(requests=10), subject=LimitConfig(requests=100)))
    cap = 100_000
    for i in range(200_000):
        # all within one window: nothing is idle, so the cap must do the work
        assert rl.check(f"s{i}", (), "t", now=i * 1e-4).allowed
    pairs, subjects = rl.key_counts()
    assert pairs <= cap and subjects <= cap


def test_idle_entries_are_dropped_on_insert() -> None:
    rl = RateLimiter(cfg(default=LimitConfig(requests=10, window_secs=1.0)))
    for i in range(10_000):
        rl.check(f"s{i}", (), "t", now=float(i))  # each bucket is full again 0.1 s later
    assert rl.key_counts()[0] <= 2


def test_idle_sliding_windows_are_dropped_on_insert() -> None:
    rl = RateLimiter(cfg(SW, default=LimitConfig(requests=10, window_secs=1.0)))
    for i in range(10_000):
        rl.check(f"s{i}", (), "t", now=float(i) * 2)
    assert rl.key_counts()[0] <= 2


def test_cap_evicts_idle_before_busy() -> None:
    rl = RateLimiter(
        cfg(
            tools={
                "slow": LimitConfig(requests=1, window_secs=1000.0),
                "fast": LimitConfig(requests=1, window_secs=1.0),
            }
        ),
        max_keys=3,
    )
    assert rl.check("busy", (), "slow", now=0.0).allowed  # oldest, not idle for 1000 s
    assert rl.check("x", (), "fast", now=0.0).allowed
    assert rl.check("y", (), "fast", now=0.0).allowed
    assert rl.check("z", (), "fast", now=5.0).allowed  # at the cap: an idle one goes, not "busy"
    assert not rl.check("busy", (), "slow", now=5.0).allowed
    assert rl.key_counts()[0] == 3


def test_cap_evicts_least_recently_used_when_none_idle() -> None:
    rl = RateLimiter(cfg(default=LimitConfig(requests=1, window_secs=1000.0)), max_keys=2)
    assert rl.check("a", (), "t", now=0.0).allowed
    assert rl.check("b", (), "t", now=0.0).allowed
    assert not rl.check("a", (), "t", now=1.0).allowed  # touches "a": "b" is now the oldest
    assert rl.check("c", (), "t", now=2.0).allowed  # evicts "b"
    assert rl.key_counts()[0] == 2
    assert not rl.check("a", (), "t", now=3.0).allowed  # kept
    assert rl.check("b", (), "t", now=3.0).allowed  # forgotten (fails open for the stale key)


# --- explain -----------------------------------------------------------------------------------


def test_explain_describes_and_consumes_nothing() -> None:
    rl = RateLimiter(
        cfg(
            roles={"viewer": LimitConfig(requests=2), "editor": LimitConfig(requests=4, burst=8)},
            subject=LimitConfig(requests=10),
        )
    )
    assert rl.check("a", ("viewer", "editor"), "search", now=0.0).allowed
    lines = rl.explain("a", ("viewer", "editor"), "search", 0.0)
    assert lines == [
        "rate_limits.roles.editor: token_bucket 4 per 60s (burst 8) per (subject, tool) "
        "(most generous of roles editor, viewer); 7.00 of 8 tokens available",
        "rate_limits.subject: token_bucket 10 per 60s across all tools; 9.00 of 10 tokens available",
        "verdict: a call now would be allowed",
    ]
    assert rl.explain("a", ("viewer", "editor"), "search", 0.0) == lines  # nothing consumed


def test_explain_refused_and_unlimited() -> None:
    rl = RateLimiter(cfg(SW, tools={"t": LimitConfig(requests=1, window_secs=10.0)}))
    rl.check("a", (), "t", now=0.0)
    assert rl.explain("a", (), "t", 4.0) == [
        "rate_limits.tools.t: sliding_window 1 per 10s per (subject, tool); 1 of 1 used in the last 10s, "
        "next allowed in 6.000s",
        "rate_limits.subject: unlimited",
        "verdict: a call now would be refused by rate_limits.tools.t, retry after 6000 ms",
    ]
    assert rl.explain("a", (), "u", 4.0)[0].startswith("per (subject, tool): unlimited")


def test_reserve_counts_nothing_until_commit() -> None:
    lim = RateLimiter(cfg(default=LimitConfig(requests=2, window_secs=60), subject=LimitConfig(3, 60)))
    held = lim.reserve("alice", (), "t", now=0.0)
    assert not isinstance(held, LimitDecision)
    for _ in range(5):  # reservations alone never spend anything (a call refused for its arguments)
        assert not isinstance(lim.reserve("alice", (), "t", now=0.0), LimitDecision)
    lim.commit(held, 0.0)
    lim.commit(lim.reserve("alice", (), "t", now=0.0), 0.0)  # type: ignore[arg-type]
    refused = lim.reserve("alice", (), "t", now=0.0)
    assert isinstance(refused, LimitDecision) and refused.rule == "rate_limits.default"
    lim.commit(lim.reserve("alice", (), "u", now=0.0), 0.0)  # type: ignore[arg-type]
    refused = lim.reserve("alice", (), "v", now=0.0)  # the subject's 3 are spent across tools
    assert isinstance(refused, LimitDecision) and refused.rule == "rate_limits.subject"


def test_commit_after_eviction_still_counts() -> None:
    """A reservation whose state was evicted before the commit counts against fresh state, never
    against a detached entry (which would silently let the call through uncounted)."""
    lim = RateLimiter(cfg(default=LimitConfig(requests=2, window_secs=60)), max_keys=1)
    assert lim.check("bob", (), "t", now=0.0).allowed
    held = lim.reserve("bob", (), "t", now=0.0)
    assert lim.check("carol", (), "t", now=0.0).allowed  # evicts bob's state (max_keys=1)
    lim.commit(held, 0.0)  # type: ignore[arg-type]
    assert lim.check("bob", (), "t", now=0.0).allowed
    assert not lim.check("bob", (), "t", now=0.0).allowed
