"""The webhook_listeners registration runs: one row per event class for the connector's
delivery path (docs/automations.md, "Registration").

Nextcloud does not de-duplicate rows, and replicas may run this at the same moment: every run
lists before it creates, and checks its work after, deleting all but the lowest id of a class
(the same choice in every process, so concurrent runs converge on one row per class)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from beeflow.errors import NextcloudError
from beeflow.nextcloud.client import NextcloudClient
from beeflow.nextcloud.cron import CronCheck
from beeflow.nextcloud.hooks import (
    CLASS_BY_EVENT,
    EVENT_BY_CLASS,
    HOOK_CLASSES,
    HOOK_PATH,
    LEGACY_PATH_SUFFIX,
    HookClass,
    hook_secret,
    normalise_class,
    registration_body,
)
from beeflow.nextcloud.ocs import OcsResult
from beeflow.redact import REDACTOR
from beeflow.serde import iso_utc
from beeflow.tasks import Slot

log = logging.getLogger(__name__)

API: Final = "/ocs/v2.php/apps/webhook_listeners/api/v1/webhooks"
CONCURRENCY: Final = 4
VERIFY_ROUNDS: Final = 3
INCOMPATIBLE: Final = "not an event class compatible with webhooks"
REMEDY: Final = {
    "webhook_listeners_disabled": "Enable Nextcloud's webhook_listeners app: "
    "`occ app:enable webhook_listeners` (the connector registers within minutes).",
    "waiting_for_key": "The connector registers once it has a tenant key (see the bootstrap).",
    "failed": "See lastError; the connector retries by itself, and /init or "
    "`occ app_api:app:update` retries at once.",
    "partial": "Some event classes failed (see failed); the connector retries by itself.",
    "removed": "Nextcloud disabled the app; enabling it (`occ app_api:app:enable`) registers "
    "again.",
}


@attrs.frozen
class Row:
    """A webhook_listeners row as listed (lenient: only what the connector compares)."""

    id: int
    app_id: str | None
    uri: str
    php_class: str
    http_method: str
    headers: Any
    auth_method: str
    event_filter: Any
    user_id_filter: Any

    @classmethod
    def parse(cls, raw: Any) -> Row | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), int):
            return None
        app_id = raw.get("appId")
        return cls(
            id=raw["id"],
            app_id=app_id if isinstance(app_id, str) else None,
            uri=str(raw.get("uri") or ""),
            php_class=normalise_class(str(raw.get("event") or "")),
            http_method=str(raw.get("httpMethod") or ""),
            headers=raw.get("headers"),
            auth_method=str(raw.get("authMethod") or ""),
            event_filter=raw.get("eventFilter"),
            user_id_filter=raw.get("userIdFilter"),
        )

    def same_as(self, body: dict[str, Any]) -> bool:
        """Every field but the secret (stored encrypted) as the body would set it."""
        return (
            self.http_method == body["httpMethod"]
            and self.uri == body["uri"]
            and self.headers == body["headers"]
            and self.auth_method == body["authMethod"]
            and not self.event_filter
            and not self.user_id_filter
        )


@attrs.define
class Status:
    """What the last run found, per Bee Flow event."""

    state: str = "idle"
    registered: dict[str, int] = attrs.field(factory=dict)
    skipped: dict[str, str] = attrs.field(factory=dict)
    failed: dict[str, str] = attrs.field(factory=dict)
    last_run_at: float | None = None
    last_error: str = ""
    runs: int = 0


class Stop(Exception):
    """A run cannot go on; `state` is what the status says."""

    def __init__(self, state: str, message: str) -> None:
        self.state = state
        super().__init__(message)


class Registrar:
    """Single-flight registration runs. `key` and `instance_id` give the tenant key and the
    instance id in force at each call (the tenant state, read live)."""

    def __init__(
        self,
        client: NextcloudClient,
        app_id: str,
        key: Callable[[], str | None],
        instance_id: Callable[[], str | None],
        legacy_bases: Iterable[str] = (),
        cron: CronCheck | None = None,
    ) -> None:
        self._client = client
        self._app_id = app_id
        self._key = key
        self._instance_id = instance_id
        self._legacy = sorted({b.rstrip("/") for b in legacy_bases if b})
        self._cron = cron
        self.status = Status()
        self.slot = Slot("webhooks-register")
        self._again = False  # a forced run was asked for while one was in flight
        self.closed = False  # the app is stopping: no new run (the Nextcloud session closes)
        # What Nextcloud's rows carry since this process registered them (None: not known).
        self.registered_secret: str | None = None

    # -- triggers

    async def ensure(self, *, force: bool = True) -> None:
        """Run now, or join the run in flight (a forced request then runs once more after it).
        Never raises: the outcome is in `status`."""
        if self.closed:
            return
        if self.slot.running:
            self._again = self._again or force
            assert self.slot.task is not None
            await asyncio.shield(self.slot.task)
            return
        task = self.slot.start(self._runs(force))
        await asyncio.shield(task)

    async def _runs(self, force: bool) -> None:
        while True:
            self._again = False
            await self._run_once(force)
            if not self._again:
                return
            force = True

    async def _run_once(self, force: bool) -> None:
        status = self.status
        status.runs += 1
        status.last_run_at = time.time()
        key = self._key()
        if not key:
            status.state = "waiting_for_key"
            return
        secret = hook_secret(key)
        REDACTOR.add(secret)
        force = force or self.registered_secret != secret
        try:
            await self._register(secret, self._instance_id() or "", force=force)
        except Stop as stop:
            status.state, status.last_error = stop.state, str(stop)
            log.warning("webhook registration: %s", stop)
            return
        status.last_error = next(iter(status.failed.values()), "")
        if status.failed:
            status.state = "partial" if status.registered else "failed"
            log.warning("webhook registration failed for %s", ", ".join(sorted(status.failed)))
            return
        status.state = "registered"
        self.registered_secret = secret
        if self._cron is not None:
            await self._cron.run()

    # -- one run

    async def _register(self, secret: str, instance_id: str, *, force: bool) -> None:
        status = self.status
        rows = await self._list(HOOK_PATH)
        if force:
            await self._drop_legacy()
        gate = asyncio.Semaphore(CONCURRENCY)
        by_class = self._ours(rows)
        registered: dict[str, int] = {}
        skipped: dict[str, str] = {}
        failed: dict[str, str] = {}

        async def one(hook: HookClass) -> None:
            async with gate:
                body = registration_body(hook, secret, instance_id)
                existing = by_class.pop(hook.php_class, [])
                keep, extra = (existing[0], existing[1:]) if existing else (None, [])
                for row in extra:
                    await self._delete(row.id)
                if keep is not None and not force and keep.same_as(body):
                    registered[hook.event] = keep.id
                    return
                path = f"{API}/{keep.id}" if keep is not None else API
                result = await self._call("POST", path, body)
                outcome = self._judge(hook, result)
                if outcome is None:
                    row_id = keep.id if keep is not None else _row_id(result)
                    registered[hook.event] = row_id
                elif outcome.startswith("skipped:"):
                    skipped[hook.event] = outcome.removeprefix("skipped:")
                else:
                    failed[hook.event] = outcome

        results = await asyncio.gather(*(one(h) for h in HOOK_CLASSES), return_exceptions=True)
        for outcome in results:
            if isinstance(outcome, BaseException):
                raise outcome
        # Our rows of classes we no longer register (an older version's): deliveries of
        # them would only be ignored.
        for leftover in by_class.values():
            for row in leftover:
                await self._delete(row.id)
        status.registered, status.skipped, status.failed = registered, skipped, failed
        await self._verify(secret, instance_id)

    async def _verify(self, secret: str, instance_id: str) -> None:
        """List again: a replica may have created the same class meanwhile (keep the lowest
        id), or someone deleted a row we just updated (an update of a missing id answers 200
        and creates nothing)."""
        status = self.status
        for _ in range(VERIFY_ROUNDS):
            by_class = self._ours(await self._list(HOOK_PATH))
            changed = False
            for event in list(status.registered):
                hook = CLASS_BY_EVENT[event]
                rows = by_class.get(hook.php_class, [])
                for row in rows[1:]:
                    await self._delete(row.id)
                    changed = True
                if rows:
                    status.registered[event] = rows[0].id
                    continue
                changed = True
                body = registration_body(hook, secret, instance_id)
                result = await self._call("POST", API, body)
                outcome = self._judge(hook, result)
                if outcome is not None:
                    del status.registered[event]
                    status.failed[event] = outcome
            if not changed:
                return

    def _ours(self, rows: list[Row]) -> dict[str, list[Row]]:
        out: dict[str, list[Row]] = {}
        for row in sorted(rows, key=lambda r: r.id):
            if row.app_id == self._app_id and row.uri == HOOK_PATH:
                out.setdefault(row.php_class, []).append(row)
        return out

    async def _drop_legacy(self) -> None:
        """The Node connector's rows (an absolute uri through AppAPI's proxy, same app id):
        left in place they would deliver every event a second time."""
        for base in self._legacy:
            uri = f"{base}/index.php/apps/app_api/proxy/{self._app_id}{LEGACY_PATH_SUFFIX}"
            for row in await self._list(uri):
                if row.app_id == self._app_id and row.php_class in EVENT_BY_CLASS:
                    await self._delete(row.id)
                    log.info("removed the earlier connector's webhook row %d", row.id)

    def _judge(self, hook: HookClass, result: OcsResult) -> str | None:
        """None: done; "skipped:<why>" for an optional class Nextcloud refuses; else why."""
        if result.ok and (isinstance(result.data, dict) and isinstance(result.data.get("id"), int)):
            return None
        if result.http_status == 400 and INCOMPATIBLE in result.message and hook.optional:
            return "skipped:not available on this Nextcloud (app missing or class refused)"
        if result.http_status == 404:
            raise Stop("webhook_listeners_disabled", "webhook_listeners is not enabled")
        return f"HTTP {result.http_status}: {result.message[:200] or 'refused'}"

    async def _list(self, uri: str) -> list[Row]:
        result = await self._call("GET", API, None, params={"uri": uri})
        if result.http_status == 404:
            raise Stop("webhook_listeners_disabled", "webhook_listeners is not enabled")
        if not result.ok or not isinstance(result.data, list):
            raise Stop("failed", f"listing webhooks: HTTP {result.http_status}")
        return [row for raw in result.data if (row := Row.parse(raw)) is not None]

    async def _delete(self, row_id: int) -> None:
        result = await self._call("DELETE", f"{API}/{row_id}", None)
        if not result.ok and result.http_status != 404:
            raise Stop("failed", f"deleting webhook {row_id}: HTTP {result.http_status}")

    async def _call(
        self, method: str, path: str, body: Any, params: dict[str, str] | None = None
    ) -> OcsResult:
        try:
            result = await self._client.ocs(
                method, path, json_body=body, params=params, timeout=10.0
            )
        except NextcloudError as exc:
            raise Stop("failed", f"{method} webhooks: {exc}") from None
        if result.auth_refused:
            raise Stop("failed", f"AppAPI refused {method} webhooks (HTTP {result.http_status})")
        return result

    # -- teardown

    async def remove(self) -> None:
        """Delete every row of ours (Nextcloud disables the app: its deliveries would fail)."""
        try:
            rows = await self._list(HOOK_PATH)
            for row in rows:
                if row.app_id == self._app_id:
                    await self._delete(row.id)
        except Stop as stop:
            log.warning("webhook rows not removed: %s", stop)
            return
        self.status.state, self.status.registered = "removed", {}
        self.registered_secret = None
        log.info("removed %d webhook row(s) from Nextcloud", len(rows))

    # -- health

    def health(self, trusted: bool) -> dict[str, Any]:
        status = self.status
        out: dict[str, Any] = {"state": status.state}
        if status.state in REMEDY:
            out["remedy"] = REMEDY[status.state]
        if not trusted:
            return out
        out["registered"] = sorted(status.registered)
        out["skipped"] = dict(sorted(status.skipped.items()))
        out["failed"] = dict(sorted(status.failed.items()))
        out["lastRunAt"] = iso_utc(status.last_run_at)
        if status.last_error:
            out["lastError"] = status.last_error
        if self._cron is not None and self._cron.status.checked_at is not None:
            cron = self._cron.status
            out["cron"] = {
                "state": cron.state,
                "mode": cron.mode,
                "lastRunAt": iso_utc(cron.last_run_at),
                "checkedAt": iso_utc(cron.checked_at),
            }
            if cron.state != "ok":
                out["cron"]["remedy"] = cron.remedy()
        return out


def _row_id(result: OcsResult) -> int:
    data = result.data
    assert isinstance(data, dict)  # checked by _judge, like the id
    return int(data["id"])
