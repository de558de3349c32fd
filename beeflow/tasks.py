"""spawn(): the only way to start a background task: every task is named, referenced, reaped."""

from __future__ import annotations

import asyncio
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
