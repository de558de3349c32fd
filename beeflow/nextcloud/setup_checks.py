"""Nextcloud's "Security & setup warnings" (AppAPI's setup checks, Nextcloud 35): the opt-in at
/init where the server has it, and `GET /setup_checks`, answered from memory within AppAPI's 5 s
with a numeric Content-Length under its 256 KiB (docs/administration.md, "Setup checks").

The checks read what the connector already knows (the health fields of the heartbeat) plus two
facts about Nextcloud refreshed in the background (is webhook_listeners enabled, when did
background jobs last run): the route itself never calls anyone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.config import CONFIG, Config
from beeflow.errors import NextcloudError
from beeflow.health import collect
from beeflow.nextcloud import surface
from beeflow.nextcloud.client import NextcloudClient
from beeflow.nextcloud.links import setup_page_url
from beeflow.nextcloud.users import UserDirectory
from beeflow.phases import InitPhase
from beeflow.redact import REDACTOR
from beeflow.tasks import spawn
from beeflow.web.auth import Access, add_route, on_trusted_request
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

OPT_IN_PATH: Final = "/ocs/v1.php/apps/app_api/api/v1/setup_check"
WEBHOOKS_PATH: Final = "/ocs/v2.php/apps/webhook_listeners/api/v1/webhooks"
USERS_PATH: Final = "/ocs/v2.php/apps/app_api/api/v1/users"
LASTCRON_PATH: Final = "/ocs/v2.php/apps/provisioning_api/api/v1/config/apps/core/lastcron"
# AppAPI keeps at most 16 issues per app and 4096 characters per text (35's refresh service).
MAX_TEXT: Final = 1000
CRON_LATE: Final = 3600  # Nextcloud's own CronInfo check warns past an hour
REFRESH_SECONDS: Final = 600.0
FIRST_REFRESH_SECONDS: Final = 30.0
ADMIN_CANDIDATES: Final = 10  # users tried to find an administrator to read lastcron as
CALLBACK_STREAK: Final = 5  # ncCallbacks' own warning threshold
ORIGIN_IP: Final = "x-origin-ip"  # AppAPI's PHP proxy adds it to what it forwards
DSP_NOTE: Final = (
    "Requests reach the connector through AppAPI's PHP proxy, not HaRP: replies arrive whole "
    "instead of streaming, and the Docker Socket Proxy deploy daemon is deprecated since "
    "AppAPI 34 (its removal planned for 35). Move the app to a HaRP daemon."
)

Check = dict[str, str]


def check(status: str, text: str, link: str = "", label: str = "") -> Check:
    out = {"status": status, "text": REDACTOR.scrub(text)[:MAX_TEXT]}
    if link:
        out["link_url"], out["link_label"] = link, label or link
    return out


@attrs.define
class NextcloudFacts:
    """What the background refresh learnt about Nextcloud (None: not known yet)."""

    webhook_listeners: bool | None = None
    last_cron: int | None = None  # unix time; 0: never ran
    refreshed_at: float | None = None
    admin_uid: str | None = None


class SetupChecks:
    """The opt-in, the facts' refresh and the checks themselves."""

    def __init__(
        self,
        config: Config,
        client: NextcloudClient,
        users: UserDirectory,
        health: Callable[[], Mapping[str, Any]],
    ) -> None:
        self.config = config
        self.client = client
        self.users = users
        self.health = health
        self.facts = NextcloudFacts()
        self.opt_in = "idle"  # idle | opted_in | unsupported | failed
        self.php_proxy_seen = False
        self.served = 0

    # ------------------------------------------------------------ registration

    async def register(self) -> None:
        """POST setup_check where AppAPI has it (35+). On 32 the route does not exist (OCS 998,
        measured): nothing to do, and not an error of the install."""
        try:
            result = await self.client.ocs("POST", OPT_IN_PATH, json_body={}, timeout=5.0)
        except NextcloudError as exc:
            self.opt_in = "failed"
            log.warning("opting in to Nextcloud's setup checks failed: %s", exc)
            return
        if result.ok:
            self.opt_in = "opted_in"
        elif result.statuscode == 998 or result.http_status == 404:
            self.opt_in = "unsupported"
        else:
            self.opt_in = "failed"
            log.warning(
                "opting in to Nextcloud's setup checks failed: HTTP %s, OCS %s",
                result.http_status,
                result.statuscode,
            )
        with contextlib.suppress(Exception):
            await self.refresh()

    # ------------------------------------------------------------ Nextcloud facts

    async def refresh(self) -> None:
        """Only while Nextcloud knows the app and the failure budget allows calls."""
        if self.client.app_enabled is not True or self.client.budget.spent:
            return
        facts = self.facts
        with contextlib.suppress(NextcloudError):
            result = await self.client.ocs("GET", WEBHOOKS_PATH, timeout=5.0)
            if result.ok:
                facts.webhook_listeners = True
            elif result.http_status == 404 or result.statuscode == 998:
                facts.webhook_listeners = False  # the app is disabled: its routes are gone
        with contextlib.suppress(NextcloudError):
            facts.last_cron = await self._last_cron()
        facts.refreshed_at = time.time()

    async def _last_cron(self) -> int | None:
        admin = await self._admin()
        if admin is None:
            return None
        result = await self.client.ocs("GET", LASTCRON_PATH, user=admin, timeout=5.0)
        if not result.ok or not isinstance(result.data, dict):
            self.facts.admin_uid = None  # try another next time
            return None
        value = result.data.get("data")
        if isinstance(value, int | str) and str(value).strip().isdigit():
            return int(value)
        return 0 if value in ("", None) else None

    async def _admin(self) -> str | None:
        """An administrator to read core's config as (provisioning_api allows only admins):
        the first admin among the users AppAPI lists."""
        if self.facts.admin_uid is not None:
            return self.facts.admin_uid
        result = await self.client.ocs("GET", USERS_PATH, timeout=5.0)
        uids = result.data if result.ok and isinstance(result.data, list) else []
        for uid in [u for u in uids if isinstance(u, str)][:ADMIN_CANDIDATES]:
            try:
                user = await self.users.lookup(uid)
            except NextcloudError:
                continue  # a disabled account, or one we may not read: not this one
            if user.is_admin:
                self.facts.admin_uid = uid
                return uid
        return None

    # ------------------------------------------------------------ the checks

    def results(self) -> dict[str, Check]:
        health = self.health()
        setup = setup_page_url(self.config)
        out: dict[str, Check] = {"tenant": self._tenant(health.get("bootstrap") or {}, setup)}
        calls = health.get("ncCallbacks") or {}
        streak = calls.get("consecutive") if isinstance(calls, Mapping) else None
        if isinstance(streak, int) and streak >= CALLBACK_STREAK:
            reason = calls.get("lastReason") or "a signature check failed"
            out["callback_signatures"] = check(
                "warning",
                f"The last {streak} calls of the Bee Flow service into Nextcloud were refused "
                f"({reason}): the tenant key or the service's clock may be wrong. Compare the "
                "key fingerprints on the setup page, or rotate the key there.",
                setup,
                "Open the Bee Flow setup page",
            )
        else:
            out["callback_signatures"] = check("success", "Signed calls from the service pass.")
        auth = health.get("appapiAuth") or {}
        if isinstance(auth, Mapping) and auth.get("spent"):
            out["appapi_auth"] = check(
                "error",
                "AppAPI refused the connector's calls too often; it stopped calling Nextcloud. "
                + str(auth.get("remedy", "")),
            )
        if self.config.harp:
            out["tunnel"] = self._tunnel(health.get("tunnel") or {})
        out["webhook_listeners"] = self._webhooks()
        out["background_jobs"] = self._cron()
        out["deploy_daemon"] = (
            check("warning", DSP_NOTE)
            if self.php_proxy_seen and not self.config.harp
            else check("success", "The deploy daemon is current.")
        )
        return out

    def _tenant(self, bootstrap: Mapping[str, Any], setup: str) -> Check:
        state = bootstrap.get("state")
        label = "Open the Bee Flow setup page"
        if state == "ok":
            return check("success", "Connected to the Bee Flow service.")
        if state == "awaiting_email_verification":
            return check(
                "warning",
                "Bee Flow waits for the code it e-mailed to an administrator: enter it on the "
                "setup page.",
                setup,
                label,
            )
        if state == "failed":
            error = bootstrap.get("error") or "the last attempt failed"
            fix = bootstrap.get("remediation") or ""
            return check(
                "error", f"Not connected to the Bee Flow service: {error}. {fix}", setup, label
            )
        return check(
            "warning",
            "Not connected to the Bee Flow service yet (no tenant key): finish the setup.",
            setup,
            label,
        )

    def _tunnel(self, tunnel: Mapping[str, Any]) -> Check:
        state = tunnel.get("state")
        if state == "connected":
            return check("success", "The FRP tunnel to HaRP is up.")
        cause = tunnel.get("remedy") or tunnel.get("last_error") or "frpc is not connected"
        return check("error", f"The FRP tunnel to HaRP is {state or 'down'}: {cause}")

    def _webhooks(self) -> Check:
        if self.facts.webhook_listeners is False:
            return check(
                "warning",
                "The webhook_listeners app is disabled: Nextcloud cannot send file events to "
                "Bee Flow. Enable it: `occ app:enable webhook_listeners`.",
            )
        return check("success", "webhook_listeners is enabled (or not checked yet).")

    def _cron(self) -> Check:
        last = self.facts.last_cron
        if last is None:
            return check("success", "Background jobs not checked yet.")
        if last == 0 or time.time() - last > CRON_LATE:
            when = "never" if last == 0 else f"{int((time.time() - last) // 60)} minutes ago"
            return check(
                "warning",
                f"Nextcloud's background jobs last ran {when}: webhook deliveries to Bee Flow "
                "wait for them. Run cron.php every 5 minutes (Administration -> Basic settings "
                "-> Background jobs).",
            )
        return check("success", "Nextcloud's background jobs run.")

    def seen(self, request: web.Request) -> None:
        """A trusted request: did it come through AppAPI's PHP proxy?"""
        if ORIGIN_IP in request.headers:
            self.php_proxy_seen = True

    def status(self, trusted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"optIn": self.opt_in}
        if trusted:
            out["served"] = self.served
            out.update({k: v for k, v in attrs.asdict(self.facts).items() if v is not None})
        return out


