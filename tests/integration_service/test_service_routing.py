"""Through the real Nextcloud 32.0.1 (bundled AppAPI 32.0.0) and its PHP proxy, with the manifest
as written: what of a user's request reaches the Bee Flow service, what never does, and the
service's own callbacks into Nextcloud through the connector."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from yarl import URL

from beeflow import tenant
from tests.fakes.service_control import callback_request
from tests.helpers import TENANT_KEY
from tests.integration_service.conftest import Stack

# The session's first test also waits for Nextcloud to start (a first install: ~15-30 s, more
# when its Debian packages are installed first).
pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(900)]

SSE = {"Accept": "text/event-stream"}


async def as_user(
    session: aiohttp.ClientSession,
    stack: Stack,
    method: str,
    path: str,
    user: str | None,
    **kw: Any,
) -> tuple[int, str, str]:
    headers = {**(kw.pop("headers", None) or {}), **(stack.nc.basic(user) if user else {})}
    async with session.request(method, stack.nc.proxy + path, headers=headers, **kw) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def forwarded(stack: Stack) -> list[str]:
    return [f"{r.method} {r.path}" for r in stack.service.requests]


async def test_chat_as_bob_reaches_the_service_with_the_jwt(
    stack: Stack, browser_session: aiohttp.ClientSession
) -> None:
    before = len(stack.service.requests)
    status, ctype, body = await as_user(
        browser_session, stack, "POST", "/ai/chat/direct/stream", "bob",
        json={"message": "hello"}, headers=SSE,
    )  # fmt: skip
    assert status == 200, body
    assert ctype.startswith("text/event-stream")
    assert "event: conversation_created" in body
    assert "event: done" in body
    (rec,) = stack.service.requests[before:]
    assert (rec.method, rec.path) == ("POST", "/ai/chat/direct/stream")
    # The service's connectorJwt accepted the token: bob, signed in by his e-mail.
    assert (rec.auth, rec.user_email) == ("ok", "bob@example.com")
    assert rec.claims is not None
    assert (rec.claims["sub"], rec.claims["nc_admin"]) == ("bob", False)
    assert rec.headers["Authorization"].startswith("Bearer ")
    assert rec.headers["X-Beeflow-Source"] == "nextcloud-connector"
    # Nothing of bob's Nextcloud login, the session or AppAPI went on.
    sent = json.dumps(dict(rec.headers)).lower()
    for needle in ("basic ", "cookie", "authorization-app-api", "x-origin-ip", "ex-app-id"):
        assert needle not in sent, needle
    assert stack.nc.env["NC_BOB_PASSWORD"] not in sent


async def test_the_services_other_paths_reach_it_as_bob(
    stack: Stack, browser_session: aiohttp.ClientSession
) -> None:
    """The UI's /agents, /components, ... go through the USER catch-all; PUT and DELETE too
    (PATCH is tunnelled: the PHP proxy has no PATCH route)."""
    before = len(stack.service.requests)
    for method, path in (
        ("GET", "/agents/7"),
        ("GET", "/components/list"),
        ("PUT", "/reports/r1"),
        ("DELETE", "/ai/direct/conversations/c9"),
        ("GET", "/api/health"),
    ):
        status, _, body = await as_user(browser_session, stack, method, path, "bob")
        assert status in (200, 404), (path, status, body[:200])
    got = [(r.method, r.path, r.auth) for r in stack.service.requests[before:]]
    assert got == [
        ("GET", "/agents/7", "ok"),
        ("GET", "/components/list", "ok"),
        ("PUT", "/reports/r1", "ok"),
        ("DELETE", "/ai/direct/conversations/c9", "ok"),
        ("GET", "/api/health", "ok"),
    ]


async def test_the_old_api_chat_path_is_the_services_json_404(
    stack: Stack, browser_session: aiohttp.ClientSession
) -> None:
    status, _, body = await as_user(
        browser_session, stack, "POST", "/api/ai/chat/direct/stream", "bob",
        json={"message": "hi"},
    )  # fmt: skip
    assert status == 404
    assert json.loads(body) == {"error": "Not found"}


async def test_setup_as_bob_is_refused_and_never_forwarded(
    stack: Stack, browser_session: aiohttp.ClientSession
) -> None:
    """AppAPI 32.0.0 lets bob's refused ADMIN /setup fall through to the USER catch-all: the
    connector refuses it itself (403), and the service sees nothing."""
    before = forwarded(stack)
    for method in ("GET", "POST"):
        status, ctype, body = await as_user(
            browser_session, stack, method, "/setup", "bob", json={"mode": "cloud"}
        )
        assert status == 403, body[:300]
        assert ctype.startswith("application/json")
        assert json.loads(body)["code"] == "admin_required"
    status, _, body = await as_user(browser_session, stack, "GET", "/setup/status", "bob")
    assert status == 403
    assert forwarded(stack) == before
    # The admin gets the page, from the connector.
    status, ctype, body = await as_user(browser_session, stack, "GET", "/setup", "admin")
    assert status == 200
    assert ctype.startswith("text/html")
    assert forwarded(stack) == before


@pytest.mark.parametrize(
    ("method", "path", "user"),
    [
        ("GET", "/setup/diagnostics", "bob"),  # under /setup, no such route: the catch-all's
        ("GET", "/SETUP/status", "bob"),  # the PHP matcher is case-insensitive
        ("PUT", "/setup", "admin"),  # a verb the setup route does not list
        ("DELETE", "/heartbeat", "bob"),
        ("POST", "/hooks/studio-menus", "bob"),
        ("GET", "/nc", "bob"),
        ("POST", "/assets/x.js", "bob"),
        ("GET", "/trigger", "admin"),
    ],
)
async def test_connector_paths_are_never_forwarded(
    stack: Stack, browser_session: aiohttp.ClientSession, method: str, path: str, user: str
) -> None:
    before = forwarded(stack)
    status, ctype, body = await as_user(browser_session, stack, method, path, user)
    assert status in (403, 404, 405), (status, body[:300])
    assert ctype.startswith("application/json"), (status, body[:300])  # the connector answered
    assert forwarded(stack) == before


async def test_l10n_calls_are_answered_by_the_connector(
    stack: Stack, browser_session: aiohttp.ClientSession
) -> None:
    before = forwarded(stack)
    status, _, body = await as_user(
        browser_session, stack, "GET", "/api/languages/user/strings/de", "bob"
    )
    assert status == 200
    assert json.loads(body)["translations"] == {}
    assert forwarded(stack) == before


async def test_a_user_without_email_gets_the_connectors_sentence(
    stack: Stack, browser_session: aiohttp.ClientSession
) -> None:
    password = "Carol-without-mail-2026!"
    listing = await stack.nc.occ("user:list")
    if "carol:" not in listing:
        await stack.nc.occ(
            "user:add", "--password-from-env", "carol", extra_env={"OC_PASS": password}
        )
    before = forwarded(stack)
    async with browser_session.post(
        stack.nc.proxy + "/ai/chat/direct/stream",
        headers=stack.nc.basic("carol", password),
        json={"message": "hi"},
    ) as resp:
        assert resp.status == 403
        body = await resp.json(content_type=None)
    assert body["code"] == "nextcloud_email_missing"
    assert "e-mail address" in body["error"]
    assert forwarded(stack) == before


# ------------------------------------------------------------------ the service's callbacks


async def callback(
    session: aiohttp.ClientSession,
    stack: Stack,
    method: str,
    rest: str,
    *,
    uid: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """What the service sends to {callback}/nc<rest>: signed v2, tunnelled, uid header."""
    wire, signed = callback_request(TENANT_KEY, method, "/nc" + rest, uid=uid, body=body)
    url = URL(stack.nc.proxy + "/nc" + rest, encoded=True)
    all_headers = {**signed, "Content-Type": "application/octet-stream", **(headers or {})}
    async with session.request(wire, url, headers=all_headers, data=body) as resp:
        return resp.status, await resp.read()


async def test_the_services_signed_callbacks_work_through_nextcloud(
    stack: Stack, browser_session: aiohttp.ClientSession
) -> None:
    """Every verb but GET and POST tunnelled as POST + X-HTTP-Method-Override (PUT, DELETE
    and WebDAV's), signed v2 over the real verb, the uid always sent."""
    path = "/remote.php/dav/files/bob/beeflow-service-contract.txt"
    data = b"written by the Bee Flow service"
    status, _ = await callback(browser_session, stack, "PUT", path, uid="bob", body=data)
    assert status in (201, 204), status
    status, got = await callback(browser_session, stack, "GET", path, uid="bob")
    assert (status, got) == (200, data)
    status, got = await callback(
        browser_session, stack, "PROPFIND", path, uid="bob", headers={"Depth": "0"}
    )
    assert status == 207
    assert b"beeflow-service-contract.txt" in got
    status, _ = await callback(browser_session, stack, "DELETE", path, uid="bob")
    assert status == 204
    status, _ = await callback(browser_session, stack, "GET", path, uid="bob")
    assert status == 404
    status, got = await callback(
        browser_session, stack, "GET", "/ocs/v2.php/cloud/users/bob?format=json", uid="bob"
    )
    assert status == 200
    assert json.loads(got)["ocs"]["data"]["email"] == "bob@example.com"


async def test_the_studio_menus_push_is_unsupported(
    stack: Stack, browser_session: aiohttp.ClientSession
) -> None:
    """The service's push to {callback}/hooks/studio-menus (v2, uid ''): without a route of
    its own it is the USER catch-all's, which Nextcloud refuses anonymously: 404, which the
    service reads as "unsupported". Nothing is forwarded."""
    before = forwarded(stack)
    body = b'{"reason":"published","studioAppId":"a1","sentAt":1}'
    wire, signed = callback_request(TENANT_KEY, "POST", "/hooks/studio-menus", body=body)
    async with browser_session.request(
        wire, stack.nc.proxy + "/hooks/studio-menus", headers=signed, data=body
    ) as resp:
        assert resp.status == 404
    assert forwarded(stack) == before


async def test_the_services_ownership_check_accepts_this_nextcloud(stack: Stack) -> None:
    """The bootstrap's anti-spoof round trip (verifyNcInstance) against the real capabilities:
    this Nextcloud exposes no instance id, so the host-keyed one the connector sends must be
    what the service derives."""
    expected = tenant.host_instance_id(stack.nc.url)
    checked = await stack.control.verify_instance(str(stack.nc.url), expected)
    assert isinstance(checked, tuple), checked
    assert checked[1].startswith("32.0.1")
    mismatch = await stack.control.verify_instance(str(stack.nc.url), "oc-someone-else")
    assert isinstance(mismatch, str)
    assert "mismatch" in mismatch
