"""Talk for the fake Nextcloud: AppAPI's Talk bot API and `talk_proxy`, and the parts of Talk
(spreed) a bot meets: installing bots, their deliveries, and the bot message API. Mount on a
FakeNextcloud with `FakeTalk(nc).mount()` before `nc.start()`; Talk is not in the bundled
Nextcloud, so this is written from the sources, as strict as they are:

* nextcloud/app_api v32.0.0 `lib/Controller/TalkBotController.php`, `lib/Service/
  TalkBotsService.php`, `AppAPIService::requestToExApp`: registering without Talk answers OCS 400
  "Talk bots could not be registered" (measured on 32.0.1 too); otherwise the bot's secret is
  64 human-readable characters made once per (app, route) and kept in the app's config (a
  repeated registration returns the same secret), Talk gets a BotInstallEvent for the URL
  `<nc>/ocs/v2.php/apps/app_api/api/v1/talk_proxy/<app>/<route>` (route without its leading
  "/"), and the answer is `{id: sha1(app_route), secret}`. Unregistering without that config
  answers 404. `talk_proxy` checks `X-Nextcloud-Talk-Signature` = hex HMAC-SHA256(secret, random
  + raw body) (404 and a brute-force attempt otherwise; 404 for an unknown or disabled app),
  then POSTs to the ExApp at `/<route>` with AppAPI's headers and an EMPTY user, no Talk headers,
  as Guzzle's JSON of the request's parameters (Talk's body, then appId, route and _route;
  PHP's json_encode escapes "/" and non-ASCII), 3 s timeout; Talk hears 200 unless that request
  failed outright (500).
* nextcloud/spreed `lib/Listener/BotListener.php`, `lib/Events/BotInstallEvent.php`: an install
  with a URL already installed under another secret throws (AppAPI answers 500 and keeps no
  config); a bot gets features webhook + response (no reactions) unless set otherwise.
* spreed `lib/Service/BotService.php`, `lib/Service/ActivityPubHelper.php`: deliveries are
  `Create` (a user's message: actor `users/<uid>` with talkParticipantType, object Note with id,
  name "message", content = JSON text of {message, parameters}, mediaType text/markdown,
  inReplyTo for a reply), `Like`/`Undo` (reactions, only with the reaction feature; the actor is
  the MESSAGE's author), `Join`/`Leave` (bot enabled/disabled in a room), `Activity` (system
  messages); signed with X-Nextcloud-Talk-Random (64 characters), -Signature, -Backend; 5 s.
  Bots get no deliveries of bots' messages.
* spreed `lib/Controller/BotController.php` (`sendMessage`), `ChecksumVerificationService`,
  `ChatManager::MAX_CHAT_LENGTH`: an empty message (after trim) is 400; a random shorter than 32
  or a missing signature is 400; no bot of the room with the response feature whose secret
  makes hex HMAC-SHA256(random + message) is 401 (and a brute-force attempt); a replyTo that is
  not a message of the room is 400; a message over 32,000 characters (after trim) is 413;
  else 201.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import string
from typing import Any, Final

import aiohttp
import attrs
from aiohttp import web
from yarl import URL

from tests.fakes.nextcloud import BODY, FakeNextcloud

FEATURE_WEBHOOK: Final = 1
FEATURE_RESPONSE: Final = 2
FEATURE_EVENT: Final = 4
FEATURE_REACTION: Final = 8
MAX_CHAT_LENGTH: Final = 32_000
HUMAN_READABLE: Final = "".join(
    c for c in string.ascii_letters + string.digits if c not in "lIO0o1"
)  # ISecureRandom::CHAR_HUMAN_READABLE
APPAPI_TIMEOUT: Final = 3.0
TALK_TIMEOUT: Final = 5.0


def php_json(value: Any) -> str:
    """json_encode with default flags: compact, "\\/" for "/", \\uXXXX for non-ASCII."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/")


