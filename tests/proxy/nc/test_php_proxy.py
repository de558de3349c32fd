"""/nc calls that arrive through AppAPI's legacy PHP proxy (docs/nc-proxy.md, "What survives
AppAPI's PHP proxy"): decoded path forms verify, PHP's query rewriting is told apart, the
proxy's extra headers neither break verification nor reach Nextcloud, and nothing of the
browser's credentials travels on."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_dav import FakeDav
from tests.fakes.php_proxy import PROXY_PREFIX, PhpProxy, php_requery
from tests.helpers import SECRET, TENANT_KEY, RunningConnector
from tests.ports import refused_url
from tests.proxy.nc.caller import NcCaller, outcome

DAV = "/nc/remote.php/dav/files/alice"
BASIC = "Basic " + base64.b64encode(b"admin:admins-password").decode()


@pytest.fixture
async def php(nc_conn: RunningConnector) -> AsyncIterator[PhpProxy]:
    proxy = PhpProxy(nc_conn.url, secret=SECRET)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
def via_php(session: aiohttp.ClientSession, php: PhpProxy) -> NcCaller:
    return NcCaller(session, php.url, prefix=PROXY_PREFIX + "bee_flow")


async def test_decoded_path_form_verifies(via_php: NcCaller, php: PhpProxy, dav: FakeDav) -> None:
    """`%40` arrives as `@`, `%20`/`%C3%A9` stay encoded: the decoded form is the portable one."""
    target = f"{DAV}/a%40b%20caf%C3%A9.txt"
    resp = await via_php.request("PUT", target, body=b"data")  # signs the decoded form
    assert (await outcome(resp))[0] == 201
    assert php.forwarded[-1].target == "/nc/remote.php/dav/files/alice/a@b%20caf%C3%A9.txt"
    assert dav.file("alice", "a@b caf\u00e9.txt").read_bytes() == b"data"

    # The raw form of what the service sent does not survive the proxy.
    resp = await via_php.request("PUT", target, body=b"data", sign_target=target)
    assert await outcome(resp) == (401, "signature_mismatch")


async def test_plain_paths_and_trailing_slash_through_the_tunnel(
    via_php: NcCaller, php: PhpProxy, dav: FakeDav
) -> None:
    dav.put_file("alice", "docs/a.txt", b"a")
    resp = await via_php.request("PROPFIND", f"{DAV}/docs/", tunnel=True, headers={"Depth": "1"})
    async with resp:
        assert resp.status == 207
        root = ET.fromstring(await resp.read())  # noqa: S314 - our fake's answer
    hrefs = [e.text for e in root.iter("{DAV:}href")]
    assert "/remote.php/dav/files/alice/docs/a.txt" in hrefs
    assert php.forwarded[-1].method == "POST"
    assert php.forwarded[-1].target == "/nc/remote.php/dav/files/alice/docs/"
    assert dav.last().method == "PROPFIND"


@pytest.mark.parametrize(
    ("query", "survives"),
    [
        ("format=json&limit=5", True),
        ("e%40=%40", True),
        ("search=caf%C3%A9", True),
        ("a=1&a=2", False),
        ("x.y=1", False),
        ("b%20c=1", False),
        ("arr[]=x&arr[]=y", False),
        ("empty", False),
        ("q=a%20b", False),
    ],
)
async def test_queries_php_rewrites(
    via_php: NcCaller, php: PhpProxy, dav: FakeDav, query: str, survives: bool
) -> None:
    """Signed as sent, a query PHP rewrites fails with `signature_mismatch_query` (the 401 passes
    through Nextcloud unchanged); signed in PHP's form, the same call verifies."""
    target = f"/nc/ocs/v2.php/apps/echo/q?{query}"
    resp = await via_php.request("GET", target)
    status, code = await outcome(resp)
    if survives:
        assert status == 200
        return
    assert (status, code) == (401, "signature_mismatch_query")
    assert dav.seen == []
    resp = await via_php.request("GET", target)
    async with resp:
        assert "via_php_proxy" in (await resp.json())["queryHazards"]
    php_form = f"/nc/ocs/v2.php/apps/echo/q?{php_requery(query)}"
    assert php.forwarded[-1].target == php_form
    resp = await via_php.request("GET", target, sign_target=php_form)
    status, _ = await outcome(resp)
    assert status == 200


