"""DEMO STAND-IN of the Bee Flow service (not the real service): health, a streaming chat reply
and conversation rename, on the real service's paths and with its rules for the connector's
per-user JWT (Bee-Flow/Bee-Flow server/: index.js, routes/ai/directChat/*, auth/connectorJwt.js),
enough for `serve --demo` and the browser tests:

* `GET /api/health` -> `{status, timestamp, appVersion, otel}`;
* `POST /ai/chat/direct/stream` -> SSE `conversation_created`, `content {text}`..., `done`;
  `PATCH /ai/direct/conversations/<id>` with `{title}` -> `{success: true}`;
* the conversation history as the service keeps it (stores/agent/directConversations.js):
  `GET /ai/direct/conversations` -> the conversations, newest first (`id`, `title`,
  `model_tier`, `pinned`, `created_at`, `updated_at`); `GET` and `DELETE
  /ai/direct/conversations/<id>` -> the conversation with its `messages` (`{role, content,
  timestamp}`) / `{success: true}`, 404 "Conversation not found" for an unknown id;
* the token counts only with `X-Beeflow-Source: nextcloud-connector`; HS256 with the tenant key;
  `exp`/`nbf` when present, `iss`/`aud` only when present; no `email` -> 400 "Connector token
  missing email claim"; no valid token on a user route -> 401 `{"error": "Not authenticated"}`;
* an unknown `/api/*` or `/auth/*` path -> 404 `{"error": "Not found"}`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
from aiohttp import web
from yarl import URL

from beeflow.demo.loopback import serve_loopback
from beeflow.signing import JWT_AUDIENCE, JWT_ISSUER

VERSION: Final = "demo-1"  # the stand-in's appVersion (the real one reports its build sha)
MAX_MESSAGE: Final = 4000

# Awaited before each streamed piece (index from 0); tests replace it to step the stream.
Pace = Callable[[int], Awaitable[None]]


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_jwt(token: str, key: str, *, now: float | None = None) -> dict[str, Any] | None:
    """The claims of a token the service would accept (connectorJwt.js _verifyHs256), else
    None."""
    try:
        header_b64, payload_b64, sig_b64 = token.split(".")
        header = json.loads(_b64decode(header_b64))
        claims = json.loads(_b64decode(payload_b64))
        signature = _b64decode(sig_b64)
    except (ValueError, binascii.Error):
        return None
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
        return None
    if header.get("typ") and header.get("typ") != "JWT":
        return None
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    expected = hmac.new(key.encode("utf-8"), signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        return None
    moment = int(time.time() if now is None else now)
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int | float) and exp and moment >= exp:
        return None
    if isinstance(nbf, int | float) and nbf and moment < nbf:
        return None
    if claims.get("iss") and claims.get("iss") != JWT_ISSUER:
        return None
    if claims.get("aud") and claims.get("aud") != JWT_AUDIENCE:
        return None
    return claims


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _now() -> str:
    moment = time.time()
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
        + f".{int(moment * 1000) % 1000:03d}Z"
    )


def short_title(message: str, words: int = 6, limit: int = 60) -> str:
    """The stand-in's automatic title: the first words of the message, with "…" when cut."""
    parts = message.split()
    title = " ".join(parts[:words])
    if len(title) > limit:
        title = title[: limit - 1].rstrip()
    return title + ("\u2026" if title != " ".join(parts) else "")


def reply_pieces(name: str, message: str) -> list[str]:
    """The demo's answer, cut into word-sized pieces like a model's tokens."""
    quoted = message if len(message) <= 200 else message[:197] + "..."
    text = (
        f"Hello {name}! This answer comes from the demo stand-in of the Bee Flow service. "
        "It travelled through the real connector: Nextcloud's AppAPI headers, your per-user "
        f'token, and a streamed reply, piece by piece. You wrote: "{quoted}"'
    )
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


@attrs.define
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    claims: dict[str, Any] | None


class _Refusal(web.HTTPException):
    """A JSON `{"error": ...}` answer with any status (the service's error body)."""

    def __init__(self, status: int, message: str) -> None:
        self.status_code = status
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


def _error(status: int, message: str) -> web.HTTPException:
    return _Refusal(status, message)


