"""The HMAC-verified /nc/* proxy into Nextcloud: the Bee Flow service reaches Files, Calendar,
Mail... as a user through AppAPI impersonation (issue 4; docs/nc-proxy.md).

Order of work for one request, cheapest refusal first:
 1. method: the wire verb, or POST + X-HTTP-Method-Override naming one of VERBS (else 405);
 2. target: allow-list and traversal checks on the raw target (404 / 400, ncpath.py);
 3. signature header: present, well formed, within the clock skew, tenant key loaded (401);
 4. body: spooled and hashed at constant memory (413 over the limit, spool.py);
 5. signature: v2 (body hash) then v1, decoded path then raw, constant time (401);
 6. X-Beeflow-NC-Uid and Destination checked; headers rebuilt for Nextcloud; a 503 instead
    while Nextcloud refuses the connector's AppAPI logins (the shared AuthBudget is spent);
 7. the spool streamed upstream with a Content-Length; the answer streamed back.
Signature failures are billed to one global failure-only limiter AFTER they are found, so a
genuine call always gets through however many forged ones came before it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final, NoReturn

import aiohttp
import attrs
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from beeflow import keys
from beeflow.appapi import Access, add_route
from beeflow.config import Config
from beeflow.errors import (
    BadRequest,
    BeeflowError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from beeflow.middleware import error_response
from beeflow.nextcloud import BRUTEFORCE_REMEDY, appapi_headers
from beeflow.proxy import streaming
from beeflow.proxy.ncpath import (
    ALLOWED_PREFIXES,
    NC_PREFIX,
    NcTarget,
    PathRejected,
    check_target,
    php_query_hazards,
)
from beeflow.proxy.spool import Spool, SpoolDir, SpoolTooLarge, SpoolWriteError
from beeflow.ratelimit import RateLimiter
from beeflow.serde import iso_utc
from beeflow.signing import (
    SIG_HEADER,
    UID_HEADER,
    ParsedSig,
    SigFormatError,
    parse_sig_header,
    verify_nc,
)

log = logging.getLogger(__name__)

# The manifest's verbs for ^nc/ (seeds), then the other WebDAV/HTTP verbs Nextcloud serves:
# PROPPATCH (properties, tags), SEARCH, LOCK/UNLOCK, OPTIONS, HEAD, CalDAV's MKCALENDAR.
# Reference 4.5 accepts any override value; an allow-list keeps TRACE, CONNECT and made-up
# verbs out.
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
# Verbs with a wire route (HaRP, direct): all of them; appinfo/info.xml's ^nc/ route lists them
# (tests/manifest checks every route against it). The PHP proxy has only GET/POST/PUT/DELETE
# routes: there the others go through the method-override tunnel.
WIRE_METHODS: Final = VERBS
# How Nextcloud's answers are relayed: its own Cache-Control (none added).
_RELAY_OPTIONS: Final = streaming.RelayOptions(default_cache_control=None)
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
# Chunked upload v2 (Nextcloud >= 26): Destination on every request under this prefix.
UPLOADS_PREFIX: Final = "/remote.php/dav/uploads/"
OVERRIDE_HEADER: Final = "X-HTTP-Method-Override"
ROUTE_PATH: Final = NC_PREFIX + "/{tail:.*}"
FAILURE_LIMIT: Final = 60
FAILURE_WINDOW: Final = 60.0
WARN_AT_CONSECUTIVE: Final = 5
MAX_UID_LENGTH: Final = 255
# A spooled body up to this size goes upstream as one bytes object (aiohttp warns above 1 MiB).
INLINE_BODY_BYTES: Final = 1024 * 1024

# Request headers that never reach Nextcloud (besides hop-by-hop, framing, empty values): the
# caller's credentials and browser context, what AppAPI/HaRP/proxies add, our own X-Beeflow-*.
_DROP_REQUEST: Final = (
    streaming.HOP_BY_HOP,
    streaming.REQUEST_FRAMING,
    streaming.CREDENTIALS,
    streaming.BROWSER_CONTEXT,
    streaming.FORWARDING,
    streaming.APPAPI,
    frozenset({"x-http-method-override", "x-original-authorization", "destination"}),
)
_DROP_PREFIXES: Final = ("x-beeflow-", *streaming.APPAPI_PREFIXES)
# OCS-APIRequest: true on these: OCS needs it (SecurityMiddleware::isValidOCSRequest), and an
# app controller method without #[NoCSRFRequired] fails Nextcloud's CSRF check without a
# request token, which Request::passesCSRFCheck also accepts as this header. Harmless here: the
# call is authenticated by AppAPI headers, no cookie is forwarded (so no ambient session a CSRF
# check could protect), and the header's only other effect is skipping the strict-cookie check.
# Not on WebDAV: Sabre has no such check (and nc_py_api sends none there).
_CSRF_EXEMPT_PREFIXES: Final = ("/ocs/", "/index.php/apps/")
# Where the connector's own /nc/ callback URL lives in front of Nextcloud: the PHP proxy and HaRP.
_CALLBACK_PREFIXES: Final = ("/index.php/apps/app_api/proxy/{app_id}/nc/", "/exapps/{app_id}/nc/")


@attrs.define
class CallbackStats:
    """Signature failures on /nc (reference 4.6): for diagnostics, never for decisions."""

    failures: int = 0
    consecutive: int = 0
    verified: int = 0
    rate_limited: int = 0
    last_reason: str | None = None
    last_at: float | None = None

    def failure(self, reason: str) -> None:
        self.failures += 1
        self.consecutive += 1
        self.last_reason = reason
        self.last_at = time.time()

    def success(self) -> None:
        self.verified += 1
        self.consecutive = 0

    def health(self, trusted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"failures": self.failures, "consecutive": self.consecutive}
        if self.consecutive >= WARN_AT_CONSECUTIVE:
            out["warning"] = (
                "The last /nc callbacks failed signature checks: the tenant key or the clock of "
                "the Bee Flow service may be wrong"
            )
        if trusted:
            out["verified"] = self.verified
            out["rateLimited"] = self.rate_limited
            out["lastReason"] = self.last_reason
            out["lastAt"] = iso_utc(self.last_at)
        return out


@attrs.define
class _NcState:
    limiter: RateLimiter = attrs.field(factory=lambda: RateLimiter(FAILURE_LIMIT, FAILURE_WINDOW))
    stats: CallbackStats = attrs.field(factory=CallbackStats)


STATE: web.AppKey[_NcState] = web.AppKey("nc_proxy_state")
SPOOLS: web.AppKey[SpoolDir] = web.AppKey("nc_proxy_spools")
_CLIENT: web.AppKey[streaming.UpstreamClient] = web.AppKey("nc_proxy_client")
_SLOW_CLIENT: web.AppKey[streaming.UpstreamClient] = web.AppKey("nc_proxy_slow_client")


# ------------------------------------------------------------------ setup


def setup(app: web.Application) -> None:
    """Register /nc/{tail} for every manifest verb plus HEAD; any other verb gets 405 JSON."""
    state = _NcState()
    app[STATE] = state
    app.setdefault(keys.HEALTH, {})["ncCallbacks"] = state.stats.health
    for method in WIRE_METHODS:
        add_route(app, method, ROUTE_PATH, _handle, Access.PUBLIC, expect_handler=_expect)
    add_route(app, "*", ROUTE_PATH, _other_verb, Access.PUBLIC)
    app.cleanup_ctx.append(_context)


async def _context(app: web.Application) -> AsyncIterator[None]:
    """The spool directory and the ClientSessions to Nextcloud for /nc, for the app's life:
    one for every verb, one with the long response-headers deadline of MOVE and COPY."""
    config = app[keys.CONFIG]
    spools = SpoolDir.create(config.spool_dir)
    app[SPOOLS] = spools
    settings = streaming.PoolSettings(
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
        async with (
            streaming.upstream_client(settings) as client,
            streaming.upstream_client(slow) as slow_client,
        ):
            app[_CLIENT] = client
            app[_SLOW_CLIENT] = slow_client
            yield
    finally:
        spools.close()


def _allow() -> str:
    return ", ".join(WIRE_METHODS)


async def _other_verb(request: web.Request) -> web.StreamResponse:
    raise MethodNotAllowed(
        f"{request.method} is not proxied to Nextcloud",
        code="method_not_allowed",
        headers={"Allow": _allow()},
    )


# ------------------------------------------------------------------ the handler


def _precheck(request: web.Request) -> tuple[str, NcTarget, str, ParsedSig]:
    """Every check that needs no body: verb, path, tenant key, signature header and clock,
    declared size. Runs again in the handler; also before `100 Continue` (see _expect)."""
    app = request.app
    config = app[keys.CONFIG]
    state = app[STATE]
    method = effective_method(request)
    target = _check_target(request.raw_path)
    key = app[keys.TENANT].key
    if not key:
        # Fail closed before bootstrap (issue 11.6): a defined 401, not billed, never a 500.
        state.stats.failure("tenant_key_missing")
        raise Unauthorized(
            "The connector has no tenant key yet (bootstrap has not finished)",
            code="tenant_key_missing",
        )
    sig = _parse_signature(request, state, config)
    _check_content_encoding(request)
    declared = request.content_length
    if declared is not None and declared > config.nc_max_body_bytes:
        raise _too_large(config)
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
    state = app[STATE]
    method, target, key, sig = _precheck(request)
    spool = app[SPOOLS].spool(
        memory_limit=config.spool_memory_bytes, max_bytes=config.nc_max_body_bytes
    )
    try:
        uid = _signed_uid(request)
        await _read_body(request, spool, config)
        matched = verify_nc(key, sig, method, target.candidates, uid, spool.sha256)
        if matched is None:
            hazards = list(php_query_hazards(target.query))
            if target.query and _via_php_proxy(request):
                # PHP may have rewritten the query without leaving a trace (a=1&a=2 -> a=2).
                hazards.append("via_php_proxy")
            if hazards:
                _fail(
                    request,
                    state,
                    "signature_mismatch_query",
                    "Signature mismatch; the query has forms Nextcloud's PHP proxy rewrites, or "
                    "came through it (see docs/nc-proxy.md)",
                    extra={"queryHazards": hazards},
                )
            _fail(request, state, "signature_mismatch", "Signature mismatch")
        state.stats.success()
        _check_path_form(request, target, matched)
        user = _impersonated_user(uid)
        headers = upstream_headers(request, config, user, target.upstream)
        if "Destination" in request.headers and _reads_destination(method, target):
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
        # in streaming.TUNNELLED_HEAD_LENGTH (X-Beeflow-Content-Length).
        return await streaming.relay(
            request,
            upstream,
            _RELAY_OPTIONS,
            edit_headers=_edit_response_headers,
            method=method,
        )
    finally:
        spool.close()


def _check_path_form(request: web.Request, target: NcTarget, matched: str) -> None:
    """Through AppAPI's PHP proxy the path was decoded once before it reached us and Nextcloud
    decodes it again: a raw-form match on a path with escapes may name another file (the
    service's `My%2520Report.pdf`, meaning the literal name `My%20Report.pdf`, arrives as
    `My%20Report.pdf`, whose raw form verifies and which Nextcloud reads as `My Report.pdf`).
    Only a match on the decoded path form is unambiguous there. HaRP and direct callers get the
    target byte for byte (one decode, by Nextcloud): both forms are fine."""
    index = int(matched.partition(":")[2])
    if target.decoded_path[index] or not target.has_escapes or not _via_php_proxy(request):
        return
    raise BadRequest(
        "The path has percent escapes and came through AppAPI's PHP proxy, which decodes it "
        "once more: only a signature over the decoded path is accepted there. A name that "
        "itself contains '%XX' text needs HaRP (/exapps/) or a direct callback URL",
        code="path_ambiguous_via_php_proxy",
    )


def _via_php_proxy(request: web.Request) -> bool:
    """Delivered by AppAPI's legacy PHP proxy: its valid AppAPI headers plus the x-origin-ip it
    adds (HaRP adds no x-origin-ip to browser-side requests)."""
    return request[keys.IDENTITY].trusted and "x-origin-ip" in request.headers


def effective_method(request: web.Request) -> str:
    """The verb Nextcloud gets and the signature covers: the wire verb, or on POST the
    X-HTTP-Method-Override (AppAPI's PHP proxy forwards only GET/POST/PUT/DELETE)."""
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


def _fail(
    request: web.Request,
    state: _NcState,
    reason: str,
    message: str,
    *,
    extra: dict[str, Any] | None = None,
) -> NoReturn:
    """Count and bill one signature failure, then refuse: 401 naming the check, or 429 once
    the window's budget is spent. Never names the expected value."""
    stats = state.stats
    stats.failure(reason)
    if stats.consecutive == WARN_AT_CONSECUTIVE or stats.consecutive % 10 == 0:
        log.warning(
            "/nc callback refused (%s), %d in a row: check the tenant key and clock of the Bee "
            "Flow service (%s %s...)",
            reason,
            stats.consecutive,
            request.method,
            _log_prefix(request.raw_path),
        )
    if not state.limiter.penalise():
        stats.rate_limited += 1
        raise TooManyRequests(
            "Too many invalid /nc signatures",
            code="signature_rate_limited",
            retry_after=state.limiter.retry_after(),
        )
    raise Unauthorized(message, code=reason, extra=extra)


def _log_prefix(raw_path: str) -> str:
    """Only the allow-listed prefix of a path goes to the log (file names are users' data)."""
    rest = raw_path[len(NC_PREFIX) :]
    for prefix in ALLOWED_PREFIXES:
        if rest.startswith(prefix):
            return NC_PREFIX + prefix
    return NC_PREFIX + "/"


def _parse_signature(request: web.Request, state: _NcState, config: Config) -> ParsedSig:
    value = request.headers.get(SIG_HEADER)
    if value is None or not value.strip():
        _fail(request, state, "signature_missing", f"{SIG_HEADER} is missing")
    try:
        sig = parse_sig_header(value)
    except SigFormatError as exc:
        _fail(request, state, exc.code, f"{SIG_HEADER} must be '<unixSeconds>.<64 hex>'")
    if abs(time.time() - sig.ts) > config.sig_skew_seconds:
        _fail(
            request,
            state,
            "signature_expired",
            f"{SIG_HEADER} timestamp is outside the allowed clock skew",
        )
    return sig


def _check_content_encoding(request: web.Request) -> None:
    """A request body goes to Nextcloud exactly as sent and the v2 hash covers those bytes;
    WebDAV does not decode request bodies, and a small gzip body may inflate to GiBs. So any
    Content-Encoding but identity is refused before the body is read (and before 100 Continue)."""
    for value in request.headers.getall("Content-Encoding", ()):
        for token in value.split(","):
            if token.strip().lower() not in ("", "identity"):
                raise BadRequest(
                    "Compressed request bodies (Content-Encoding) are not accepted on /nc: "
                    "send the bytes as they should be stored",
                    code="content_encoding_unsupported",
                    status=415,
                )


def _too_large(config: Config) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The body exceeds {config.nc_max_body_bytes} bytes",
        code="payload_too_large",
        extra={"limit": config.nc_max_body_bytes},
    )


