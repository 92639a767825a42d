"""requestState sealing and parked calls (sentinel_gw.parking): what an attacker can and cannot do
with a state, and how questions and answers meet."""

from __future__ import annotations

import asyncio

import pytest

from sentinel_gw.parking import (
    MAX_STATE_LENGTH,
    ParkedCall,
    ParkingLot,
    StateError,
    StateSealer,
    call_digest,
    principal,
)
from sentinel_gw.policy.identity import Identity
from sentinel_gw.protocol import jsonrpc

ALICE = principal(Identity("alice", ("admin",), issuer="iss"))
BOB = principal(Identity("bob", ("admin",), issuer="iss"))
DIGEST = call_digest("tools/call", {"name": "t", "arguments": {"a": 1}})


def test_digest_ignores_what_a_retry_adds_and_nothing_else() -> None:
    retry = {
        "name": "t",
        "arguments": {"a": 1},
        "inputResponses": {"k": {}},
        "requestState": "s",
        "_meta": {},
    }
    assert call_digest("tools/call", retry) == DIGEST
    assert call_digest("tools/call", {"name": "t", "arguments": {"a": 2}}) != DIGEST
    assert call_digest("prompts/get", {"name": "t", "arguments": {"a": 1}}) != DIGEST


def test_principal_is_subject_issuer_and_tenant_not_the_token() -> None:
    a1 = Identity("alice", ("admin",), issuer="iss", token_id="one")
    a2 = Identity("alice", ("reader",), issuer="iss", token_id="two")
    assert principal(a1) == principal(a2)  # a refreshed token continues the call
    assert principal(Identity("alice", (), issuer="other")) != principal(a1)
    assert principal(Identity("alice", (), issuer="iss", tenant="t2")) != principal(a1)


def test_seal_round_trip_and_every_tamper_fails() -> None:
    sealer = StateSealer(b"k" * 32)
    state = sealer.seal("call-1", 3, 100.0, ALICE, DIGEST)
    assert len(state) < MAX_STATE_LENGTH
    assert sealer.open(state, ALICE, DIGEST, 99.0) == ("call-1", 3)
    with pytest.raises(StateError):
        sealer.open(state, BOB, DIGEST, 99.0)  # another caller
    with pytest.raises(StateError):
        sealer.open(state, ALICE, call_digest("tools/call", {"name": "u"}), 99.0)  # another call
    with pytest.raises(StateError):
        sealer.open(state, ALICE, DIGEST, 100.5)  # expired
    with pytest.raises(StateError):
        StateSealer(b"x" * 32).open(state, ALICE, DIGEST, 99.0)  # another process's key
    body, tag = state.split(".")[1:]
    forged_body = sealer.seal("call-2", 3, 100.0, ALICE, DIGEST).split(".")[1]
    for bad in (
        f"sgw1.{forged_body}.{tag}",  # another handle under this tag
        state[:-2],
        state + "A",
        "sgw1." + body,
        "sgw1..",
        "sgw1.!!!.???",
        "sgw2." + state[5:],  # a wrapped-state prefix
        "x" * (MAX_STATE_LENGTH + 1),
        "",
        None,
        42,
        ["sgw1."],
    ):
        with pytest.raises(StateError):
            sealer.open(bad, ALICE, DIGEST, 99.0)


def test_wrapped_backend_state() -> None:
    sealer = StateSealer()
    inner = "backend-state-" + "é" * 100
    wrapped = sealer.wrap(inner, 50.0, ALICE, DIGEST)
    assert inner not in wrapped
    assert sealer.unwrap(wrapped, ALICE, DIGEST, 10.0) == inner
    for args in ((wrapped, BOB, DIGEST, 10.0), (wrapped, ALICE, DIGEST, 51.0), (inner, ALICE, DIGEST, 10.0)):
        with pytest.raises(StateError):
            sealer.unwrap(*args)
    with pytest.raises(StateError):
        sealer.open(wrapped, ALICE, DIGEST, 10.0)  # a wrapped state is not a handle


