"""Keep-alive comments (HaRP) and the idle cap (legacy) of the relay: only at event boundaries,
never while bytes flow, and an idle upstream is never confused with a slow client."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.fakes.service import FakeService, Piece, StreamPlan, chat_pieces, sse_event
from tests.proxy.conftest import ProxyFactory
from tests.proxy.streams import COMMENT, EventReader, chat


def _boundary_plan(gap: float) -> tuple[StreamPlan, bytes, bytes, bytes]:
    first = sse_event("content", {"text": "first"})
    second = sse_event("content", {"text": "split across a pause"})
    head, tail = second[:20], second[20:]
    done = sse_event("done", {})
    plan = StreamPlan(
        (Piece(first), Piece(head, delay=gap), Piece(tail, delay=gap), Piece(done)),
    )
    return plan, first, second, done


async def test_keepalive_comment_only_at_an_event_boundary_in_harp_mode(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    conn = await proxy_factory(harp=True, BEEFLOW_SSE_KEEPALIVE_SECONDS="0.1")
    plan, first, second, done = _boundary_plan(gap=0.45)
    service.sse = plan
    async with await chat(conn) as resp:
        body = await resp.read()
    # Comments while idle after the first event; none while the second was half sent.
    assert body.startswith(first + COMMENT)
    assert second in body
    assert body.replace(COMMENT, b"") == first + second + done
    between = body[len(first) : body.index(second)]
    assert between.count(COMMENT) >= 2
    assert set(between.split(COMMENT)) == {b""}


async def test_no_keepalive_comments_in_legacy_mode(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    conn = await proxy_factory(BEEFLOW_SSE_KEEPALIVE_SECONDS="0.1")
    plan, first, second, done = _boundary_plan(gap=0.35)
    service.sse = plan
    async with await chat(conn) as resp:
        assert await resp.read() == first + second + done


async def test_legacy_idle_stream_is_ended_after_the_cap(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    conn = await proxy_factory(BEEFLOW_LEGACY_STREAM_IDLE_SECONDS="0.3")
    pieces = chat_pieces(["then silence"])[:-1]  # no `done`: the reply is not complete
    service.sse = StreamPlan(pieces, then="hold")
    started = time.monotonic()
    async with await chat(conn) as resp:
        body = await resp.read()  # a clean end of the body...
    elapsed = time.monotonic() - started
    sent = b"".join(p.data for p in pieces)
    assert body.startswith(sent)
    # ...saying why, in the event the UI renders
    tail = body[len(sent) :]
    assert tail.startswith(b"event: error\ndata: ")
    assert tail.endswith(b"\n\n")
    assert json.loads(tail.split(b"data: ", 1)[1])["code"] == "upstream_idle"
    assert 0.3 <= elapsed < 3
    log = service.streams[0]
    async with asyncio.timeout(1):
        await log.ended.wait()
    assert log.client_gone


async def test_legacy_idle_cap_after_the_final_event_adds_no_error(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    conn = await proxy_factory(BEEFLOW_LEGACY_STREAM_IDLE_SECONDS="0.3")
    pieces = chat_pieces(["complete"])  # ends with `event: done`, then the service idles
    service.sse = StreamPlan(pieces, then="hold")
    async with await chat(conn) as resp:
        assert await resp.read() == b"".join(p.data for p in pieces)


async def test_legacy_idle_cap_cuts_other_bodies_visibly(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    conn = await proxy_factory(BEEFLOW_LEGACY_STREAM_IDLE_SECONDS="0.3")
    service.sse = StreamPlan(
        (Piece(b"partial download"),), then="hold", content_type="application/octet-stream"
    )
    async with await conn.request("GET", "/api/stream", user="alice") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_harp_idle_stream_stays_open_with_keepalives(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    conn = await proxy_factory(
        harp=True, BEEFLOW_SSE_KEEPALIVE_SECONDS="0.1", BEEFLOW_LEGACY_STREAM_IDLE_SECONDS="0.2"
    )
    pieces = chat_pieces(["then silence"])
    service.sse = StreamPlan(pieces, then="hold")
    async with await chat(conn) as resp:
        reader = EventReader(resp)
        for _ in pieces:
            await reader.next_event()
        received = b""
        async with asyncio.timeout(5):
            while received.count(COMMENT) < 5:  # 0.5 s idle: well past the legacy cap
                chunk = await resp.content.readany()
                assert chunk, "the stream ended"
                received += chunk
        assert set(received.split(COMMENT)) == {b""}
        assert not service.streams[0].ended.is_set()


async def test_a_steady_stream_longer_than_the_idle_cap_is_not_cut(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    # One timer per stream: its first deadline falls while bytes still flow, and must be
    # re-armed from the last byte, not end the stream.
    conn = await proxy_factory(BEEFLOW_LEGACY_STREAM_IDLE_SECONDS="0.3")
    pieces = chat_pieces([f"part {i}" for i in range(12)], interval=0.08)
    service.sse = StreamPlan(pieces)
    started = time.monotonic()
    async with await chat(conn) as resp:
        body = await resp.read()
    assert time.monotonic() - started > 0.6  # twice the cap
    assert body == b"".join(p.data for p in pieces)
    assert not service.streams[0].client_gone


async def test_no_keepalive_while_events_flow_faster_than_the_interval(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    conn = await proxy_factory(harp=True, BEEFLOW_SSE_KEEPALIVE_SECONDS="0.2")
    busy = chat_pieces([f"part {i}" for i in range(10)], interval=0.06)
    service.sse = StreamPlan((*busy[:-1], Piece(busy[-1].data, delay=0.6)))
    async with await chat(conn) as resp:
        body = await resp.read()
    flowing = b"".join(p.data for p in busy[:-1])
    # While events came every 60 ms: none (the early deadline is re-checked, not obeyed).
    assert body.startswith(flowing)
    # The 0.6 s pause after them: comments every 0.2 s, then the last event.
    assert body.endswith(busy[-1].data)
    pause = body[len(flowing) : -len(busy[-1].data)]
    assert 2 <= pause.count(COMMENT) <= 3
    assert set(pause.split(COMMENT)) == {b""}


async def test_a_client_that_reads_slowly_is_not_mistaken_for_an_idle_upstream(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    # The idle deadline may fall while a write waits for the client to drain: the bytes are
    # handed over, so the upstream was not idle and the body must arrive whole.
    conn = await proxy_factory(BEEFLOW_LEGACY_STREAM_IDLE_SECONDS="0.3")
    blob = bytes(range(256)) * (32 * 4096)  # 32 MiB: more than the sockets buffer
    service.sse = StreamPlan((Piece(blob),), content_type="application/octet-stream")
    async with await conn.request("GET", "/api/stream", user="alice") as resp:
        assert resp.status == 200
        await asyncio.sleep(1.0)  # not reading: the connector's writes wait
        body = await resp.read()
    assert len(body) == len(blob)
    assert body == blob
