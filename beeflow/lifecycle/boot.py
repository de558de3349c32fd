"""The boot run: at most one authenticated probe, and no pipeline while Nextcloud would refuse
its calls (docs/lifecycle.md). A held-back run starts on /init, /enabled or a trusted request."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from beeflow.errors import NextcloudError
from beeflow.lifecycle.pipeline import PIPELINE, pipeline
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.tasks import spawn

log = logging.getLogger(__name__)


async def boot(app: web.Application) -> None:
    """At most ONE authenticated probe at boot. If Nextcloud refuses it (not registered yet, wrong
    secret, locked out), do not run the pipeline: wait for /init, /enabled or a trusted request.
    If it answers that the app is disabled (ex-app/state is the one call AppAPI allows a disabled
    app), every other call would be refused: wait for PUT /enabled?enabled=1 or /init."""
    pipe = pipeline(app)
    client = app[NEXTCLOUD]
    if client.budget.spent:
        log.warning(
            "Not probing Nextcloud at boot: the refused AppAPI logins of the last 30 minutes "
            "(%d attempts on Nextcloud's count) leave no room for another. Waiting for AppAPI to "
            "call /init (register the app), or `occ security:bruteforce:reset <connector-ip>`.",
            client.budget.attempts,
        )
        pipe.block("refused")
        return
    try:
        result = await client.probe()
    except NextcloudError as exc:
        log.warning("Nextcloud not reachable at boot (%s); waiting for AppAPI to call /init", exc)
        pipe.block("unreachable")
        return
    if result.auth_refused:
        log.warning(
            "AppAPI refused the boot probe (HTTP %s, OCS %s): the app is not registered or its "
            "secret differs. Waiting for AppAPI to call /init.",
            result.http_status,
            result.statuscode,
        )
        pipe.block("refused")
        return
    if client.enabled_flag(result) is False:
        log.info(
            "The app is registered but disabled in Nextcloud: no registrations until it is "
            "enabled (AppAPI then calls PUT /enabled?enabled=1, or /init on an update)."
        )
        pipe.block("disabled")
        return
    pipe.trigger("boot", init=False)


async def boot_ctx(app: web.Application) -> AsyncIterator[None]:
    task = spawn(boot(app), name="lifecycle-boot")
    yield
    if not task.done():
        task.cancel()


def on_trusted(app: web.Application) -> Any:
    def seen(request: web.Request) -> None:
        # A request bearing the valid secret proves Nextcloud knows us: run a pipeline held back
        # at boot (the Nextcloud client lifts its own failure budget on the same signal).
        pipe = app[PIPELINE]
        if (
            pipe.boot_blocked
            and pipe.blocked_by != "disabled"  # a disabled app's calls would all be refused
            and request.path not in ("/init", "/enabled")
        ):
            pipe.unblock()
            pipe.trigger("trusted-request", init=False)

    return seen
