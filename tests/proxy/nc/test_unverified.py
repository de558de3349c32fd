"""Bodies on /nc that arrive before their signature can be checked (docs/nc-proxy.md, "Limits"):
what is refused from the head alone, the idle cut of a stalled body, and the caps on uploads
still unverified, which never touch verified traffic."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from beeflow.proxy.nc.spool import SPOOLS
from beeflow.proxy.nc.uploads import UPLOADS
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import RunningConnector, appapi_headers
from tests.proxy.nc.caller import NcCaller, outcome
from tests.reliability.rawhttp import exchange, request_bytes

DAV = "/nc/remote.php/dav/files/alice"
FORGED = "ab" * 32


def forged_put(length: int, *, uid: str = "alice", target: str = f"{DAV}/f.bin") -> bytes:
    return request_bytes(
        "PUT",
        target,
        [
            ("X-Beeflow-Sig", f"{int(time.time())}.{FORGED}"),
            ("X-Beeflow-NC-Uid", uid),
            ("Content-Length", str(length)),
        ],
    )


@pytest.fixture
async def held() -> AsyncIterator[list[asyncio.StreamWriter]]:
    """Connections a test leaves open on purpose, closed at its end."""
    writers: list[asyncio.StreamWriter] = []
    yield writers
    for writer in writers:
        writer.transport.abort()


Opener = Callable[[RunningConnector, bytes], Awaitable[asyncio.StreamReader]]


@pytest.fixture
def open_upload(held: list[asyncio.StreamWriter]) -> Opener:
    async def start(conn: RunningConnector, data: bytes) -> asyncio.StreamReader:
        assert conn.url.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", conn.url.port)
        held.append(writer)
        writer.write(data)
        await writer.drain()
        return reader

    return start


async def answer(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """One response (head and Content-Length body), whether or not the connection closes."""
    async with asyncio.timeout(within):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return head + await reader.readexactly(length)


async def wait_active(conn: RunningConnector, count: int) -> None:
    async with asyncio.timeout(5):
        while conn.app[UPLOADS].active != count:
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------ before the body


@pytest.mark.parametrize(
    ("uid", "code"),
    [("a:b", "uid_invalid"), ("x" * 300, "uid_invalid")],
)
async def test_the_uid_is_checked_before_the_body(
    nc_conn: RunningConnector, uid: str, code: str
) -> None:
    assert nc_conn.url.port is not None
    resp = await exchange("127.0.0.1", nc_conn.url.port, forged_put(50_000_000, uid=uid))
    assert (resp.status, resp.code) == (400, code)
    assert resp.elapsed < 2
    assert nc_conn.app[SPOOLS].opened == 0


async def test_repeated_signed_headers_are_refused(nc_conn: RunningConnector) -> None:
    assert nc_conn.url.port is not None
    head = request_bytes(
        "GET",
        f"{DAV}/",
        [
            ("X-Beeflow-Sig", f"{int(time.time())}.{FORGED}"),
            ("X-Beeflow-NC-Uid", "alice"),
            ("X-Beeflow-NC-Uid", "admin"),
        ],
    )
    resp = await exchange("127.0.0.1", nc_conn.url.port, head)
    assert (resp.status, resp.code) == (400, "header_repeated")


# ------------------------------------------------------------------ a stalled body


async def test_a_stalled_body_is_cut_and_its_spool_freed(
    connector_factory: ConnectorFactory, spool_dir: Path, open_upload: Opener
) -> None:
    conn = await connector_factory(
        BEEFLOW_SPOOL_DIR=str(spool_dir), BEEFLOW_NC_BODY_IDLE_SECONDS="0.3"
    )
    began = time.monotonic()
    reader = await open_upload(conn, forged_put(1000) + b"0123456789")
    got = await answer(reader)
    took = time.monotonic() - began
    assert got.startswith(b"HTTP/1.1 408 ")
    assert b'"body_timeout"' in got
    assert 0.25 < took < 3, took
    async with asyncio.timeout(2):
        assert await reader.read() == b""  # and the connection is closed
    async with asyncio.timeout(5):
        await conn.app[SPOOLS].wait_idle()
    assert conn.app[UPLOADS].active == 0
    assert conn.app[UPLOADS].held == 0


async def test_a_slow_but_steady_body_is_not_cut(
    connector_factory: ConnectorFactory, session: aiohttp.ClientSession, dav: FakeDav
) -> None:
    conn = await connector_factory(BEEFLOW_NC_BODY_IDLE_SECONDS="0.3")
    caller = NcCaller(session, conn.url)
    body = b"s" * 12

    async def trickle() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 2):
            await asyncio.sleep(0.1)
            yield body[i : i + 2]

    resp = await caller.request(
        "PUT",
        f"{DAV}/slow.txt",
        data=trickle(),
        body_sha256=hashlib.sha256(body).hexdigest(),
        headers={"Content-Length": str(len(body))},
    )
    assert (await outcome(resp))[0] == 201
    assert dav.file("alice", "slow.txt").read_bytes() == body


# ------------------------------------------------------------------ the caps


async def test_unverified_uploads_are_capped_by_count(
    connector_factory: ConnectorFactory,
    session: aiohttp.ClientSession,
    open_upload: Opener,
    dav: FakeDav,
) -> None:
    conn = await connector_factory(
        BEEFLOW_NC_UNVERIFIED_UPLOADS="2", BEEFLOW_NC_BODY_IDLE_SECONDS="30"
    )
    for _ in range(2):
        await open_upload(conn, forged_put(10_000) + b"x" * 10)
    await wait_active(conn, 2)
    assert conn.url.port is not None
    third = await exchange("127.0.0.1", conn.url.port, forged_put(10_000) + b"x" * 10)
    assert (third.status, third.code) == (503, "unverified_uploads_full")
    assert third.headers["Retry-After"] == "5"
    # The same answer comes before `100 Continue`, so the body is never sent.
    expect = forged_put(10_000).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n", 1)
    early = await exchange("127.0.0.1", conn.url.port, expect)
    assert (early.status, early.code) == (503, "unverified_uploads_full")
    # Verified traffic is not touched: a call without a body, a v3 upload, a v1 upload.
    caller = NcCaller(session, conn.url)
    (dav.root / "alice" / "g.txt").write_bytes(b"g")
    assert await outcome(await caller.request("GET", f"{DAV}/g.txt")) == (200, b"g")
    v3 = await caller.request("PUT", f"{DAV}/v3.bin", body=b"3" * 5000, version=3)
    assert (await outcome(v3))[0] == 201
    v1 = await caller.request("PUT", f"{DAV}/v1.bin", body=b"1" * 5000, version=1)
    assert (await outcome(v1))[0] == 201
    assert conn.app[UPLOADS].active == 2


async def test_unverified_uploads_are_capped_by_bytes(
    connector_factory: ConnectorFactory,
    session: aiohttp.ClientSession,
    open_upload: Opener,
    held: list[asyncio.StreamWriter],
) -> None:
    conn = await connector_factory(BEEFLOW_NC_UNVERIFIED_BYTES="200000")
    first = await open_upload(conn, forged_put(1_000_000) + b"a" * 150_000)
    async with asyncio.timeout(5):
        while conn.app[UPLOADS].held < 150_000:
            await asyncio.sleep(0.01)
    second = await open_upload(conn, forged_put(1_000_000) + b"b" * 100_000)
    got = await answer(second)
    assert got.startswith(b"HTTP/1.1 503 ")
    assert b'"unverified_uploads_full"' in got
    # Alone, an upload may go past the cap: the first one finishes and only then fails its
    # (forged) signature.
    held[0].write(b"a" * 850_000)
    await held[0].drain()
    got = await answer(first)
    assert got.startswith(b"HTTP/1.1 401 ")
    assert conn.app[UPLOADS].held == 0


async def test_the_caps_show_in_the_heartbeat(nc_conn: RunningConnector) -> None:
    resp = await nc_conn.request("GET", "/heartbeat", headers=appapi_headers(""))
    async with resp:
        body = await resp.json()
    uploads = body["ncCallbacks"]["unverifiedUploads"]
    assert uploads == {
        "active": 0,
        "heldBytes": 0,
        "limit": 8,
        "limitBytes": 1024**3,
        "refused": 0,
    }
    async with await nc_conn.request("GET", "/heartbeat") as resp:
        assert "unverifiedUploads" not in (await resp.json())["ncCallbacks"]
