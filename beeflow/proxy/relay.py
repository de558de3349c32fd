"""The streaming core of both proxies: an upstream response relayed to the client as it arrives.

Knows no peer: what differs between the /api and /nc proxies comes in RelayOptions.

    RelayOptions(keepalive_seconds, idle_limit_seconds, close_delimited_sse,
                 default_cache_control, keepalive_comment, error_events)
    await relay(request, upstream, options, edit_headers=None, method=None) -> web.StreamResponse
        An informational status (1xx, e.g. 101 Switching Protocols) is never relayed: 502
        upstream_bad_response, the upstream connection closed. Otherwise
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
        - error_events: how an event stream the upstream broke, or the idle cap ended, is
          closed with an `event: error` (sse.ErrorEvents); None adds none.
        - ending, ending_events: once `ending` is set (the drain deadline), an event stream
          still open ends at its next event boundary with the `error` event
          `ending_events.restarting()` (none after a final event) and a clean end of the
          body; one that reaches no boundary within ENDING_SECONDS is cut.
        A client disconnect (handler cancellation, or a failed write) closes the upstream
        connection at once. An upstream failure after the response started closes the client
        connection (no clean end of a chunked body) and is logged once.

Requires handler cancellation on the runner (cli and aiohttp's test server enable it) for an
idle stream to notice its client going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final, Protocol

import aiohttp
import attrs
from aiohttp import web
from multidict import CIMultiDict

from beeflow.errors import BadGateway, GatewayTimeout
from beeflow.proxy.deadline import ReadDeadline
from beeflow.proxy.headers import (
    APPAPI,
    HOP_BY_HOP,
    RESPONSE_FRAMING,
    filter_headers,
    is_encoded,
    is_event_stream,
)
from beeflow.proxy.sse import KEEPALIVE_COMMENT, ErrorEvents, EventTracker, write_error_event
from beeflow.redact import loggable_path

log = logging.getLogger(__name__)

SMALL_BODY_BYTES: Final = 64 * 1024
# How long a small body may take after its headers when no idle cap applies (HaRP).
SMALL_BODY_READ_SECONDS: Final = 60.0
# Where relay(method="HEAD") of another verb puts the upstream's Content-Length.
TUNNELLED_HEAD_LENGTH: Final = "X-Beeflow-Content-Length"


# After `ending` is set, how long a stream in the middle of an event may take to finish it.
ENDING_SECONDS: Final = 0.4


class Ending(Protocol):
    """Set once when open streams must end (web.draining.StreamEnd at the drain deadline)."""

    def is_set(self) -> bool: ...
    def subscribe(self, callback: Callable[[], None]) -> None: ...
    def unsubscribe(self, callback: Callable[[], None]) -> None: ...


@attrs.frozen(kw_only=True)
class RelayOptions:
    """How one proxy's answers are relayed (see the module docstring)."""

    keepalive_seconds: float | None = None
    idle_limit_seconds: float | None = None
    close_delimited_sse: bool = False
    default_cache_control: str | None = "no-store"
    keepalive_comment: bytes = KEEPALIVE_COMMENT
    error_events: ErrorEvents | None = None
    ending: Ending | None = None
    ending_events: ErrorEvents | None = None


