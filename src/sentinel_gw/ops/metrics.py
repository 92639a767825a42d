"""Metrics: a facade with a no-op default and a Prometheus implementation (extra ``metrics``).

`Metrics` is an `observe.Observer` (the gateway calls `call_finished` for every tools/call,
resources/read and prompts/get outcome, and `gateway_event` for gateway events) and knows how to
render the exposition text for the admin endpoint's ``/metrics``.

* `Metrics` itself is the no-op: observing does nothing and `render()` raises `MetricsUnavailable`
  whose message the admin endpoint answers with (503): why there are no metrics and what to do.
* `PrometheusMetrics` is registered in the plugin registry as kind ``metrics``, name ``prometheus``.
  ``prometheus_client`` is imported only when it is created (`create_metrics(enabled=True)`), so the
  core never imports it; without the extra the factory raises one `PluginError` line.

Design (and what the original got wrong, ORIGINAL-SENTINEL §9/§15.28):

* The hot path is a few dict operations on plain counters owned by this object; there are no
  locks and nothing from prometheus_client runs per call. Everything that can be *read* at scrape
  time (backend states, restarts, in-flight, breakers, sessions, audit counters) is pulled from the
  gateway and the audit log by a collector when ``/metrics`` is scraped, never pushed.
* Bounded label values. ``tool`` only takes names the gateway resolved through its catalog (the
  record has a backend): an unknown or invisible name is ``_unknown``, a resource read is
  ``_resource`` (URIs are unbounded and may carry data), and at most `max_tools` distinct names are
  kept for the life of the process; later ones fold into ``_other``. ``backend`` is a configured
  name or ``_none`` when the call never reached one.
* Latency is observed only for calls that were forwarded to a backend. Refusals (denied, killed,
  rate limited, invalid arguments, circuit open, unknown tool) are counted in
  ``sentinel_requests_total`` but never observed as 0-second requests.
* A private `CollectorRegistry`: never the process-global one, no process/platform collectors.

Everything runs on the event loop thread (observers are called from the loop; the admin endpoint
renders on the loop), so the counters need no locking.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from sentinel_gw import observe
from sentinel_gw.ops import plugins

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "DEFAULT_MAX_TOOLS",
    "MISSING_EXTRA",
    "Metrics",
    "MetricsUnavailable",
    "PrometheusMetrics",
    "create_metrics",
]

log = logging.getLogger("sentinel_gw.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MISSING_EXTRA = "metrics need the 'metrics' extra: pip install 'sentinel-gw[metrics]'"
DISABLED = "metrics are disabled: set enabled = true in the [metrics] section of the config"

# Tool calls range from milliseconds to minutes: the client defaults plus a long tail.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
DEFAULT_MAX_TOOLS = 1000

UNKNOWN = "_unknown"  # a name the catalog did not resolve (unknown, invisible, malformed)
OTHER = "_other"  # a resolved name beyond the cardinality cap
RESOURCE = "_resource"  # resources/read: the URI is never a label value
NO_BACKEND = "_none"  # the call never reached a backend

AUDIT_OUTCOMES = ("queued", "written", "spooled", "replayed", "dropped")
RELOAD_RESULTS = ("ok", "failed")
BACKEND_STATES = ("starting", "ready", "restarting", "failed", "stopped", "disabled")
BREAKER_VALUES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}

# Statuses that mean the gateway refused the call itself: counted, never observed as latency.
_NOT_FORWARDED = frozenset(
    {
        observe.DENIED,
        observe.RATE_LIMITED,
        observe.KILLED,
        observe.INVALID_ARGS,
        observe.CIRCUIT_OPEN,
    }
)


class MetricsUnavailable(Exception):
    """There is nothing to scrape; the message says why (one line, for the operator)."""


def _value(state: Any) -> str:
    """An enum's value or a plain string, lower case."""
    return str(getattr(state, "value", state)).lower()


class Metrics:
    """The no-op facade: observes nothing, renders nothing (`render` says why)."""

    enabled = False
    content_type = CONTENT_TYPE

    def __init__(self, reason: str = DISABLED) -> None:
        self.reason = reason

    def bind(self, *, gateway: Any = None, audit: Any = None) -> None:
        """Set (or replace) where scrape-time figures come from; None leaves a source as it is."""

    def call_finished(self, record: observe.CallRecord) -> None:
        pass

    def gateway_event(self, kind: str, detail: Mapping[str, Any]) -> None:
        pass

    def render(self) -> bytes:
        """The exposition text; raises `MetricsUnavailable` when metrics are off or missing."""
        raise MetricsUnavailable(self.reason)


