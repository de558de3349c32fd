"""Every row of docs/bad-input.md, run over a raw socket against the real server: the documented
status and `code`, within a time bound, no stack trace or secret in the answer or the log, and
the server still healthy afterwards. The doc's tables are generated from the same list."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator

import attrs
import pytest

from beeflow.config import Config
from beeflow.transports.answers import PARSER_CODES as _PARSER
from beeflow.web.parser_log import http_logger
from tests.helpers import SECRET, TENANT_KEY
from tests.reliability import catalogue
from tests.reliability.catalogue import CASES, CLOSED, HEADER_TIMEOUT, Case
from tests.reliability.rawhttp import exchange, request_bytes
from tests.reliability.stack import Stack, app_headers, running_stack

SECRETS = (
    SECRET,
    TENANT_KEY,
    *(base64.b64encode(f"{uid}:{SECRET}".encode()).decode() for uid in ("alice", "admin", "")),
)
PARSER_CODES = frozenset(code for _, code, _ in _PARSER)
TRACE_MARKERS = ("Traceback (most recent call last)", 'File "/', "line ", '.py"')


def short_header_timeout(config: Config) -> Config:
    return attrs.evolve(
        config,
        client_header_timeout_seconds=HEADER_TIMEOUT,
        nc_body_idle_seconds=HEADER_TIMEOUT,
    )


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack(config_edit=short_header_timeout) as running:
        yield running


def _params() -> list[object]:
    out: list[object] = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.defect)] if case.defect else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def test_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_doc_is_the_catalogue() -> None:
    """docs/bad-input.md holds exactly the generated tables (regenerate with
    `python -m tests.reliability.catalogue --write`)."""
    text = catalogue.DOC.read_text()
    assert catalogue.doc_block(text) == catalogue.render()


@pytest.mark.parametrize("case", _params())
async def test_bad_input(case: Case, stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    resp = await exchange("127.0.0.1", stack.port, case.build(stack), timeout=case.timeout)
    # Nothing hangs: an answer (or the close) came within the case's bound.
    assert resp.status is not None or resp.closed, f"no answer within {case.timeout}s"
    assert resp.status == case.status, (resp.status, resp.raw[:300])
    content_type = resp.headers.get("Content-Type", "")
    if case.code == CLOSED:
        assert resp.raw == b""
    elif case.code is not None:
        assert content_type == "application/json", (content_type, resp.raw[:300])
        assert resp.code == case.code, resp.text[:300]
        assert resp.headers.get("Cache-Control") == "no-store"
        assert isinstance(resp.json().get("error", ""), str)
        # Every answer, the parser's refusals too, carries the security headers.
        assert resp.headers.get("X-Content-Type-Options") == "nosniff"
        assert "frame-ancestors" in resp.headers.get("Content-Security-Policy", "")
        if case.code in PARSER_CODES:
            assert resp.closed, "a parser refusal closes the connection"
    # No stack trace, and no secret: nothing of the request is quoted back.
    for marker in TRACE_MARKERS[:2]:
        assert marker.encode() not in resp.raw
    for secret in SECRETS:
        assert secret.encode() not in resp.raw, "a secret in the answer"
    if case.check is not None:
        case.check(stack, resp)
    # Still serving.
    alive = await exchange("127.0.0.1", stack.port, request_bytes("GET", "/heartbeat"))
    assert alive.status == 200
    # Nothing crashed: no traceback and no error in the log, and no secret either.
    for record in caplog.records:
        text = record.getMessage()
        assert record.exc_info is None, (record.name, text)
        assert not record.exc_text, (record.name, text)
        assert record.levelno < logging.ERROR, (record.name, text)
        for secret in SECRETS:
            assert secret not in text, f"secret in the log: {record.name}"


async def test_parser_refusal_is_one_log_line_without_the_request_bytes(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A browser's 17 KB Cookie (through Nextcloud's proxy, with the session id in it) is
    refused by the parser; the log names the error and never quotes the cookie."""
    caplog.set_level(logging.DEBUG)
    session = "nc_session_id=S3SS10N" + "q" * 40
    cookie = f"{session}; nc_token=T0K3N{'t' * 40}; pad={'x' * 17_000}"
    headers = [*app_headers(), ("Cookie", cookie), ("Authorization", "Basic YWxpY2U6cGFzcw==")]
    resp = await exchange("127.0.0.1", stack.port, request_bytes("GET", "/api/json", headers))
    assert resp.status == 400
    parser = [r for r in caplog.records if r.name == "beeflow.http"]
    assert len(parser) == 1
    record = parser[0]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "request from 127.0.0.1 refused by the HTTP parser (LineTooLong, HTTP 400)"
    )
    assert record.exc_info is None
    assert record.exc_text is None
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("S3SS10N", "T0K3N", "YWxpY2U6cGFzcw==", *SECRETS):
        assert secret not in everything
    assert stack.service.requests == []


async def test_a_smuggling_shape_is_logged_at_info(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wire = request_bytes(
        "POST",
        "/api/echo",
        [*app_headers(), ("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
        b"0\r\n\r\n",
    )
    resp = await exchange("127.0.0.1", stack.port, wire)
    assert resp.status == 400
    (record,) = [r for r in caplog.records if r.name == "beeflow.http"]
    assert record.levelno == logging.INFO
    assert "BadHttpMessage" in record.getMessage()
    assert "Transfer-Encoding" not in record.getMessage()


def test_default_client_header_timeout_is_a_real_bound() -> None:
    """The production default (the catalogue runs with 1 s) bounds a slowloris to a minute."""
    default = attrs.fields(Config).client_header_timeout_seconds.default
    assert isinstance(default, float)
    assert 5 <= default <= 120


def test_other_server_errors_keep_their_level_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only parser refusals are rewritten; a real failure inside the server keeps its ERROR
    record and traceback (the redaction filter still applies to it downstream)."""
    caplog.set_level(logging.DEBUG)
    logger = http_logger()
    try:
        raise ValueError("boom")
    except ValueError as exc:
        logger.exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
    (record,) = [r for r in caplog.records if r.name == "beeflow.http"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.getMessage() == "Error handling request from 127.0.0.1"
