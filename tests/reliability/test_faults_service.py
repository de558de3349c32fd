"""The Bee Flow service misbehaving behind /api: refusing, resetting, stalling before the headers,
dying in the middle of an SSE stream or a bulk body, going away and coming back. Each fault is
hit many times at once; the connector answers every request as documented, keeps serving, and
holds no request, task or file descriptor afterwards."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from beeflow.config import CONFIG
from beeflow.proxy import service as service_proxy
from beeflow.tasks import running
from tests.fakes.service import FakeService, StreamPlan, chat_pieces, pattern_bytes
from tests.helpers import appapi_headers
from tests.reliability.stack import Stack, running_stack

HARP = {"HP_SHARED_KEY": "harp-shared-key-for-tests", "HP_FRP_ADDRESS": "127.0.0.1"}
CONCURRENCY = 20
BULK = 256 * 1024


async def die_midway(request: web.Request) -> web.StreamResponse:
    """Half of a bulk body, then the connection is cut (with or without a Content-Length)."""
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("length") == "1":
        resp.content_length = BULK
    await resp.prepare(request)
    await resp.write(pattern_bytes(BULK // 2))
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return resp


@pytest.fixture(params=["legacy", "harp"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    # Legacy: as behind Nextcloud's PHP proxy (the requests here carry no X-Origin-IP).
    env = HARP if request.param == "harp" else {"BEEFLOW_ROUTING": "php"}
    routes = [web.get("/api/die", die_midway)]
    async with running_stack(service_routes=routes, extra_env=env) as s:
        yield s


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


SLACK = 2


async def settled_fds(baseline: int, timeout: float = 5.0) -> int:
    """The fd count once closed sockets are gone (closing is asynchronous)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        gc.collect()
        now = fd_count()
        if now <= baseline + SLACK or asyncio.get_running_loop().time() > deadline:
            return now
        await asyncio.sleep(0.05)


async def call(
    session: aiohttp.ClientSession, stack: Stack, method: str, path: str, **kw: Any
) -> tuple[int, bytes, str | None]:
    """One /api call as Nextcloud delivers it: (status, body or what arrived, error class)."""
    url = f"http://127.0.0.1:{stack.port}{path}"
    async with session.request(method, url, headers=appapi_headers("alice"), **kw) as resp:
        try:
            body = await resp.read()
        except aiohttp.ClientPayloadError as exc:
            return resp.status, b"", type(exc).__name__
        return resp.status, body, None


async def healthy(stack: Stack, session: aiohttp.ClientSession) -> None:
    """Serving normally, nothing in flight; the keep-alive pool to the service filled as a burst
    of concurrent calls fills it (so fd counts before and after compare like with like)."""
    results = await asyncio.gather(
        *(call(session, stack, "GET", "/api/json") for _ in range(2 * CONCURRENCY))
    )
    assert {status for status, _, _ in results} == {200}, results[0]
    assert stack.app[service_proxy._STATS].in_flight == 0
    assert running("events-forward") == []


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


async def test_refusing_resetting_and_stalling_before_the_headers(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    await healthy(stack, session)  # warm: sessions and pools exist before the baseline
    baseline = fd_count()
    cases = [
        ("POST", "/api/reset", 502, "upstream_disconnected"),
        ("GET", "/api/slow?delay=30", 504, "upstream_timeout"),  # headers timeout: 2 s here
        ("GET", "/api/status/503", 503, None),  # the service's own answer passes through
    ]
    results = await asyncio.gather(
        *(call(session, stack, m, p) for m, p, _, _ in cases for _ in range(CONCURRENCY))
    )
    for i, (status, body, error) in enumerate(results):
        _method, path, want, code = cases[i // CONCURRENCY]
        assert error is None
        assert status == want, (path, body)
        if code is not None:
            assert body.startswith(b"{"), body
            assert f'"code":"{code}"'.encode() in body, body
    # A POST that was reset is never replayed; every stalled call was abandoned upstream.
    assert len(stack.service.find("/api/reset")) == CONCURRENCY
    slow = stack.service.find("/api/slow")
    await asyncio.wait_for(asyncio.gather(*(r.finished.wait() for r in slow)), 5)
    assert all(r.cancelled for r in slow)
    await healthy(stack, session)
    assert await settled_fds(baseline) <= baseline + SLACK


async def test_refused_then_back_on_the_same_port(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    await healthy(stack, session)  # leaves a pooled keep-alive connection to the service
    port = stack.service.url.port
    assert port is not None
    await stack.service.stop()
    results = await asyncio.gather(
        *(call(session, stack, "GET", "/api/json") for _ in range(CONCURRENCY))
    )
    assert {
        (s, b.count(b"upstream_unreachable") + b.count(b"upstream_disconnected"))
        for s, b, _ in results
    } == {(502, 1)}
    back = FakeService()
    await back.start(port=port)
    try:
        for method in ("GET", "POST"):
            status, body, _ = await call(session, stack, method, "/api/json")
            assert status == 200, body
    finally:
        await back.stop()


async def test_sse_stream_dying_midway(
    stack: Stack, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="beeflow.proxy.relay")
    await healthy(stack, session)
    baseline = fd_count()
    pieces = chat_pieces(["one", "two"])
    stack.service.sse = StreamPlan(pieces, then="abort")
    sent = b"".join(p.data for p in pieces)
    results = await asyncio.gather(
        *(
            call(session, stack, "POST", "/ai/chat/direct/stream", json={"message": "x"})
            for _ in range(CONCURRENCY)
        )
    )
    harp = stack.app[CONFIG].routing != "php"
    for status, body, error in results:
        assert status == 200
        if harp:
            # Chunked: the client can tell the stream was cut (no terminating chunk).
            assert error == "ClientPayloadError"
        else:
            # Close-delimited (legacy, for the PHP proxy): what arrived is every event the
            # service sent; the cut looks like an end to the client.
            assert error is None
            assert body == sent
    broke = [r for r in caplog.records if "broke after" in r.getMessage()]
    assert len(broke) == CONCURRENCY  # once per stream, not per chunk
    stack.service.sse = StreamPlan(chat_pieces(["fine"]))
    status, body, error = await call(
        session, stack, "POST", "/ai/chat/direct/stream", json={"message": "x"}
    )
    assert (status, error) == (200, None)
    assert b"event: done" in body
    await healthy(stack, session)
    assert await settled_fds(baseline) <= baseline + SLACK


@pytest.mark.parametrize("length", ["1", "0"], ids=["content-length", "chunked"])
async def test_bulk_body_dying_midway(
    stack: Stack, session: aiohttp.ClientSession, length: str
) -> None:
    await healthy(stack, session)
    baseline = fd_count()
    results = await asyncio.gather(
        *(call(session, stack, "GET", f"/api/die?length={length}") for _ in range(CONCURRENCY))
    )
    for status, _body, error in results:
        assert status == 200
        # Never a silently short body: the client sees the cut.
        assert error == "ClientPayloadError"
    await healthy(stack, session)
    assert await settled_fds(baseline) <= baseline + SLACK
