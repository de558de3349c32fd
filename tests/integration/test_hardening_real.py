"""Issue 25's fixes through the real Nextcloud 32.0.1 and its PHP proxy (AppAPI 32.0.0): v3
signatures (PUT, GET, PROPFIND with its signed Depth, MOVE with its signed Destination and
Overwrite, an OCS call whose query PHP rewrites), a swapped Destination, a line break in the
query, a replayed DELETE, browser writes from another origin, and the service's answers as the
browser gets them through Nextcloud."""

from __future__ import annotations

import io
import json
import secrets
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from beeflow.ops.sign import V3, sign
from tests.fakes.service_control import callback_request
from tests.integration.conftest import Lane

pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(120)]

DAV = "/remote.php/dav/files/bob"
DAV_NS = "{DAV:}"


async def _call(
    lane: Lane,
    session: aiohttp.ClientSession,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes = b"",
) -> tuple[int, bytes, CIMultiDictProxy[str]]:
    """`target` (/nc/...) through Nextcloud's PHP proxy; verbs it has no route for go as POST
    with X-HTTP-Method-Override, as the service sends them."""
    wire = method
    if method not in ("GET", "POST", "PUT", "DELETE"):
        headers = {**headers, "X-HTTP-Method-Override": method}
        wire = "POST"
    url = URL(str(lane.base) + target, encoded=True)
    data = io.BytesIO(body) if body else None
    async with session.request(wire, url, headers=headers, data=data) as resp:
        return resp.status, await resp.read(), resp.headers


def _v3(lane: Lane, method: str, target: str, body: bytes = b"", **signed: str) -> dict[str, str]:
    headers, _ = sign(method, target, uid="bob", body=body, key=lane.tenant_key, v3=V3(**signed))
    return headers


def _code(body: bytes) -> str:
    return str(json.loads(body).get("code"))


async def _bob_has(lane: Lane, session: aiohttp.ClientSession, name: str) -> int:
    async with session.get(lane.nc.url / DAV.lstrip("/") / name, headers=lane.nc.bob) as resp:
        await resp.read()
        return resp.status


async def test_v3_put_get_propfind_move_and_a_rewritten_query(lane: Lane) -> None:
    name = f"v3-{secrets.token_hex(4)}.txt"
    moved = f"v3-moved-{secrets.token_hex(4)}.txt"
    body = secrets.token_bytes(5000)
    async with aiohttp.ClientSession() as session:
        target = f"/nc{DAV}/{name}"
        status, answer, _ = await _call(
            lane, session, "PUT", target, _v3(lane, "PUT", target, body), body
        )
        assert status in (201, 204), answer[:300]
        status, answer, _ = await _call(lane, session, "GET", target, _v3(lane, "GET", target))
        assert (status, answer) == (200, body)

        folder = f"/nc{DAV}/"
        status, listing, _ = await _call(
            lane, session, "PROPFIND", folder, {**_v3(lane, "PROPFIND", folder, depth="1")}
        )
        assert status == 207, listing[:300]
        hrefs = {el.text for el in ET.fromstring(listing).iter(f"{DAV_NS}href")}  # noqa: S314
        assert f"{DAV}/{name}" in hrefs
        # Depth is signed: the same signature with another Depth is refused.
        signed = _v3(lane, "PROPFIND", folder, depth="0")
        status, answer, _ = await _call(
            lane, session, "PROPFIND", folder, {**signed, "Depth": "infinity"}
        )
        assert (status, _code(answer)) == (401, "signature_mismatch")

        destination = str(lane.nc.url) + f"{DAV}/{moved}"
        signed = _v3(lane, "MOVE", target, destination=destination, overwrite="F")
        # A captured MOVE sent somewhere else is refused, and nothing moved.
        elsewhere = {**signed, "Destination": str(lane.nc.url) + f"{DAV}/stolen-{name}"}
        status, answer, _ = await _call(lane, session, "MOVE", target, elsewhere)
        assert (status, _code(answer)) == (401, "signature_mismatch")
        assert await _bob_has(lane, session, name) == 200
        status, answer, _ = await _call(lane, session, "MOVE", target, signed)
        assert status == 201, answer[:300]
        assert await _bob_has(lane, session, name) == 404
        assert await _bob_has(lane, session, moved) == 200

        # PHP rebuilds the query from $_GET: `include_shares` (a bare key) arrives as
        # `include_shares=`; v3's canonical query reads both the same.
        ocs = "/nc/ocs/v2.php/cloud/users/bob?format=json&include_shares"
        status, answer, _ = await _call(lane, session, "GET", ocs, _v3(lane, "GET", ocs))
        assert status == 200, answer[:300]
        assert json.loads(answer)["ocs"]["data"]["id"] == "bob"

        delete = f"/nc{DAV}/{moved}"
        status, _, _ = await _call(lane, session, "DELETE", delete, _v3(lane, "DELETE", delete))
        assert status == 204


