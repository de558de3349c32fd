"""The connection guard under aiohttp's parser (beeflow/transports/guard.py), on real sockets: the
connection limit, the total size of a request head, the head timeout, and everything it must
leave alone (bodies, keep-alive, pipelining, slow bodies)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
from aiohttp import web

from beeflow.transports.guard import HEAD_SLICE, ConnectionGuard, GuardedSite
from beeflow.transports.harp import bind_unix
from tests.reliability.rawhttp import RawResponse, exchange, request_bytes

CAP = 32 * 1024


@attrs.define
class Served:
    guard: ConnectionGuard
    runner: web.AppRunner
    port: int
    unix: str | None
    handled: list[tuple[str, int]]  # (path, body bytes) of each request the app saw

    async def exchange(self, data: bytes | list[tuple[bytes, float]], **kw: float) -> RawResponse:
        return await exchange("127.0.0.1", self.port, data, unix=self.unix, **kw)  # type: ignore[arg-type]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.unix is not None:
            return await asyncio.open_unix_connection(self.unix)
        return await asyncio.open_connection("127.0.0.1", self.port)


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(sockdir: Path) -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(
        *,
        max_connections: int = 100,
        max_head_bytes: int = CAP,
        head_timeout: float = 10.0,
        keepalive: float = 60.0,
        unix: bool = False,
    ) -> Served:
        handled: list[tuple[str, int]] = []

        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            handled.append((request.path, len(body)))
            return web.json_response({"path": request.path, "bytes": len(body)})

        app = web.Application(
            handler_args={
                "max_field_size": 16384,
                "max_line_size": 16384,
                "keepalive_timeout": keepalive,
            },
            client_max_size=8 * 1024 * 1024,
        )
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        runners.append(runner)
        await runner.setup()
        guard = ConnectionGuard(
            max_connections=max_connections,
            max_head_bytes=max_head_bytes,
            head_timeout=head_timeout,
        )
        if unix:
            path = sockdir / f"g{len(runners)}.sock"
            site = GuardedSite(runner, guard, sock=bind_unix(path))
            await site.start()
            return Served(guard, runner, 0, str(path), handled)
        site = GuardedSite(runner, guard, host="127.0.0.1", port=0)
        await site.start()
        return Served(guard, runner, int(runner.addresses[0][1]), None, handled)

    yield start
    for runner in runners:
        await runner.cleanup()


def head_lines(total: int, *, line: int = 8000) -> bytes:
    """Header lines adding up to about `total` bytes (each line well under 16 KiB)."""
    out = bytearray()
    n = 0
    while len(out) < total:
        out += b"X-Pad-%d: " % n + b"a" * min(line, max(1, total - len(out))) + b"\r\n"
        n += 1
    return bytes(out)


def get(path: str = "/ok", extra: bytes = b"", *, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + connection + b"\r\n"


def json_code(resp: RawResponse) -> str | None:
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.raw[:200]
    code: str | None = json.loads(resp.body)["code"]
    return code


def assert_hardened(resp: RawResponse) -> None:
    """The headers every answer of the connector carries, and no way to run script."""
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Connection"] == "close"


# ------------------------------------------------------------------ the connection limit


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
async def test_over_the_limit_a_connection_gets_503_and_a_freed_slot_serves_again(
    serve: Serve, unix: bool
) -> None:
    served = await serve(max_connections=3, unix=unix)
    held = [await served.connect() for _ in range(3)]
    await asyncio.sleep(0.05)
    assert served.guard.open == 3
    resp = await served.exchange(get(close=True))
    assert resp.status == 503
    assert json_code(resp) == "too_many_connections"
    assert resp.headers["Retry-After"] == "1"
    assert_hardened(resp)
    assert resp.closed
    assert served.guard.refused == 1
    assert served.handled == []  # it never reached aiohttp
    _, writer = held.pop()
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if served.guard.open < 3:
            break
        await asyncio.sleep(0.01)
    resp = await served.exchange(get(close=True))
    assert resp.status == 200
    for _, writer in held:
        writer.close()


async def test_a_refused_client_that_keeps_sending_still_reads_the_answer(serve: Serve) -> None:
    """The answer is written and the connection half-closed; what the client still sends is
    discarded (a close with unread bytes would reset the connection and lose the answer)."""
    served = await serve(max_connections=1)
    _reader, writer = await served.connect()
    await asyncio.sleep(0.05)
    body = b"x" * 300_000
    pieces = [(request_bytes("PUT", "/up", [], body), 0.0)]
    resp = await served.exchange(pieces, timeout=5)
    assert resp.status == 503
    assert json_code(resp) == "too_many_connections"
    writer.close()


async def test_refusals_do_not_pile_up(serve: Serve) -> None:
    served = await serve(max_connections=1)
    _, writer = await served.connect()
    await asyncio.sleep(0.05)
    answers = await asyncio.gather(*(served.exchange(get(close=True)) for _ in range(20)))
    assert {a.status for a in answers} == {503}
    for _ in range(200):
        if not served.guard._lingering:
            break
        await asyncio.sleep(0.01)
    assert not served.guard._lingering  # each client closed: each refusal is gone
    assert served.guard.open == 1
    writer.close()


# ------------------------------------------------------------------ the size of a head


async def test_a_head_over_the_cap_gets_431_and_never_reaches_the_app(serve: Serve) -> None:
    served = await serve()
    data = b"GET /big HTTP/1.1\r\nHost: x\r\n" + head_lines(CAP + HEAD_SLICE + 1000)
    resp = await served.exchange(data, timeout=5)  # no blank line: the head never ends
    assert resp.status == 431
    assert json_code(resp) == "headers_too_large"
    assert_hardened(resp)
    assert resp.closed
    assert served.handled == []
    assert served.guard.heads_refused == 1


async def test_a_head_fed_a_byte_at_a_time_is_capped_too(serve: Serve) -> None:
    served = await serve(max_head_bytes=2048)
    data = b"GET /big HTTP/1.1\r\nHost: x\r\n" + head_lines(4000, line=100)
    reader, writer = await served.connect()
    got = b""
    with contextlib.suppress(ConnectionError):
        for i in range(0, len(data), 512):
            writer.write(data[i : i + 512])
            await writer.drain()
            await asyncio.sleep(0)
    async with asyncio.timeout(5):
        got = await reader.read()
    assert got.startswith(b"HTTP/1.1 431 ")
    writer.close()


async def test_heads_under_the_cap_are_served(serve: Serve) -> None:
    served = await serve()
    near = CAP - HEAD_SLICE - 200  # within one slice of the cap: refused only past it
    resp = await served.exchange(get("/near", head_lines(near), close=True))
    assert resp.status == 200
    assert served.handled == [("/near", 0)]


async def test_bodies_are_not_head_bytes(serve: Serve) -> None:
    served = await serve()
    body = bytes(range(256)) * 4096  # 1 MiB
    resp = await served.exchange(request_bytes("PUT", "/sized", [], body))
    assert resp.status == 200
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:500_000], body[500_000:]))
    resp = await served.exchange(
        request_bytes("PUT", "/chunked", [("Transfer-Encoding", "chunked")], chunked + b"0\r\n\r\n")
    )
    assert resp.status == 200
    assert served.handled == [("/sized", len(body)), ("/chunked", len(body))]


async def test_keep_alive_and_pipelining_are_untouched(serve: Serve) -> None:
    """60 pipelined requests (about 48 KiB of heads in one write, more than the cap), with a
    body in the middle, all on one connection: each head is counted on its own."""
    served = await serve()
    pad = head_lines(600, line=500)
    parts = [get(f"/p{i}", pad) for i in range(30)]
    parts.append(request_bytes("POST", "/body", [("Connection", "keep-alive")], b"y" * 70_000))
    parts += [get(f"/q{i}", pad) for i in range(29)]
    parts.append(get("/last", close=True))
    data = b"".join(parts)
    assert len(data) - 70_000 > CAP
    reader, writer = await served.connect()
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(10):
        got = await reader.read()
    writer.close()
    assert got.count(b"HTTP/1.1 200 OK") == 61
    assert [p for p, _ in served.handled][-1] == "/last"
    assert ("/body", 70_000) in served.handled


async def test_a_big_head_after_a_first_request_only_closes(serve: Serve) -> None:
    """A second request's head over the cap: no answer of ours may interleave with the first
    request's response, so the connection is just closed (after that response)."""
    served = await serve()
    reader, writer = await served.connect()
    writer.write(get("/first"))
    await writer.drain()
    async with asyncio.timeout(5):
        first = await reader.readuntil(b"}")
    assert first.startswith(b"HTTP/1.1 200 OK")
    writer.write(b"GET /second HTTP/1.1\r\nHost: x\r\n" + head_lines(CAP + 2 * HEAD_SLICE))
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    async with asyncio.timeout(5):
        rest = await reader.read()
    assert rest == b""
    assert [p for p, _ in served.handled] == ["/first"]
    writer.close()


