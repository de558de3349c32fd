"""The /nc/* route: the Bee Flow service reaches Nextcloud (Files, Calendar, Mail...) as a user
through AppAPI impersonation, once its HMAC signature verified (docs/nc-proxy.md).

Order of work for one request, cheapest refusal first:
 1. method: the wire verb, or POST + X-HTTP-Method-Override naming one of VERBS (else 405);
 2. target: allow-list and traversal checks on the raw target (404 / 400, path.py);
 3. signature header: present, well formed, within the clock skew, tenant key loaded (401);
 4. body: spooled and hashed at constant memory (413 over the limit, spool.py);
 5. signature: v2 (body hash) then v1, decoded path then raw, constant time (401,
    signatures.py);
 6. X-Beeflow-NC-Uid and Destination checked (destination.py); headers rebuilt for Nextcloud;
    a 503 instead while Nextcloud refuses the connector's AppAPI logins;
 7. the spool streamed upstream with a Content-Length; the answer streamed back (relay.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import attrs
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from beeflow import keys
from beeflow.config import Config
from beeflow.errors import (
    BadRequest,
    BeeflowError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from beeflow.nextcloud.budget import BRUTEFORCE_REMEDY
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
    refuse_encoded_body,
)
from beeflow.proxy.nc.destination import reads_destination, rewrite_destination
from beeflow.proxy.nc.path import NC_PREFIX, NcTarget, PathRejected, check_target
from beeflow.proxy.nc.signatures import GUARD, SignatureGuard
from beeflow.proxy.nc.spool import SPOOLS, Spool, SpoolDir, SpoolReplay, read_body, too_large
from beeflow.proxy.relay import RelayOptions, relay
from beeflow.proxy.upstream import (
    NO_BODY,
    OutboundBody,
    PoolSettings,
    UpstreamClient,
    upstream_client,
)
from beeflow.signing import UID_HEADER, ParsedSig
from beeflow.web.auth import Access, add_route
from beeflow.web.responses import error_response

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
# How Nextcloud's answers are relayed: its own Cache-Control (none added).
_RELAY_OPTIONS: Final = RelayOptions(default_cache_control=None)
# MOVE and COPY answer only when Nextcloud is done: assembling the chunks of a multi-GB upload
# or copying a big folder can take many minutes, and a 504 would not stop it (the service would
# see a failure for work that completes). BEEFLOW_NC_HEADERS_TIMEOUT_SECONDS still bounds every
# other verb; this (or that setting, if larger) bounds these two.
SLOW_VERBS: Final = frozenset({"MOVE", "COPY"})
SLOW_VERB_HEADERS_TIMEOUT: Final = 3600.0
# Pooled connections to Nextcloud are retired after this idle time: under Apache's default
# KeepAliveTimeout (5 s), so a reused connection is never one Apache is closing at that moment
# (a non-GET cannot be retried, and would fail with 502). nginx's default is 75 s.
KEEPALIVE_SECONDS: Final = 4.0
OVERRIDE_HEADER: Final = "X-HTTP-Method-Override"
ROUTE_PATH: Final = NC_PREFIX + "/{tail:.*}"
MAX_UID_LENGTH: Final = 255
# A spooled body up to this size goes upstream as one bytes object (aiohttp warns above 1 MiB).
INLINE_BODY_BYTES: Final = 1024 * 1024

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

_CLIENT: web.AppKey[UpstreamClient] = web.AppKey("nc_proxy_client")
_SLOW_CLIENT: web.AppKey[UpstreamClient] = web.AppKey("nc_proxy_slow_client")


# ------------------------------------------------------------------ setup


def setup(app: web.Application) -> None:
    """Register /nc/{tail} for every verb of VERBS; any other verb gets 405 JSON."""
    guard = SignatureGuard()
    app[GUARD] = guard
    app.setdefault(keys.HEALTH, {})["ncCallbacks"] = guard.stats.health
    for method in VERBS:
        add_route(app, method, ROUTE_PATH, _handle, Access.PUBLIC, expect_handler=_expect)
    add_route(app, "*", ROUTE_PATH, _other_verb, Access.PUBLIC)
    app.cleanup_ctx.append(_context)


async def _context(app: web.Application) -> AsyncIterator[None]:
    """The spool directory and the ClientSessions to Nextcloud for /nc, for the app's life:
    one for every verb, one with the long response-headers deadline of MOVE and COPY."""
    config = app[keys.CONFIG]
    spools = SpoolDir.create(config.spool_dir)
    app[SPOOLS] = spools
    settings = PoolSettings(
        name="Nextcloud",
        connect_timeout=config.nc_connect_timeout,
        headers_timeout=config.nc_headers_timeout,
        # Each streamed WebDAV download holds a connection for its whole length.
        pool_size=0,
        keepalive_timeout=KEEPALIVE_SECONDS,
    )
    slow = attrs.evolve(
        settings, headers_timeout=max(config.nc_headers_timeout, SLOW_VERB_HEADERS_TIMEOUT)
    )
    try:
        async with upstream_client(settings) as client, upstream_client(slow) as slow_client:
            app[_CLIENT] = client
            app[_SLOW_CLIENT] = slow_client
            yield
    finally:
        spools.close()


def _allow() -> str:
    return ", ".join(VERBS)


async def _other_verb(request: web.Request) -> web.StreamResponse:
    raise MethodNotAllowed(
        f"{request.method} is not proxied to Nextcloud",
        code="method_not_allowed",
        headers={"Allow": _allow()},
    )


# ------------------------------------------------------------------ the handler


def _precheck(request: web.Request) -> tuple[str, NcTarget, str, ParsedSig]:
    """Every check that needs no body: verb, path, tenant key, signature header and clock,
    body encoding, declared size. Runs in the handler, and before `100 Continue` (_expect)."""
    app = request.app
    config = app[keys.CONFIG]
    guard = app[GUARD]
    method = signed_verb(request)
    target = _check_target(request.raw_path)
    key = app[keys.TENANT].key
    if not key:
        guard.no_key()
    sig = guard.parse_header(request, config.sig_skew_seconds)
    refuse_encoded_body(request)
    declared = request.content_length
    if declared is not None and declared > config.nc_max_body_bytes:
        raise too_large(config.nc_max_body_bytes)
    return method, target, key, sig


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` (Nextcloud's Guzzle sends it on PUTs over 1 MiB): refuse a forged,
    stale or oversized upload before its body is sent, instead of spooling it first. Runs before
    the middleware chain, so errors are rendered here."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers['Expect']}")
    try:
        _precheck(request)
    except BeeflowError as exc:
        response = error_response(exc)
        response.force_close()  # the client may still send the body it announced
        return response
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


async def _handle(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[keys.CONFIG]
    method, target, key, sig = _precheck(request)
    spool = app[SPOOLS].spool(
        memory_limit=config.spool_memory_bytes, max_bytes=config.nc_max_body_bytes
    )
    try:
        uid = _signed_uid(request)
        await read_body(request, spool, config.nc_max_body_bytes)
        app[GUARD].verify(request, key, sig, method, target, uid, spool.sha256)
        user = _impersonated_user(uid)
        headers = nextcloud_headers(request, config, user, target.upstream)
        if "Destination" in request.headers and reads_destination(method, target):
            headers["Destination"] = rewrite_destination(
                request.headers["Destination"], config, request.host
            )
        _check_auth_budget(app)
        body = _outbound(spool)
        url = URL(str(config.nextcloud_url) + target.upstream, encoded=True)
        try:
            client = app[_SLOW_CLIENT] if method in SLOW_VERBS else app[_CLIENT]
            upstream = await client.send(method, url, headers, body)
        except BeeflowError as exc:
            raise _as_nextcloud_error(exc) from None
        # A HEAD tunnelled in a POST is answered without a body and with Nextcloud's length
        # in relay.TUNNELLED_HEAD_LENGTH (X-Beeflow-Content-Length).
        return await relay(
            request,
            upstream,
            _RELAY_OPTIONS,
            edit_headers=_edit_response_headers,
            method=method,
        )
    finally:
        spool.close()


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
            headers={"Allow": _allow()},
        )
    verb = override.upper()
    if verb not in VERBS:
        raise MethodNotAllowed(
            f"{OVERRIDE_HEADER} must name one of {', '.join(VERBS)}",
            code="method_override_not_allowed",
            headers={"Allow": _allow()},
        )
    return verb


def _check_target(raw: str) -> NcTarget:
    try:
        return check_target(raw)
    except PathRejected as exc:
        if exc.status == 404:
            raise NotFound(exc.message, code=exc.code) from None
        raise BadRequest(exc.message, code=exc.code) from None


def _signed_uid(request: web.Request) -> str:
    """X-Beeflow-NC-Uid exactly as received; bytes that are not UTF-8 cannot have been signed
    (and could not be impersonated): 400 before any work."""
    uid = request.headers.get(UID_HEADER, "")
    try:
        uid.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{UID_HEADER} is not UTF-8", code="uid_invalid") from None
    return uid


def _impersonated_user(uid: str) -> str:
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


def _check_auth_budget(app: web.Application) -> None:
    """While Nextcloud refuses the connector's AppAPI logins (its failure budget is spent,
    docs/architecture.md "Talking to Nextcloud without locking ourselves out"), /nc stops too:
    each forwarded call would be refused as well and count towards Nextcloud's lock-out of this
    IP."""
    client = app.get(keys.NEXTCLOUD)
    if client is not None and client.budget.spent:
        raise ServiceUnavailable(
            "Nextcloud refused the connector's AppAPI logins; calls are paused. "
            + BRUTEFORCE_REMEDY,
            code="appapi_auth_paused",
            headers={"Retry-After": "60"},
        )


def _outbound(spool: Spool) -> OutboundBody:
    if spool.size == 0:
        return NO_BODY
    if spool.in_memory and spool.size <= INLINE_BODY_BYTES:
        return OutboundBody(spool.memory_bytes(), spool.size)
    return OutboundBody(SpoolReplay(spool), spool.size)


def _edit_response_headers(_upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]) -> None:
    # A session cookie Nextcloud set for the impersonated user is nobody else's business.
    headers.popall("Set-Cookie", None)


def _as_nextcloud_error(exc: BeeflowError) -> BeeflowError:
    """The streaming core's upstream_* codes, named for this upstream: nextcloud_unreachable..."""
    code = exc.instance_code
    if code.startswith("upstream_"):
        exc.instance_code = "nextcloud_" + code[len("upstream_") :]
    return exc
