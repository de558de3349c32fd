"""Draining at shutdown: new requests get 503 `shutting_down`, the ones in flight finish."""

from __future__ import annotations

import asyncio

import attrs
from aiohttp import web

from beeflow.errors import ServiceUnavailable
from beeflow.web.responses import Handler


@attrs.define
class Draining:
    """Set once shutdown begins; counts the requests still running."""

    event: asyncio.Event = attrs.field(factory=asyncio.Event)
    in_flight: int = 0
    _idle: asyncio.Event = attrs.field(factory=asyncio.Event)

    def __attrs_post_init__(self) -> None:
        self._idle.set()

    @property
    def active(self) -> bool:
        return self.event.is_set()

    def begin(self) -> None:
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
    """The middleware and its state; cli begins the drain on SIGTERM."""
    draining = app[DRAINING] = Draining()
    app.middlewares.append(draining_middleware)
    return draining
