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
import logging
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from beeflow import storage
from beeflow.config import Config
from beeflow.errors import NextcloudError
from beeflow.health import provide
from beeflow.integrations.userevents import USER_EVENTS, UserEvents
from beeflow.integrations.userrecords import (
    Event,
    Snapshot,
    SyncAborted,
    SyncStatus,
    UserRecord,
    aborted_by,
    details_page,
    diff,
    gather_reads,
    read_state,
    status_fields,
    stop_state,
)
from beeflow.nextcloud.client import NextcloudClient
from beeflow.nextcloud.ocs import OcsResult
from beeflow.phases import InitPhase, add_phase
from beeflow.tasks import Slot, spawn
from beeflow.tenant.state import TenantState
from beeflow.web.auth import Access, add_route
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

STATE_FILE: Final = "user-sync.json"
STATE_VERSION: Final = 1
LOOKUP_CONCURRENCY: Final = 5
DETAILS_PAGE: Final = 500  # users per cloud/users/details call
SINGLE_LOOKUPS_MAX: Final = 50  # listed users missing from the details, read one by one
SEND_CONCURRENCY: Final = 4
PERSIST_EVERY: Final = 25  # sent events between two writes of the remaining queue
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
        self._wake = asyncio.Event()
        self.run_slot = Slot("usersync-run")
        self._write_lock = asyncio.Lock()

    # -- persistence

    def load(self) -> None:
        state = read_state(storage.read_json(self.path), USER_EVENTS)
        if state.snapshot is not None:
            self.snapshot, self.taken_at = state.snapshot, state.taken_at
            self.status.baseline_at = state.baseline_at
        self.pending.extend(state.pending)
        if self.pending:
            log.info("user sync resumes with %d event(s) still to send", len(self.pending))

    def _document(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "baselineAt": self.status.baseline_at,
            "snapshot": None
            if self.snapshot is None
            else {
                "takenAt": self.taken_at,
                "users": {uid: rec.to_json() for uid, rec in sorted(self.snapshot.items())},
            },
            "pending": [list(e) for e in self.pending],
        }

    async def persist(self) -> None:
        async with self._write_lock:
            document = self._document()
            try:
                await storage.write_json(self.path, document)
            except storage.StoreError as exc:
                # Kept in memory; the next run writes again. Said once per run in the status.
                self.status.last_error = str(exc)
                log.error("%s: user sync state kept in memory only", exc)

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
            self._wake.clear()
            await self.run()

    async def run(self) -> None:
        """Single-flight: a run in progress is joined."""
        task = self.run_slot.task if self.run_slot.running else None
        if task is None:
            task = self.run_slot.start(self._run_once())
        await asyncio.shield(task)

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
        current = await self._list()
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

    async def _list(self) -> Snapshot:
        client = self._client
        try:
            # No warm-up retries: the next interval is the retry, and each refusal costs budget.
            listing = await client.ocs("GET", "/ocs/v2.php/apps/app_api/api/v1/users", timeout=15.0)
        except NextcloudError as exc:
            raise aborted_by(exc) from None
        if not listing.ok or not isinstance(listing.data, list):
            raise SyncAborted(
                f"AppAPI user list: HTTP {listing.http_status} OCS {listing.statuscode}",
                state=stop_state(client.budget),
            )
        uids = sorted({str(u) for u in listing.data if isinstance(u, str | int) and str(u)})
        users: Snapshot = {}
        admin = await self._find_admin(uids, users)
        self.status.read_as = admin
        if admin is not None:
            await self._read_as_admin(admin, uids, users)
        # Only the listing decides who exists: a listed user we could not read (disabled, or
        # deleted since the listing) keeps their last record; the next listing settles it.
        previous = self.snapshot or {}
        unreadable = [uid for uid in uids if uid not in users]
        for uid in unreadable:
            if uid in previous:
                users[uid] = previous[uid]
        self.status.users_unreadable = len(unreadable)
        if unreadable:
            log.info(
                "user sync: %d listed user(s) could not be read (disabled accounts?); their last "
                "known details are kept",
                len(unreadable),
            )
        return users

    async def _find_admin(self, uids: list[str], users: Snapshot) -> str | None:
        """An enabled administrator, proven by reading their own account as them: the remembered
        ones first (one call in the usual case), then everyone in batches. Every account read on
        the way goes into `users`. None when no listed user is an enabled administrator (then
        everyone readable has been read as themselves)."""
        listed = set(uids)
        previous = self.snapshot or {}
        remembered = sorted(u for u, r in previous.items() if u in listed and r.usable_admin)
        for uid in remembered:
            record = await self._read_self(uid)
            if record is not None:
                users[uid] = record
                if record.usable_admin:
                    return uid
        rest = [u for u in uids if u not in users and u not in remembered]
        limit = asyncio.Semaphore(LOOKUP_CONCURRENCY)

        async def read(uid: str) -> tuple[str, UserRecord | None]:
            async with limit:
                return uid, await self._read_self(uid)

        for start in range(0, len(rest), LOOKUP_CONCURRENCY):
            batch = rest[start : start + LOOKUP_CONCURRENCY]
            found = await gather_reads([read(uid) for uid in batch])
            for uid, record in found:
                if record is not None:
                    users[uid] = record
            admins = [uid for uid, record in found if record is not None and record.usable_admin]
            if admins:
                return admins[0]
        return None

    async def _read_self(self, uid: str) -> UserRecord | None:
        """A user's own account, read as them. None when Nextcloud will not let them read it:
        a disabled account is not logged in (997, proven not to be our secret), a user deleted
        since the listing is 404."""
        result = await self._get(f"/ocs/v2.php/cloud/users/{quote(uid, safe='')}", uid)
        if result.ok:
            return UserRecord.from_ocs(uid, result.data)
        if result.user_refused or result.http_status == 404 or result.statuscode in (404, 998):
            return None
        raise self._stop("user info", result)

    async def _read_as_admin(self, admin: str, uids: list[str], users: Snapshot) -> None:
        """Everyone's details as `admin`, a page of DETAILS_PAGE per call; listed users missing
        from the pages are read one by one (at most SINGLE_LOOKUPS_MAX a run)."""
        listed = set(uids)
        got: set[str] = set()
        offset = 0
        while offset <= len(uids) + DETAILS_PAGE:
            result = await self._get(
                "/ocs/v2.php/cloud/users/details",
                admin,
                params={"limit": str(DETAILS_PAGE), "offset": str(offset)},
                timeout=60.0,
            )
            if not result.ok:
                raise self._stop(f"user details as {admin}", result)
            page = details_page(result.data)
            if page is None:
                raise SyncAborted(f"user details as {admin}: unexpected answer")
            new = set(page) - got
            for uid, data in page.items():
                record = UserRecord.from_ocs(uid, data)
                if record is not None and uid in listed:
                    users[uid] = record
            got |= set(page)
            if len(page) < DETAILS_PAGE or not new:
                break
            offset += DETAILS_PAGE
        if uids and not got:
            raise SyncAborted(f"administrator {admin} was shown no users; retrying next run")
        missing = [uid for uid in uids if uid not in users][:SINGLE_LOOKUPS_MAX]
        for uid in missing:
            result = await self._get(f"/ocs/v2.php/cloud/users/{quote(uid, safe='')}", admin)
            if result.ok:
                record = UserRecord.from_ocs(uid, result.data)
                if record is not None:
                    users[uid] = record
            elif not (
                result.user_refused or result.http_status == 404 or result.statuscode in (404, 998)
            ):
                raise self._stop("user info", result)

    async def _get(
        self, path: str, user: str, *, params: dict[str, str] | None = None, timeout: float = 10.0
    ) -> OcsResult:
        client = self._client
        if client.budget.spent:
            raise SyncAborted("AppAPI refused too many calls; paused", state="paused")
        try:
            return await client.ocs("GET", path, user=user, params=params, timeout=timeout)
        except NextcloudError as exc:
            raise aborted_by(exc) from None

    def _stop(self, what: str, result: OcsResult) -> SyncAborted:
        """Anything unexpected leaves a hole that would read as a deletion: stop, diff nothing."""
        state = stop_state(self._client.budget)
        return SyncAborted(
            f"{what}: HTTP {result.http_status} OCS {result.statuscode}", state=state
        )

    async def _send(self) -> None:
        """Send the queue: one user's events in order, several users at once. Events that failed
        for a retryable reason stay queued; rejected ones are dropped (and were logged)."""
        sink = self._sink
        queue = list(self.pending)
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
                        self.pending = [e for i, e in enumerate(queue) if i not in done]
                        await self.persist()

        try:
            await asyncio.gather(*(send_user(evs) for evs in by_user.values()))
        finally:
            self.pending = [e for i, e in enumerate(queue) if i not in done]
            await self.persist()

    # -- status

    def snapshot_status(self, trusted: bool) -> dict[str, Any]:
        return status_fields(self.status, self._interval, len(self.pending), trusted)


# ------------------------------------------------------------------ wiring

USER_SYNC: web.AppKey[UserSync] = web.AppKey("user_sync")


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


def install(app: web.Application, sync: UserSync) -> None:
    """The reconciliation: its route, its /init phase (100), its health fields, its loop."""
    app[USER_SYNC] = sync
    add_route(app, "POST", "/webhook/user-sync", trigger, Access.ADMIN, service_ok=True)
    add_phase(app, InitPhase("user-sync", 100, functools.partial(_trigger_soon, sync)))
    provide(app, "userSync", sync.snapshot_status)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(sync.load)
        loop = spawn(sync.loop(), name="usersync-loop")
        yield
        loop.cancel()
        sync.run_slot.cancel()
        await asyncio.wait([t for t in (loop, sync.run_slot.task) if t is not None], timeout=5.0)

    app.cleanup_ctx.append(ctx)
