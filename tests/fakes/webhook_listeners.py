"""Nextcloud's webhook_listeners app (1.3.0, bundled with Nextcloud 32.0.1) inside the fake
Nextcloud: its OCS API and its delivery job, as strict as the real one where the connector can
tell. Read from its source (`apps/webhook_listeners/lib/` of the 32.0.1 release:
Controller/WebhooksController.php, Db/WebhookListenerMapper.php, Db/WebhookListener.php,
Listener/WebhooksEventListener.php, BackgroundJobs/WebhookCall.php) and measured on the real
server (tests/integration/test_automations_parity.py runs one body against both):

* every route is admin-only; an ExApp may call it with an empty user
  (#[AppApiAdminAccessWithoutUser]); a non-admin user gets OCS 403. A row made by an ExApp
  carries its app id (`appId`) and the impersonated user (`userId`, null for none);
* the app disabled: every route answers HTTP 404, OCS 998 ("Invalid query");
* only classes implementing IWebhookCompatibleEvent are accepted (leading backslashes trimmed),
  else 400 "<class> is not an event class compatible with webhooks"; a missing required
  parameter is PHP's TypeError: OCS 996, HTTP 500; `authMethod: header` without `authData` is
  400; an unknown auth method is 400;
* nothing is de-duplicated; an update of an id that does not exist answers 200 with that id and
  writes nothing; a delete answers true or false; GET of a missing id is 404;
* a row reads back with `eventFilter` [] (PHP's empty array), `userIdFilter` "", `headers`
  null or [] when empty, and `authData` encrypted (never the secret);
* delivery is a queued job per matching row, run by cron: its body is PHP's json_encode
  (`\\/`, `\\u` escapes) of `{"event": {...serialised, "class"}, "user", "time"}`; its headers are
  the row's, then the auth data's; no Content-Type. A relative uri of an ExApp's row goes through
  AppAPI to the ExApp (its AppAPI headers, the acting user; refused when the ExApp is disabled),
  with a 3 s timeout; the job reads the row (and its secret) when it runs, not when it was
  queued; the answer's status is only logged, nothing is retried."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import attrs
from aiohttp import web
from yarl import URL

if TYPE_CHECKING:
    from tests.fakes.nextcloud import FakeNextcloud

_NODE = "OCP\\Files\\Events\\Node\\"
_CAL = "OCP\\Calendar\\Events\\"
# The IWebhookCompatibleEvent classes of Nextcloud 32.0.1 (lib/public).
CORE_CLASSES: Final = frozenset(
    {
        *(
            _NODE + name
            for name in (
                "NodeCreatedEvent",
                "NodeWrittenEvent",
                "NodeDeletedEvent",
                "NodeRenamedEvent",
                "NodeCopiedEvent",
                "NodeTouchedEvent",
                "BeforeNodeCreatedEvent",
                "BeforeNodeWrittenEvent",
                "BeforeNodeDeletedEvent",
                "BeforeNodeRenamedEvent",
                "BeforeNodeCopiedEvent",
                "BeforeNodeTouchedEvent",
                "BeforeNodeReadEvent",
            )
        ),
        *(
            _CAL + "CalendarObject" + name + "Event"
            for name in ("Created", "Updated", "Deleted", "Moved", "MovedToTrash", "Restored")
        ),
        "OCP\\SystemTag\\TagAssignedEvent",
        "OCP\\SystemTag\\TagUnassignedEvent",
        "OCP\\SystemTag\\MapperEvent",
    }
)
# Classes of apps the bundle does not ship, accepted once the test "installs" the app.
APP_CLASSES: Final = {
    "forms": frozenset({"OCA\\Forms\\Events\\FormSubmittedEvent"}),
    "tables": frozenset(
        {f"OCA\\Tables\\Event\\Row{n}Event" for n in ("Added", "Updated", "Deleted")}
    ),
    "deck": frozenset(
        {f"OCA\\Deck\\Event\\Card{n}Event" for n in ("Created", "Updated", "Deleted")}
    ),
}
INVALID_QUERY: Final = (
    "Invalid query, please check the syntax. API specifications are here: "
    "http://www.freedesktop.org/wiki/Specifications/open-collaboration-services.\n"
)
NOT_ADMIN: Final = (
    "Logged in account must be an admin, a sub admin or gotten special right to access this setting"
)
DELIVERY_TIMEOUT: Final = 3.0  # AppAPI's default for requests to an ExApp


def php_json(data: Any) -> bytes:
    """json_encode with PHP's default flags: empty arrays are [], '/' is escaped, non-ASCII
    is \\u-escaped, no spaces."""
    return json.dumps(_php_arrays(data), separators=(",", ":")).replace("/", "\\/").encode()


def _php_arrays(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _php_arrays(v) for k, v in value.items()} if value else []
    if isinstance(value, list):
        return [_php_arrays(v) for v in value]
    return value


@attrs.define
class Delivery:
    """One WebhookCall job as it ran."""

    row_id: int
    url: str
    headers: dict[str, str]
    body: bytes
    status: int  # 0: no answer (refused, timed out)
    answer: str
    error: str = ""


class Missing(Exception):
    """A required controller parameter is missing or of the wrong type (PHP TypeError)."""


class FakeWebhookListeners:
    def __init__(self, nc: FakeNextcloud) -> None:
        self.nc = nc
        self.enabled = True
        self.apps: set[str] = set()  # optional apps present: "forms", "tables", "deck"
        self.allow_local_remote_servers = False  # Nextcloud's default
        self.rows: dict[int, dict[str, Any]] = {}
        self._auth: dict[int, dict[str, Any] | None] = {}  # decrypted authData per row
        self._next_id = 1
        self.jobs: list[tuple[dict[str, Any], int]] = []
        self.deliveries: list[Delivery] = []
        self.calls = 0
        # Called with the id of every update before it is applied (a test's race).
        self.on_update: Callable[[int], None] | None = None

    # ------------------------------------------------------------ test side

    def compatible(self, php_class: str) -> bool:
        extra = set().union(*(APP_CLASSES[a] for a in self.apps)) if self.apps else set()
        return php_class in CORE_CLASSES or php_class in extra

    def rows_for(self, uri: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if uri is None or r["uri"] == uri]

    def fire(self, php_class: str, serialised: dict[str, Any], user: tuple[str, str] | None) -> int:
        """WebhooksEventListener::handle: one job per row for the class (with an empty user
        filter or the acting user's); returns how many were queued."""
        uid = user[0] if user else ""
        queued = 0
        for row in sorted(self.rows.values(), key=lambda r: r["id"]):
            if row["event"] != php_class or row["userIdFilter"] not in ("", uid):
                continue
            if row["eventFilter"]:
                continue  # the fake implements no Mongo-style filter; the connector sets none
            data = {
                "event": {**serialised, "class": php_class},
                "user": {"uid": user[0], "displayName": user[1]} if user else None,
                "time": int(time.time()),
            }
            self.jobs.append((data, row["id"]))
            queued += 1
        return queued

    async def run_jobs(self) -> list[Delivery]:
        """cron.php: run every queued job once (in order); returns what they did."""
        jobs, self.jobs = self.jobs, []
        done = [await self._call(data, row_id) for data, row_id in jobs]
        return [d for d in done if d is not None]

    async def _call(self, data: dict[str, Any], row_id: int) -> Delivery | None:
        row = self.rows.get(row_id)
        if row is None:
            return None  # getById throws: the job fails before any request
        headers = {str(k): str(v) for k, v in (row["headers"] or {}).items()}
        auth = self._auth.get(row_id)
        if row["authMethod"] == "header" and auth:
            headers.update({str(k): str(v) for k, v in auth.items()})
        uri = row["uri"]
        nc = self.nc
        if row["appId"] is not None and uri.startswith("/"):
            if row["appId"] != nc.app_id or not nc.registered:
                return self._failed(row_id, uri, headers, data, "ExApp is missing")
            if not nc.enabled:
                return self._failed(row_id, uri, headers, data, "ExApp is disabled")
            user = (data.get("user") or {}).get("uid") or ""
            token = base64.b64encode(f"{user}:{nc.secret}".encode()).decode()
            headers.update(
                {
                    "AA-VERSION": "32.0.0",
                    "EX-APP-ID": nc.app_id,
                    "EX-APP-VERSION": "1.0.0",
                    "AUTHORIZATION-APP-API": token,
                    "AA-REQUEST-ID": "CLI",
                    "Accept-Language": "en",
                }
            )
            base = nc.connector_url or URL("http://localhost")
            url = URL(str(base).rstrip("/") + uri, encoded=True)
        else:
            url = URL(uri)
            if (
                url.host in ("127.0.0.1", "localhost", "::1")
                and not self.allow_local_remote_servers
            ):
                reason = f"Host {url.host} violates local access rules"
                return self._failed(row_id, uri, headers, data, reason)
        body = php_json(data)
        headers["User-Agent"] = "Nextcloud Server Crawler"
        try:
            async with (
                aiohttp.ClientSession(auto_decompress=False) as session,
                session.request(
                    row["httpMethod"],
                    url,
                    data=body,
                    headers=headers,
                    skip_auto_headers=("Content-Type",),
                    timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT),
                ) as resp,
            ):
                answer = (await resp.read()).decode(errors="replace")
                delivery = Delivery(row_id, str(url), headers, body, resp.status, answer)
        except (aiohttp.ClientError, TimeoutError) as exc:
            delivery = Delivery(row_id, str(url), headers, body, 0, "", type(exc).__name__)
        self.deliveries.append(delivery)
        return delivery

    def _failed(
        self, row_id: int, uri: str, headers: dict[str, str], data: Any, why: str
    ) -> Delivery:
        delivery = Delivery(row_id, uri, headers, php_json(data), 0, "", why)
        self.deliveries.append(delivery)
        return delivery

    # ------------------------------------------------------------ the OCS API

    def routes(self, base: str) -> list[web.RouteDef]:
        api = f"{base}/apps/webhook_listeners/api/v1/webhooks"
        return [
            web.get(api, self._index),
            web.post(api, self._create),
            web.get(api + r"/{id:\d+}", self._show),
            web.post(api + r"/{id:\d+}", self._update),
            web.delete(api + r"/{id:\d+}", self._destroy),
            web.delete(api + "/byappid/{appid}", self._destroy_app),
        ]

    def _gate(self, request: web.Request) -> tuple[web.Response | None, str | None, str]:
        """(refusal, appId, userId) for a call: the app's presence, then its admin check."""
        self.calls += 1
        nc = self.nc
        if not self.enabled:
            return nc._ocs(request, None, 998, INVALID_QUERY), None, ""
        denied = nc._require(request, login=False)
        if denied is not None:
            return denied, None, ""
        from tests.fakes.nextcloud import APPAPI  # here: that module imports this one

        _, user = request[APPAPI]
        if user and not nc.is_admin(user):
            return nc._ocs(request, None, 403, NOT_ADMIN), None, ""
        return None, request.headers.get("EX-APP-ID"), user or ""

    async def _params(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        out: dict[str, Any] = dict(request.query)
        if isinstance(parsed, dict):
            out.update(parsed)
        return out

    async def _index(self, request: web.Request) -> web.Response:
        refused, _, _ = self._gate(request)
        if refused is not None:
            return refused
        uri = request.query.get("uri")
        rows = sorted(self.rows_for(uri), key=lambda r: r["id"])
        return self.nc._ocs(request, [dict(r) for r in rows])

    async def _show(self, request: web.Request) -> web.Response:
        refused, _, _ = self._gate(request)
        if refused is not None:
            return refused
        row = self.rows.get(int(request.match_info["id"]))
        if row is None:
            return self.nc._ocs(request, None, 404, "Did expect one result but found none")
        return self.nc._ocs(request, dict(row))

    async def _create(self, request: web.Request) -> web.Response:
        return await self._write(request, None)

    async def _update(self, request: web.Request) -> web.Response:
        return await self._write(request, int(request.match_info["id"]))

    async def _write(self, request: web.Request, row_id: int | None) -> web.Response:
        refused, app_id, user = self._gate(request)
        if refused is not None:
            return refused
        params = await self._params(request)
        try:
            row, auth = self._row(params, app_id, user)
        except Missing:
            return self.nc._ocs(request, None, 996, "Internal Server Error\n")
        except ValueError as exc:
            return self.nc._ocs(request, None, 400, str(exc))
        if row_id is not None and self.on_update is not None:
            self.on_update(row_id)
        if row_id is None:
            row_id = self._next_id
            self._next_id += 1
        row = {"id": row_id, **row}
        # An update of a missing id: UPDATE ... WHERE id matches nothing, 200 all the same.
        if row_id in self.rows or request.match_info.get("id") is None:
            self.rows[row_id] = row
            self._auth[row_id] = auth
        return self.nc._ocs(request, dict(row))

    def _row(
        self, p: dict[str, Any], app_id: str | None, user: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        for name in ("httpMethod", "uri", "event"):
            if not isinstance(p.get(name), str):
                raise Missing(name)
        for name in ("eventFilter", "headers", "authData"):
            if p.get(name) is not None and not isinstance(p[name], dict | list):
                raise Missing(name)
        method = p.get("authMethod") or "none"
        if method not in ("none", "header"):
            raise ValueError("This auth method does not exist")
        event = p["event"].lstrip("\\")
        if not self.compatible(event):
            raise ValueError(f"{event} is not an event class compatible with webhooks")
        auth = p.get("authData")
        if auth is None and method == "header":
            raise ValueError(
                "Header auth method needs an associative array of headers as auth data"
            )
        headers = p.get("headers")
        row = {
            "appId": app_id,
            "userId": user or None,
            "httpMethod": p["httpMethod"],
            "uri": p["uri"],
            "event": event,
            "eventFilter": p.get("eventFilter") or [],
            "userIdFilter": p.get("userIdFilter") or "",
            "headers": (headers or []) if headers is not None else None,
            "authMethod": method,
            "authData": None if auth is None else "enc:" + secrets.token_hex(24),
        }
        return row, (dict(auth) if isinstance(auth, dict) else None)

    async def _destroy(self, request: web.Request) -> web.Response:
        refused, _, _ = self._gate(request)
        if refused is not None:
            return refused
        row_id = int(request.match_info["id"])
        self._auth.pop(row_id, None)
        return self.nc._ocs(request, self.rows.pop(row_id, None) is not None)

    async def _destroy_app(self, request: web.Request) -> web.Response:
        refused, _, _ = self._gate(request)
        if refused is not None:
            return refused
        return self.nc._ocs(request, self.remove_app(request.match_info["appid"]))

    def remove_app(self, app_id: str) -> int:
        """deleteByAppId (AppAPI calls it when the ExApp is unregistered)."""
        gone = [i for i, r in self.rows.items() if r["appId"] == app_id]
        for row_id in gone:
            self.rows.pop(row_id)
            self._auth.pop(row_id, None)
        return len(gone)
