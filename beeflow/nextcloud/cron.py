"""Whether Nextcloud's background jobs run: webhook deliveries are background jobs, so without
them nothing arrives (docs/automations.md, "When deliveries do not arrive"). Read as an
administrator from the provisioning API: `core/backgroundjobs_mode` and `core/lastcron`."""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import attrs

from beeflow.errors import NextcloudError
from beeflow.nextcloud.client import NextcloudClient
from beeflow.nextcloud.users import UserDirectory

log = logging.getLogger(__name__)

CONFIG_PATH: Final = "/ocs/v2.php/apps/provisioning_api/api/v1/config/apps/core/"
USERS_PATH: Final = "/ocs/v2.php/apps/app_api/api/v1/users"
# A system cron runs cron.php every 5 minutes: three missed runs is "not running".
STALE_SECONDS: Final = 15 * 60
MAX_LOOKUPS: Final = 20  # users looked up to find an administrator to ask as
WORKER_HINT: Final = (
    "for deliveries within seconds, also run "
    "`occ background-job:worker -t 60 'OCA\\WebhookListeners\\BackgroundJobs\\WebhookCall'`"
)
REMEDY: Final = {
    "stale": "Nextcloud's background jobs have not run for {age}: deliveries wait for them. "
    "Check the system cron entry that runs cron.php every 5 minutes as the web server's user "
    "(`*/5 * * * * php -f /var/www/html/cron.php`); " + WORKER_HINT + ".",
    "ajax": "Background jobs run in AJAX mode, only while someone has Nextcloud open, so "
    "deliveries can wait for hours. Switch to cron: `occ background:cron` and a system cron "
    "entry for cron.php every 5 minutes; " + WORKER_HINT + ".",
    "never": "Nextcloud's background jobs have never run: deliveries wait for them. Set up "
    "the system cron entry for cron.php (every 5 minutes) or run `php cron.php` once.",
    "unknown": "Could not read when Nextcloud's background jobs last ran ({why}); "
    "`occ config:app:get core lastcron` shows it.",
}


@attrs.define
class CronStatus:
    """What the last look found. `state`: ok | stale | ajax | never | unknown."""

    state: str = "unknown"
    mode: str | None = None
    last_run_at: float | None = None
    checked_at: float | None = None
    why: str = ""

    def remedy(self, now: float | None = None) -> str:
        if self.state == "ok":
            return ""
        age = ""
        if self.last_run_at is not None:
            age = _age((now or time.time()) - self.last_run_at)
        return REMEDY.get(self.state, "").format(age=age, why=self.why or "not checked yet")


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} minutes"
    return f"{minutes // 60} hours"


def judge(mode: str | None, last_run: float | None, now: float) -> str:
    """The state for a mode and a last run (unix seconds; 0 or None: never)."""
    if not last_run:
        return "never"
    if mode == "ajax":
        return "ajax"
    return "stale" if now - last_run > STALE_SECONDS else "ok"


class CronCheck:
    """Asks as one administrator (found once through AppAPI's user list, then remembered)."""

    def __init__(self, client: NextcloudClient, users: UserDirectory) -> None:
        self._client = client
        self._users = users
        self._admin: str | None = None
        self.status = CronStatus()

    async def run(self) -> CronStatus:
        now = time.time()
        try:
            admin = self._admin or await self._find_admin()
            if admin is None:
                self.status = CronStatus("unknown", checked_at=now, why="no administrator found")
                return self.status
            mode = await self._value(admin, "backgroundjobs_mode")
            last = await self._value(admin, "lastcron")
        except NextcloudError as exc:
            self._admin = None
            self.status = CronStatus("unknown", checked_at=now, why=exc.kind)
            return self.status
        self._admin = admin
        last_run = _number(last)
        self.status = CronStatus(judge(mode, last_run, now), mode, last_run or None, now)
        if self.status.state != "ok":
            log.warning("webhook deliveries: %s", self.status.remedy(now))
        return self.status

    async def _find_admin(self) -> str | None:
        listing = await self._client.ocs("GET", USERS_PATH, timeout=10.0)
        if not listing.ok or not isinstance(listing.data, list):
            raise NextcloudError("AppAPI user list refused", kind="lookup")
        uids = sorted({str(u) for u in listing.data if isinstance(u, str) and u})
        # The installer's default name first: on most instances the first lookup finds it.
        uids.sort(key=lambda uid: uid != "admin")
        for uid in uids[:MAX_LOOKUPS]:
            try:
                user = await self._users.lookup(uid)
            except NextcloudError as exc:
                if exc.kind in ("user_refused", "lookup"):
                    continue
                raise
            if user.is_admin:
                return user.uid
        return None

    async def _value(self, admin: str, key: str) -> str | None:
        result = await self._client.ocs("GET", CONFIG_PATH + key, user=admin, timeout=10.0)
        if not result.ok:
            raise NextcloudError(f"config {key}: HTTP {result.http_status}", kind="lookup")
        data: Any = result.data
        value = data.get("data") if isinstance(data, dict) else None
        return str(value) if isinstance(value, str | int) else None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