class PrometheusMetrics(Metrics):
    """Prometheus metrics on a private registry. Create it through `create_metrics` or the plugin
    registry; constructing it imports prometheus_client (ImportError without the extra)."""

    enabled = True

    def __init__(
        self,
        *,
        gateway: Any = None,
        audit: Any = None,
        max_tools: int = DEFAULT_MAX_TOOLS,
        buckets: Collection[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__("")
        import prometheus_client
        from prometheus_client import core
        from prometheus_client.utils import floatToGoString

        if max_tools < 1:
            raise ValueError("max_tools must be at least 1")
        bounds = sorted({float(b) for b in buckets if not math.isinf(b)})
        if not bounds:
            raise ValueError("at least one finite histogram bucket is needed")
        self._pc = prometheus_client
        self._core = core
        self.gateway = gateway
        self.audit = audit
        self.max_tools = max_tools
        self._bounds: tuple[float, ...] = tuple(bounds)
        self._edges = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._tools: set[str] = set()
        # Plain counters owned by this object, updated on the hot path.
        self._requests: dict[tuple[str, str, str, str], int] = {}
        self._rate_limited: dict[str, int] = {}
        # (method, backend) -> [per-bucket counts (not cumulative; last = +Inf), count, sum]
        self._durations: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self._reloads: dict[str, int] = dict.fromkeys(RELOAD_RESULTS, 0)
        self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # collect() below

    # -- sources ---------------------------------------------------------------------------------

    def bind(self, *, gateway: Any = None, audit: Any = None) -> None:
        if gateway is not None:
            self.gateway = gateway
        if audit is not None:
            self.audit = audit

    # -- Observer (hot path) ---------------------------------------------------------------------

    def _tool_label(self, record: observe.CallRecord) -> str:
        if record.method == "resources/read":
            return RESOURCE
        name = record.name
        if record.backend is None or not name:
            # Not past catalog resolution: the name is whatever the client sent.
            return UNKNOWN
        if name in self._tools:
            return name
        if len(self._tools) < self.max_tools:
            self._tools.add(name)
            return name
        return OTHER

    @staticmethod
    def _forwarded(record: observe.CallRecord) -> bool:
        flag = record.extra.get("forwarded") if record.extra else None
        if flag is not None:
            return bool(flag)
        # Without the gateway's word: it reached a backend and was not refused on the way.
        return record.backend is not None and record.status not in _NOT_FORWARDED

    def call_finished(self, record: observe.CallRecord) -> None:
        tool = self._tool_label(record)
        backend = record.backend or NO_BACKEND
        status = record.status
        key = (record.method, tool, backend, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        if status == observe.RATE_LIMITED:
            self._rate_limited[tool] = self._rate_limited.get(tool, 0) + 1
        if self._forwarded(record):
            seconds = max(record.latency_ms, 0.0) / 1000.0
            hist = self._durations.get((record.method, backend))
            if hist is None:
                hist = ([0] * (len(self._bounds) + 1), [0.0])
                self._durations[(record.method, backend)] = hist
            hist[0][bisect.bisect_left(self._bounds, seconds)] += 1
            hist[1][0] += seconds

    def gateway_event(self, kind: str, detail: Mapping[str, Any]) -> None:
        if kind == "config.reload":
            result = "ok" if str(detail.get("result", "")).lower() == "ok" else "failed"
            self._reloads[result] += 1

    # -- scrape ----------------------------------------------------------------------------------

    def render(self) -> bytes:
        return bytes(self._pc.generate_latest(self.registry))

    def collect(self) -> Iterator[Any]:
        """Called by the registry at scrape time (on the loop thread, from `render`)."""
        yield from self._call_families()
        if self.gateway is not None:
            try:
                yield from self._gateway_families(self.gateway)
            except Exception:
                log.exception("metrics: cannot read the gateway's status")
        if self.audit is not None:
            try:
                yield from self._audit_families(self.audit.stats())
            except Exception:
                log.exception("metrics: cannot read the audit log's counters")

    def _call_families(self) -> Iterator[Any]:
        core = self._core
        requests = core.CounterMetricFamily(
            "sentinel_requests",
            "Calls (tools/call, resources/read, prompts/get) by outcome",
            labels=["method", "tool", "backend", "status"],
        )
        for labels, n in sorted(self._requests.items()):
            requests.add_metric(list(labels), n)
        yield requests

        limited = core.CounterMetricFamily(
            "sentinel_rate_limited", "Calls refused by a rate or concurrency limit", labels=["tool"]
        )
        for tool, n in sorted(self._rate_limited.items()):
            limited.add_metric([tool], n)
        yield limited

        durations = core.HistogramMetricFamily(
            "sentinel_request_duration_seconds",
            "Latency of calls forwarded to a backend (refusals are not observed)",
            labels=["method", "backend"],
        )
        for (method, backend), (counts, total) in sorted(self._durations.items()):
            cumulative, running = [], 0
            for edge, n in zip(self._edges, counts, strict=True):
                running += n
                cumulative.append((edge, running))
            durations.add_metric([method, backend], cumulative, total[0])
        yield durations

        reloads = core.CounterMetricFamily(
            "sentinel_config_reloads", "Configuration reloads by result", labels=["result"]
        )
        for result, n in self._reloads.items():
            reloads.add_metric([result], n)
        yield reloads

    def _gateway_families(self, gateway: Any) -> Iterator[Any]:
        core = self._core
        status: Mapping[str, Mapping[str, Any]] = gateway.status()
        backends: Mapping[str, Any] = getattr(gateway, "backends", {}) or {}

        sessions = core.GaugeMetricFamily("sentinel_sessions", "Open client sessions")
        sessions.add_metric([], len(getattr(gateway, "sessions", ()) or ()))
        yield sessions

        in_flight = core.GaugeMetricFamily(
            "sentinel_in_flight", "Requests waiting for a backend's answer", labels=["backend"]
        )
        up = core.GaugeMetricFamily("sentinel_backend_up", "1 when the backend is ready", labels=["backend"])
        state = core.GaugeMetricFamily(
            "sentinel_backend_state", "Backend state (1 for the current one)", labels=["backend", "state"]
        )
        restarts = core.CounterMetricFamily(
            "sentinel_backend_restarts", "Backend restarts since it was started", labels=["backend"]
        )
        breaker = core.GaugeMetricFamily(
            "sentinel_breaker_state",
            "Circuit breaker state (0 closed, 1 half-open, 2 open)",
            labels=["backend"],
        )
        for name in sorted(status):
            info = status[name]
            current = _value(info.get("state", ""))
            in_flight.add_metric([name], float(info.get("in_flight") or 0))
            up.add_metric([name], 1.0 if current == "ready" else 0.0)
            states = BACKEND_STATES if current in BACKEND_STATES else (*BACKEND_STATES, current)
            for s in states:
                state.add_metric([name, s], 1.0 if s == current else 0.0)
            restarts.add_metric([name], float(info.get("restarts") or 0))
            cb = getattr(backends.get(name), "breaker", None)
            if cb is not None:
                value = BREAKER_VALUES.get(_value(getattr(cb, "state", "")))
                if value is not None:
                    breaker.add_metric([name], float(value))
        yield from (in_flight, up, state, restarts, breaker)

    def _audit_families(self, stats: Mapping[str, Any]) -> Iterator[Any]:
        core = self._core
        events = core.CounterMetricFamily(
            "sentinel_audit_events",
            "Audit events per sink: queued, written, spooled to disk, replayed from the spool, dropped",
            labels=["sink", "outcome"],
        )
        pending = core.GaugeMetricFamily(
            "sentinel_audit_pending",
            "Audit events not yet written (in memory and in the spool)",
            labels=["sink"],
        )
        sinks: Mapping[str, Mapping[str, Any]] = stats.get("sinks") or {}
        for sink in sorted(sinks):
            figures = sinks[sink]
            for outcome in AUDIT_OUTCOMES:
                events.add_metric([sink, outcome], float(figures.get(outcome) or 0))
            pending.add_metric(
                [sink], float((figures.get("pending_memory") or 0) + (figures.get("pending_spool") or 0))
            )
        # Events lost before reaching any sink (e.g. emitted after the log was closed).
        unattributed = (stats.get("dropped") or 0) - sum(s.get("dropped") or 0 for s in sinks.values())
        if unattributed > 0:
            events.add_metric(["_log", "dropped"], float(unattributed))
        yield events
        yield pending


def _prometheus_factory(**kwargs: Any) -> PrometheusMetrics:
    """The registry's factory: the one place a missing extra becomes one clear line."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and (missing or "").split(".")[0] == "prometheus_client":
            raise plugins.PluginError(MISSING_EXTRA) from None
        raise plugins.PluginError(f"metrics backend 'prometheus' could not be loaded: {exc}") from None
    return PrometheusMetrics(**kwargs)


plugins.register("metrics", "prometheus", _prometheus_factory, extra="metrics")


def create_metrics(
    enabled: bool,
    *,
    gateway: Any = None,
    audit: Any = None,
    backend: str = "prometheus",
    max_tools: int = DEFAULT_MAX_TOOLS,
) -> Metrics:
    """The metrics the gateway should use. Never raises for a missing extra: it logs one warning
    and returns the no-op, whose `render()` gives ``/metrics`` the message to answer with."""
    if not enabled:
        return Metrics(DISABLED)
    try:
        factory = plugins.get("metrics", backend)
        metrics = factory(gateway=gateway, audit=audit, max_tools=max_tools)
    except plugins.PluginError as exc:
        log.warning("%s; /metrics will answer 503", exc)
        return Metrics(str(exc))
    if not isinstance(metrics, Metrics):
        log.warning("metrics backend %r did not return a Metrics object; metrics are off", backend)
        return Metrics(f"metrics backend {backend!r} is not usable")
    return metrics