async def _read_body(request: web.Request, spool: Spool, config: Config) -> None:
    """Spool the whole body (the v2 signature covers its hash) at constant memory."""
    try:
        if request.body_exists:
            reader = request.content
            try:
                while chunk := await reader.readany():
                    await spool.feed(chunk)
            except SpoolTooLarge:
                raise _too_large(config) from None
            except (HttpProcessingError, web.RequestPayloadError):
                raise BadRequest(
                    "The request body is malformed or incomplete", code="body_incomplete"
                ) from None
        await spool.finish()
    except SpoolWriteError as exc:
        raise _spool_failed(request, spool, exc) from None


def _spool_failed(request: web.Request, spool: Spool, exc: SpoolWriteError) -> BeeflowError:
    """507 when the spool volume is full (ENOSPC, EDQUOT, EFBIG), else 500; logged with the
    errno name and the allow-listed prefix only, never the user's path."""
    log.warning(
        "/nc request body could not be spooled (%s after %d bytes; %s %s...): check the free "
        "space of BEEFLOW_SPOOL_DIR and BEEFLOW_NC_MAX_BODY_BYTES",
        exc,
        spool.size,
        request.method,
        _log_prefix(request.raw_path),
    )
    if exc.full:
        return BeeflowError(
            "The connector's spool for request bodies is full; retry later or with a smaller body",
            code="spool_full",
            status=507,
        )
    return BeeflowError("The request body could not be spooled", code="spool_failed")


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


