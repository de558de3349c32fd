"""Periodic user/group reconciliation with Nextcloud: the only user/group sync that works on
Nextcloud 32+ (docs/nextcloud-measured.md, "User and group events"), and a safety net on 31.

Every `sync_interval_seconds` (or when triggered) it lists the users through AppAPI (the only
source that decides who exists), finds an enabled administrator (the remembered one, checked by
reading their own account), reads everyone's mail, display name and groups as that administrator
through `cloud/users/details` (500 a call, so the impersonation log gets one line per page, not
per user), diffs that against the last snapshot kept in APP_PERSISTENT_STORAGE and sends the same
five event kinds as the webhook, through the same signed path. A listed user that cannot be read
(disabled, or gone since the listing) keeps their last known record. The first run records a
baseline and sends nothing. The new snapshot and the events still to send are written together
before sending, so a crash resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from beeflow import storage
from beeflow.config import Config
from beeflow.errors import NextcloudError
from beeflow.health import provide
from beeflow.integrations.userevents import USER_EVENTS, UserEvents
from beeflow.integrations.userlisting import UserListing
from beeflow.integrations.userrecords import (
    Event,
    Snapshot,
    SyncAborted,
    SyncStatus,
    aborted_by,
    diff,
    read_state,
    status_fields,
)
from beeflow.lease import LEASES, FileWatch, LeaseHolder, read_json, write_json
from beeflow.nextcloud.client import NextcloudClient
from beeflow.phases import InitPhase, add_phase
from beeflow.tasks import Slot, spawn
from beeflow.tenant.state import TenantState
from beeflow.web.auth import Access, add_route
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

STATE_FILE: Final = "user-sync.json"
STATE_VERSION: Final = 1
SEND_CONCURRENCY: Final = 4
# Sent events between two writes of what was sent (PROGRESS_FILE, a few bytes per event: the
# snapshot and the queue are written once before the sends and once after them, never per
# batch, so a run's writes grow with the users, not with their square).
PERSIST_EVERY: Final = 25
PROGRESS_FILE: Final = "user-sync-sent.json"
PENDING_MAX: Final = 50_000


class UserSync:
    """The reconciliation loop and its persisted state (snapshot + events still to send)."""

    def __init__(
        self,
        config: Config,
        path: Path,
        tenant: TenantState,
        nextcloud: NextcloudClient,
        sink: UserEvents,
    ) -> None:
        self._interval = config.sync_interval_seconds
        self._tenant = tenant
        self._client = nextcloud
        self._sink = sink
        self.path = path
        self.snapshot: Snapshot | None = None
        self.taken_at: float | None = None
        self.pending: list[Event] = []
        self.status = SyncStatus()
        self._listing = UserListing(nextcloud, self.status)
        self._wake = asyncio.Event()
        self.run_slot = Slot("usersync-run")
        self._write_lock = asyncio.Lock()
        # Replicas on one storage: one syncs at a time, under this lease, starting from the
        # state file the previous one left (it is re-read when it changed since our look).
        self.lease: LeaseHolder | None = None
        self._file = FileWatch(path)
        self._progress = FileWatch(path.with_name(PROGRESS_FILE))
        self._queue_id = ""  # the queue as written to `path`: what PROGRESS_FILE refers to
        self._written: list[Event] = []

    # -- persistence

    def load(self) -> None:
        """The state file as it is now (at start-up, and when another replica changed it),
        less the events a run that stopped half-way recorded as sent."""
        self._file.mark()
        self._progress.mark()
        data = storage.read_json(self.path)
        state = read_state(data, USER_EVENTS)
        if state.snapshot is not None:
            self.snapshot, self.taken_at = state.snapshot, state.taken_at
            self.status.baseline_at = state.baseline_at
        queue = data.get("queueId") if isinstance(data, dict) else None
        self._queue_id = queue if isinstance(queue, str) else ""
        self._written = list(state.pending)
        sent = _sent(read_json(self.path.with_name(PROGRESS_FILE)), self._queue_id)
        self.pending = [e for i, e in enumerate(state.pending) if i not in sent]
        if self.pending:
            log.info("user sync resumes with %d event(s) still to send", len(self.pending))

    async def _reload_if_changed(self) -> None:
        """Another replica ran the sync since our last look: take its snapshot and queue."""
        if self._file.changed() | self._progress.changed():
            await asyncio.to_thread(self.load)

    def _chunks(self, snapshot: Snapshot | None, pending: list[Event]) -> Iterator[str]:
        """user-sync.json piece by piece (100,000 users make 18 MB: never built whole)."""
        dumps = json.dumps
        head = {"version": STATE_VERSION, "baselineAt": self.status.baseline_at}
        yield dumps(head)[:-1] + ', "queueId": ' + dumps(self._queue_id) + ', "snapshot": '
        if snapshot is None:
            yield "null"
        else:
            yield '{"takenAt": ' + dumps(self.taken_at) + ', "users": {'
            for n, uid in enumerate(sorted(snapshot)):
                yield ("" if n == 0 else ", ") + dumps(uid) + ": " + dumps(snapshot[uid].to_json())
            yield "}}"
        yield ', "pending": ' + dumps([list(e) for e in pending]) + "}\n"

    async def persist(self) -> None:
        """The snapshot and the queue, together (a new queue id: no progress refers to it)."""
        async with self._write_lock:
            self._queue_id = secrets.token_hex(8)
            self._written = list(self.pending)
            chunks = self._chunks(self.snapshot, self._written)
            try:
                await storage.write_text(self.path, chunks)
                self._file.mark()
            except storage.StoreError as exc:
                # Kept in memory; the next run writes again. Said once per run in the status.
                self.status.last_error = str(exc)
                log.error("%s: user sync state kept in memory only", exc)

    async def _note_sent(self, sent: set[int]) -> None:
        """Which events of the queue written last have gone (a crash resumes after them)."""
        path = self.path.with_name(PROGRESS_FILE)
        progress = {"queueId": self._queue_id, "sent": sorted(sent)}
        try:
            await asyncio.to_thread(write_json, path, progress)
            self._progress.mark()
        except OSError as exc:
            log.warning("%s not written (%s)", PROGRESS_FILE, storage.describe_os_error(exc))

    # -- scheduling

    def trigger(self) -> None:
        """Ask for a run now (the loop coalesces triggers)."""
        self._wake.set()

    async def loop(self) -> None:
        interval = self._interval
        while True:
            self.status.next_run_at = time.time() + interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            explicit = self._wake.is_set()
            self._wake.clear()
            await self.run(scheduled=not explicit)

    async def run(self, *, scheduled: bool = False) -> None:
        """Single-flight: a run in progress is joined. A scheduled run is skipped while another
        replica syncs, or when one did within half an interval; an asked-for run waits for it
        and then runs from what it left."""
        task = self.run_slot.task if self.run_slot.running else None
        if task is None:
            task = self.run_slot.start(self._as_the_one(scheduled))
        await asyncio.shield(task)

    async def _as_the_one(self, scheduled: bool) -> None:
        if self.lease is None:
            await self._run_once()
            return
        async with self.lease.hold(wait=not scheduled) as held:
            if not held:
                self.status.state = "standby"
                log.debug("user sync: another replica is syncing")
                return
            await self._reload_if_changed()
            self._sink.refresh()
            recent = self.taken_at is not None and time.time() - self.taken_at < self._interval / 2
            if scheduled and recent and not self.pending:
                self.status.state = "standby"
                return
            await self._run_once()

    # -- one run

    async def _run_once(self) -> None:
        status = self.status
        status.runs += 1
        status.last_run_at = time.time()
        status.events_sent = 0
        status.events_skipped = 0
        status.last_error = ""
        status.state = "running"
        try:
            await self._reconcile()
        except SyncAborted as exc:
            status.state = exc.state
            status.last_error = str(exc)
            level = logging.INFO if exc.state == "waiting_for_tenant_key" else logging.WARNING
            log.log(level, "user sync stopped: %s", exc)
        except asyncio.CancelledError:
            status.state = "idle"
            raise
        except Exception as exc:
            status.state = "failed"
            status.last_error = type(exc).__name__
            log.exception("user sync crashed")

    async def _reconcile(self) -> None:
        status = self.status
        if not self._tenant.key:
            raise SyncAborted("no tenant key yet", state="waiting_for_tenant_key")
        if self.pending:
            await self._send()
            if self.pending:
                raise SyncAborted(
                    f"{len(self.pending)} event(s) could not be delivered; retrying next run"
                )
        client = self._client
        if client.budget.spent:
            raise SyncAborted("AppAPI refused too many calls; paused", state="paused")
        if client.app_enabled is False:
            # Every call but ex-app/state would be refused: look again with that one call.
            try:
                client.app_enabled = client.enabled_flag(await client.probe())
            except NextcloudError as exc:
                raise aborted_by(exc) from None
            if client.app_enabled is False:
                raise SyncAborted("the app is disabled in Nextcloud", state="app_disabled")
        started = time.time()
        current = await self._listing.read(self.snapshot or {})
        status.users_seen = len(current)
        if self.snapshot is None:
            self.snapshot, self.taken_at = current, started
            status.baseline_at = started
            await self.persist()
            status.state = "baseline"
            status.last_success_at = time.time()
            log.info("user sync baseline recorded: %d user(s)", len(current))
            return
        events = diff(self.snapshot, current)
        since = self.taken_at or 0.0
        sink = self._sink
        fresh = [e for e in events if not sink.delivered_since((e[0], e[1], e[2] or ""), since)]
        status.events_skipped = len(events) - len(fresh)
        self.pending = (self.pending + fresh)[-PENDING_MAX:]
        self.snapshot, self.taken_at = current, started
        await self.persist()  # the new snapshot and its events, together
        if self.pending:
            await self._send()
        if self.pending:
            raise SyncAborted(
                f"{len(self.pending)} event(s) could not be delivered; retrying next run"
            )
        status.state = "ok"
        status.last_success_at = time.time()
        if fresh or status.events_skipped:
            log.info(
                "user sync: %d user(s), %d event(s) sent, %d already delivered by the webhook",
                len(current),
                status.events_sent,
                status.events_skipped,
            )

    async def _send(self) -> None:
        """Send the queue: one user's events in order, several users at once. Events that failed
        for a retryable reason stay queued; rejected ones are dropped (and were logged)."""
        sink = self._sink
        queue = list(self.pending)
        if not self._queue_id or queue != self._written:
            await self.persist()  # the queue as it is now, so the progress refers to it
        by_user: dict[str, list[Event]] = {}
        for event in queue:
            by_user.setdefault(event[1], []).append(event)
        done: set[int] = set()
        index = {id(e): i for i, e in enumerate(queue)}
        limit = asyncio.Semaphore(SEND_CONCURRENCY)
        since_write = 0

        async def send_user(events: Iterable[Event]) -> None:
            nonlocal since_write
            async with limit:
                for event in events:
                    outcome = await sink.forward(event[0], event[1], event[2], origin="sync")
                    if outcome == "retry":
                        return  # keep this user's order: the rest waits for the next run
                    done.add(index[id(event)])
                    if outcome == "sent":
                        self.status.events_sent += 1
                        self.status.events_sent_total += 1
                    else:
                        self.status.events_dropped_total += 1
                    since_write += 1
                    if since_write >= PERSIST_EVERY:
                        since_write = 0
                        await self._note_sent(done)

        try:
            await asyncio.gather(*(send_user(evs) for evs in by_user.values()))
        finally:
            self.pending = [e for i, e in enumerate(queue) if i not in done]
            await self.persist()
            await asyncio.to_thread(storage.remove, self.path.with_name(PROGRESS_FILE))

    # -- status

    def snapshot_status(self, trusted: bool) -> dict[str, Any]:
        return status_fields(self.status, self._interval, len(self.pending), trusted)


# ------------------------------------------------------------------ wiring

USER_SYNC: web.AppKey[UserSync] = web.AppKey("user_sync")
USER_SYNC_LEASE: Final = "user-sync"


async def trigger(request: web.Request) -> web.Response:
    """POST /webhook/user-sync[?wait=1]: run the reconciliation now (admins and AppAPI)."""
    sync = request.app[USER_SYNC]
    if request.query.get("wait") in ("1", "true"):
        await sync.run()
        return json_response(sync.snapshot_status(True))
    sync.trigger()
    return json_response({"triggered": True, **sync.snapshot_status(True)}, status=202)


async def _trigger_soon(sync: UserSync) -> None:
    # The pipeline has the key and the registrations by now: start syncing without holding up
    # the install.
    sync.trigger()


def _sent(progress: Any, queue_id: str) -> set[int]:
    """The indices PROGRESS_FILE records as sent, if it is about the queue `queue_id`."""
    if not queue_id or not isinstance(progress, dict) or progress.get("queueId") != queue_id:
        return set()
    sent = progress.get("sent")
    return {i for i in sent if isinstance(i, int)} if isinstance(sent, list) else set()


def install(app: web.Application, sync: UserSync) -> None:
    """The reconciliation: its route, its /init phase (100), its health fields, its loop."""
    app[USER_SYNC] = sync
    add_route(app, "POST", "/webhook/user-sync", trigger, Access.ADMIN, service_ok=True)
    add_phase(app, InitPhase("user-sync", 100, functools.partial(_trigger_soon, sync)))
    provide(app, "userSync", sync.snapshot_status)

    if LEASES in app:
        sync.lease = app[LEASES].get(USER_SYNC_LEASE)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(sync.load)
        loop = spawn(sync.loop(), name="usersync-loop")
        yield
        loop.cancel()
        sync.run_slot.cancel()
        await asyncio.wait([t for t in (loop, sync.run_slot.task) if t is not None], timeout=5.0)

    app.cleanup_ctx.append(ctx)
