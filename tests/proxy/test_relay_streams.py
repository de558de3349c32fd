"""Event streams and other streamed bodies through the relay (the /api proxy in front of the fake
service), over real sockets, in legacy and HaRP mode: delivery as it happens, client and upstream
going away, many streams at once."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time

import aiohttp
import pytest

from tests.fakes.service import FakeService, Piece, StreamPlan, chat_pieces, sse_event
from tests.helpers import RunningConnector
from tests.proxy.conftest import ProxyFactory
from tests.proxy.streams import EventReader, chat


async def test_each_event_reaches_the_client_before_the_next_is_sent(
    conn: RunningConnector, service: FakeService
) -> None:
    pieces = chat_pieces(["a", "b", "c"], gated=True)
    service.sse = StreamPlan(pieces)
    async with await chat(conn) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["Cache-Control"] == "no-cache, no-transform"
        reader = EventReader(resp)
        assert await reader.next_event() == pieces[0].data
        for piece in pieces[1:]:
            # The service holds the next event until released: if anything between it and
            # us buffered, the event we wait for could not arrive first.
            service.gate.put_nowait(None)
            assert await reader.next_event() == piece.data
        assert await reader.rest() == b"".join(p.data for p in pieces)


async def test_event_timing_is_preserved(conn: RunningConnector, service: FakeService) -> None:
    interval, slack = 0.4, 0.25  # slack: scheduling noise on a loaded 2-core CI machine
    pieces = chat_pieces(["one", "two", "three"], interval=interval)
    service.sse = StreamPlan(pieces)
    async with await chat(conn) as resp:
        reader = EventReader(resp)
        for _ in pieces:
            await reader.next_event()
    log = service.streams[0]
    arrivals = [t for t, _ in reader.arrivals]
    assert len(log.sent_at) == len(arrivals) == len(pieces)
    for sent, arrived in zip(log.sent_at, arrivals, strict=True):
        assert 0 <= arrived - sent < slack, "an event was held back"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap > interval - slack for gap in gaps), gaps


async def test_client_disconnect_closes_the_upstream_within_a_second(
    conn: RunningConnector, service: FakeService
) -> None:
    service.sse = StreamPlan(chat_pieces(["x"]), then="hold")
    resp = await chat(conn)
    reader = EventReader(resp)
    await reader.next_event()
    log = await service.wait_stream(0)
    assert not log.ended.is_set()
    left = time.monotonic()
    resp.close()  # drops the connection, like a closed browser tab
    async with asyncio.timeout(1.0):
        await log.ended.wait()
    assert log.client_gone
    assert log.closed_at is not None
    assert log.closed_at - left < 1.0


async def test_upstream_break_mid_stream_cuts_the_client_and_logs_once(
    harp: RunningConnector, service: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="beeflow.proxy.relay")
    pieces = chat_pieces(["x"])
    service.sse = StreamPlan(pieces, then="abort")
    async with await chat(harp) as resp:
        assert resp.status == 200
        reader = EventReader(resp)
        for piece in pieces:
            assert await reader.next_event() == piece.data
        with pytest.raises(aiohttp.ClientPayloadError):
            await reader.rest()
    broke = [r for r in caplog.records if "broke after" in r.getMessage()]
    assert len(broke) == 1


async def test_legacy_stream_broken_by_the_service_ends_with_an_error_event(
    legacy: RunningConnector, service: FakeService
) -> None:
    """Close-delimited framing cannot show a cut (the close IS the end of the body), so the
    connector says it in the stream, in the event the UI renders."""
    pieces = chat_pieces(["x"])[:-1]  # no `done`: the service dies after the content
    service.sse = StreamPlan(pieces, then="abort")
    async with await chat(legacy) as resp:
        assert resp.status == 200
        reader = EventReader(resp)
        for piece in pieces:
            assert await reader.next_event() == piece.data
        error = await reader.next_event()
        assert await reader.rest() == reader.raw  # then a plain end: nothing more
    assert error.startswith(b"event: error\ndata: ")
    payload = json.loads(error.split(b"data: ", 1)[1])
    assert payload["code"] == "upstream_disconnected"
    assert "incomplete" in payload["error"]


async def test_legacy_stream_broken_inside_an_event_gets_no_error_event(
    legacy: RunningConnector, service: FakeService
) -> None:
    # Completing the half event with a blank line would dispatch its garbage; a parser drops
    # an unterminated event at the end, which is the honest outcome.
    first = sse_event("content", {"text": "whole"})
    service.sse = StreamPlan((Piece(first), Piece(b'event: content\ndata: {"te')), then="abort")
    async with await chat(legacy) as resp:
        body = await resp.read()
    assert body == first + b'event: content\ndata: {"te'


async def test_other_streamed_bodies_are_not_buffered_either(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    conn = await proxy_factory(harp=True)
    lines = [b'{"n": 1}\n', b'{"n": 2}\n', b'{"n": 3}\n']
    service.sse = StreamPlan(
        [Piece(lines[0])] + [Piece(line, gated=True) for line in lines[1:]],
        content_type="application/x-ndjson",
    )
    async with await conn.request("GET", "/api/stream", user="alice") as resp:
        assert resp.headers["Cache-Control"] == "no-cache"  # the service's own, kept
        assert "X-Accel-Buffering" not in resp.headers
        for i, line in enumerate(lines):
            if i:
                service.gate.put_nowait(None)
            async with asyncio.timeout(5):
                assert await resp.content.readline() == line
        assert await resp.read() == b""


async def test_more_concurrent_streams_than_the_reference_pool_allowed(
    harp: RunningConnector, service: FakeService
) -> None:
    """The Node reference capped the service pool at 64 sockets: stream 65 waited."""
    service.sse = StreamPlan(chat_pieces(["x"]), then="hold")
    count = 80
    responses = await asyncio.wait_for(
        asyncio.gather(*(chat(harp) for _ in range(count))), timeout=20
    )
    try:
        firsts = await asyncio.wait_for(
            asyncio.gather(*(EventReader(r).next_event() for r in responses)), timeout=20
        )
        assert len(firsts) == count
        assert all(f.startswith(b"event: conversation_created") for f in firsts)
        assert sum(1 for s in service.streams if not s.ended.is_set()) == count
    finally:
        for resp in responses:
            resp.close()
