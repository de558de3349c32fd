"""The proxy to the Bee Flow service, as the Nextcloud user, with a per-user JWT: every path the
connector does not own (the service's UI calls /ai, /agents, /components, /reports, /apps, ...
besides /api and /auth), registered last as the manifest's USER catch-all."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import attrs
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from beeflow.config import CONFIG, Config
from beeflow.errors import (
    BadGateway,
    BadRequest,
    BeeflowError,
    Forbidden,
    MethodNotAllowed,
    NextcloudError,
    NotFound,
    ServiceUnavailable,
)
from beeflow.health import provide
from beeflow.nextcloud.users import USERS, NcUser
from beeflow.proxy.buffers import BufferBudget, Buffered, pieces, read_whole
from beeflow.proxy.cut import LINGER_BODY_BYTES, body_left, cut
from beeflow.proxy.headers import (
    APPAPI,
    APPAPI_PREFIXES,
    BROWSER_CONTEXT,
    CREDENTIALS,
    FORWARDING,
    HOP_BY_HOP,
    REQUEST_FRAMING,
    EditHeaders,
    confiner,
    filter_headers,
    refuse_encoded_body,
)
from beeflow.proxy.paths import forwarded_path_problem
from beeflow.proxy.relay import Ending, RelayOptions, relay
from beeflow.proxy.sse import ErrorEvents
from beeflow.proxy.tokens import TokenCache
from beeflow.proxy.upstream import (
    NO_BODY,
    OutboundBody,
    PoolSettings,
    UpstreamClient,
    outbound_body,
    upstream_client,
)
from beeflow.serde import iso_utc
from beeflow.service_client import SERVICE_URL
from beeflow.tenant.shared import refresh_key
from beeflow.tenant.state import TENANT, TenantState
from beeflow.web import spa
from beeflow.web.auth import IDENTITY, Access, add_route
from beeflow.web.draining import DRAINING
from beeflow.web.responses import error_response
from beeflow.web.routing import HARP, PHP, ROUTING, Routing
from beeflow.web.security_headers import confined_policy
from beeflow.web.shell import is_navigation, keyless_shell

log = logging.getLogger(__name__)

# HEAD is listed for HaRP (any verb passes it); the PHP proxy has no PATCH and no HEAD.
METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")
# What the connector serves itself and never forwards, whatever the verb: the UI shell and its
# files, the setup page, the lifecycle, AppAPI's server-side calls, the hooks and the /nc proxy.
# Matched case-insensitively on the decoded path with repeated slashes collapsed (Nextcloud's
# PHP router matches case-insensitively; aiohttp decodes before routing).
CONNECTOR_OWNED: Final = re.compile(
    r"^/(?:$|index\.html$|favicon\.ico$|bee-?flow-logo|assets(?:/|$)|js(?:/|$)|img(?:/|$)"
    r"|setup(?:/|$)|heartbeat(?:/|$)|ready(?:/|$)|init(?:/|$)|enabled(?:/|$)|trigger(?:/|$)"
    r"|files-action(?:/|$)|hooks(?:/|$)|webhook(?:/|$)|nc(?:/|$)|occ(?:/|$)|setup_checks$)",
    re.IGNORECASE,
)
_SLASHES: Final = re.compile(r"/{2,}")
# The same paths as an aiohttp route pattern (`/{tail:...}`), for the refusal route.
_OWNED_TAIL: Final = (
    r"(?i:(?:index\.html|favicon\.ico|bee-?flow-logo[^/]*|(?:assets|js|img|setup|heartbeat"
    r"|ready|init|enabled|trigger|files-action|hooks|webhook|nc|occ)(?:/.*)?|setup_checks)?)"
)
# The UI's @nextcloud/l10n asks for these; the service has no use for them: answered here with
# no translations.
L10N_PATHS: Final = (
    "/api/languages/user/locales",
    "/api/languages/user/strings/{lang}",
    "/api/languages/public/strings/{lang}",
)
L10N_BODY: Final = {"translations": {}, "pluralForm": "nplurals=2; plural=(n != 1);"}
EMAIL_REQUIRED: Final = (
    "Your Nextcloud account has no e-mail address, and Bee Flow signs you in by it. Add one "
    "under Personal settings in Nextcloud (or ask your administrator to), then reload."
)
SERVICE_NAME: Final = "The Bee Flow service"
SOURCE: Final = "nextcloud-connector"
# Concurrent connections to the service. Every open chat stream holds one for its lifetime, so
# this is the cap on concurrent streams (the Node reference's 64 made stream 65 wait); idle
# pooled connections are dropped after KEEPALIVE_SECONDS.
POOL_SIZE: Final = 0  # no cap: aiohttp limit=0; idle connections still expire
KEEPALIVE_SECONDS: Final = 10.0
# A buffered body up to this size goes upstream as one bytes object (aiohttp warns above 1 MiB).
INLINE_BODY_BYTES: Final = 1024 * 1024

# Never to the service: the user's own credentials (their Nextcloud password in Basic auth, the
# session cookies), the browser's context, what AppAPI/HaRP add (the AppAPI secret among them),
# forwarding hints, and any X-Beeflow-* the browser might try to forge. Host is the upstream's.
_DROP_SETS: Final = (
    HOP_BY_HOP,
    REQUEST_FRAMING,
    CREDENTIALS,
    BROWSER_CONTEXT,
    FORWARDING,
    APPAPI,
    frozenset({"x-http-method-override"}),
)
_DROP_PREFIXES: Final = (*APPAPI_PREFIXES, "x-beeflow-")

_CLIENT: web.AppKey[UpstreamClient] = web.AppKey("service_proxy_client")
_TOKENS: web.AppKey[TokenCache] = web.AppKey("service_proxy_tokens")
_STATS: web.AppKey[ProxyStats] = web.AppKey("service_proxy_stats")
# By routing (beeflow.web.routing): HARP streams, PHP gets the legacy framing.
_RELAY_OPTIONS: web.AppKey[dict[str, RelayOptions]] = web.AppKey("service_proxy_relay_options")
BUFFERS: web.AppKey[BufferBudget] = web.AppKey("service_proxy_buffers")
_CONFINE: web.AppKey[EditHeaders] = web.AppKey("service_proxy_confine")

STREAMING_LEGACY: Final = (
    "Nextcloud's PHP proxy: it delivers each reply whole, when it ends; streamed chat replies "
    "need HaRP (Nextcloud 32+)."
)
STREAMING_HARP: Final = "HaRP: replies stream to the browser as the service sends them."


# ------------------------------------------------------------------ diagnostics


@attrs.define
class ProxyStats:
    """Counters for the heartbeat / setup status / doctor advisory fields (no I/O)."""

    routing: Routing
    requests: int = 0
    legacy_framed: int = 0  # requests that came through the PHP proxy (legacy framing)
    in_flight: int = 0
    upstream_errors: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    def failed(self, code: str) -> None:
        self.upstream_errors += 1
        self.last_error = code
        self.last_error_at = time.time()

    def health(self, trusted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "streaming": STREAMING_HARP if self.routing.expected() == HARP else STREAMING_LEGACY,
            "upstreamErrors": self.upstream_errors,
        }
        if trusted:
            out["requests"] = self.requests
            out["legacyFramed"] = self.legacy_framed
            out["inFlight"] = self.in_flight
            out["lastError"] = self.last_error
            out["lastErrorAt"] = iso_utc(self.last_error_at)
        return out


# ------------------------------------------------------------------ identity


# ------------------------------------------------------------------ request shaping


def patch_tunnel_method(request: web.BaseRequest) -> str:
    """The method to send the service. AppAPI's PHP proxy has no PATCH, so the SPA tunnels it
    as POST + X-HTTP-Method-Override: PATCH. Only PATCH is honoured; the header never goes
    on."""
    if request.method == "POST":
        override = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
        if override == "PATCH":
            return "PATCH"
    return request.method


def target_url(base: URL, request: web.BaseRequest) -> URL:
    """The service URL for this request: base + the path and query exactly as received, then
    checked to still lie under the base URL."""
    raw_path = request.rel_url.raw_path
    # In every layer of its encoding, with "\\" read as "/" (browsers' and Node's URL parsers
    # do, for http): "/api/..%2fauth", "/api/%252e%252e/x" or "/api/..;/admin" must not step out
    # of where they point at the service (or at anything between it and us) either.
    problem = forwarded_path_problem(raw_path)
    if problem is not None:
        raise BadRequest(problem[1], code=problem[0])
    base_path = _base_path(base)
    url = URL.build(
        scheme=base.scheme,
        host=base.raw_host or "",
        port=base.explicit_port,
        path=base_path + raw_path,
        query_string=request.rel_url.raw_query_string,
        encoded=True,
    )
    if (
        url.raw_host != base.raw_host
        or url.port != base.port
        or url.scheme != base.scheme
        or not url.raw_path.startswith(base_path + "/")
    ):
        raise BadRequest("This path is not proxied", code="bad_path")
    return url


@functools.lru_cache(maxsize=8)
def _base_path(base: URL) -> str:
    """The base path without its trailing slash."""
    return base.raw_path.rstrip("/")


def is_connector_owned(path: str) -> bool:
    """A path the connector answers itself (any verb) and never forwards to the service."""
    return CONNECTOR_OWNED.match(_SLASHES.sub("/", path)) is not None


def service_request_headers(
    request: web.BaseRequest,
    config: Config,
    tenant: TenantState,
    user: NcUser,
    jwt: str,
) -> CIMultiDict[str]:
    """What the service gets: the browser's headers minus credentials, hop-by-hop and AppAPI's,
    plus the user's JWT and who is asking (the /nc proxy builds Nextcloud's its own way)."""
    headers = filter_headers(request.headers, *_DROP_SETS, prefixes=_DROP_PREFIXES)
    headers["Authorization"] = f"Bearer {jwt}"
    headers["X-Beeflow-Source"] = SOURCE
    headers["X-Beeflow-NC-Uid"] = user.uid
    if tenant.instance_id:
        headers["X-Beeflow-NC-Instance-Id"] = tenant.instance_id
    headers["X-Beeflow-NC-Base-Url"] = _url_text(config.nextcloud_url)
    # Compressed SSE can arrive corrupted through the proxies on the way: ask for plain bytes.
    headers["Accept-Encoding"] = "identity"
    return headers


@functools.lru_cache(maxsize=4)
def _url_text(url: URL) -> str:
    return str(url)


def _is_json(content_type: str) -> bool:
    return "json" in content_type.lower()


# The service's chat stream ends with `event: done`: a cut after it lost nothing.
_FINAL_EVENTS: Final = frozenset({b"done"})


def relay_options(config: Config, *, streaming: bool, ending: Ending | None = None) -> RelayOptions:
    """Streaming (HaRP, or anything but the PHP proxy): keep-alive comments so HaRP and reverse
    proxies keep idle streams open, no idle cap. Legacy (a request that came through Nextcloud's
    PHP proxy): it buffers the whole reply and has no timeout, so never keep a stream alive
    artificially, cap its idle time, and send SSE close-delimited (docs/proxy.md, "Legacy mode
    vs HaRP"). The routing is decided per request (beeflow.web.routing). Either way, a stream
    still open at the drain deadline (`ending`) ends with an event saying the connector
    restarts."""
    events = ErrorEvents(upstream_name=SERVICE_NAME, final_events=_FINAL_EVENTS)
    if streaming:
        return RelayOptions(
            keepalive_seconds=config.sse_keepalive_seconds, ending=ending, ending_events=events
        )
    return RelayOptions(
        idle_limit_seconds=config.legacy_stream_idle_seconds,
        close_delimited_sse=True,
        error_events=events,
        ending=ending,
        ending_events=events,
    )


# ------------------------------------------------------------------ the handler


async def _proxy(request: web.Request) -> web.StreamResponse:
    if is_connector_owned(request.path):
        # A verb or a sub-path the connector's own routes do not take (PUT /setup, POST
        # /assets/x, /nc without a route): answered here, never forwarded.
        raise NotFound("This path is served by the connector, not forwarded", code="not_found")
    app = request.app
    config = app[CONFIG]
    tenant = app[TENANT]
    refresh_key(app)  # a key another replica provisioned or rotated
    key = tenant.key
    if not key:
        if is_navigation(request):
            return await keyless_shell(app, request)
        raise ServiceUnavailable(
            "The connector is not connected to the Bee Flow service yet; try again shortly",
            code="tenant_key_missing",
            headers={"Retry-After": "10"},
        )
    uid = request[IDENTITY].user_id
    try:
        user = await app[USERS].lookup(uid)
    except NextcloudError as exc:
        log.warning("user lookup for the proxy failed (%s)", exc.kind)
        if is_navigation(request):
            return await keyless_shell(app, request)
        raise BadGateway(
            "Could not look up the Nextcloud user", code="user_lookup_failed"
        ) from None
    if not user.email:
        # The service signs users in by e-mail and refuses a token without one (400 "Connector
        # token missing email claim"): say why, in words the UI can show, without asking it.
        if is_navigation(request):
            return await keyless_shell(app, request)
        raise Forbidden(EMAIL_REQUIRED, code="nextcloud_email_missing")
    refuse_encoded_body(request)
    jwt = app[_TOKENS].token(key, user, config.jwt_ttl_seconds)
    url = target_url(app[SERVICE_URL].url, request)
    headers = service_request_headers(request, config, tenant, user, jwt)
    buffered: Buffered | None = None
    if request.body_exists and request.content_length is None and _is_json(request.content_type):
        # AppAPI's PHP proxy sends JSON bodies chunked and the service wants a length: read
        # whole, within what all users' and this user's bodies may hold at once.
        try:
            buffered = await read_whole(request, app[BUFFERS], uid)
        except BeeflowError as exc:
            if body_left(request) > LINGER_BODY_BYTES:
                # The rest of a refused body is not drained: the connection goes.
                return await cut(request, error_response(exc))
            raise
        chunks, size = buffered.take(), buffered.size
        body = OutboundBody(b"".join(chunks) if size <= INLINE_BODY_BYTES else pieces(chunks), size)
        del chunks
    else:
        body = await outbound_body(request)
    stats = app[_STATS]
    stats.requests += 1
    stats.in_flight += 1
    try:
        try:
            upstream = await app[_CLIENT].send(patch_tunnel_method(request), url, headers, body)
        except BeeflowError as exc:
            stats.failed(exc.instance_code)
            raise
        finally:
            # Sent (or never will be): the bytes no longer count, nor stay referenced here.
            body = NO_BODY
            if buffered is not None:
                buffered.release()
        framing = app[ROUTING].framing(request)
        if framing == PHP:
            stats.legacy_framed += 1
        return await relay(
            request, upstream, app[_RELAY_OPTIONS][framing], edit_headers=app[_CONFINE]
        )
    finally:
        stats.in_flight -= 1


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    settings = PoolSettings(
        name=SERVICE_NAME,
        connect_timeout=config.upstream_connect_timeout,
        headers_timeout=config.upstream_headers_timeout,
        pool_size=POOL_SIZE,
        keepalive_timeout=KEEPALIVE_SECONDS,
    )
    async with upstream_client(settings) as client:
        app[_CLIENT] = client
        yield


async def _l10n(request: web.Request) -> web.Response:
    return web.json_response(L10N_BODY)


def setup(app: web.Application) -> None:
    """The pooled service client (cleanup_ctx), the token cache and the l10n answers. The
    forwarding routes come last of all: setup_catch_all()."""
    spa.locate(app, app[CONFIG].spa_dir)
    app.cleanup_ctx.append(_client_ctx)
    app[_TOKENS] = TokenCache()
    config = app[CONFIG]
    ending = app[DRAINING].streams if DRAINING in app else None
    app[_RELAY_OPTIONS] = {  # once, not per request
        HARP: relay_options(config, streaming=True, ending=ending),
        PHP: relay_options(config, streaming=False, ending=ending),
    }
    app[_STATS] = ProxyStats(routing=app[ROUTING])
    app[_CONFINE] = confiner(confined_policy(config))
    app[BUFFERS] = BufferBudget(config.api_buffer_bytes, config.api_buffer_user_bytes)
    provide(app, "serviceProxy", app[_STATS].health)
    for path in L10N_PATHS:
        add_route(app, "GET", path, _l10n, Access.USER)


async def _owned(request: web.Request) -> web.Response:
    """A connector path no connector route took (a verb its route does not take, a sub-path it
    does not have): answered here for anyone, never forwarded. 405 with Allow when a connector
    route has the path under other verbs, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        handlers = {route.handler for route in resource}
        if handlers & {_owned, _proxy}:
            continue
        _, methods = await resource.resolve(request)
        allowed |= methods
    if allowed:
        raise MethodNotAllowed(
            "This connector path does not take " + request.method,
            headers={"Allow": ", ".join(sorted(allowed))},
        )
    raise NotFound("No such connector path", code="not_found")


def setup_catch_all(app: web.Application) -> None:
    """The manifest's last route, `^\\/?.*` as USER: everything no other route took. aiohttp
    tries resources in registration order, so this must be registered after every other
    feature. Before it, a PUBLIC refusal route takes the rest of the connector's own paths;
    the forwarding handler checks again (a path aiohttp routes differently, e.g. `//setup`)."""
    add_route(app, "*", "/{tail:" + _OWNED_TAIL + "}", _owned, Access.PUBLIC)
    for method in METHODS:
        add_route(app, method, "/{tail:.*}", _proxy, Access.USER)
