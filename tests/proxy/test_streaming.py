"""SSE and streamed bodies through the /api proxy, over real sockets, in legacy and HaRP mode."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import logging
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from beeflow.proxy import streaming
from tests.fakes.service import FakeService, Piece, StreamPlan, chat_pieces, sse_event
from tests.helpers import RunningConnector, appapi_headers
from tests.proxy.conftest import ProxyFactory, raw_exchange

CHAT = "/ai/chat/direct/stream"  # the service's route: routes/ai.js is mounted at /ai
COMMENT = b": keep-alive\n\n"


class EventReader:
    """Reads an SSE body as it arrives; records when each complete event (comments skipped)
    was received."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buffer = b""
        self.raw = b""
        self.arrivals: list[tuple[float, bytes]] = []

    async def next_event(self, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                while b"\n\n" in self.buffer:
                    event, self.buffer = self.buffer.split(b"\n\n", 1)
                    if event and not event.startswith(b":"):
                        self.arrivals.append((time.monotonic(), event + b"\n\n"))
                        return event + b"\n\n"
                chunk = await self.resp.content.readany()
                if not chunk:
                    raise EOFError("stream ended")
                self.raw += chunk
                self.buffer += chunk

    async def rest(self, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            while chunk := await self.resp.content.readany():
                self.raw += chunk
        return self.raw


@pytest.fixture(params=["legacy", "harp"])
async def conn(request: pytest.FixtureRequest, proxy_factory: ProxyFactory) -> RunningConnector:
    return await proxy_factory(harp=request.param == "harp")


async def _chat(conn: RunningConnector) -> aiohttp.ClientResponse:
    return await conn.request(
        "POST", CHAT, user="alice", json={"message": "hi"}, headers={"Accept": "text/event-stream"}
    )


# ------------------------------------------------------------------ delivery


async def test_each_event_reaches_the_client_before_the_next_is_sent(
    conn: RunningConnector, service: FakeService
) -> None:
    pieces = chat_pieces(["a", "b", "c"], gated=True)
    service.sse = StreamPlan(pieces)
    async with await _chat(conn) as resp:
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
    async with await _chat(conn) as resp:
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
    resp = await _chat(conn)
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
    caplog.set_level(logging.WARNING, logger="beeflow.proxy.streaming")
    pieces = chat_pieces(["x"])
    service.sse = StreamPlan(pieces, then="abort")
    async with await _chat(harp) as resp:
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
    async with await _chat(legacy) as resp:
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
    async with await _chat(legacy) as resp:
        body = await resp.read()
    assert body == first + b'event: content\ndata: {"te'


# ------------------------------------------------------------------ framing on the wire


def _raw_request(path: str, body: bytes = b'{"message":"hi"}', *, extra: str = "") -> bytes:
    headers = "".join(f"{k}: {v}\r\n" for k, v in appapi_headers("alice").items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: nextcloud.local\r\n{headers}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _split_head(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _dechunk(body: bytes) -> tuple[bytes, bytes]:
    """Decode chunked framing; returns (payload, bytes after the last chunk)."""
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert body.startswith(b"\r\n"), "no clean end of the chunked body"
            return out, body[2:]
        out += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


async def test_raw_framing_legacy_is_close_delimited(
    legacy: RunningConnector, service: FakeService
) -> None:
    """Reference 3.4: no Transfer-Encoding, no Content-Length, Connection: close, raw bytes,
    so Nextcloud's PHP proxy cannot double-chunk the stream."""
    pieces = chat_pieces(["raw", "bytes"])
    service.sse = StreamPlan(pieces)
    assert legacy.url.port is not None
    raw = await raw_exchange("127.0.0.1", legacy.url.port, _raw_request(CHAT))
    status, headers, body = _split_head(raw)
    assert status == "HTTP/1.1 200 OK"
    assert "transfer-encoding" not in headers
    assert "content-length" not in headers
    assert headers["connection"] == "close"
    assert headers["x-accel-buffering"] == "no"
    assert body == b"".join(p.data for p in pieces)


async def test_raw_framing_harp_is_chunked_keep_alive(
    harp: RunningConnector, service: FakeService
) -> None:
    pieces = chat_pieces(["raw", "bytes"])
    service.sse = StreamPlan(pieces)
    assert harp.url.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", harp.url.port)
    try:
        writer.write(_raw_request(CHAT))
        raw = b""
        async with asyncio.timeout(5):
            while not raw.endswith(b"0\r\n\r\n"):
                chunk = await reader.read(65536)
                assert chunk, "connection closed: HaRP mode must keep it alive"
                raw += chunk
        status, headers, body = _split_head(raw)
        assert status == "HTTP/1.1 200 OK"
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
        assert headers.get("connection", "keep-alive").lower() != "close"
        payload, rest = _dechunk(body)
        assert payload == b"".join(p.data for p in pieces)
        assert rest == b""
        # The same connection serves the next request.
        writer.write(
            b"GET /api/health HTTP/1.1\r\nHost: nextcloud.local\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in appapi_headers("alice").items()).encode()
            + b"\r\n"
        )
        async with asyncio.timeout(5):
            again = await reader.readuntil(b"\r\n\r\n")
        assert again.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_gzip_event_stream_passes_through_untouched(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    for harp in (False, True):
        conn = await proxy_factory(harp=harp, BEEFLOW_SSE_KEEPALIVE_SECONDS="0.05")
        pieces = [
            Piece(sse_event("content", {"text": "zipped"})),
            Piece(sse_event("done", {}), delay=0.3),  # idle long enough for a keep-alive
        ]
        service.sse = StreamPlan(pieces, gzip=True)
        async with await _chat(conn) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["Cache-Control"] == "no-cache, no-transform"
            raw = await resp.read()
        log = service.streams[-1]
        # Byte for byte: nothing decoded, nothing injected into the compressed stream.
        assert raw == bytes(log.sent_bytes)
        assert gzip.decompress(raw) == b"".join(p.data for p in pieces)


# ------------------------------------------------------------------ keep-alive and idle cap


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
    async with await _chat(conn) as resp:
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
    async with await _chat(conn) as resp:
        assert await resp.read() == first + second + done


async def test_legacy_idle_stream_is_ended_after_the_cap(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    conn = await proxy_factory(BEEFLOW_LEGACY_STREAM_IDLE_SECONDS="0.3")
    pieces = chat_pieces(["then silence"])[:-1]  # no `done`: the reply is not complete
    service.sse = StreamPlan(pieces, then="hold")
    started = time.monotonic()
    async with await _chat(conn) as resp:
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
    async with await _chat(conn) as resp:
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
    async with await _chat(conn) as resp:
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
    async with await _chat(conn) as resp:
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
    async with await _chat(conn) as resp:
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
        asyncio.gather(*(_chat(harp) for _ in range(count))), timeout=20
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


# ------------------------------------------------------------------ relay(method=...)


async def test_a_head_sent_for_another_verb_is_relayed_without_a_body(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """The /nc proxy tunnels HEAD in a POST: the answer has no body and says so, and the
    upstream's length travels in its own header (relayed as a POST's answer, the client
    would wait for a million bytes that never come)."""

    async def upstream_head(_request: web.Request) -> web.Response:
        return web.Response(headers={"Content-Length": "1000000", "ETag": '"e1"'})

    upstream_app = web.Application()
    upstream_app.router.add_route("HEAD", "/file", upstream_head)
    upstream = await aiohttp_server(upstream_app)

    async def tunnel(request: web.Request) -> web.StreamResponse:
        async with streaming.upstream_client(streaming.PoolSettings()) as client:
            answer = await client.send("HEAD", upstream.make_url("/file"), CIMultiDict())
            return await streaming.relay(request, answer, streaming.RelayOptions(), method="HEAD")

    front = web.Application()
    front.router.add_post("/tunnel", tunnel)
    client = await aiohttp_client(front)
    async with asyncio.timeout(5):
        resp = await client.post("/tunnel")
        assert resp.status == 200
        assert resp.headers["ETag"] == '"e1"'
        # A POST's answer must not announce a body it does not carry; the length moves.
        assert resp.headers["Content-Length"] == "0"
        assert resp.headers[streaming.TUNNELLED_HEAD_LENGTH] == "1000000"
        assert await resp.read() == b""
        again = await client.post("/tunnel")  # and the connection is still usable
        assert again.status == 200
        assert await again.read() == b""
