"""Requests aiohttp's HTTP parser refuses, on the connector's real listener (make_app behind the
transports' GuardedSite): JSON with a stable code and the security headers every other answer
has, the connection closed, nothing of the request quoted, and a flood of them one log line a
minute (issue 25, item 13). Before: `text/plain` quoting the parser's message, no security
headers, and one WARNING or INFO line per request."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable

import attrs
import pytest
from aiohttp import http_exceptions, web

from beeflow.app import make_app
from beeflow.config import Config
from beeflow.transports.answers import PARSER_CODES, SECURITY_HEADERS, refusal
from beeflow.transports.guard import ConnectionGuard, GuardedSite
from beeflow.web.parser_log import http_logger
from tests.reliability.rawhttp import RawResponse, exchange, request_bytes

SECRET_LOOKING = "Basic c2VjcmV0LWNyZWRlbnRpYWxz"


@attrs.define
class Listener:
    runner: web.AppRunner
    port: int

    async def send(self, data: bytes) -> RawResponse:
        return await exchange("127.0.0.1", self.port, data, timeout=5, wait_close=2)


@pytest.fixture
async def listener(make_config: Callable[..., Config]) -> AsyncIterator[Listener]:
    app = make_app(make_config(), run_at_boot=False)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    guard = ConnectionGuard(max_connections=1000, max_head_bytes=32 * 1024, head_timeout=5)
    site = GuardedSite(runner, guard, host="127.0.0.1", port=0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield Listener(runner, port)
    finally:
        await runner.cleanup()


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


CASES = [
    ("request-line", _head("THIS IS NOT HTTP AT ALL"), "method_invalid"),
    ("bad-version", _head("GET / HTTP/9.9", "Host: x"), "request_line_invalid"),
    ("header-no-colon", _head("GET / HTTP/1.1", "Host: x", "Broken header line"), None),
    ("header-space-colon", _head("GET / HTTP/1.1", "Host: x", "Content-Length : 5"), None),
    ("cl-plus", _head("POST / HTTP/1.1", "Host: x", "Content-Length: +5") + b"hello", None),
    (
        "cl-and-te",
        _head("POST / HTTP/1.1", "Host: x", "Content-Length: 5", "Transfer-Encoding: chunked")
        + b"0\r\n\r\n",
        "bad_request",
    ),
    (
        "te-unknown",
        _head("POST / HTTP/1.1", "Host: x", "Transfer-Encoding: xchunked") + b"0\r\n\r\n",
        None,
    ),
    ("line-too-long", _head("GET / HTTP/1.1", "Host: x", "Cookie: " + "c" * 17_000), None),
    (
        "bad-chunk",
        _head("POST /heartbeat HTTP/1.1", "Host: x", "Transfer-Encoding: chunked")
        + b"zz\r\nhello\r\n0\r\n\r\n",
        None,
    ),
    ("ctl-in-target", b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", None),
]


@pytest.mark.parametrize(("name", "wire", "code"), CASES, ids=[c[0] for c in CASES])
async def test_a_parser_refusal_is_json_with_the_security_headers(
    listener: Listener, name: str, wire: bytes, code: str | None
) -> None:
    wire = wire.replace(b"Host: x\r\n", f"Host: x\r\nAuthorization: {SECRET_LOOKING}\r\n".encode())
    resp = await listener.send(wire)
    assert resp.status == 400, resp.raw[:300]
    assert resp.headers["Content-Type"].startswith("application/json"), resp.raw[:300]
    body = resp.json()
    assert set(body) == {"code", "error"}
    if code is not None:
        assert body["code"] == code
    assert body["code"] in {c for _, c, _ in PARSER_CODES}
    for header, value in SECURITY_HEADERS:
        assert resp.headers[header] == value, header
    assert resp.closed, "a parser refusal closes the connection"
    assert SECRET_LOOKING.encode() not in resp.raw
    assert b"ccccc" not in resp.raw
    assert b"NOT HTTP" not in resp.raw


async def test_the_listener_still_serves_after_them(listener: Listener) -> None:
    await listener.send(_head("THIS IS NOT HTTP"))
    resp = await listener.send(request_bytes("GET", "/heartbeat", [("Connection", "close")]))
    assert resp.status == 200


async def test_a_flood_of_refusals_is_one_log_line(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    """300 bad requests: before, 300 lines; now the first, and the rest counted on the next
    line (at most one a minute)."""
    caplog.set_level(logging.DEBUG, logger="beeflow.http")
    bad = _head("GET / HTTP/1.1", "Host: x", "Broken header line")

    async def one() -> None:
        assert (await listener.send(bad)).status == 400

    for _ in range(10):
        await asyncio.gather(*(one() for _ in range(30)))
    lines = [r for r in caplog.records if r.name == "beeflow.http"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].getMessage().startswith("request from 127.0.0.1 refused by the HTTP parser")


def test_every_parser_error_class_has_a_code() -> None:
    for name in dir(http_exceptions):
        kind = getattr(http_exceptions, name)
        if isinstance(kind, type) and issubclass(kind, http_exceptions.HttpProcessingError):
            code, message = refusal(400, kind.__new__(kind))
            assert code, name
            assert message, name
    assert refusal(500, None) == ("internal_error", "Internal error")


def test_the_next_line_counts_what_was_left_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="beeflow.http")
    log = http_logger(interval=0.05)
    refused = http_exceptions.BadStatusLine("GET /secret-token-in-the-line")
    message = "Error handling request from %s"
    for _ in range(5):
        # aiohttp's own call: exception() with the parser's exception as exc_info.
        log.exception(message, "10.0.0.1", exc_info=refused)  # noqa: LOG004
    time.sleep(0.06)  # the interval is a time: one has to pass
    try:
        raise refused
    except http_exceptions.BadStatusLine:
        log.log(logging.ERROR, message, "10.0.0.2", exc_info=sys.exc_info())
    lines = [r.getMessage() for r in caplog.records if r.name == "beeflow.http"]
    assert lines == [
        "request from 10.0.0.1 refused by the HTTP parser (BadStatusLine, HTTP 400)",
        "request from 10.0.0.2 refused by the HTTP parser (BadStatusLine, HTTP 400); "
        "4 more refused since the last such line",
    ]
    assert "secret-token" not in caplog.text
