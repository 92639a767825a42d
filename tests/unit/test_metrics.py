"""Metrics: observer counting, scrape-time collectors, label guards, plugin lookup, missing extra."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from sentinel_gw import observe
from sentinel_gw.backends.base import BackendState
from sentinel_gw.observe import CallRecord
from sentinel_gw.ops import metrics as metrics_mod
from sentinel_gw.ops import plugins
from sentinel_gw.ops.metrics import (
    CONTENT_TYPE,
    DISABLED,
    MISSING_EXTRA,
    Metrics,
    MetricsUnavailable,
    PrometheusMetrics,
    create_metrics,
)
from sentinel_gw.resilience import BreakerState

# --- fakes ------------------------------------------------------------------------------------------


class FakeBackend:
    def __init__(
        self,
        state: str = "ready",
        *,
        restarts: int = 0,
        in_flight: int = 0,
        breaker: BreakerState | None = None,
    ) -> None:
        self.state = BackendState(state)
        self.restarts = restarts
        self._in_flight = in_flight
        if breaker is not None:
            self.breaker = SimpleNamespace(state=breaker)

    @property
    def ready(self) -> bool:
        return self.state is BackendState.READY

    def in_flight(self) -> int:
        return self._in_flight


class FakeGateway:
    def __init__(self, backends: dict[str, FakeBackend], sessions: int = 0) -> None:
        self.backends = backends
        self.sessions: set[object] = {object() for _ in range(sessions)}

    def status(self) -> dict[str, Any]:
        return {
            name: {"state": b.state.value, "restarts": b.restarts, "in_flight": b.in_flight()}
            for name, b in self.backends.items()
        }


class FakeAudit:
    def __init__(self, sinks: dict[str, dict[str, int]], extra_dropped: int = 0) -> None:
        self.sinks = sinks
        self.extra_dropped = extra_dropped

    def stats(self) -> dict[str, Any]:
        total: dict[str, Any] = {
            k: sum(s.get(k, 0) for s in self.sinks.values())
            for k in ("queued", "written", "spooled", "replayed", "dropped")
        }
        total["dropped"] += self.extra_dropped
        total["sinks"] = self.sinks
        return total


def record(
    name: str | None,
    *,
    backend: str | None = "files",
    status: str = observe.SUCCESS,
    latency_ms: float = 10.0,
    method: str = "tools/call",
    extra: dict[str, Any] | None = None,
) -> CallRecord:
    return CallRecord(
        session=None,  # type: ignore[arg-type]
        method=method,
        name=name,
        request_id=1,
        arguments={},
        started=0.0,
        backend=backend,
        status=status,
        latency_ms=latency_ms,
        extra=extra or {},
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(m: Metrics) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, labels) -> value) from the exposition text."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(m.render().decode("utf-8")):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(lbls)[label] for (n, lbls) in samples if n == name and label in dict(lbls)}


def feed(m: Metrics, records: Iterable[CallRecord]) -> None:
    for r in records:
        m.call_finished(r)


# --- calls ------------------------------------------------------------------------------------------


def test_requests_counted_by_method_tool_backend_status() -> None:
    m = PrometheusMetrics()
    feed(
        m,
        [
            record("files__read"),
            record("files__read"),
            record("files__read", status=observe.ERROR),
            record("web__fetch", backend="web", status=observe.TIMEOUT),
            record("git__log", backend="git", status=observe.DENIED),
        ],
    )
    types, s = scrape(m)
    assert types["sentinel_requests"] == "counter"
    total = "sentinel_requests_total"
    assert value(s, total, method="tools/call", tool="files__read", backend="files", status="success") == 2
    assert value(s, total, method="tools/call", tool="files__read", backend="files", status="error") == 1
    assert value(s, total, method="tools/call", tool="web__fetch", backend="web", status="timeout") == 1
    assert value(s, total, method="tools/call", tool="git__log", backend="git", status="denied") == 1


def test_unresolved_names_are_unknown_and_never_labels() -> None:
    m = PrometheusMetrics()
    # The catalog did not resolve these (no backend): client-chosen names must not become labels.
    feed(m, [record(f"attacker-{i}", backend=None, status=observe.ERROR) for i in range(50)])
    m.call_finished(record(None, backend=None, status=observe.ERROR))
    _, s = scrape(m)
    assert label_values(s, "sentinel_requests_total", "tool") == {"_unknown"}
    assert (
        value(
            s,
            "sentinel_requests_total",
            method="tools/call",
            tool="_unknown",
            backend="_none",
            status="error",
        )
        == 51
    )
    # Nothing unresolved was timed.
    assert not label_values(s, "sentinel_request_duration_seconds_count", "backend")


def test_resource_uris_are_not_labels_and_prompts_are() -> None:
    m = PrometheusMetrics()
    m.call_finished(record("file:///etc/secret?token=abc", method="resources/read", latency_ms=5))
    m.call_finished(record("summarise", method="prompts/get", backend="notes"))
    _, s = scrape(m)
    tools = label_values(s, "sentinel_requests_total", "tool")
    assert tools == {"_resource", "summarise"}
    assert value(s, "sentinel_request_duration_seconds_count", method="resources/read", backend="files") == 1
    assert value(s, "sentinel_request_duration_seconds_count", method="prompts/get", backend="notes") == 1


def test_refusals_are_counted_but_not_observed_as_latency() -> None:
    m = PrometheusMetrics()
    refusals = [
        observe.DENIED,
        observe.RATE_LIMITED,
        observe.KILLED,
        observe.INVALID_ARGS,
        observe.CIRCUIT_OPEN,
    ]
    feed(m, [record("files__read", status=st, latency_ms=0.1) for st in refusals])
    feed(
        m,
        [
            record("files__read", latency_ms=12),  # 0.012 s
            record("files__read", status=observe.ERROR, latency_ms=3000),  # 3 s, the backend's error
        ],
    )
    types, s = scrape(m)
    assert types["sentinel_request_duration_seconds"] == "histogram"
    h = "sentinel_request_duration_seconds"
    assert value(s, f"{h}_count", method="tools/call", backend="files") == 2
    assert value(s, f"{h}_sum", method="tools/call", backend="files") == pytest.approx(3.012)
    assert value(s, f"{h}_bucket", method="tools/call", backend="files", le="0.01") == 0
    assert value(s, f"{h}_bucket", method="tools/call", backend="files", le="0.025") == 1
    assert value(s, f"{h}_bucket", method="tools/call", backend="files", le="2.5") == 1
    assert value(s, f"{h}_bucket", method="tools/call", backend="files", le="5.0") == 2
    assert value(s, f"{h}_bucket", method="tools/call", backend="files", le="+Inf") == 2
    total = sum(
        v
        for (n, lbls), v in s.items()
        if n == "sentinel_requests_total" and dict(lbls)["tool"] == "files__read"
    )
    assert total == 7


def test_forwarded_flag_from_the_gateway_wins() -> None:
    m = PrometheusMetrics()
    # An "error" that never left the gateway (e.g. backend unavailable) is not a latency sample...
    m.call_finished(record("files__read", status=observe.ERROR, extra={"forwarded": False}))
    _, s = scrape(m)
    assert value(s, "sentinel_request_duration_seconds_count", method="tools/call", backend="files") is None
    # ... and a forwarded call is one whatever its status.
    m.call_finished(record("files__read", status=observe.CIRCUIT_OPEN, extra={"forwarded": True}))
    _, s = scrape(m)
    assert value(s, "sentinel_request_duration_seconds_count", method="tools/call", backend="files") == 1


def test_rate_limited_counter_by_tool() -> None:
    m = PrometheusMetrics()
    feed(m, [record("web__fetch", backend="web", status=observe.RATE_LIMITED)] * 3)
    m.call_finished(record("files__read", status=observe.RATE_LIMITED))
    m.call_finished(record("files__read"))
    types, s = scrape(m)
    assert types["sentinel_rate_limited"] == "counter"
    assert value(s, "sentinel_rate_limited_total", tool="web__fetch") == 3
    assert value(s, "sentinel_rate_limited_total", tool="files__read") == 1


def test_tool_label_cardinality_cap() -> None:
    m = PrometheusMetrics(max_tools=3)
    feed(m, [record(f"tool_{i}") for i in range(10)])
    feed(m, [record("tool_0"), record("tool_1")])  # known names keep their label
    m.call_finished(record("never_resolved", backend=None, status=observe.ERROR))  # takes no slot
    _, s = scrape(m)
    tools = label_values(s, "sentinel_requests_total", "tool")
    assert tools == {"tool_0", "tool_1", "tool_2", "_other", "_unknown"}
    total = "sentinel_requests_total"
    assert value(s, total, method="tools/call", tool="_other", backend="files", status="success") == 7
    assert value(s, total, method="tools/call", tool="tool_0", backend="files", status="success") == 2
    with pytest.raises(ValueError):
        PrometheusMetrics(max_tools=0)


def test_default_cap_is_bounded() -> None:
    m = PrometheusMetrics()
    feed(m, [record(f"t{i}") for i in range(metrics_mod.DEFAULT_MAX_TOOLS + 50)])
    _, s = scrape(m)
    tools = label_values(s, "sentinel_requests_total", "tool")
    assert len(tools) == metrics_mod.DEFAULT_MAX_TOOLS + 1
    assert "_other" in tools


def test_config_reloads_by_result() -> None:
    m = PrometheusMetrics()
    _, s = scrape(m)
    assert value(s, "sentinel_config_reloads_total", result="ok") == 0
    assert value(s, "sentinel_config_reloads_total", result="failed") == 0
    m.gateway_event("config.reload", {"result": "ok"})
    m.gateway_event("config.reload", {"result": "ok"})
    m.gateway_event("config.reload", {"result": "failed", "error": "bad key"})
    m.gateway_event("config.reload", {"result": "something odd"})
    m.gateway_event("backend.crashed", {"backend": "files"})
    m.gateway_event("killswitch.change", {"tool": "x"})
    _, s = scrape(m)
    assert value(s, "sentinel_config_reloads_total", result="ok") == 2
    assert value(s, "sentinel_config_reloads_total", result="failed") == 2


# --- scrape-time collectors -------------------------------------------------------------------------


def test_gateway_figures_are_read_at_scrape_time() -> None:
    gw = FakeGateway(
        {
            "files": FakeBackend("ready", in_flight=2, breaker=BreakerState.CLOSED),
            "web": FakeBackend("restarting", restarts=3, breaker=BreakerState.OPEN),
            "git": FakeBackend("disabled"),
        },
        sessions=4,
    )
    m = PrometheusMetrics(gateway=gw)
    types, s = scrape(m)
    assert types["sentinel_sessions"] == "gauge"
    assert types["sentinel_backend_restarts"] == "counter"
    assert value(s, "sentinel_sessions") == 4
    assert value(s, "sentinel_in_flight", backend="files") == 2
    assert value(s, "sentinel_in_flight", backend="web") == 0
    assert value(s, "sentinel_backend_up", backend="files") == 1
    assert value(s, "sentinel_backend_up", backend="web") == 0
    assert value(s, "sentinel_backend_up", backend="git") == 0
    assert value(s, "sentinel_backend_restarts_total", backend="web") == 3
    for state in metrics_mod.BACKEND_STATES:
        expected = 1 if state == "restarting" else 0
        assert value(s, "sentinel_backend_state", backend="web", state=state) == expected
    assert value(s, "sentinel_breaker_state", backend="files") == 0
    assert value(s, "sentinel_breaker_state", backend="web") == 2
    assert value(s, "sentinel_breaker_state", backend="git") is None  # stdio: no breaker

    # Nothing was pushed: the next scrape sees the gateway as it is now.
    gw.backends["web"].state = BackendState.READY
    gw.backends["web"].breaker.state = BreakerState.HALF_OPEN
    gw.backends["files"]._in_flight = 0
    gw.sessions.clear()
    _, s = scrape(m)
    assert value(s, "sentinel_backend_up", backend="web") == 1
    assert value(s, "sentinel_backend_state", backend="web", state="ready") == 1
    assert value(s, "sentinel_backend_state", backend="web", state="restarting") == 0
    assert value(s, "sentinel_breaker_state", backend="web") == 1
    assert value(s, "sentinel_in_flight", backend="files") == 0
    assert value(s, "sentinel_sessions") == 0


def test_audit_figures_per_sink() -> None:
    audit = FakeAudit(
        {
            "sqlite": {
                "queued": 10,
                "written": 8,
                "spooled": 0,
                "replayed": 0,
                "dropped": 0,
                "pending_memory": 2,
                "pending_spool": 0,
            },
            "postgres": {
                "queued": 10,
                "written": 4,
                "spooled": 6,
                "replayed": 3,
                "dropped": 1,
                "pending_memory": 0,
                "pending_spool": 3,
            },
        },
        extra_dropped=2,
    )
    m = PrometheusMetrics(audit=audit)
    types, s = scrape(m)
    assert types["sentinel_audit_events"] == "counter"
    assert types["sentinel_audit_pending"] == "gauge"
    ev = "sentinel_audit_events_total"
    assert value(s, ev, sink="sqlite", outcome="written") == 8
    assert value(s, ev, sink="postgres", outcome="spooled") == 6
    assert value(s, ev, sink="postgres", outcome="replayed") == 3
    assert value(s, ev, sink="postgres", outcome="dropped") == 1
    assert value(s, ev, sink="_log", outcome="dropped") == 2
    assert label_values(s, ev, "outcome") == {"queued", "written", "spooled", "replayed", "dropped"}
    assert value(s, "sentinel_audit_pending", sink="sqlite") == 2
    assert value(s, "sentinel_audit_pending", sink="postgres") == 3


def test_bind_sets_sources_later() -> None:
    m = PrometheusMetrics()
    _, s = scrape(m)
    assert value(s, "sentinel_sessions") is None
    m.bind(gateway=FakeGateway({"files": FakeBackend()}, sessions=1))
    _, s = scrape(m)
    assert value(s, "sentinel_sessions") == 1
    m.bind(audit=None)  # None leaves a source unchanged
    assert m.gateway is not None


def test_a_broken_source_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        backends: dict[str, Any] = {}
        sessions: set[object] = set()

        def status(self) -> dict[str, Any]:
            raise RuntimeError("boom")

        def stats(self) -> dict[str, Any]:
            raise RuntimeError("boom")

    m = PrometheusMetrics(gateway=Broken(), audit=Broken())
    m.call_finished(record("files__read"))
    with caplog.at_level(logging.ERROR, logger="sentinel_gw.metrics"):
        _, s = scrape(m)
    assert (
        value(
            s,
            "sentinel_requests_total",
            method="tools/call",
            tool="files__read",
            backend="files",
            status="success",
        )
        == 1
    )
    assert "cannot read the gateway" in caplog.text
    assert "cannot read the audit" in caplog.text


def test_private_registry_only() -> None:
    a, b = PrometheusMetrics(), PrometheusMetrics()
    a.call_finished(record("files__read"))
    _, sb = scrape(b)
    assert not label_values(sb, "sentinel_requests_total", "tool")
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "sentinel_" not in global_text
    # No process/platform collectors and no *_created series on ours.
    text = a.render().decode()
    assert "process_" not in text
    assert "python_info" not in text
    assert "_created" not in text
    assert a.content_type == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


# --- facade, registry, missing extra ----------------------------------------------------------------


def test_registry_finds_the_prometheus_plugin() -> None:
    assert "prometheus" in plugins.names("metrics")
    factory = plugins.get("metrics", "prometheus")
    m = factory(gateway=None, audit=None)
    assert isinstance(m, PrometheusMetrics)
    assert m.enabled


def test_create_metrics_enabled_and_disabled() -> None:
    gw = FakeGateway({"files": FakeBackend()})
    m = create_metrics(True, gateway=gw)
    assert isinstance(m, PrometheusMetrics)
    assert m.gateway is gw
    off = create_metrics(False, gateway=gw)
    assert type(off) is Metrics
    assert not off.enabled
    off.call_finished(record("files__read"))  # no-op
    off.gateway_event("config.reload", {"result": "ok"})
    with pytest.raises(MetricsUnavailable, match="disabled"):
        off.render()
    assert str(DISABLED)


def test_missing_extra_gives_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now fails
    with pytest.raises(plugins.PluginError) as info:
        plugins.get("metrics", "prometheus")()
    assert str(info.value) == MISSING_EXTRA
    assert "pip install 'sentinel-gw[metrics]'" in MISSING_EXTRA

    with caplog.at_level(logging.WARNING, logger="sentinel_gw.metrics"):
        m = create_metrics(True, gateway=FakeGateway({}))
    assert not m.enabled
    assert MISSING_EXTRA in caplog.text
    with pytest.raises(MetricsUnavailable) as unavailable:
        m.render()
    assert str(unavailable.value) == "metrics need the 'metrics' extra: pip install 'sentinel-gw[metrics]'"
    m.call_finished(record("files__read"))  # the rest keeps working


def test_core_does_not_import_prometheus_client() -> None:
    code = (
        "import sys\n"
        "import sentinel_gw.ops.metrics, sentinel_gw.ops.admin\n"
        "from sentinel_gw.ops import plugins\n"
        "plugins.names('metrics')\n"
        "sentinel_gw.ops.metrics.create_metrics(False)\n"
        "assert 'prometheus_client' not in sys.modules, 'imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