async def test_a_head_smuggled_behind_a_body_is_counted(serve: Serve) -> None:
    """The end of a body and a long unfinished head in the same write: the bytes after the
    body count towards the next head (Content-Length bodies are fed exactly to their end)."""
    served = await serve()
    first = request_bytes("POST", "/body", [("Connection", "keep-alive")], b"z" * 10)
    data = first + b"GET /next HTTP/1.1\r\nHost: x\r\n" + head_lines(3 * CAP)
    resp = await served.exchange(data, timeout=5)
    assert resp.status == 200  # the first request was answered ...
    assert resp.closed  # ... and the connection closed instead of parsing 96 KiB of head
    assert served.guard.heads_refused == 1


# ------------------------------------------------------------------ the time a head may take


async def test_an_unfinished_head_gets_408_after_the_head_timeout(serve: Serve) -> None:
    served = await serve(head_timeout=0.3)
    loop = asyncio.get_running_loop()
    began = loop.time()
    resp = await served.exchange(b"GET /slow HTTP/1.1\r\nHost: x\r\n", timeout=5)
    took = loop.time() - began
    assert resp.status == 408
    assert json_code(resp) == "head_timeout"
    assert_hardened(resp)
    assert 0.25 <= took < 2.0, took
    assert served.handled == []


async def test_a_head_in_pieces_within_the_timeout_is_served(serve: Serve) -> None:
    served = await serve(head_timeout=1.0)
    data = get("/pieces", close=True)
    pieces = [(data[:10], 0.0), (data[10:20], 0.2), (data[20:], 0.2)]
    resp = await served.exchange(pieces, timeout=5)
    assert resp.status == 200
    assert not served.guard._slow


