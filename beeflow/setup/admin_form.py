"""The Administration form's values applied with the setup page's rules: read back from AppAPI
every BEEFLOW_SETTINGS_POLL_SECONDS (Nextcloud 32 does not call the ExApp when an admin saves),
validated like the page's URL, applied live with a re-bootstrap and rolled back when it fails;
the values in force written back so the form never shows a setting that is not used
(docs/administration.md, "Settings form")."""

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
from yarl import URL

from beeflow import storage
from beeflow.config import CONFIG, DEFAULT_API_BASE_URL, Config
from beeflow.errors import BeeflowError
from beeflow.health import provide
from beeflow.lease import Lease
from beeflow.nextcloud.client import NextcloudClient
from beeflow.nextcloud.links import setup_page_url
from beeflow.nextcloud.settings import CLOUD, MODES, SELF_HOSTED, FormView, SettingsForm, mode_of
from beeflow.redact import REDACTOR
from beeflow.service_client import ServiceUrl
from beeflow.setup import store
from beeflow.setup.urlcheck import UrlRejected, assert_allowed_url
from beeflow.tasks import spawn
from beeflow.tenant.bootstrap import Bootstrapper
from beeflow.tenant.rotation import Rotation
from beeflow.tenant.state import PENDING_STATES, TenantState

log = logging.getLogger(__name__)

STATE_FILE: Final = "admin-form.json"
LEASE_NAME: Final = "admin-form"
LEASE_TTL: Final = 300.0


@attrs.frozen
class Choice:
    mode: str
    url: str

    def to_json(self) -> dict[str, str]:
        return {"mode": self.mode, "url": self.url}

    @classmethod
    def from_json(cls, data: Any) -> Choice | None:
        if not isinstance(data, dict):
            return None
        mode, url = data.get("mode"), data.get("url")
        if mode not in MODES or not isinstance(url, str):
            return None
        return cls(mode, url)


@attrs.define
class Outcome:
    """The last change an admin made through the form, for the status line and the health."""

    state: str = "none"  # none | applied | pending | rolled_back | refused | locked
    detail: str = ""
    at: float | None = None


