"""Generic streaming reverse-proxy core: header filters, one pooled upstream client, body relay.

Knows nothing about the Bee Flow service or Nextcloud; the /api and /nc proxies build on it.

Public API (kept stable; the /api and /nc proxies both use it):

Header filtering
    HOP_BY_HOP, REQUEST_FRAMING, RESPONSE_FRAMING, CREDENTIALS, BROWSER_CONTEXT, FORWARDING,
    APPAPI, APPAPI_PREFIXES: named frozensets (lower-case names) / prefix tuples.
    filter_headers(headers, *drop, prefixes=(), drop_empty=True) -> CIMultiDict[str]
        Copy a (multi)dict without the named headers, the headers named in its own
        `Connection` header, and (by default) headers with an empty value. Repeated headers
        stay repeated (two Set-Cookie stay two).
    is_event_stream(headers) -> bool      media type is text/event-stream
    is_encoded(headers) -> bool           a Content-Encoding other than identity is present

Request bodies
    OutboundBody(data, length)            what to send: None, bytes, or an async byte stream
    await outbound_body(request, buffer_when_unsized=pred) -> OutboundBody
        Streams the inbound body. A body of unknown length (chunked) whose Content-Type makes
        pred(content_type) true is read whole (bounded by client_max_size: 413) so it can go on
        with a Content-Length. A stream is never replayed.

Upstream client (one per upstream, opened in a cleanup_ctx)
    PoolSettings(name, connect_timeout, headers_timeout, pool_size, keepalive_timeout, ssl)
    async with upstream_client(settings) as client: ...   -> UpstreamClient
    await client.send(method, url, headers, body) -> aiohttp.ClientResponse
        `auto_decompress=False` (encoded bytes pass untouched), no cookie jar (responses of one
        user never reach another), no redirects followed, no total timeout. The response
        headers must arrive within `headers_timeout` after the last request-body byte was
        accepted (and each body chunk must be accepted within it). A GET/HEAD without a body
        whose connection closes or resets before any response byte (typically a stale pooled
        keep-alive connection) is retried once; nothing else is ever replayed (aiohttp's own
        replay of PUT/DELETE is switched off). Failures raise, before anything was sent to the
        client:
            502 upstream_unreachable      refused, DNS, no route
            502 upstream_tls_error        TLS handshake / certificate failure
            502 upstream_disconnected     connection closed or reset before the headers
            502 upstream_bad_response     not a parseable HTTP response
            504 upstream_connect_timeout  no connection within connect_timeout
            504 upstream_timeout          no response headers within headers_timeout

Response relay
    RelayOptions(keepalive_seconds, idle_limit_seconds, close_delimited_sse,
                 default_cache_control, keepalive_comment)
    await relay(request, upstream, options, edit_headers=None, method=None) -> web.StreamResponse
        prepare() then chunk iteration: each chunk goes to the client as it arrives. Status and
        headers are copied as a multidict minus hop-by-hop/framing headers; Content-Length is
        kept when the upstream gave one. text/event-stream gets `X-Accel-Buffering: no` and
        `Cache-Control: no-cache, no-transform`; other responses without Cache-Control get
        `default_cache_control`. `edit_headers(upstream, headers)` may adjust the rest.
        - keepalive_seconds: an unencoded event stream idle that long gets `keepalive_comment`
          written at an event boundary (never inside an event).
        - idle_limit_seconds: a body that brings no upstream byte for that long is ended (an
          event stream cleanly, anything else by closing the connection so the client sees it
          cut).
        - close_delimited_sse: an event stream of unknown length goes out with neither
          Content-Length nor Transfer-Encoding and `Connection: close` (raw bytes, the end of
          the body is the end of the connection).
        A client disconnect (handler cancellation, or a failed write) closes the upstream
        connection at once. An upstream failure after the response started closes the client
        connection (no clean end of a chunked body) and is logged once.

Requires handler cancellation on the runner (cli and aiohttp's test server enable it) for an
idle stream to notice its client going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl as ssl_module
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Final

import aiohttp
import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from beeflow.errors import BadGateway, GatewayTimeout
from beeflow.proxy.deadlines import Deadlines
from beeflow.redact import loggable_path

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ header sets (lower case)

# RFC 9110 7.6.1 connection-specific fields, plus the non-standard ones proxies also use.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# Request fields the client re-derives for the next hop (Host from the target URL, the length
# from the body we send, Expect is a per-hop handshake).
REQUEST_FRAMING: Final = frozenset({"host", "content-length", "transfer-encoding", "expect"})
# Response fields the relay decides itself (it keeps the upstream Content-Length if any).
RESPONSE_FRAMING: Final = frozenset({"content-length", "transfer-encoding"})
# What identifies the caller to *us*: never passed to an upstream that should not see it.
# X-Original-Authorization: AppAPI's copy of the browser's Authorization (the user's Basic
# credentials) when it talks to a Docker Socket Proxy over HTTPS (contract 1.1).
CREDENTIALS: Final = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-original-authorization"}
)
# requesttoken: Nextcloud's per-session CSRF token (its axios adds it to every request).
BROWSER_CONTEXT: Final = frozenset({"origin", "referer", "requesttoken"})
FORWARDING: Final = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-real-ip",
    }
)
# What the platform in front of us (AppAPI's PHP proxy, HaRP) adds to every request.
APPAPI: Final = frozenset(
    {
        "authorization-app-api",
        "ex-app-id",
        "ex-app-version",
        "ex-app-user-id",
        "aa-version",
        "aa-request-id",
        "harp-shared-key",
        "ex-app-host",
        "ex-app-port",
        "x-origin-ip",
    }
)
APPAPI_PREFIXES: Final = ("aa-", "ex-app-", "harp-")

# aiohttp adds these when absent; a transparent proxy must not invent them (an invented
# Accept-Encoding would bring back encodings the client never asked for).
_SKIP_AUTO_HEADERS: Final = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
REPLAYABLE_METHODS: Final = frozenset({"GET", "HEAD"})
SSE_KEEPALIVE: Final = b": keep-alive\n\n"
SMALL_BODY_BYTES: Final = 64 * 1024
# How long a small body may take after its headers when no idle cap applies (HaRP).
SMALL_BODY_READ_SECONDS: Final = 60.0
# Where relay(method="HEAD") of another verb puts the upstream's Content-Length.
TUNNELLED_HEAD_LENGTH: Final = "X-Beeflow-Content-Length"

HeaderSource = Mapping[str, str] | CIMultiDictProxy[str] | MultiDictProxy[str] | CIMultiDict[str]


def filter_headers(
    headers: HeaderSource,
    *drop: Iterable[str],
    prefixes: tuple[str, ...] = (),
    drop_empty: bool = True,
) -> CIMultiDict[str]:
    """A copy of `headers` without the named ones (sets of lower-case names), without names
    starting with one of `prefixes`, without those its own Connection header lists, and
    (drop_empty) without empty values. Order and repetitions are kept."""
    names = _union(drop)
    listed = _getall(headers, "connection")
    if listed:
        names = names | {
            token.strip().lower() for value in listed for token in value.split(",") if token.strip()
        }
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        low = key.lower()
        if low in names or (prefixes and low.startswith(prefixes)):
            continue
        if drop_empty and not value.strip():
            continue
        out.add(key, value)
    return out


def _union(groups: tuple[Iterable[str], ...]) -> frozenset[str]:
    if all(isinstance(group, frozenset) for group in groups):
        return _union_cached(groups)
    return frozenset().union(*groups)


@functools.lru_cache(maxsize=64)
def _union_cached(groups: tuple[frozenset[str], ...]) -> frozenset[str]:
    """The named sets are module constants: their union is computed once per combination."""
    return frozenset().union(*groups)


def _getall(headers: HeaderSource, name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    return [v for k, v in headers.items() if k.lower() == name]


def _media_type(headers: HeaderSource) -> str:
    value = headers.get("Content-Type") or headers.get("content-type") or ""
    return value.split(";", 1)[0].strip().lower()


def is_event_stream(headers: HeaderSource) -> bool:
    return _media_type(headers) == "text/event-stream"


def is_encoded(headers: HeaderSource) -> bool:
    value = headers.get("Content-Encoding") or headers.get("content-encoding") or ""
    return value.strip().lower() not in ("", "identity")


# ------------------------------------------------------------------ request bodies


@attrs.frozen
class OutboundBody:
    """A request body for the upstream: nothing, bytes (replayable), or a one-shot stream."""

    data: bytes | AsyncIterable[bytes] | None = None
    length: int | None = None

    @property
    def replayable(self) -> bool:
        return self.data is None or isinstance(self.data, bytes)


NO_BODY: Final = OutboundBody()


def _never(_content_type: str) -> bool:
    return False


async def outbound_body(
    request: web.BaseRequest,
    *,
    buffer_when_unsized: Callable[[str], bool] = _never,
) -> OutboundBody:
    """The inbound body as it should go upstream: streamed, or buffered when its length is
    unknown and `buffer_when_unsized(content_type)` says the upstream needs a length."""
    if not request.body_exists:
        return NO_BODY
    length = request.content_length
    if length is None and buffer_when_unsized(request.content_type):
        data = await request.read()  # bounded by client_max_size (413 payload_too_large)
        return OutboundBody(data, len(data))
    return OutboundBody(_stream(request.content), length)


async def _stream(reader: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    while chunk := await reader.readany():
        yield chunk


# ------------------------------------------------------------------ the upstream client


@attrs.frozen(kw_only=True)
class PoolSettings:
    """How one upstream is reached. `name` appears in error messages and logs."""

    name: str = "The upstream service"
    connect_timeout: float = 10.0
    headers_timeout: float = 60.0
    pool_size: int = 64
    keepalive_timeout: float = 10.0
    ssl: ssl_module.SSLContext | bool = True  # True: the system trust store
    max_field_size: int = 16384


class _Dropped(aiohttp.ClientError):
    """The connection closed or reset before the response headers (see _no_builtin_replay)."""


async def _no_builtin_replay(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """aiohttp replays every idempotent method (PUT and DELETE included) once when the
    connection drops. We decide about replays ourselves, so the drop leaves aiohttp's retry
    loop as an exception type that loop does not retry."""
    try:
        return await handler(req)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise _Dropped(str(exc) or type(exc).__name__) from exc


class _Deadline:
    """The response-headers timer. While the body streams, each chunk must be accepted within
    `seconds` (waiting for the client's next chunk does not count); after the last chunk the
    headers must arrive within `seconds`."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._timeout: asyncio.Timeout | None = None

    def bind(self, timeout: asyncio.Timeout) -> None:
        self._timeout = timeout

    def unbind(self) -> None:
        self._timeout = None

    def arm(self) -> None:
        if self._timeout is not None:
            self._timeout.reschedule(asyncio.get_running_loop().time() + self._seconds)

    def pause(self) -> None:
        if self._timeout is not None:
            self._timeout.reschedule(None)

    async def pace(self, body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        iterator = aiter(body)
        while True:
            self.pause()
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            self.arm()
            yield chunk
        self.arm()


class UpstreamClient:
    """One pooled ClientSession for one upstream, with the proxy's timeout and replay rules."""

    def __init__(self, session: aiohttp.ClientSession, settings: PoolSettings) -> None:
        self.session = session
        self.settings = settings
        self._deadlines = Deadlines()

    async def send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: OutboundBody = NO_BODY,
    ) -> aiohttp.ClientResponse:
        """Send one request; the caller owns the response (relay() closes it). `headers`
        become the request's (a Content-Length is added for a streamed body of known length):
        pass a fresh multidict, as filter_headers() returns."""
        # Like the Node reference (3.3): whether the dropped connection came from the pool is
        # not asked (telling would cost aiohttp's request tracing on every request); a GET/HEAD
        # is safe to send twice, and only once more.
        retried = False
        while True:
            try:
                return await self._send_once(method, url, headers, body)
            except _Dropped:
                if not retried and method in REPLAYABLE_METHODS and body.replayable:
                    retried = True
                    log.info("%s: connection dropped, retrying %s once", self._tag, method)
                    continue
                raise BadGateway(
                    f"{self.settings.name} closed the connection before answering",
                    code="upstream_disconnected",
                ) from None

    @property
    def _tag(self) -> str:
        return self.settings.name

    async def _send_once(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: OutboundBody,
    ) -> aiohttp.ClientResponse:
        name = self.settings.name
        data = body.data
        try:
            if data is None or isinstance(data, bytes):
                async with self._deadlines.within(self.settings.headers_timeout):
                    return await self.session.request(
                        method, url, headers=headers, data=data, allow_redirects=False
                    )
            if body.length is not None:
                headers["Content-Length"] = str(body.length)
            deadline = _Deadline(self.settings.headers_timeout)
            async with asyncio.timeout(None) as timer:
                deadline.bind(timer)
                try:
                    return await self.session.request(
                        method,
                        url,
                        headers=headers,
                        data=deadline.pace(data),
                        allow_redirects=False,
                    )
                finally:
                    deadline.unbind()
        except _Dropped:
            raise
        except aiohttp.ConnectionTimeoutError:
            raise GatewayTimeout(
                f"{name} could not be reached in time", code="upstream_connect_timeout"
            ) from None
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            log.warning("%s: TLS failure: %s", name, type(exc).__name__)
            raise BadGateway(
                f"{name} failed the TLS handshake", code="upstream_tls_error"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            log.warning("%s: cannot connect: %s", name, exc.os_error.__class__.__name__)
            raise BadGateway(f"{name} is unreachable", code="upstream_unreachable") from None
        except TimeoutError:
            raise GatewayTimeout(
                f"{name} did not answer in time", code="upstream_timeout"
            ) from None
        except aiohttp.ClientResponseError as exc:
            log.warning("%s: unparseable response (%s)", name, exc.status)
            raise BadGateway(
                f"{name} sent an invalid response", code="upstream_bad_response"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("%s: request failed: %s", name, type(exc).__name__)
            raise BadGateway(f"{name} is unreachable", code="upstream_unreachable") from None


@asynccontextmanager
async def upstream_client(
    settings: PoolSettings, *, connector: aiohttp.BaseConnector | None = None
) -> AsyncIterator[UpstreamClient]:
    """The one ClientSession of an upstream, for a cleanup_ctx: bounded keep-alive pool,
    encoded bytes untouched, no cookie jar, no redirects, no total timeout."""
    if connector is None:
        connector = aiohttp.TCPConnector(
            limit=settings.pool_size,
            keepalive_timeout=settings.keepalive_timeout,
            ssl=settings.ssl,
        )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=None,
        ),
        auto_decompress=False,
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        middlewares=(_no_builtin_replay,),
        max_field_size=settings.max_field_size,
        max_line_size=settings.max_field_size,
    ) as session:
        yield UpstreamClient(session, settings)


# ------------------------------------------------------------------ the response relay


@attrs.frozen(kw_only=True)
class RelayOptions:
    keepalive_seconds: float | None = None
    idle_limit_seconds: float | None = None
    close_delimited_sse: bool = False
    default_cache_control: str | None = "no-store"
    keepalive_comment: bytes = SSE_KEEPALIVE
    # End an event stream that the upstream broke, or the idle cap ended, with an
    # `event: error` (at an event boundary): for framings that cannot show a cut
    # (close-delimited, where the end of the connection is the end of the body). Not after an
    # event named in `sse_final_events`: the reply was complete.
    sse_error_events: bool = False
    sse_final_events: frozenset[bytes] = frozenset()


class _Boundary:
    """Whether the bytes relayed so far end between two SSE events (a blank line)."""

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b"\n\n"  # the start of a stream is a boundary

    def feed(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk[-4:])[-4:]  # never copy the whole chunk

    @property
    def at_boundary(self) -> bool:
        tail = self.tail
        return (
            tail.endswith(b"\n\n")
            or tail.endswith(b"\r\n\r\n")
            or tail.endswith(b"\n\r\n")
            or tail.endswith(b"\r\r")
        )


def _close_delimited(resp: web.StreamResponse) -> None:
    """Frame the body by closing the connection: no Content-Length, no Transfer-Encoding.

    aiohttp 3.14 switches every HTTP/1.1 StreamResponse without a length to chunked in
    `_prepare_headers` unless the private `_length_check` is False (meant for websockets).
    This is the only private aiohttp attribute the connector touches: pyproject pins the
    aiohttp range and tests/proxy/test_streaming.py reads the raw bytes off the socket.
    """
    resp.force_close()
    resp._length_check = False


def _response_headers(
    upstream: aiohttp.ClientResponse, options: RelayOptions
) -> tuple[CIMultiDict[str], bool]:
    headers = filter_headers(
        upstream.headers, HOP_BY_HOP, RESPONSE_FRAMING, APPAPI, drop_empty=False
    )
    sse = is_event_stream(upstream.headers)
    if sse:
        headers["X-Accel-Buffering"] = "no"
        headers["Cache-Control"] = "no-cache, no-transform"
    elif options.default_cache_control and "Cache-Control" not in headers:
        headers["Cache-Control"] = options.default_cache_control
    return headers, sse


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    options: RelayOptions,
    *,
    edit_headers: Callable[[aiohttp.ClientResponse, CIMultiDict[str]], None] | None = None,
    method: str | None = None,
) -> web.StreamResponse:
    """Stream `upstream` back to the client (see the module docstring). Always closes or
    releases `upstream`. `method` is the one sent upstream when it differs from the
    request's: a HEAD tunnelled in a POST is answered with no body, `Content-Length: 0`, and
    the upstream's length in TUNNELLED_HEAD_LENGTH."""
    head = (method or request.method) == "HEAD"
    complete = False
    try:
        headers, sse = _response_headers(upstream, options)
        if edit_headers is not None:
            edit_headers(upstream, headers)
        length = _content_length(upstream)
        if head and request.method != "HEAD":
            # A HEAD tunnelled in another verb: the client expects a body for ITS verb, so the
            # answer carries none (Content-Length: 0) and the length moves to its own header.
            if length is not None:
                headers[TUNNELLED_HEAD_LENGTH] = str(length)
            complete = True
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers)
        if (
            length is not None
            and length <= SMALL_BODY_BYTES
            and not sse
            and not head
            and upstream.status not in (204, 304)
        ):
            # A small body with a known length: read it (it usually came with the headers)
            # and answer with web.Response, which writes headers and body in ONE send.
            body = await _read_small(upstream, options)
            complete = True
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None:
            resp.content_length = length
        elif sse and options.close_delimited_sse:
            _close_delimited(resp)
        try:
            await resp.prepare(request)
            if head or upstream.status in (204, 304):
                complete = True
                return resp
            complete = await _pump(request, upstream, resp, options, sse=sse)
        except ConnectionResetError:
            # The client went away mid-write: nothing to answer; the upstream closes below.
            log.debug("client left %s %s", request.method, loggable_path(request.path))
        return resp
    finally:
        if complete:
            upstream.release()
        else:
            upstream.close()


