"""spawn(): the only way to start a background task: every task is named, referenced, reaped; and
Slot, the holder of an object's one task of a kind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

_tasks: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start `coro` as a named task kept alive until it finishes; its failure is logged once."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _tasks.add(task)
    task.add_done_callback(_reap)
    return task


def _reap(task: asyncio.Task[Any]) -> None:
    _tasks.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %s failed", task.get_name(), exc_info=exc)


def running(prefix: str = "") -> list[asyncio.Task[Any]]:
    """The live tasks spawned here whose name starts with `prefix`."""
    return [t for t in _tasks if not t.done() and t.get_name().startswith(prefix)]


async def cancel_all(prefix: str = "", *, timeout: float = 5.0) -> None:
    """Cancel the tasks spawned under `prefix` and wait for them (bounded)."""
    tasks = running(prefix)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


class Slot:
    """At most one task of a kind for its owner (a run, a retry, an expiry): started under one
    name, joined while it runs, cancelled and awaited on close."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start `coro` as this slot's task (the caller checks `running` first if it must join
        the one in flight instead)."""
        self.task = spawn(coro, name=self.name)
        return self.task

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def close(self, timeout: float = 2.0) -> None:
        """Cancel the task and wait for it (bounded)."""
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout)
