"""The connector's proxies through the real Nextcloud: bob's `/api` calls and an SSE reply through
AppAPI's PHP proxy (with the JWT and none of bob's credentials reaching the service), the PATCH
tunnel, and the service's signed `/nc` calls as bob, checked against what bob sees himself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import secrets
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.fakes.service_control import callback_request
from tests.integration.conftest import APP_ID, Lane
from tests.integration.exapp import INFO_XML, json_info, wait_until
from tests.integration.server import kill_group

pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(120)]

DAV_NS = "{DAV:}"
THREE_MIB = 3 * 1024 * 1024


def _jwt_claims(token: str, key: str) -> dict[str, Any]:
    """Verify an HS256 JWT the way the service does (bee-flow-service.md "(C)")."""
    head, payload, signature = token.split(".")
    mac = hmac.new(key.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(mac).rstrip(b"=").decode() == signature
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def _session() -> aiohttp.ClientSession:
    # Nextcloud's session cookies are kept (as a browser keeps them) and sent back: the PHP
    # proxy passes them on to the connector, which must not pass them to the service.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def _no_credentials(lane: Lane, headers: Any) -> None:
    """Nothing of bob's login, Nextcloud's session or AppAPI's secret in what the service got."""
    names = {k.lower() for k in headers}
    assert "cookie" not in names
    assert not names & {"authorization-app-api", "ex-app-id", "aa-version", "x-origin-ip"}
    text = "\n".join(f"{k}: {v}" for k, v in headers.items())
    bob_basic = lane.nc.bob["Authorization"].split(" ", 1)[1]
    for secret in (lane.nc.bob_password, bob_basic, lane.secret, lane.tenant_key):
        assert secret not in text


async def test_api_call_as_bob_carries_a_jwt_and_no_credentials(lane: Lane) -> None:
    """`GET /api/session-token`, one of the service's own `/api` routes: it answers only a
    signed-in user, so a 200 is the service accepting the JWT as bob's."""
    url = lane.base / "api/session-token"
    async with _session() as session:
        for _ in range(2):  # the second call carries Nextcloud's session cookies
            async with session.get(url.with_query(q="1"), headers=lane.nc.bob) as resp:
                body = await resp.json(content_type=None)
                assert resp.status == 200, body
        assert set(body) == {"token", "expiresIn"}
        assert len(session.cookie_jar) > 0
    seen = lane.service.service.find("/api/session-token", "GET")[-2:]
    assert len(seen) == 2
    for request in seen:
        assert request.raw_path == "/api/session-token?q=1"
        assert (request.auth, request.user_email) == ("ok", "bob@example.com")
        auth = request.headers["Authorization"]
        assert auth.startswith("Bearer ")
        claims = _jwt_claims(auth.removeprefix("Bearer "), lane.tenant_key)
        assert claims["sub"] == "bob"
        assert claims["nc_admin"] is False
        _no_credentials(lane, request.headers)


async def test_sse_reply_as_bob_arrives_whole_through_the_php_proxy(lane: Lane) -> None:
    url = lane.base / "ai/chat/direct/stream"
    async with (
        _session() as session,
        session.post(url, json={"message": "hi"}, headers=lane.nc.bob) as resp,
    ):
        body = await resp.text()
        assert resp.status == 200, body
        assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = [
        line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event:")
    ]
    assert events == ["conversation_created", "content", "content", "content", "done"]
    assert '"text":"Hello"' in body
    sent = lane.service.service.find("/ai/chat/direct/stream", "POST")[-1]
    assert json.loads(sent.body) == {"message": "hi"}
    _no_credentials(lane, sent.headers)


