"""The re-registrations of the Task Processing providers and the Talk bot, run outside /init when
the key or the enabled flag changes, are singleton work: under_lease runs them as the holder of
the registrations lease, so a replica waits while another holds it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from beeflow.lease import LEASES, Leases
from beeflow.nextcloud.follow import Follower, under_lease
from beeflow.phases import REGISTRATIONS
from beeflow.tasks import spawn


def _app(directory: Path, holder: str) -> tuple[web.Application, Leases]:
    app = web.Application()
    leases = app[LEASES] = Leases(directory, ttl=30.0, holder=holder)
    leases.prepare()
    return app, leases


async def test_the_job_runs_as_the_holder_and_gives_the_lease_up(tmp_path: Path) -> None:
    app, leases = _app(tmp_path, "replica-a")
    seen: list[bool] = []

    async def job(reason: str) -> bool:
        seen.append(leases.get(REGISTRATIONS).held)
        return True

    assert await under_lease(app, job)("changed") is True
    assert seen == [True]
    assert not leases.get(REGISTRATIONS).held
    # Another replica can take it now.
    _, other = _app(tmp_path, "replica-b")
    assert await other.get(REGISTRATIONS).acquire(wait=False)
    other.get(REGISTRATIONS).release()


async def test_a_replica_waits_while_another_holds_the_lease(tmp_path: Path) -> None:
    app, _ = _app(tmp_path, "replica-a")
    _, other = _app(tmp_path, "replica-b")
    holder = other.get(REGISTRATIONS)
    holder.poll = 0.02
    assert await holder.acquire(wait=False)
    ran = asyncio.Event()

    async def job(reason: str) -> bool:
        ran.set()
        return True

    app[LEASES].get(REGISTRATIONS).poll = 0.02
    follower = Follower("test", under_lease(app, job), lambda: 1)
    run = spawn(follower.run_now("changed"), name="test-follow-run")
    await asyncio.sleep(0.2)  # several polls of the lease: none may run the job
    assert not ran.is_set()
    holder.release()
    await asyncio.wait_for(run, timeout=5)
    assert ran.is_set()
    await follower.close()


async def test_without_leases_the_job_runs_as_is() -> None:
    calls: list[str] = []

    async def job(reason: str) -> bool:
        calls.append(reason)
        return False

    assert await under_lease(web.Application(), job)("init") is False
    assert calls == ["init"]


async def test_the_loop_waits_for_the_first_run_from_init() -> None:
    """Started at boot, the loop never registers on its own: the first run is /init's (so a
    connector that Nextcloud has not initialised calls nothing); after it, a change runs."""
    calls: list[str] = []
    value = 1
    ran = asyncio.Event()

    async def job(reason: str) -> bool:
        calls.append(reason)
        ran.set()
        return True

    follower = Follower("test", job, lambda: value, check_every=0.01)
    follower.start()
    for _ in range(5):
        follower.poke()
        await asyncio.sleep(0.02)
    assert calls == []
    await follower.run_now("init")
    assert calls == ["init"]
    ran.clear()
    value = 2
    follower.poke()
    await asyncio.wait_for(ran.wait(), timeout=5)
    assert calls == ["init", "changed"]
    await follower.close()
