"""`POST /hooks/nextcloud`: Nextcloud's webhook_listeners deliveries, checked, turned into Bee
Flow automation events and queued for the service (docs/automations.md, "Delivery").

The order of the checks: no tenant key yet -> 503 (there is no secret to check against); then
the secret, in constant time, before anything is read (a wrong one -> 401, and past 60 wrong
ones a minute -> 429: only failures are counted, so a genuine delivery is never held back);
then the body (512 KiB, JSON whatever its Content-Type: Nextcloud sends none). Nextcloud gets
its answer at once: it waits 3 s and never retries, so forwarding runs behind the answer."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final, NoReturn

from aiohttp import web

from beeflow.config import CONFIG
from beeflow.errors import (
    BadRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from beeflow.health import provide
from beeflow.integrations.hookpayloads import DeckTransitions, payload_for
from beeflow.integrations.hookqueue import Forwarder
from beeflow.limits import Interval, RateLimiter
from beeflow.nextcloud.hooks import (
    EVENT_BY_CLASS,
    HOOK_PATH,
    SECRET_HEADER,
    hook_secret,
    normalise_class,
)
from beeflow.nextcloud.webhooks import REGISTRAR
from beeflow.service_client import SERVICE
from beeflow.tenant.state import TENANT
from beeflow.web.auth import Access, add_route
from beeflow.web.bodies import read_capped
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

MAX_BODY: Final = 512 * 1024
FAILURE_LIMIT: Final = 60  # wrong secrets per window before 429
FAILURE_WINDOW: Final = 60.0
SETTLE_SECONDS: Final = 2.0  # at shutdown, before what is queued is kept for the next start


class Automations:
    """The delivery route's state: the forwarder, the Deck transitions, the limiter."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.deck = DeckTransitions()
        self.refusals = RateLimiter(limit=FAILURE_LIMIT, window=FAILURE_WINDOW)
        self.settle = SETTLE_SECONDS
        self._warn = Interval(60.0)
        self._secret_for: tuple[str, bytes] | None = None

    def _current(self, key: str) -> bytes:
        cached = self._secret_for
        if cached is None or cached[0] != key:
            cached = (key, hook_secret(key).encode("ascii"))
            self._secret_for = cached
        return cached[1]

    def secret_ok(self, key: str, offered: str, registered: str | None) -> bool:
        """Constant time against the secret of the key in force and, until the rows carry it,
        the one Nextcloud's rows still hold (a new key, before its registration finished)."""
        given = offered.encode("utf-8", "surrogateescape")
        ok = hmac.compare_digest(given, self._current(key))
        if registered is not None:
            ok = hmac.compare_digest(given, registered.encode("ascii")) or ok
        return ok

    def refused(self) -> NoReturn:
        self.forwarder.stats.refused_secrets += 1
        within = self.refusals.penalise("hook")
        if self._warn.ready():
            log.warning(
                "webhook delivery with a wrong or missing %s refused (%d so far)",
                SECRET_HEADER,
                self.forwarder.stats.refused_secrets,
            )
        if not within:
            raise TooManyRequests(
                "Too many deliveries with a wrong hook secret",
                code="hook_secret_rate_limited",
                retry_after=self.refusals.retry_after("hook"),
            )
        raise Unauthorized("Invalid hook secret", code="hook_secret_invalid")

    def health(self, trusted: bool) -> dict[str, Any]:
        if not trusted:
            return {}
        return {
            **self.forwarder.stats.snapshot(),
            "queued": self.forwarder.queue.qsize(),
            "deckCardsKnown": len(self.deck),
        }


AUTOMATIONS: web.AppKey[Automations] = web.AppKey("automations")


async def _body(request: web.Request) -> bytes:
    raw = await read_capped(request, MAX_BODY)
    if raw is None:
        raise PayloadTooLarge(f"A delivery is at most {MAX_BODY // 1024} KiB")
    return raw


def _envelope(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("The delivery is not JSON", code="bad_json") from None
    if not isinstance(data, dict):
        raise BadRequest("The delivery is not a JSON object", code="bad_json")
    return data


async def deliver(request: web.Request) -> web.Response:
    app = request.app
    hub = app[AUTOMATIONS]
    key = app[TENANT].key
    if not key:
        raise ServiceUnavailable(
            "The connector has no tenant key yet", code="not_bootstrapped", headers=_RETRY
        )
    registrar = app.get(REGISTRAR)
    registered = registrar.registered_secret if registrar is not None else None
    if not hub.secret_ok(key, request.headers.get(SECRET_HEADER, ""), registered):
        hub.refused()
    envelope = _envelope(await _body(request))
    stats = hub.forwarder.stats
    stats.last_delivery_at = time.time()
    event_obj = envelope.get("event")
    php_class = event_obj.get("class") if isinstance(event_obj, dict) else None
    if not isinstance(php_class, str) or not php_class:
        stats.ignored += 1
        return json_response({"ignored": None, "code": "event_class_missing"})
    event = EVENT_BY_CLASS.get(normalise_class(php_class))
    if event is None:
        # 200: a class we do not (or no longer) handle is nothing Nextcloud should resend.
        stats.ignored += 1
        return json_response({"ignored": php_class[:200], "code": "event_ignored"})
    user = envelope.get("user")
    uid = user.get("uid") if isinstance(user, dict) else None
    payload = payload_for(event, envelope)
    events = [event, *hub.deck.extra_events(event, payload)]
    if hub.forwarder.room() < len(events):
        hub.forwarder.stats.queue_full += 1
        raise ServiceUnavailable(
            "The connector's queue of automation events is full",
            code="queue_full",
            headers=_RETRY,
        )
    stats.received += 1
    nc_uid = uid if isinstance(uid, str) and uid else None
    for name in events:
        hub.forwarder.offer({"event": name, "ncUid": nc_uid, "payload": payload})
    return json_response({"ok": True, "event": event, "events": events, "queued": len(events)})


_RETRY: Final = {"Retry-After": "60"}


def install(app: web.Application) -> Automations:
    """The route (PUBLIC: the hook secret is its authentication), the forwarder (started with
    the app, drained before the service session closes: install after the service client) and
    its health fields."""
    config = app[CONFIG]
    forwarder = Forwarder.for_service(app[SERVICE], storage=config.persistent_storage)
    hub = Automations(forwarder)
    app[AUTOMATIONS] = hub

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await forwarder.restore()
        forwarder.start()
        yield
        await forwarder.stop(hub.settle)

    app.cleanup_ctx.append(ctx)
    add_route(app, "POST", HOOK_PATH, deliver, Access.PUBLIC)
    provide(app, "automations", hub.health)
    return hub
