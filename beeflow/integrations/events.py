"""User/group events from Nextcloud: the `POST /webhook/nc-events` forwarder, and why nothing is
registered to feed it (docs/nextcloud-measured.md, "User and group events").

No Nextcloud version delivers user/group events to an ExApp: AppAPI's events_listener (up to
NC 31) stored any `eventType` but only ever fired for `node_event` (file events), it is gone on
32+ (OCS 996 / 404), and webhook_listeners refuses user/group classes. So nothing is registered;
the periodic reconciliation (beeflow.usersync) is the sync on every version. The endpoint stays
for whatever an operator points at it (a flow, a script), mapped leniently."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.health import provide
from beeflow.integrations.userevents import USER_EVENTS, USER_EVENTS_SINK
from beeflow.tasks import cancel_all, running, spawn
from beeflow.tenant.state import TENANT
from beeflow.web.auth import Access, add_route
from beeflow.web.bodies import read_capped
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

EVENT_CLASSES: Final = {
    "OCP\\User\\Events\\UserCreatedEvent": "user.created",
    "OCP\\User\\Events\\UserDeletedEvent": "user.deleted",
    "OCP\\User\\Events\\UserChangedEvent": "user.updated",
    "OCP\\Group\\Events\\UserAddedEvent": "group.member_added",
    "OCP\\Group\\Events\\UserRemovedEvent": "group.member_removed",
}
BY_SUFFIX: Final = {cls.rsplit("\\", 1)[1]: name for cls, name in EVENT_CLASSES.items()}
MAX_BODY: Final = 256 * 1024
MAX_QUEUED: Final = 1000
FORWARD_CONCURRENCY: Final = 8


# ------------------------------------------------------------------ listeners: none

LISTENERS_STATE: Final = "not_used"
LISTENERS_REASON: Final = (
    "no Nextcloud version delivers user/group events to an ExApp (AppAPI's events_listener only "
    "fired for node_event and is gone on 32+; webhook_listeners refuses user/group events): "
    "the periodic reconciliation carries user/group changes"
)


# ------------------------------------------------------------------ the webhook


def _dig(data: Mapping[str, Any], *path: str) -> Any:
    value: Any = data
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _first_str(data: Mapping[str, Any], paths: list[tuple[str, ...]]) -> str | None:
    for path in paths:
        value = _dig(data, *path)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None


_CLASS_PATHS: Final = [
    ("eventType",),
    ("event_type",),
    ("event", "class"),
    ("class",),
    ("event_subtype",),
    ("event",),
]
_UID_TOP: Final = [("userId",), ("uid",), ("user", "UID"), ("user", "uid")]
_UID_NESTED: Final = [
    ("event", "userId"),
    ("event", "uid"),
    ("event", "user", "uid"),
    ("event", "user", "UID"),
    ("event_data", "userId"),
    ("event_data", "user", "uid"),
]
_GID: Final = [
    ("groupId",),
    ("gid",),
    ("group", "gid"),
    ("group", "GID"),
    ("event", "groupId"),
    ("event", "gid"),
    ("event", "group", "gid"),
    ("event_data", "groupId"),
    ("event_data", "group", "gid"),
]


@attrs.frozen
class UserEvent:
    event: str
    uid: str | None
    group_id: str | None
    event_class: str


def map_event(data: Mapping[str, Any]) -> UserEvent | str:
    """Lenient extraction of every shape Nextcloud has sent; a string says why not."""
    event_class = _first_str(data, _CLASS_PATHS)
    if event_class is None:
        return "no_event_class"
    suffix = event_class.rsplit("\\", 1)[-1]
    event = BY_SUFFIX.get(suffix) or (event_class if event_class in USER_EVENTS else None)
    if event is None:
        return event_class[:200]
    # In webhook_listeners' envelope the top-level `user` is the actor; the subject is inside
    # `event`, so look there first when `event` is an object.
    nested_first = isinstance(data.get("event"), Mapping)
    uid_paths = _UID_NESTED + _UID_TOP if nested_first else _UID_TOP + _UID_NESTED
    return UserEvent(event, _first_str(data, uid_paths), _first_str(data, _GID), event_class)


def _ignored(what: str, code: str, **extra: Any) -> web.Response:
    return json_response({"ignored": what, "code": code, **extra})


async def nc_events(request: web.Request) -> web.Response:
    """Always 200 and fast (Nextcloud waits at most 3 s and never retries); the forward to the
    service runs in the background and is logged when it fails."""
    raw = await read_capped(request, MAX_BODY)
    if raw is None:
        return _ignored("payload_too_large", "payload_too_large")
    try:
        data = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _ignored("bad_json", "bad_json")
    if not isinstance(data, dict):
        return _ignored("bad_json", "bad_json")
    mapped = map_event(data)
    if isinstance(mapped, str):
        return _ignored(mapped, "event_ignored")
    if not mapped.uid:
        log.warning("webhook %s without a user id ignored", mapped.event)
        return _ignored(mapped.event_class, "user_missing", event=mapped.event)
    if mapped.event.startswith("group.") and not mapped.group_id:
        log.warning("webhook %s without a group id ignored", mapped.event)
        return _ignored(mapped.event_class, "group_missing", event=mapped.event)
    app = request.app
    if not app[TENANT].key:
        log.warning(
            "webhook %s not forwarded: no tenant key yet (the reconciliation sends it later)",
            mapped.event,
        )
        return _ignored(mapped.event_class, "tenant_key_missing", event=mapped.event)
    queue = app[_QUEUE]
    if queue.waiting >= MAX_QUEUED:
        log.warning("webhook %s not forwarded: %d events already queued", mapped.event, MAX_QUEUED)
        app[USER_EVENTS_SINK].stats["webhook"].failed += 1
        return _ignored(mapped.event_class, "queue_full", event=mapped.event)
    queue.waiting += 1
    spawn(_forward(app, mapped), name=f"events-forward-{mapped.event}")
    return json_response({"ok": True, "event": mapped.event, "queued": True})


@attrs.define
class _Queue:
    semaphore: asyncio.Semaphore = attrs.field(
        factory=lambda: asyncio.Semaphore(FORWARD_CONCURRENCY)
    )
    waiting: int = 0


_QUEUE: web.AppKey[_Queue] = web.AppKey("events_queue")


async def _forward(app: web.Application, event: UserEvent) -> None:
    queue = app[_QUEUE]
    sink = app[USER_EVENTS_SINK]
    try:
        async with queue.semaphore:
            assert event.uid is not None
            await sink.forward(event.event, event.uid, event.group_id, origin="webhook")
    except asyncio.CancelledError:
        # Stopped before the service answered: say so, never drop an event silently.
        sink.stats["webhook"].failed += 1
        log.warning(
            "webhook event %s for %s not delivered to the service: the connector stopped; "
            "the next reconciliation sends what the service missed",
            event.event,
            event.uid,
        )
        raise
    finally:
        queue.waiting -= 1


FORWARD_SETTLE_SECONDS: Final = 2.0


async def _queue_ctx(app: web.Application) -> AsyncIterator[None]:
    """At shutdown give queued forwards a moment, then stop the rest (each logs itself). Closed
    before the service session, which the forwards use."""
    yield
    pending = running("events-forward-")
    if pending:
        await asyncio.wait(pending, timeout=FORWARD_SETTLE_SECONDS)
    await cancel_all("events-forward-")


# ------------------------------------------------------------------ wiring


def _health(app: web.Application) -> Callable[[bool], dict[str, Any]]:
    def provide(trusted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"listeners": LISTENERS_STATE}
        if trusted:
            out["reason"] = LISTENERS_REASON
            out["webhook"] = app[USER_EVENTS_SINK].stats["webhook"].snapshot()
        return out

    return provide


def install(app: web.Application) -> None:
    """The route, its queue (drained at shutdown, before the service session closes) and its
    health fields. Needs the user-event forwarder (userevents.install) first."""
    app[_QUEUE] = _Queue()
    app.cleanup_ctx.append(_queue_ctx)
    add_route(app, "POST", "/webhook/nc-events", nc_events, Access.ADMIN, service_ok=True)
    provide(app, "events", _health(app))
