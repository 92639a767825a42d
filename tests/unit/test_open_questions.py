"""OpenQuestions: the first question holds a backend's call timeouts, the end of the last frees them."""

from __future__ import annotations

import asyncio

from sentinel_gw.backends.base import OpenQuestions


async def test_first_opens_last_closes_pings_never_count() -> None:
    changes: list[bool] = []
    questions = OpenQuestions(changes.append)
    loop = asyncio.get_running_loop()
    ping, first, second = loop.create_future(), loop.create_future(), loop.create_future()
    questions.opened("ping", ping)
    assert not questions and changes == []
    questions.opened("elicitation/create", first)
    questions.opened("sampling/createMessage", second)
    assert questions and changes == [True]
    first.set_result(None)
    await asyncio.sleep(0)  # done callbacks run soon
    assert questions and changes == [True]
    second.cancel()
    await asyncio.sleep(0)
    assert not questions and changes == [True, False]
