"""Routing decided per request (beeflow.web.routing): the PHP proxy's requests (X-Origin-IP) get
the legacy framing, everything else streams, on one connector whatever its transport; the embed
frames /exapps/ when HaRP is in use; what was seen reaches the heartbeat and the setup status,
and only requests bearing the secret count."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from beeflow.web.routing import HARP, PHP, Routing
from tests.conftest import ConnectorFactory
from tests.fakes.service import FakeService, Piece, StreamPlan, chat_pieces, sse_event
from tests.fakes.service_control import ServiceControl
from tests.helpers import SECRET, TENANT_KEY, RunningConnector, appapi_headers
from tests.proxy.streams import CHAT

ORIGIN = {"X-Origin-IP": "203.0.113.7"}
STAMP = {"AA-VERSION": "32"}  # what HaRP writes on everything it forwards


def request(headers: dict[str, str]) -> Any:
    return make_mocked_request("GET", "/", headers=CIMultiDict(headers))


@pytest.mark.parametrize(
    ("override", "harp_transport", "headers", "framing", "embed"),
    [
        # auto: X-Origin-IP decides the framing, whatever the transport.
        ("auto", False, {}, HARP, PHP),
        ("auto", False, ORIGIN, PHP, PHP),
        ("auto", True, ORIGIN, PHP, HARP),
        ("auto", True, {}, HARP, HARP),
        # The PHP proxy of a HaRP deployment goes on through HaRP, which stamps AA-VERSION.
        ("auto", False, {**ORIGIN, **STAMP}, PHP, HARP),
        ("auto", False, {**ORIGIN, "AA-VERSION": "32.0.0"}, PHP, PHP),
        # The override wins over every header.
        ("harp", False, {**ORIGIN, "AA-VERSION": "32.0.0"}, HARP, HARP),
        ("php", True, STAMP, PHP, PHP),
    ],
)
def test_the_decision(
    override: str, harp_transport: bool, headers: dict[str, str], framing: str, embed: str
) -> None:
    routing = Routing(override=override, harp_transport=harp_transport)
    assert routing.framing(request(headers)) == framing
    assert routing.streaming(request(headers)) is (framing == HARP)
    assert routing.embed(request(headers)) == embed


def seen(routing: Routing) -> str | None:
    """Read through a call: mypy would keep the property narrowed across note()."""
    return routing.seen


def test_what_was_seen() -> None:
    routing = Routing()
    assert seen(routing) is None
    assert routing.expected() == PHP
    routing.note(request({}))  # AppAPI calling the connector straight: neither
    assert seen(routing) is None
    routing.note(request(ORIGIN))
    assert seen(routing) == PHP
    routing.note(request({**ORIGIN, **STAMP}))
    assert seen(routing) == HARP  # a HaRP deployment also sends scripts through the PHP proxy
    health = routing.health(True)
    assert health["seen"] == HARP
    assert (health["harpRequests"], health["phpProxyRequests"], health["directRequests"]) == (
        1,
        1,
        1,
    )
    assert routing.health(False) == {"seen": HARP, "mode": "auto"}
    assert Routing(harp_transport=True).expected() == HARP
    assert Routing(override=PHP, harp_transport=True).expected() == PHP


async def _raw_chat(conn: RunningConnector, headers: dict[str, str]) -> tuple[str, bytes]:
    """The raw answer head and body of a chat stream (the request asks to close the
    connection after it, so the answer is read to its end)."""
    assert conn.url.port is not None
    body = b'{"message":"hi"}'
    lines = {**appapi_headers("alice"), **headers}
    head = "".join(f"{k}: {v}\r\n" for k, v in lines.items())
    reader, writer = await asyncio.open_connection("127.0.0.1", conn.url.port)
    try:
        writer.write(
            f"POST {CHAT} HTTP/1.1\r\nHost: nc.local\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    return head_bytes.decode("latin-1").lower(), rest


async def test_one_connector_frames_each_request_by_its_routing(
    connector_factory: ConnectorFactory, service: FakeService, control: ServiceControl
) -> None:
    """TCP, no HP_* (HaRP direct connect, Kubernetes): HaRP's requests stream, chunked, with
    keep-alive comments; the PHP proxy's requests (X-Origin-IP) are close-delimited and get no
    comment, on the same connector at the same time."""
    control.verify_key = TENANT_KEY
    conn = await connector_factory(
        BEEFLOW_API_BASE_URL=str(service.url), BEEFLOW_SSE_KEEPALIVE_SECONDS="0.05"
    )
    service.sse = StreamPlan(
        [
            Piece(sse_event("content", {"text": "hi"})),
            Piece(sse_event("done", {}), delay=0.3),  # idle long enough for keep-alives
        ]
    )
    harp_head, harp_body = await _raw_chat(conn, {})
    php_head, php_body = await _raw_chat(conn, ORIGIN)
    assert "transfer-encoding: chunked" in harp_head
    assert b": keep-alive\n\n" in harp_body
    assert "transfer-encoding" not in php_head
    assert "connection: close" in php_head
    assert b"keep-alive" not in php_body
    assert php_body == b"".join(p.data for p in service.sse.pieces)


async def test_the_php_override_frames_even_a_request_without_the_header(
    connector_factory: ConnectorFactory, service: FakeService, control: ServiceControl
) -> None:
    control.verify_key = TENANT_KEY
    conn = await connector_factory(BEEFLOW_API_BASE_URL=str(service.url), BEEFLOW_ROUTING="php")
    service.sse = StreamPlan(chat_pieces(["a"]))
    head, _ = await _raw_chat(conn, {})
    assert "transfer-encoding" not in head
    assert "connection: close" in head


@pytest.mark.parametrize(
    ("routing", "headers", "exapps"),
    [
        ("auto", {**ORIGIN, "AA-VERSION": "32.0.0"}, False),  # the Docker Socket Proxy
        ("auto", {**ORIGIN, **STAMP}, True),  # HaRP direct connect: PHP proxy, then HaRP
        ("harp", ORIGIN, True),
        ("php", {**ORIGIN, **STAMP}, False),
    ],
)
async def test_the_embed_frames_exapps_when_harp_is_in_use(
    connector_factory: ConnectorFactory, routing: str, headers: dict[str, str], exapps: bool
) -> None:
    conn = await connector_factory(BEEFLOW_ROUTING=routing)
    async with await conn.request("GET", "/js/embed.js", headers=headers) as resp:
        assert resp.status == 200
        script = await resp.text()
    assert ("var HARP = true;" in script) is exapps
    assert ("var HARP = false;" in script) is not exapps


async def _heartbeat_routing(conn: RunningConnector) -> dict[str, Any]:
    """As doctor reads it (a local caller with the secret sees the details)."""
    async with await conn.request("GET", "/heartbeat", user="") as resp:
        body = await resp.json()
    routing: dict[str, Any] = body["routing"]
    return routing


async def test_the_heartbeat_and_setup_status_say_which_routing_was_seen(
    connector_factory: ConnectorFactory,
) -> None:
    conn = await connector_factory()
    assert (await _heartbeat_routing(conn))["seen"] is None
    # Headers without the secret prove nothing and are not counted.
    forged = {**STAMP, "AUTHORIZATION-APP-API": base64.b64encode(b"alice:wrong").decode()}
    async with await conn.request("GET", "/setup/status", headers=forged) as resp:
        assert resp.status == 401
    assert (await _heartbeat_routing(conn))["seen"] is None
    # The PHP proxy without HaRP (the Docker Socket Proxy).
    async with await conn.request("GET", "/js/embed.js", user="", headers=ORIGIN) as resp:
        assert resp.status == 200
    assert (await _heartbeat_routing(conn))["seen"] == PHP
    # A browser request through HaRP.
    async with await conn.request("GET", "/setup/status", user="admin", headers=STAMP) as resp:
        assert resp.status == 200
        status = await resp.json()
    seen = await _heartbeat_routing(conn)
    assert seen["seen"] == HARP
    assert seen["harpRequests"] >= 1
    assert seen["phpProxyRequests"] >= 1
    transport = status["transport"]
    assert transport["routing"]["seen"] == HARP
    assert transport["streaming"] is True
    assert transport["mode"] == "legacy"  # the transport is TCP all the same
    assert SECRET not in str(status)
