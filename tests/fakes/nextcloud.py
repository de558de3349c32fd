"""A fake Nextcloud + AppAPI, as strict as the real one where the connector can tell.

A real aiohttp app on loopback. It checks AppAPI headers the way `validateExAppRequestToNC` does
(contract 2.2/2.3), counts failed logins per client IP and locks the IP out like Nextcloud's
brute-force throttler, answers OCS v1/v2 envelopes with their HTTP mappings, gzips when the
client offers it, records every call, and on `progress: 100` calls the connector's /heartbeat and
PUT /enabled while holding its own answer open, like AppAPI.

Measured against the real Nextcloud 32.0.1 / AppAPI 32.0.0 (tests/integration/ runs the same test
bodies against this fake and the real server):
* a refused AppAPI login adds 2 attempts on AppAPI's own OCS routes (the login is validated
  twice) and 1 elsewhere; before each validation the throttler refuses (429 "Reached maximum
  delay", OCS v1 in-band) an IP with more than `lockout_threshold` attempts in the window, valid
  logins included; a successful login deletes only the attempts of the same app id and user;
* capabilities answers a request whose AppAPI login was refused (the attempt still counts; a
  locked-out IP gets 429 there too); status.php does not log anyone in (nothing is counted);
  WebDAV answers a locked-out IP 500 (Sabre's MaxDelayReached);
* registering a top-menu entry or a script that exists overwrites it and answers 200.

Personalities (events_listener): "31" stores any registration like AppAPI 31 did, but (as there)
nothing is ever delivered for it: AppAPI's listener only fired for `eventType: "node_event"`
(contract 6.6); "32" answers OCS 996 (measured), "34" answers OCS 404 (endpoint removed),
"33.0.0" answers HTTP 500 naming EventsListenerController.

Users follow Nextcloud's provisioning API: a disabled user can be impersonated (AppAPI's check
passes) but is not logged in, so login-required OCS routes answer 997 without counting a failed
login; reading another user's info without being their admin or subadmin answers OCS 998 (HTTP
404 on v2); `cloud/users/details` pages through users for admins and subadmins.

webhook_listeners is tests/fakes/webhook_listeners.py (`fake.webhook_listeners`).

Extension: pass `extra_routes=[web.RouteDef...]` (or call `add_routes` before `start`) to add
endpoints; handlers can call `fake.check_appapi(request)` to authenticate exactly like this fake.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tests.fakes.nextcloud_appapi import AppApiSurfaces
from tests.fakes.webhook_listeners import FakeWebhookListeners

EVENTS_LISTENER_CONTROLLER_ERROR = (
    "Could not resolve OCA\\AppAPI\\Controller\\EventsListenerController! "
    "Class OCA\\AppAPI\\Controller\\EventsListenerController does not exist"
)
APPAPI: web.RequestKey[tuple[str, str | None]] = web.RequestKey("fake_nc_appapi")
BODY: web.RequestKey[bytes] = web.RequestKey("fake_nc_body")


@attrs.define
class FakeUser:
    uid: str
    email: str | None = None
    display_name: str | None = None
    groups: list[str] = attrs.field(factory=list)
    enabled: bool = True
    subadmin_of: list[str] = attrs.field(factory=list)  # groups this user is a subadmin of

    def ocs(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "id": self.uid,
            "email": self.email,
            "displayname": self.display_name or self.uid,
            "display-name": self.display_name or self.uid,
            "groups": list(self.groups),
            "quota": {"free": 1, "used": 0, "total": 1, "relative": 0},
            "backend": "Database",
        }


@attrs.frozen
class Attempt:
    """One attempt registered by the throttler, with the metadata a success resets by."""

    at: float
    app_id: str
    user: str


@attrs.frozen
class Call:
    """One request the fake received."""

    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    body: bytes
    user: str | None  # the AppAPI user if the AppAPI login succeeded ("" = service), else None
    auth: str  # ok | none | refused | locked | disabled
    peer: str

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@attrs.define
class Callback:
    """What the fake did to the connector while answering progress 100."""

    method: str
    path: str
    status: int
    body: str
    started: float
    finished: float


class FakeNextcloud:
    def __init__(
        self,
        *,
        app_id: str = "bee_flow",
        secret: str = "",
        personality: str = "32",
        version: str = "32.0.1",
        registered: bool = True,
        enabled: bool = True,
        warmup_seconds: float = 0.0,
        lockout_threshold: int = 10,
        lockout_window: float = 1800.0,
        expose_instance_id: str | None = None,
        extra_routes: Iterable[web.RouteDef] = (),
    ) -> None:
        self.app_id = app_id
        self.secret = secret
        self.personality = personality
        self.version = version
        self.registered = registered
        self.enabled = enabled
        self.warmup_until = time.monotonic() + warmup_seconds if warmup_seconds else 0.0
        self.init_in_progress = True
        self.lockout_threshold = lockout_threshold  # attempts; MORE than this locks the IP
        self.lockout_window = lockout_window
        self.expose_instance_id = expose_instance_id
        self.theming_name = "Nextcloud"
        self.users: dict[str, FakeUser] = {}
        self.calls: list[Call] = []
        self.progress: list[dict[str, Any]] = []
        self.callbacks: list[Callback] = []
        self.top_menu: dict[str, dict[str, Any]] = {}
        self.scripts: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events_listeners: dict[tuple[str, str], dict[str, Any]] = {}
        self.webhook_listeners = FakeWebhookListeners(self)
        # provisioning_api's app config (admins only): when background jobs last ran, how.
        self.app_config: dict[tuple[str, str], str] = {
            ("core", "backgroundjobs_mode"): "cron",
            ("core", "lastcron"): str(int(time.time())),
        }
        self.logs: list[dict[str, Any]] = []
        self.failures: dict[str, list[float]] = {}  # refused calls per IP (counted ones)
        self.attempts: dict[str, list[Attempt]] = {}  # the throttler's attempts per IP
        self.locked_until: dict[str, float] = {}  # a lock-out set by a test, on top
        self.failure_count_total = 0
        self.connector_url: URL | None = None
        self.connector_socket: str | None = None
        self.callback_on_progress_100 = True
        self.hold_progress_100 = 0.0  # extra seconds the status answer is held after callbacks
        self.down = False  # when True every request gets 503 (a flapping Nextcloud)
        self._extra = list(extra_routes)
        self._runner: web.AppRunner | None = None
        self.url = URL()
        self._session: aiohttp.ClientSession | None = None
        # Settings, config values, Files actions, occ commands, setup checks (their module).
        self.surfaces = AppApiSurfaces(self)

    # ------------------------------------------------------------ set-up helpers

    def add_routes(self, routes: Iterable[web.RouteDef]) -> None:
        self._extra.extend(routes)

    def add_user(
        self,
        uid: str,
        *,
        email: str | None = None,
        display_name: str | None = None,
        groups: Iterable[str] = (),
        enabled: bool = True,
        subadmin_of: Iterable[str] = (),
    ) -> FakeUser:
        user = FakeUser(uid, email, display_name, list(groups), enabled, list(subadmin_of))
        self.users[uid] = user
        return user

    def register(self, *, enabled: bool = True) -> None:
        """What `occ app_api:app:register` does (the app exists and knows the secret)."""
        self.registered = True
        self.enabled = enabled

    def set_connector(self, *, url: URL | str | None = None, socket: str | None = None) -> None:
        self.connector_url = URL(str(url)) if url is not None else None
        self.connector_socket = socket

    def calls_to(self, path_prefix: str, method: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.path.startswith(path_prefix) and (method is None or c.method == method)
        ]

    def failures_for(self, ip: str = "127.0.0.1") -> int:
        """Refused calls that the throttler counted (each adds 1 or 2 attempts)."""
        now = time.monotonic()
        return len([t for t in self.failures.get(ip, []) if now - t < self.lockout_window])

    def attempts_for(self, ip: str = "127.0.0.1") -> int:
        """`occ security:bruteforce:attempts <ip> app_api`: attempts in the window."""
        now = time.monotonic()
        return len([a for a in self.attempts.get(ip, []) if now - a.at < self.lockout_window])

    def is_locked(self, ip: str = "127.0.0.1") -> bool:
        """Throttler::sleepDelayOrThrowOnMax: MORE than the threshold in the window."""
        if self.locked_until.get(ip, 0.0) > time.monotonic():
            return True
        return self.attempts_for(ip) > self.lockout_threshold

    def reset_bruteforce(self, ip: str = "127.0.0.1") -> None:
        """`occ security:bruteforce:reset <ip>`."""
        self.failures.pop(ip, None)
        self.attempts.pop(ip, None)
        self.locked_until.pop(ip, None)

    # ------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> URL:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**3)
        app.add_routes(self._extra)
        app.add_routes(self._routes())
        app.add_routes(self.surfaces.routes())
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = URL.build(scheme="http", host=host, port=int(bound[1]))
        return self.url

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ AppAPI login

    def check_appapi(self, request: web.Request) -> tuple[str, str | None]:
        """The AppAPI login as Nextcloud runs it: returns (verdict, user). verdict: ok | none |
        refused | locked | disabled. base.php validates every request carrying the header, and
        AppAPI's own OCS controllers validate it a second time (#[AppAPIAuth]); each validation
        first asks the throttler (locked: 429) and registers an attempt for an unknown app id
        or a wrong secret (contract 2.2). Other refusals (no app id, empty version, unknown
        user, disabled app) are not counted. A success deletes the attempts of the same app id
        and user (Throttler::resetDelay with that metadata)."""
        header = request.headers.get("AUTHORIZATION-APP-API")
        if header is None or request.path == "/status.php":  # status.php logs nobody in
            return "none", None
        ip = request.remote or "?"
        validations = 2 if _appapi_route(request.path) else 1
        counted = False
        verdict: tuple[str, str | None] = ("refused", None)
        for _ in range(validations):
            if self.is_locked(ip):
                verdict = ("locked", None)
                break
            verdict, attempt_user = self._validate(request, header)
            if attempt_user is None:
                break  # accepted, or refused without counting: the second pass is the same
            self._register_attempt(ip, request.headers.get("EX-APP-ID", ""), attempt_user)
            counted = True
        if counted:
            now = time.monotonic()
            self.failures.setdefault(ip, []).append(now)
            self.failure_count_total += 1
        if verdict[0] == "ok":
            self._reset_attempts(ip, request.headers.get("EX-APP-ID", ""), verdict[1] or "")
        return verdict

    def _validate(
        self, request: web.Request, header: str
    ) -> tuple[tuple[str, str | None], str | None]:
        """One validateExAppRequestToNC: (verdict, user), and the user part an attempt is
        registered for (None: nothing registered)."""
        ex_app_id = request.headers.get("EX-APP-ID", "")
        if not ex_app_id:
            return ("refused", None), None
        user, _, secret = _split_auth(header)
        if ex_app_id != self.app_id or not self.registered:
            return ("refused", None), user
        if secret is None or secret != self.secret:
            return ("refused", None), user
        path = request.path
        disabled = not self.enabled or time.monotonic() < self.warmup_until
        if disabled and not (
            path.endswith("/apps/app_api/ex-app/state")
            or (path.endswith("/apps/app_api/ex-app/status") and self.init_in_progress)
        ):
            return (
                "disabled",
                None,
            ), None  # refused, but a registered app's refusal is not counted
        if not request.headers.get("EX-APP-VERSION", ""):
            return ("refused", None), None
        if user and user not in self.users:
            return ("refused", None), None
        return ("ok", user), None

    def _register_attempt(self, ip: str, app_id: str, user: str) -> None:
        now = time.monotonic()
        recent = [a for a in self.attempts.get(ip, []) if now - a.at < self.lockout_window]
        recent.append(Attempt(now, app_id, user))
        self.attempts[ip] = recent

    def _reset_attempts(self, ip: str, app_id: str, user: str) -> None:
        kept = [a for a in self.attempts.get(ip, []) if (a.app_id, a.user) != (app_id, user)]
        if kept:
            self.attempts[ip] = kept
        else:
            self.attempts.pop(ip, None)
        if not kept:
            self.failures.pop(ip, None)

    # ------------------------------------------------------------ plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read() if request.can_read_body and not _streamed(request) else b""
        verdict, user = self.check_appapi(request)
        request[APPAPI] = (verdict, user)
        self.calls.append(
            Call(
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                body=body,
                user=user,
                auth=verdict,
                peer=request.remote or "?",
            )
        )
        request[BODY] = body
        if self.down:
            return web.Response(status=503, text="Service Unavailable")
        if verdict == "locked":
            return self._locked(request)
        if verdict in ("refused", "disabled") and not _public_page(request.path):
            return self._unauthorised(request)
        response: web.StreamResponse = await handler(request)
        if (
            isinstance(response, web.Response)
            and "gzip" in request.headers.get("Accept-Encoding", "")
            and response.body is not None
            and len(response.body) > 0  # type: ignore[arg-type]
        ):
            response.enable_compression(aiohttp.web.ContentCoding.gzip)
        return response

    def _unauthorised(self, request: web.Request) -> web.Response:
        if "/ocs/" in request.path:
            return self._ocs(request, None, 997, "AppAPI authentication failed")
        return web.Response(
            status=401,
            content_type="application/xml",
            text='<?xml version="1.0"?><d:error xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns">'
            "<s:exception>Sabre\\DAV\\Exception\\NotAuthenticated</s:exception></d:error>",
        )

    def _locked(self, request: web.Request) -> web.Response:
        """MaxDelayReached: OCS answers 429 (v1 in-band), WebDAV lets Sabre turn the exception
        into a 500 (measured on 32.0.1)."""
        if "/remote.php/dav" in request.path:
            return web.Response(
                status=500,
                content_type="application/xml",
                text='<?xml version="1.0" encoding="utf-8"?>\n<d:error xmlns:d="DAV:" '
                'xmlns:s="http://sabredav.org/ns">\n  <s:exception>OCP\\Security\\'
                "Bruteforce\\MaxDelayReached</s:exception>\n  <s:message>Reached maximum "
                "delay</s:message>\n</d:error>\n",
            )
        return self._ocs(request, None, 429, "Reached maximum delay")

    @staticmethod
    def _ocs(
        request: web.Request, data: Any, statuscode: int = 200, message: str = "OK"
    ) -> web.Response:
        """OCS envelope with Nextcloud's HTTP mapping: v1 answers 200 except 997 -> 401; v2 maps
        the statuscode to HTTP like V2Response (997 -> 401, 998 -> 404, 996/999 -> 500, other
        codes outside 200..600 -> 400)."""
        v1 = "/ocs/v1.php/" in request.path
        ok = statuscode in (100, 200)
        if v1 and statuscode == 200:
            statuscode = 100
        meta = {
            "status": "ok" if ok else "failure",
            "statuscode": statuscode,
            "message": message,
            "totalitems": "",
            "itemsperpage": "",
        }
        http = (401 if statuscode == 997 else 200) if v1 else _v2_http(statuscode)
        body = {"ocs": {"meta": meta, "data": data if data is not None else []}}
        return web.json_response(body, status=http)

    def _require(
        self, request: web.Request, *, admin: bool = False, login: bool = True
    ) -> web.Response | None:
        """The AppAPI login must have succeeded. `login`: the route needs a logged-in user
        (provisioning API); AppAPI's own ExApp routes are public pages and do not. A disabled
        user passes AppAPI's check (it only asks that the user exists) but Session::isLoggedIn()
        is false for them, and the empty user is no one: both get 997 on login routes, and
        neither counts as a failed login (the AppAPI login itself succeeded)."""
        verdict, user = request[APPAPI]
        if verdict != "ok":
            return self._ocs(request, None, 997, "Current user is not logged in")
        if login and (not user or not self.users[user].enabled):
            return self._ocs(request, None, 997, "Current user is not logged in")
        if admin and not self.is_admin(user):
            return self._ocs(request, None, 403, "Logged in user must be an admin")
        return None

    def is_admin(self, uid: str | None) -> bool:
        user = self.users.get(uid or "")
        return user is not None and "admin" in user.groups

    def can_manage(self, caller: str | None, target: FakeUser) -> bool:
        """Admin, or subadmin of one of the target's groups (SubAdmin::isUserAccessible)."""
        if not caller or caller not in self.users:
            return False
        if self.is_admin(caller):
            return True
        if "admin" in target.groups:
            return False
        return bool(set(self.users[caller].subadmin_of) & set(target.groups))

    # ------------------------------------------------------------ routes

    def _routes(self) -> list[web.RouteDef]:
        r: list[web.RouteDef] = [web.get("/status.php", self._status_php)]
        for v in ("v1", "v2"):
            base = f"/ocs/{v}.php"
            r += [
                web.get(f"{base}/cloud/capabilities", self._capabilities),
                web.get(f"{base}/cloud/users", self._users_list),
                web.get(f"{base}/cloud/users/details", self._users_details),
                web.get(f"{base}/cloud/users/{{uid}}", self._user),
                web.get(f"{base}/cloud/users/{{uid}}/groups", self._user_groups),
                web.get(f"{base}/cloud/groups", self._groups),
                web.get(f"{base}/cloud/groups/{{gid}}/users", self._group_users),
                web.put(f"{base}/apps/app_api/ex-app/status", self._status),
                web.get(f"{base}/apps/app_api/ex-app/state", self._state),
                web.get(f"{base}/apps/app_api/api/v1/users", self._appapi_users),
                web.post(f"{base}/apps/app_api/api/v1/ui/top-menu", self._top_menu_add),
                web.delete(f"{base}/apps/app_api/api/v1/ui/top-menu", self._top_menu_del),
                web.get(f"{base}/apps/app_api/api/v1/ui/top-menu", self._top_menu_get),
                web.post(f"{base}/apps/app_api/api/v1/ui/script", self._script_add),
                web.delete(f"{base}/apps/app_api/api/v1/ui/script", self._script_del),
                web.get(f"{base}/apps/app_api/api/v1/ui/script", self._script_get),
                web.post(f"{base}/apps/app_api/api/v1/events_listener", self._events_listener),
                web.post(f"{base}/apps/app_api/api/v1/log", self._log),
                *self.webhook_listeners.routes(base),
                web.get(
                    f"{base}/apps/provisioning_api/api/v1/config/apps/{{app}}/{{key}}",
                    self._app_config,
                ),
            ]
        return r

    async def _status_php(self, request: web.Request) -> web.Response:
        major = self.version.split(".")[0]
        return web.json_response(
            {
                "installed": True,
                "maintenance": False,
                "needsDbUpgrade": False,
                "version": f"{self.version}.0",
                "versionstring": self.version,
                "edition": "",
                "productname": "Nextcloud",
                "extendedSupport": False,
                "major": int(major),
            }
        )

    async def _capabilities(self, request: web.Request) -> web.Response:
        parts = [int(p) for p in [*self.version.split("."), "0", "0"][:3]]
        theming: dict[str, Any] = {"name": self.theming_name, "url": "https://nextcloud.com"}
        if self.expose_instance_id:
            theming["instanceid"] = self.expose_instance_id
        data = {
            "version": {
                "major": parts[0],
                "minor": parts[1],
                "micro": parts[2],
                "string": self.version,
                "edition": "",
                "extendedSupport": False,
            },
            "capabilities": {"core": {"pollinterval": 60}, "theming": theming},
        }
        return self._ocs(request, data)

    async def _users_list(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, admin=True)) is not None:
            return denied
        return self._ocs(request, {"users": sorted(self.users)})

    async def _user(self, request: web.Request) -> web.Response:
        """UsersController::getUser: an unknown user is OCS 404 "User does not exist"; a user the
        caller may not see (not self, not their admin or subadmin) makes getUserData return null,
        which is OCSException('', 998): HTTP 404 on v2, in-band on v1."""
        if (denied := self._require(request)) is not None:
            return denied
        _, caller = request[APPAPI]
        uid = request.match_info["uid"]
        user = self.users.get(uid)
        if user is None:
            return self._ocs(request, None, 404, "User does not exist")
        if caller != uid and not self.can_manage(caller, user):
            return self._ocs(request, None, 998, "")
        return self._ocs(request, user.ocs())

    async def _users_details(self, request: web.Request) -> web.Response:
        """UsersController::getUsersDetails: admins page through every account (disabled ones
        included) ordered by uid; subadmins through their groups' members; anyone else gets an
        empty list. `users` maps uid -> details, and PHP encodes an empty map as `[]`."""
        if (denied := self._require(request)) is not None:
            return denied
        _, caller = request[APPAPI]
        assert caller is not None
        search = request.query.get("search", "").lower()
        try:
            limit = int(request.query["limit"]) if "limit" in request.query else None
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return self._ocs(request, None, 400, "Invalid limit or offset")
        if self.is_admin(caller):
            uids = sorted(self.users, key=str.lower)
        else:
            groups = set(self.users[caller].subadmin_of)
            uids = sorted(
                (u.uid for u in self.users.values() if groups & set(u.groups)), key=str.lower
            )
        uids = [u for u in uids if search in u.lower()]
        page = uids[offset:] if limit is None else uids[offset : offset + max(limit, 0)]
        details: dict[str, Any] = {}
        for uid in page:
            user = self.users[uid]
            details[uid] = user.ocs() if self.can_manage(caller, user) else {"id": uid}
        return self._ocs(request, {"users": details or []})

    async def _user_groups(self, request: web.Request) -> web.Response:
        if (denied := self._require(request)) is not None:
            return denied
        user = self.users.get(request.match_info["uid"])
        if user is None:
            return self._ocs(request, None, 404, "User does not exist")
        return self._ocs(request, {"groups": list(user.groups)})

    async def _groups(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, admin=True)) is not None:
            return denied
        groups = sorted({g for u in self.users.values() for g in u.groups})
        return self._ocs(request, {"groups": groups})

    async def _group_users(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, admin=True)) is not None:
            return denied
        gid = request.match_info["gid"]
        members = sorted(u.uid for u in self.users.values() if gid in u.groups)
        return self._ocs(request, {"users": members})

    async def _app_config(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, admin=True)) is not None:
            return denied
        key = (request.match_info["app"], request.match_info["key"])
        return self._ocs(request, {"data": self.app_config.get(key, "")})

    async def _appapi_users(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, login=False)) is not None:
            return denied
        return self._ocs(request, sorted(self.users))

    async def _state(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, login=False)) is not None:
            return denied
        return self._ocs(request, 1 if self.enabled else 0)

    async def _log(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, login=False)) is not None:
            return denied
        body = _json(request)
        level = body.get("level")
        # OCSApiController::log(int $level): the PSR logger refuses a level outside 0..4.
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 4:
            return self._ocs(request, None, 400, "Invalid log level")
        self.logs.append(body)
        return self._ocs(request, [])

    async def _status(self, request: web.Request) -> web.Response:
        """setAppInitProgress: 0..100, error stored, 100 runs enableExApp synchronously."""
        if (denied := self._require(request, login=False)) is not None:
            return denied
        body = _json(request)
        progress = body.get("progress")
        if not isinstance(progress, int) or not 0 <= progress <= 100:
            return self._ocs(request, None, 400, "Invalid progress value")
        self.progress.append(body)
        if body.get("error"):
            self.init_in_progress = False
            return self._ocs(request, [])
        if progress == 100:
            self.init_in_progress = False
            self.enabled = True
            if self.callback_on_progress_100:
                await self._enable_callbacks()
            if self.hold_progress_100:
                await asyncio.sleep(self.hold_progress_100)
        return self._ocs(request, [])

    async def _enable_callbacks(self) -> None:
        """GET /heartbeat (no AppAPI headers in manual/DSP mode), then PUT /enabled?enabled=1
        with the AppAPI headers and an empty user, both while our status answer is held."""
        if self.connector_url is None and self.connector_socket is None:
            return
        headers = {
            "AA-VERSION": "32.0.0",
            "EX-APP-ID": self.app_id,
            "EX-APP-VERSION": "1.0.0",
            "AUTHORIZATION-APP-API": base64.b64encode(f":{self.secret}".encode()).decode(),
            "AA-REQUEST-ID": "CLI",
            "Accept-Language": "en",
        }
        plain = {"Accept": "application/json", "Content-Type": "application/json"}
        await self.call_connector("GET", "/heartbeat", plain, timeout=30)
        await self.call_connector("PUT", "/enabled?enabled=1", headers, timeout=60)

    async def call_connector(
        self, method: str, path: str, headers: Mapping[str, str], *, timeout: float = 30
    ) -> Callback:
        if self._session is None:
            connector: aiohttp.BaseConnector
            if self.connector_socket:
                connector = aiohttp.UnixConnector(path=self.connector_socket)
            else:
                connector = aiohttp.TCPConnector()
            self._session = aiohttp.ClientSession(connector=connector)
        base = self.connector_url or URL("http://localhost")
        started = time.monotonic()
        try:
            async with self._session.request(
                method,
                URL(str(base) + path, encoded=True),
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            text, status = f"{type(exc).__name__}", 0
        cb = Callback(method, path, status, text, started, time.monotonic())
        self.callbacks.append(cb)
        return cb

    async def _top_menu_add(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, login=False)) is not None:
            return denied
        body = _json(request)
        name = str(body.get("name", ""))
        if not name or len(name) > 32 or len(str(body.get("displayName", ""))) > 32:
            return self._ocs(request, None, 400, "Invalid top menu entry")
        # TopMenuService::registerExAppMenuEntry: insertOrUpdate, so a repeat overwrites.
        self.top_menu[name] = {**body, "icon": str(body.get("icon", "")).lstrip("/")}
        return self._ocs(request, [])

    async def _top_menu_get(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, login=False)) is not None:
            return denied
        name = str(_json(request).get("name", ""))
        entry = self.top_menu.get(name)
        if entry is None:
            return self._ocs(request, None, 404, "No such Top Menu entry")
        return self._ocs(
            request,
            {
                "id": list(self.top_menu).index(name) + 1,
                "appid": self.app_id,
                "name": name,
                "display_name": entry.get("displayName", ""),
                "icon": entry.get("icon", ""),
                "admin_required": int(entry.get("adminRequired", 0) or 0),
            },
        )

    async def _top_menu_del(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, login=False)) is not None:
            return denied
        name = request.query.get("name") or str(_json(request).get("name", ""))
        if self.top_menu.pop(name, None) is None:
            return self._ocs(request, None, 404, "Not found")
        return self._ocs(request, [])

    async def _script_add(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, login=False)) is not None:
            return denied
        body = _json(request)
        key = (
            str(body.get("type", "")),
            str(body.get("name", "")),
            str(body.get("path", "")).lstrip("/"),
        )
        if not all(key):
            return self._ocs(request, None, 400, "Invalid script")
        # ScriptsService::setExAppScript: insertOrUpdate, so a repeat overwrites.
        self.scripts[key] = body
        return self._ocs(request, [])

    async def _script_get(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, login=False)) is not None:
            return denied
        body = _json(request)
        key = (
            str(body.get("type", "")),
            str(body.get("name", "")),
            str(body.get("path", "")).lstrip("/"),
        )
        entry = self.scripts.get(key)
        if entry is None:
            return self._ocs(request, None, 404, "No such Script")
        return self._ocs(
            request,
            {
                "id": list(self.scripts).index(key) + 1,
                "appid": self.app_id,
                "type": key[0],
                "name": key[1],
                "path": key[2],
                "after_app_id": str(entry.get("afterAppId", "")),
            },
        )

    async def _script_del(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, login=False)) is not None:
            return denied
        body = _json(request)
        key = (
            str(body.get("type", "")),
            str(body.get("name", "")),
            str(body.get("path", "")).lstrip("/"),
        )
        if self.scripts.pop(key, None) is None:
            return self._ocs(request, None, 404, "Not found")
        return self._ocs(request, [])

    async def _events_listener(self, request: web.Request) -> web.Response:
        if (denied := self._require(request, login=False)) is not None:
            return denied
        if self.personality == "33.0.0":
            return web.Response(
                status=500,
                content_type="application/json",
                text=json.dumps({"message": EVENTS_LISTENER_CONTROLLER_ERROR}),
            )
        if self.personality == "32":
            return self._ocs(request, None, 996, "Internal Server Error")
        if self.personality not in ("31",):
            return self._ocs(request, None, 404, "Not found")
        body = _json(request)
        key = (str(body.get("eventType", "")), str(body.get("actionHandler", "")))
        if not all(key):
            return self._ocs(request, None, 400, "Invalid events listener")
        if key in self.events_listeners:
            return self._ocs(request, None, 409, "Events listener already registered")
        self.events_listeners[key] = body
        return self._ocs(request, body)