async def _read_small(upstream: aiohttp.ClientResponse, options: RelayOptions) -> bytes:
    """The whole (small) body, or a JSON error: nothing was sent to the client yet."""
    if upstream.content.is_eof():
        # It all came with the headers (the usual case): no timer needed to read it.
        return await upstream.read()
    limit = options.idle_limit_seconds or SMALL_BODY_READ_SECONDS
    try:
        async with asyncio.timeout(limit):
            return await upstream.read()
    except TimeoutError:
        raise GatewayTimeout(
            f"The upstream sent its headers but not its body within {limit:g} s",
            code="upstream_timeout",
        ) from None
    except aiohttp.ClientError as exc:
        log.warning("upstream body broke before it was complete (%s)", type(exc).__name__)
        raise BadGateway(
            "The upstream closed the connection before its answer was complete",
            code="upstream_disconnected",
        ) from None


def _content_length(upstream: aiohttp.ClientResponse) -> int | None:
    value = upstream.headers.get("Content-Length")
    if value is None or "Transfer-Encoding" in upstream.headers:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


async def _pump(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    resp: web.StreamResponse,
    options: RelayOptions,
    *,
    sse: bool,
) -> bool:
    """Copy the body chunk by chunk. True when the upstream body ended normally."""
    reader = upstream.content
    keepalive = options.keepalive_seconds if sse and not is_encoded(upstream.headers) else None
    idle_limit = options.idle_limit_seconds
    count = _Count()
    timed = keepalive is not None or idle_limit is not None or (sse and options.sse_error_events)
    try:
        if not timed:
            async for chunk in reader.iter_any():
                await resp.write(chunk)
                count.relayed += len(chunk)
        elif not await _timed_pump(
            request, reader, resp, options, count, keepalive, idle_limit, sse=sse
        ):
            return False
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning(
            "upstream body of %s %s broke after %d bytes (%s); closing the client connection",
            request.method,
            loggable_path(request.path),
            count.relayed,
            type(exc).__name__,
        )
        if sse and options.sse_error_events and count.unfinished(options):
            await _error_event(
                resp,
                "upstream_disconnected",
                "The Bee Flow service stopped in the middle of the reply; it is incomplete",
            )
        _close_client(request)
        return False
    await resp.write_eof()
    return True


