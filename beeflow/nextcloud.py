"""The outbound control-plane client for Nextcloud: AppAPI headers, OCS verdicts, warm-up retry,
and a budget that keeps the connector from locking its own IP out of Nextcloud."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import attrs
from yarl import URL

from beeflow.config import Config
from beeflow.errors import NextcloudError

log = logging.getLogger(__name__)

OCS_OK: Final = frozenset({100, 200})
OCS_EXISTS: Final = 409
BRUTEFORCE_WINDOW: Final = 30 * 60.0
NC_LOCKOUT_AFTER: Final = 10  # Nextcloud bans the IP after MORE than this many failures
USER_REFUSAL_SLACK_MAX: Final = 3
STATE_PATH: Final = "/ocs/v1.php/apps/app_api/ex-app/state"
BRUTEFORCE_REMEDY: Final = (
    "Nextcloud counts failed AppAPI logins per IP; after more than 10 in 30 minutes it refuses "
    "every AppAPI call from this IP for 30 minutes. Register the app "
    "(`occ app_api:app:register ...`), then clear the counter with "
    "`occ security:bruteforce:reset <connector-ip>`."
)
_STATUSCODE_XML: Final = re.compile(rb"<statuscode>\s*(\d+)\s*</statuscode>")


def appapi_headers(config: Config, user_id: str = "") -> dict[str, str]:
    """Contract 2.1: the headers every ExApp -> Nextcloud call carries."""
    token = base64.b64encode(f"{user_id}:{config.app_secret}".encode()).decode("ascii")
    return {
        "AUTHORIZATION-APP-API": token,
        "EX-APP-ID": config.app_id,
        "EX-APP-VERSION": config.app_version,
        "AA-VERSION": config.aa_version,
    }


@attrs.frozen
class OcsResult:
    """An answer from Nextcloud, with its OCS verdict when it had an envelope."""

    http_status: int
    statuscode: int | None
    data: Any
    message: str = ""
    text: str = ""
    # An impersonated call refused although our app id and secret are proven good (the user is
    # disabled, so not logged in, or the app is disabled): Nextcloud did not count it as a failed
    # login and neither did the budget. Read it as "this user cannot be read", not "bad secret".
    user_refused: bool = False

    @property
    def ok(self) -> bool:
        if self.statuscode is not None:
            return 200 <= self.http_status < 300 and self.statuscode in OCS_OK
        return 200 <= self.http_status < 300

    @property
    def exists(self) -> bool:
        """409 'already registered', on the wire (v2) or in-band (v1): idempotent success."""
        return self.http_status == OCS_EXISTS or self.statuscode == OCS_EXISTS

    @property
    def done(self) -> bool:
        return self.ok or self.exists

    @property
    def auth_refused(self) -> bool:
        """Nextcloud refused the AppAPI login: 997/401, or the brute-force lock (429), on the
        wire or in-band (OCS v1 answers HTTP 200 with the refusal inside)."""
        if self.http_status in (401, 429):
            return True
        return self.statuscode in (997, 429)


def parse_ocs(status: int, body: bytes) -> OcsResult:
    """Read an OCS envelope (JSON, or XML statuscode) leniently; a non-envelope keeps HTTP only."""
    text = body.decode("utf-8", "replace")
    statuscode: int | None = None
    data: Any = None
    message = ""
    try:
        parsed = json.loads(text) if text.strip() else None
    except ValueError:
        parsed = None
        match = _STATUSCODE_XML.search(body)
        if match:
            statuscode = int(match.group(1))
    if isinstance(parsed, dict) and isinstance(parsed.get("ocs"), dict):
        meta = parsed["ocs"].get("meta") or {}
        if isinstance(meta, dict):
            code = meta.get("statuscode")
            statuscode = code if isinstance(code, int) else None
            message = str(meta.get("message") or "")
        data = parsed["ocs"].get("data")
    elif parsed is not None:
        data = parsed
    return OcsResult(status, statuscode, data, message, text[:2000])


@attrs.define
class AuthBudget:
    """Our own count of refused AppAPI logins, kept far under Nextcloud's lock-out threshold.

    Nextcloud bans an IP after more than 10 failures in 30 minutes (measured on NC 32), and only
    a successful login resets its counter. We allow `limit` failures per window across every
    feature; when they are spent, calls stop until the window passes. An inbound request bearing
    the secret (AppAPI knows us again) lifts the pause for ONE call, at most once a minute: its
    success clears the count on both sides, its failure pauses us again. Clearing the count on
    inbound trust alone would let refused calls pile up into Nextcloud's lock-out.

    Only refusals that can mean a wrong app id or secret are counted: Nextcloud's throttler counts
    exactly those (contract 2.2) and they do not depend on the user part. An impersonated refusal
    while the credentials are `verified` (an authenticated call succeeded since the last counted
    refusal) is the user's (disabled: not logged in) or the disabled app's, uncounted by
    Nextcloud; at most `user_slack` of them are taken on trust before the client re-proves the
    credentials with one empty-user call (docs/lifecycle.md, "What the budget counts").
    """

    limit: int = 4
    window: float = BRUTEFORCE_WINDOW
    lift_interval: float = 60.0
    _failures: list[float] = attrs.field(factory=list)
    _allow_one: bool = False
    _last_lift: float = -1e18
    last_refusal: str = ""
    last_refusal_at: float | None = None
    verified: bool = False  # an authenticated call succeeded since the last counted refusal
    _trusted_user_refusals: int = 0  # user refusals taken on trust since that success
    user_refusals: int = 0  # impersonated refusals not counted (lifetime, for the heartbeat)

    def _trim(self, now: float) -> None:
        self._failures = [t for t in self._failures if now - t < self.window]

    def _exhausted(self) -> bool:
        self._trim(time.monotonic())
        return len(self._failures) >= self.limit

    @property
    def spent(self) -> bool:
        return self._exhausted() and not self._allow_one

    @property
    def user_slack(self) -> int:
        """User refusals taken on trust per verified success: if the secret went bad right after
        that success, Nextcloud counts these plus our `limit`, which stays <= NC_LOCKOUT_AFTER."""
        return max(0, min(USER_REFUSAL_SLACK_MAX, NC_LOCKOUT_AFTER - self.limit - 1))

    def take_user_refusal(self) -> bool:
        """An impersonated refusal arrived: True if it may be taken as the user's without a new
        proof of the credentials."""
        if not self.verified or self._trusted_user_refusals >= self.user_slack:
            return False
        self._trusted_user_refusals += 1
        self.user_refusals += 1
        return True

    def may_probe(self) -> bool:
        """Whether re-proving the credentials is worth a call (not after a counted refusal)."""
        return self.verified and not self.spent

    def begin_call(self) -> None:
        """An authenticated call is about to go out: it consumes a lifted pause."""
        if self._allow_one and self._exhausted():
            self._allow_one = False

    def lift(self) -> None:
        """Inbound proof that Nextcloud knows our secret: allow one trial call (rate-limited)."""
        now = time.monotonic()
        if self._exhausted() and now - self._last_lift >= self.lift_interval:
            self._allow_one = True
            self._last_lift = now

    @property
    def used(self) -> int:
        self._trim(time.monotonic())
        return len(self._failures)

    def record_failure(self, reason: str) -> None:
        now = time.monotonic()
        self._trim(now)
        self._failures.append(now)
        self.verified = False
        self.last_refusal = reason
        self.last_refusal_at = time.time()
        if len(self._failures) == self.limit:
            log.error(
                "AppAPI refused %d calls; pausing Nextcloud calls. %s",
                self.limit,
                BRUTEFORCE_REMEDY,
            )

    def record_success(self) -> None:
        self._failures.clear()
        self._allow_one = False
        self.verified = True
        self._trusted_user_refusals = 0

    def record_user_refusal(self) -> None:
        """Counted separately after a fresh proof of the credentials (nothing taken on trust)."""
        self.user_refusals += 1

    def reset(self) -> None:
        """Forget every failure (after `occ security:bruteforce:reset`, or in tests)."""
        self.record_success()
        self.verified = False

    def snapshot(self) -> dict[str, Any]:
        spent = self.spent
        out: dict[str, Any] = {"failures": self.used, "limit": self.limit, "spent": spent}
        if self.user_refusals:
            out["userRefusals"] = self.user_refusals  # disabled users / app: not counted
        if self.last_refusal:
            out["lastRefusal"] = self.last_refusal
        if spent:
            out["remedy"] = BRUTEFORCE_REMEDY
        return out


class NextcloudClient:
    """One ClientSession to Nextcloud for control-plane calls (decoded, small bodies)."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.base = config.nextcloud_url
        self.budget = AuthBudget(limit=config.auth_failure_budget)
        # Nextcloud's enabled flag for this app as last seen (ex-app/state, PUT /enabled, /init);
        # None until known.
        self.app_enabled: bool | None = None
        self._verify_lock = asyncio.Lock()

    def url(self, path: str) -> URL:
        return URL(str(self.base) + path, encoded=True)

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
        """Call Nextcloud. `user=None` sends no AppAPI headers (anonymous). `warmup` is the time
        budget for retrying AppAPI's 997 warm-up refusals and network errors (reference 5.4)."""
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
                self.budget.record_failure(reason)
            elif result.http_status < 500:
                self.budget.record_success()
                if path.split("?")[0] == STATE_PATH:
                    self._note_state(result)
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
        """PUT ex-app/status (contract 3.2). Nextcloud runs /heartbeat and /enabled against us
        inside the 100 call, so its timeout is generous (contract 9.14)."""
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