def _v2_http(statuscode: int) -> int:
    """OC\\AppFramework\\OCS\\V2Response::getStatus."""
    if statuscode in (100, 200):
        return 200
    mapped = {997: 401, 998: 404, 996: 500, 999: 500}.get(statuscode)
    if mapped is not None:
        return mapped
    return 400 if statuscode < 200 or statuscode > 600 else statuscode


def _public_page(path: str) -> bool:
    """Pages that answer whoever asks: a refused AppAPI login is counted, then ignored."""
    return path in (
        "/status.php",
        "/ocs/v1.php/cloud/capabilities",
        "/ocs/v2.php/cloud/capabilities",
    )


def _appapi_route(path: str) -> bool:
    """AppAPI's own OCS controllers, which validate the AppAPI login a second time."""
    return path.startswith(("/ocs/v1.php/apps/app_api/", "/ocs/v2.php/apps/app_api/"))


def _split_auth(header: str) -> tuple[str, str, str | None]:
    """base64_decode, explode(':', 2): (user, ':', secret); secret None when undecodable."""
    try:
        text = base64.b64decode(header, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "", "", None
    user, sep, secret = text.partition(":")
    return (user, sep, secret) if sep else (user, "", None)


def _streamed(request: web.Request) -> bool:
    """Large uploads (DAV PUT) are left for the handler to stream."""
    return request.method == "PUT" and "/remote.php/dav/" in request.path


def _json(request: web.Request) -> dict[str, Any]:
    """Nextcloud merges JSON bodies and query parameters; bad JSON is an empty body to it."""
    raw: bytes = request.get(BODY, b"")
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {}
    out = dict(request.query)
    if isinstance(parsed, dict):
        out.update(parsed)
    return out
