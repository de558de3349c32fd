"""The Talk bot registration surface: "Bee Flow" registered through AppAPI (which installs it in
Talk with a secret it keeps), the secret kept in the persistent storage for signing replies, and
its health fields (docs/assistant.md, "Talk bot")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from beeflow import storage
from beeflow.config import CONFIG
from beeflow.errors import NextcloudError
from beeflow.nextcloud.client import NEXTCLOUD, NextcloudClient
from beeflow.nextcloud.follow import Follower, install_followed, under_lease
from beeflow.redact import REDACTOR
from beeflow.serde import iso_utc
from beeflow.tenant.state import TENANT, TenantState

log = logging.getLogger(__name__)

TALK_BOT_PATH: Final = "/ocs/v2.php/apps/app_api/api/v1/talk_bot"
ROUTE: Final = "/hooks/talk"
BOT_NAME: Final = "Bee Flow"  # Talk allows 1-64 characters
DESCRIPTION: Final = (
    "Answers when you mention @Bee Flow, and lets Bee Flow automations react to this "
    "conversation's messages and reactions."
)
STATE_FILE: Final = "talk-bot.json"  # the secret and when it was saved (0600)
INIT_PROGRESS: Final = 60
WARMUP_SECONDS: Final = 30.0
# Talk is not installed: AppAPI 32 answers 400 "Talk bots could not be registered" (measured),
# other builds 404 or 501.
TALK_MISSING: Final = frozenset({400, 404, 501})


class TalkBot:
    """The registration and the secret (read from the shared file, so a replica's registration
    is seen by all)."""

    def __init__(
        self, client: Callable[[], NextcloudClient], tenant: TenantState, directory: Path
    ) -> None:
        self._client = client
        self._tenant = tenant
        self.path = directory / STATE_FILE
        self.state = "idle"  # idle | waiting_for_key | paused | registered | talk_missing | failed
        self.last_error = ""
        self.registered_at: float | None = None
        self._secret: str | None = None
        self._mtime: float | None = None
        self._lock = asyncio.Lock()
        self.follower: Follower | None = None  # set by setup()

    def watch(self) -> Hashable:
        return (self._tenant.fingerprint, self._client().app_enabled is not False)

    async def register(self, reason: str) -> bool:
        """The Follower's job: register unless there is no key yet or the app is disabled.
        False (retry with backoff) while Talk is missing or AppAPI refused."""
        if not self._tenant.key:
            self.state = "waiting_for_key"
            return True
        if self._client().app_enabled is False:
            self.state = "paused"
            return True
        secret = await self._register_once()
        if secret is None:
            return False
        log.info("Talk bot registered (%s)", reason)
        return True

    async def _register_once(self) -> str | None:
        """POST the registration. AppAPI keeps the secret of a bot registered before (it makes a
        new one only the first time), so this is also how the current secret is read back."""
        async with self._lock:
            body = {"name": BOT_NAME, "route": ROUTE, "description": DESCRIPTION}
            try:
                result = await self._client().ocs(
                    "POST", TALK_BOT_PATH, json_body=body, timeout=10.0, warmup=WARMUP_SECONDS
                )
            except NextcloudError as exc:
                self.state, self.last_error = "failed", str(exc)[:300]
                return None
            data = result.data if isinstance(result.data, dict) else {}
            secret = data.get("secret")
            if result.ok and isinstance(secret, str) and secret:
                REDACTOR.add(secret)
                await self._save(secret)
                self.state, self.last_error = "registered", ""
                self.registered_at = time.time()
                return secret
            if result.http_status in TALK_MISSING and not result.auth_refused:
                self.state, self.last_error = "talk_missing", ""
                return None
            self.state = "failed"
            self.last_error = f"HTTP {result.http_status} OCS {result.statuscode}"
            if result.message:
                self.last_error += f": {result.message[:200]}"
            return None

    async def _save(self, secret: str) -> None:
        self._secret = secret
        if self._read_file() == secret:
            return
        try:
            await storage.write_json(self.path, {"secret": secret, "savedAt": iso_utc(time.time())})
        except storage.StoreError as exc:
            log.warning("%s (the Talk bot's secret is kept in memory only)", exc)
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def _read_file(self) -> str | None:
        data = storage.read_json(self.path)
        secret = data.get("secret") if isinstance(data, dict) else None
        return secret if isinstance(secret, str) and secret else None

    def secret(self) -> str | None:
        """The secret replies are signed with: the file's when it changed (another replica
        registered), else the one in memory."""
        mtime = self._stat()
        if mtime is not None and mtime != self._mtime:
            self._mtime = mtime
            found = self._read_file()
            if found:
                REDACTOR.add(found)
                self._secret = found
        return self._secret

    async def refresh(self) -> str | None:
        """After Talk refused a reply's signature: read the secret AppAPI holds now."""
        return await self._register_once()

    async def unregister(self) -> bool:
        """DELETE the registration (Talk removes the bot from every conversation)."""
        try:
            result = await self._client().ocs(
                "DELETE", TALK_BOT_PATH, json_body={"route": ROUTE}, timeout=10.0
            )
        except NextcloudError:
            return False
        return result.ok or result.http_status == 404

    def health(self, trusted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if trusted:
            if self.last_error:
                out["lastError"] = self.last_error
            if self.registered_at:
                out["registeredAt"] = iso_utc(self.registered_at)
        return out


TALK_BOT: web.AppKey[TalkBot] = web.AppKey("talk_bot")


def setup(app: web.Application) -> None:
    """The registration at /init progress 60 and whenever the key or the enabled flag changes,
    its health under `talkBot`. Nothing is undone on disable: unregistering would take the bot
    out of every conversation it was added to (AppAPI removes it when the app is removed)."""
    config = app[CONFIG]

    def client() -> NextcloudClient:
        return app[NEXTCLOUD]

    bot = TalkBot(client, app[TENANT], config.persistent_storage)
    app[TALK_BOT] = bot
    job = under_lease(app, bot.register)
    follower = bot.follower = Follower("talk-bot-registration", job, bot.watch)
    install_followed(
        app,
        follower,
        surface_name="talkBot",
        phase_name="talk-bot",
        progress=INIT_PROGRESS,
        health=bot.health,
        before_start=lambda: asyncio.to_thread(bot.secret),  # a secret saved before this start
    )
