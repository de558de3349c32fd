"""The access log: one line per request with method, route family, status, duration, bytes and
AppAPI's request id; at DEBUG unless BEEFLOW_ACCESS_LOG=1; never a path as sent, a query, a file
name, a user or a secret; JSON lines carry the fields."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from beeflow.cli import JsonFormatter
from beeflow.web.access_log import FIELDS_ATTR
from tests.conftest import ConnectorFactory
from tests.fakes.frp import free_port
from tests.fakes.service import FakeService, StreamPlan, chat_pieces
from tests.helpers import SECRET, TENANT_KEY, RunningConnector, appapi_headers, base_env
from tests.ports import refused_url
from tests.procs import ServeProcess
from tests.proxy.conftest import raw_exchange

LOGGER = "beeflow.access"
CLOSE = {"Connection": "close"}


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    data: dict[str, Any] = getattr(record, FIELDS_ATTR)
    return data


@pytest.fixture
async def plain_service() -> AsyncIterator[FakeService]:
    """The fake service without its control endpoints: it takes the test tenant key's JWTs."""
    svc = FakeService()
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def logged(
    connector_factory: ConnectorFactory, plain_service: FakeService
) -> RunningConnector:
    return await connector_factory(
        BEEFLOW_API_BASE_URL=str(plain_service.url), BEEFLOW_ACCESS_LOG="1"
    )


