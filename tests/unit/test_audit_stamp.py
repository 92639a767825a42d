"""The audit hot path's cheaper pieces give exactly what the plain versions gave."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone

import pytest

from sentinel_gw.ops import audit
from sentinel_gw.ops.audit import AuditEvent, _rfc3339, _time_text, canonical_json, new_event_id


@pytest.mark.parametrize(
    "ns", [0, 1_700_000_000_123_456_789, 1_700_000_000_999_999_999, 4_102_444_799_000_000_000]
)
def test_time_text_matches_datetime_formatting(ns: int) -> None:
    dt = datetime.fromtimestamp(ns // 1_000_000_000, timezone.utc).replace(
        microsecond=(ns % 1_000_000_000) // 1000
    )
    assert _time_text(ns) == _rfc3339(dt)


def test_time_text_cache_follows_the_second() -> None:
    base = 1_700_000_000 * 1_000_000_000
    assert _time_text(base + 5_000_000).endswith(":20.005Z")
    assert _time_text(base + 1_000_000_000 + 7_000_000).endswith(":21.007Z")
    assert _time_text(base + 999_000_000).endswith(":20.999Z")


def test_event_ids_are_unique_sorted_and_random() -> None:
    ids = [new_event_id() for _ in range(3000)]  # crosses several random batches
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({i[16:] for i in ids}) == len(ids)  # the random part never repeats


def test_emit_stamps_id_and_time_from_one_clock() -> None:
    event_id, text = audit._stamp()
    ms = int(event_id[:12], 16)
    assert text == _time_text(ms * 1_000_000)
    assert abs(ms / 1000 - time.time()) < 60


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_forked_child_draws_fresh_random_bits() -> None:
    new_event_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(w, new_event_id().encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    parent = new_event_id()
    assert child[16:] != parent[16:]


def test_canonical_json_is_the_documented_form() -> None:
    ev = AuditEvent(method="tools/call", status="success", args={"b": "é", "a": [1, 2.5]}, roles=["r"])
    data = ev.to_dict()
    del data["hash"]
    expected = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    assert canonical_json(ev) == expected
