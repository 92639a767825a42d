"""Parked calls: a handshake-era backend's question reaching a 2026-07-28 client.

A handshake-era backend asks mid-call (`elicitation/create`, `sampling/createMessage`,
`roots/list`) and waits for the answer; a 2026-07-28 client cannot be asked, it can only be told
(`input_required`) and retry. So the gateway parks the backend call, answers the client with the
questions under its own keys plus a `requestState` sealing a handle to the parked call, and on the
client's retry feeds the answers to the waiting backend and waits again.

`requestState` comes back from the client, so it is attacker input. The seal is an HMAC (key known
only to this process) over the handle, the round, the expiry, the caller and a digest of the
call's method and params: a state cannot be forged, moved to another caller or another call, used
after expiry, or replayed once its round is answered. Which check failed is never said: an
attacker learns nothing from the error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from sentinel_gw.policy.identity import Identity
from sentinel_gw.protocol import jsonrpc

STATE_PREFIX = "sgw1."  # a handle to a call parked here
WRAPPED_PREFIX = "sgw2."  # a 2026-07-28 backend's own requestState, bound to its caller
MAX_STATE_LENGTH = 512
MAX_WRAPPED_LENGTH = 256 * 1024
# Parts of a retry that legitimately differ from the original request.
RETRY_ONLY_KEYS = frozenset({"inputResponses", "requestState", "_meta"})
_QUESTION_KEY_PREFIX = {
    "elicitation/create": "elicit",
    "sampling/createMessage": "sample",
    "roots/list": "roots",
}


class StateError(jsonrpc.JsonRpcError):
    def __init__(self) -> None:
        super().__init__(
            jsonrpc.INVALID_PARAMS,
            "Invalid params: requestState is invalid, expired or already used; "
            "send the request again without inputResponses and requestState",
        )


def principal(identity: Identity) -> str:
    """Who may continue a parked call: the same subject of the same issuer and tenant. A fresh
    token for the same subject may continue it; another subject may not."""
    return json.dumps([identity.issuer, identity.tenant, identity.subject])


def call_digest(method: str, params: Mapping[str, Any]) -> str:
    """The call a state belongs to: method and params, without what a retry adds or changes."""
    kept = {k: v for k, v in params.items() if k not in RETRY_ONLY_KEYS}
    canonical = json.dumps([method, kept], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StateSealer:
    """Seals and opens `requestState` handles. Sans-I/O: the clock is passed in."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, body: str, who: str, digest: str) -> bytes:
        message = "\n".join((body, who, digest)).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _open(self, state: object, prefix: str, limit: int, who: str, digest: str) -> list[Any]:
        if not isinstance(state, str) or len(state) > limit or not state.startswith(prefix):
            raise StateError()
        body, _, tag = state[len(prefix) :].partition(".")
        try:
            genuine = hmac.compare_digest(_unb64(tag), self._mac(prefix + body, who, digest))
            fields = json.loads(_unb64(body)) if genuine else None
        except (ValueError, binascii.Error):
            raise StateError() from None
        if not isinstance(fields, list):
            raise StateError()
        return fields

    def _seal(self, prefix: str, fields: list[Any], who: str, digest: str) -> str:
        body = _b64(json.dumps(fields, separators=(",", ":")).encode("utf-8", "surrogatepass"))
        return f"{prefix}{body}.{_b64(self._mac(prefix + body, who, digest))}"

    def seal(self, call_id: str, round_no: int, expires: float, who: str, digest: str) -> str:
        return self._seal(STATE_PREFIX, [call_id, round_no, round(expires, 3)], who, digest)

    def open(self, state: object, who: str, digest: str, now: float) -> tuple[str, int]:
        """(call id, round) of a genuine, current state for this caller and call; else StateError."""
        fields = self._open(state, STATE_PREFIX, MAX_STATE_LENGTH, who, digest)
        if not (
            len(fields) == 3
            and isinstance(fields[0], str)
            and isinstance(fields[1], int)
            and isinstance(fields[2], (int, float))
            and now <= fields[2]
        ):
            raise StateError()
        return fields[0], fields[1]

    def wrap(self, inner: str, expires: float, who: str, digest: str) -> str:
        """A backend's own requestState, sealed to this caller and call: the backend never learns
        who calls (tokens stay here), so only the gateway can stop another caller replaying it."""
        return self._seal(WRAPPED_PREFIX, [inner, round(expires, 3)], who, digest)

    def unwrap(self, state: object, who: str, digest: str, now: float) -> str:
        fields = self._open(state, WRAPPED_PREFIX, MAX_WRAPPED_LENGTH, who, digest)
        if not (
            len(fields) == 2
            and isinstance(fields[0], str)
            and isinstance(fields[1], (int, float))
            and now <= fields[1]
        ):
            raise StateError()
        return fields[0]


class Question:
    __slots__ = ("answer", "request")

    def __init__(self, request: dict[str, Any], answer: asyncio.Future[dict[str, Any]]) -> None:
        self.request = request
        self.answer = answer