async def test_off_by_default_shown_at_debug(
    connector_factory: ConnectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await connector_factory()
    caplog.set_level(logging.INFO, logger=LOGGER)
    # aiohttp asks whether the log is on once per connection: a new one each time.
    async with await conn.request("GET", "/heartbeat", headers=CLOSE) as resp:
        assert resp.status == 200
    assert lines(caplog) == []
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with await conn.request("GET", "/heartbeat", headers=CLOSE) as resp:
        assert resp.status == 200
    (record,) = lines(caplog)
    assert record.levelno == logging.DEBUG
    assert record.getMessage().startswith("GET /heartbeat 200 ")


async def sent_bytes(conn: RunningConnector, head: str) -> bytes:
    """Everything the connector sent for one request on its own connection."""
    assert conn.url.host is not None
    assert conn.url.port is not None
    raw = head.replace("\n", "\r\n") + "Connection: close\r\n\r\n"
    return await raw_exchange(conn.url.host, conn.url.port, raw.encode())


async def test_one_line_per_request_with_its_fields(
    logged: RunningConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    answer = await sent_bytes(
        logged, "GET /heartbeat HTTP/1.1\nHost: x\nAA-REQUEST-ID: Zx81Qa0Lm2Nb7Cc4Dd5E\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    (record,) = lines(caplog)
    assert record.levelno == logging.INFO
    data = fields_of(record)
    assert data["method"] == "GET"
    assert data["route"] == "/heartbeat"
    assert data["status"] == 200
    assert data["bytes"] == len(answer)  # headers and body, as sent
    assert data["requestId"] == "Zx81Qa0Lm2Nb7Cc4Dd5E"
    assert 0 <= data["durationMs"] < 60_000
    assert record.getMessage() == (
        f"GET /heartbeat 200 {data['durationMs']:.1f}ms {len(answer)}B rid=Zx81Qa0Lm2Nb7Cc4Dd5E"
    )


async def test_refusals_are_logged_with_the_status_sent(
    logged: RunningConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    refused = await sent_bytes(logged, "GET /setup/status HTTP/1.1\nHost: x\n")
    assert refused.startswith(b"HTTP/1.1 401 ")
    not_allowed = await sent_bytes(logged, "DELETE /heartbeat HTTP/1.1\nHost: x\n")
    assert not_allowed.startswith(b"HTTP/1.1 405 ")
    garbage = await sent_bytes(logged, "GET /x y z HTTP/1.1\nHost: x\n")
    assert garbage.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    first, second, third = (fields_of(r) for r in lines(caplog))
    assert (first["route"], first["status"], first["bytes"]) == (
        "/setup/status",
        401,
        len(refused),
    )
    assert (second["method"], second["status"]) == ("DELETE", 405)
    # The parser's refusal never reached the router: no route family, nothing of its bytes.
    assert (third["route"], third["status"], third["bytes"]) == ("-", 400, len(garbage))


async def test_never_a_query_a_file_name_a_user_or_a_secret(
    logged: RunningConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    requests = [
        ("GET", "/api/json?q=private-words&token=t0k3n", "alice"),
        ("GET", "/Quarterly-Report.pdf", "alice"),
        ("GET", "/agents/Bobs-Secret-Agent/chat", "alice"),
        ("PROPFIND", "/nc/remote.php/dav/files/alice/Salaries%202026.xlsx?x=1", None),
        ("GET", "/assets/beeflow-ui.js?v=secret-version", None),
    ]
    for method, path, user in requests:
        async with await logged.request(
            method,
            path,
            user=user,
            headers={"AA-REQUEST-ID": "bad id with spaces", "Cookie": "nc_session=abc"},
        ) as resp:
            await resp.read()
    records = lines(caplog)
    assert [fields_of(r)["route"] for r in records] == [
        "/api/*",
        "/*",
        "/agents/*",
        "/nc/*",
        "/assets/*",
    ]
    assert all(fields_of(r)["requestId"] is None for r in records)
    text = "\n".join(r.getMessage() + json.dumps(fields_of(r)) for r in records)
    for leak in (
        "private-words", "t0k3n", "Quarterly", "Report", "Bobs-Secret", "Salaries", "alice",
        "secret-version", "nc_session", "spaces", SECRET, TENANT_KEY, "?",
    ):  # fmt: skip
        assert leak not in text


async def test_a_streamed_answer_counts_its_bytes(
    logged: RunningConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    auth = "".join(f"{k}: {v}\n" for k, v in appapi_headers("alice").items())
    answer = await sent_bytes(logged, f"GET /api/stream HTTP/1.1\nHost: x\n{auth}")
    assert b"text/event-stream" in answer
    # Legacy mode: close-delimited, so the body is the stream's bytes as they are.
    assert answer.endswith(b'event: done\ndata: {"conversationId":"conv-1"}\n\n')
    (record,) = lines(caplog)
    data = fields_of(record)
    assert (data["route"], data["status"]) == ("/api/*", 200)
    assert data["bytes"] == len(answer)


def test_json_lines_carry_the_fields() -> None:
    record = logging.LogRecord(LOGGER, logging.INFO, __file__, 1, "GET /heartbeat", (), None)
    data = {
        "method": "GET",
        "route": "/heartbeat",
        "status": 200,
        "durationMs": 1.5,
        "bytes": 16,
        "requestId": "CLI",
    }
    setattr(record, FIELDS_ATTR, data)
    line = json.loads(JsonFormatter().format(record))
    assert line["logger"] == LOGGER
    assert line["msg"] == "GET /heartbeat"
    assert {k: line[k] for k in data} == data


async def test_a_stream_the_client_left_is_logged_as_499(
    logged: RunningConnector, plain_service: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    plain_service.sse = StreamPlan(chat_pieces(["x"]), then="hold")
    resp = await logged.request("GET", "/api/stream", user="alice")
    assert resp.status == 200
    await resp.content.readuntil(b"\n\n")
    log = await plain_service.wait_stream(0)
    resp.close()  # a closed browser tab
    async with asyncio.timeout(5):
        await log.ended.wait()
        while not lines(caplog):
            await asyncio.sleep(0.01)
    (record,) = lines(caplog)
    data = fields_of(record)
    assert (data["route"], data["status"], data["bytes"]) == ("/api/*", 499, None)
    assert record.getMessage().startswith("GET /api/* 499 ")
    assert " -B rid=-" in record.getMessage()


async def test_serve_writes_json_access_lines(tmp_path: Path) -> None:
    """The real process, as configured: BEEFLOW_ACCESS_LOG=1 and JSON lines."""
    port = free_port()
    env = base_env(
        refused_url(),
        tmp_path,
        APP_PORT=str(port),
        BEEFLOW_ACCESS_LOG="1",
        BEEFLOW_LOG_FORMAT="json",
    )
    proc = await ServeProcess.start(env)
    try:
        await proc.wait_line("ready in")
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}/heartbeat?user=x", headers={"AA-REQUEST-ID": "CLI"}
            ) as resp,
        ):
            assert resp.status == 200
        _, line = await proc.wait_line('"logger": "beeflow.access"')
    finally:
        await proc.close()
    data = json.loads(line)
    assert {k: data[k] for k in ("level", "method", "route", "status", "requestId")} == {
        "level": "info",
        "method": "GET",
        "route": "/heartbeat",
        "status": 200,
        "requestId": "CLI",
    }
    assert data["bytes"] > 0
    assert "user=x" not in line
