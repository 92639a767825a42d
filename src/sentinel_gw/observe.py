"""What the gateway tells audit and metrics: one record per call, and gateway events."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sentinel_gw.session import Session

# The client's id of the request being handled (set per request task).
current_request_id: contextvars.ContextVar[Any] = contextvars.ContextVar("current_request_id", default=None)
# Whether the request being handled is a 2026-07-28 (stateless) one.
current_modern: contextvars.ContextVar[bool] = contextvars.ContextVar("current_modern", default=False)
# The capabilities of the client whose request is being handled (None outside a request): a
# 2026-07-28 backend is told, per request, what this caller can answer.
current_client_caps: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "current_client_caps", default=None
)

# Outcome statuses (stable: audit rows and metric labels use them).
SUCCESS = "success"
ERROR = "error"
TIMEOUT = "timeout"
DENIED = "denied"
RATE_LIMITED = "rate_limited"
KILLED = "killed"
INVALID_ARGS = "invalid_args"
CIRCUIT_OPEN = "circuit_open"
CANCELLED = "cancelled"


@dataclass(slots=True)
class CallRecord:
    session: Session
    method: str  # tools/call, resources/read, prompts/get
    name: str | None  # exposed tool or prompt name, or the resource URI
    request_id: Any
    arguments: Any
    started: float
    backend: str | None = None
    original: str | None = None  # the name the backend knows
    status: str = ERROR
    error: str | None = None
    latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Observer(Protocol):
    def call_finished(self, record: CallRecord) -> None: ...

    def gateway_event(self, kind: str, detail: Mapping[str, Any]) -> None: ...