SETUP_CHECKS: web.AppKey[SetupChecks] = web.AppKey("setup_checks")


async def setup_checks(request: web.Request) -> web.Response:
    """AppAPI's probe (empty user, 5 s): a map of check id -> {status, text, link_url?,
    link_label?}, sent whole with its Content-Length."""
    checks = request.app[SETUP_CHECKS]
    checks.served += 1
    # web.Response with a body: aiohttp sends its length as Content-Length, never chunked.
    return json_response(checks.results())


async def _refresh_loop(checks: SetupChecks) -> None:
    await asyncio.sleep(FIRST_REFRESH_SECONDS)
    while True:
        try:
            await checks.refresh()
        except Exception:
            log.exception("refreshing the setup checks' facts failed")
        await asyncio.sleep(REFRESH_SECONDS)


def setup(app: web.Application, client: NextcloudClient, users: UserDirectory) -> SetupChecks:
    """The route (ADMIN, AppAPI's own call allowed), the opt-in at /init (progress 60) and the
    background refresh."""
    checks = SetupChecks(app[CONFIG], client, users, lambda: collect(app, True))
    app[SETUP_CHECKS] = checks
    add_route(app, "GET", "/setup_checks", setup_checks, Access.ADMIN, service_ok=True)
    on_trusted_request(app, checks.seen)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = spawn(_refresh_loop(checks), name="setup-checks-refresh")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(ctx)
    surface.install(
        app,
        surface.Surface(
            name="setupChecks",
            phases=[InitPhase("setup-checks", 60, checks.register)],
            health=checks.status,
            # AppAPI drops a disabled app's results itself and refuses its calls meanwhile.
            teardown=None,
        ),
    )
    return checks