async def test_patch_goes_through_the_method_override_tunnel(lane: Lane) -> None:
    """Nextcloud's proxy has no PATCH route (405); the UI sends POST + X-HTTP-Method-Override and
    the service receives a PATCH: bob renames the conversation his chat created (the service's
    PATCH /ai/direct/conversations/<id>, which has no POST)."""
    bob = lane.nc.bob
    async with _session() as session:
        async with session.post(
            lane.base / "ai/chat/direct/stream", json={"message": "name me"}, headers=bob
        ) as resp:
            stream = await resp.text()
            assert resp.status == 200, stream
        created = next(line for line in stream.splitlines() if line.startswith("data: "))
        cid = json.loads(created.removeprefix("data: "))["conversationId"]
        url = lane.base / "ai/direct/conversations" / cid
        async with session.patch(url, data=b"direct", headers=bob) as resp:
            assert resp.status == 405
        headers = {**bob, "X-HTTP-Method-Override": "PATCH"}
        payload = b'{"title":"renamed"}'
        async with session.post(
            url, data=payload, headers={**headers, "Content-Type": "application/json"}
        ) as resp:
            answer = await resp.json(content_type=None)
            assert resp.status == 200, answer
        assert answer == {"success": True}
        async with session.get(url, headers=bob) as resp:
            conversation = await resp.json(content_type=None)
            assert resp.status == 200, conversation
        assert conversation["title"] == "renamed"
    got = lane.service.service.find(f"/ai/direct/conversations/{cid}", "PATCH")
    assert len(got) == 1
    assert got[-1].body == payload
    assert got[-1].auth == "ok"
    assert "X-HTTP-Method-Override" not in got[-1].headers
    assert not lane.service.service.find(f"/ai/direct/conversations/{cid}", "POST")


# ------------------------------------------------------------------ /nc, as the service


async def _nc(
    lane: Lane,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    uid: str = "bob",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    key: str | None = None,
) -> tuple[int, bytes, str]:
    """A signed `/nc` call through Nextcloud's proxy, as the service makes it."""
    wire, signed = callback_request(key or lane.tenant_key, method, path, uid=uid, body=body)
    url = URL(str(lane.base) + path, encoded=True)
    data = io.BytesIO(body) if body else None  # a large body streams (no loop-blocking copy)
    async with session.request(wire, url, data=data, headers={**signed, **(headers or {})}) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


def _hrefs(multistatus: bytes) -> set[str]:
    root = ET.fromstring(multistatus)  # noqa: S314 - Nextcloud's answer in a test
    return {el.text or "" for el in root.iter(f"{DAV_NS}href")}


async def test_nc_propfind_put_get_and_ocs_as_bob(lane: Lane) -> None:
    name = f"it-{secrets.token_hex(4)}.bin"
    payload = secrets.token_bytes(THREE_MIB)
    dav = lane.nc.url / "remote.php/dav/files/bob"
    async with aiohttp.ClientSession() as session:
        status, body, _ = await _nc(
            lane, session, "PUT", f"/nc/remote.php/dav/files/bob/{name}", body=payload
        )
        assert status in (201, 204), body[:500]
        # bob sees the file, byte for byte, over WebDAV himself
        async with session.get(dav / name, headers=lane.nc.bob) as resp:
            assert resp.status == 200
            assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(payload).digest()

        status, body, _ = await _nc(lane, session, "GET", f"/nc/remote.php/dav/files/bob/{name}")
        assert status == 200
        assert len(body) == THREE_MIB
        assert body == payload

        status, listing, _ = await _nc(
            lane, session, "PROPFIND", "/nc/remote.php/dav/files/bob/", headers={"Depth": "1"}
        )
        assert status == 207, listing[:500]
        async with session.request(
            "PROPFIND", URL(str(dav) + "/"), headers={**lane.nc.bob, "Depth": "1"}
        ) as resp:
            assert resp.status == 207
            own = await resp.read()
        assert _hrefs(listing) == _hrefs(own)
        assert f"/remote.php/dav/files/bob/{name}" in _hrefs(listing)

        status, body, _ = await _nc(
            lane, session, "GET", "/nc/ocs/v2.php/cloud/users/bob?format=json"
        )
        assert status == 200, body[:500]
        via_nc = json.loads(body)["ocs"]["data"]
        async with session.get(
            lane.nc.url / "ocs/v2.php/cloud/users/bob",
            params={"format": "json"},
            headers={**lane.nc.bob, "OCS-APIRequest": "true"},
        ) as resp:
            assert resp.status == 200
            own_info = (await resp.json())["ocs"]["data"]
        assert via_nc["id"] == own_info["id"] == "bob"
        assert via_nc["displayname"] == own_info["displayname"]
        assert via_nc["groups"] == own_info["groups"]

        async with session.delete(dav / name, headers=lane.nc.bob) as resp:
            assert resp.status == 204