class ParkedCall:
    """One call to a handshake-era backend made for a 2026-07-28 client. It runs as its own task
    (it outlives the client's request while the client answers) and collects the backend's
    questions until a client request takes them."""

    def __init__(self, backend: str, who: str, digest: str, caps: Mapping[str, Any]) -> None:
        self.id = secrets.token_urlsafe(12)
        self.backend = backend
        self.who = who
        self.digest = digest
        self.caps: Mapping[str, Any] = caps  # of the request currently attached
        self.round = 0
        self.task: asyncio.Task[dict[str, Any]] | None = None
        self.questions: dict[str, Question] = {}
        self.missing: str | None = None  # a capability the backend needed and the client lacks
        self.attached = False  # a client request is waiting on this call now
        self.changed = asyncio.Event()
        self.expiry: asyncio.TimerHandle | None = None
        self.progress: Callable[[dict[str, Any]], None] | None = None
        self._asked = 0

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def relay_progress(self, upstream: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(upstream)

    def ask(self, method: str, params: dict[str, Any], capability: str) -> asyncio.Future[dict[str, Any]]:
        """The backend's question; its answer arrives when the client retries."""
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if capability not in self.caps:
            self.missing = capability
            answer.set_exception(
                jsonrpc.JsonRpcError(jsonrpc.METHOD_NOT_FOUND, f"The client does not support {capability}")
            )
        else:
            self._asked += 1
            key = f"{_QUESTION_KEY_PREFIX.get(method, 'input')}-{self._asked}"
            self.questions[key] = Question({"method": method, "params": params}, answer)
        self.changed.set()
        return answer

    def pending(self) -> dict[str, dict[str, Any]]:
        """Questions still waiting for an answer, dropping those the backend gave up on."""
        for key in [k for k, q in self.questions.items() if q.answer.done()]:
            del self.questions[key]
        return {key: q.request for key, q in self.questions.items()}

    def answer(self, responses: object) -> None:
        """Feed the client's inputResponses to the waiting backend requests; missing or
        malformed answers leave their question pending (it is asked again)."""
        if not isinstance(responses, dict):
            return
        for key, value in responses.items():
            question = self.questions.get(key)
            if question is None or question.answer.done() or not isinstance(value, dict):
                continue
            question.answer.set_result(value)
            del self.questions[key]

    def abandon(self, reason: str) -> None:
        """No retry came (or the call is over): the backend's questions fail, the call stops."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        for question in self.questions.values():
            if not question.answer.done():
                question.answer.set_exception(jsonrpc.JsonRpcError(jsonrpc.REQUEST_TIMEOUT, reason))
        self.questions.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()


class ParkingLot:
    """The parked calls of one gateway, found by handle, capped, each dropped at its expiry."""

    def __init__(self, ttl: float, limit: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.limit = limit
        self.clock = clock
        self.sealer = StateSealer()
        self.calls: dict[str, ParkedCall] = {}

    def add(self, call: ParkedCall) -> None:
        if len(self.calls) >= self.limit:
            raise jsonrpc.JsonRpcError(
                jsonrpc.RATE_LIMITED,
                "Too many calls are waiting for client input; retry shortly",
                {"reason": "too_many_parked", "retry_after_ms": 1000, "retryAfter": 1},
            )
        self.calls[call.id] = call

    def drop(self, call: ParkedCall, reason: str = "call finished") -> None:
        call.abandon(reason)
        if self.calls.get(call.id) is call:
            del self.calls[call.id]

    def running_on(self, backend: str) -> list[ParkedCall]:
        return [c for c in self.calls.values() if c.backend == backend and c.running]

    def park(self, call: ParkedCall) -> str:
        """Start the wait for the client's retry: a fresh round, its sealed state, its expiry."""
        call.round += 1
        expires = self.clock() + self.ttl
        if call.expiry is not None:
            call.expiry.cancel()
        call.expiry = asyncio.get_running_loop().call_later(
            self.ttl, self.drop, call, f"the client did not answer within {self.ttl:g} s"
        )
        return self.sealer.seal(call.id, call.round, expires, call.who, call.digest)

    def resume(self, state: object, who: str, digest: str) -> ParkedCall:
        """The parked call a retry continues; each round's state works once."""
        call_id, round_no = self.sealer.open(state, who, digest, self.clock())
        call = self.calls.get(call_id)
        if call is None or call.round != round_no or call.attached:
            raise StateError()
        if call.expiry is not None:
            call.expiry.cancel()
            call.expiry = None
        call.round += 1  # this state is spent, whatever happens next
        return call

    def wrap(self, inner: str, who: str, digest: str) -> str:
        return self.sealer.wrap(inner, self.clock() + self.ttl, who, digest)

    def unwrap(self, state: object, who: str, digest: str) -> str:
        return self.sealer.unwrap(state, who, digest, self.clock())

    def close(self) -> None:
        for call in list(self.calls.values()):
            self.drop(call, "the gateway is stopping")
