"""What the relay puts on the wire: close-delimited event streams in legacy mode, chunked
keep-alive ones with HaRP (read as raw bytes off the socket), encoded bytes untouched, and a
HEAD tunnelled in another verb."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from beeflow.proxy.relay import TUNNELLED_HEAD_LENGTH, RelayOptions, relay
from beeflow.proxy.upstream import PoolSettings, upstream_client
from tests.fakes.service import FakeService, Piece, StreamPlan, chat_pieces, sse_event
from tests.helpers import RunningConnector, appapi_headers
from tests.proxy.conftest import ProxyFactory, raw_exchange
from tests.proxy.streams import CHAT, chat


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
    """No Transfer-Encoding, no Content-Length, Connection: close, raw bytes, so Nextcloud's
    PHP proxy cannot double-chunk the stream (docs/proxy.md, "Legacy mode vs HaRP")."""
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
        async with await chat(conn) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["Cache-Control"] == "no-cache, no-transform"
            raw = await resp.read()
        log = service.streams[-1]
        # Byte for byte: nothing decoded, nothing injected into the compressed stream.
        assert raw == bytes(log.sent_bytes)
        assert gzip.decompress(raw) == b"".join(p.data for p in pieces)


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
        async with upstream_client(PoolSettings()) as client:
            answer = await client.send("HEAD", upstream.make_url("/file"), CIMultiDict())
            return await relay(request, answer, RelayOptions(), method="HEAD")

    front = web.Application()
    front.router.add_post("/tunnel", tunnel)
    client = await aiohttp_client(front)
    async with asyncio.timeout(5):
        resp = await client.post("/tunnel")
        assert resp.status == 200
        assert resp.headers["ETag"] == '"e1"'
        # A POST's answer must not announce a body it does not carry; the length moves.
        assert resp.headers["Content-Length"] == "0"
        assert resp.headers[TUNNELLED_HEAD_LENGTH] == "1000000"
        assert await resp.read() == b""
        again = await client.post("/tunnel")  # and the connection is still usable
        assert again.status == 200
        assert await again.read() == b""
