"""Timing towards Nextcloud: MOVE/COPY get a much longer response-headers deadline (chunk
assembly of a big upload, COPY of a big folder), and pooled keep-alive connections are retired
before Apache's default KeepAliveTimeout (5 s) can close them under a reused request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import attrs
import pytest
from aiohttp import web
from yarl import URL

from beeflow import tasks
from beeflow.proxy.nc.handler import KEEPALIVE_SECONDS
from tests.conftest import ConnectorFactory
from tests.proxy.nc.caller import NcCaller, outcome

DAV = "/nc/remote.php/dav/files/alice"


@attrs.define
class SlowNextcloud:
    """A stand-in Nextcloud: answers everything 201 at once, except a MOVE or COPY, which waits
    for `release`. Records each request's verb and client port (one port = one connection)."""

    seen: list[tuple[str, int]] = attrs.field(factory=list)
    entered: asyncio.Event = attrs.field(factory=asyncio.Event)
    release: asyncio.Event = attrs.field(factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append((request.method, peer[1] if peer else 0))
        await request.read()
        if request.method in ("MOVE", "COPY"):
            self.entered.set()
            await self.release.wait()
        return web.Response(status=201)


@pytest.fixture
async def slow_nc() -> AsyncIterator[tuple[SlowNextcloud, URL]]:
    nc = SlowNextcloud()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", nc.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield nc, URL(f"http://127.0.0.1:{port}")
    finally:
        nc.release.set()
        await runner.cleanup()


@pytest.mark.parametrize("verb", ["MOVE", "COPY"])
async def test_move_and_copy_outlast_the_headers_timeout(
    connector_factory: ConnectorFactory,
    session: aiohttp.ClientSession,
    slow_nc: tuple[SlowNextcloud, URL],
    verb: str,
) -> None:
    nc, url = slow_nc
    conn = await connector_factory(NEXTCLOUD_URL=str(url), BEEFLOW_NC_HEADERS_TIMEOUT_SECONDS="0.5")
    caller = NcCaller(session, conn.url)
    call = tasks.spawn(
        caller.request(
            verb,
            f"{DAV}/big",
            tunnel=True,
            headers={"Destination": f"{url}/remote.php/dav/files/alice/big2"},
        ),
        name="slow-move",
    )
    await asyncio.wait_for(nc.entered.wait(), 5)
    await asyncio.sleep(1.0)  # the pause under test: twice the 0.5 s headers timeout
    nc.release.set()
    assert (await outcome(await call))[0] == 201
    # Other verbs keep the short deadline.
    nc.release.clear()
    resp = await caller.request("GET", f"{DAV}/x")
    assert (await outcome(resp))[0] == 201


async def test_idle_connections_are_retired_before_apaches_5_seconds(
    connector_factory: ConnectorFactory,
    session: aiohttp.ClientSession,
    slow_nc: tuple[SlowNextcloud, URL],
) -> None:
    assert KEEPALIVE_SECONDS < 5
    nc, url = slow_nc
    conn = await connector_factory(NEXTCLOUD_URL=str(url))
    caller = NcCaller(session, conn.url)
    for body in (b"a", b"b"):  # back to back: the pooled connection is reused
        assert (await outcome(await caller.request("PUT", f"{DAV}/a", body=body)))[0] == 201
    assert nc.seen[0][1] == nc.seen[1][1]
    await asyncio.sleep(KEEPALIVE_SECONDS + 0.3)  # the idle time under test
    assert (await outcome(await caller.request("PUT", f"{DAV}/a", body=b"a")))[0] == 201
    assert nc.seen[2][1] != nc.seen[1][1]  # a fresh connection, not one Apache may be closing
