"""The webhook_listeners registration surface: registered at the end of /init (progress 80),
again when the tenant key changes, when Nextcloud enables the app again, after a failure (with
backoff) and on a periodic look; removed when Nextcloud disables the app (docs/automations.md,
"Registration"). The registration runs themselves are beeflow.nextcloud.registrar."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

from aiohttp import web

from beeflow.config import CONFIG
from beeflow.errors import NextcloudError
from beeflow.nextcloud import surface
from beeflow.nextcloud.client import NEXTCLOUD, NextcloudClient
from beeflow.nextcloud.cron import CronCheck
from beeflow.nextcloud.hooks import hook_secret
from beeflow.nextcloud.registrar import Registrar
from beeflow.nextcloud.users import USERS
from beeflow.phases import InitPhase
from beeflow.tasks import Slot

PROGRESS: Final = 80  # the end of /init: after the tenant key (25) and the UI (60)
RETRY_STATES: Final = frozenset(
    {"idle", "failed", "partial", "webhook_listeners_disabled", "removed", "waiting_for_key"}
)


class Watcher:
    """Looks every `tick` seconds (in memory only) whether a run is due, and starts it. It
    calls Nextcloud only while the app is known to be enabled: before that (not registered
    yet, or disabled) every call would be refused, and refusals lock the connector out."""

    def __init__(
        self,
        registrar: Registrar,
        client: NextcloudClient,
        key: Callable[[], str | None],
        *,
        tick: float = 5.0,
        drift: float = 1800.0,
        retry_base: float = 60.0,
        retry_cap: float = 900.0,
        probe_interval: float = 900.0,
    ) -> None:
        self.registrar = registrar
        self._client = client
        self._key = key
        self.tick = tick
        self.drift = drift
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.probe_interval = probe_interval
        self._next_probe = time.monotonic() + probe_interval
        self._probing = True
        self._enabled: bool | None = None
        self._seen_runs = 0
        self._failures = 0
        self._next_retry = time.monotonic() + retry_base
        self._last_ok = time.monotonic()
        self.slot = Slot("webhooks-watch")

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            await self.step()

    def _note_runs(self, now: float) -> None:
        status = self.registrar.status
        if status.runs == self._seen_runs:
            return
        self._seen_runs = status.runs
        if status.state == "registered":
            self._failures, self._last_ok = 0, now
        else:
            self._failures += 1
            delay = min(self.retry_cap, self.retry_base * 2 ** (self._failures - 1))
            self._next_retry = now + delay

    async def _enabled_now(self, now: float) -> bool | None:
        """Nextcloud's enabled flag as last seen. After a teardown, ask now and then (the one
        call AppAPI answers a disabled app, without counting it): a PUT /enabled?enabled=0
        that did not come from Nextcloud (lifecycle takes a few unauthenticated ones) must not
        keep the rows away for good. Stops asking once the app is no longer registered."""
        client = self._client
        if (
            client.app_enabled is False
            and self.registrar.status.state == "removed"
            and self._probing
            and now >= self._next_probe
            and not client.budget.spent
        ):
            self._next_probe = now + self.probe_interval
            with contextlib.suppress(NextcloudError):
                result = await client.probe()
                self._probing = not result.auth_refused
        return client.app_enabled

    async def step(self) -> None:
        """One look; runs the registration when it is due (and waits for it)."""
        registrar = self.registrar
        now = time.monotonic()
        self._note_runs(now)
        enabled = await self._enabled_now(now)
        previous, self._enabled = self._enabled, enabled
        key = self._key()
        if enabled is not True or self._client.budget.spent or registrar.slot.running or not key:
            return
        state = registrar.status.state
        known = registrar.registered_secret
        if previous is False or state == "waiting_for_key" or (known and known != hook_secret(key)):
            force = True  # enabled again, a first key, or a new one: every row gets the secret
        elif state in RETRY_STATES and now >= self._next_retry:
            force = False
        elif state == "registered" and now - self._last_ok >= self.drift:
            force = False  # a periodic look: repair rows someone deleted or changed
        else:
            return
        await registrar.ensure(force=force)
        self._note_runs(time.monotonic())


REGISTRAR: web.AppKey[Registrar] = web.AppKey("webhooks_registrar")
WATCHER: web.AppKey[Watcher] = web.AppKey("webhooks_watcher")


def setup(
    app: web.Application,
    *,
    key: Callable[[], str | None],
    instance_id: Callable[[], str | None],
) -> Registrar:
    """The surface (its phase, health and teardown) and the watcher, which runs for the app's
    lifetime. `key` and `instance_id` read the tenant state live."""
    config = app[CONFIG]
    client = app[NEXTCLOUD]
    bases = {str(config.nextcloud_url), str(config.public_nextcloud_url)}
    cron = CronCheck(client, app[USERS])
    registrar = Registrar(client, config.app_id, key, instance_id, bases, cron)
    watcher = Watcher(registrar, client, key)
    app[REGISTRAR] = registrar
    app[WATCHER] = watcher
    surface.install(
        app,
        surface.Surface(
            name="webhooks",
            phases=[InitPhase("webhooks", PROGRESS, registrar.ensure)],
            health=registrar.health,
            teardown=registrar.remove,
        ),
    )

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        watcher.slot.start(watcher.loop())
        yield
        registrar.closed = True
        await watcher.slot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await registrar.slot.close()

    app.cleanup_ctx.append(ctx)
    return registrar
