"""`Expect: 100-continue`: a forged, stale or oversized upload is refused before its body."""

from __future__ import annotations

import asyncio
import json
import time

from beeflow.signing import sign_nc_v2
from tests.helpers import TENANT_KEY, RunningConnector

BODY = b"x" * 4096


async def _send_headers(
    conn: RunningConnector, sig: str, length: int = len(BODY)
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert conn.url.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", conn.url.port)
    head = (
        "PUT /nc/remote.php/dav/files/alice/up.bin HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nX-Beeflow-Sig: {sig}\r\nX-Beeflow-NC-Uid: alice\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


async def _status_line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), 5)


async def test_malformed_signature_is_refused_before_the_body(nc_conn: RunningConnector) -> None:
    """A well-formed but wrong signature needs the body's hash to be found out; a malformed
    one does not."""
    reader, writer = await _send_headers(nc_conn, "not-a-signature")
    try:
        assert (await _status_line(reader)).startswith(b"HTTP/1.1 401")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        raw = await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
    assert json.loads(raw)["code"] == "signature_malformed"


async def test_stale_and_oversized_uploads_are_refused_before_the_body(
    nc_conn: RunningConnector,
) -> None:
    stale = sign_nc_v2(TENANT_KEY, int(time.time()) - 3600, "PUT", "/nc/x", "alice", BODY)
    reader, writer = await _send_headers(nc_conn, stale)
    try:
        assert (await _status_line(reader)).startswith(b"HTTP/1.1 401")
    finally:
        writer.close()
    ok = sign_nc_v2(TENANT_KEY, int(time.time()), "PUT", "/nc/x", "alice", BODY)
    huge = nc_conn.config.nc_max_body_bytes + 1
    reader, writer = await _send_headers(nc_conn, ok, length=huge)
    try:
        assert (await _status_line(reader)).startswith(b"HTTP/1.1 413")
    finally:
        writer.close()


async def test_genuine_upload_gets_100_continue_then_goes_through(
    nc_conn: RunningConnector,
) -> None:
    path = "/nc/remote.php/dav/files/alice/up.bin"
    sig = sign_nc_v2(TENANT_KEY, int(time.time()), "PUT", path, "alice", BODY)
    reader, writer = await _send_headers(nc_conn, sig)
    try:
        assert await _status_line(reader) == b"HTTP/1.1 100 Continue\r\n"
        assert await asyncio.wait_for(reader.readline(), 5) == b"\r\n"
        writer.write(BODY)
        await writer.drain()
        status = await _status_line(reader)
    finally:
        writer.close()
    assert status.split()[1] in (b"201", b"204"), status
