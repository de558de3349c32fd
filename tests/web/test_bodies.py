"""read_capped over a real socket: a body that arrives in pieces is read whole (aiohttp's
`content.read(n)` returns only what is buffered), and a body past the cap is refused without
being kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from beeflow.web.bodies import read_capped

CAP = 16 * 1024


async def handler(request: web.Request) -> web.Response:
    raw = await read_capped(request, CAP)
    return web.json_response({"size": None if raw is None else len(raw)})


async def in_pieces(*pieces: bytes, pause: float = 0.1) -> AsyncIterator[bytes]:
    for i, piece in enumerate(pieces):
        if i:
            await asyncio.sleep(pause)  # separate reads on the server side
        yield piece


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    await runner.cleanup()


async def size_of(url: str, data: object) -> int | None:
    async with aiohttp.ClientSession() as session, session.post(url, data=data) as resp:
        assert resp.status == 200
        size: int | None = (await resp.json())["size"]
        return size


async def test_a_body_in_pieces_is_read_whole(url: str) -> None:
    assert await size_of(url, in_pieces(b'{"a": "' + b"x" * 100, b'"}')) == 109
    assert await size_of(url, in_pieces(*[b"y" * 1000] * 5)) == 5000
    assert await size_of(url, b"z" * CAP) == CAP
    assert await size_of(url, b"") == 0


async def test_a_body_past_the_cap_is_refused(url: str) -> None:
    assert await size_of(url, b"z" * (CAP + 1)) is None  # declared (Content-Length)
    chunked = in_pieces(b"z" * CAP, b"z", pause=0.05)  # found only as it arrives
    assert await size_of(url, chunked) is None


async def test_a_declared_length_past_the_cap_is_refused_before_reading() -> None:
    seen: list[int | None] = []

    async def h(request: web.Request) -> web.Response:
        seen.append(len(await read_capped(request, CAP) or b""))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/", h)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # The head only: the answer must not wait for a body that is never sent.
        writer.write(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {CAP + 1}\r\n\r\n".encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()
    assert seen == [0]
