"""Talk deliveries: `POST /hooks/talk` as AppAPI forwards them (it checked Talk's signature and
calls with its own headers and an empty user), each mapped event forwarded signed to the
service's automation events, and @mentions of the bot answered in the conversation through the
same execute endpoint as the Assistant (docs/assistant.md, "Talk bot")."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.errors import BadRequest, Forbidden, PayloadTooLarge, ServiceUnavailable
from beeflow.health import provide
from beeflow.integrations.assistant_execute import NcTask, execute
from beeflow.integrations.talk_mapping import Mention, TalkEvent, map_delivery
from beeflow.integrations.talk_reply import defuse, post
from beeflow.nextcloud.client import NEXTCLOUD, NextcloudClient
from beeflow.nextcloud.talk_bot import BOT_NAME, ROUTE, TALK_BOT, TalkBot
from beeflow.nextcloud.task_processing import AGENT_TYPE
from beeflow.serde import iso_utc
from beeflow.service_client import SERVICE, ServiceCallError, ServiceClient
from beeflow.tasks import spawn
from beeflow.tenant.state import TENANT, TenantState
from beeflow.web.auth import IDENTITY, Access, add_route
from beeflow.web.bodies import read_capped
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

EVENTS_PATH: Final = "/api/automation/events/nextcloud"
MAX_BODY: Final = 256 * 1024
MAX_QUEUED: Final = 500  # forwards and answers waiting at once; more are dropped (logged)
FORWARD_CONCURRENCY: Final = 8
ANSWER_CONCURRENCY: Final = 4
ANSWER_TIMEOUT: Final = 120.0
SETTLE_SECONDS: Final = 2.0
PREFIX: Final = "talk-delivery-"
HINT: Final = (
    "Hello! Mention me with a question, for example: @Bee Flow what did we decide about the "
    "launch date?"
)
APOLOGY: Final = "Sorry, I could not answer that right now. Please try again in a moment."


@attrs.define
class TalkStats:
    deliveries: int = 0
    ignored: int = 0
    forwarded: int = 0
    forward_failed: int = 0
    answered: int = 0
    answer_failed: int = 0
    dropped: int = 0
    last_error: str = ""
    last_delivery_at: float | None = None

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "deliveries": self.deliveries,
            "ignored": self.ignored,
            "forwarded": self.forwarded,
            "forwardFailed": self.forward_failed,
            "answered": self.answered,
            "answerFailed": self.answer_failed,
            "dropped": self.dropped,
        }
        if self.last_error:
            out["lastError"] = self.last_error
        if self.last_delivery_at:
            out["lastDeliveryAt"] = iso_utc(self.last_delivery_at)
        return out


class Talk:
    """Forwards and answers in the background, bounded (AppAPI waits 3 s for the delivery)."""

    def __init__(
        self,
        service: ServiceClient,
        client: NextcloudClient,
        bot: TalkBot,
        tenant: TenantState,
    ) -> None:
        self._service = service
        self._client = client
        self.bot = bot
        self._tenant = tenant
        self.stats = TalkStats()
        self._forwards = asyncio.Semaphore(FORWARD_CONCURRENCY)
        self._answers = asyncio.Semaphore(ANSWER_CONCURRENCY)
        self.waiting = 0
        self._jobs: set[asyncio.Task[None]] = set()  # this app's jobs (not another app's)

    def accept(self, event: TalkEvent) -> bool:
        """Queue the forward (and the answer of a mention); False when the queue is full."""
        jobs = 1 + (event.mention is not None)
        if self.waiting + jobs > MAX_QUEUED:
            self.stats.dropped += 1
            self._error(f"{event.event} dropped: {MAX_QUEUED} jobs already waiting")
            return False
        self.waiting += jobs
        self._keep(spawn(self._forward(event), name=f"{PREFIX}forward"))
        if event.mention is not None:
            self._keep(spawn(self._answer(event.mention), name=f"{PREFIX}answer"))
        return True

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _forward(self, event: TalkEvent) -> None:
        body = {"event": event.event, "ncUid": event.nc_uid, "payload": event.payload}
        try:
            async with self._forwards:
                reply = await self._service.post_signed(EVENTS_PATH, body)
            if reply.ok:
                self.stats.forwarded += 1
                return
            problem = f"HTTP {reply.status}"
        except ServiceCallError as exc:
            problem = str(exc)
        finally:
            self.waiting -= 1
        self.stats.forward_failed += 1
        self._error(f"{event.event} not forwarded to the service: {problem}")

    async def _answer(self, mention: Mention) -> None:
        try:
            async with self._answers:
                text = await self._ask(mention)
                sent = await post(
                    self._client,
                    self.bot.secret,
                    self.bot.refresh,
                    mention.room,
                    text,
                    mention.message_id,
                )
        finally:
            self.waiting -= 1
        if sent.ok:
            self.stats.answered += 1
        else:
            self.stats.answer_failed += 1
            self._error(f"the answer in a Talk room was not posted (Talk answered {sent.status})")

    async def _ask(self, mention: Mention) -> str:
        if not mention.question:
            return HINT
        task = NcTask(
            id=0,
            type=AGENT_TYPE,
            user_id=mention.user,
            app_id="spreed",
            custom_id=f"talk:{mention.room}:{mention.message_id or ''}",
            input={"input": mention.question, "conversation_token": f"talk:{mention.room}"},
        )
        outcome = await execute(self._service, task, ANSWER_TIMEOUT)
        if outcome.output is None:
            self._error(f"the service did not answer a mention: {outcome.kind}: {outcome.detail}")
            return APOLOGY
        answer = str(outcome.output.get("output") or "").strip()
        return defuse(answer) if answer else APOLOGY

    def _error(self, text: str) -> None:
        self.stats.last_error = text[:300]
        log.warning("Talk: %s", text[:300])

    async def close(self) -> None:
        """This app's forwards and answers get SETTLE_SECONDS, then are cancelled."""
        pending = [t for t in self._jobs if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=SETTLE_SECONDS)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)

    def health(self, trusted: bool) -> dict[str, Any]:
        return self.stats.snapshot() if trusted else {"deliveries": self.stats.deliveries}