def upstream_headers(
    request: web.Request, config: Config, user: str, upstream_path: str
) -> CIMultiDict[str]:
    """The caller's headers minus everything in _DROP_REQUEST, plus AppAPI impersonation
    (contract 2.1) and OCS-APIRequest on /ocs/ and /index.php/apps/. Depth, If-Match, Range,
    Content-Type... pass."""
    headers = streaming.filter_headers(request.headers, *_DROP_REQUEST, prefixes=_DROP_PREFIXES)
    for name, value in appapi_headers(config, user).items():
        headers[name] = value
    if upstream_path.startswith(_CSRF_EXEMPT_PREFIXES):
        headers["OCS-APIRequest"] = "true"
    return headers


def _check_auth_budget(app: web.Application) -> None:
    """When the control plane has seen Nextcloud refuse our AppAPI logins too often (issue 11.1),
    /nc stops too: each forwarded call would be refused as well and count towards Nextcloud's
    lock-out of this IP."""
    client = app.get(keys.NEXTCLOUD)
    if client is not None and client.budget.spent:
        raise ServiceUnavailable(
            "Nextcloud refused the connector's AppAPI logins; calls are paused. "
            + BRUTEFORCE_REMEDY,
            code="appapi_auth_paused",
            headers={"Retry-After": "60"},
        )


