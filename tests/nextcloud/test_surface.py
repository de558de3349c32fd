"""A registration surface plugs in with one call: its /init phases run in the pipeline, its
health fields appear, and its teardown runs when Nextcloud disables the app."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from beeflow.health import HEALTH
from beeflow.nextcloud import surface
from beeflow.phases import INIT_PHASES, InitPhase
from tests.conftest import ConnectorFactory
from tests.helpers import wait_for


async def test_a_surface_contributes_phases_health_and_teardown(
    connector_factory: ConnectorFactory,
) -> None:
    ran: list[str] = []
    torn_down = asyncio.Event()

    async def register() -> None:
        ran.append("register")

    async def teardown() -> None:
        torn_down.set()

    def health(trusted: bool) -> dict[str, Any]:
        return {"registered": bool(ran)} if trusted else {}

    def install(app: web.Application) -> None:
        surface.install(
            app,
            surface.Surface(
                name="example",
                phases=[InitPhase("example", 70, register)],
                health=health,
                teardown=teardown,
            ),
        )

    conn = await connector_factory(customise=install)
    assert [p.name for p in conn.app[INIT_PHASES] if p.progress == 70] == ["example"]
    assert conn.app[HEALTH]["example"](True) == {"registered": False}
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await wait_for(lambda: bool(ran))
    assert ran == ["register"]
    assert not torn_down.is_set()
    async with await conn.request("PUT", "/enabled?enabled=0", user="") as resp:
        assert (await resp.json()) == {"error": ""}
    await asyncio.wait_for(torn_down.wait(), 5.0)


async def test_a_failing_teardown_does_not_stop_the_others(
    connector_factory: ConnectorFactory,
) -> None:
    second = asyncio.Event()

    async def broken() -> None:
        raise RuntimeError("teardown failed")

    async def fine() -> None:
        second.set()

    def install(app: web.Application) -> None:
        for name, teardown in (("first", broken), ("second", fine)):
            surface.install(
                app, surface.Surface(name=name, phases=[], health=lambda _: {}, teardown=teardown)
            )

    conn = await connector_factory(customise=install)
    await surface.teardown_all(conn.app)
    assert second.is_set()


async def test_two_replicas_run_a_surfaces_registrations_one_at_a_time(
    connector_factory: ConnectorFactory,
) -> None:
    """Two connectors on one storage (replicas on one volume) get /init together: a surface's
    phases run under the registrations lease, so one registers while the other waits."""
    spans: list[tuple[str, float, float]] = []

    def install(name: str) -> Any:
        async def register() -> None:
            started = asyncio.get_running_loop().time()
            await asyncio.sleep(0.3)
            spans.append((name, started, asyncio.get_running_loop().time()))

        def customise(app: web.Application) -> None:
            phase = InitPhase("example", 70, register)
            surface.install(
                app, surface.Surface(name="example", phases=[phase], health=lambda _: {})
            )

        return customise

    env = {"BEEFLOW_LEASE_TTL_SECONDS": "2"}  # the waiting one looks again every 0.2 s
    a = await connector_factory(customise=install("a"), **env)
    b = await connector_factory(customise=install("b"), **env)
    assert {p.lease for p in a.app[INIT_PHASES] if p.progress == 70} == {"registrations"}
    for conn in (a, b):
        async with await conn.request("POST", "/init", user="") as resp:
            assert resp.status == 200
    await wait_for(lambda: len(spans) == 2, timeout=10)
    (_, _, end1), (_, start2, _) = sorted(spans, key=lambda s: s[1])
    assert start2 >= end1  # never both at once
