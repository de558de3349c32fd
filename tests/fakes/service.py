"""A fake Bee Flow service: a real aiohttp app on a loopback socket that records every request.

Serves (each path also without the /api prefix where the real service has no prefix):
    GET  /api/health                    {"status": "ok"}
    ANY  /api/json                      JSON (application/json; charset=utf-8, no Cache-Control)
    GET  /api/cached                    JSON with its own Cache-Control: private, max-age=60
    GET  /api/download?size=N&chunk=M[&length=1]   N deterministic bytes (pattern_bytes), in
                                        chunks of M, chunked unless length=1
    ANY  /api/echo                      the request body back (same Content-Type) + X-Echo-*
    GET  /api/cookies                   two Set-Cookie headers
    GET  /api/slow?delay=S              headers only after S seconds
    ANY  /api/reset                     the connection is aborted before any answer
    GET  /api/redirect                  302 to /api/json (a proxy must not follow it)
    ANY  /api/status/{code}             that status with a JSON body
    POST [/api]/ai/chat/direct/stream   SSE chat stream per `service.sse` (a StreamPlan)
    POST [/api]/agents/{id}/chat/stream the same
    GET  /api/stream                    the same, as a GET
Anything else: 404 JSON (still recorded).

Behaviour knobs: `service.sse` (StreamPlan: pieces with delays or gates, gzip, end or hold),
`service.gate` (a queue the test feeds to release gated pieces), `service.drop_reused = n`
(the next n requests arriving on an already used keep-alive connection are aborted unanswered:
a stale pooled connection as the client sees it).

Extension hook: `FakeService(extra_routes=[web.post("/auth/x", handler), ...])` or
`service.add_routes([...])` before start(); extra routes are recorded like the built-in ones and
take precedence over the catch-all.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs
from aiohttp import web
from multidict import CIMultiDict, MultiDict
from yarl import URL

Handler = Callable[[web.Request], Any]


def pattern_bytes(size: int) -> bytes:
    """Deterministic, non-repeating-looking bytes for download checks."""
    block = bytes(range(256)) * 4
    full, rest = divmod(size, len(block))
    return block * full + block[:rest]


def sse_event(event: str, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


@attrs.frozen
class Piece:
    """One write of a stream: wait `delay` seconds (or for a gate release), then send `data`."""

    data: bytes
    delay: float = 0.0
    gated: bool = False


def chat_pieces(
    texts: Iterable[str] = ("Hello", " world", "!"),
    *,
    interval: float = 0.0,
    conversation_id: str = "conv-1",
    gated: bool = False,
) -> list[Piece]:
    """conversation_created, one content event per text, done; `interval` before each but the
    first (or a gate release before each when gated)."""
    events = [sse_event("conversation_created", {"conversationId": conversation_id})]
    events += [sse_event("content", {"text": t}) for t in texts]
    events.append(sse_event("done", {"conversationId": conversation_id}))
    return [
        Piece(data, delay=0.0 if i == 0 else interval, gated=gated and i > 0)
        for i, data in enumerate(events)
    ]


def _pieces(value: Iterable[Piece]) -> tuple[Piece, ...]:
    return tuple(value)


@attrs.frozen
class StreamPlan:
    pieces: tuple[Piece, ...] = attrs.field(factory=lambda: tuple(chat_pieces()), converter=_pieces)
    gzip: bool = False
    # "end": finish the response after the last piece; "hold": keep it open, sending nothing,
    # until the client goes away or the service closes; "abort": cut the connection (no clean
    # end of the chunked body).
    then: Literal["end", "hold", "abort"] = "end"
    content_type: str = "text/event-stream"


@attrs.define
class StreamLog:
    """What one streaming handler did: when each piece left, and how it ended."""

    path: str
    opened_at: float
    sent_at: list[float] = attrs.field(factory=list)
    sent_bytes: bytearray = attrs.field(factory=bytearray)
    closed_at: float | None = None
    client_gone: bool = False
    ended: asyncio.Event = attrs.field(factory=asyncio.Event)


@attrs.define
class Recorded:
    method: str
    path: str
    raw_path: str
    query: MultiDict[str]
    headers: CIMultiDict[str]
    body: bytes
    arrived_at: float
    connection_request_no: int
    dropped: bool = False
    # Set when the handler finished; `cancelled` if it ended because the client went away.
    finished: asyncio.Event = attrs.field(factory=asyncio.Event)
    cancelled: bool = False
    finished_at: float | None = None


class FakeService:
    """Build, start on 127.0.0.1 (ephemeral port), record, stop."""

    def __init__(self, *, extra_routes: Iterable[web.AbstractRouteDef] = ()) -> None:
        self.requests: list[Recorded] = []
        self.streams: list[StreamLog] = []
        self.sse = StreamPlan()
        self.gate: asyncio.Queue[None] = asyncio.Queue()
        self.drop_reused = 0
        self._extra: list[web.AbstractRouteDef] = list(extra_routes)
        self._per_conn: dict[object, int] = {}
        self._arrival = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url: URL | None = None
        self._app: web.Application | None = None

    # ------------------------------------------------------------------ lifecycle

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        if self._app is not None:
            raise RuntimeError("add routes before the service app is built")
        self._extra.extend(routes)

    @property
    def app(self) -> web.Application:
        if self._app is None:
            self._app = self._build()
        return self._app

    @property
    def url(self) -> URL:
        assert self._url is not None, "start() first"
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> URL:
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockname = self._runner.addresses[0]
        self._url = URL.build(scheme="http", host=host, port=int(sockname[1]))
        return self._url

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ assertions helpers

    def find(self, path: str, method: str | None = None) -> list[Recorded]:
        return [
            r
            for r in self.requests
            if r.path == path and (method is None or r.method == method.upper())
        ]

    def last(self, path: str | None = None) -> Recorded:
        matches = [r for r in self.requests if path is None or r.path == path]
        assert matches, f"no request to {path!r} was recorded"
        return matches[-1]

    async def wait_for(
        self, predicate: Callable[[Recorded], bool], *, timeout: float = 5.0
    ) -> Recorded:
        """The first recorded request matching `predicate` (waits for it to arrive)."""
        async with asyncio.timeout(timeout), self._arrival:
            while True:
                for rec in self.requests:
                    if predicate(rec):
                        return rec
                await self._arrival.wait()

    async def wait_stream(self, index: int = 0, *, timeout: float = 5.0) -> StreamLog:
        async with asyncio.timeout(timeout), self._arrival:
            while len(self.streams) <= index:
                await self._arrival.wait()
            return self.streams[index]

    # ------------------------------------------------------------------ the app

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._record], client_max_size=1024**3)
        app.router.add_routes(self._extra)
        r = app.router
        for prefix in ("/api", ""):
            r.add_post(prefix + "/ai/chat/direct/stream", self._stream)
            r.add_post(prefix + r"/agents/{agent}/chat/stream", self._stream)
        r.add_get("/api/health", self._health)
        r.add_route("*", "/api/json", self._json)
        r.add_get("/api/cached", self._cached)
        r.add_get("/api/download", self._download)
        r.add_route("*", "/api/echo", self._echo)
        r.add_get("/api/cookies", self._cookies)
        r.add_get("/api/slow", self._slow)
        r.add_route("*", "/api/reset", self._reset)
        r.add_get("/api/redirect", self._redirect)
        r.add_route("*", r"/api/status/{code:\d{3}}", self._status)
        r.add_get("/api/stream", self._stream)
        r.add_route("*", "/{tail:.*}", self._not_found)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        arrived = time.monotonic()
        # A connection is known by the client's (address, port) while it lives.
        peer = request.transport.get_extra_info("peername") if request.transport else None
        count = self._per_conn.get(peer, 0) + 1
        self._per_conn[peer] = count
        drop = count > 1 and self.drop_reused > 0
        if drop:
            self.drop_reused -= 1
            body = b""
        else:
            body = await request.read()
        rec = Recorded(
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            query=MultiDict(request.query),
            headers=CIMultiDict(request.headers),
            body=body,
            arrived_at=arrived,
            connection_request_no=count,
            dropped=drop,
        )
        async with self._arrival:
            self.requests.append(rec)
            self._arrival.notify_all()
        try:
            if drop:
                return _abort(request)
            response: web.StreamResponse = await handler(request)
            return response
        except asyncio.CancelledError:
            rec.cancelled = True
            raise
        finally:
            rec.finished_at = time.monotonic()
            rec.finished.set()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _json(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "ok": True,
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
            }
        )

    async def _cached(self, request: web.Request) -> web.Response:
        return web.json_response({"cached": True}, headers={"Cache-Control": "private, max-age=60"})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "1048576"))
        chunk = int(request.query.get("chunk", "65536"))
        data = pattern_bytes(size)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("length") == "1":
            resp.content_length = size
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        for start in range(0, size, chunk):
            await resp.write(data[start : start + chunk])
        await resp.write_eof()
        return resp

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(
            body=body,
            headers={
                "Content-Type": request.headers.get("Content-Type", "application/octet-stream"),
                "X-Echo-Method": request.method,
                "X-Echo-Length": str(len(body)),
            },
        )

    async def _cookies(self, request: web.Request) -> web.Response:
        resp = web.json_response({"cookies": 2})
        resp.headers.add("Set-Cookie", "a=1; Path=/; HttpOnly")
        resp.headers.add("Set-Cookie", "b=2; Path=/; Secure")
        return resp

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "5")))
        return web.json_response({"slow": True})

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        return _abort(request)

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/api/json")

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.json_response({"status": code}, status=code)

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "no such route"}, status=404)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        plan = self.sse
        log = StreamLog(path=request.path, opened_at=time.monotonic())
        async with self._arrival:
            self.streams.append(log)
            self._arrival.notify_all()
        headers = {"Content-Type": plan.content_type, "Cache-Control": "no-cache"}
        if plan.gzip:
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(headers=headers)
        compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS) if plan.gzip else None
        try:
            await resp.prepare(request)
            for piece in plan.pieces:
                if piece.gated:
                    await self.gate.get()
                elif piece.delay:
                    await asyncio.sleep(piece.delay)
                data = piece.data
                if compressor is not None:
                    data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
                await resp.write(data)
                log.sent_at.append(time.monotonic())
                log.sent_bytes += data
            if compressor is not None:
                tail = compressor.flush(zlib.Z_FINISH)
                await resp.write(tail)
                log.sent_bytes += tail
            if plan.then == "abort":
                _abort(request)
                return resp
            if plan.then == "hold":
                await self._closing.wait()
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            log.client_gone = True
            raise
        finally:
            log.closed_at = time.monotonic()
            log.ended.set()
        return resp


def _abort(request: web.Request) -> web.Response:
    """Close the connection without answering (the client sees a reset/disconnect)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


def gunzip(data: bytes) -> bytes:
    return gzip.decompress(data)
