"""What the /nc handler reads from a request of the Bee Flow service and what it sends on to
Nextcloud: the signed verb (with the method-override tunnel), the signed uid and the user it
impersonates, the checked target, and the headers Nextcloud receives."""

from __future__ import annotations

from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from beeflow.config import Config
from beeflow.errors import BadRequest, MethodNotAllowed, NotFound
from beeflow.nextcloud.ocs import appapi_headers
from beeflow.proxy.headers import (
    APPAPI,
    APPAPI_PREFIXES,
    BROWSER_CONTEXT,
    CREDENTIALS,
    FORWARDING,
    HOP_BY_HOP,
    REQUEST_FRAMING,
    filter_headers,
)
from beeflow.proxy.nc.path import NcTarget, PathRejected, check_target
from beeflow.proxy.nc.sigv3 import CONTENT_SHA256_HEADER, NONCE_HEADER, SIGNED_HEADERS
from beeflow.signing import SIG_HEADER, UID_HEADER

# The manifest's verbs for ^nc/, then the other WebDAV/HTTP verbs Nextcloud serves: PROPPATCH
# (properties, tags), SEARCH, LOCK/UNLOCK, OPTIONS, HEAD, CalDAV's MKCALENDAR. Every one has a
# wire route (HaRP, direct; appinfo/info.xml's ^nc/ route lists them, tests/manifest checks
# every route against it). AppAPI's PHP proxy has only GET/POST/PUT/DELETE routes: there the
# others come through the method-override tunnel, which honours only these verbs, keeping TRACE,
# CONNECT and made-up verbs out (docs/nc-proxy.md, "Verbs and the method tunnel").
MANIFEST_VERBS: Final = (
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "PROPFIND",
    "REPORT",
    "MKCOL",
    "MOVE",
    "COPY",
)
VERBS: Final = (
    *MANIFEST_VERBS,
    "PROPPATCH",
    "SEARCH",
    "LOCK",
    "UNLOCK",
    "OPTIONS",
    "HEAD",
    "MKCALENDAR",
)
OVERRIDE_HEADER: Final = "X-HTTP-Method-Override"
MAX_UID_LENGTH: Final = 255
# Headers that must appear at most once: a signature covers (or names) one value, and a second
# copy could be read by Nextcloud instead of the one that was checked.
SINGLE_HEADERS: Final = (
    SIG_HEADER,
    UID_HEADER,
    CONTENT_SHA256_HEADER,
    NONCE_HEADER,
    *SIGNED_HEADERS,
    OVERRIDE_HEADER,
)
# Request headers that never reach Nextcloud (besides hop-by-hop, framing, empty values): the
# caller's credentials and browser context, what AppAPI/HaRP/proxies add, our own X-Beeflow-*.
_DROP_REQUEST: Final = (
    HOP_BY_HOP,
    REQUEST_FRAMING,
    CREDENTIALS,
    BROWSER_CONTEXT,
    FORWARDING,
    APPAPI,
    frozenset({"x-http-method-override", "x-original-authorization", "destination"}),
)
_DROP_PREFIXES: Final = ("x-beeflow-", *APPAPI_PREFIXES)
# OCS-APIRequest: true on these: OCS needs it (SecurityMiddleware::isValidOCSRequest), and an
# app controller method without #[NoCSRFRequired] fails Nextcloud's CSRF check without a
# request token, which Request::passesCSRFCheck also accepts as this header. Harmless here: the
# call is authenticated by AppAPI headers, no cookie is forwarded (so no ambient session a CSRF
# check could protect), and the header's only other effect is skipping the strict-cookie check.
# Not on WebDAV: Sabre has no such check (and nc_py_api sends none there).
_CSRF_EXEMPT_PREFIXES: Final = ("/ocs/", "/index.php/apps/")


def allow_header() -> str:
    return ", ".join(VERBS)


def refuse_repeated(request: web.Request) -> None:
    """400 header_repeated when a header of SINGLE_HEADERS appears twice."""
    headers = request.headers
    for name in SINGLE_HEADERS:
        if len(headers.getall(name, ())) > 1:
            raise BadRequest(f"{name} must appear at most once", code="header_repeated")


def signed_verb(request: web.Request) -> str:
    """The verb Nextcloud gets and the signature covers: the wire verb, or on POST the
    X-HTTP-Method-Override (AppAPI's PHP proxy forwards only GET/POST/PUT/DELETE), which must
    name one of VERBS."""
    override = request.headers.get(OVERRIDE_HEADER, "").strip()
    if not override:
        return request.method
    if request.method != "POST":
        raise MethodNotAllowed(
            f"{OVERRIDE_HEADER} is honoured on POST only",
            code="method_override_requires_post",
            headers={"Allow": allow_header()},
        )
    verb = override.upper()
    if verb not in VERBS:
        raise MethodNotAllowed(
            f"{OVERRIDE_HEADER} must name one of {', '.join(VERBS)}",
            code="method_override_not_allowed",
            headers={"Allow": allow_header()},
        )
    return verb


def checked_target(raw: str) -> NcTarget:
    try:
        return check_target(raw)
    except PathRejected as exc:
        if exc.status == 404:
            raise NotFound(exc.message, code=exc.code) from None
        raise BadRequest(exc.message, code=exc.code) from None


def signed_uid(request: web.Request) -> str:
    """X-Beeflow-NC-Uid exactly as received; bytes that are not UTF-8 cannot have been signed
    (and could not be impersonated): 400 before any work."""
    uid = request.headers.get(UID_HEADER, "")
    try:
        uid.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{UID_HEADER} is not UTF-8", code="uid_invalid") from None
    return uid


def impersonated_user(uid: str) -> str:
    """The signed uid, trimmed (empty = service level). ':' would split AppAPI's header."""
    user = uid.strip()
    if len(user) > MAX_UID_LENGTH or any(c == ":" or ord(c) < 0x20 or c == "\x7f" for c in user):
        raise BadRequest(f"{UID_HEADER} is not a valid Nextcloud user id", code="uid_invalid")
    return user


def nextcloud_headers(
    request: web.Request, config: Config, user: str, upstream_path: str
) -> CIMultiDict[str]:
    """What Nextcloud receives (docs/nc-proxy.md, "What Nextcloud receives"): the caller's
    headers minus everything in _DROP_REQUEST, plus AppAPI's impersonation headers for `user`
    and OCS-APIRequest on /ocs/ and /index.php/apps/. Depth, If-Match, Range, Content-Type...
    pass."""
    headers = filter_headers(request.headers, *_DROP_REQUEST, prefixes=_DROP_PREFIXES)
    for name, value in appapi_headers(config, user).items():
        headers[name] = value
    if upstream_path.startswith(_CSRF_EXEMPT_PREFIXES):
        headers["OCS-APIRequest"] = "true"
    return headers