def test_state_error_says_nothing_about_why() -> None:
    messages = set()
    sealer = StateSealer()
    state = sealer.seal("c", 1, 10.0, ALICE, DIGEST)
    for who, now in ((BOB, 1.0), (ALICE, 20.0)):
        with pytest.raises(StateError) as err:
            sealer.open(state, who, DIGEST, now)
        messages.add(err.value.message)
        assert err.value.code == jsonrpc.INVALID_PARAMS
    assert len(messages) == 1


async def test_questions_and_answers_meet() -> None:
    call = ParkedCall("a", ALICE, DIGEST, {"elicitation": {}})
    first = call.ask("elicitation/create", {"message": "name?"}, "elicitation")
    second = call.ask("elicitation/create", {"message": "age?"}, "elicitation")
    assert call.changed.is_set()
    pending = call.pending()
    assert list(pending) == ["elicit-1", "elicit-2"]
    assert pending["elicit-1"] == {"method": "elicitation/create", "params": {"message": "name?"}}
    # Unknown keys and malformed answers are ignored; the question stays pending.
    call.answer({"elicit-1": "nope", "other": {"action": "accept"}})
    assert not first.done()
    call.answer({"elicit-1": {"action": "accept", "content": {"n": "x"}}})
    assert first.result() == {"action": "accept", "content": {"n": "x"}}
    assert list(call.pending()) == ["elicit-2"]
    second.cancel()  # the backend gave up on it
    assert call.pending() == {}


async def test_undeclared_capability_fails_the_question_and_marks_the_call() -> None:
    call = ParkedCall("a", ALICE, DIGEST, {"elicitation": {}})
    answer = call.ask("sampling/createMessage", {}, "sampling")
    with pytest.raises(jsonrpc.JsonRpcError):
        answer.result()
    assert call.missing == "sampling" and call.pending() == {}


async def test_lot_resume_is_single_use_and_expiry_abandons() -> None:
    now = [0.0]
    lot = ParkingLot(ttl=5.0, clock=lambda: now[0])
    call = ParkedCall("a", ALICE, DIGEST, {"elicitation": {}})
    call.task = asyncio.ensure_future(asyncio.sleep(3600))
    lot.add(call)
    question = call.ask("elicitation/create", {}, "elicitation")
    state = lot.park(call)
    assert lot.resume(state, ALICE, DIGEST) is call
    with pytest.raises(StateError):
        lot.resume(state, ALICE, DIGEST)  # spent
    state2 = lot.park(call)
    call.attached = True
    with pytest.raises(StateError):
        lot.resume(state2, ALICE, DIGEST)  # a retry is already waiting on it
    call.attached = False
    now[0] = 6.0
    with pytest.raises(StateError):
        lot.resume(state2, ALICE, DIGEST)  # expired
    lot.drop(call, "no retry")
    await asyncio.sleep(0)
    assert question.done() and isinstance(question.exception(), jsonrpc.JsonRpcError)
    assert call.task.cancelled() and lot.calls == {}


async def test_lot_is_capped() -> None:
    lot = ParkingLot(ttl=5.0, limit=2)
    lot.add(ParkedCall("a", ALICE, DIGEST, {}))
    lot.add(ParkedCall("a", ALICE, DIGEST, {}))
    with pytest.raises(jsonrpc.JsonRpcError) as err:
        lot.add(ParkedCall("a", ALICE, DIGEST, {}))
    assert err.value.code == jsonrpc.RATE_LIMITED


async def test_expiry_timer_drops_the_call() -> None:
    lot = ParkingLot(ttl=0.01)
    call = ParkedCall("a", ALICE, DIGEST, {"elicitation": {}})
    call.task = asyncio.ensure_future(asyncio.sleep(3600))
    lot.add(call)
    question = call.ask("elicitation/create", {}, "elicitation")
    lot.park(call)
    with pytest.raises(jsonrpc.JsonRpcError):
        await asyncio.wait_for(question, 5)
    await asyncio.sleep(0)
    assert lot.calls == {} and call.task.cancelled()
