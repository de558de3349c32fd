"""A fake Bee Flow service: a real aiohttp app on a loopback socket that records every request.

It follows the real service (`Bee-Flow/Bee-Flow`, folder `server/`) route by route for what the
connector touches; each rule cites the file it copies:

* `index.js` @5301a721, in its order: a request whose `Origin` is not an allowed front-end is
  refused 403 `{"error": "Origin not allowed"}` before anything else (the connector strips
  Origin); `auth/connectorJwt.js` runs on EVERY request (see service_control.py); `GET
  /api/health` is `{status: "ok", timestamp, appVersion, otel}` (no version, no tier);
  `GET /api/session-token` needs a session; the `/auth` routes; `/ai` (routes/ai.js); `/agents`;
  then every unmatched `/api/*` or `/auth/*` path is JSON 404 `{"error": "Not found"}` and every
  other unmatched path gets the web UI's `index.html` (200, no-store), whatever the method.
* `routes/ai/directChat/streamTurn.js` @c84312de: `POST /ai/chat/direct/stream` (requireAuth;
  400 "Message or attachments required" without either) streams SSE (`text/event-stream`,
  `no-cache`, `X-Accel-Buffering: no`): `conversation_created {conversationId}`, `content
  {text}`..., `done`. `POST /agents/<id>/chat/stream` likewise (routes/agents/chat.js).
* `routes/ai/directChat/conversationRoutes.js` @7b2a66b0: `GET /ai/direct/conversations`,
  `GET|PATCH|DELETE /ai/direct/conversations/<id>` (404 "Conversation not found"); PATCH takes
  only title, pinned, labels, knowledgeBaseIds (`.strict()`: anything else is 400
  `invalid_request`) and answers `{success: true}`. There is no POST on that path: a tunnelled
  PATCH that arrives as POST falls through to the index.html fallback.
* The shapes of those answers, from `stores/agent/directConversations.js` @64b60d63 (and
  conversationRoutes.js @e711789a): the list is a bare JSON array of the caller's own rows,
  `{id, title, model_tier, project_id, shared_scope, pinned, labels_json, created_at,
  updated_at}`, newest `updated_at` first, no paging and no query; one conversation is its row
  plus `messages` (`{role, content, timestamp}`, the assistant's also `modelId`, `modelTier`),
  `meta` and `knowledgeBaseIds`. A new conversation is titled "New Chat"
  (createDirectConversation); `routes/ai/directChat/finalizeTurn.js` @3c2dabd9 stores the turn
  (user then assistant message) when the stream ends, and a generated title when the plan
  carries a `title` event. `turn_pieces` streams a turn in the real order (streamTurn.js
  @f0722f01 + finalizeTurn.js): `model_selected`, `content`..., `conversation_created
  {conversationId}` (a new conversation only, after the content), `done {conversationId}`, then
  `title {title, conversationId}`. The fake's choices: `labels_json` is the JSON text of the
  labels, ids are the plan's, the model is `fake-model`.
* Session gates (auth/permissions.js @43666134): no session -> 401 `{"error": "Not
  authenticated"}`. Errors a route raises on purpose are `{error, code, details?}`
  (core/http/terminalErrorHandler.js @3c2dabd9).

NOT the service (test instruments, `instruments=True`, the default): the generic proxy tests need
an upstream that echoes, streams bytes, stalls, resets or redirects. These paths do not exist on
the real service, need no token, and are listed here so nobody mistakes them for its contract:

    ANY  /api/json                      JSON (application/json; charset=utf-8, no Cache-Control)
    GET  /api/cached                    JSON with its own Cache-Control: private, max-age=60
    GET  /api/download?size=N&chunk=M[&length=1]   N deterministic bytes (pattern_bytes)
    ANY  /api/echo                      the request body back (same Content-Type) + X-Echo-*
    GET  /api/cookies                   two Set-Cookie headers
    GET  /api/slow?delay=S              headers only after S seconds
    ANY  /api/reset                     the connection is aborted before any answer
    GET  /api/redirect                  302 to /api/json (a proxy must not follow it)
    ANY  /api/status/{code}             that status with a JSON body
    GET  /api/stream                    the `service.sse` plan, as a GET

Knobs: `service.sse` (StreamPlan: pieces with delays or gates, gzip, end or hold) shapes every
stream; `service.gate` releases gated pieces; `service.drop_reused = n` aborts the next n
requests that arrive on a reused keep-alive connection. The tenant/auth half is
`service.control` (a ServiceControl; pass your own with `FakeService(control=...)`).
`FakeService(extra_routes=[...])` adds routes in front of all others.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal

import attrs
from aiohttp import web
from multidict import CIMultiDict, MultiDict
from yarl import URL

from tests.fakes.service_control import AuthRefused, ServiceControl, Session
from tests.fakes.service_tasks import ServiceTasks
from tests.helpers import TENANT_KEY

Handler = Callable[[web.Request], Any]
SESSION: Final = web.RequestKey[Session | None]("bee_flow_session")
RECORD: Final = web.RequestKey["Recorded"]("bee_flow_recorded")
# index.js: CORS_ORIGIN defaults to the UI's dev server.
ALLOWED_ORIGINS: Final = frozenset({"http://localhost:5173"})
INDEX_HTML: Final = (
    b'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Bee Flow</title>'
    b'</head><body><div id="root"></div></body></html>'
)
PATCH_KEYS: Final = frozenset({"title", "pinned", "labels", "knowledgeBaseIds"})


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


def turn_pieces(
    texts: Iterable[str] = ("Hello", " world", "!"),
    *,
    conversation_id: str = "conv-1",
    new: bool = True,
    title: str | None = None,
    gated: bool = False,
) -> list[Piece]:
    """One turn in the order the real service writes it (streamTurn.js, finalizeTurn.js):
    `model_selected`, the content, `conversation_created` only for a new conversation (it is
    created when the turn is saved, after the content), `done`, and the generated `title`
    after `done` when given. Gated: a gate release before each piece but the first."""
    events = [sse_event("model_selected", {"tier": "fast", "modelId": "fake-model"})]
    events += [sse_event("content", {"text": t}) for t in texts]
    if new:
        events.append(sse_event("conversation_created", {"conversationId": conversation_id}))
    events.append(sse_event("done", {"conversationId": conversation_id}))
    if title is not None:
        events.append(sse_event("title", {"title": title, "conversationId": conversation_id}))
    return [Piece(data, gated=gated and i > 0) for i, data in enumerate(events)]


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
    # connectorJwt's verdict: "none" (no connector token looked at), "ok", or the refusal status.
    auth: str = "none"
    user_email: str | None = None
    claims: dict[str, Any] | None = None
    # Set when the handler finished; `cancelled` if it ended because the client went away.
    finished: asyncio.Event = attrs.field(factory=asyncio.Event)
    cancelled: bool = False
    finished_at: float | None = None


def _now_iso() -> str:
    """A timestamp as the service's JSON carries them (node-postgres Date -> toJSON)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.define