async def test_a_forged_nc_signature_is_refused_and_reaches_nothing(lane: Lane) -> None:
    """A call signed with another key gets 401 and nothing of it reaches Nextcloud: the web
    server's access log has the proxied request and no forwarded one."""
    name = f"forged-{secrets.token_hex(4)}.txt"
    target = f"/remote.php/dav/files/bob/{name}"
    since = lane.nc.access_count()
    async with aiohttp.ClientSession() as session:
        status, body, content_type = await _nc(
            lane, session, "PUT", "/nc" + target, body=b"planted", key="not-the-tenant-key"
        )
        assert status == 401, body
        assert content_type.startswith("application/json")
        assert json.loads(body)["code"] == "signature_mismatch"
        # A well-formed but expired signature is refused the same way.
        _, old = callback_request(
            lane.tenant_key, "GET", "/nc" + target, uid="bob", ts=1_000_000_000
        )
        async with session.get(
            URL(str(lane.base) + "/nc" + target, encoded=True), headers=old
        ) as resp:
            assert resp.status == 401
            assert (await resp.json(content_type=None))["code"] == "signature_expired"

    def proxied() -> list[str]:
        return [line for line in lane.nc.access_lines(since) if f"nc{target}" in line]

    # nginx writes a request's line once it has finished it, a moment after we got the answer;
    # a forwarded call would have finished (and been logged) before the proxied one.
    wait_until(lambda: len(proxied()) == 2, 10, "both proxied requests in the access log")
    forwarded = [line for line in lane.nc.access_lines(since) if f" {target}" in line]
    assert forwarded == [], forwarded


# ------------------------------------------------------------------ what the manifest cannot do


def test_an_info_xml_registration_drops_headers_to_exclude(lane: Lane) -> None:
    """AppAPI 32.0.0 stores `headers_to_exclude` as the --json-info registration gives it, and
    as [] for every route of an --info-xml registration (the app store's path): the manifest
    cannot keep the user's credentials away from the connector."""
    stored = {r["url"]: r["headers_to_exclude"] for r in lane.nc.ex_app_routes(APP_ID)}
    manifest = {r["url"]: r["headers_to_exclude"] for r in json_info(lane.secret, 0)["routes"]}
    assert stored == manifest
    # The last route, USER, carries every request a user makes to the service.
    assert stored[r"^\/?.*"] == ["authorization"]
    probe = "bee_flow_probe"
    xml = INFO_XML.read_text().replace(f"<id>{APP_ID}</id>", f"<id>{probe}</id>")
    path = lane.root / "probe-info.xml"
    path.write_text(xml)
    # Nothing answers for the probe: registration stores the routes, then waits for a heartbeat.
    register = lane.nc.occ_background(
        "app_api:app:register", probe, "manual_install", "--info-xml", str(path)
    )
    try:
        # AppAPI stores the routes one row at a time: wait for all of them, not the first.
        wait_until(
            lambda: len(lane.nc.ex_app_routes(probe)) >= len(stored), 60, "the probe's routes"
        )
        routes = lane.nc.ex_app_routes(probe)
    finally:
        kill_group(register)
        lane.nc.occ("app_api:app:unregister", probe, "--force", check=False)
    assert [r["url"] for r in routes] == list(stored)
    assert all(r["headers_to_exclude"] == [] for r in routes), routes


async def test_with_nothing_excluded_the_connector_still_drops_bobs_credentials(
    lane: Lane,
) -> None:
    """Registered as an app-store install stores it (no route excludes anything), bob's Basic
    credentials and Nextcloud's cookies reach the connector; none of it reaches the service."""
    info = json_info(lane.secret, lane.port)
    for route in info["routes"]:
        route["headers_to_exclude"] = []
    assert lane.connector is not None
    try:
        lane.nc.occ("app_api:app:unregister", APP_ID)
        done = lane.register(info=info)
        assert done.returncode == 0, done.stdout + done.stderr
        assert all(r["headers_to_exclude"] == [] for r in lane.nc.ex_app_routes(APP_ID))
        url = lane.base / "api/session-token"
        async with _session() as session:
            for _ in range(2):
                async with session.get(url, headers=lane.nc.bob) as resp:
                    assert resp.status == 200, await resp.text()
        seen = lane.service.service.find("/api/session-token", "GET")[-2:]
        assert len(seen) == 2
        for request in seen:
            assert request.headers["Authorization"].startswith("Bearer ")
            assert (request.auth, request.user_email) == ("ok", "bob@example.com")
            _no_credentials(lane, request.headers)
    finally:
        lane.nc.occ("app_api:app:unregister", APP_ID, check=False)
        restored = lane.register()
        assert restored.returncode == 0, restored.stdout + restored.stderr
