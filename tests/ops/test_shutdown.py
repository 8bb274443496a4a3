"""``until_draining``: a push stream ends with a farewell on shutdown, and cleans up when
its subscriber leaves (the process-level behaviour is in test_processes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from broker.ops.metrics import PUSH_SUBSCRIBERS
from broker.ops.shutdown import Draining, until_draining


def _subscribers() -> float:
    return PUSH_SUBSCRIBERS._value.get()  # type: ignore[attr-defined]  # single-process gauge


class Ticks:
    """An endless stream, like the revocation stream's loop, that records its closing."""

    def __init__(self) -> None:
        self.closed = False

    async def run(self) -> AsyncIterator[int]:
        try:
            count = 0
            while True:
                await asyncio.sleep(0.01)
                count += 1
                yield count
        finally:
            self.closed = True


def test_the_stream_ends_with_a_farewell_when_draining_begins() -> None:
    async def scenario() -> tuple[list[object], bool, float, float]:
        draining, ticks = Draining(), Ticks()
        stream = until_draining(ticks.run(), draining, "farewell")
        seen: list[object] = [await anext(stream), await anext(stream)]
        during = _subscribers()
        draining.begin()
        seen += [item async for item in stream]
        return seen, ticks.closed, during, _subscribers()

    base = _subscribers()
    seen, closed, during, after = asyncio.run(scenario())
    assert seen[:2] == [1, 2] and seen[-1] == "farewell" and len(seen) <= 4
    assert closed
    assert during == base + 1 and after == base


def test_a_subscriber_leaving_closes_the_stream() -> None:
    async def scenario() -> tuple[bool, float]:
        ticks = Ticks()
        stream = until_draining(ticks.run(), Draining(), "farewell")

        async def consume() -> None:
            async for _ in stream:
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        task.cancel()  # the client went away: the server cancels the response
        await asyncio.gather(task, return_exceptions=True)
        await stream.aclose()
        return ticks.closed, _subscribers()

    base = _subscribers()
    closed, after = asyncio.run(scenario())
    assert closed and after == base


def test_a_stream_that_ends_by_itself_ends() -> None:
    async def finite() -> AsyncIterator[int]:
        for value in (1, 2, 3):
            yield value

    async def scenario() -> list[int]:
        return [item async for item in until_draining(finite(), Draining(), -1)]

    assert asyncio.run(scenario()) == [1, 2, 3]
