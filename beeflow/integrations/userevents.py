"""User/group events on their way to the Bee Flow service: signed posts to
`/auth/webhook/nc-user-sync`, with a memory of what the webhook delivered so the reconciliation
does not send it a second time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow import storage
from beeflow.lease import FileWatch, update_json
from beeflow.serde import iso_utc
from beeflow.service_client import ServiceCallError, ServiceClient
from beeflow.tasks import spawn

log = logging.getLogger(__name__)

USER_SYNC_PATH: Final = "/auth/webhook/nc-user-sync"
USER_EVENTS: Final = (
    "user.created",
    "user.deleted",
    "user.updated",
    "group.member_added",
    "group.member_removed",
)
RECENT_FILE: Final = "user-events-recent.json"
RECENT_MAX: Final = 5000
# Deliveries are written to RECENT_FILE at most this long after they happen.
FLUSH_DELAY: Final = 0.5


EventKey = tuple[str, str, str]  # (event, uid, groupId or "")


@attrs.define
class ForwardStats:
    forwarded: int = 0
    failed: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    last_forwarded_at: float | None = None

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"forwarded": self.forwarded, "failed": self.failed}
        if self.last_error:
            out["lastError"] = self.last_error
            out["lastErrorAt"] = iso_utc(self.last_error_at)
        if self.last_forwarded_at:
            out["lastForwardedAt"] = iso_utc(self.last_forwarded_at)
        return out


class UserEvents:
    """Sends user/group events to `/auth/webhook/nc-user-sync`, signed, and remembers which the
    webhook delivered so the reconciliation does not send them a second time."""

    def __init__(self, service: ServiceClient, directory: Path, sync_interval: float) -> None:
        self._service = service
        self._sync_interval = sync_interval
        self._path = directory / RECENT_FILE
        self._recent: dict[EventKey, float] = {}
        self._lock = asyncio.Lock()
        self._dirty = False
        self._flusher: asyncio.Task[None] | None = None
        self._file = FileWatch(self._path)
        self.stats: dict[str, ForwardStats] = {"webhook": ForwardStats(), "sync": ForwardStats()}

    @staticmethod
    def payload(event: str, uid: str, group_id: str | None) -> dict[str, Any]:
        return {"event": event, "ncUid": uid, "groupId": group_id}

    async def forward(self, event: str, uid: str, group_id: str | None, *, origin: str) -> str:
        """Send one event. Returns "sent" (2xx), "rejected" (a 4xx that a retry cannot fix: the
        event is dropped, logged) or "retry" (network, 5xx, 401/403/408/429, no key yet).
        Every failure is logged here."""
        stats = self.stats.setdefault(origin, ForwardStats())
        outcome = "retry"
        try:
            body = self.payload(event, uid, group_id)
            reply = await self._service.post_signed(USER_SYNC_PATH, body)
        except ServiceCallError as exc:
            problem = str(exc)
        else:
            if reply.ok:
                stats.forwarded += 1
                stats.last_forwarded_at = time.time()
                if origin == "webhook":
                    await self._remember((event, uid, group_id or ""))
                return "sent"
            problem = f"HTTP {reply.status}"
            code = reply.data.get("code") if isinstance(reply.data, dict) else None
            if isinstance(code, str) and code:
                problem += f" ({code[:80]})"
            if 400 <= reply.status < 500 and reply.status not in (401, 403, 408, 429):
                outcome = "rejected"
        stats.failed += 1
        stats.last_error = f"{event}: {problem}"[:300]
        stats.last_error_at = time.time()
        log.warning(
            "%s event %s for %s not delivered to the service: %s%s",
            origin,
            event,
            uid,
            problem,
            _after_failure(origin, outcome),
        )
        return outcome

    # -- deliveries seen through the webhook

    def delivered_since(self, key: EventKey, since: float) -> bool:
        at = self._recent.get(key)
        return at is not None and at >= since

    async def _remember(self, key: EventKey) -> None:
        """Record a delivery now; the file follows within FLUSH_DELAY (one write for a burst,
        not an fsync per webhook)."""
        now = time.time()
        self._recent.pop(key, None)
        self._recent[key] = now  # insertion order is time order: the oldest comes first
        horizon = now - 2 * self._sync_interval - 3600
        if len(self._recent) > RECENT_MAX or next(iter(self._recent.values())) < horizon:
            fresh = {k: t for k, t in self._recent.items() if t >= horizon}
            if len(fresh) > RECENT_MAX:
                fresh = dict(sorted(fresh.items(), key=lambda kv: kv[1])[-RECENT_MAX:])
            self._recent = fresh
        self._dirty = True
        if self._flusher is None or self._flusher.done():
            self._flusher = spawn(self._flush_later(), name="user-events-flush")

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        await self.flush()

    async def flush(self) -> None:
        """Merge the remembered deliveries into the file if they changed (also at shutdown):
        replicas on one storage each receive some of the webhook's deliveries, and the one that
        runs the reconciliation must know them all."""
        async with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            ours = dict(self._recent)
            try:
                await asyncio.to_thread(update_json, self._path, lambda data: _merged(data, ours))
            except OSError as exc:
                log.warning(
                    "%s not written (%s): webhook deliveries are kept in memory only",
                    RECENT_FILE,
                    storage.describe_os_error(exc),
                )
                return
            self._file.mark()

    def refresh(self) -> None:
        """Deliveries other replicas received (read when the file changed)."""
        if self._file.changed():
            self.load()

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()

    def load(self) -> None:
        self._file.mark()
        for key, at in _rows(storage.read_json(self._path)).items():
            if at > self._recent.get(key, 0.0):
                self._recent.pop(key, None)
                self._recent[key] = at


def _rows(data: Any) -> dict[EventKey, float]:
    """RECENT_FILE's deliveries, leniently (unusable rows are skipped)."""
    rows = data.get("events") if isinstance(data, dict) else None
    out: dict[EventKey, float] = {}
    for row in rows if isinstance(rows, list) else ():
        if (
            isinstance(row, list)
            and len(row) == 4
            and all(isinstance(x, str) for x in row[:3])
            and isinstance(row[3], int | float)
        ):
            out[(row[0], row[1], row[2])] = float(row[3])
    return out


def _merged(data: Any, ours: dict[EventKey, float]) -> dict[str, Any]:
    """The file's deliveries and ours, the latest time of each, the newest RECENT_MAX kept."""
    merged = _rows(data)
    for key, at in ours.items():
        if at > merged.get(key, 0.0):
            merged[key] = at
    newest = sorted(merged.items(), key=lambda kv: kv[1])[-RECENT_MAX:]
    return {"events": [[e, u, g, t] for (e, u, g), t in newest]}


def _after_failure(origin: str, outcome: str) -> str:
    if origin == "webhook":
        return "; the next reconciliation sends what the service missed"
    return " (dropped)" if outcome == "rejected" else " (kept for the next run)"


USER_EVENTS_SINK: web.AppKey[UserEvents] = web.AppKey("user_events")


def install(app: web.Application, sink: UserEvents) -> None:
    """The forwarder, loaded at start-up and flushed at shutdown (before the service session
    closes: install it after the service client)."""
    app[USER_EVENTS_SINK] = sink

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(sink.load)
        yield
        await sink.close()

    app.cleanup_ctx.append(ctx)
