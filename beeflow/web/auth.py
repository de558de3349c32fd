"""Inbound AppAPI authentication: the access levels of the manifest, enforced per route, and the
signal a request with the valid secret sends."""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from beeflow.config import CONFIG
from beeflow.errors import BadGateway, Forbidden, NextcloudError, Unauthorized
from beeflow.limits import Interval
from beeflow.nextcloud.users import USERS
from beeflow.redact import loggable_path
from beeflow.web.responses import Handler

log = logging.getLogger(__name__)

# The AppAPI header is base64 of "<uid>:<secret>" with a 128-char secret: 4 KiB is generous.
MAX_AUTH_HEADER: Final = 4096
REPAIR_HINT: Final = (
    "the APP_SECRET of this container differs from the secret Nextcloud stored; repair with "
    "`occ app_api:app:unregister {app_id}` then `occ app_api:app:register {app_id} ...`"
)


class Access(enum.IntEnum):
    """The manifest's access levels: 0 PUBLIC, 1 USER, 2 ADMIN (docs/appapi-wire.md, "Access
    levels")."""

    PUBLIC = 0
    USER = 1
    ADMIN = 2


@attrs.frozen
class RoutePolicy:
    access: Access
    # AppAPI's own service calls (valid secret, empty user) may reach this ADMIN route.
    service_ok: bool = False
    # A call to this route has no side effects, whoever makes it: even with the valid secret it
    # does not announce a trusted caller (the heartbeat).
    passive: bool = False


@attrs.frozen
class Identity:
    """What the AppAPI header says. `trusted` is True only when the secret matched."""

    user_id: str = ""
    trusted: bool = False

    @property
    def is_service(self) -> bool:
        return self.trusted and not self.user_id


class AuthFailure(Unauthorized):
    """401 with a code naming the failed check."""


ROUTE_POLICIES: web.AppKey[dict[Any, RoutePolicy]] = web.AppKey("route_policies")
# Per request: who AppAPI says is calling, set by the middleware on every routed request.
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
# Called (cheaply, synchronously) whenever a request bears the valid AppAPI secret, except on a
# passive route: AppAPI knows this connector again.
TrustedReceiver = Callable[[web.Request], None]
TRUSTED_REQUEST: web.AppKey[list[TrustedReceiver]] = web.AppKey("trusted_request")


def on_trusted_request(app: web.Application, receiver: TrustedReceiver) -> None:
    """Subscribe `receiver` to every request that bears the valid secret."""
    app.setdefault(TRUSTED_REQUEST, []).append(receiver)


def add_route(
    app: web.Application,
    method: str,
    path: str,
    handler: Handler,
    access: Access,
    *,
    service_ok: bool = False,
    passive: bool = False,
    name: str | None = None,
    expect_handler: Callable[[web.Request], Awaitable[web.StreamResponse | None]] | None = None,
) -> AbstractRoute:
    """Register a route together with the access level the middleware enforces on it."""
    route = app.router.add_route(method, path, handler, name=name, expect_handler=expect_handler)
    app.setdefault(ROUTE_POLICIES, {})[route] = RoutePolicy(access, service_ok, passive)
    return route


def decode_auth_header(value: str) -> tuple[str, str]:
    """base64 -> UTF-8 -> split at the FIRST ':'. Raises AuthFailure."""
    if len(value) > MAX_AUTH_HEADER:
        raise AuthFailure("AppAPI authorization header too long", code="appapi_header_malformed")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthFailure(
            "AppAPI authorization header is not valid base64 of UTF-8",
            code="appapi_header_malformed",
        ) from None
    user, sep, secret = text.partition(":")
    if not sep:
        raise AuthFailure("AppAPI authorization header has no ':'", code="appapi_header_malformed")
    if any(c in user for c in "\r\n\x00") or len(user) > 255:
        raise AuthFailure("AppAPI user id is not acceptable", code="appapi_user_invalid")
    return user, secret