class _Count:
    """What a pump relayed so far (also read after it failed)."""

    __slots__ = ("boundary", "last_event", "relayed")

    def __init__(self) -> None:
        self.relayed = 0
        self.boundary = _Boundary()
        self.last_event = b""

    def note_event_name(self, chunk: bytes) -> None:
        """Remember the last `event:` name seen (only where error events are on: a name split
        across two chunks is missed, which at worst adds or omits one error event)."""
        at = chunk.rfind(b"event:")
        if at >= 0 and (at == 0 or chunk[at - 1 : at] in (b"\n", b"\r")):
            end = chunk.find(b"\n", at)
            self.last_event = chunk[at + 6 : end if end >= 0 else None].strip()

    def unfinished(self, options: RelayOptions) -> bool:
        """At an event boundary, and the last event did not end the reply."""
        return self.boundary.at_boundary and self.last_event not in options.sse_final_events


async def _error_event(resp: web.StreamResponse, code: str, message: str) -> None:
    """An SSE `error` event the UI renders (data: {"code", "error"}); the client may be gone."""
    data = json.dumps({"code": code, "error": message}, separators=(",", ":")).encode()
    with contextlib.suppress(ConnectionError):
        await resp.write(b"event: error\ndata: " + data + b"\n\n")


class _ReadDeadline:
    """One timer for a whole stream that only ever interrupts a read.

    A new `asyncio.timeout_at` per chunk (a Timeout, a TimerHandle scheduled and cancelled)
    cost a fifth of the connector's CPU per event at 200 streams. And one `asyncio.timeout`
    around the whole loop is not safe: it would also fire while a write waits for the client,
    and cancelling aiohttp's drain leaves its shared drain waiter cancelled, which breaks
    every later write on that connection. So the timer cancels the task only while it waits
    in `read()`; a deadline that passes during a write is reported by the next `read()`.

    The deadline only ever moves earlier (`at_most`); one that fires early (bytes flowed
    meanwhile) is re-checked by the caller against the real times and re-armed. Cancellation
    follows asyncio.timeout's protocol (cancelling/uncancel), so a cancel from anyone else
    (the client left) is never swallowed.
    """

    __slots__ = ("_fired", "_handle", "_loop", "_reading", "_task", "_when")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self._when: float | None = None
        self._reading = False
        self._fired = False

    def at_most(self, when: float | None) -> None:
        """Fire no later than `when` (None: no new deadline; an armed one stays)."""
        if when is None or (self._when is not None and self._when <= when):
            return
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = self._when = None
        self._fired = True
        if self._reading:
            self._task.cancel()

    async def read(self, reader: aiohttp.StreamReader) -> bytes | None:
        """The next chunk (b"" at the end), or None when the deadline passed first."""
        if self._take():
            return None
        cancelling = self._task.cancelling()
        self._reading = True
        try:
            return await reader.readany()
        except asyncio.CancelledError:
            # Ours (the deadline fired) and no other cancel pending: a deadline, not an end.
            if self._take() and self._task.uncancel() <= cancelling:
                return None
            raise
        finally:
            self._reading = False

    def _take(self) -> bool:
        fired, self._fired = self._fired, False
        return fired

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = self._when = None


