"""Readiness and the drain at shutdown (docs/transports.md, "Shutdown order, and why"):

1. pre-stop: `/ready` answers 503 while every request is still served, for
   BEEFLOW_PRESTOP_SECONDS, so a load balancer (a Kubernetes Service, HAProxy) stops sending
   before anything is refused;
2. drain: new requests get 503 `shutting_down`, the ones in flight may finish;
3. at the drain deadline, event streams still open are ended cleanly (an event saying the
   connector restarts, then the end of the body) instead of being cut; the transport stops
   only after that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import attrs
from aiohttp import web

from beeflow.errors import ServiceUnavailable
from beeflow.web.responses import Handler

log = logging.getLogger(__name__)

# Of the drain's grace period, the last this long is left to streams ended at its deadline to
# write their last event (they do at their next event boundary, within milliseconds when idle):
# the whole stop stays within BEEFLOW_SHUTDOWN_GRACE_SECONDS.
STREAM_END_SECONDS: Final = 0.5

STARTING: Final = "starting"
READY: Final = "ready"
PRESTOP: Final = "prestop"
DRAINING_STATE: Final = "draining"


class StreamEnd:
    """Set once, at the drain deadline: event streams end at their next event boundary. The
    streaming core subscribes a callback per open stream (it wakes the stream's read)."""

    __slots__ = ("_callbacks", "_set")

    def __init__(self) -> None:
        self._set = False
        self._callbacks: set[Callable[[], None]] = set()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        for callback in list(self._callbacks):
            callback()

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.add(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.discard(callback)

    @property
    def open_streams(self) -> int:
        return len(self._callbacks)


@attrs.define
class Draining:
    """The process's place in its life (starting, ready, pre-stop, draining) and the requests
    still running."""

    event: asyncio.Event = attrs.field(factory=asyncio.Event)
    in_flight: int = 0
    state: str = STARTING
    streams: StreamEnd = attrs.field(factory=StreamEnd)
    _idle: asyncio.Event = attrs.field(factory=asyncio.Event)

    def __attrs_post_init__(self) -> None:
        self._idle.set()

    @property
    def active(self) -> bool:
        """New requests are refused (the drain began)."""
        return self.event.is_set()

    @property
    def ready(self) -> bool:
        return self.state == READY

    def started(self) -> None:
        if self.state == STARTING:
            self.state = READY

    def prestop(self) -> None:
        """Say not-ready, keep serving."""
        if self.state in (STARTING, READY):
            self.state = PRESTOP

    def begin(self) -> None:
        self.state = DRAINING_STATE
        self.event.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


DRAINING: web.AppKey[Draining] = web.AppKey("draining")


async def drain(draining: Draining, *, prestop: float, grace: float) -> bool:
    """Steps 1-3 of the module docstring. True when nothing was left running at the end."""
    if prestop > 0:
        draining.prestop()
        log.info("pre-stop: not ready, still serving for %.1f s", prestop)
        await asyncio.sleep(prestop)
    draining.begin()
    log.info("draining %d in-flight request(s)", draining.in_flight)
    end_within = min(STREAM_END_SECONDS, grace / 2)
    if await draining.wait_idle(grace - end_within):
        return True
    streams = draining.streams.open_streams
    if streams:
        log.info("ending %d open stream(s) at the drain deadline", streams)
    draining.streams.set()
    if await draining.wait_idle(end_within):
        return True
    log.warning("%d request(s) still running after %.1f s; closing them", draining.in_flight, grace)
    return False


@web.middleware
async def draining_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While shutting down, answer new requests 503 and count the ones still running."""
    draining = request.app[DRAINING]
    if draining.active:
        raise ServiceUnavailable(
            "The connector is restarting; try again in a moment",
            code="shutting_down",
            headers={"Retry-After": "5", "Connection": "close"},
        )
    draining.enter()
    try:
        return await handler(request)
    finally:
        draining.leave()


def install(app: web.Application) -> Draining:
    """The middleware and its state; ready once the app's start-up work is done; cli drains
    it on SIGTERM."""
    draining = app[DRAINING] = Draining()
    app.middlewares.append(draining_middleware)

    async def on_startup(app: web.Application) -> None:
        draining.started()

    # Appended now, it runs after every cleanup_ctx's start-up part (aiohttp runs those first).
    app.on_startup.append(on_startup)
    return draining
