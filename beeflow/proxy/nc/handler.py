"""The /nc/* route: the Bee Flow service reaches Nextcloud (Files, Calendar, Mail...) as a user
through AppAPI impersonation, once its HMAC signature verified (docs/nc-proxy.md).

Order of work for one request, cheapest refusal first; everything up to 6 runs before a byte
of the body is read (and before `100 Continue`):
 1. method: the wire verb, or POST + X-HTTP-Method-Override naming one of VERBS (else 405);
 2. target: allow-list, traversal and control-byte checks on the raw target (404 / 400,
    path.py); no signed header repeated;
 3. signature header: present, well formed, within the clock skew, tenant key loaded, a version
    the policy accepts and the target can be expressed in (401 / 400, signatures.py);
 4. X-Beeflow-NC-Uid syntax, body encoding, declared size; a write's signature not used before;
 5. what verifies from the head: v3 (declared body hash), v1 (no body hash) (401);
 6. otherwise (v2) a slot among the unverified uploads (503, uploads.py);
 7. body: spooled and hashed at constant memory, cut when it stalls (413 / 408, spool.py);
 8. signature: v2 over the body hash, or the v3 body checked against its declared hash (401);
    a write's signature recorded as used (replay.py);
 9. Destination checked (destination.py); headers rebuilt for Nextcloud; a 503 instead while
    Nextcloud refuses the connector's AppAPI logins;
10. the spool streamed upstream with a Content-Length; the answer streamed back (relay.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import attrs
from aiohttp import web
from yarl import URL

from beeflow.config import CONFIG
from beeflow.errors import (
    BeeflowError,
    MethodNotAllowed,
    ServiceUnavailable,
)
from beeflow.health import HEALTH, HealthProvider
from beeflow.nextcloud.budget import BRUTEFORCE_REMEDY
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.proxy.cut import LINGER_BODY_BYTES, body_left, cut
from beeflow.proxy.headers import EditHeaders, confiner, refuse_encoded_body
from beeflow.proxy.nc import choice
from beeflow.proxy.nc.destination import reads_destination, rewrite_destination
from beeflow.proxy.nc.path import NC_PREFIX, NcTarget
from beeflow.proxy.nc.replay_shared import SharedReplayCache
from beeflow.proxy.nc.request import (
    VERBS,
    allow_header,
    checked_target,
    impersonated_user,
    nextcloud_headers,
    refuse_repeated,
    signed_uid,
    signed_verb,
)
from beeflow.proxy.nc.signatures import GUARD, Claim, SignatureGuard, SignaturePolicy
from beeflow.proxy.nc.spool import SPOOLS, Spool, SpoolDir, SpoolReplay, read_body, too_large
from beeflow.proxy.nc.uploads import UPLOADS, Ticket, UnverifiedUploads
from beeflow.proxy.relay import RelayOptions, relay
from beeflow.proxy.upstream import (
    NO_BODY,
    OutboundBody,
    PoolSettings,
    UpstreamClient,
    upstream_client,
)
from beeflow.tenant.shared import refresh_key
from beeflow.tenant.state import TENANT
from beeflow.web.auth import Access, add_route
from beeflow.web.responses import error_response
from beeflow.web.security_headers import confined_policy

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
ROUTE_PATH: Final = NC_PREFIX + "/{tail:.*}"
# A spooled body up to this size goes upstream as one bytes object (aiohttp warns above 1 MiB).
INLINE_BODY_BYTES: Final = 1024 * 1024
# Codes of upstream failures where Nextcloud never received the request: its signature may be
# used again.
_NEVER_SENT: Final = frozenset(
    {"upstream_unreachable", "upstream_connect_timeout", "upstream_tls_error"}
)

_CLIENT: web.AppKey[UpstreamClient] = web.AppKey("nc_proxy_client")
_SLOW_CLIENT: web.AppKey[UpstreamClient] = web.AppKey("nc_proxy_slow_client")
# Nextcloud's answers, relayed on Nextcloud's origin to whoever holds a signed request: its
# session cookie for the impersonated user stays here, and nothing in them may run (the same
# confinement as the service's answers).
_CONFINE: web.AppKey[EditHeaders] = web.AppKey("nc_proxy_confine")


# ------------------------------------------------------------------ setup


def setup(app: web.Application) -> None:
    """Register /nc/{tail} for every verb of VERBS; any other verb gets 405 JSON."""
    config = app[CONFIG]
    guard = SignatureGuard(
        SignaturePolicy(
            v1=config.nc_signature_v1,
            require_v3=config.nc_signature_require_v3,
            skew_seconds=config.sig_skew_seconds,
        )
    )
    app[GUARD] = guard
    uploads = UnverifiedUploads(config.nc_unverified_uploads, config.nc_unverified_bytes)
    app[UPLOADS] = uploads
    app[_CONFINE] = confiner(confined_policy(config))
    app.setdefault(HEALTH, {})["ncCallbacks"] = _health(app, guard, uploads)
    for method in VERBS:
        add_route(app, method, ROUTE_PATH, _handle, Access.PUBLIC, expect_handler=_expect)
    add_route(app, "*", ROUTE_PATH, _other_verb, Access.PUBLIC)
    app.cleanup_ctx.append(_context)
    choice.setup(app)


async def _context(app: web.Application) -> AsyncIterator[None]:
    """The spool directory and the ClientSessions to Nextcloud for /nc, for the app's life:
    one for every verb, one with the long response-headers deadline of MOVE and COPY."""
    config = app[CONFIG]
    spools = SpoolDir.create(config.spool_dir)
    app[SPOOLS] = spools
    # Used signatures of writes, shared with the replicas on the volume when it can be.
    shared = SharedReplayCache.open(config.persistent_storage)
    if shared is not None:
        app[GUARD].replays = shared
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
        if shared is not None:
            shared.close()


async def _other_verb(request: web.Request) -> web.StreamResponse:
    raise MethodNotAllowed(
        f"{request.method} is not proxied to Nextcloud",
        code="method_not_allowed",
        headers={"Allow": allow_header()},
    )


# ------------------------------------------------------------------ the handler


@attrs.frozen
class _Head:
    """What the head of a request told, once checked."""

    method: str
    target: NcTarget
    key: str
    claim: Claim
    uid: str
    user: str


def _precheck(request: web.Request) -> _Head:
    """Every check that needs no body: verb, path, tenant key, signature header, clock and
    version, uid syntax, body encoding, declared size, a write's signature not used before.
    Runs in the handler, and before `100 Continue` (_expect)."""
    app = request.app
    config = app[CONFIG]
    guard = app[GUARD]
    method = signed_verb(request)
    target = checked_target(request.raw_path)
    refuse_repeated(request)
    refresh_key(app)  # before a signature is judged: a key another replica rotated
    key = app[TENANT].key
    if not key:
        guard.no_key()
    claim = guard.parse_header(request)
    guard.check_form(request, claim, target)
    uid = signed_uid(request)
    user = impersonated_user(uid)
    refuse_encoded_body(request)
    declared = request.content_length
    if declared is not None and declared > config.nc_max_body_bytes:
        raise too_large(config.nc_max_body_bytes)
    guard.refuse_used(request, claim, method)
    return _Head(method, target, key, claim, uid, user)


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` (Nextcloud's Guzzle sends it on PUTs over 1 MiB): refuse a forged,
    stale, oversized or (when the unverified uploads are full) unverifiable upload before its
    body is sent, instead of spooling it first. Runs before the middleware chain, so errors are
    rendered here."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers['Expect']}")
    try:
        head = _precheck(request)
        guard = request.app[GUARD]
        if not guard.verify_head(
            request, head.key, head.claim, head.method, head.target, head.uid, record=False
        ):
            request.app[UPLOADS].check()
    except BeeflowError as exc:
        response = error_response(exc)
        response.force_close()  # the client may still send the body it announced
        return response
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


async def _handle(request: web.Request) -> web.StreamResponse:
    try:
        return await _proxy(request)
    except BeeflowError as exc:
        if exc.instance_code == "body_timeout" or body_left(request) > LINGER_BODY_BYTES:
            return await cut(request, error_response(exc))
        raise


async def _proxy(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[CONFIG]
    guard = app[GUARD]
    head = _precheck(request)
    method, target, key, claim, uid = head.method, head.target, head.key, head.claim, head.uid
    verified = guard.verify_head(request, key, claim, method, target, uid)
    claimed = forwarded = False
    spool = app[SPOOLS].spool(
        memory_limit=config.spool_memory_bytes, max_bytes=config.nc_max_body_bytes
    )
    try:
        if verified:
            claimed = await guard.claim(request, claim, method)
        ticket = None if verified or not request.body_exists else app[UPLOADS].admit()
        try:
            await read_body(
                request,
                spool,
                config.nc_max_body_bytes,
                idle_seconds=config.nc_body_idle_seconds,
                on_bytes=None if ticket is None else ticket.add,
            )
        finally:
            _release(ticket)
        guard.verify_body(request, key, claim, method, target, uid, spool.sha256, verified=verified)
        if not verified:
            claimed = await guard.claim(request, claim, method)
        headers = nextcloud_headers(request, config, head.user, target.upstream)
        if "Destination" in request.headers and reads_destination(method, target):
            headers["Destination"] = rewrite_destination(
                request.headers["Destination"], config, request.host
            )
        _check_auth_budget(app)
        body = _outbound(spool)
        url = URL(str(config.nextcloud_url) + target.upstream, encoded=True)
        forwarded = True
        try:
            client = app[_SLOW_CLIENT] if method in SLOW_VERBS else app[_CLIENT]
            upstream = await client.send(method, url, headers, body)
        except BeeflowError as exc:
            forwarded = exc.instance_code not in _NEVER_SENT
            raise _as_nextcloud_error(exc) from None
        # A HEAD tunnelled in a POST is answered without a body and with Nextcloud's length
        # in relay.TUNNELLED_HEAD_LENGTH (X-Beeflow-Content-Length).
        try:
            return await relay(
                request,
                upstream,
                _RELAY_OPTIONS,
                edit_headers=app[_CONFINE],
                method=method,
            )
        except BeeflowError as exc:  # raised before anything was sent to the caller
            raise _as_nextcloud_error(exc) from None
    finally:
        spool.close()
        if claimed and not forwarded:
            # Refused after the signature was recorded, before Nextcloud saw the request: the
            # service may send it again.
            await guard.release(claim)


def _release(ticket: Ticket | None) -> None:
    if ticket is not None:
        ticket.release()


def _health(
    app: web.Application, guard: SignatureGuard, uploads: UnverifiedUploads
) -> HealthProvider:
    """ncCallbacks in the heartbeat: the signature counters, and for trusted callers what the
    unverified uploads hold."""

    def provide(trusted: bool) -> dict[str, Any]:
        out = guard.stats.health(trusted)
        if trusted:
            out["unverifiedUploads"] = uploads.health()
            out["signatures"] = choice.describe(app)
            out["replayCache"] = {
                "shared": isinstance(guard.replays, SharedReplayCache),
                "entries": len(guard.replays),
            }
        return out

    return provide


def _check_auth_budget(app: web.Application) -> None:
    """While Nextcloud refuses the connector's AppAPI logins (its failure budget is spent,
    docs/architecture.md "Talking to Nextcloud without locking ourselves out"), /nc stops too:
    each forwarded call would be refused as well and count towards Nextcloud's lock-out of this
    IP."""
    client = app.get(NEXTCLOUD)
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


def _as_nextcloud_error(exc: BeeflowError) -> BeeflowError:
    """The streaming core's upstream_* codes, named for this upstream: nextcloud_unreachable..."""
    code = exc.instance_code
    if code.startswith("upstream_"):
        exc.instance_code = "nextcloud_" + code[len("upstream_") :]
    return exc
