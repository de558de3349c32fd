"""Bodies through /nc: byte exact both ways, spooled at constant memory with a Content-Length to
Nextcloud, limited (413), always released (also when the client aborts), answers streamed."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest

from beeflow.proxy.nc.spool import SPOOLS
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud_dav import HOLD_FIRST, HOLD_REST, FakeDav, pattern_bytes
from tests.helpers import RunningConnector
from tests.proxy.nc.caller import NcCaller, outcome
from tests.proxy.nc.memory import MIB, Blob, PeakRss, entries, mode_of, open_fds_under

DAV = "/nc/remote.php/dav/files/alice"
# The spool keeps 64 KiB in memory in these tests (conftest), so both paths are exercised.
SIZES = [0, 1, 64 * 1024, 64 * 1024 + 1, 3 * MIB + 7]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("tunnel", [False, True], ids=["PUT", "POST-override-PUT"])
async def test_upload_and_download_are_byte_exact(
    caller: NcCaller, nc_conn: RunningConnector, dav: FakeDav, size: int, tunnel: bool
) -> None:
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    resp = await caller.request("PUT", f"{DAV}/f.bin", body=data, tunnel=tunnel)
    assert (await outcome(resp))[0] == 201
    put = dav.last("PUT")
    assert (put.size, put.sha256) == (size, digest)
    assert put.headers["Content-Length"] == str(size)
    assert "Transfer-Encoding" not in put.headers
    assert hashlib.sha256(dav.file("alice", "f.bin").read_bytes()).hexdigest() == digest

    resp = await caller.request("GET", f"{DAV}/f.bin", tunnel=tunnel)
    async with resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        assert hashlib.sha256(await resp.read()).hexdigest() == digest
    await asyncio.wait_for(nc_conn.app[SPOOLS].wait_idle(), 5)


async def test_chunked_upload_gets_a_content_length(caller: NcCaller, dav: FakeDav) -> None:
    blob = Blob(5 * MIB + 3, chunk=100_000)
    resp = await caller.request("PUT", f"{DAV}/c.bin", data=blob.stream(), body_sha256=blob.sha256)
    assert (await outcome(resp))[0] == 201
    put = dav.last("PUT")
    assert put.headers["Content-Length"] == str(blob.size)
    assert "Transfer-Encoding" not in put.headers
    assert put.sha256 == blob.sha256


async def test_range_etag_and_not_modified(caller: NcCaller, dav: FakeDav) -> None:
    data = os.urandom(10_000)
    path = dav.put_file("alice", "r.bin", data)
    etag = dav.etag(path)
    resp = await caller.request("GET", f"{DAV}/r.bin", headers={"Range": "bytes=100-1099"})
    async with resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == "bytes 100-1099/10000"
        assert await resp.read() == data[100:1100]
    resp = await caller.request("GET", f"{DAV}/r.bin", headers={"If-None-Match": etag})
    async with resp:
        assert resp.status == 304
        assert resp.headers["ETag"] == etag
        assert await resp.read() == b""
    resp = await caller.request("PUT", f"{DAV}/r.bin", body=b"new", headers={"If-Match": '"stale"'})
    assert (await outcome(resp))[0] == 412
    assert dav.file("alice", "r.bin").read_bytes() == data


async def test_200_mib_upload_at_constant_memory(
    caller: NcCaller, nc_conn: RunningConnector, dav: FakeDav
) -> None:
    """The body is spooled to a file and streamed on; the test process (client,
    connector and fake Nextcloud together) grows by far less than the body."""
    blob = Blob(200 * MIB)
    expected = blob.sha256  # computed before measuring
    with PeakRss() as peak:
        resp = await caller.request(
            "PUT", f"{DAV}/big.bin", data=blob.stream(), body_sha256=expected
        )
        status = (await outcome(resp))[0]
    assert status == 201
    put = dav.last("PUT")
    assert (put.size, put.sha256) == (blob.size, expected)
    assert nc_conn.app[SPOOLS].file_opened.is_set()
    assert peak.growth < 32 * MIB, f"RSS grew {peak.growth / MIB:.1f} MiB"


async def test_200_mib_download_streams_at_constant_memory(caller: NcCaller) -> None:
    size = 200 * MIB
    expected = hashlib.sha256(pattern_bytes(size)).hexdigest()
    digest = hashlib.sha256()
    received = 0
    with PeakRss() as peak:
        resp = await caller.request("GET", f"/nc/index.php/apps/echo/big?bytes={size}")
        async with resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(size)
            async for chunk in resp.content.iter_any():
                digest.update(chunk)
                received += len(chunk)
    assert received == size
    assert digest.hexdigest() == expected
    assert peak.growth < 32 * MIB, f"RSS grew {peak.growth / MIB:.1f} MiB"


async def test_answers_are_streamed_not_buffered(caller: NcCaller, dav: FakeDav) -> None:
    """The first bytes reach the caller while Nextcloud is still holding back the rest."""
    resp = await caller.request("GET", "/nc/index.php/apps/echo/hold")
    try:
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readexactly(len(HOLD_FIRST)), 5)
        assert first == HOLD_FIRST
        assert not dav.release.is_set()
        dav.release.set()
        assert await asyncio.wait_for(resp.content.read(), 5) == HOLD_REST
    finally:
        dav.release.set()
        resp.release()


@pytest.fixture
async def small_limit(connector_factory: ConnectorFactory, spool_dir: Path) -> RunningConnector:
    return await connector_factory(
        BEEFLOW_NC_MAX_BODY_BYTES=str(MIB),
        BEEFLOW_SPOOL_DIR=str(spool_dir),
        BEEFLOW_SPOOL_MEMORY_BYTES="0",
    )


async def test_body_over_the_limit_is_413(
    small_limit: RunningConnector, session: aiohttp.ClientSession, dav: FakeDav
) -> None:
    caller = NcCaller(session, small_limit.url)
    exact = os.urandom(MIB)
    resp = await caller.request("PUT", f"{DAV}/ok.bin", body=exact)
    assert (await outcome(resp))[0] == 201  # exactly the limit is fine
    resp = await caller.request("PUT", f"{DAV}/big.bin", body=exact + b"x")  # declared
    async with resp:
        assert resp.status == 413
        body = await resp.json()
        assert body["code"] == "payload_too_large"
        assert body["limit"] == MIB
    blob = Blob(3 * MIB, chunk=64 * 1024)  # chunked: found while spooling
    resp = await caller.request(
        "PUT", f"{DAV}/big.bin", data=blob.stream(), body_sha256=blob.sha256
    )
    assert await outcome(resp) == (413, "payload_too_large")
    assert [r.raw_path for r in dav.seen] == ["/remote.php/dav/files/alice/ok.bin"]
    await asyncio.wait_for(small_limit.app[SPOOLS].wait_idle(), 5)


async def test_spool_is_released_when_the_client_aborts(
    caller: NcCaller, nc_conn: RunningConnector, dav: FakeDav, spool_dir: Path
) -> None:
    spools = nc_conn.app[SPOOLS]
    target = f"{DAV}/aborted.bin"
    headers = caller.headers("PUT", target, body_sha256="0" * 64)
    reader, writer = await asyncio.open_connection(nc_conn.url.host, nc_conn.url.port)
    head = (
        f"PUT {target} HTTP/1.1\r\nHost: {nc_conn.url.host}:{nc_conn.url.port}\r\n"
        f"Content-Length: {50 * MIB}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    )
    writer.write(head.encode())
    for _ in range(4):
        writer.write(os.urandom(MIB // 2))
        await writer.drain()
    await asyncio.wait_for(spools.file_opened.wait(), 10)
    assert open_fds_under(spool_dir), "the body should be spooled to a file by now"
    writer.transport.abort()
    await asyncio.wait_for(spools.wait_idle(), 10)
    assert open_fds_under(spool_dir) == []
    assert entries(spool_dir) == []
    assert [r for r in dav.seen if r.method == "PUT"] == []
    del reader


async def test_spool_directory_is_private(
    caller: NcCaller, nc_conn: RunningConnector, spool_dir: Path, dav: FakeDav
) -> None:
    resp = await caller.request("PUT", f"{DAV}/p.bin", body=os.urandom(200_000))
    assert (await outcome(resp))[0] == 201
    resp = await caller.request("PUT", f"{DAV}/q.bin", body=os.urandom(200_000), sign_uid="bob")
    assert (await outcome(resp))[0] == 401
    await asyncio.wait_for(nc_conn.app[SPOOLS].wait_idle(), 5)
    assert mode_of(spool_dir) == 0o700
    assert entries(spool_dir) == []
    assert open_fds_under(spool_dir) == []
    assert nc_conn.app[SPOOLS].opened == 2