async def test_the_head_timeout_starts_with_the_first_byte_of_a_head(serve: Serve) -> None:
    """An idle connection (nothing sent) is left to aiohttp's keep-alive timer; a slow body is
    not a head."""
    served = await serve(head_timeout=0.3, keepalive=5.0)
    reader, writer = await served.connect()
    await asyncio.sleep(0.6)
    writer.write(get("/after-idle"))
    await writer.drain()
    async with asyncio.timeout(5):
        first = await reader.readuntil(b"}")
    assert first.startswith(b"HTTP/1.1 200 OK")
    head = b"PUT /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n"
    writer.write(head + b"ab")
    await writer.drain()
    await asyncio.sleep(0.6)
    writer.write(b"cd")
    await writer.drain()
    async with asyncio.timeout(5):
        second = await reader.readuntil(b"}")
    assert second.startswith(b"HTTP/1.1 200 OK")
    assert served.handled == [("/after-idle", 0), ("/slow-body", 4)]
    writer.close()


async def test_a_keep_alive_connection_idle_after_a_request_is_not_a_slow_head(
    serve: Serve,
) -> None:
    """A complete request (no body) that fills its whole piece leaves no head begun: the
    connection waits for its next request under aiohttp's keep-alive timer, not the head
    timeout, and no head timer is armed for it."""
    served = await serve(head_timeout=0.3, keepalive=5.0)
    reader, writer = await served.connect()
    writer.write(get("/one"))
    await writer.drain()
    async with asyncio.timeout(5):
        first = await reader.readuntil(b"}")
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert not served.guard._slow
    await asyncio.sleep(0.6)
    writer.write(get("/two"))
    await writer.drain()
    async with asyncio.timeout(5):
        second = await reader.readuntil(b"}")
    assert second.startswith(b"HTTP/1.1 200 OK")
    assert served.handled == [("/one", 0), ("/two", 0)]
    writer.close()


async def test_counters_return_to_zero(serve: Serve) -> None:
    served = await serve(head_timeout=0.2)
    await asyncio.gather(
        served.exchange(get(close=True)),
        served.exchange(b"GET / HTTP/1.1\r\n", timeout=3),
        served.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n" + head_lines(2 * CAP), timeout=3),
    )
    for _ in range(300):
        if served.guard.open == 0 and not served.guard._slow:
            break
        await asyncio.sleep(0.01)
    assert served.guard.open == 0
    assert not served.guard._slow
    assert served.guard.status() == {
        "open": 0,
        "limit": 100,
        "refused": 0,
        "headsRefused": 2,
    }