def talk_signature(secret: str, random: str, data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return hmac.new(secret.encode(), random.encode() + raw, hashlib.sha256).hexdigest()


@attrs.define
class Bot:
    name: str
    secret: str
    url: str
    description: str
    features: int = FEATURE_WEBHOOK | FEATURE_RESPONSE

    @property
    def url_hash(self) -> str:
        return hashlib.sha1(self.url.encode()).hexdigest()  # noqa: S324 - Talk's own id


@attrs.define
class Message:
    id: int
    actor_type: str
    actor_id: str
    actor_name: str
    text: str
    parameters: dict[str, Any]
    reply_to: int | None = None
    reference_id: str = ""


@attrs.define
class Room:
    token: str
    name: str
    messages: list[Message] = attrs.field(factory=list)
    bots: list[str] = attrs.field(factory=list)  # enabled bots' URL hashes


@attrs.define
class Delivery:
    """One bot delivery Talk sent, and what became of it."""

    url: str
    body: str
    status: int  # what Talk heard (0: no answer within its timeout)


@attrs.define
class Forwarded:
    """One request AppAPI's talk_proxy made to the ExApp."""

    headers: dict[str, str]
    body: bytes
    status: int  # what the ExApp answered (0: failed)


class FakeTalk:
    def __init__(self, nc: FakeNextcloud, *, installed: bool = True) -> None:
        self.nc = nc
        self.installed = installed
        self.app_config: dict[tuple[str, str], str] = {}  # (app, key) -> value
        self.bots: dict[str, Bot] = {}  # by URL hash
        self.rooms: dict[str, Room] = {}
        self.deliveries: list[Delivery] = []
        self.forwarded: list[Forwarded] = []
        self.bot_posts: list[tuple[int, dict[str, Any]]] = []  # (status, body) per message call
        self.throttled = 0  # brute-force attempts registered (talk_proxy and the bot API)
        self._ids = iter(range(1000, 10**9))
        self._session: aiohttp.ClientSession | None = None
        self.arrived = asyncio.Condition()

    def mount(self) -> FakeTalk:
        self.nc.add_routes(self.routes())
        return self

    def routes(self) -> list[web.RouteDef]:
        out: list[web.RouteDef] = []
        for v in ("v1", "v2"):
            path = f"/ocs/{v}.php/apps/app_api/api/v1/talk_bot"
            out += [web.post(path, self._register), web.delete(path, self._unregister)]
        out += [
            web.post(
                "/ocs/v2.php/apps/app_api/api/v1/talk_proxy/{app}/{route:.+}", self._talk_proxy
            ),
            web.post("/ocs/v2.php/apps/spreed/api/v1/bot/{token}/message", self._bot_message),
        ]
        return out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    # ------------------------------------------------------------ AppAPI's Talk bot API

    @staticmethod
    def config_id(app: str, route: str) -> str:
        return hashlib.sha1(f"{app}_{route}".encode()).hexdigest()  # noqa: S324 - AppAPI's id

    def proxy_url(self, app: str, route: str) -> str:
        return f"{self.nc.url}/ocs/v2.php/apps/app_api/api/v1/talk_proxy/{app}/{route}"

    def bot_for(self, app: str, route: str) -> Bot | None:
        url = self.proxy_url(app, route.lstrip("/"))
        return next((b for b in self.bots.values() if b.url == url), None)

    async def _register(self, request: web.Request) -> web.Response:
        denied = self.nc._require(request, login=False)
        if denied is not None:
            return denied
        body = _params(request)
        name, route = body.get("name"), body.get("route")
        description = body.get("description", "")
        if not all(isinstance(v, str) for v in (name, route, description)):
            return self.nc._ocs(request, None, 400, "")
        app = request.headers.get("EX-APP-ID", "")
        if not self.installed:
            return self.nc._ocs(request, [], 400, "Talk bots could not be registered")
        route = str(route).lstrip("/")
        cid = self.config_id(app, route)
        secret = self.app_config.get((app, cid)) or "".join(
            secrets.choice(HUMAN_READABLE) for _ in range(64)
        )
        problem = self.install(str(name), secret, self.proxy_url(app, route), str(description))
        if problem:
            return web.json_response({"message": problem}, status=500)
        self.app_config[(app, cid)] = secret
        self.app_config[(app, f"talk_bot_route_{cid}")] = route
        return self.nc._ocs(request, {"id": cid, "secret": secret})

    async def _unregister(self, request: web.Request) -> web.Response:
        denied = self.nc._require(request, login=False)
        if denied is not None:
            return denied
        route = _params(request).get("route")
        app = request.headers.get("EX-APP-ID", "")
        if not self.installed or not isinstance(route, str):
            return self.nc._ocs(request, [], 404, "Talk bots could not be unregistered")
        route = route.lstrip("/")
        cid = self.config_id(app, route)
        secret = self.app_config.pop((app, cid), None)
        if secret is None:
            return self.nc._ocs(request, [], 404, "Talk bots could not be unregistered")
        url = self.proxy_url(app, route)
        for key, bot in list(self.bots.items()):
            if bot.url == url and bot.secret == secret:
                del self.bots[key]
                for room in self.rooms.values():
                    room.bots = [h for h in room.bots if h != key]
        return self.nc._ocs(request, True)

    def install(self, name: str, secret: str, url: str, description: str) -> str:
        """BotListener::handleBotInstallEvent; returns the exception's message, or ''."""
        if not 1 <= len(name) <= 64 or not 40 <= len(secret) <= 128 or len(description) > 4000:
            return "Invalid data in bot install event"
        same_url = [b for b in self.bots.values() if b.url == url]
        for bot in same_url:
            if bot.secret == secret:
                bot.name, bot.description = name, description
                return ""
        if same_url:
            return "Bot with the same URL and a different secret is already registered"
        bot = Bot(name, secret, url, description)
        self.bots[bot.url_hash] = bot
        return ""

    async def _talk_proxy(self, request: web.Request) -> web.Response:
        """TalkBotController::proxyTalkMessage."""
        app, route = request.match_info["app"], request.match_info["route"]
        raw: bytes = request.get(BODY, b"")
        secret = self.app_config.get((app, self.config_id(app, route)))
        if app != self.nc.app_id or not self.nc.enabled or secret is None:
            self.throttled += 1
            return self.nc._ocs(request, [], 404, "")
        digest = talk_signature(secret, request.headers.get("X-Nextcloud-Talk-Random", ""), raw)
        offered = request.headers.get("X-Nextcloud-Talk-Signature", "").lower()
        if not hmac.compare_digest(digest, offered):
            self.throttled += 1
            return self.nc._ocs(request, [], 404, "")
        params: dict[str, Any] = dict(request.query)
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        if isinstance(parsed, dict):
            params.update(parsed)
        params.update(
            {"appId": app, "route": route, "_route": "ocs.app_api.TalkBot.proxyTalkMessage"}
        )
        status = await self._to_exapp("/" + route, params)
        return self.nc._ocs(request, [], 200 if status else 500, "")

    async def _to_exapp(self, route: str, params: dict[str, Any]) -> int:
        assert self.nc.connector_url is not None, "set_connector() first"
        token = base64.b64encode(f":{self.nc.secret}".encode()).decode()
        headers = {
            "AA-VERSION": "32.0.0",
            "EX-APP-ID": self.nc.app_id,
            "EX-APP-VERSION": "1.0.0",
            "AUTHORIZATION-APP-API": token,
            "AA-REQUEST-ID": secrets.token_hex(10),
            "Accept-Language": "en",
            "Content-Type": "application/json",
            "User-Agent": "Nextcloud Server Crawler",
        }
        body = php_json(params).encode()
        status = 0
        try:
            async with self.session.post(
                URL(str(self.nc.connector_url) + route),
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=APPAPI_TIMEOUT),
            ) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        async with self.arrived:
            self.forwarded.append(Forwarded(headers, body, status))
            self.arrived.notify_all()
        return status

    # ------------------------------------------------------------ Talk

    def add_room(self, token: str, name: str) -> Room:
        room = Room(token, name)
        self.rooms[token] = room
        return room

    async def enable_bot(self, token: str, bot: Bot) -> None:
        """A moderator adds the bot to the room (BotController::enableBot, then a Join)."""
        room = self.rooms[token]
        if bot.url_hash not in room.bots:
            room.bots.append(bot.url_hash)
            await self._deliver([bot], self._join("Join", bot, room))

    async def disable_bot(self, token: str, bot: Bot) -> None:
        room = self.rooms[token]
        room.bots = [h for h in room.bots if h != bot.url_hash]
        await self._deliver([bot], self._join("Leave", bot, room))

    def _join(self, kind: str, bot: Bot, room: Room) -> dict[str, Any]:
        return {
            "type": kind,
            "actor": {"type": "Application", "id": f"bots/bot-{bot.url_hash}", "name": bot.name},
            "object": {"type": "Collection", "id": room.token, "name": room.name},
        }

    def _bots(self, room: Room, feature: int) -> list[Bot]:
        return [
            self.bots[h] for h in room.bots if h in self.bots and self.bots[h].features & feature
        ]

    @staticmethod
    def _note(message: Message, name: str) -> dict[str, Any]:
        content = php_json({"message": message.text, "parameters": message.parameters or []})
        return {
            "type": "Note",
            "id": str(message.id),
            "name": name,
            "content": content,
            "mediaType": "text/markdown",
        }

    @staticmethod
    def _person(message: Message) -> dict[str, Any]:
        return {
            "type": "Person",
            "id": f"{message.actor_type}/{message.actor_id}",
            "name": message.actor_name,
        }

    async def say(
        self,
        token: str,
        uid: str,
        text: str,
        *,
        name: str | None = None,
        parameters: dict[str, Any] | None = None,
        reply_to: int | None = None,
        actor_type: str = "users",
    ) -> Message:
        """A participant writes in the room; the room's bots get a Create."""
        room = self.rooms[token]
        message = Message(
            next(self._ids), actor_type, uid, name or uid, text, dict(parameters or {}), reply_to
        )
        room.messages.append(message)
        if actor_type == "bots":
            return message  # no bots for bots
        note = self._note(message, "message")
        parent = next((m for m in room.messages if m.id == reply_to), None)
        if parent is not None:
            note["inReplyTo"] = {
                "type": "Note",
                "actor": self._person(parent),
                "object": self._note(parent, "message"),
            }
        person = self._person(message) | {"talkParticipantType": "3"}
        body = {
            "type": "Create",
            "actor": person,
            "object": note,
            "target": {"type": "Collection", "id": room.token, "name": room.name},
        }
        await self._deliver(self._bots(room, FEATURE_WEBHOOK | FEATURE_EVENT), body)
        return message

    async def react(
        self, token: str, message: Message, reaction: str, *, undo: bool = False
    ) -> None:
        room = self.rooms[token]
        target = {"type": "Collection", "id": room.token, "name": room.name}
        like = {
            "type": "Like",
            "actor": self._person(message),
            "object": self._note(message, message.text),
            "target": target,
            "content": reaction,
        }
        if undo:
            body = {
                "type": "Undo",
                "actor": self._person(message),
                "object": like,
                "target": target,
            }
        else:
            body = like
        await self._deliver(self._bots(room, FEATURE_REACTION), body)

    async def _deliver(self, bots: list[Bot], body: dict[str, Any]) -> None:
        text = php_json(body)
        for bot in bots:
            random = "".join(
                secrets.choice(string.ascii_letters + string.digits) for _ in range(64)
            )
            headers = {
                "Content-Type": "application/json",
                "X-Nextcloud-Talk-Random": random,
                "X-Nextcloud-Talk-Signature": talk_signature(bot.secret, random, text),
                "X-Nextcloud-Talk-Backend": f"{self.nc.url}/",
                "OCS-APIRequest": "true",
            }
            status = 0
            try:
                async with self.session.post(
                    bot.url,
                    data=text.encode(),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=TALK_TIMEOUT),
                ) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.deliveries.append(Delivery(bot.url, text, status))

    # ------------------------------------------------------------ the bot message API

    async def _bot_message(self, request: web.Request) -> web.Response:
        """BotController::sendMessage (OCS; answers carry no data)."""
        token = request.match_info["token"]
        body = _params(request)
        status = self._send_status(request, token, body)
        self.bot_posts.append((status, body))
        async with self.arrived:
            self.arrived.notify_all()
        return self.nc._ocs(request, None, status, "")

    def _send_status(self, request: web.Request, token: str, body: dict[str, Any]) -> int:
        message = body.get("message")
        if not isinstance(message, str) or message.strip() == "":
            return 400
        random = request.headers.get("X-Nextcloud-Talk-Bot-Random", "")
        checksum = request.headers.get("X-Nextcloud-Talk-Bot-Signature", "")
        if len(random) < 32 or not checksum:
            return 400
        room = self.rooms.get(token)
        bot = None
        for candidate in self._bots(room, FEATURE_RESPONSE) if room else []:
            want = talk_signature(candidate.secret, random, message)
            if hmac.compare_digest(want, checksum.lower()):
                bot = candidate
                break
        if bot is None or room is None:
            self.throttled += 1
            return 401
        reply_to = body.get("replyTo", 0)
        if isinstance(reply_to, str) and reply_to.lstrip("-").isdigit():
            reply_to = int(reply_to)
        if not isinstance(reply_to, int) or isinstance(reply_to, bool):
            return 400
        if reply_to and not any(m.id == reply_to for m in room.messages):
            return 400
        text = message.strip()
        if len(text) > MAX_CHAT_LENGTH:
            return 413
        reference = body.get("referenceId", "")
        room.messages.append(
            Message(
                next(self._ids),
                "bots",
                f"bot-{bot.url_hash}",
                bot.name,
                text,
                {},
                reply_to or None,
                reference if isinstance(reference, str) else "",
            )
        )
        return 201

    async def wait_posts(
        self, count: int, timeout: float = 10.0
    ) -> list[tuple[int, dict[str, Any]]]:
        async with asyncio.timeout(timeout), self.arrived:
            while len(self.bot_posts) < count:
                await self.arrived.wait()
            return list(self.bot_posts)

    async def wait_forwarded(self, count: int, timeout: float = 10.0) -> list[Forwarded]:
        async with asyncio.timeout(timeout), self.arrived:
            while len(self.forwarded) < count:
                await self.arrived.wait()
            return list(self.forwarded)


def _params(request: web.Request) -> dict[str, Any]:
    raw: bytes = request.get(BODY, b"")
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {}
    out: dict[str, Any] = dict(request.query)
    if isinstance(parsed, dict):
        out.update(parsed)
    return out