def authenticate(request: web.Request, app_id: str, app_secret: str) -> Identity:
    """The four checks (docs/appapi-wire.md, "Inbound authentication"). Raises AuthFailure
    naming the one that failed."""
    headers = request.headers
    auth = headers.get("AUTHORIZATION-APP-API", "")
    ex_app_id = headers.get("EX-APP-ID", "")
    ex_app_version = headers.get("EX-APP-VERSION", "")
    if not auth or not ex_app_id or not ex_app_version:
        raise AuthFailure("AppAPI headers are missing", code="appapi_headers_missing")
    # Header values are str with undecodable bytes kept as surrogates (aiohttp decodes them
    # with surrogateescape): encode them back the same way, never raise on them.
    if not hmac.compare_digest(ex_app_id.encode("utf-8", "surrogateescape"), app_id.encode()):
        raise AuthFailure("EX-APP-ID does not name this app", code="appapi_app_id_mismatch")
    user, secret = decode_auth_header(auth)
    if not hmac.compare_digest(secret.encode("utf-8"), app_secret.encode("utf-8")):
        raise AuthFailure("AppAPI shared secret mismatch", code="appapi_secret_mismatch")
    return Identity(user_id=user, trusted=True)


# At most one warning a minute for refused secrets (a flood must not flood the log).
_WARN: web.AppKey[Interval] = web.AppKey("appapi_warn")


def policy_for(request: web.Request) -> RoutePolicy | None:
    route = request.match_info.route
    return request.app.get(ROUTE_POLICIES, {}).get(route)


@web.middleware
async def appapi_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate by the route's policy; unrouted requests (404/405) pass to aiohttp."""
    policy = policy_for(request)
    if policy is None:
        request[IDENTITY] = Identity()
        return await handler(request)
    config = request.app[CONFIG]
    try:
        identity = authenticate(request, config.app_id, config.app_secret)
    except AuthFailure as exc:
        if policy.access is Access.PUBLIC:
            request[IDENTITY] = Identity()
            return await handler(request)
        _warn(request, exc)
        raise
    request[IDENTITY] = identity
    if not policy.passive:
        for receiver in request.app.get(TRUSTED_REQUEST, ()):
            receiver(request)
    if policy.access is Access.USER and not identity.user_id:
        raise AuthFailure(
            "This route needs a logged-in Nextcloud user", code="appapi_user_required"
        )
    if policy.access is Access.ADMIN and not (identity.is_service and policy.service_ok):
        if not identity.user_id:
            raise AuthFailure("This route needs a Nextcloud admin", code="appapi_user_required")
        await _require_admin(request, identity.user_id)
    return await handler(request)


async def _require_admin(request: web.Request, user_id: str) -> None:
    try:
        user = await request.app[USERS].lookup(user_id)
    except NextcloudError as exc:
        log.warning("admin check for a user failed: %s", exc.kind)
        raise BadGateway(
            "Could not confirm the user's Nextcloud groups", code="user_lookup_failed"
        ) from None
    if not user.is_admin:
        raise Forbidden("This needs a Nextcloud administrator", code="admin_required")


def _warn(request: web.Request, exc: AuthFailure) -> None:
    limiter = request.app.get(_WARN)
    if limiter is None:
        return
    if limiter.ready():
        if exc.instance_code == "appapi_secret_mismatch":
            app_id = request.app[CONFIG].app_id
            log.warning(
                "AppAPI auth failed (%s): %s", exc.instance_code, REPAIR_HINT.format(app_id=app_id)
            )
        else:
            log.warning(
                "AppAPI auth failed (%s) on %s %s",
                exc.instance_code,
                request.method,
                loggable_path(request.path),
            )


def install(app: web.Application) -> None:
    """The middleware (innermost: it needs the matched route) and the state it keeps."""
    app[_WARN] = Interval(60.0)
    app.setdefault(ROUTE_POLICIES, {})
    app.setdefault(TRUSTED_REQUEST, [])
    app.middlewares.append(appapi_middleware)
