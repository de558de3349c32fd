"""The upstream side of the streaming proxies: request bodies, one pooled client per upstream, and
the response-headers deadlines.

    OutboundBody(data, length), NO_BODY
    await outbound_body(request, buffer_when_unsized=pred) -> OutboundBody
        Streams the inbound body. A body of unknown length (chunked) whose Content-Type makes
        pred(content_type) true is read whole (bounded by client_max_size: 413) so it can go on
        with a Content-Length. A stream is never replayed.
    PoolSettings(name, connect_timeout, headers_timeout, pool_size, keepalive_timeout, ssl)
    async with upstream_client(settings) as client: ...   -> UpstreamClient (for a cleanup_ctx)
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

The headers deadline of a bodyless request is a coarse one (Deadlines: one ticker for every
pending request instead of a loop timer each). `asyncio.timeout` schedules a TimerHandle for
every operation and cancels it when the operation ends in time; for the headers deadline of
every proxied request (tens of seconds, nearly always met) that was about 15 µs per request on
the benchmark machine, roughly 5 % of the connector's CPU. Here an operation costs a dict insert
and delete. A deadline fires between its due time and `resolution` seconds later; cancellation
follows asyncio.timeout's protocol (cancelling/uncancel), so a cancel from anyone else is never
turned into a TimeoutError.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Final

import aiohttp
import attrs
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from beeflow.errors import BadGateway, GatewayTimeout

log = logging.getLogger(__name__)

# aiohttp adds these when absent; a transparent proxy must not invent them (an invented
# Accept-Encoding would bring back encodings the client never asked for).
_SKIP_AUTO_HEADERS: Final = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
REPLAYABLE_METHODS: Final = frozenset({"GET", "HEAD"})

# ------------------------------------------------------------------ request bodies


@attrs.frozen
class OutboundBody:
    """A request body for the upstream: nothing, bytes (replayable; a bytearray read whole is
    sent without a copy), or a one-shot stream."""

    data: bytes | bytearray | AsyncIterable[bytes] | None = None
    length: int | None = None

    @property
    def replayable(self) -> bool:
        return self.data is None or isinstance(self.data, bytes | bytearray)


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


# ------------------------------------------------------------------ coarse deadlines

DEFAULT_RESOLUTION: Final = 0.25


class Deadlines:
    """The pending deadlines of one owner (one per upstream client)."""

    def __init__(self, resolution: float = DEFAULT_RESOLUTION) -> None:
        self._resolution = resolution
        self._pending: dict[Within, None] = {}  # an insertion-ordered set
        self._tick: asyncio.TimerHandle | None = None
        self._tick_at = 0.0

    def within(self, seconds: float) -> Within:
        return Within(self, seconds)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _add(self, item: Within, loop: asyncio.AbstractEventLoop) -> None:
        self._pending[item] = None
        if self._tick is None or item.due < self._tick_at:
            if self._tick is not None:
                self._tick.cancel()
            self._schedule(loop, min(item.due, loop.time() + self._resolution))

    def _discard(self, item: Within) -> None:
        self._pending.pop(item, None)
        if not self._pending and self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def _schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._tick_at = when
        self._tick = loop.call_at(when, self._fire_due, loop)

    def _fire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tick = None
        now = loop.time()
        due = [item for item in self._pending if item.due <= now]
        for item in due:
            del self._pending[item]
            item.fire()
        if self._pending:
            earliest = min(item.due for item in self._pending)
            self._schedule(loop, max(min(earliest, now + self._resolution), now))


class Within:
    """One operation's deadline: an async context manager, used once."""

    __slots__ = ("_cancelling", "_fired", "_owner", "_seconds", "_task", "due")

    def __init__(self, owner: Deadlines, seconds: float) -> None:
        self._owner = owner
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._fired = False
        self.due = 0.0

    async def __aenter__(self) -> Within:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.within() must be used inside a task")
        loop = asyncio.get_running_loop()
        self._task = task
        self._cancelling = task.cancelling()
        self.due = loop.time() + self._seconds
        self._owner._add(self, loop)
        return self

    def fire(self) -> None:
        assert self._task is not None
        self._fired = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._discard(self)
        if self._fired:
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


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


class _PacedDeadline:
    """The response-headers timer of a streamed request body. While the body streams, each
    chunk must be accepted within `seconds` (waiting for the client's next chunk does not
    count); after the last chunk the headers must arrive within `seconds`."""

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
        # Whether the dropped connection came from the pool is not asked (telling would cost
        # aiohttp's request tracing on every request): a GET/HEAD is safe to send twice, and
        # only once more (docs/proxy.md, "Timeouts, retries, errors").
        retried = False
        while True:
            try:
                return await self._send_once(method, url, headers, body)
            except _Dropped:
                if not retried and method in REPLAYABLE_METHODS and body.replayable:
                    retried = True
                    log.info("%s: connection dropped, retrying %s once", self.settings.name, method)
                    continue
                raise BadGateway(
                    f"{self.settings.name} closed the connection before answering",
                    code="upstream_disconnected",
                ) from None

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
            if data is None or isinstance(data, bytes | bytearray):
                async with self._deadlines.within(self.settings.headers_timeout):
                    return await self.session.request(
                        method, url, headers=headers, data=data, allow_redirects=False
                    )
            if body.length is not None:
                headers["Content-Length"] = str(body.length)
            deadline = _PacedDeadline(self.settings.headers_timeout)
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