def _outbound(spool: Spool) -> streaming.OutboundBody:
    if spool.size == 0:
        return streaming.NO_BODY
    if spool.in_memory and spool.size <= INLINE_BODY_BYTES:
        return streaming.OutboundBody(spool.memory_bytes(), spool.size)
    return streaming.OutboundBody(_Replay(spool), spool.size)


class _Replay:
    """A spooled body as an async byte stream (a class, not a generator: nothing to finalise
    when the upload is abandoned half way)."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._offset = 0

    def __aiter__(self) -> _Replay:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._spool.read_at(self._offset)
        if not chunk:
            raise StopAsyncIteration
        self._offset += len(chunk)
        return chunk


def _edit_response_headers(_upstream: aiohttp.ClientResponse, headers: CIMultiDict[str]) -> None:
    # A session cookie Nextcloud set for the impersonated user is nobody else's business.
    headers.popall("Set-Cookie", None)


def _as_nextcloud_error(exc: BeeflowError) -> BeeflowError:
    """The streaming core's upstream_* codes, named for this upstream: nextcloud_unreachable..."""
    code = exc.instance_code
    if code.startswith("upstream_"):
        exc.instance_code = "nextcloud_" + code[len("upstream_") :]
    return exc


# ------------------------------------------------------------ Destination (MOVE/COPY, uploads)


