"""The outbound control-plane client for Nextcloud: AppAPI headers, OCS verdicts, warm-up retry,
and the failure budget that keeps the connector from locking its own IP out of Nextcloud."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
from aiohttp import web
from yarl import URL

from beeflow import storage
from beeflow.config import Config
from beeflow.errors import NextcloudError
from beeflow.lease import FileWatch, read_json, update_json
from beeflow.nextcloud.budget import BRUTEFORCE_REMEDY, BUDGET_FILE, AuthBudget, claim_lift
from beeflow.nextcloud.ocs import OcsResult, appapi_headers, parse_ocs

log = logging.getLogger(__name__)

STATE_PATH: Final = "/ocs/v1.php/apps/app_api/ex-app/state"


class NextcloudClient:
    """One ClientSession to Nextcloud for control-plane calls (decoded, small bodies)."""

    def __init__(self, config: Config, session: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self._session = session
        self.base = config.nextcloud_url
        self.budget = AuthBudget(limit=config.auth_failure_budget)
        # Where the budget outlives the process: a restart must not start a fresh count while
        # Nextcloud still remembers the refusals (each restart's boot probe would add 2).
        self.budget_path: Path | None = config.persistent_storage / BUDGET_FILE
        # Replicas on one storage share the count: their refusals are read when the file
        # changes (a stat() per authenticated call), ours merged into it under its lock.
        self._budget_watch = FileWatch(self.budget_path)
        self._budget_lock = asyncio.Lock()
        self._budget_store_warned = False
        # Nextcloud's enabled flag for this app as last seen (ex-app/state, PUT /enabled, /init);
        # None until known.
        self.app_enabled: bool | None = None
        self._verify_lock = asyncio.Lock()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the Nextcloud session is not open")
        return self._session

    def url(self, path: str) -> URL:
        return URL(str(self.base) + path, encoded=True)

    async def open(self) -> None:
        """One pooled, decoding session to Nextcloud for the app's lifetime; the budget of the
        last 30 minutes comes back from the storage."""
        self._session = new_session(self.config)
        await self.load_budget()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def trusted_request_seen(self) -> None:
        """An inbound request bore the valid secret: Nextcloud knows us again, so one trial call
        may pass a spent budget (AuthBudget.lift says when; among replicas, one of them)."""
        self.sync_budget()
        self.budget.lift(self._claim_lift if self.budget_path is not None else None)

    def _claim_lift(self, interval: float) -> bool:
        """Win the trial call among the replicas (a locked update of the shared file: rare, at
        most once per interval and process, and only while the budget is spent)."""
        path = self.budget_path
        assert path is not None
        won = False

        def change(data: Any) -> Any:
            nonlocal won
            out, won = claim_lift(data, interval, time.time())
            return out

        try:
            update_json(path, change)
        except OSError:
            return True  # no shared file: this process decides alone, as without replicas
        self._budget_watch.mark()
        return won

    def sync_budget(self) -> None:
        """Before a decision on the budget: refusals other replicas recorded (read only when
        the shared file changed)."""
        path = self.budget_path
        if path is None or not self._budget_watch.changed():
            return
        data = read_json(path)
        if data is not None:
            self.budget.absorb(data)

    async def load_budget(self) -> None:
        """Restore the refusals of the last 30 minutes from the persistent storage."""
        if self.budget_path is None:
            return
        data = await asyncio.to_thread(storage.read_json, self.budget_path)
        self._budget_watch.mark()
        if data is None or isinstance(data, storage.Unusable):
            return
        kept = self.budget.restore(data)
        if kept:
            log.warning(
                "%d refused AppAPI login(s) of the last 30 minutes are on record (%d attempts on "
                "Nextcloud's count)%s",
                kept,
                self.budget.attempts,
                "; Nextcloud calls stay paused until AppAPI calls us" if self.budget.spent else "",
            )

    async def save_budget(self) -> None:
        """Merge what changed here into the shared file, under its lock, so no replica's update
        is lost (one merge at a time per process; a failure is logged once and retried at the
        next change)."""
        path = self.budget_path
        if path is None or not self.budget.changed:
            return
        async with self._budget_lock:
            budget = self.budget
            if not budget.changed:
                return
            delta = budget.delta()
            try:
                data = await asyncio.to_thread(
                    update_json, path, lambda data: budget.merged(data, delta)
                )
            except OSError as exc:
                if not self._budget_store_warned:
                    self._budget_store_warned = True
                    log.warning(
                        "the AppAPI failure budget is kept in memory only (%s): a restart "
                        "forgets refusals Nextcloud still counts, and replicas do not share it",
                        storage.describe_os_error(exc),
                    )
                return
            self._budget_watch.mark()
            budget.merged_into(data, delta)

    async def request(
        self,
        method: str,
        path: str,
        *,
        user: str | None = "",
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        warmup: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> OcsResult:
        """Call Nextcloud. `user=None` sends no AppAPI headers (anonymous). `warmup` is how long
        to keep retrying AppAPI's 997 warm-up refusals and network errors
        (docs/nextcloud-measured.md, "Warm-up")."""
        deadline = time.monotonic() + warmup
        delay = 0.5
        while True:
            try:
                result = await self._once(method, path, user, json_body, params, timeout, headers)
            except NextcloudError as exc:
                if exc.kind == "network" and time.monotonic() + delay < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 4.0)
                    continue
                raise
            if (
                user is not None
                and result.auth_refused
                and not result.user_refused
                and result.statuscode != 429
                and result.http_status != 429
                and time.monotonic() + delay < deadline
                and not self.budget.spent
            ):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 4.0)
                continue
            return result

    async def _once(
        self,
        method: str,
        path: str,
        user: str | None,
        json_body: Any,
        params: Mapping[str, str] | None,
        timeout: float,
        extra: Mapping[str, str] | None,
    ) -> OcsResult:
        authed = user is not None
        if authed:
            self.sync_budget()
        if authed and self.budget.spent:
            raise NextcloudError(
                "paused: AppAPI refused too many calls (" + BRUTEFORCE_REMEDY + ")",
                kind="auth_budget_spent",
            )
        if authed:
            self.budget.begin_call()
        headers: dict[str, str] = {"Accept": "application/json"}
        if "/ocs/" in path:
            headers["OCS-APIRequest"] = "true"
        if authed:
            headers.update(appapi_headers(self.config, user or ""))
        if extra:
            headers.update(extra)
        try:
            async with self.session.request(
                method,
                self.url(path),
                json=json_body,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                result = parse_ocs(resp.status, body)
        except TimeoutError:
            raise NextcloudError(f"{method} {path}: timed out", kind="network") from None
        except aiohttp.ClientError as exc:
            raise NextcloudError(f"{method} {path}: {type(exc).__name__}", kind="network") from None
        if authed:
            if result.auth_refused:
                reason = f"{method} {path.split('?')[0]} -> HTTP {result.http_status}"
                if result.statuscode is not None:
                    reason += f" (OCS {result.statuscode})"
                locked = 429 in (result.http_status, result.statuscode)
                if user and not locked and await self._credentials_good():
                    return attrs.evolve(result, user_refused=True)
                if locked:
                    # The throttler refuses before it validates: nothing is added to its count.
                    self.budget.record_lockout(reason)
                else:
                    self.budget.record_failure(reason, user or "")
            elif result.http_status < 500:
                self.budget.record_success(user or "")
                if path.split("?")[0] == STATE_PATH:
                    self._note_state(result)
            await self.save_budget()
        return result

    async def _credentials_good(self) -> bool:
        """After an impersonated refusal: are our app id and secret proven good? Nextcloud's
        throttler counts only unknown-app and wrong-secret refusals, both independent of the user
        part, so with good credentials the refusal was the user's (disabled) or the disabled
        app's, and Nextcloud did not count it. Trusted from the last success for a few refusals
        (budget.user_slack), else re-proved with one empty-user ex-app/state call, which AppAPI
        answers even for a disabled app."""
        budget = self.budget
        if budget.take_user_refusal():
            return True
        if not budget.verified:
            return False  # the last counted refusal stands: do not add a probe to it
        async with self._verify_lock:
            if budget.take_user_refusal():
                return True
            if not budget.may_probe():
                return False
            try:
                probe = await self._once("GET", STATE_PATH, "", None, {"format": "json"}, 5.0, None)
            except NextcloudError:
                return False
            if probe.ok:
                budget.record_user_refusal()
                return True
            return False

    def _note_state(self, result: OcsResult) -> None:
        flag = self.enabled_flag(result)
        if flag is not None:
            self.app_enabled = flag

    async def ocs(self, method: str, path: str, **kw: Any) -> OcsResult:
        """Like request(), with `format=json` added to OCS paths (nc_py_api does the same)."""
        params = dict(kw.pop("params", None) or {})
        params.setdefault("format", "json")
        return await self.request(method, path, params=params, **kw)

    async def report_progress(self, progress: int, error: str = "") -> OcsResult:
        """PUT ex-app/status. Nextcloud runs /heartbeat and /enabled against us inside the 100
        call, so its timeout is generous (docs/appapi-wire.md, "Lifecycle calls")."""
        body: dict[str, Any] = {"progress": progress}
        if error:
            body["error"] = error[:1000]
        return await self.request(
            "PUT",
            "/ocs/v1.php/apps/app_api/ex-app/status",
            json_body=body,
            params={"format": "json"},
            timeout=120.0 if progress == 100 else 10.0,
            warmup=20.0,
        )

    async def probe(self) -> OcsResult:
        """One authenticated call that works whether or not the app is enabled; its data is
        Nextcloud's enabled flag for the app (1/0), also kept in `app_enabled`."""
        return await self.ocs("GET", STATE_PATH, timeout=5.0)

    @staticmethod
    def enabled_flag(result: OcsResult) -> bool | None:
        """The ex-app/state answer's enabled flag (None when the answer has none)."""
        if not result.ok or not isinstance(result.data, int | bool | str):
            return None
        return str(result.data).strip().lower() in ("1", "true")


def new_session(config: Config) -> aiohttp.ClientSession:
    """The session control-plane calls share (doctor makes its own from the same recipe)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=None, connect=config.nc_connect_timeout),
        auto_decompress=True,
        headers={"User-Agent": f"ExApp/{config.app_id}/{config.app_version} (beeflow)"},
    )


NEXTCLOUD: web.AppKey[NextcloudClient] = web.AppKey("nextcloud")


def install(app: web.Application, client: NextcloudClient) -> None:
    """The client under NEXTCLOUD; its session opens and closes with the app."""
    app[NEXTCLOUD] = client

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        await client.open()
        yield
        await client.close()

    app.cleanup_ctx.append(session_ctx)
