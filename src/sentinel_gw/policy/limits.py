"""Rate limits: pure arithmetic over an injected clock (`now` = seconds from `time.monotonic()`).

Two algorithms, chosen by `rate_limits.algorithm`:

- `TokenBucket`: `requests / window_secs` tokens per second, at most `burst` (or `requests`) saved up.
- `SlidingWindow`: at most `requests` admitted in ANY interval of `window_secs` (an event at `t` counts
  against `[t, t + window_secs)`): an exact log of admission times, so there is no 2x burst across
  a window boundary as with the original's fixed window.

`RateLimiter` applies them per (subject, tool) - the per-tool override, else the most generous
per-role override among the subject's roles (highest sustained rate, then largest burst, then the
role name for a stable tie-break), else the default; absent = unlimited - and, optionally, per subject
across all tools. A request must pass every applicable limiter and consumes from all of them or from
none: a refusal never costs a token. `check(consume=False)` lets the caller look before the later
policy steps and consume only once the request is really going to be forwarded.

Memory: state exists only for keys that were admitted at least once (a refusal never creates
state). A key whose limiter is back to its initial state (bucket full, window empty) is "idle" and
equivalent to no state at all, so dropping it is lossless; insertions drop idle keys from the
least-recently-used end. Each store (pairs, subjects) is also capped at `max_keys`: at the cap the
first idle key among the least recently used few is dropped, else the least recently used key
(which forgets that key's recent use - failing open for one stale key rather than refusing newcomers).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Literal

from sentinel_gw.config_schema import LimitConfig, RateLimitConfig

__all__ = [
    "MAX_KEYS",
    "MAX_SLIDING_REQUESTS",
    "LimitDecision",
    "LimitSpec",
    "RateLimiter",
    "SlidingWindow",
    "TokenBucket",
]

MAX_KEYS = 100_000
# The sliding log holds one timestamp per admitted request in the window, so its size is `requests`.
MAX_SLIDING_REQUESTS = 100_000
# Float slack so that waiting exactly the advertised retry-after is always enough.
_EPS = 1e-9
_EVICT_SCAN = 8
_SUBJECT_RULE = "rate_limits.subject"

Algorithm = Literal["token_bucket", "sliding_window"]


def _check_numbers(requests: int, window_secs: float, burst: int = 0) -> None:
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise ValueError(f"requests must be an integer >= 1, got {requests!r}")
    if isinstance(window_secs, bool) or not isinstance(window_secs, int | float):
        raise ValueError(f"window_secs must be a number, got {window_secs!r}")
    if not (0.0 < window_secs < math.inf):
        raise ValueError(f"window_secs must be a positive finite number, got {window_secs!r}")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        raise ValueError(f"burst must be an integer >= 0, got {burst!r}")


class TokenBucket:
    """Starts full. `retry_after`/`consume` are the two phases of `try_acquire`."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, requests: int, window_secs: float, burst: int = 0, *, now: float = 0.0) -> None:
        _check_numbers(requests, window_secs, burst)
        self.capacity = float(burst or requests)
        self.rate = requests / window_secs
        self.tokens = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:  # a clock that steps back refills nothing rather than draining
            tokens = self.tokens + (now - self.stamp) * self.rate
            self.tokens = tokens if tokens < self.capacity else self.capacity
            self.stamp = now

    def retry_after(self, now: float) -> float:
        """0.0 if a request is allowed now, else the seconds until it will be. Consumes nothing."""
        self._refill(now)
        missing = 1.0 - self.tokens
        return 0.0 if missing <= _EPS else missing / self.rate

    peek = retry_after

    def consume(self, now: float) -> None:
        """Take one token; call only after `retry_after(now)` returned 0.0."""
        self._refill(now)
        tokens = self.tokens - 1.0
        self.tokens = tokens if tokens > 0.0 else 0.0

    def try_acquire(self, now: float) -> float:
        wait = self.retry_after(now)
        if wait == 0.0:
            tokens = self.tokens - 1.0
            self.tokens = tokens if tokens > 0.0 else 0.0
        return wait

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def idle(self, now: float) -> bool:
        """Back to its initial (full) state: forgetting it changes nothing."""
        elapsed = now - self.stamp
        return self.tokens + (elapsed if elapsed > 0.0 else 0.0) * self.rate >= self.capacity - _EPS


