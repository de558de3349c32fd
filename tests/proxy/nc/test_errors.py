"""Upstream failures on /nc: Nextcloud unreachable (502), no response headers in time (504), and
no total timeout on a body that keeps coming."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from beeflow.nextcloud.client import NEXTCLOUD
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud_dav import HOLD_FIRST, HOLD_REST, FakeDav
from tests.helpers import RunningConnector
from tests.proxy.nc.caller import NcCaller, outcome


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_nextcloud_unreachable_is_502(
    connector_factory: ConnectorFactory, session: aiohttp.ClientSession
) -> None:
    conn = await connector_factory(NEXTCLOUD_URL=f"http://127.0.0.1:{_closed_port()}")
    caller = NcCaller(session, conn.url)
    resp = await caller.request("PUT", "/nc/remote.php/dav/files/alice/x", body=b"x" * 100_000)
    async with resp:
        assert resp.status == 502
        body = await resp.json()
    assert body["code"] == "nextcloud_unreachable"
    assert "127.0.0.1" not in body["error"]


@pytest.fixture
async def impatient(
    connector_factory: ConnectorFactory, dav: FakeDav
) -> AsyncIterator[RunningConnector]:
    conn = await connector_factory(BEEFLOW_NC_HEADERS_TIMEOUT_SECONDS="0.5")
    yield conn
    dav.release.set()  # let the fake's held handlers finish before teardown


async def test_no_headers_in_time_is_504(
    impatient: RunningConnector, session: aiohttp.ClientSession, dav: FakeDav
) -> None:
    caller = NcCaller(session, impatient.url)
    resp = await caller.request("GET", "/nc/index.php/apps/echo/stall")
    assert await outcome(resp) == (504, "nextcloud_timeout")
    assert dav.entered.is_set()


async def test_a_slow_body_is_not_cut(
    impatient: RunningConnector, session: aiohttp.ClientSession, dav: FakeDav
) -> None:
    """The headers timeout ends with the headers: a body pausing longer still completes."""
    caller = NcCaller(session, impatient.url)
    resp = await caller.request("GET", "/nc/index.php/apps/echo/hold")
    async with resp:
        assert resp.status == 200
        assert await resp.content.readexactly(len(HOLD_FIRST)) == HOLD_FIRST
        await asyncio.sleep(1.0)  # the pause under test: longer than the 0.5 s timeout
        dav.release.set()
        assert await resp.content.read() == HOLD_REST


async def test_upload_longer_than_the_headers_timeout(
    impatient: RunningConnector, session: aiohttp.ClientSession, dav: FakeDav
) -> None:
    """The timer starts after the body was handed over, not at the start of a long upload."""
    caller = NcCaller(session, impatient.url)
    body = b"z" * (10 * 256 * 1024)

    async def slow() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 256 * 1024):
            await asyncio.sleep(0.1)  # the caller's own pace: 1 s in all
            yield body[i : i + 256 * 1024]

    resp = await caller.request(
        "PUT",
        "/nc/remote.php/dav/files/alice/slow.bin",
        data=slow(),
        body_sha256=hashlib.sha256(body).hexdigest(),
    )
    assert (await outcome(resp))[0] == 201
    assert dav.last("PUT").size == len(body)


async def _raw_exchange(conn: RunningConnector, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(conn.url.host, conn.url.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _head(caller: NcCaller, method: str, target: str, extra: str = "") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [
        f"{k}: {v}" for k, v in caller.headers(method, target).items() if k != "X-Beeflow-NC-Uid"
    ]
    return ("\r\n".join(lines) + "\r\n" + extra).encode()


async def test_uid_that_is_not_utf8_is_400(
    caller: NcCaller, nc_conn: RunningConnector, dav: FakeDav
) -> None:
    raw = _head(caller, "GET", "/nc/ocs/v2.php/apps/echo/u") + b"X-Beeflow-NC-Uid: jos\xe9\r\n\r\n"
    answer = await _raw_exchange(nc_conn, raw)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"uid_invalid"' in answer
    assert dav.seen == []


async def test_paused_while_nextcloud_refuses_our_logins(
    caller: NcCaller, nc_conn: RunningConnector, dav: FakeDav
) -> None:
    """Once the shared AppAPI failure budget is spent, /nc forwards nothing (each
    call would count towards Nextcloud's lock-out of this IP) until it recovers."""
    budget = nc_conn.app[NEXTCLOUD].budget
    for _ in range(budget.limit):
        budget.record_failure("test: refused")
    resp = await caller.request("GET", "/nc/ocs/v2.php/apps/echo/p")
    async with resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["code"] == "appapi_auth_paused"
    assert "occ security:bruteforce:reset" in body["error"]
    assert dav.seen == []
    budget.reset()
    assert (await outcome(await caller.request("GET", "/nc/ocs/v2.php/apps/echo/p")))[0] == 200
