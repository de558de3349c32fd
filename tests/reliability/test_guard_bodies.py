"""A request body the application reads slowly is a body, not a request head: aiohttp 3.14's
parser pauses when the body's buffer is full and keeps the rest of what arrived, which it passes
on once the handler reads. The connection guard counted those held bytes as head bytes and cut
the upload past 32 KiB ("request head over 32768 bytes"): under uvloop (the image's loop) a
one-user 40 MiB JSON body through the service proxy was cut within milliseconds."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from beeflow.transports.guard import ConnectionGuard, GuardedSite
from tests.reliability.rawhttp import exchange, request_bytes

MIB = 1024 * 1024


@pytest.fixture
async def slow_reader() -> AsyncIterator[int]:
    """A guarded listener whose handler waits before it reads the body (as the proxies do while
    they look the user up), then answers the body's SHA-256."""

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        digest = hashlib.sha256()
        while chunk := await request.content.readany():
            digest.update(chunk)
        return web.Response(text=digest.hexdigest())

    app = web.Application()
    app.router.add_post("/upload", handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    guard = ConnectionGuard(max_connections=100, max_head_bytes=32 * 1024, head_timeout=5)
    await GuardedSite(runner, guard, host="127.0.0.1", port=0).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def _chunked(body: bytes, size: int = 64 * 1024) -> bytes:
    out = bytearray()
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_body_read_late_is_not_cut(
    slow_reader: int, framing: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="beeflow.transports.guard")
    body = bytes(range(256)) * (8 * MIB // 256)
    if framing == "length":
        wire = request_bytes("POST", "/upload", [("Connection", "close")], body)
    else:
        head = request_bytes(
            "POST",
            "/upload",
            [("Transfer-Encoding", "chunked"), ("Connection", "close")],
            content_length=False,
        )
        wire = head + _chunked(body)
    resp = await exchange("127.0.0.1", slow_reader, wire, timeout=20)
    assert resp.status == 200, resp.raw[:200]
    assert resp.text == hashlib.sha256(body).hexdigest()
    assert "request head over" not in caplog.text
