"""CSRF over real sockets (beeflow/web/csrf.py): a browser write is accepted only from Nextcloud's
own origins, configured or observed; `same-site` and foreign Origins without Sec-Fetch-Site were
accepted before (issue 25, item 10)."""

from __future__ import annotations

import pytest
from aiohttp import web

from beeflow.web.auth import Access, add_route
from beeflow.web.csrf import origin_of
from beeflow.web.responses import json_response
from tests.conftest import ConnectorFactory
from tests.fakes.service import FakeService
from tests.helpers import RunningConnector

PUBLIC = "https://cloud.example.com"


async def _echo(request: web.Request) -> web.Response:
    return json_response({"ok": True})


def _routes(app: web.Application) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH", "GET"):
        add_route(app, method, "/t/write", _echo, Access.PUBLIC)


@pytest.fixture
async def conn(connector_factory: ConnectorFactory) -> RunningConnector:
    return await connector_factory(customise=_routes, BEEFLOW_NC_PUBLIC_URL=PUBLIC + "/nc/")


async def _status(conn: RunningConnector, method: str, headers: dict[str, str]) -> tuple[int, str]:
    async with await conn.request(method, "/t/write", headers=headers) as resp:
        body = await resp.json()
        return resp.status, str(body.get("code", ""))


REFUSED = [
    # A sibling subdomain: same-site, with Nextcloud's Lax cookies.
    ({"Sec-Fetch-Site": "same-site", "Origin": "https://evil.example.com"}, "origin_not_allowed"),
    ({"Sec-Fetch-Site": "same-site"}, "origin_not_allowed"),
    # No Sec-Fetch-Site (an older browser), a foreign Origin.
    ({"Origin": "https://evil.example"}, "origin_not_allowed"),
    ({"Origin": "http://cloud.example.com"}, "origin_not_allowed"),  # another scheme
    ({"Origin": "https://cloud.example.com:8443"}, "origin_not_allowed"),  # another port
    ({"Origin": "https://cloud.example.com.evil.example"}, "origin_not_allowed"),
    ({"Referer": "https://evil.example/page"}, "origin_not_allowed"),
    ({"Origin": "null", "Referer": "https://evil.example/x"}, "origin_not_allowed"),
    ({"Origin": "null"}, "origin_not_allowed"),  # a sandboxed frame, a data: URL
    ({"Origin": "null", "Sec-Fetch-Site": "same-site"}, "origin_not_allowed"),
    ({"Origin": "garbage"}, "origin_not_allowed"),
    ({"Sec-Fetch-Site": "cross-site"}, "cross_site_request_blocked"),
    ({"Sec-Fetch-Site": "cross-site", "Origin": PUBLIC}, "cross_site_request_blocked"),
    # The observed origin is the Host the browser addressed, never a header it can add.
    (
        {"Origin": "https://evil.example", "Host": "cloud.example.com"},
        "origin_not_allowed",
    ),
    (
        {"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example"},
        "origin_not_allowed",
    ),
]


@pytest.mark.parametrize(("headers", "code"), REFUSED)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_writes_from_elsewhere_are_refused(
    conn: RunningConnector, method: str, headers: dict[str, str], code: str
) -> None:
    assert await _status(conn, method, headers) == (403, code)


ACCEPTED = [
    {"Origin": PUBLIC},  # the configured public URL (its path does not matter)
    {"Origin": "https://CLOUD.example.com:443"},
    {"Referer": PUBLIC + "/apps/app_api/embedded/bee_flow"},
    {"Origin": "null", "Referer": PUBLIC + "/x"},
    # Observed: the Host this request was sent to (AppAPI's PHP proxy and HaRP pass it on).
    {"Origin": "https://nc.other.example", "Host": "nc.other.example"},
    {"Origin": "http://nc.other.example:8080", "Host": "nc.other.example:8080"},
    {"Origin": "http://[::1]:8080", "Host": "[::1]:8080"},
    # A browser saying so itself, with nothing else to check (Referrer-Policy: no-referrer).
    {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "same-site", "Origin": PUBLIC},
    # No browser context at all: server to server (AppAPI, webhooks, the service on /nc).
    {},
]


@pytest.mark.parametrize("headers", ACCEPTED)
async def test_writes_from_nextcloud_pass(conn: RunningConnector, headers: dict[str, str]) -> None:
    assert (await _status(conn, "POST", headers))[0] == 200


async def test_the_internal_nextcloud_url_counts_too(conn: RunningConnector) -> None:
    internal = str(conn.config.nextcloud_url.origin())
    assert (await _status(conn, "POST", {"Origin": internal}))[0] == 200


async def test_reads_are_not_judged(conn: RunningConnector) -> None:
    headers = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
    assert (await _status(conn, "GET", headers))[0] == 200


async def test_a_sibling_site_cannot_post_through_the_service_proxy(
    connector_factory: ConnectorFactory, service: FakeService
) -> None:
    """The proxied write is refused before authentication, and never reaches the service."""
    conn = await connector_factory(BEEFLOW_API_BASE_URL=str(service.url))
    headers = {
        "Host": "cloud.example.com",
        "Origin": "https://files.example.com",
        "Sec-Fetch-Site": "same-site",
    }
    async with await conn.request(
        "POST", "/ai/chat/direct/stream", user="alice", json={"message": "x"}, headers=headers
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "origin_not_allowed"
    assert service.requests == []


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("https://Cloud.Example.com", ("https", "cloud.example.com", 443)),
        ("https://cloud.example.com:443/x?y", ("https", "cloud.example.com", 443)),
        ("http://cloud.example.com.", ("http", "cloud.example.com", 80)),
        ("HTTP://[::1]:80", ("http", "::1", 80)),
        ("ftp://cloud.example.com", None),
        ("null", None),
        ("https://", None),
        ("https://a b", None),
    ],
)
def test_origin_of(text: str, origin: tuple[str, str, int] | None) -> None:
    assert origin_of(text) == origin
