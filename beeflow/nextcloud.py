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
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import attrs
from yarl import URL

from beeflow import storage
from beeflow.config import Config
from beeflow.errors import NextcloudError

log = logging.getLogger(__name__)

OCS_OK: Final = frozenset({100, 200})
OCS_EXISTS: Final = 409
BRUTEFORCE_WINDOW: Final = 30 * 60.0
# Nextcloud refuses every AppAPI login from an IP with MORE than this many attempts in 30 minutes
# (IThrottler::MAX_ATTEMPTS, `auth.bruteforce.max-attempts`).
NC_MAX_ATTEMPTS: Final = 10
# A refused call adds 2 attempts on AppAPI's own routes (it validates the login twice), 1 on
# other routes (measured on 32.0.1): every refusal is counted as 2.
ATTEMPTS_PER_REFUSAL: Final = 2
USER_REFUSAL_SLACK_MAX: Final = 3
BUDGET_FILE: Final = "appapi-auth-budget.json"
BUDGET_FILE_VERSION: Final = 1
STATE_PATH: Final = "/ocs/v1.php/apps/app_api/ex-app/state"
BRUTEFORCE_REMEDY: Final = (
    "Nextcloud counts failed AppAPI logins per IP (2 attempts per refused call); with more than "
    "10 attempts in 30 minutes it refuses every AppAPI call from this IP. Register the app "
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
class _Refusal:
    """One refused AppAPI login as Nextcloud's throttler records it: when, for which user (its
    metadata), and how many attempts it added."""

    at: float
    user: str | None  # None: a lock-out seen (any successful login ends it)
    attempts: int


@attrs.define
class AuthBudget:
    """Our own count of refused AppAPI logins, kept under Nextcloud's lock-out threshold.

    Counted as Nextcloud counts (measured on 32.0.1 with AppAPI 32.0.0): its throttler refuses
    every AppAPI login from an IP once that IP has more than NC_MAX_ATTEMPTS attempts in the last
    30 minutes, and a refused call adds 2 attempts on AppAPI's own routes (1 elsewhere), so
    every refusal is counted as ATTEMPTS_PER_REFUSAL, an upper bound. A successful login clears
    only the attempts recorded for the same user (Nextcloud's metadata is app id + user id).
    The count survives restarts when the client persists it (see NextcloudClient.load_budget).

    We allow `limit` refused calls per window across every feature, never more attempts than
    Nextcloud tolerates; when they are spent, calls stop until the window passes. An inbound
    request bearing the secret (AppAPI knows us again) lifts the pause for ONE call, at most once
    a minute and only while one more refusal would still leave Nextcloud below its threshold.

    Only refusals that can mean a wrong app id or secret are counted: Nextcloud's throttler counts
    exactly those (contract 2.2) and they do not depend on the user part. An impersonated refusal
    while the credentials are `verified` (an authenticated call succeeded since the last counted
    refusal) is the user's (disabled: not logged in) or the disabled app's, uncounted by
    Nextcloud; at most `user_slack` of them are taken on trust (their worst case is budgeted
    like counted ones) before the client re-proves the credentials with one empty-user call
    (docs/lifecycle.md, "What the budget counts").
    """

    limit: int = 4
    window: float = BRUTEFORCE_WINDOW
    lift_interval: float = 60.0
    clock: Callable[[], float] = time.time  # wall clock: the count outlives the process
    _refusals: list[_Refusal] = attrs.field(factory=list)
    _allow_one: bool = False
    _last_lift: float = -1e18
    last_refusal: str = ""
    last_refusal_at: float | None = None
    verified: bool = False  # an authenticated call succeeded since the last counted refusal
    _trusted_user_refusals: int = 0  # user refusals taken on trust since that success
    user_refusals: int = 0  # impersonated refusals not counted (lifetime, for the heartbeat)
    changed: bool = False  # the persisted form is out of date (the client saves and clears it)

    def _trim(self, now: float) -> None:
        kept = [r for r in self._refusals if 0 <= now - r.at < self.window]
        if len(kept) != len(self._refusals):
            self._refusals = kept
            self.changed = True

    @property
    def attempts(self) -> int:
        """Nextcloud's count for our IP as far as our own refusals go (a lower bound of its
        real count: other clients behind the same IP add to it)."""
        self._trim(self.clock())
        return sum(r.attempts for r in self._refusals)

    @property
    def _ceiling(self) -> int:
        """The attempts we stop at: `limit` refusals, never past the last refusal that leaves
        Nextcloud at or under its threshold."""
        return min(self.limit * ATTEMPTS_PER_REFUSAL, NC_MAX_ATTEMPTS)

    def _worst_case(self) -> int:
        """What Nextcloud may have counted: ours plus the user refusals taken on trust."""
        return self.attempts + self._trusted_user_refusals * ATTEMPTS_PER_REFUSAL

    def _exhausted(self) -> bool:
        """Our own limit is reached, or one more refusal could cross Nextcloud's threshold."""
        return self.attempts + ATTEMPTS_PER_REFUSAL > self._ceiling or not self._room_for_one()

    def _room_for_one(self) -> bool:
        """One more refusal would leave Nextcloud at or under its threshold."""
        return self._worst_case() + ATTEMPTS_PER_REFUSAL <= NC_MAX_ATTEMPTS

    @property
    def spent(self) -> bool:
        return self._exhausted() and not (self._allow_one and self._room_for_one())

    @property
    def user_slack(self) -> int:
        """User refusals taken on trust per verified success. If the secret went bad right after
        that success, Nextcloud counts these too: they are budgeted within the same ceiling, and
        one refusal's room is kept for a lifted trial."""
        room = NC_MAX_ATTEMPTS - self._ceiling - ATTEMPTS_PER_REFUSAL
        return max(0, min(USER_REFUSAL_SLACK_MAX, room // ATTEMPTS_PER_REFUSAL))

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
        """Inbound proof that Nextcloud knows our secret: allow one trial call (rate-limited,
        and only while a refusal of it would not lock the IP out)."""
        now = time.monotonic()
        if (
            self._exhausted()
            and self._room_for_one()
            and now - self._last_lift >= self.lift_interval
        ):
            self._allow_one = True
            self._last_lift = now

    @property
    def used(self) -> int:
        """Refused calls in the window."""
        self._trim(self.clock())
        return len(self._refusals)

    def record_failure(self, reason: str, user: str = "") -> None:
        now = self.clock()
        self._trim(now)
        was_exhausted = self._exhausted()
        self._refusals.append(_Refusal(now, user, ATTEMPTS_PER_REFUSAL))
        self.changed = True
        self.verified = False
        self.last_refusal = reason
        self.last_refusal_at = time.time()
        if self._exhausted() and not was_exhausted:
            log.error(
                "AppAPI refused %d calls (%d attempts on Nextcloud's count); pausing Nextcloud "
                "calls. %s",
                len(self._refusals),
                self.attempts,
                BRUTEFORCE_REMEDY,
            )

    def record_lockout(self, reason: str) -> None:
        """Nextcloud answered 429: its count for our IP is over the threshold (refusals from
        before a restart without storage, or other clients behind the same IP). Taken as a
        count at the threshold until the window passes or a login succeeds again."""
        now = self.clock()
        self._trim(now)
        missing = NC_MAX_ATTEMPTS + 1 - self._worst_case()
        if missing > 0:
            self._refusals.append(_Refusal(now, None, missing))
            self.changed = True
        self._allow_one = False
        self.verified = False
        self.last_refusal = reason
        self.last_refusal_at = time.time()
        log.error("Nextcloud refuses every AppAPI login from this IP (429). %s", BRUTEFORCE_REMEDY)

    def record_success(self, user: str = "") -> None:
        """Nextcloud resets the attempts whose metadata matches this login (app id + user)."""
        kept = [r for r in self._refusals if r.user is not None and r.user != user]
        if len(kept) != len(self._refusals):
            self._refusals = kept
            self.changed = True
        self._allow_one = False
        self.verified = True
        self._trusted_user_refusals = 0

    def record_user_refusal(self) -> None:
        """Counted separately after a fresh proof of the credentials (nothing taken on trust)."""
        self.user_refusals += 1

    def reset(self) -> None:
        """Forget every failure (after `occ security:bruteforce:reset`, or in tests)."""
        if self._refusals:
            self._refusals = []
            self.changed = True
        self.record_success()
        self.verified = False

    def snapshot(self) -> dict[str, Any]:
        spent = self.spent
        out: dict[str, Any] = {
            "failures": self.used,
            "limit": self.limit,
            "attempts": self.attempts,
            "nextcloudMaxAttempts": NC_MAX_ATTEMPTS,
            "spent": spent,
        }
        if self.user_refusals:
            out["userRefusals"] = self.user_refusals  # disabled users / app: not counted
        if self.last_refusal:
            out["lastRefusal"] = self.last_refusal
        if spent:
            out["remedy"] = BRUTEFORCE_REMEDY
        return out

    # ------------------------------------------------------------ persisted form

    def to_json(self) -> dict[str, Any]:
        self._trim(self.clock())
        return {
            "version": BUDGET_FILE_VERSION,
            "refusals": [
                {"at": r.at, "user": r.user, "attempts": r.attempts} for r in self._refusals
            ],
            "lastRefusal": self.last_refusal,
            "lastRefusalAt": self.last_refusal_at,
        }

    def restore(self, data: Any) -> int:
        """Take the refusals of a persisted budget (lenient: unusable entries are skipped, a
        future timestamp is taken as now). Returns how many are still in the window."""
        if not isinstance(data, dict) or not isinstance(data.get("refusals"), list):
            return 0
        now = self.clock()
        restored: list[_Refusal] = []
        for item in data["refusals"]:
            if not isinstance(item, dict):
                continue
            at, user, attempts = item.get("at"), item.get("user", ""), item.get("attempts")
            if not isinstance(at, int | float) or isinstance(at, bool):
                continue
            if user is not None and not isinstance(user, str):
                continue
            if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
                attempts = ATTEMPTS_PER_REFUSAL
            restored.append(_Refusal(min(float(at), now), user, min(attempts, NC_MAX_ATTEMPTS + 1)))
        self._refusals = restored
        self._trim(now)
        if isinstance(data.get("lastRefusal"), str):
            self.last_refusal = data["lastRefusal"][:300]
        at = data.get("lastRefusalAt")
        if isinstance(at, int | float) and not isinstance(at, bool):
            self.last_refusal_at = float(at)
        self.changed = False
        return len(self._refusals)


class NextcloudClient:
    """One ClientSession to Nextcloud for control-plane calls (decoded, small bodies)."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.base = config.nextcloud_url
        self.budget = AuthBudget(limit=config.auth_failure_budget)
        # Where the budget outlives the process: a restart must not start a fresh count while
        # Nextcloud still remembers the refusals (each restart's boot probe would add 2).
        self.budget_path: Path | None = config.persistent_storage / BUDGET_FILE
        self._budget_lock = asyncio.Lock()
        self._budget_store_warned = False
        # Nextcloud's enabled flag for this app as last seen (ex-app/state, PUT /enabled, /init);
        # None until known.
        self.app_enabled: bool | None = None
        self._verify_lock = asyncio.Lock()

    def url(self, path: str) -> URL:
        return URL(str(self.base) + path, encoded=True)

    async def load_budget(self) -> None:
        """Restore the refusals of the last 30 minutes from the persistent storage."""
        if self.budget_path is None:
            return
        data = await asyncio.to_thread(storage.read_json, self.budget_path)
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
        """Write the budget if it changed (one writer at a time; a failure is logged once)."""
        if self.budget_path is None or not self.budget.changed:
            return
        async with self._budget_lock:
            # Written under the lock from the state at that moment: the last writer always
            # writes the newest count (a concurrent save may write the same state twice).
            self.budget.changed = False
            try:
                await storage.write_json(self.budget_path, self.budget.to_json())
            except storage.StoreError as exc:
                self.budget.changed = True
                if not self._budget_store_warned:
                    self._budget_store_warned = True
                    log.warning(
                        "the AppAPI failure budget is kept in memory only (%s): a restart "
                        "forgets refusals Nextcloud still counts",
                        exc.reason,
                    )

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
        client = NextcloudClient(config, session)
        await client.load_budget()
        yield client
