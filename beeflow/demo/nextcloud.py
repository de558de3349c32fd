"""DEMO STAND-IN of Nextcloud + AppAPI (not Nextcloud): the few OCS answers the connector needs,
and an AppAPI-style proxy front that forwards the browser to the connector as a logged-in demo
admin, so the browser goes through the connector's real authentication path.

Differences from a real Nextcloud, on purpose: every route is open to the demo admin; the front
streams replies as HaRP would (the real PHP proxy buffers whole replies); no login.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from importlib import resources
from typing import Any, Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from beeflow.demo.loopback import serve_loopback

NC_VERSION: Final = "32.0.1"
ADMIN_UID: Final = "admin"
ADMIN: Final[dict[str, Any]] = {
    "id": ADMIN_UID,
    "displayname": "Demo Admin",
    "email": "admin@demo.invalid",
    "groups": ["admin"],
}

AA_VERSION: Final = "32.0.0"  # what AppAPI itself sends
HARP_AA_VERSION: Final = "32"  # what HaRP writes over it on everything it forwards
ORIGIN_IP: Final = "x-origin-ip"

# Never forwarded in either direction (hop-by-hop, framing, and AppAPI's own headers).
_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_APPAPI_REQUEST: Final = frozenset(
    {"authorization-app-api", "ex-app-id", "ex-app-version", "aa-version", "aa-request-id"}
)
# What AppAPI's createProxyResponse drops from the ExApp's answer (docs/appapi-wire.md, "The
# PHP proxy's answers").
_APPAPI_RESPONSE: Final = _APPAPI_REQUEST
# Nextcloud overwrites an ExApp's CSP with its own on the legacy proxy. This is a
# strict policy in that spirit: the UI must work without inline scripts.
NC_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
)
LEGACY_METHODS: Final = ("GET", "POST", "PUT", "DELETE")
FAVICON: Final = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<circle cx="16" cy="16" r="15" fill="#0082c9"/></svg>'
)


def _ocs(request: web.Request, data: Any, status: int = 200, message: str = "OK") -> web.Response:
    v1 = request.path.startswith("/ocs/v1.php")
    ok = 200 <= status < 300
    code = (100 if ok else status) if v1 else status
    body = {
        "ocs": {
            "meta": {"status": "ok" if ok else "failure", "statuscode": code, "message": message},
            "data": data,
        }
    }
    return web.json_response(body, status=200 if v1 else status)


class DemoNextcloud:
    """Runs on 127.0.0.1 (ephemeral port); forwards to the connector at `connector_url`."""

    def __init__(self, *, app_id: str, secret: str, app_version: str, connector_url: URL) -> None:
        self.app_id = app_id
        self.secret = secret
        self.app_version = app_version
        self.connector_url = connector_url
        self.admin = dict(ADMIN)
        self.legacy_prefix = f"/index.php/apps/app_api/proxy/{app_id}/"
        self.harp_prefix = f"/exapps/{app_id}/"
        self.progress: list[int] = []
        self.webhooks: dict[int, dict[str, object]] = {}  # webhook_listeners' rows
        # True: the legacy front buffers each reply whole, like AppAPI's PHP proxy on NC 32
        # (nextcloud32-observed.md); False (default): it streams, as HaRP does.
        self.buffer_legacy = False
        self.url = URL()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._embedded = resources.files(__package__).joinpath("embedded.html").read_text("utf-8")
        self._landing_html = (
            resources.files(__package__).joinpath("landing.html").read_text("utf-8")
        )

    # ------------------------------------------------------------ AppAPI headers

    def appapi_headers(self, uid: str, *, harp: bool = False) -> dict[str, str]:
        """What AppAPI's PHP proxy adds; through HaRP, AA-VERSION is HaRP's constant "32"
        (docs/appapi-harp-contract.md §1.3), which is how the connector tells the two apart."""
        token = base64.b64encode(f"{uid}:{self.secret}".encode()).decode("ascii")
        return {
            "AUTHORIZATION-APP-API": token,
            "EX-APP-ID": self.app_id,
            "EX-APP-VERSION": self.app_version,
            "AA-VERSION": HARP_AA_VERSION if harp else AA_VERSION,
            "AA-REQUEST-ID": secrets.token_urlsafe(12),
        }

    def _caller(self, request: web.Request) -> str | None:
        """The user an ExApp call claims, if its secret is right (validateExAppRequestToNC)."""
        header = request.headers.get("AUTHORIZATION-APP-API", "")
        try:
            uid, _, secret = base64.b64decode(header).decode("utf-8").partition(":")
        except ValueError:
            return None
        if request.headers.get("EX-APP-ID") != self.app_id:
            return None
        if not hmac.compare_digest(secret.encode(), self.secret.encode()):
            return None
        return uid

    # ------------------------------------------------------------ OCS stand-ins

    async def _status_php(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "installed": True,
                "maintenance": False,
                "version": NC_VERSION + ".0",
                "versionstring": NC_VERSION,
                "productname": "Nextcloud (demo stand-in)",
            }
        )

    async def _capabilities(self, request: web.Request) -> web.Response:
        major, minor, micro = (int(p) for p in NC_VERSION.split("."))
        return _ocs(
            request,
            {
                "version": {"major": major, "minor": minor, "micro": micro, "string": NC_VERSION},
                "capabilities": {"theming": {"name": "Nextcloud demo", "url": str(self.url)}},
            },
        )

    def _details(self) -> dict[str, Any]:
        """The demo admin as UsersController::getUser answers for an enabled account."""
        return {**self.admin, "enabled": True, "display-name": self.admin["displayname"]}

    async def _ocs_authed(self, request: web.Request) -> web.Response:
        if self._caller(request) is None:
            return _ocs(request, None, 401, "Current user is not logged in")
        tail = request.match_info["tail"]
        uid = ADMIN_UID
        if tail in (f"cloud/users/{uid}", "cloud/user"):
            return _ocs(request, self._details())
        if tail == "cloud/users/details":
            # The user sync pages through every account as an administrator; the demo has one.
            try:
                offset = int(request.query.get("offset", "0"))
            except ValueError:
                return _ocs(request, None, 400, "Invalid limit or offset")
            page = {uid: self._details()} if offset == 0 else {}
            # PHP encodes an empty map as a list.
            return _ocs(request, {"users": page or []})
        if tail.startswith("cloud/users/"):
            return _ocs(request, None, 404, "User does not exist")
        if tail in ("cloud/users", "cloud/groups/admin/users"):
            return _ocs(request, {"users": [uid]})
        if tail == "apps/app_api/api/v1/users":
            return _ocs(request, [uid])
        if tail == "cloud/groups":
            return _ocs(request, {"groups": ["admin"]})
        if tail == "apps/app_api/ex-app/state":
            # AppAPI answers its enabled flag (1 or 0); the demo's app is always enabled. With
            # anything else the connector cannot know, and holds back the work that needs it.
            return _ocs(request, 1)
        if tail == "apps/app_api/ex-app/status" and request.method == "PUT":
            body = await request.json()
            if isinstance(body, dict) and isinstance(body.get("progress"), int):
                self.progress.append(body["progress"])
        if tail.startswith("apps/webhook_listeners/api/v1/webhooks"):
            return await self._webhooks(request, tail)
        if tail.startswith("apps/provisioning_api/api/v1/config/apps/core/"):
            # Background jobs: cron, run just now (deliveries would be on time).
            key = tail.rsplit("/", 1)[1]
            return _ocs(
                request, {"data": "cron" if key == "backgroundjobs_mode" else str(int(time.time()))}
            )
        if tail == "taskprocessing/tasks_provider/next":
            return web.Response(status=204)  # nothing scheduled (nobody uses the Assistant here)
        if tail == "apps/app_api/api/v1/talk_bot":
            # No Talk here: AppAPI 32's answer then (docs/nextcloud-measured.md).
            return _ocs(request, None, 400, "Talk bots could not be registered")
        # Registrations (top menu, script, logs...): accepted.
        return _ocs(request, {})

    async def _webhooks(self, request: web.Request, tail: str) -> web.Response:
        """webhook_listeners' rows, kept in memory (nothing is ever delivered in the demo)."""
        row_id = tail.rsplit("/", 1)[1]
        if request.method == "GET":
            uri = request.query.get("uri")
            rows = [r for r in self.webhooks.values() if uri is None or r["uri"] == uri]
            return _ocs(request, rows)
        if request.method == "DELETE":
            return _ocs(request, self.webhooks.pop(int(row_id), None) is not None)
        body = await request.json()
        new = not row_id.isdigit()
        ident = max(self.webhooks, default=0) + 1 if new else int(row_id)
        row = {**body, "id": ident, "appId": self.app_id, "userIdFilter": "", "eventFilter": []}
        if new or ident in self.webhooks:
            self.webhooks[ident] = row
        return _ocs(request, row)

    # ------------------------------------------------------------ the proxy front

    async def _front(self, request: web.Request) -> web.StreamResponse:
        legacy = request.path.startswith("/index.php/")
        if legacy and request.method not in LEGACY_METHODS:
            # AppAPI's PHP proxy has no PATCH (or HEAD) route: Nextcloud answers 405.
            return web.Response(status=405, text="Method Not Allowed")
        assert self._session is not None
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            lower = name.lower()
            if lower not in _HOP and lower not in _APPAPI_REQUEST and lower != ORIGIN_IP:
                headers.add(name, value)
        if legacy:
            # AppAPI's PHP proxy adds the browser's address; HaRP adds none, and stamps
            # AA-VERSION instead. The connector frames its replies by which one it sees.
            headers[ORIGIN_IP] = request.remote or "127.0.0.1"
        headers.update(self.appapi_headers(ADMIN_UID, harp=not legacy))
        # The path and query exactly as the browser sent them, minus the front's prefix.
        raw = request.rel_url.raw_path
        prefix = self.legacy_prefix if legacy else self.harp_prefix
        if not raw.startswith(prefix):
            return web.Response(status=404, text="Not Found")
        query = request.rel_url.raw_query_string
        target = URL(
            str(self.connector_url.origin())
            + "/"
            + raw[len(prefix) :]
            + ("?" + query if query else ""),
            encoded=True,
        )
        body = request.content if request.body_exists else None
        try:
            upstream = await self._session.request(
                request.method, target, headers=headers, data=body, allow_redirects=False
            )
        except aiohttp.ClientError:
            return web.Response(status=500)  # what Nextcloud answers when the ExApp is down
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                lower = name.lower()
                if lower in _HOP or lower in _APPAPI_RESPONSE:
                    continue
                response.headers.add(name, value)
            if "Content-Length" in upstream.headers:
                response.content_length = int(upstream.headers["Content-Length"])
            if legacy:
                response.headers["Content-Security-Policy"] = NC_CSP
            if legacy and self.buffer_legacy:
                whole = await upstream.read()
                response.content_length = len(whole)
                await response.prepare(request)
                await response.write(whole)
                await response.write_eof()
                return response
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _add_slash(self, request: web.Request) -> web.Response:
        """The app's root without its trailing slash: the UI's relative links would resolve
        one level up, so send the browser to the slash form (308 keeps the method and body)."""
        query = request.rel_url.raw_query_string
        location = request.rel_url.raw_path + "/" + ("?" + query if query else "")
        return web.Response(status=308, headers={"Location": location})

    async def _embedded_page(self, request: web.Request) -> web.Response:
        html = self._embedded.replace("{{APP_ID}}", self.app_id)
        return web.Response(
            text=html, content_type="text/html", headers={"Cache-Control": "no-store"}
        )

    async def _favicon(self, request: web.Request) -> web.Response:
        return web.Response(
            text=FAVICON, content_type="image/svg+xml", headers={"Cache-Control": "max-age=3600"}
        )

    async def _landing(self, request: web.Request) -> web.Response:
        html = self._landing_html.replace("{{APP_ID}}", self.app_id)
        return web.Response(
            text=html, content_type="text/html", headers={"Cache-Control": "no-store"}
        )

    # ------------------------------------------------------------ lifecycle

    def _routes(self) -> list[web.RouteDef]:
        app = self.app_id
        routes = [
            web.get("/", self._landing),
            web.get("/status.php", self._status_php),
            web.get("/favicon.ico", self._favicon),
            web.get(f"/index.php/apps/app_api/embedded/{app}/main", self._embedded_page),
            # Where a Files action's answer sends the browser (main/<kind>?fileIds=...).
            web.get(f"/index.php/apps/app_api/embedded/{app}/main/{{kind}}", self._embedded_page),
            web.route("*", f"/index.php/apps/app_api/proxy/{app}", self._add_slash),
            web.route("*", f"/index.php/apps/app_api/proxy/{app}/{{tail:.*}}", self._front),
            web.route("*", f"/exapps/{app}", self._add_slash),
            web.route("*", f"/exapps/{app}/{{tail:.*}}", self._front),
        ]
        for v in ("v1", "v2"):
            routes += [
                web.get(f"/ocs/{v}.php/cloud/capabilities", self._capabilities),
                web.route("*", f"/ocs/{v}.php/{{tail:.*}}", self._ocs_authed),
            ]
        return routes

    async def start(self) -> URL:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=5),
        )
        app = web.Application(client_max_size=64 * 1024**2)
        app.add_routes(self._routes())
        self._runner, self.url = await serve_loopback(app)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