class DemoService:
    """Runs on 127.0.0.1 (ephemeral port). `pace` sets the streaming rhythm."""

    def __init__(self, tenant_key: str, *, delay: float = 0.05) -> None:
        self.tenant_key = tenant_key
        self.delay = delay
        self.pace: Pace = self._sleep
        self.seen: list[Seen] = []
        self.conversations: dict[str, str] = {}
        # Per conversation: its messages and its created/updated times (ISO 8601, UTC).
        self.messages: dict[str, list[dict[str, str]]] = {}
        self.stamps: dict[str, tuple[str, str]] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = URL()

    async def _sleep(self, index: int) -> None:
        if index:
            await asyncio.sleep(self.delay)

    # ------------------------------------------------------------ handlers

    def _record(self, request: web.Request, claims: dict[str, Any] | None) -> None:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        self.seen.append(Seen(request.method, request.path, headers, claims))
        del self.seen[:-200]

    def _user(self, request: web.Request) -> dict[str, Any]:
        claims: dict[str, Any] | None = None
        auth = request.headers.get("Authorization", "")
        marked = request.headers.get("X-Beeflow-Source") == "nextcloud-connector"
        if marked and auth.lower().startswith("bearer "):
            claims = verify_jwt(auth[7:].strip(), self.tenant_key)
            if claims is None:
                self._record(request, None)
                raise _error(401, "Connector token rejected: no matching tenant key")
            if not claims.get("email"):
                self._record(request, claims)
                raise _error(400, "Connector token missing email claim")
        self._record(request, claims)
        if claims is None:
            raise _error(401, "Not authenticated")
        return claims

    async def health(self, request: web.Request) -> web.Response:
        self._record(request, None)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        return web.json_response(
            {"status": "ok", "timestamp": stamp, "appVersion": VERSION, "otel": False}
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        claims = self._user(request)
        try:
            body = await request.json()
        except ValueError:
            body = None
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message.strip():
            return web.json_response({"error": "Message or attachments required"}, status=400)
        if len(message) > MAX_MESSAGE:
            return web.json_response(
                {"error": f"The demo answers messages of up to {MAX_MESSAGE} characters"},
                status=400,
            )
        conversation = body.get("conversationId") if isinstance(body, dict) else None
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if not isinstance(conversation, str) or conversation not in self.conversations:
            conversation = f"demo-{next(self._ids)}"
            title = short_title(message)
            self.conversations[conversation] = title
            await response.write(
                sse("conversation_created", {"conversationId": conversation, "title": title})
            )
        name = str(claims.get("name") or claims.get("sub") or "there")
        pieces = reply_pieces(name, message.strip())
        for index, piece in enumerate(pieces):
            await self.pace(index)
            await response.write(sse("content", {"text": piece}))
        self._save_turn(conversation, message.strip(), "".join(pieces))
        await response.write(
            sse("done", {"conversationId": conversation, "messageId": f"m-{next(self._ids)}"})
        )
        await response.write_eof()
        return response

    async def rename(self, request: web.Request) -> web.Response:
        self._user(request)
        conversation = request.match_info["id"]
        if conversation not in self.conversations:
            return web.json_response({"error": "Conversation not found"}, status=404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or set(body) - {"title", "pinned", "labels"}:
            return web.json_response(
                {"error": "Send {title}", "code": "invalid_request"}, status=400
            )
        title = body.get("title")
        if isinstance(title, str) and title.strip():
            self.conversations[conversation] = title.strip()[:200]
        return web.json_response({"success": True})

    def _save_turn(self, conversation: str, message: str, reply: str) -> None:
        stamp = _now()
        created = self.stamps.get(conversation, (stamp, stamp))[0]
        self.stamps[conversation] = (created, stamp)
        self.messages.setdefault(conversation, []).extend(
            [
                {"role": "user", "content": message, "timestamp": stamp},
                {"role": "assistant", "content": reply, "timestamp": stamp},
            ]
        )

    def _row(self, conversation: str) -> dict[str, Any]:
        created, updated = self.stamps.get(conversation, ("", ""))
        return {
            "id": conversation,
            "title": self.conversations[conversation],
            "model_tier": "fast",
            "pinned": False,
            "created_at": created,
            "updated_at": updated,
        }

    async def conversation_list(self, request: web.Request) -> web.Response:
        self._user(request)
        rows = [self._row(c) for c in self.conversations]
        rows.sort(key=lambda row: str(row["updated_at"]), reverse=True)
        return web.json_response(rows)

    async def conversation(self, request: web.Request) -> web.Response:
        self._user(request)
        conversation = request.match_info["id"]
        if conversation not in self.conversations:
            return web.json_response({"error": "Conversation not found"}, status=404)
        if request.method == "DELETE":
            del self.conversations[conversation]
            self.messages.pop(conversation, None)
            self.stamps.pop(conversation, None)
            return web.json_response({"success": True})
        messages = self.messages.get(conversation, [])
        return web.json_response({**self._row(conversation), "messages": messages})

    async def other(self, request: web.Request) -> web.Response:
        self._record(request, None)
        return web.json_response({"error": "Not found"}, status=404)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> URL:
        app = web.Application()
        app.router.add_get("/api/health", self.health)
        app.router.add_post("/ai/chat/direct/stream", self.chat)
        app.router.add_patch("/ai/direct/conversations/{id}", self.rename)
        app.router.add_get("/ai/direct/conversations", self.conversation_list)
        app.router.add_get("/ai/direct/conversations/{id}", self.conversation)
        app.router.add_delete("/ai/direct/conversations/{id}", self.conversation)
        app.router.add_route("*", "/{tail:.*}", self.other)
        self._runner, self.url = await serve_loopback(app)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
