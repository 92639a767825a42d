"""Who is calling: the result of authentication, consumed by every policy decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    roles: tuple[str, ...]
    tenant: str | None = None
    issuer: str | None = None
    token_id: str | None = None  # the `jti`, when present
    expires_at: float | None = None  # epoch seconds; None = never (mode = "none")
    claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def expired(self, now: float, leeway: float = 0.0) -> bool:
        return self.expires_at is not None and now > self.expires_at + leeway