def _origin_key(url: URL) -> tuple[str, int | None]:
    return ((url.host or "").lower(), url.port)


def _strip_base(path: str, base: URL) -> str | None:
    prefix = base.raw_path.rstrip("/")
    if not prefix:
        return path
    if path == prefix or path.startswith(prefix + "/"):
        return path[len(prefix) :]
    return None


def _nextcloud_relative(path: str, app_id: str) -> str:
    """Map the connector's own callback forms onto Nextcloud paths: /nc/x, the PHP proxy's
    /index.php/apps/app_api/proxy/<app>/nc/x and HaRP's /exapps/<app>/nc/x all mean /x."""
    for template in _CALLBACK_PREFIXES:
        prefix = template.format(app_id=app_id)
        if path.startswith(prefix):
            return path[len(prefix) - 1 :]
    if path.startswith(NC_PREFIX + "/"):
        return path[len(NC_PREFIX) :]
    return path


def _reads_destination(method: str, target: NcTarget) -> bool:
    """Where Nextcloud reads Destination: MOVE/COPY (Sabre), and every request of chunked
    upload v2 (MKCOL, chunk PUTs, the final MOVE under /remote.php/dav/uploads/: its
    ChunkingV2Plugin checks the target up front). Elsewhere the header means nothing and is
    dropped, so an irrelevant value cannot fail a GET."""
    return method in ("MOVE", "COPY") or target.upstream.startswith(UPLOADS_PREFIX)