class Conversation:
    id: str
    owner: str
    title: str | None
    pinned: bool = False
    labels: list[str] = attrs.field(factory=list)
    model_tier: str = "fast"
    messages: list[dict[str, Any]] = attrs.field(factory=list)
    created_at: str = attrs.field(factory=_now_iso)
    updated_at: str = attrs.field(factory=_now_iso)

    def row(self) -> dict[str, Any]:
        """listDirectConversations' columns for this conversation."""
        return {
            "id": self.id,
            "title": self.title,
            "model_tier": self.model_tier,
            "project_id": None,
            "shared_scope": "private",
            "pinned": self.pinned,
            "labels_json": json.dumps(self.labels),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class FakeService:
    """Build, start on 127.0.0.1 (ephemeral port), record, stop."""

    def __init__(
        self,
        *,
        control: ServiceControl | None = None,
        extra_routes: Iterable[web.AbstractRouteDef] = (),
        instruments: bool = True,
        app_version: str = "0f3c2a1b",
    ) -> None:
        self._extra: list[web.AbstractRouteDef] = list(extra_routes)
        if control is None:
            # Routes of a ServiceControl passed the old way (extra_routes=control.routes()).
            owners = [getattr(getattr(r, "handler", None), "__self__", None) for r in self._extra]
            found = [o for o in owners if isinstance(o, ServiceControl)]
            control = found[0] if found else ServiceControl(verify_key=TENANT_KEY)
            self._mount_control = not found
        else:
            self._mount_control = True
        self.control = control
        # Task Processing's execute route and the Nextcloud event ingest (service_tasks.py).
        self.tasks = ServiceTasks(control)
        self.instruments = instruments
        self.app_version = app_version
        self.requests: list[Recorded] = []
        self.streams: list[StreamLog] = []
        self.conversations: dict[str, Conversation] = {}
        self.sse = StreamPlan()
        self.gate: asyncio.Queue[None] = asyncio.Queue()
        self.drop_reused = 0
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
        app = web.Application(
            middlewares=[self._record, self._origin, self._connector_jwt],
            client_max_size=1024**3,
        )
        r = app.router
        r.add_routes(self._extra)
        if self._mount_control:
            r.add_routes(self.control.routes())
        r.add_routes(self.tasks.routes())
        r.add_get("/api/health", self._health)
        r.add_get("/api/session-token", self._session_token)
        r.add_post("/ai/chat/direct/stream", self._chat)
        r.add_post(r"/agents/{agent}/chat/stream", self._chat)
        r.add_get("/ai/direct/conversations", self._list_conversations)
        conv = "/ai/direct/conversations/{cid}"
        r.add_get(conv, self._get_conversation)
        r.add_patch(conv, self._patch_conversation)
        r.add_delete(conv, self._delete_conversation)
        if self.instruments:
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
        r.add_route("*", "/{tail:.*}", self._unmatched)
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
        request[RECORD] = rec
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

    @web.middleware
    async def _origin(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and origin.rstrip("/") not in ALLOWED_ORIGINS:
            return web.json_response(
                {"error": "Origin not allowed"}, status=403, headers={"Vary": "Origin"}
            )
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _connector_jwt(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        rec = request[RECORD]
        try:
            session = self.control.authenticate(request)
        except AuthRefused as exc:
            rec.auth = str(exc.response.status)
            return exc.response
        request[SESSION] = session
        if session is not None:
            rec.auth, rec.user_email, rec.claims = "ok", session.user.email, session.claims
        response: web.StreamResponse = await handler(request)
        return response

    # ------------------------------------------------------------------ the service's routes

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "appVersion": self.app_version,
                "otel": False,
            }
        )

    async def _session_token(self, request: web.Request) -> web.Response:
        session = _require(request)
        return web.json_response({"token": "st-" + session.user.id, "expiresIn": 3600})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        session = _require(request)
        body = await _json_object(request)
        message = body.get("message")
        attachments = body.get("attachments")
        if message is not None and not isinstance(message, str):
            raise _HttpError(400, "message must be text.", "invalid_request")
        if not message and not attachments:
            return web.json_response({"error": "Message or attachments required"}, status=400)
        plan = self.sse
        conv: Conversation | None = None
        asked = body.get("conversationId")
        if asked:
            found = self.conversations.get(str(asked))
            conv = found if found is not None and found.owner == session.user.id else None
        else:
            for piece in plan.pieces:
                cid = _created_id(piece.data)
                if cid is not None:
                    # createDirectConversation's placeholder title.
                    conv = Conversation(cid, session.user.id, "New Chat")
                    self.conversations[cid] = conv
                    break
        # streamTurn.js writes these with the SSE status line.
        response = await self._stream(request, {"X-Accel-Buffering": "no"})
        if conv is not None and plan.then == "end":
            _store_turn(conv, message or "", plan.pieces)
        return response

    def _conversation(self, request: web.Request) -> tuple[Session, Conversation]:
        session = _require(request)
        conv = self.conversations.get(request.match_info["cid"])
        if conv is None or conv.owner != session.user.id:
            raise _HttpError(404, "Conversation not found")
        return session, conv

    async def _list_conversations(self, request: web.Request) -> web.Response:
        session = _require(request)
        own = [c for c in self.conversations.values() if c.owner == session.user.id]
        own.sort(key=lambda c: c.updated_at, reverse=True)
        return web.json_response([c.row() for c in own])

    async def _get_conversation(self, request: web.Request) -> web.Response:
        _, conv = self._conversation(request)
        return web.json_response(
            {
                **conv.row(),
                "user_id": conv.owner,
                "messages": conv.messages,
                "meta": {},
                "knowledgeBaseIds": [],
            }
        )

    async def _patch_conversation(self, request: web.Request) -> web.Response:
        _require(request)
        body = await _json_object(request)
        extra = sorted(set(body) - PATCH_KEYS)
        if extra:
            keys = ", ".join(f"'{k}'" for k in extra)
            raise _HttpError(400, f"Unrecognized key(s) in object: {keys}", "invalid_request")
        if "title" in body and not isinstance(body["title"], str):
            raise _HttpError(400, "A conversation title must be text.", "invalid_request")
        if "pinned" in body and not isinstance(body["pinned"], bool):
            raise _HttpError(400, "pinned is true or false.", "invalid_request")
        _, conv = self._conversation(request)
        if "title" in body:
            conv.title = body["title"]
            conv.updated_at = _now_iso()
        if "pinned" in body:
            conv.pinned = body["pinned"]
        return web.json_response({"success": True})

    async def _delete_conversation(self, request: web.Request) -> web.Response:
        _, conv = self._conversation(request)
        del self.conversations[conv.id]
        return web.json_response({"success": True})

    async def _unmatched(self, request: web.Request) -> web.Response:
        path = request.path
        if path.startswith(("/api/", "/auth/")):
            return web.json_response({"error": "Not found"}, status=404)
        # The production SPA fallback answers every other path with the web UI.
        return web.Response(
            body=INDEX_HTML,
            content_type="text/html",
            headers={
                "Cache-Control": "no-cache, no-store, must-revalidate",
                "Pragma": "no-cache",
                "Expires": "0",
            },
        )

    # ------------------------------------------------------------------ instruments

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

    async def _stream(
        self, request: web.Request, extra: dict[str, str] | None = None
    ) -> web.StreamResponse:
        plan = self.sse
        log = StreamLog(path=request.path, opened_at=time.monotonic())
        async with self._arrival:
            self.streams.append(log)
            self._arrival.notify_all()
        headers = {"Content-Type": plan.content_type, "Cache-Control": "no-cache", **(extra or {})}
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


class _HttpError(web.HTTPException):
    """An HttpError a route throws: terminalErrorHandler's `{error, code?}` body."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        self.status_code = status
        body: dict[str, Any] = {"error": message}
        if code is not None:
            body["code"] = code
        super().__init__(text=json.dumps(body), content_type="application/json")


def _require(request: web.Request) -> Session:
    session: Session | None = request.get(SESSION)
    if session is None:
        raise _HttpError(401, "Not authenticated")
    return session


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The global JSON body parser: application/json only, malformed -> 400."""
    if request.content_type != "application/json":
        return {}
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError:
        raise _HttpError(400, "Invalid JSON body") from None
    if not isinstance(body, dict):
        raise _HttpError(400, "Expected an object", "invalid_request")
    return body


def _created_id(data: bytes) -> str | None:
    if not data.startswith(b"event: conversation_created\n"):
        return None
    for line in data.decode().splitlines():
        if line.startswith("data: "):
            value = json.loads(line[6:]).get("conversationId")
            return str(value) if value else None
    return None


def _events(pieces: Iterable[Piece]) -> list[tuple[str, Any]]:
    """The (event, parsed data) pairs a plan sends (one event per piece, as the helpers
    write them)."""
    found: list[tuple[str, Any]] = []
    for piece in pieces:
        name, data = "message", ""
        for line in piece.data.decode(errors="replace").splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        try:
            found.append((name, json.loads(data)))
        except ValueError:
            continue
    return found


def _store_turn(conv: Conversation, message: str, pieces: Iterable[Piece]) -> None:
    """finalizeTurn.js: the user's message and the reply (`content` appended,
    `content_replace` replacing) are saved with the conversation; a `title` event's title is
    stored."""
    reply = ""
    for name, data in _events(pieces):
        text = data.get("text") if isinstance(data, dict) else None
        if name == "content" and isinstance(text, str):
            reply += text
        elif name == "content_replace" and isinstance(text, str):
            reply = text
        elif name == "title" and isinstance(data, dict) and isinstance(data.get("title"), str):
            conv.title = data["title"]
    stamp = _now_iso()
    conv.messages.append({"role": "user", "content": message, "timestamp": stamp})
    conv.messages.append(
        {
            "role": "assistant",
            "content": reply,
            "timestamp": stamp,
            "modelId": "fake-model",
            "modelTier": conv.model_tier,
        }
    )
    conv.updated_at = stamp


def _abort(request: web.Request) -> web.Response:
    """Close the connection without answering (the client sees a reset/disconnect)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


def gunzip(data: bytes) -> bytes:
    return gzip.decompress(data)
