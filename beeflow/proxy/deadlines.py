"""Coarse deadlines for many concurrent operations: one ticker instead of one timer each.

`asyncio.timeout` schedules a TimerHandle on the loop's heap for every operation and cancels
it when the operation ends in time. For the response-headers deadline of every proxied request
(tens of seconds, nearly always met) that was about 15 µs per request on the benchmark
machine, roughly 5 % of the connector's CPU. Here an operation costs a dict insert and delete;
one ticker, running only while operations are pending, fires the ones that are due.

    deadlines = Deadlines()
    async with deadlines.within(60.0):   # raises TimeoutError like asyncio.timeout
        ...

A deadline fires between its due time and `resolution` seconds later (earlier deadlines
than the next tick move the tick forward). Cancellation follows asyncio.timeout's protocol
(cancelling/uncancel), so a cancel from anyone else is never turned into a TimeoutError.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final

DEFAULT_RESOLUTION: Final = 0.25


class Deadlines:
    """The pending deadlines of one owner (one per upstream client)."""

    def __init__(self, resolution: float = DEFAULT_RESOLUTION) -> None:
        self._resolution = resolution
        self._pending: dict[Within, None] = {}  # an insertion-ordered set
        self._tick: asyncio.TimerHandle | None = None
        self._tick_at = 0.0

    def within(self, seconds: float) -> Within:
        return Within(self, seconds)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _add(self, item: Within, loop: asyncio.AbstractEventLoop) -> None:
        self._pending[item] = None
        if self._tick is None or item.due < self._tick_at:
            if self._tick is not None:
                self._tick.cancel()
            self._schedule(loop, min(item.due, loop.time() + self._resolution))

    def _discard(self, item: Within) -> None:
        self._pending.pop(item, None)
        if not self._pending and self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def _schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._tick_at = when
        self._tick = loop.call_at(when, self._fire_due, loop)

    def _fire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tick = None
        now = loop.time()
        due = [item for item in self._pending if item.due <= now]
        for item in due:
            del self._pending[item]
            item.fire()
        if self._pending:
            earliest = min(item.due for item in self._pending)
            self._schedule(loop, max(min(earliest, now + self._resolution), now))


class Within:
    """One operation's deadline: an async context manager, used once."""

    __slots__ = ("_cancelling", "_fired", "_owner", "_seconds", "_task", "due")

    def __init__(self, owner: Deadlines, seconds: float) -> None:
        self._owner = owner
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._fired = False
        self.due = 0.0

    async def __aenter__(self) -> Within:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.within() must be used inside a task")
        loop = asyncio.get_running_loop()
        self._task = task
        self._cancelling = task.cancelling()
        self.due = loop.time() + self._seconds
        self._owner._add(self, loop)
        return self

    def fire(self) -> None:
        assert self._task is not None
        self._fired = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._discard(self)
        if self._fired:
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