TALK: web.AppKey[Talk] = web.AppKey("talk")


async def _read_json(request: web.Request) -> dict[str, Any]:
    raw = await read_capped(request, MAX_BODY)
    if raw is None:
        raise PayloadTooLarge("A Talk delivery is at most 256 KiB", code="payload_too_large")
    try:
        data = json.loads(raw.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("A Talk delivery is a JSON object", code="bad_json") from None
    if not isinstance(data, dict):
        raise BadRequest("A Talk delivery is a JSON object", code="bad_json")
    return data


async def hook(request: web.Request) -> web.Response:
    """Answered at once: Talk counts a slow or failing bot against it, and AppAPI waits 3 s."""
    if request[IDENTITY].user_id:
        # Deliveries come from AppAPI itself (empty user); an admin's browser has no business
        # here, and what it sent would reach automations as Talk's words.
        raise Forbidden("Only AppAPI delivers Talk messages here", code="talk_delivery_only")
    talk = request.app[TALK]
    data = await _read_json(request)
    talk.stats.deliveries += 1
    talk.stats.last_delivery_at = time.time()
    mapped = map_delivery(data, BOT_NAME)
    if isinstance(mapped, str):
        talk.stats.ignored += 1
        return json_response({"ignored": mapped})
    if not request.app[TENANT].key:
        raise ServiceUnavailable(
            "Bee Flow is not set up yet (no tenant key)", code="tenant_key_missing"
        )
    if not talk.accept(mapped):
        raise ServiceUnavailable("Too many Talk deliveries are waiting", code="queue_full")
    return json_response({"ok": True, "event": mapped.event})


def install(app: web.Application) -> None:
    """The hook (after the Talk bot surface and the service client) and its health under
    `talk`; its background work ends before the sessions it uses close."""
    talk = Talk(app[SERVICE], app[NEXTCLOUD], app[TALK_BOT], app[TENANT])
    app[TALK] = talk
    add_route(app, "POST", ROUTE, hook, Access.ADMIN, service_ok=True)
    provide(app, "talk", talk.health)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await talk.close()

    app.cleanup_ctx.append(ctx)
