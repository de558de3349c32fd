"""An upstream that answers an informational status (1xx) as its final answer, `101 Switching
Protocols` above all, gets a 502, never a relayed 101 after which the client's connection
would carry whatever the upstream sends next. 100/103 before a real answer stay invisible."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from beeflow.proxy.relay import RelayOptions, relay
from beeflow.proxy.upstream import NO_BODY, PoolSettings, UpstreamClient, upstream_client
from beeflow.web.errors import error_middleware
from tests.conftest import ConnectorFactory
from tests.proxy.nc.caller import NcCaller, outcome
from tests.reliability.rawhttp import exchange, request_bytes

SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: victim\r\n\r\n"
)
EARLY_HINTS_THEN_OK = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
)
CLIENT: web.AppKey[UpstreamClient] = web.AppKey("test_client")


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[bytes], Awaitable[URL]]]:
    """A loopback server that reads a request head and answers with the given bytes, then
    waits for the client to close (an upgraded peer would keep talking)."""
    servers: list[asyncio.Server] = []

    async def start(answer: bytes) -> URL:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
                await reader.read()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return URL.build(scheme="http", host="127.0.0.1", port=port)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def relaying(
    raw_upstream: Callable[[bytes], Awaitable[URL]],
) -> AsyncIterator[Callable[[bytes], Awaitable[int]]]:
    """A bare app whose one route relays the raw upstream's answer (the streaming core only)."""
    runners: list[web.AppRunner] = []

    async def start(answer: bytes) -> int:
        upstream_url = await raw_upstream(answer)
        app = web.Application(middlewares=[error_middleware])

        async def context(app: web.Application) -> AsyncIterator[None]:
            async with upstream_client(PoolSettings(name="Test upstream")) as client:
                app[CLIENT] = client
                yield

        async def route(request: web.Request) -> web.StreamResponse:
            upstream = await request.app[CLIENT].send(
                "GET", upstream_url / "x", CIMultiDict(), NO_BODY
            )
            return await relay(request, upstream, RelayOptions())

        app.cleanup_ctx.append(context)
        app.router.add_get("/r", route)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        runners.append(runner)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_101_from_the_upstream_is_a_502_and_nothing_follows(
    relaying: Callable[[bytes], Awaitable[int]],
) -> None:
    port = await relaying(SWITCH)
    resp = await exchange("127.0.0.1", port, request_bytes("GET", "/r"), wait_close=0.5)
    assert resp.status == 502
    assert resp.code == "upstream_bad_response"
    assert b"smuggled" not in resp.raw + resp.extra
    assert b"101" not in resp.raw.split(b"\r\n", 1)[0]


async def test_103_before_the_answer_is_skipped(
    relaying: Callable[[bytes], Awaitable[int]],
) -> None:
    port = await relaying(EARLY_HINTS_THEN_OK)
    resp = await exchange("127.0.0.1", port, request_bytes("GET", "/r"))
    assert resp.status == 200
    assert resp.body == b"ok"


async def test_101_from_nextcloud_on_nc(
    connector_factory: ConnectorFactory,
    raw_upstream: Callable[[bytes], Awaitable[URL]],
) -> None:
    """End to end on /nc: the signed call gets 502 nextcloud_bad_response and the caller's
    keep-alive connection still speaks HTTP to the connector afterwards."""
    nextcloud = await raw_upstream(SWITCH)
    conn = await connector_factory(NEXTCLOUD_URL=str(nextcloud))
    async with aiohttp.ClientSession() as session:
        caller = NcCaller(session, conn.url)
        target = "/nc/remote.php/dav/files/alice/a.txt"
        assert await outcome(await caller.request("GET", target)) == (
            502,
            "nextcloud_bad_response",
        )
        async with session.get(conn.url / "heartbeat") as resp:
            assert resp.status == 200