def rewrite_destination(value: str, config: Config, request_host: str | None = None) -> str:
    """MOVE/COPY Destination onto NEXTCLOUD_URL. Accepted: an absolute URL on NEXTCLOUD_URL,
    the public Nextcloud URL or (for /nc/ paths) this request's own host; or an absolute path.
    The Nextcloud path must pass the same allow-list and traversal checks as the request."""
    text = value.strip()
    if not text or any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise BadRequest("Destination must be a percent-encoded URL", code="destination_invalid")
    bases = [config.nextcloud_url, config.public_nextcloud_url]
    if text.startswith("/"):
        if text.startswith("//"):
            raise BadRequest("Destination must not be scheme-relative", code="destination_invalid")
        raw_path, query = text.partition("?")[0], text.partition("?")[2]
        candidates = [p for p in (_strip_base(raw_path, b) for b in bases) if p is not None]
        candidates.append(raw_path)
    else:
        try:
            url = URL(text, encoded=True)
        except ValueError:
            raise BadRequest("Destination is not a URL", code="destination_invalid") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise BadRequest("Destination must be an http(s) URL", code="destination_invalid")
        if url.user is not None or url.password is not None or url.raw_fragment:
            raise BadRequest(
                "Destination must not carry credentials or a fragment",
                code="destination_invalid",
            )
        raw_path, query = url.raw_path, url.raw_query_string
        same_host = [b for b in bases if _origin_key(url) == _origin_key(b)]
        candidates = [p for p in (_strip_base(raw_path, b) for b in same_host) if p is not None]
        own = bool(request_host) and _same_host(url, request_host or "")
        if own and raw_path.startswith(NC_PREFIX + "/"):
            candidates.append(raw_path)
        if not same_host and not own:
            raise BadRequest(
                "Destination must point at this Nextcloud", code="destination_foreign_host"
            )
    if query:
        raise BadRequest("Destination must not have a query", code="destination_invalid")
    for candidate in candidates:
        relative = _nextcloud_relative(candidate, config.app_id)
        if relative.startswith(ALLOWED_PREFIXES):
            try:
                check_target(NC_PREFIX + relative)
            except PathRejected as exc:
                raise BadRequest(
                    f"Destination rejected: {exc.message}", code="destination_" + exc.code
                ) from None
            return str(config.nextcloud_url) + relative
    raise BadRequest(
        "Destination must be under /remote.php/dav/, /ocs/ or /index.php/apps/",
        code="destination_not_proxied",
    )


def _same_host(url: URL, host_header: str) -> bool:
    try:
        own = URL(f"{url.scheme}://{host_header}")
    except ValueError:
        return False
    return _origin_key(url) == _origin_key(own)
