"""Readiness and the drain: /ready is 503 while starting and from the pre-stop on, while every
request is still served; then new requests get 503; at the drain deadline event streams still
open end with an event saying the connector restarts and a clean end of the body (chunked or
close-delimited), at an event boundary, before anything is closed."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from beeflow.web.draining import DRAINING, PRESTOP, READY, STARTING, Draining, drain
from tests.conftest import ConnectorFactory
from tests.fakes.service import FakeService, Piece, StreamPlan, sse_event
from tests.fakes.service_control import ServiceControl
from tests.helpers import TENANT_KEY, RunningConnector, appapi_headers
from tests.proxy.streams import CHAT

RESTARTING = b"event: error\ndata: "


async def test_ready_follows_the_state(connector_factory: ConnectorFactory) -> None:
    conn = await connector_factory()
    draining = conn.app[DRAINING]
    async with await conn.request("GET", "/ready") as resp:  # no AppAPI headers: public
        assert resp.status == 200
        assert await resp.json() == {"status": READY}
    for state in (STARTING, PRESTOP):
        draining.state = state
        async with await conn.request("GET", "/ready") as resp:
            assert resp.status == 503
            body = await resp.json()
            assert body["status"] == state
            assert body["code"] == "not_ready"
            assert resp.headers["Retry-After"] == "1"
        # Everything else is served as usual meanwhile.
        async with await conn.request("GET", "/heartbeat") as resp:
            assert resp.status == 200


async def test_the_prestop_keeps_serving_then_the_drain_refuses(
    connector_factory: ConnectorFactory,
) -> None:
    conn = await connector_factory()
    draining = conn.app[DRAINING]
    task = asyncio.get_running_loop().create_task(drain(draining, prestop=0.3, grace=1.0))
    await asyncio.sleep(0.05)
    assert draining.state == PRESTOP
    async with await conn.request("GET", "/heartbeat") as resp:
        assert resp.status == 200
    async with await conn.request("GET", "/ready") as resp:
        assert resp.status == 503
    assert await asyncio.wait_for(task, 5)
    async with await conn.request("GET", "/heartbeat") as resp:
        assert resp.status == 503
        assert (await resp.json())["code"] == "shutting_down"


async def _open_stream(conn: RunningConnector, headers: dict[str, str]) -> tuple[Any, Any]:
    """A chat stream through the connector, read raw (the test sees the framing)."""
    assert conn.url.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", conn.url.port)
    body = b'{"message":"hi"}'
    lines = "".join(f"{k}: {v}\r\n" for k, v in {**appapi_headers("alice"), **headers}.items())
    writer.write(
        f"POST {CHAT} HTTP/1.1\r\nHost: nc.local\r\n{lines}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return reader, writer


async def _read_until(reader: Any, marker: bytes, timeout: float = 5.0) -> bytes:
    raw = b""
    async with asyncio.timeout(timeout):
        while marker not in raw:
            chunk = await reader.read(65536)
            if not chunk:
                break
            raw += chunk
    return raw


@pytest.fixture
async def streaming(
    connector_factory: ConnectorFactory, service: FakeService, control: ServiceControl
) -> RunningConnector:
    control.verify_key = TENANT_KEY
    return await connector_factory(BEEFLOW_API_BASE_URL=str(service.url))


@pytest.mark.parametrize("via_php", [False, True], ids=["harp-chunked", "php-close-delimited"])
async def test_streams_open_at_the_deadline_end_cleanly(
    streaming: RunningConnector, service: FakeService, via_php: bool
) -> None:
    service.sse = StreamPlan([Piece(sse_event("content", {"text": "half"}))], then="hold")
    headers = {"X-Origin-IP": "203.0.113.7"} if via_php else {}
    streams = [await _open_stream(streaming, headers) for _ in range(3)]
    for reader, _ in streams:
        assert b"half" in await _read_until(reader, b"half")
    draining = streaming.app[DRAINING]
    assert draining.streams.open_streams == 3
    started = time.monotonic()
    assert await drain(draining, prestop=0, grace=1.0)  # nothing left running at the end
    took = time.monotonic() - started
    assert 0.5 <= took < 1.5
    for reader, writer in streams:
        async with asyncio.timeout(5):
            rest = await reader.read()  # to the end: the connector closed after the last byte
        writer.close()
        event = rest[rest.index(RESTARTING) :]
        data = json.loads(event.split(b"data: ", 1)[1].split(b"\n", 1)[0])
        assert data["code"] == "connector_restarting"
        if via_php:
            assert rest.endswith(b"\n\n")  # close-delimited: the event is the last thing
        else:
            assert rest.endswith(b"\r\n0\r\n\r\n")  # the terminating chunk: a clean end
    assert draining.streams.open_streams == 0


async def test_a_stream_in_the_middle_of_an_event_finishes_it_first(
    streaming: RunningConnector, service: FakeService
) -> None:
    """The deadline (0.5 s before the end of a 1 s grace) falls inside an event whose rest
    comes 0.2 s later: it is relayed, then the stream ends."""
    whole = sse_event("content", {"text": "one event"})
    service.sse = StreamPlan([Piece(whole[:10]), Piece(whole[10:], delay=0.7)], then="hold")
    reader, writer = await _open_stream(streaming, {})
    await _read_until(reader, whole[:10])
    assert await drain(streaming.app[DRAINING], prestop=0, grace=1.0)
    async with asyncio.timeout(5):
        rest = await reader.read()
    writer.close()
    assert b"one event" in rest  # the event in progress was not cut in half
    assert rest.index(b"one event") < rest.index(RESTARTING)
    assert rest.endswith(b"0\r\n\r\n")


async def test_an_event_that_never_ends_is_cut_within_the_drain(
    streaming: RunningConnector, service: FakeService
) -> None:
    whole = sse_event("content", {"text": "never finished"})
    service.sse = StreamPlan([Piece(whole[:10]), Piece(whole[10:], delay=30)], then="hold")
    reader, writer = await _open_stream(streaming, {})
    await _read_until(reader, whole[:10])
    started = time.monotonic()
    assert await drain(streaming.app[DRAINING], prestop=0, grace=1.0)
    assert time.monotonic() - started < 1.2
    async with asyncio.timeout(5):
        rest = await reader.read()
    writer.close()
    assert RESTARTING not in rest  # no event can be added inside another one
    assert not rest.endswith(b"0\r\n\r\n")  # cut: the client can tell


async def test_a_complete_reply_ends_without_the_restart_event(
    streaming: RunningConnector, service: FakeService
) -> None:
    service.sse = StreamPlan([Piece(sse_event("done", {"conversationId": "c"}))], then="hold")
    reader, writer = await _open_stream(streaming, {})
    await _read_until(reader, b"done")
    assert await drain(streaming.app[DRAINING], prestop=0, grace=0.4)
    async with asyncio.timeout(5):
        rest = await reader.read()
    writer.close()
    assert RESTARTING not in rest
    assert rest.endswith(b"0\r\n\r\n")


def test_drain_states() -> None:
    draining = Draining()
    assert draining.state == STARTING
    draining.prestop()  # a stop before start-up finished
    assert draining.state == PRESTOP
    draining.started()  # too late to become ready
    assert not draining.ready