class SlidingWindow:
    """Exact log of admission times; never more than `requests` of them are kept."""

    __slots__ = ("events", "requests", "window")

    def __init__(self, requests: int, window_secs: float, *, now: float = 0.0) -> None:
        _check_numbers(requests, window_secs)
        if requests > MAX_SLIDING_REQUESTS:
            raise ValueError(
                f"sliding_window allows at most {MAX_SLIDING_REQUESTS} requests per window "
                f"(it keeps one timestamp per request), got {requests}; use token_bucket"
            )
        self.requests = requests
        self.window = float(window_secs)
        # maxlen is a safety net: consume() after a refusal cannot grow the log past `requests`
        self.events: deque[float] = deque(maxlen=requests)

    def _expire(self, now: float) -> None:
        events = self.events
        horizon = now - self.window + _EPS
        while events and events[0] <= horizon:
            events.popleft()

    def retry_after(self, now: float) -> float:
        """0.0 if a request is allowed now, else the seconds until the oldest admission expires."""
        self._expire(now)
        if len(self.events) < self.requests:
            return 0.0
        wait = self.events[0] + self.window - now
        return wait if wait > _EPS else _EPS

    peek = retry_after

    def consume(self, now: float) -> None:
        """Record one admission; call only after `retry_after(now)` returned 0.0."""
        self._expire(now)
        events = self.events
        if events and now < events[-1]:
            now = events[-1]  # keep the log sorted if the clock steps back
        events.append(now)

    def try_acquire(self, now: float) -> float:
        wait = self.retry_after(now)
        if wait == 0.0:
            self.consume(now)
        return wait

    def used(self, now: float) -> int:
        self._expire(now)
        return len(self.events)

    def idle(self, now: float) -> bool:
        """No admission left in the window: forgetting it changes nothing."""
        return not self.events or self.events[-1] <= now - self.window + _EPS


