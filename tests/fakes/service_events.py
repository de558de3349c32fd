"""The Bee Flow service's automation events ingest, `POST /api/automation/events/nextcloud`, as
`server/routes/automation/events.js` (Bee-Flow/Bee-Flow @3c2dabd9) has it:

* the events limiter first: 600 requests a minute per client IP (429);
* `express.json({limit: '512kb'})` with the raw body kept: a larger JSON body is 413, JSON that
  does not parse is 400, and a body that is not `application/json` is not parsed at all (no
  raw body, so the signature is over an empty body and fails);
* `verifyNcConnectorSig`: the organisation of `X-Beeflow-NC-Instance-Id`, its tenant key,
  `ts.hex` within 300 s, HMAC over `ts\\nMETHOD\\noriginalUrl\\nrawBody`; any failure
  401 `{"error": "Invalid or missing signature"}` (the same check as nc-user-sync: the fake
  shares ServiceControl.check_signature);
* no `event` -> 400 `{"error": "Missing event"}`; otherwise the event is dispatched (recorded
  here) and the answer is 202 with an empty body.

The route sits behind the service's `automation` module and `automations` licence gates
(index.js); what they answer was not read, so `gated` answers the service's JSON 404."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, Final

import attrs
from aiohttp import web
from multidict import CIMultiDict

if TYPE_CHECKING:
    from tests.fakes.service_control import ServiceControl

PATH: Final = "/api/automation/events/nextcloud"
BODY_LIMIT: Final = 512 * 1024
EVENTS_PER_MINUTE: Final = 600


@attrs.define
class EventDelivery:
    headers: CIMultiDict[str]
    body: bytes
    status: int
    reason: str  # why it was refused ("" when accepted)
    arrived_at: float

    def json(self) -> Any:
        return json.loads(self.body)


class AutomationIngest:
    def __init__(self, control: ServiceControl) -> None:
        self.control = control
        self.deliveries: list[EventDelivery] = []
        self.gated = False  # the automation module or licence is missing: 404
        self.status: int | None = None  # fault injection: answer this instead (5xx, 429)
        self.gate: asyncio.Event | None = None  # hold answers until set
        self._hits: dict[str, list[float]] = {}
        self._arrival = asyncio.Condition()

    @property
    def events(self) -> list[dict[str, Any]]:
        """What the service dispatched, in arrival order."""
        return [d.json() for d in self.deliveries if d.status == 202]

    async def wait_events(self, count: int, *, timeout: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout), self._arrival:
            while len(self.events) < count:
                await self._arrival.wait()
        return self.events

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self._ingest)]

    def _limited(self, ip: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._hits.get(ip, []) if now - t < 60.0] + [now]
        self._hits[ip] = recent
        return len(recent) > EVENTS_PER_MINUTE

    async def _ingest(self, request: web.Request) -> web.Response:
        if self.gated:
            return web.json_response({"error": "Not found"}, status=404)
        if self._limited(request.remote or "?"):
            return await self._record(request, b"", 429, "limited", {"error": "Too many requests"})
        body = await request.read()
        is_json = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if is_json == "application/json":
            if len(body) > BODY_LIMIT:
                return await self._record(
                    request, body, 413, "too_large", {"error": "request entity too large"}
                )
            try:
                parsed = json.loads(body)
            except ValueError:
                return await self._record(request, body, 400, "json", {"error": "Bad JSON"})
        else:
            parsed = None
        reason = self.control.check_signature(request, body)
        if reason:
            answer = {"error": "Invalid or missing signature"}
            return await self._record(request, body, 401, reason, answer)
        if not isinstance(parsed, dict) or not parsed.get("event"):
            return await self._record(request, body, 400, "event", {"error": "Missing event"})
        if self.gate is not None:
            await self.gate.wait()
        if self.status is not None:
            answer = {"error": "Internal server error"}
            return await self._record(request, body, self.status, "fault", answer)
        return await self._record(request, body, 202, "", None)

    async def _record(
        self, request: web.Request, body: bytes, status: int, reason: str, answer: Any
    ) -> web.Response:
        delivery = EventDelivery(
            CIMultiDict(request.headers), body, status, reason, time.monotonic()
        )
        async with self._arrival:
            self.deliveries.append(delivery)
            self._arrival.notify_all()
        if answer is None:
            return web.Response(status=status)
        return web.json_response(answer, status=status)
