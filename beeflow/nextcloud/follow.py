"""A registration that follows what it depends on: run once now (the /init phase), again whenever
the watched value changes (the tenant key appears or rotates, Nextcloud enables the app again),
and again after a failure, with capped backoff. One run at a time; callers join the run in
flight. `under_lease` makes the job singleton work across replicas (docs/architecture.md)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

from aiohttp import web

from beeflow.health import HealthProvider
from beeflow.lease import LEASES
from beeflow.nextcloud import surface
from beeflow.phases import REGISTRATIONS, InitPhase
from beeflow.tasks import Slot

log = logging.getLogger(__name__)

# A job answers whether it is done for the watched value it ran for (False: retry later).
Job = Callable[[str], Awaitable[bool]]


def under_lease(app: web.Application, job: Job, name: str = REGISTRATIONS) -> Job:
    """`job` run as the holder of the `name` lease, so replicas on one volume re-register one
    at a time (waiting for each other). The /init pipeline already holds the registrations
    lease when its phase runs the job: the process shares that tenure. Without leases (an app
    built without them) the job runs as is."""

    async def run(reason: str) -> bool:
        leases = app.get(LEASES)
        if leases is None:
            return await job(reason)
        async with leases.get(name).hold():
            return await job(reason)

    return run


class Follower:
    """Runs `job(reason)` when `watch()` changes, or after a failed run's backoff."""

    def __init__(
        self,
        name: str,
        job: Job,
        watch: Callable[[], Hashable],
        *,
        check_every: float = 2.0,
        retry_base: float = 30.0,
        retry_cap: float = 600.0,
    ) -> None:
        self.name = name
        self._job = job
        self._watch = watch
        self.check_every = check_every
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self._run = Slot(f"{name}-run")
        self._loop = Slot(f"{name}-follow")
        self._done_for: Hashable = object()  # nothing is done yet
        self._tried_for: Hashable = object()
        self._failures = 0
        self._retry_at: float | None = None
        self._wake = asyncio.Event()
        self.runs = 0

    async def run_now(self, reason: str) -> None:
        """Run (or join the run in flight) and wait for it."""
        task = self._run.task if self._run.running else self._run.start(self._once(reason))
        assert task is not None
        await asyncio.shield(task)

    def poke(self) -> None:
        """Look at the watched value now rather than at the next check."""
        self._wake.set()

    async def _once(self, reason: str) -> None:
        watched = self._watch()
        self._tried_for = watched
        self.runs += 1
        try:
            done = await self._job(reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: the run failed", self.name)
            done = False
        if done:
            self._done_for, self._failures, self._retry_at = watched, 0, None
            return
        self._failures += 1
        delay = min(self.retry_cap, self.retry_base * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.check_every):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._run.running or self.runs == 0:
                continue  # the first run is /init's (at boot or AppAPI's call), never the loop's
            watched = self._watch()
            if watched == self._done_for:
                continue
            # A new value runs at once; the value a run failed for waits for its backoff.
            due = self._retry_at is not None and time.monotonic() >= self._retry_at
            if watched != self._tried_for or due:
                await self.run_now("changed" if watched != self._tried_for else "retry")

    async def close(self) -> None:
        await self._loop.close()
        await self._run.close()


def install_followed(
    app: web.Application,
    follower: Follower,
    *,
    surface_name: str,
    phase_name: str,
    progress: int,
    health: HealthProvider,
    before_start: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """A registration surface whose /init phase is the follower's first run and whose follower
    runs for the app's lifetime (`before_start` first, e.g. loading what an earlier start
    saved). Nothing is undone on disable (no teardown)."""

    async def phase() -> None:
        await follower.run_now("init")

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if before_start is not None:
            await before_start()
        follower.start()
        yield
        await follower.close()

    app.cleanup_ctx.append(ctx)
    surface.install(
        app,
        surface.Surface(
            name=surface_name,
            phases=[InitPhase(phase_name, progress, phase)],
            health=health,
            teardown=None,
        ),
    )
