"""A small upstream body (Content-Length <= 64 KiB) is read whole before the answer starts:
when it breaks or stalls, the client gets a JSON error, never a 500 or a hang."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.fakes.service import FakeService
from tests.proxy.conftest import ProxyFactory


async def _partial(request: web.Request) -> web.StreamResponse:
    """Announces 100 bytes, sends 45, then resets the connection."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = 100
    await resp.prepare(request)
    await resp.write(b'{"a":' + b"1" * 40)
    assert request.transport is not None
    request.transport.abort()
    return resp


async def _stall(request: web.Request) -> web.StreamResponse:
    """Announces 100 bytes, sends 5, then says nothing."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = 100
    await resp.prepare(request)
    await resp.write(b'{"a":')
    await asyncio.sleep(3600)
    return resp


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    svc = FakeService(
        extra_routes=[web.get("/api/partial", _partial), web.get("/api/stall", _stall)]
    )
    await svc.start()
    yield svc
    await svc.stop()


@pytest.mark.parametrize("harp", [False, True], ids=["legacy", "harp"])
async def test_a_small_body_cut_short_is_a_502_json(
    proxy_factory: ProxyFactory, harp: bool, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await proxy_factory(harp=harp)
    async with await conn.request("GET", "/api/partial", user="alice") as resp:
        assert resp.status == 502
        assert resp.content_type == "application/json"
        assert (await resp.json())["code"] == "upstream_disconnected"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_stalled_small_body_ends_at_the_legacy_idle_cap(
    proxy_factory: ProxyFactory,
) -> None:
    # The PHP proxy has no timeout: a stalled answer must not pin its worker forever.
    conn = await proxy_factory(BEEFLOW_LEGACY_STREAM_IDLE_SECONDS="0.5")
    started = time.monotonic()
    async with asyncio.timeout(10):
        async with await conn.request("GET", "/api/stall", user="alice") as resp:
            assert resp.status == 504
            assert (await resp.json())["code"] == "upstream_timeout"
    assert 0.5 <= time.monotonic() - started < 5
