"""Automation events on their way to the Bee Flow service: a bounded queue, a few workers, one
signed POST per event to `/api/automation/events/nextcloud` (10 s), retries for what a retry
can fix, and what is still queued at shutdown kept in the persistent storage for the next start
(docs/automations.md, "Forwarding")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import attrs

from beeflow import lease
from beeflow.limits import Interval
from beeflow.serde import iso_utc
from beeflow.service_client import ServiceCallError, ServiceClient, ServiceReply
from beeflow.tasks import spawn

log = logging.getLogger(__name__)

EVENTS_PATH: Final = "/api/automation/events/nextcloud"
SPILL_FILE: Final = "automation-events-pending.json"
MAX_QUEUED: Final = 10_000
WORKERS: Final = 4
ATTEMPTS: Final = 3
# What the service's answer means for the event (the service: server/routes/automation/
# events.js, mounted under /api/automation behind its module and licence gates).
HINTS: Final = {
    401: "the service refused the signature (tenant key or instance id not known there)",
    403: "the service's automations are not available to this organisation (licence)",
    404: "the service has no automations module (or an older path)",
    413: "the event is larger than the service accepts (512 kB)",
}

Item = dict[str, Any]  # {"event", "ncUid", "payload"}
Send = Callable[[str, Item], Awaitable[ServiceReply]]


@attrs.define
class ForwardStats:
    received: int = 0  # deliveries accepted from Nextcloud
    queued_events: int = 0  # events put in the queue (a Deck delivery may be two)
    forwarded: int = 0
    retried: int = 0
    dropped: int = 0  # refused by the service, or still failing after every attempt
    queue_full: int = 0
    ignored: int = 0
    refused_secrets: int = 0
    restored: int = 0
    spilled: int = 0
    last_delivery_at: float | None = None
    last_forwarded_at: float | None = None
    last_error: str = ""
    last_error_at: float | None = None

    def snapshot(self) -> dict[str, Any]:
        out = {
            "received": self.received,
            "forwarded": self.forwarded,
            "retried": self.retried,
            "dropped": self.dropped,
            "queueFull": self.queue_full,
            "ignored": self.ignored,
            "refusedSecrets": self.refused_secrets,
            "lastDeliveryAt": iso_utc(self.last_delivery_at),
            "lastForwardedAt": iso_utc(self.last_forwarded_at),
        }
        if self.restored or self.spilled:
            out["restored"], out["spilled"] = self.restored, self.spilled
        if self.last_error:
            out["lastError"] = self.last_error
            out["lastErrorAt"] = iso_utc(self.last_error_at)
        return out


class Forwarder:
    """The queue and its workers. `send` posts one event (signed by the service client)."""

    def __init__(
        self,
        send: Send,
        *,
        storage: Path | None = None,
        workers: int = WORKERS,
        max_queued: int = MAX_QUEUED,
        attempts: int = ATTEMPTS,
        backoff: float = 1.0,
    ) -> None:
        self._send = send
        self._spill = storage / SPILL_FILE if storage is not None else None
        self.workers = workers
        self.max_queued = max_queued
        self.attempts = attempts
        self.backoff = backoff
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=max_queued)
        self.stats = ForwardStats()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[asyncio.Task[None], Item] = {}
        self._warn = Interval(60.0)

    @classmethod
    def for_service(cls, service: ServiceClient, **kw: Any) -> Forwarder:
        async def send(path: str, item: Item) -> ServiceReply:
            return await service.post_signed(path, item)

        return cls(send, **kw)

    # -- producer side

    def offer(self, item: Item) -> bool:
        """Queue one event; False when the queue is full (the caller answers 503)."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.queue_full += 1
            return False
        self.stats.queued_events += 1
        return True

    def room(self) -> int:
        return self.max_queued - self.queue.qsize()

    # -- workers

    def start(self) -> None:
        self._tasks = [
            spawn(self._work(), name=f"automation-forward-{n}") for n in range(self.workers)
        ]

    async def _work(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while True:
            item = await self.queue.get()
            self._in_flight[me] = item
            try:
                await self._deliver(item)
            finally:
                self._in_flight.pop(me, None)
                self.queue.task_done()

    async def _deliver(self, item: Item) -> None:
        stats = self.stats
        for attempt in range(1, self.attempts + 1):
            problem, retry = await self._once(item)
            if not problem:
                stats.forwarded += 1
                stats.last_forwarded_at = time.time()
                return
            if not retry or attempt == self.attempts:
                break
            stats.retried += 1
            await asyncio.sleep(self.backoff * 3 ** (attempt - 1))
        stats.dropped += 1
        stats.last_error = f"{item.get('event')}: {problem}"[:300]
        stats.last_error_at = time.time()
        if self._warn.ready():
            log.warning(
                "automation event %s not delivered to the service: %s (%d dropped so far)",
                item.get("event"),
                problem,
                stats.dropped,
            )

    async def _once(self, item: Item) -> tuple[str, bool]:
        """('', _) when the service took it; else (why, whether a retry may help)."""
        try:
            reply = await self._send(EVENTS_PATH, item)
        except ServiceCallError as exc:
            return str(exc), True
        if reply.ok:
            return "", False
        problem = f"HTTP {reply.status}"
        hint = HINTS.get(reply.status)
        if hint:
            problem += f": {hint}"
        return problem, reply.status == 429 or reply.status >= 500

    # -- shutdown and start-up

    async def stop(self, settle: float) -> None:
        """Give the queue `settle` seconds, stop the workers, keep what is left for the next
        start (events mid-retry included)."""
        if self._tasks and not self.queue.empty():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), settle)
        left = list(self._in_flight.values())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        while not self.queue.empty():
            left.append(self.queue.get_nowait())
        if left:
            await asyncio.to_thread(self._keep, left)

    def _keep(self, items: list[Item]) -> None:
        if self._spill is None:
            self.stats.dropped += len(items)
            log.warning("%d automation event(s) not delivered: the connector stopped", len(items))
            return

        over = 0

        def add(current: Any) -> Any:
            nonlocal over
            kept = _events(current) + items
            over = max(0, len(kept) - self.max_queued)
            return {"events": kept[over:]}

        try:
            lease.update_json(self._spill, add)
        except OSError as exc:
            self.stats.dropped += len(items)
            log.warning("%d automation event(s) lost at shutdown: %s", len(items), exc.strerror)
            return
        self.stats.spilled += len(items)
        log.info("%d automation event(s) kept for the next start", len(items))
        if over:
            self.stats.dropped += over
            log.warning(
                "%d older automation event(s) dropped: the file holds at most %d",
                over,
                self.max_queued,
            )

    async def restore(self) -> None:
        """Queue what a stopped process kept (this one or a replica; taken once, by one)."""
        if self._spill is None or not self._spill.exists():
            return
        taken: list[Item] = []

        def take(current: Any) -> Any:
            taken.extend(_events(current))
            return {"events": []}

        try:
            await asyncio.to_thread(lease.update_json, self._spill, take)
        except OSError as exc:
            log.warning("automation events kept at the last stop not read: %s", exc.strerror)
            return
        for item in taken:
            if not self.offer(item):
                self.stats.dropped += 1
        self.stats.restored += len(taken)
        if taken:
            log.info("%d automation event(s) from the last stop queued again", len(taken))


def _events(current: Any) -> list[Item]:
    events = current.get("events") if isinstance(current, dict) else None
    if not isinstance(events, list):
        return []
    return [e for e in events if isinstance(e, dict) and isinstance(e.get("event"), str)]