@attrs.frozen
class NcUser:
    uid: str
    email: str | None
    display_name: str
    groups: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.groups


class UserDirectory:
    """Cached OCS user lookups (60 s, bounded), impersonating the user being looked up."""

    def __init__(self, client: NextcloudClient, *, ttl: float = 60.0, max_entries: int = 1000):
        self._client = client
        self._ttl = ttl
        self._max = max_entries
        self._cache: OrderedDict[str, tuple[float, NcUser]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[NcUser]] = {}

    def forget(self, uid: str) -> None:
        self._cache.pop(uid, None)

    async def lookup(self, uid: str) -> NcUser:
        now = time.monotonic()
        hit = self._cache.get(uid)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        pending = self._inflight.get(uid)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[NcUser] = asyncio.get_running_loop().create_future()
        self._inflight[uid] = fut
        try:
            user = await self._fetch(uid)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: joiners re-raise it themselves
            raise
        finally:
            self._inflight.pop(uid, None)
        fut.set_result(user)
        self._cache[uid] = (time.monotonic(), user)
        self._cache.move_to_end(uid)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return user

    async def _fetch(self, uid: str) -> NcUser:
        result = await self._client.ocs(
            "GET", f"/ocs/v2.php/cloud/users/{quote(uid, safe='')}", user=uid, timeout=10.0
        )
        if not result.ok or not isinstance(result.data, dict):
            if result.user_refused:
                kind = "user_refused"  # disabled account (not logged in), not our credentials
            else:
                kind = "auth" if result.auth_refused else "lookup"
            raise NextcloudError(
                f"user lookup: HTTP {result.http_status} OCS {result.statuscode}",
                kind=kind,
                status=result.http_status,
            )
        return user_from_ocs(uid, result.data)


def user_from_ocs(uid: str, data: Mapping[str, Any]) -> NcUser:
    """Lenient: Nextcloud's user payload differs a little between versions."""
    email = data.get("email")
    display = data.get("displayname") or data.get("display-name") or data.get("display_name")
    groups = data.get("groups")
    return NcUser(
        uid=str(data.get("id") or uid),
        email=str(email) if isinstance(email, str) and email else None,
        display_name=str(display) if isinstance(display, str) and display else uid,
        groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
    )


async def session_context(config: Config) -> AsyncIterator[NextcloudClient]:
    """cleanup_ctx body: one pooled, decoding session to Nextcloud for the app's lifetime."""
    connector = aiohttp.TCPConnector(limit=32, keepalive_timeout=30)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=config.nc_connect_timeout),
        auto_decompress=True,
        headers={"User-Agent": f"ExApp/{config.app_id}/{config.app_version} (beeflow)"},
    ) as session:
        yield NextcloudClient(config, session)
