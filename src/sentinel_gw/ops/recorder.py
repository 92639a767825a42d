"""Turns the gateway's call records and events into audit events (redacted, never blocking)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sentinel_gw.config_schema import AuditConfig
from sentinel_gw.observe import CallRecord
from sentinel_gw.ops.audit import AuditEvent, AuditLog, args_policy
from sentinel_gw.ops.redact import redact_args

_KIND = {"tools/call": "call", "resources/read": "resource", "prompts/get": "prompt"}


class AuditRecorder:
    def __init__(self, log: AuditLog, cfg: AuditConfig) -> None:
        self.log = log
        self.cfg = cfg

    def call_finished(self, record: CallRecord) -> None:
        session = record.session
        identity = session.identity
        policy = args_policy(self.cfg, record.name)
        self.log.emit(
            AuditEvent(
                kind=_KIND.get(record.method, "call"),  # type: ignore[arg-type]
                method=record.method,
                status=record.status,
                session=session.id,
                subject=identity.subject,
                roles=list(identity.roles),
                client_name=session.client_name or None,
                transport=session.transport,
                tool=record.name,
                original=record.original,
                backend=record.backend,
                args=redact_args(record.arguments, policy) if record.arguments is not None else None,
                error=record.error,
                latency_ms=round(record.latency_ms, 3),
                request_id=None if record.request_id is None else str(record.request_id),
            )
        )

    def gateway_event(self, kind: str, detail: Mapping[str, Any]) -> None:
        self.log.emit(AuditEvent(kind="gateway", method=kind, status="ok", detail=dict(detail)))
