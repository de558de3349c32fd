"""Small runtime state objects shared across layers (no I/O, no imports from features)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from yarl import URL


@attrs.define
class Draining:
    """Set once shutdown begins: new requests get 503 `shutting_down`; in-flight ones finish."""

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


@attrs.frozen
class InitPhase:
    """One step of the /init pipeline. Phases with the same `progress` run concurrently; the
    pipeline reports `progress` to Nextcloud once all of them have finished."""

    name: str
    progress: int
    run: Callable[[], Awaitable[None]]


# A health provider contributes advisory fields to /heartbeat, /setup/status and doctor. It is
# called with trusted=True only for callers presenting the valid AppAPI secret; it must be cheap
# and free of I/O.
HealthProvider = Callable[[bool], dict[str, Any]]


@attrs.define
class ApiBase:
    """The Bee Flow service base URL in force now. Config gives the start value; the setup picker
    may change it live (source "setup"), and a cached tenant binding may pin it (source "bound")."""

    url: URL
    source: str = "default"  # env | setup | bound | default

    @property
    def locked(self) -> bool:
        """BEEFLOW_API_BASE_URL in the environment wins over the picker (409 env_locked)."""
        return self.source == "env"