def _close_delimited(resp: web.StreamResponse) -> None:
    """Frame the body by closing the connection: no Content-Length, no Transfer-Encoding.

    aiohttp 3.14 switches every HTTP/1.1 StreamResponse without a length to chunked in
    `_prepare_headers` unless the private `_length_check` is False (meant for websockets).
    This is the only private aiohttp attribute the connector touches: pyproject pins the
    aiohttp range and tests/proxy/test_relay_framing.py reads the raw bytes off the socket.
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
        if upstream.status < 200:
            # aiohttp's client skips 100/102/103 before a final status, but hands over a 101
            # (or a 1xx the upstream never followed up): relayed, it would switch the client's
            # connection to whatever the upstream speaks next.
            log.warning("upstream answered %d as its final status", upstream.status)
            raise BadGateway(
                "The upstream answered with an informational status (1xx) instead of an answer",
                code="upstream_bad_response",
            )
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
    errors = options.error_events if sse else None
    progress = _Progress()
    ending = options.ending if sse and not is_encoded(upstream.headers) else None
    timed = (
        keepalive is not None or idle_limit is not None or errors is not None or ending is not None
    )
    try:
        if not timed:
            async for chunk in reader.iter_any():
                await resp.write(chunk)
                progress.relayed += len(chunk)
        elif not await _timed_pump(
            request, reader, resp, options, progress, keepalive, idle_limit, errors, sse=sse
        ):
            return False
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning(
            "upstream body of %s %s broke after %d bytes (%s); closing the client connection",
            request.method,
            loggable_path(request.path),
            progress.relayed,
            type(exc).__name__,
        )
        if errors is not None and progress.events.unfinished(errors):
            await write_error_event(resp, *errors.disconnected())
        _close_client(request)
        return False
    await resp.write_eof()
    return True


class _Progress:
    """What a pump relayed so far (also read after it failed)."""

    __slots__ = ("events", "relayed")

    def __init__(self) -> None:
        self.relayed = 0
        self.events = EventTracker()


async def _timed_pump(
    request: web.Request,
    reader: aiohttp.StreamReader,
    resp: web.StreamResponse,
    options: RelayOptions,
    progress: _Progress,
    keepalive: float | None,
    idle_limit: float | None,
    errors: ErrorEvents | None,
    *,
    sse: bool,
) -> bool:
    """The pump with keep-alive comments (event streams) and/or an idle cap. True when the
    upstream body ended, False when the idle cap ended the response."""
    loop = asyncio.get_running_loop()
    events = progress.events
    boundary = events.boundary
    ending = options.ending if sse else None
    finals = options.ending_events
    names = any(e is not None and e.final_events for e in (errors, finals if ending else None))
    last_byte = last_write = loop.time()
    cut_at: float | None = None  # once ending: by when the event in progress must finish
    deadline = ReadDeadline()

    def due() -> float | None:
        when = None if idle_limit is None else last_byte + idle_limit
        if keepalive is not None and boundary.at_boundary:
            ka_due = last_write + keepalive
            when = ka_due if when is None else min(when, ka_due)
        if cut_at is not None:
            when = cut_at if when is None else min(when, cut_at)
        return when

    if ending is not None:
        ending.subscribe(deadline.wake)
        if ending.is_set():
            deadline.wake()
    try:
        deadline.at_most(due())
        while True:
            chunk = await deadline.read(reader)
            if ending is not None and ending.is_set():
                if boundary.at_boundary:
                    await _end_stream(request, resp, events, finals)
                    return False
                if cut_at is None:
                    cut_at = loop.time() + ENDING_SECONDS
                elif loop.time() >= cut_at:
                    log.info(
                        "%s %s: no event boundary within %g s of the drain deadline; cut",
                        request.method,
                        loggable_path(request.path),
                        ENDING_SECONDS,
                    )
                    _close_client(request)
                    return False
            if chunk is None:  # a deadline passed: check what is really due
                now = loop.time()
                if idle_limit is not None and now - last_byte >= idle_limit:
                    _end_idle(request, resp, idle_limit, progress.relayed, sse=sse)
                    if sse:
                        if errors is not None and events.unfinished(errors):
                            await write_error_event(resp, *errors.idle(idle_limit))
                        await resp.write_eof()
                    return False
                if keepalive is not None and boundary.at_boundary and now - last_write >= keepalive:
                    await resp.write(options.keepalive_comment)
                    last_write = loop.time()
                deadline.at_most(due())
                continue
            if not chunk:
                return True
            progress.relayed += len(chunk)
            boundary.feed(chunk)
            if names:
                events.note_event_name(chunk)
            await resp.write(chunk)
            last_byte = last_write = loop.time()
            if cut_at is not None and boundary.at_boundary:
                await _end_stream(request, resp, events, finals)
                return False
            deadline.at_most(due())
    finally:
        if ending is not None:
            ending.unsubscribe(deadline.wake)
        deadline.close()


async def _end_stream(
    request: web.Request,
    resp: web.StreamResponse,
    events: EventTracker,
    finals: ErrorEvents | None,
) -> None:
    """The drain deadline, at an event boundary: say why the reply stops (unless it was
    complete), then end the body cleanly (the terminating chunk, or the close)."""
    if finals is not None and events.unfinished(finals):
        await write_error_event(resp, *finals.restarting())
    log.info("%s %s: ended at the drain deadline", request.method, loggable_path(request.path))
    resp.force_close()
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()


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