async def test_a_line_break_in_the_query_is_refused(lane: Lane) -> None:
    """PHP decodes `%0A` into $_GET and encodes it again: it reaches the connector, which
    refuses it before any signature work (a v2 signature could verify as v1 for it)."""
    target = "/nc/ocs/v2.php/cloud/user?format=json%0Aalice"
    _, headers = callback_request(lane.tenant_key, "GET", target, uid="")
    async with aiohttp.ClientSession() as session:
        status, answer, _ = await _call(lane, session, "GET", target, headers)
    assert (status, _code(answer)) == (400, "query_invalid")


@pytest.mark.parametrize("version", [2, 3])
async def test_a_replayed_delete_is_refused(lane: Lane, version: int) -> None:
    name = f"replay-{secrets.token_hex(4)}.txt"
    target = f"/nc{DAV}/{name}"
    async with aiohttp.ClientSession() as session:
        status, _, _ = await _call(
            lane, session, "PUT", target, _v3(lane, "PUT", target, b"one"), b"one"
        )
        assert status in (201, 204)
        wire = "DELETE"
        if version == 3:
            headers = _v3(lane, "DELETE", target)
        else:  # as the service sends it: POST + X-HTTP-Method-Override: DELETE
            wire, headers = callback_request(lane.tenant_key, "DELETE", target, uid="bob")
        status, _, _ = await _call(lane, session, wire, target, headers)
        assert status == 204
        status, _, _ = await _call(
            lane, session, "PUT", target, _v3(lane, "PUT", target, b"two"), b"two"
        )
        assert status in (201, 204)
        status, answer, _ = await _call(lane, session, wire, target, headers)
        assert (status, _code(answer)) == (401, "signature_replayed")
        assert await _bob_has(lane, session, name) == 200


async def test_browser_writes_from_another_origin_are_refused(lane: Lane) -> None:
    """Through the PHP proxy, as bob, with his own Basic credentials (as a logged-in browser's
    cookies would): a foreign Origin, and a sibling site's, never reach the service; Nextcloud's
    own origin does (the PHP proxy passes Origin and Host on)."""
    url = lane.base / "ai/chat/direct/stream"
    before = len(lane.service.service.find("/ai/chat/direct/stream", "POST"))
    async with aiohttp.ClientSession() as session:
        for origin, site in (
            ("https://evil.example", "cross-site"),
            ("http://files.127.0.0.1.nip.io", "same-site"),
            ("https://evil.example", None),
        ):
            headers = {**lane.nc.bob, "Origin": origin, "Content-Type": "application/json"}
            if site:
                headers["Sec-Fetch-Site"] = site
            async with session.post(url, headers=headers, data=b'{"message":"x"}') as resp:
                body = await resp.json(content_type=None)
                assert resp.status == 403, body
                assert body["code"] in ("origin_not_allowed", "cross_site_request_blocked")
        assert len(lane.service.service.find("/ai/chat/direct/stream", "POST")) == before
        own = str(lane.nc.url.origin())
        headers = {
            **lane.nc.bob,
            "Origin": own,
            "Sec-Fetch-Site": "same-origin",
            "Content-Type": "application/json",
        }
        async with session.post(url, headers=headers, data=b'{"message":"x"}') as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()
    assert len(lane.service.service.find("/ai/chat/direct/stream", "POST")) == before + 1


async def test_the_services_page_reaches_the_browser_confined(lane: Lane) -> None:
    """The service answers an unknown non-API path with its web UI (index.html); through
    Nextcloud the browser gets it with the connector's sandbox policy and no cookie of the
    service's (Nextcloud's own session cookies are Nextcloud's business)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(lane.base / "reports/some-report", headers=lane.nc.bob) as resp,
    ):
        await resp.read()
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        policies = resp.headers.getall("Content-Security-Policy", [])
        assert any("sandbox" in p and "default-src 'none'" in p for p in policies), policies
