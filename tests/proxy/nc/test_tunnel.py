"""Every verb of the manifest through /nc: directly (HaRP) and as POST + X-HTTP-Method-Override
(AppAPI's PHP proxy forwards only GET/POST/PUT/DELETE); the override's rules; other verbs."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

import aiohttp
import pytest

from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import RunningConnector
from tests.proxy.nc.caller import NcCaller, outcome

DAV = "/nc/remote.php/dav/files/alice"
PROPFIND_BODY = (
    b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns">'
    b"<d:prop><d:getetag/><d:getcontentlength/><oc:fileid/></d:prop></d:propfind>"
)
REPORT_BODY = (
    b'<?xml version="1.0"?><oc:filter-files xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns">'
    b"<oc:filter-rules><oc:favorite>0</oc:favorite></oc:filter-rules></oc:filter-files>"
)
NS = {"d": "DAV:"}


def _hrefs(xml: bytes) -> dict[str, str | None]:
    root = ET.fromstring(xml)  # noqa: S314 - our own fake's answer
    out: dict[str, str | None] = {}
    for response in root.findall("d:response", NS):
        href = response.findtext("d:href", namespaces=NS) or ""
        out[href] = response.findtext("d:propstat/d:prop/d:getetag", namespaces=NS)
    return out


@pytest.mark.parametrize("tunnel", [True, False], ids=["php-tunnel", "direct"])
async def test_every_webdav_verb(
    caller: NcCaller, dav: FakeDav, fake_nc: FakeNextcloud, tunnel: bool
) -> None:
    """MKCOL, PUT, PROPFIND, REPORT, COPY, MOVE, GET, HEAD, DELETE on one folder, then PATCH and
    POST on an app endpoint; Nextcloud sees each real verb exactly once."""
    dest_base = str(fake_nc.url) + "/remote.php/dav/files/alice"
    start = len(dav.seen)

    assert (await outcome(await caller.request("MKCOL", f"{DAV}/docs", tunnel=tunnel)))[0] == 201
    assert dav.file("alice", "docs").is_dir()

    payload = b"first file\n" * 100
    resp = await caller.request("PUT", f"{DAV}/docs/a.txt", body=payload, tunnel=tunnel)
    async with resp:
        assert resp.status == 201
        put_etag = resp.headers["ETag"]
    assert dav.file("alice", "docs/a.txt").read_bytes() == payload

    resp = await caller.request(
        "PROPFIND",
        f"{DAV}/docs/",
        body=PROPFIND_BODY,
        tunnel=tunnel,
        headers={"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
    )
    async with resp:
        assert resp.status == 207
        listing = _hrefs(await resp.read())
    assert listing["/remote.php/dav/files/alice/docs/a.txt"] == put_etag
    assert dav.last("PROPFIND").headers["Depth"] == "1"

    resp = await caller.request(
        "REPORT",
        f"{DAV}/docs/",
        body=REPORT_BODY,
        tunnel=tunnel,
        headers={"Content-Type": "application/xml"},
    )
    async with resp:
        assert resp.status == 207
        assert "/remote.php/dav/files/alice/docs/a.txt" in _hrefs(await resp.read())
    assert dav.last("REPORT").sha256 == hashlib.sha256(REPORT_BODY).hexdigest()

    copy = await caller.request(
        "COPY",
        f"{DAV}/docs/a.txt",
        tunnel=tunnel,
        headers={"Destination": f"{dest_base}/docs/b.txt"},
    )
    assert (await outcome(copy))[0] == 201
    move = await caller.request(
        "MOVE",
        f"{DAV}/docs/b.txt",
        tunnel=tunnel,
        headers={"Destination": f"{dest_base}/docs/c.txt", "Overwrite": "F"},
    )
    assert (await outcome(move))[0] == 201
    assert dav.file("alice", "docs/c.txt").read_bytes() == payload
    assert not dav.file("alice", "docs/b.txt").exists()

    resp = await caller.request("GET", f"{DAV}/docs/c.txt", tunnel=tunnel)
    async with resp:
        assert resp.status == 200
        assert await resp.read() == payload

    if not tunnel:  # HEAD has no PHP route and no tunnel; it works directly (HaRP)
        resp = await caller.request("HEAD", f"{DAV}/docs/c.txt")
        async with resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(payload))
            assert await resp.read() == b""

    assert (await outcome(await caller.request("DELETE", f"{DAV}/docs/a.txt", tunnel=tunnel)))[
        0
    ] == 204
    assert not dav.file("alice", "docs/a.txt").exists()

    resp = await caller.request(
        "PATCH", "/nc/index.php/apps/echo/item/7", body=b'{"done":true}', tunnel=tunnel
    )
    async with resp:
        assert resp.status == 200
        echo = await resp.json()
    assert echo["method"] == "PATCH"
    assert echo["bodySha256"] == hashlib.sha256(b'{"done":true}').hexdigest()

    resp = await caller.request("POST", "/nc/index.php/apps/echo/item", body=b"{}", tunnel=False)
    async with resp:
        assert (await resp.json())["method"] == "POST"

    methods = [r.method for r in dav.seen[start:]]
    expected = ["MKCOL", "PUT", "PROPFIND", "REPORT", "COPY", "MOVE", "GET"]
    expected += [] if tunnel else ["HEAD"]
    expected += ["DELETE", "PATCH", "POST"]
    assert methods == expected
    assert all("X-HTTP-Method-Override" not in r.headers for r in dav.seen[start:])


async def test_override_is_case_insensitive_and_signed(caller: NcCaller, dav: FakeDav) -> None:
    dav.put_file("alice", "x.txt", b"x")
    resp = await caller.request(
        "PROPFIND",
        f"{DAV}/x.txt",
        tunnel=True,
        headers={"X-HTTP-Method-Override": "propfind", "Depth": "0"},
    )
    assert (await outcome(resp))[0] == 207
    # Signed as the wire verb instead of the override: refused, nothing reaches Nextcloud.
    before = len(dav.seen)
    resp = await caller.request(
        "PROPFIND", f"{DAV}/x.txt", tunnel=True, sign_method="POST", headers={"Depth": "0"}
    )
    assert await outcome(resp) == (401, "signature_mismatch")
    assert len(dav.seen) == before


@pytest.mark.parametrize("verb", ["TRACE", "CONNECT", "BIND", "X"])
async def test_override_outside_the_list_is_405(caller: NcCaller, dav: FakeDav, verb: str) -> None:
    resp = await caller.request(
        "POST", f"{DAV}/", headers={"X-HTTP-Method-Override": verb}, sign_method=verb
    )
    async with resp:
        assert resp.status == 405
        assert (await resp.json())["code"] == "method_override_not_allowed"
        assert "PROPFIND" in resp.headers["Allow"]
    assert dav.seen == []


async def test_override_needs_post(caller: NcCaller, dav: FakeDav) -> None:
    for wire in ("GET", "PUT", "DELETE"):
        resp = await caller.request(
            wire, f"{DAV}/", headers={"X-HTTP-Method-Override": "PROPFIND"}, sign_method="PROPFIND"
        )
        assert await outcome(resp) == (405, "method_override_requires_post")
    assert dav.seen == []


@pytest.mark.parametrize("verb", ["TRACE", "BIND", "ACL"])
async def test_unlisted_wire_verbs_get_405_json(
    session: aiohttp.ClientSession, nc_conn: RunningConnector, dav: FakeDav, verb: str
) -> None:
    async with session.request(verb, str(nc_conn.url) + f"{DAV}/") as resp:
        assert resp.status == 405
        assert resp.content_type == "application/json"
        assert (await resp.json())["code"] == "method_not_allowed"
        assert set(resp.headers["Allow"].replace(" ", "").split(",")) == {
            "GET",
            "POST",
            "PUT",
            "DELETE",
            "PATCH",
            "PROPFIND",
            "REPORT",
            "MKCOL",
            "MOVE",
            "COPY",
            "PROPPATCH",
            "SEARCH",
            "LOCK",
            "UNLOCK",
            "OPTIONS",
            "HEAD",
            "MKCALENDAR",
        }
    assert dav.seen == []


async def test_nextcloud_answers_pass_through(caller: NcCaller, dav: FakeDav) -> None:
    """Errors of Nextcloud (Sabre's XML, OCS envelopes) reach the caller unchanged."""
    resp = await caller.request("MKCOL", f"{DAV}/missing/child", tunnel=True)
    async with resp:
        assert resp.status == 409
        assert b"Sabre\\DAV\\Exception\\Conflict" in await resp.read()
    resp = await caller.request("GET", "/nc/remote.php/dav/files/bob/secret.txt")
    async with resp:
        assert resp.status == 404  # alice may not read bob's files: Nextcloud decides
    resp = await caller.request("GET", "/nc/ocs/v2.php/apps/echo/x", uid="nobody")
    async with resp:
        assert resp.status == 401
        assert (await resp.json())["ocs"]["meta"]["statuscode"] == 997
