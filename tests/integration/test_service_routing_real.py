"""Through the real Nextcloud 32.0.1 (bundled AppAPI 32.0.0) and its PHP proxy, with the manifest
as written: what of a user's request reaches the Bee Flow service, what never does, and the
service's own callbacks into Nextcloud through the connector."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from beeflow.tenant.discovery import host_instance_id
from tests.fakes.service_control import callback_request
from tests.integration.conftest import EMAILS, Lane
from tests.integration.server import basic

# The first test run alone also sets the lane up (Nextcloud, ten restarts, the registration).
pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(300)]

SSE = {"Accept": "text/event-stream"}


@pytest.fixture
async def browser_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client like a browser's fetch: no cookies kept between tests."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def proxy_url(lane: Lane, path: str) -> str:
    return str(lane.base) + path


def credentials(lane: Lane, user: str) -> dict[str, str]:
    return {"admin": lane.nc.admin, "bob": lane.nc.bob}[user]


async def as_user(
    session: aiohttp.ClientSession,
    lane: Lane,
    method: str,
    path: str,
    user: str | None,
    **kw: Any,
) -> tuple[int, str, str]:
    headers = {**(kw.pop("headers", None) or {}), **(credentials(lane, user) if user else {})}
    async with session.request(method, proxy_url(lane, path), headers=headers, **kw) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def forwarded(lane: Lane) -> list[str]:
    return [f"{r.method} {r.path}" for r in lane.service.forwarded()]


async def test_chat_as_bob_reaches_the_service_with_the_jwt(
    lane: Lane, browser_session: aiohttp.ClientSession
) -> None:
    before = len(lane.service.forwarded())
    status, ctype, body = await as_user(
        browser_session, lane, "POST", "/ai/chat/direct/stream", "bob",
        json={"message": "hello"}, headers=SSE,
    )  # fmt: skip
    assert status == 200, body
    assert ctype.startswith("text/event-stream")
    assert "event: conversation_created" in body
    assert "event: done" in body
    (rec,) = lane.service.forwarded()[before:]
    assert (rec.method, rec.path) == ("POST", "/ai/chat/direct/stream")
    # The service's connectorJwt accepted the token: bob, signed in by his e-mail.
    assert (rec.auth, rec.user_email) == ("ok", EMAILS["bob"])
    assert rec.claims is not None
    assert (rec.claims["sub"], rec.claims["nc_admin"]) == ("bob", False)
    assert rec.headers["Authorization"].startswith("Bearer ")
    assert rec.headers["X-Beeflow-Source"] == "nextcloud-connector"
    # Nothing of bob's Nextcloud login, the session or AppAPI went on.
    sent = json.dumps(dict(rec.headers)).lower()
    for needle in ("basic ", "cookie", "authorization-app-api", "x-origin-ip", "ex-app-id"):
        assert needle not in sent, needle
    assert lane.nc.bob_password.lower() not in sent


async def test_the_services_other_paths_reach_it_as_bob(
    lane: Lane, browser_session: aiohttp.ClientSession
) -> None:
    """The UI's /agents, /components, ... go through the USER catch-all; PUT and DELETE too
    (PATCH is tunnelled: the PHP proxy has no PATCH route)."""
    before = len(lane.service.forwarded())
    for method, path in (
        ("GET", "/agents/7"),
        ("GET", "/components/list"),
        ("PUT", "/reports/r1"),
        ("DELETE", "/ai/direct/conversations/c9"),
        ("GET", "/api/health"),
    ):
        status, _, body = await as_user(browser_session, lane, method, path, "bob")
        assert status in (200, 404), (path, status, body[:200])
    got = [(r.method, r.path, r.auth) for r in lane.service.forwarded()[before:]]
    assert got == [
        ("GET", "/agents/7", "ok"),
        ("GET", "/components/list", "ok"),
        ("PUT", "/reports/r1", "ok"),
        ("DELETE", "/ai/direct/conversations/c9", "ok"),
        ("GET", "/api/health", "ok"),
    ]


async def test_the_old_api_chat_path_is_the_services_json_404(
    lane: Lane, browser_session: aiohttp.ClientSession
) -> None:
    status, _, body = await as_user(
        browser_session, lane, "POST", "/api/ai/chat/direct/stream", "bob",
        json={"message": "hi"},
    )  # fmt: skip
    assert status == 404
    assert json.loads(body) == {"error": "Not found"}


async def test_setup_as_bob_is_refused_and_never_forwarded(
    lane: Lane, browser_session: aiohttp.ClientSession
) -> None:
    """AppAPI 32.0.0 lets bob's refused ADMIN /setup fall through to the USER catch-all: the
    connector refuses it itself (403), and the service sees nothing."""
    before = forwarded(lane)
    for method in ("GET", "POST"):
        status, ctype, body = await as_user(
            browser_session, lane, method, "/setup", "bob", json={"mode": "cloud"}
        )
        assert status == 403, body[:300]
        assert ctype.startswith("application/json")
        assert json.loads(body)["code"] == "admin_required"
    status, _, body = await as_user(browser_session, lane, "GET", "/setup/status", "bob")
    assert status == 403
    assert forwarded(lane) == before
    # The admin gets the page, from the connector.
    status, ctype, body = await as_user(browser_session, lane, "GET", "/setup", "admin")
    assert status == 200
    assert ctype.startswith("text/html")
    assert forwarded(lane) == before


@pytest.mark.parametrize(
    ("method", "path", "user"),
    [
        ("GET", "/setup/diagnostics", "bob"),  # under /setup, no such route: the catch-all's
        ("GET", "/SETUP/status", "bob"),  # the PHP matcher is case-insensitive
        ("PUT", "/setup", "admin"),  # a verb the setup route does not list
        ("DELETE", "/heartbeat", "bob"),
        ("POST", "/hooks/other", "bob"),
        ("GET", "/nc", "bob"),
        ("POST", "/assets/x.js", "bob"),
    ],
)
async def test_connector_paths_are_never_forwarded(
    lane: Lane, browser_session: aiohttp.ClientSession, method: str, path: str, user: str
) -> None:
    before = forwarded(lane)
    status, ctype, body = await as_user(browser_session, lane, method, path, user)
    assert status in (403, 404, 405), (status, body[:300])
    assert ctype.startswith("application/json"), (status, body[:300])  # the connector answered
    assert forwarded(lane) == before


async def test_the_task_processing_wake_up_is_the_connectors_own(
    lane: Lane, browser_session: aiohttp.ClientSession
) -> None:
    """`/trigger` is answered by the connector (for no provider of ours here), never forwarded."""
    before = forwarded(lane)
    status, ctype, body = await as_user(browser_session, lane, "GET", "/trigger", "admin")
    assert (status, json.loads(body)["code"]) == (200, "unknown_provider"), body[:300]
    assert ctype.startswith("application/json")
    assert forwarded(lane) == before


async def test_l10n_calls_are_answered_by_the_connector(
    lane: Lane, browser_session: aiohttp.ClientSession
) -> None:
    before = forwarded(lane)
    status, _, body = await as_user(
        browser_session, lane, "GET", "/api/languages/user/strings/de", "bob"
    )
    assert status == 200
    assert json.loads(body)["translations"] == {}
    assert forwarded(lane) == before


async def test_a_user_without_email_gets_the_connectors_sentence(
    lane: Lane, browser_session: aiohttp.ClientSession
) -> None:
    """A third user, made without an e-mail address (as `occ user:add` makes one): the service
    would refuse her JWT with a bare 400, so the connector answers for it, and sends nothing."""
    uid = f"carol{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(18)
    lane.nc.occ("user:add", "--password-from-env", uid, extra_env={"OC_PASS": password})
    try:
        shown = lane.nc.occ("user:info", uid, "--output=json").stdout
        assert not json.loads(shown)["email"], shown
        before = forwarded(lane)
        async with browser_session.post(
            proxy_url(lane, "/ai/chat/direct/stream"),
            headers=basic(uid, password),
            json={"message": "hi"},
        ) as resp:
            assert resp.status == 403
            assert resp.headers["Content-Type"].startswith("application/json")
            body = await resp.json(content_type=None)
        assert body["code"] == "nextcloud_email_missing"
        assert "e-mail address" in body["error"]
        assert forwarded(lane) == before
    finally:
        lane.nc.occ("user:delete", uid, check=False)


# ------------------------------------------------------------------ the service's callbacks


async def callback(
    session: aiohttp.ClientSession,
    lane: Lane,
    method: str,
    rest: str,
    *,
    uid: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """What the service sends to {callback}/nc<rest>: signed v2, tunnelled, uid header."""
    wire, signed = callback_request(lane.tenant_key, method, "/nc" + rest, uid=uid, body=body)
    url = URL(proxy_url(lane, "/nc" + rest), encoded=True)
    all_headers = {**signed, "Content-Type": "application/octet-stream", **(headers or {})}
    async with session.request(wire, url, headers=all_headers, data=body) as resp:
        return resp.status, await resp.read()


async def test_the_services_signed_callbacks_work_through_nextcloud(
    lane: Lane, browser_session: aiohttp.ClientSession
) -> None:
    """Every verb but GET and POST tunnelled as POST + X-HTTP-Method-Override (PUT, DELETE
    and WebDAV's), signed v2 over the real verb, the uid always sent."""
    path = "/remote.php/dav/files/bob/beeflow-service-contract.txt"
    data = b"written by the Bee Flow service"
    status, _ = await callback(browser_session, lane, "PUT", path, uid="bob", body=data)
    assert status in (201, 204), status
    status, got = await callback(browser_session, lane, "GET", path, uid="bob")
    assert (status, got) == (200, data)
    status, got = await callback(
        browser_session, lane, "PROPFIND", path, uid="bob", headers={"Depth": "0"}
    )
    assert status == 207
    assert b"beeflow-service-contract.txt" in got
    status, _ = await callback(browser_session, lane, "DELETE", path, uid="bob")
    assert status == 204
    status, _ = await callback(browser_session, lane, "GET", path, uid="bob")
    assert status == 404
    status, got = await callback(
        browser_session, lane, "GET", "/ocs/v2.php/cloud/users/bob?format=json", uid="bob"
    )
    assert status == 200
    assert json.loads(got)["ocs"]["data"]["email"] == EMAILS["bob"]


async def test_the_studio_menus_push_is_answered_by_the_connector(
    lane: Lane, browser_session: aiohttp.ClientSession
) -> None:
    """The service's push to {callback}/hooks/studio-menus (v2, uid ''): the manifest's PUBLIC
    route takes it through Nextcloud's PHP proxy to the connector, which answers it itself
    (200, the reconciliation's counts; test_admin_real.py follows what it does). Nothing is
    forwarded."""
    before = forwarded(lane)
    body = b'{"reason":"published","studioAppId":"a1","sentAt":1}'
    wire, signed = callback_request(lane.tenant_key, "POST", "/hooks/studio-menus", body=body)
    async with browser_session.request(
        wire, proxy_url(lane, "/hooks/studio-menus"), headers=signed, data=body
    ) as resp:
        assert resp.status == 200
        answer = await resp.json(content_type=None)
    assert answer["ok"] is True, answer
    assert forwarded(lane) == before


def test_the_services_ownership_check_accepts_this_nextcloud(lane: Lane) -> None:
    """The bootstrap's anti-spoof round trip (verifyNcInstance) against the real capabilities:
    this Nextcloud exposes no instance id, so the host-keyed one the connector sends must be
    what the service derives (and what the lane's bootstrap bound the organisation to)."""
    control = lane.service.control
    expected = host_instance_id(lane.nc.url)
    assert lane.service.organization.instance_id == expected
    checked = lane.service.call(control.verify_instance(str(lane.nc.url), expected))
    assert isinstance(checked, tuple), checked
    assert checked[1].startswith("32.0.1")
    mismatch = lane.service.call(control.verify_instance(str(lane.nc.url), "oc-someone-else"))
    assert isinstance(mismatch, str)
    assert "mismatch" in mismatch
