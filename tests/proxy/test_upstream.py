"""The upstream side (beeflow/proxy/upstream.py) on its own: request bodies, and the coarse
deadlines, which fire when due, never otherwise, and never swallow somebody else's cancel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from beeflow.proxy.upstream import NO_BODY, Deadlines, OutboundBody
from beeflow.tasks import spawn


async def test_a_deadline_fires_as_timeout_error_close_to_its_time() -> None:
    deadlines = Deadlines(resolution=0.02)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadlines.within(0.1):
            await asyncio.sleep(5)
    elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 0.5
    assert deadlines.pending == 0


async def test_an_operation_in_time_is_untouched_and_leaves_nothing_behind() -> None:
    deadlines = Deadlines(resolution=0.02)
    async with deadlines.within(0.2):
        await asyncio.sleep(0.01)
    assert deadlines.pending == 0
    assert deadlines._tick is None  # no ticker while nothing is pending
    await asyncio.sleep(0.3)  # past the old due time: nothing fires into this task


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    deadlines = Deadlines(resolution=0.02)

    async def guarded() -> None:
        async with deadlines.within(10):
            await asyncio.sleep(5)

    task = spawn(guarded(), name="guarded")
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines.pending == 0


async def test_an_earlier_deadline_moves_the_tick_forward() -> None:
    deadlines = Deadlines(resolution=5.0)  # a slow ticker...
    async with deadlines.within(30):  # ...already scheduled for a far deadline
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with deadlines.within(0.05):
                await asyncio.sleep(5)
        assert time.monotonic() - started < 1.0
    assert deadlines.pending == 0


async def test_many_at_once_fire_exactly_the_late_ones() -> None:
    deadlines = Deadlines(resolution=0.02)
    released = asyncio.Event()  # the odd ones finish as soon as they are released
    never = asyncio.Event()

    async def op(i: int) -> str:
        try:
            async with deadlines.within(1.0):
                await (released if i % 2 else never).wait()
        except TimeoutError:
            return "late"
        return "ok"

    ops = [spawn(op(i), name=f"op-{i}") for i in range(1000)]
    await asyncio.sleep(0)  # all entered their deadline
    released.set()
    results = await asyncio.gather(*ops)
    assert results.count("ok") == 500
    assert results.count("late") == 500
    assert all(r == ("ok" if i % 2 else "late") for i, r in enumerate(results))
    assert deadlines.pending == 0


async def test_asyncio_timeout_outside_still_works() -> None:
    deadlines = Deadlines(resolution=0.02)

    async def guarded() -> None:
        async with asyncio.timeout(0.05), deadlines.within(10):
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await guarded()
    assert deadlines.pending == 0


def test_outbound_body_replayability() -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b""

    assert NO_BODY.replayable
    assert OutboundBody(b"x", 1).replayable
    stream = gen()
    assert not OutboundBody(stream, None).replayable