async def test_mangled_headers_verify_and_nothing_leaks(
    via_php: NcCaller,
    php: PhpProxy,
    dav: FakeDav,
    fake_nc: FakeNextcloud,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The browser's Basic credentials and cookies, PHP's Host/x-origin-ip/gzip/empty
    Content-Type and AppAPI headers (naming another user!) reach the connector; the call
    verifies, impersonates the signed uid only, and none of those reach Nextcloud."""
    caplog.set_level(logging.DEBUG)
    resp = await via_php.request(
        "GET",
        "/nc/ocs/v2.php/apps/echo/m?format=json",
        uid="alice",
        headers={"Authorization": BASIC, "Cookie": "oc_sessionPassphrase=pp; nc_session_id=sid"},
    )
    async with resp:
        assert resp.status == 200
        assert (await resp.json())["ocs"]["data"]["user"] == "alice"
    arrived = php.forwarded[-1].headers
    assert arrived["Authorization"] == BASIC  # what the connector had to cope with
    assert "oc_sessionPassphrase=pp" in arrived["Cookie"]
    assert arrived["Content-Type"] == ""
    assert arrived["Accept-Encoding"] == "gzip"
    assert arrived["x-origin-ip"] == "127.0.0.1"
    assert arrived["Host"] == f"{php.url.host}:{php.url.port}"
    assert base64.b64decode(arrived["AUTHORIZATION-APP-API"]).startswith(b"admin:")

    seen = dav.last().headers
    lowered = {k.lower() for k in seen}
    for name in ("authorization", "cookie", "x-origin-ip", "aa-request-id", "expect"):
        assert name not in lowered, name
    assert "Content-Type" not in seen
    assert seen["Host"] == f"{fake_nc.url.host}:{fake_nc.url.port}"
    assert seen["AUTHORIZATION-APP-API"] == base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert seen["Accept-Encoding"] == "gzip"
    for secret in ("admins-password", BASIC, "oc_sessionPassphrase=pp", TENANT_KEY, SECRET):
        assert secret not in caplog.text


async def test_large_put_with_expect_100_continue(
    via_php: NcCaller, php: PhpProxy, dav: FakeDav
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    resp = await via_php.request("PUT", f"{DAV}/large.bin", body=data)
    assert (await outcome(resp))[0] == 201
    assert php.forwarded[-1].headers["Expect"] == "100-Continue"
    put = dav.last("PUT")
    assert put.sha256 == hashlib.sha256(data).hexdigest()
    assert "Expect" not in put.headers
    assert put.headers["Content-Length"] == str(len(data))


async def test_gzip_from_nextcloud_passes_through_and_php_decodes_it(
    via_php: NcCaller, dav: FakeDav
) -> None:
    dav.put_file("alice", "z.txt", b"z")
    resp = await via_php.request(
        "PROPFIND", f"{DAV}/", tunnel=True, headers={"Depth": "1", "Accept-Encoding": "br"}
    )
    async with resp:
        assert resp.status == 207
        assert "Content-Encoding" not in resp.headers
        assert b"/remote.php/dav/files/alice/z.txt" in await resp.read()
    assert dav.last().headers["Accept-Encoding"] == "gzip"


async def test_mismatch_without_query_keeps_the_plain_code(via_php: NcCaller) -> None:
    resp = await via_php.request("GET", "/nc/ocs/v2.php/apps/echo/q", sign_uid="bob")
    assert await outcome(resp) == (401, "signature_mismatch")


async def test_patch_needs_the_tunnel(via_php: NcCaller, dav: FakeDav) -> None:
    resp = await via_php.request("PATCH", "/nc/index.php/apps/echo/p", body=b"{}")
    async with resp:
        assert resp.status == 405  # the PHP proxy has no PATCH route
    assert dav.seen == []
    resp = await via_php.request("PATCH", "/nc/index.php/apps/echo/p", body=b"{}", tunnel=True)
    async with resp:
        assert resp.status == 200
        assert (await resp.json())["method"] == "PATCH"


async def test_connector_down_is_an_empty_500(session: aiohttp.ClientSession, dav: FakeDav) -> None:
    proxy = PhpProxy(refused_url(), secret=SECRET)
    await proxy.start()
    try:
        caller = NcCaller(session, proxy.url, prefix=PROXY_PREFIX + "bee_flow")
        resp = await caller.request("GET", "/nc/ocs/v2.php/apps/echo/x")
        async with resp:
            assert resp.status == 500
            assert await resp.read() == b""
    finally:
        await proxy.stop()