async def _timed_pump(
    request: web.Request,
    reader: aiohttp.StreamReader,
    resp: web.StreamResponse,
    options: RelayOptions,
    count: _Count,
    keepalive: float | None,
    idle_limit: float | None,
    *,
    sse: bool,
) -> bool:
    """The pump with keep-alive comments (event streams) and/or an idle cap. True when the
    upstream body ended, False when the idle cap ended the response."""
    loop = asyncio.get_running_loop()
    boundary = count.boundary
    names = sse and options.sse_error_events and bool(options.sse_final_events)
    last_byte = last_write = loop.time()
    deadline = _ReadDeadline()

    def due() -> float | None:
        when = None if idle_limit is None else last_byte + idle_limit
        if keepalive is not None and boundary.at_boundary:
            ka_due = last_write + keepalive
            when = ka_due if when is None else min(when, ka_due)
        return when

    try:
        deadline.at_most(due())
        while True:
            chunk = await deadline.read(reader)
            if chunk is None:  # a deadline passed: check what is really due
                now = loop.time()
                if idle_limit is not None and now - last_byte >= idle_limit:
                    _end_idle(request, resp, idle_limit, count.relayed, sse=sse)
                    if sse:
                        if options.sse_error_events and count.unfinished(options):
                            await _error_event(
                                resp,
                                "upstream_idle",
                                f"The Bee Flow service sent nothing for {idle_limit:g} s; "
                                "the reply was ended",
                            )
                        await resp.write_eof()
                    return False
                if keepalive is not None and boundary.at_boundary and now - last_write >= keepalive:
                    await resp.write(options.keepalive_comment)
                    last_write = loop.time()
                deadline.at_most(due())
                continue
            if not chunk:
                return True
            count.relayed += len(chunk)
            boundary.feed(chunk)
            if names:
                count.note_event_name(chunk)
            await resp.write(chunk)
            last_byte = last_write = loop.time()
            deadline.at_most(due())
    finally:
        deadline.close()


def _end_idle(
    request: web.Request, resp: web.StreamResponse, limit: float, relayed: int, *, sse: bool
) -> None:
    log.info(
        "%s %s: no upstream byte for %gs after %d bytes; ending the response",
        request.method,
        loggable_path(request.path),
        limit,
        relayed,
    )
    resp.force_close()
    if not sse:
        _close_client(request)


def _close_client(request: web.Request) -> None:
    """End the client connection without a clean end of body, so the client sees the cut."""
    transport = request.transport
    if transport is not None:
        transport.close()
