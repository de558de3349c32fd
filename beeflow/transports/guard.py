"""Limits below aiohttp's HTTP parser, per listener: how many connections may be open at once, and
how many bytes an unfinished request head may hold (docs/security.md,
"Resource limits").

aiohttp bounds each header line (max_field_size) and the number of header lines (max_headers),
not their total: 128 lines of 16 KiB held a connection's parser at 2 MiB until the head timeout.
HAProxy in front of HaRP refuses heads over 16 KiB anyway, so a cap of 32 KiB costs nothing.

    guard = ConnectionGuard(max_connections=..., max_head_bytes=..., head_timeout=...)
    site = GuardedSite(runner, guard, sock=...)  or  GuardedSite(runner, guard, host=, port=)
        A web.BaseSite whose connections are made by guard.factory(runner.server). Over the
        connection limit a new connection gets `503 too_many_connections` (JSON, then closed)
        and never reaches aiohttp. Otherwise its protocol is aiohttp's own RequestHandler
        behind a thin delegate that watches request heads: past `max_head_bytes` the
        connection's first request gets `431 headers_too_large`, and a head begun but not
        complete within `head_timeout` gets `408 head_timeout` (JSON, then closed); a later
        request (keep-alive, pipelining: a response may be on its way) gets no answer, and the
        connection closes once the response under way is written (within LINGER_SECONDS).
        aiohttp's keep-alive timer (client_header_timeout_seconds) still closes a connection
        that sends nothing at all.

How the delegate tells head bytes from body bytes: the handler queues each request it parsed
(head complete) with its body's StreamReader; while that body is unfinished, bytes are body
bytes (not counted; a Content-Length body is fed exactly up to its end; a body the parser holds
back while the handler has not read it yet is unfinished too), otherwise they are head bytes,
fed to the parser in slices of HEAD_SLICE so a finished head is noticed within one slice.
The queue is the handler's `_messages` deque: the one private aiohttp attribute read here
(pyproject pins aiohttp's range; tests/transports/test_guard.py pins the behaviour).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from aiohttp import StreamReader, web
from aiohttp.web_protocol import RequestHandler
from yarl import URL

from beeflow.limits import Interval
from beeflow.transports.answers import answer, answering

log = logging.getLogger(__name__)

# Head bytes fed to the parser at once: the cap is enforced to within this many bytes.
HEAD_SLICE: Final = 4096
# How long a refused connection may still send (its bytes are discarded) before it is closed:
# closing at once, with its request unread, would make the kernel reset the connection and the
# client could lose the answer.
LINGER_SECONDS: Final = 1.0
# Refused connections lingering at once; beyond this they are closed without an answer.
MAX_LINGERING: Final = 256

TOO_MANY_CONNECTIONS: Final = answer(
    503,
    "Service Unavailable",
    "too_many_connections",
    "The connector has too many open connections; try again in a moment",
    **{"Retry-After": "1"},
)
HEAD_TIMEOUT: Final = answer(
    408,
    "Request Timeout",
    "head_timeout",
    "The request head was not complete in time",
)
HEAD_TOO_LARGE: Final = answer(
    431,
    "Request Header Fields Too Large",
    "headers_too_large",
    "The request head is too large",
)


class ConnectionGuard:
    """The limits of one listener, and its counters (advisory, for status())."""

    def __init__(self, *, max_connections: int, max_head_bytes: int, head_timeout: float) -> None:
        self.max_connections = max_connections
        self.max_head_bytes = max_head_bytes
        self.head_timeout = head_timeout
        self.open = 0
        self.refused = 0
        self.heads_refused = 0
        # One log line a minute at most for refused heads (a flood must not flood the log).
        self._log_interval = Interval(60.0)
        self._unlogged = 0
        self._lingering: set[_Refusal] = set()
        # Connections with an unfinished head, and when its first byte arrived (insertion order
        # is time order). One timer for all of them, armed only while there are any: a head that
        # arrives in one piece (the usual case) is never entered here.
        self._slow: dict[_Guarded, float] = {}
        self._tick: asyncio.TimerHandle | None = None

    def _head_begun(self, conn: _Guarded) -> None:
        if conn in self._slow:
            return
        loop = asyncio.get_running_loop()
        self._slow[conn] = loop.time()
        if self._tick is None:
            self._tick = loop.call_later(self.head_timeout, self._expire)

    def _head_ended(self, conn: _Guarded) -> None:
        self._slow.pop(conn, None)

    def _expire(self) -> None:
        self._tick = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn, began in list(self._slow.items()):
            if now - began < self.head_timeout:
                self._tick = loop.call_at(began + self.head_timeout, self._expire)
                return
            del self._slow[conn]
            conn.refuse(HEAD_TIMEOUT, "request head not complete within %gs", self.head_timeout)

    def _note(self, why: str) -> None:
        if not self._log_interval.ready():
            self._unlogged += 1
            return
        more, self._unlogged = self._unlogged, 0
        if more:
            log.info("%s; closing the connection (%d more since the last such line)", why, more)
        else:
            log.info("%s; closing the connection", why)

    def factory(self, server: web.Server) -> Callable[[], asyncio.BaseProtocol]:
        """The protocol factory for loop.create_server()."""

        def make() -> asyncio.BaseProtocol:
            if self.open >= self.max_connections:
                self.refused += 1
                return _Refusal(self, TOO_MANY_CONNECTIONS)
            return _Guarded(self, answering(server()))

        return make

    def close(self) -> None:
        """Close the refused connections still lingering (the listener is closing)."""
        for refusal in list(self._lingering):
            refusal.close()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def status(self) -> dict[str, int]:
        return {
            "open": self.open,
            "limit": self.max_connections,
            "refused": self.refused,
            "headsRefused": self.heads_refused,
        }


class _Refusal(asyncio.Protocol):
    """Writes one fixed answer, half-closes, discards what the client still sends, closes."""

    def __init__(self, guard: ConnectionGuard, data: bytes) -> None:
        self._guard = guard
        self._data = data
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream = _stream(transport)
        lingering = self._guard._lingering
        if len(lingering) >= MAX_LINGERING:
            stream.abort()
            return
        lingering.add(self)
        send_and_linger(stream, self._data)
        self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, self.close)

    def data_received(self, data: bytes) -> None:
        """Discarded."""

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._lingering.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _stream(transport: asyncio.BaseTransport) -> asyncio.Transport:
    # create_server only ever makes stream transports (uvloop's are not asyncio.Transport
    # subclasses, so no isinstance check).
    return transport  # type: ignore[return-value]


def send_and_linger(transport: asyncio.Transport, data: bytes) -> None:
    """Write `data`, then half-close: the client reads the answer; what it still sends is
    read and discarded until the connection closes (a close with unread bytes would reset it)."""
    transport.write(data)
    if transport.can_write_eof():
        transport.write_eof()


class _Guarded(asyncio.Protocol):
    """aiohttp's RequestHandler, with the bytes of unfinished request heads counted."""

    __slots__ = (
        "_body",
        "_guard",
        "_head",
        "_inner",
        "_length",
        "_messages",
        "_refused",
        "_seen",
        "_timer",
        "_transport",
    )

    def __init__(self, guard: ConnectionGuard, inner: RequestHandler) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._messages: deque[Any] = deque()
        self._body: StreamReader | None = None  # the body of the last request parsed
        self._length: int | None = None  # its Content-Length, if it has one
        self._head = 0  # bytes of the unfinished head (an upper bound)
        self._seen = 0  # requests parsed on this connection
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None

    # -- delegated

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard.open += 1
        self._transport = _stream(transport)
        self._inner.connection_made(transport)
        self._messages = self._inner._messages

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.open -= 1
        self._guard._head_ended(self)
        if self._timer is not None:
            self._timer.cancel()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return self._inner.eof_received()  # type: ignore[func-returns-value]

    # -- counted

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        inner = self._inner
        messages = self._messages
        parsed = False
        while data:
            body = self._body
            if body is not None and body.is_eof():
                body = None  # between requests: these bytes are (the start of) a head
            if body is None:
                piece, data = data[:HEAD_SLICE], data[HEAD_SLICE:]
            elif self._length is not None:
                left = max(self._length - body.total_bytes, 1)
                piece, data = data[:left], data[left:]
            else:
                piece, data = data, b""
            delivered = body.total_bytes if body is not None else 0
            queued = len(messages)
            inner.data_received(piece)
            new = len(messages) - queued
            head = len(piece)
            if body is not None:
                head -= body.total_bytes - delivered
                if not body.is_eof():
                    # Still inside the body. aiohttp's parser pauses while the body's buffer
                    # is full and keeps the rest of the piece until the handler reads, so
                    # total_bytes lags what arrived: those bytes are body bytes too.
                    head = 0
            if new > 0:
                parsed = True
                self._seen += new
                self._follow(messages[-1])
                if self._body is not None and not self._body.is_eof():
                    head = 0  # the piece ends inside the new request's body
                # Else at most the rest of this piece is the start of the next head.
                self._head = head
            elif body is not None:
                self._head = head  # what followed the end of the body (0 if it goes on)
            else:
                self._head += head
            if self._head > self._guard.max_head_bytes:
                self.refuse(
                    HEAD_TOO_LARGE, "request head over %d bytes", self._guard.max_head_bytes
                )
                return
        if parsed:
            self._guard._head_ended(self)
        if self._head:
            self._guard._head_begun(self)

    def _follow(self, message: Any) -> None:
        """Track the body of the request just parsed (or nothing for a parser error)."""
        parsed, payload = message
        self._body = payload if isinstance(payload, StreamReader) else None
        self._length = None
        headers = getattr(parsed, "headers", None)
        if headers is not None and not getattr(parsed, "chunked", False):
            value = headers.get("Content-Length")
            if value is not None and value.isdigit():
                self._length = int(value)

    def refuse(self, answer: bytes, why: str, limit: float) -> None:
        """Stop parsing: answer the connection's first request with `answer`; after an earlier
        request (a response may be on its way: nothing of ours may interleave), close once it
        is written."""
        self._refused = True
        self._guard._head_ended(self)
        self._guard.heads_refused += 1
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._guard._note(why % limit)
        if self._seen:
            # A response under way gets LINGER_SECONDS to finish (aiohttp's close() ends the
            # connection after it, but leaves an idle one open), then the connection closes.
            self._inner.close()
        else:
            send_and_linger(transport, answer)
        self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)


class GuardedSite(web.BaseSite):
    """A listener whose connections pass `guard`: an already bound socket (HaRP's Unix socket),
    or a TCP host and port (bound here with SO_REUSEADDR, like web.TCPSite)."""

    __slots__ = ("_guard", "_host", "_port", "_sock")

    def __init__(
        self,
        runner: web.BaseRunner,
        guard: ConnectionGuard,
        *,
        sock: socket.socket | None = None,
        host: str | None = None,
        port: int = 0,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._guard = guard
        self._sock = sock
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        if self._sock is not None and self._sock.family == socket.AF_UNIX:
            return f"http://unix:{self._sock.getsockname()}:"
        return str(URL.build(scheme="http", host=self._host or "0.0.0.0", port=self._port))

    async def start(self) -> None:
        await super().start()  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        factory = self._guard.factory(server)
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(
                factory, self._host, self._port, backlog=self._backlog, reuse_address=True
            )

    async def stop(self) -> None:
        self._guard.close()
        await super().stop()