class AdminForm:
    """One poll at a time; each poll reads, decides, applies and re-registers the form."""

    def __init__(
        self,
        config: Config,
        form: SettingsForm,
        client: NextcloudClient,
        service_url: ServiceUrl,
        tenant: TenantState,
        boot: Bootstrapper | None,
        rotation: Rotation | None,
    ) -> None:
        self.config = config
        self.form = form
        self.client = client
        self.service_url = service_url
        self.tenant = tenant
        self.boot = boot
        self.rotation = rotation
        self.path: Path = config.persistent_storage / STATE_FILE
        self.lease = Lease(config.persistent_storage, LEASE_NAME, ttl=LEASE_TTL)
        self.outcome = Outcome()
        self.polls = 0
        self.last_poll_at: float | None = None
        self._lock = asyncio.Lock()
        # The value in force when form and connector last agreed, as this process saw it: a
        # change of ours since (setup page, rollback) is written back; another replica's is not.
        self._seen_in_force: Choice | None = None

    # ------------------------------------------------------------ what the form shows

    def in_force(self) -> Choice:
        url = str(self.service_url.url).rstrip("/")
        return Choice(mode_of(url), url)

    def status_line(self) -> str:
        tenant, url = self.tenant, self.in_force().url
        outcome = self.outcome
        if tenant.status == "ok" and tenant.key:
            line = f"connected to {tenant.organization_name or 'Bee Flow'} at {url}"
        elif tenant.status in PENDING_STATES:
            line = (
                f"waiting at {url} for the code the Bee Flow service e-mailed: enter it on the "
                "setup page"
            )
        elif tenant.status == "failed" and tenant.last_error is not None:
            error = tenant.last_error
            line = f"not connected to {url}: {error.error} ({error.remediation})"
        else:
            line = f"connecting to {url}"
        if outcome.state in ("rolled_back", "refused") and outcome.detail:
            line += f"; the last change in this form was not applied: {outcome.detail}"
        return REDACTOR.scrub(line)

    def view(self) -> FormView:
        current = self.in_force()
        return FormView(
            mode=current.mode,
            url=current.url,
            status=self.status_line(),
            setup_url=setup_page_url(self.config),
            locked=self.service_url.locked,
        )

    # ------------------------------------------------------------ one poll

    def may_call(self) -> bool:
        """Only once Nextcloud is known to have this app enabled, and never while the AppAPI
        failure budget is paused: a poll must not add a refused login."""
        return self.client.app_enabled is True and not self.client.budget.spent

    async def poll(self) -> None:
        async with self._lock:
            await self._poll()

    async def _poll(self) -> None:
        if not self.may_call():
            return
        stored = await self.form.read()
        if stored is None:
            return
        self.polls += 1
        self.last_poll_at = time.time()
        synced = await asyncio.to_thread(self._load_synced)
        current = self.in_force()
        if stored.explicit:
            # AppAPI keeps each field on its own: a field never saved shows its default, which
            # is the value in force.
            wanted = Choice(stored.mode or current.mode, stored.url or current.url)
            if synced is None or not _same(wanted, synced):
                await self._admin_changed(wanted, current)
                await self.form.register(self.view())
                return
        if self._seen_in_force is not None and not _same(current, self._seen_in_force):
            # Changed here since the form last agreed (the setup page, a rollback): show it.
            if await self.form.write(current.mode, current.url):
                await self._save_synced(current)
        elif synced is None:
            await self._save_synced(current)
        self._seen_in_force = current
        await self.form.register(self.view())

    async def _admin_changed(self, wanted: Choice, current: Choice) -> None:
        """An admin saved the form: apply it, or put the values in force back with the reason."""
        detail = ""
        if self.service_url.locked:
            self._record("locked", "BEEFLOW_API_BASE_URL pins the service URL")
        elif wanted.mode not in MODES:
            detail = f"unknown deployment {wanted.mode[:40]!r}"
            self._record("refused", detail)
        else:
            try:
                target = await _target(wanted)
            except UrlRejected as exc:
                self._record("refused", f"{exc.message} [{exc.instance_code}]")
            else:
                if target == current.url:
                    self._record("applied", "")
                    await self._agree(Choice(mode_of(target), target))
                    return
                if self.boot is not None and self.boot.busy:
                    log.info("settings form change waits: a provisioning is running")
                    return  # the next poll sees it again
                await self._apply(Choice(mode_of(target), target), current)
                return
        # Not applied: the form goes back to what is in force.
        if await self.form.write(current.mode, current.url):
            await self._agree(current)

    async def _apply(self, wanted: Choice, previous: Choice) -> None:
        """Re-target the service and provision there; on failure everything goes back."""
        try:
            acquired = await asyncio.to_thread(self.lease.try_acquire)
        except OSError:
            acquired = True  # no shared storage to coordinate through: this process decides
        if not acquired:
            log.info("settings form change left to the replica holding %s", LEASE_NAME)
            return
        api_base = self.service_url
        old_url, old_source = api_base.url, api_base.source
        try:
            api_base.url, api_base.source = URL(wanted.url), "setup"
            log.info("Bee Flow service changed in the settings form: %s -> %s", old_url, wanted.url)
            failure: BeeflowError | None = None
            # A key fixed by BEEFLOW_TENANT_KEY is not re-provisioned: the URL alone changes.
            if not self.config.tenant_key_env and self.rotation is not None:
                try:
                    await self.rotation.rebootstrap()
                except BeeflowError as exc:
                    failure = exc
                except Exception as exc:
                    log.exception("re-bootstrap after a settings form change crashed")
                    failure = BeeflowError(type(exc).__name__)
            if failure is not None:
                api_base.url, api_base.source = old_url, old_source
                message = REDACTOR.scrub(failure.message)[:300]
                log.warning(
                    "settings form change to %s rolled back: %s. %s",
                    wanted.url,
                    message,
                    failure.extra.get("remediation", ""),
                )
                self._record("rolled_back", f"{wanted.url}: {message}")
                if await self.form.write(previous.mode, previous.url):
                    await self._agree(previous)
                return
            try:
                await asyncio.to_thread(
                    store.save, self.config.persistent_storage, wanted.mode, wanted.url
                )
            except storage.StoreError as exc:
                log.error("the settings form's choice is in force but not saved: %s", exc.reason)
            pending = self.tenant.status in PENDING_STATES
            self._record("pending" if pending else "applied", wanted.url)
            await self._agree(wanted)
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.lease.release)

    def _record(self, state: str, detail: str) -> None:
        self.outcome = Outcome(state, detail, time.time())

    async def _agree(self, choice: Choice) -> None:
        self._seen_in_force = choice
        await self._save_synced(choice)

    # ------------------------------------------------------------ the synced record

    def _load_synced(self) -> Choice | None:
        data = storage.read_json(self.path)
        return None if isinstance(data, storage.Unusable) else Choice.from_json(data)

    async def _save_synced(self, choice: Choice) -> None:
        try:
            await storage.write_json(self.path, choice.to_json())
        except storage.StoreError as exc:
            log.warning("%s: the settings form may apply a saved change again", exc)

    # ------------------------------------------------------------ health

    def health(self, trusted: bool) -> dict[str, Any]:
        if not trusted:
            return {}
        out: dict[str, Any] = {"polls": self.polls, "lastChange": self.outcome.state}
        if self.last_poll_at is not None:
            out["lastPollAt"] = round(self.last_poll_at, 3)
        if self.outcome.detail:
            out["detail"] = self.outcome.detail
        return out


def _same(a: Choice, b: Choice) -> bool:
    """Equal as settings: the Cloud has one URL, whatever the URL field still holds."""
    if a.mode != b.mode:
        return False
    return a.mode == CLOUD or a.url.rstrip("/") == b.url.rstrip("/")


async def _target(wanted: Choice) -> str:
    if wanted.mode == CLOUD:
        return DEFAULT_API_BASE_URL
    if wanted.mode == SELF_HOSTED and not wanted.url:
        raise UrlRejected("Self-hosted needs the server's URL", code="url_required")
    return str(await assert_allowed_url(wanted.url)).rstrip("/")


ADMIN_FORM: web.AppKey[AdminForm] = web.AppKey("admin_form")


async def _loop(form: AdminForm, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await form.poll()
        except Exception:
            log.exception("settings form poll failed")


def install(app: web.Application, form: AdminForm) -> None:
    """The poll loop (its own task, stopped with the app) and the health fields."""
    app[ADMIN_FORM] = form
    provide(app, "adminForm", form.health)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = spawn(_loop(form, app[CONFIG].settings_poll_seconds), name="admin-form-poll")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(ctx)