Limiter = TokenBucket | SlidingWindow


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The effective limit: state survives a reload exactly when the spec is unchanged."""

    algorithm: Algorithm
    requests: int
    window_secs: float
    burst: int  # always 0 for sliding_window, where it means nothing

    def new(self, now: float) -> Limiter:
        if self.algorithm == "sliding_window":
            return SlidingWindow(self.requests, self.window_secs, now=now)
        return TokenBucket(self.requests, self.window_secs, self.burst, now=now)

    def generosity(self) -> tuple[float, int]:
        capacity = (self.burst or self.requests) if self.algorithm == "token_bucket" else self.requests
        return (self.requests / self.window_secs, capacity)

    def describe(self) -> str:
        text = f"{self.algorithm} {self.requests} per {self.window_secs:g}s"
        if self.algorithm == "token_bucket" and self.burst:
            text += f" (burst {self.burst})"
        return text


@dataclass(frozen=True, slots=True)
class LimitDecision:
    allowed: bool
    retry_after_ms: int  # 0 when allowed, else >= 1: the longest wait among the refusing limiters
    rule: str  # the config location of the binding limit, e.g. "rate_limits.tools.search"; "" if allowed


ALLOWED = LimitDecision(True, 0, "")


class _Entry:
    __slots__ = ("limiter", "rule", "spec")

    def __init__(self, limiter: Limiter, spec: LimitSpec, rule: str) -> None:
        self.limiter = limiter
        self.spec = spec
        self.rule = rule


# (spec, rule) for tools/default; (spec, rule, generosity) for roles
_Choice = tuple[LimitSpec, str]
_RoleChoice = tuple[LimitSpec, str, tuple[float, int]]


@dataclass(frozen=True, slots=True)
class _Tables:
    default: _Choice | None
    tools: Mapping[str, _Choice]
    roles: Mapping[str, _RoleChoice]
    subject: LimitSpec | None
    rules: Mapping[str, LimitSpec]


def _build(cfg: RateLimitConfig) -> _Tables:
    algorithm = cfg.algorithm
    if algorithm not in ("token_bucket", "sliding_window"):
        raise ValueError(f"rate_limits.algorithm: unknown algorithm {algorithm!r}")
    rules: dict[str, LimitSpec] = {}

    def spec(lc: LimitConfig, rule: str) -> LimitSpec:
        burst = lc.burst if algorithm == "token_bucket" else 0
        try:
            s = LimitSpec(algorithm, lc.requests, float(lc.window_secs), burst)
            s.new(0.0)  # the limiter's own checks, with the rule named
        except (ValueError, TypeError) as e:
            raise ValueError(f"{rule}: {e}") from None
        rules[rule] = s
        return s

    default = None
    if cfg.default is not None:
        default = (spec(cfg.default, "rate_limits.default"), "rate_limits.default")
    tools = {
        name: (spec(lc, f"rate_limits.tools.{name}"), f"rate_limits.tools.{name}")
        for name, lc in cfg.tools.items()
    }
    roles: dict[str, _RoleChoice] = {}
    for name, lc in cfg.roles.items():
        s = spec(lc, f"rate_limits.roles.{name}")
        roles[name] = (s, f"rate_limits.roles.{name}", s.generosity())
    subject = spec(cfg.subject, _SUBJECT_RULE) if cfg.subject is not None else None
    return _Tables(default, tools, roles, subject, rules)


class Reservation:
    """A call `RateLimiter.reserve` admitted, for `RateLimiter.commit` to count."""

    __slots__ = ("chosen", "key", "subject")

    def __init__(self, subject: str, key: tuple[str, str], chosen: _Choice | _RoleChoice | None) -> None:
        self.subject = subject
        self.key = key
        self.chosen = chosen


class RateLimiter:
    """Per-(subject, tool) and per-subject limits. Not thread-safe: call from the event loop."""

    def __init__(self, cfg: RateLimitConfig, *, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._max_keys = max_keys
        self._t = _build(cfg)
        self._pairs: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._subjects: OrderedDict[str, _Entry] = OrderedDict()

    # --- the per-request path ---------------------------------------------------------------------

    def _choose(self, roles: tuple[str, ...], tool: str) -> _Choice | _RoleChoice | None:
        t = self._t
        chosen = t.tools.get(tool)
        if chosen is not None:
            return chosen
        if t.roles:
            best: _RoleChoice | None = None
            for role in roles:
                c = t.roles.get(role)
                if c is not None and (best is None or c[2] > best[2] or (c[2] == best[2] and c[1] < best[1])):
                    best = c
            if best is not None:
                return best
        return t.default

    def check(
        self, subject: str, roles: tuple[str, ...], tool: str, *, now: float, consume: bool = True
    ) -> LimitDecision:
        """Admit (and, if `consume`, count) one call of `tool` by `subject`, or say how long to wait."""
        held = self.reserve(subject, roles, tool, now=now)
        if isinstance(held, LimitDecision):
            return held
        if consume:
            self.commit(held, now)
        return ALLOWED

    def reserve(
        self, subject: str, roles: tuple[str, ...], tool: str, *, now: float
    ) -> LimitDecision | Reservation:
        """`check(consume=False)` that remembers what it found: the refusal, or a Reservation that
        `commit` counts later without choosing the limits again (the policy engine looks before
        validating the arguments and counts after). Counts nothing."""
        chosen = self._choose(roles, tool)
        wait = 0.0
        rule = ""
        pairs = self._pairs
        key = (subject, tool)
        if chosen is not None:
            entry = pairs.get(key)
            if entry is not None:
                if entry.spec is not chosen[0] and entry.spec != chosen[0]:
                    # the effective limit changed (other roles, or a reload): start fresh
                    del pairs[key]
                else:
                    pairs.move_to_end(key)
                    w = entry.limiter.retry_after(now)
                    if w > 0.0:
                        wait, rule = w, chosen[1]
        if self._t.subject is not None:
            sentry = self._subjects.get(subject)
            if sentry is not None:
                self._subjects.move_to_end(subject)
                w = sentry.limiter.retry_after(now)
                if w > wait:
                    wait, rule = w, _SUBJECT_RULE
        if wait > 0.0:
            # the slack (0.1 ns, below _EPS) keeps float noise such as 59800.000000000004 from adding 1 ms
            return LimitDecision(False, max(1, math.ceil(wait * 1000.0 - 1e-7)), rule)
        return Reservation(subject, key, chosen)

    def commit(self, held: Reservation, now: float) -> None:
        """Count the call `reserve` admitted. Nothing may have been counted in between (the engine
        commits in the same synchronous step); the entries are looked up again by key all the same,
        so a commit never counts against a state that an insertion has meanwhile evicted."""
        chosen = held.chosen
        if chosen is not None:
            self._count(self._pairs, held.key, chosen[0], chosen[1], now)
        if self._t.subject is not None:
            self._count(self._subjects, held.subject, self._t.subject, _SUBJECT_RULE, now)

    def _count(
        self, store: OrderedDict[Hashable, _Entry], key: Hashable, spec: LimitSpec, rule: str, now: float
    ) -> None:
        entry = store.get(key)
        if entry is None or (entry.spec is not spec and entry.spec != spec):
            store.pop(key, None)  # the effective limit changed: start fresh
            entry = _Entry(spec.new(now), spec, rule)
            self._insert(store, key, entry, now)
        else:
            entry.spec = spec  # equal spec, maybe reached through another rule
            entry.rule = rule
        entry.limiter.consume(now)

    # --- memory bounds ----------------------------------------------------------------------------

    def _insert(self, store: OrderedDict[Hashable, _Entry], key: Hashable, entry: _Entry, now: float) -> None:
        # Lossless: the least recently used entries are the likeliest to be idle (= initial state).
        for _ in range(2):
            if not store:
                break
            oldest = next(iter(store))
            if not store[oldest].limiter.idle(now):
                break
            del store[oldest]
        if len(store) >= self._max_keys:
            victim: Hashable | None = None
            for i, (k, e) in enumerate(store.items()):
                if e.limiter.idle(now):
                    victim = k
                    break
                if i >= _EVICT_SCAN:
                    break
            del store[next(iter(store)) if victim is None else victim]
        store[key] = entry

    def key_counts(self) -> tuple[int, int]:
        """(per-(subject, tool) states, per-subject states) currently held."""
        return len(self._pairs), len(self._subjects)

    # --- hot reload -------------------------------------------------------------------------------

    def reconfigure(self, cfg: RateLimitConfig) -> None:
        """Swap in a new config. Raises ValueError (changing nothing) if it is invalid."""
        t = _build(cfg)
        self._t = t
        for key, entry in list(self._pairs.items()):
            spec = t.rules.get(entry.rule)
            if spec is None or spec != entry.spec:
                del self._pairs[key]
            else:
                entry.spec = spec
        if t.subject is None or any(e.spec != t.subject for e in self._subjects.values()):
            self._subjects.clear()
        else:
            for e in self._subjects.values():
                e.spec = t.subject

    # --- explain ----------------------------------------------------------------------------------

    def explain(self, subject: str, roles: tuple[str, ...], tool: str, now: float) -> list[str]:
        """Which limits apply to this call and where they stand; consumes nothing."""
        t = self._t
        lines: list[str] = []
        chosen = self._choose(roles, tool)
        if chosen is None:
            lines.append(
                f"per (subject, tool): unlimited (no rate_limits.tools.{tool}, role override or default)"
            )
        else:
            spec, rule = chosen[0], chosen[1]
            why = ""
            if rule.startswith("rate_limits.roles."):
                held = sorted(r for r in set(roles) if r in t.roles)
                if len(held) > 1:
                    why = f" (most generous of roles {', '.join(held)})"
            entry = self._pairs.get((subject, tool))
            state = _state(entry, spec, now)
            lines.append(f"{rule}: {spec.describe()} per (subject, tool){why}; {state}")
        if t.subject is None:
            lines.append(f"{_SUBJECT_RULE}: unlimited")
        else:
            state = _state(self._subjects.get(subject), t.subject, now)
            lines.append(f"{_SUBJECT_RULE}: {t.subject.describe()} across all tools; {state}")
        decision = self.check(subject, roles, tool, now=now, consume=False)
        if decision.allowed:
            lines.append("verdict: a call now would be allowed")
        else:
            ms = decision.retry_after_ms
            lines.append(f"verdict: a call now would be refused by {decision.rule}, retry after {ms} ms")
        return lines


def _state(entry: _Entry | None, spec: LimitSpec, now: float) -> str:
    limiter = spec.new(now) if entry is None or entry.spec != spec else entry.limiter
    if isinstance(limiter, TokenBucket):
        text = f"{limiter.available(now):.2f} of {limiter.capacity:g} tokens available"
    else:
        text = f"{limiter.used(now)} of {limiter.requests} used in the last {limiter.window:g}s"
    wait = limiter.retry_after(now)
    if wait > 0.0:
        text += f", next allowed in {wait:.3f}s"
    return text
