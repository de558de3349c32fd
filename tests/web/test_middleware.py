"""Middleware alone on the real app: error JSON, draining, CSRF, security headers."""

from __future__ import annotations

import pytest
from aiohttp import web

from beeflow.errors import TooManyRequests
from beeflow.web.auth import Access, add_route
from beeflow.web.draining import DRAINING
from beeflow.web.responses import json_response
from tests.conftest import ConnectorFactory
from tests.helpers import RunningConnector


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals: /etc/passwd")


async def _limited(request: web.Request) -> web.Response:
    raise TooManyRequests("slow down", retry_after=7)


async def _echo(request: web.Request) -> web.Response:
    return json_response({"ok": True})


def _routes(app: web.Application) -> None:
    add_route(app, "GET", "/t/boom", _boom, Access.PUBLIC)
    add_route(app, "GET", "/t/limited", _limited, Access.PUBLIC)
    add_route(app, "POST", "/t/write", _echo, Access.PUBLIC)
    add_route(app, "GET", "/t/read", _echo, Access.PUBLIC)


@pytest.fixture
async def conn(connector_factory: ConnectorFactory) -> RunningConnector:
    return await connector_factory(
        customise=_routes,
        BEEFLOW_NC_PUBLIC_URL="https://cloud.example.com/index.php",
        BEEFLOW_TRUSTED_EMBED_ORIGINS="https://portal.example.com",
    )


async def test_unknown_exception_is_500_json_without_internals(
    conn: RunningConnector, caplog: pytest.LogCaptureFixture
) -> None:
    async with await conn.request("GET", "/t/boom") as resp:
        assert resp.status == 500
        body = await resp.json()
    assert body["code"] == "internal_error"
    assert "passwd" not in str(body)
    assert any(body["requestId"] in r.getMessage() for r in caplog.records)


async def test_rate_limit_error_carries_retry_after(conn: RunningConnector) -> None:
    async with await conn.request("GET", "/t/limited") as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        assert (await resp.json())["code"] == "rate_limited"


async def test_unrouted_paths_and_methods_get_json_codes(conn: RunningConnector) -> None:
    # Every path outside the connector's own belongs to the service (the USER catch-all): an
    # unknown one of the connector's is a JSON 404 from the connector itself.
    async with await conn.request("GET", "/setup/definitely-not-here") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"
    async with await conn.request("DELETE", "/heartbeat") as resp:
        assert resp.status == 405
        assert (await resp.json())["code"] == "method_not_allowed"
        assert "GET" in resp.headers["Allow"]


async def test_security_headers_on_every_response(conn: RunningConnector) -> None:
    for path in ("/heartbeat", "/t/boom", "/nowhere"):
        async with await conn.request(
            "GET", path, headers={"Origin": "https://evil.example"}
        ) as resp:
            csp = resp.headers["Content-Security-Policy"]
            assert csp.startswith("frame-ancestors 'self' ")
            assert "evil" not in csp
            assert "https://cloud.example.com" in csp
            assert "https://portal.example.com" in csp
            assert str(conn.config.nextcloud_url.origin()) in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert resp.headers["X-Robots-Tag"] == "noindex, nofollow"


async def test_cross_site_writes_are_refused_reads_are_not(conn: RunningConnector) -> None:
    async with await conn.request(
        "POST", "/t/write", headers={"Sec-Fetch-Site": "cross-site"}
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "cross_site_request_blocked"
    for site in ("same-origin", None):
        headers = {"Sec-Fetch-Site": site} if site else {}
        async with await conn.request("POST", "/t/write", headers=headers) as resp:
            assert resp.status == 200
    async with await conn.request(
        "GET", "/t/read", headers={"Sec-Fetch-Site": "cross-site"}
    ) as resp:
        assert resp.status == 200


async def test_draining_answers_503_shutting_down(conn: RunningConnector) -> None:
    conn.app[DRAINING].begin()
    async with await conn.request("GET", "/heartbeat") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "5"
        assert (await resp.json())["code"] == "shutting_down"
