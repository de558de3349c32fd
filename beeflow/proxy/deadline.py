"""One timer for a whole relayed stream that only ever interrupts a read (beeflow.proxy.relay's
timed pump: keep-alive comments, the idle cap, the end at the drain deadline)."""

from __future__ import annotations

import asyncio

import aiohttp


class ReadDeadline:
    """One timer for a whole stream that only ever interrupts a read.

    A new `asyncio.timeout_at` per chunk (a Timeout, a TimerHandle scheduled and cancelled)
    cost a fifth of the connector's CPU per event at 200 streams. And one `asyncio.timeout`
    around the whole loop is not safe: it would also fire while a write waits for the client,
    and cancelling aiohttp's drain leaves its shared drain waiter cancelled, which breaks
    every later write on that connection. So the timer cancels the task only while it waits
    in `read()`; a deadline that passes during a write is reported by the next `read()`.

    The deadline only ever moves earlier (`at_most`); one that fires early (bytes flowed
    meanwhile) is re-checked by the caller against the real times and re-armed. Cancellation
    follows asyncio.timeout's protocol (cancelling/uncancel), so a cancel from anyone else
    (the client left) is never swallowed.
    """

    __slots__ = ("_fired", "_handle", "_loop", "_reading", "_task", "_when")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self._when: float | None = None
        self._reading = False
        self._fired = False

    def at_most(self, when: float | None) -> None:
        """Fire no later than `when` (None: no new deadline; an armed one stays)."""
        if when is None or (self._when is not None and self._when <= when):
            return
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = self._when = None
        self.wake()

    def wake(self) -> None:
        """Interrupt the read now (the stream must look at what is due: its end)."""
        self._fired = True
        if self._reading:
            self._task.cancel()

    async def read(self, reader: aiohttp.StreamReader) -> bytes | None:
        """The next chunk (b"" at the end), or None when the deadline passed first."""
        if self._take():
            return None
        cancelling = self._task.cancelling()
        self._reading = True
        try:
            return await reader.readany()
        except asyncio.CancelledError:
            # Ours (the deadline fired) and no other cancel pending: a deadline, not an end.
            if self._take() and self._task.uncancel() <= cancelling:
                return None
            raise
        finally:
            self._reading = False

    def _take(self) -> bool:
        fired, self._fired = self._fired, False
        return fired

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = self._when = None
