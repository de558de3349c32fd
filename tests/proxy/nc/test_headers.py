"""What reaches Nextcloud through /nc, header by header (docs/nc-proxy.md, "What Nextcloud
receives"): AppAPI impersonation in, the caller's credentials, browser context, platform and
hop-by-hop headers out."""

from __future__ import annotations

import base64
import logging

import pytest

from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import SECRET, TENANT_KEY
from tests.proxy.nc.caller import NcCaller, outcome

BASIC = "Basic " + base64.b64encode(b"alice:her-nextcloud-password").decode()
COOKIE = "oc_sessionPassphrase=s3cr3t; nc_session_id=abc123; nc_token=tok"
PHP_APPAPI = base64.b64encode(f":{SECRET}".encode()).decode()

# What AppAPI's PHP proxy, HaRP, a browser and a careless client put on a request.
HOSTILE = {
    "Authorization": BASIC,
    "Cookie": COOKIE,
    "Origin": "https://cloud.example.com",
    "Referer": "https://cloud.example.com/apps/files/",
    "X-Beeflow-Debug": "1",
    "X-Beeflow-Anything": "x",
    "AUTHORIZATION-APP-API": PHP_APPAPI,
    "EX-APP-ID": "bee_flow",
    "EX-APP-VERSION": "9.9.9",
    "EX-APP-USER-ID": "admin",
    "AA-VERSION": "32",
    "AA-REQUEST-ID": "puykcxkab7f47fz6XDHE",
    "harp-shared-key": "harp-secret-value",
    "ex-app-host": "127.0.0.1",
    "ex-app-port": "23000",
    "x-origin-ip": "203.0.113.9",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Host": "cloud.example.com",
    "Forwarded": "for=203.0.113.9",
    "X-Real-IP": "203.0.113.9",
    "X-Original-Authorization": BASIC,
    "Proxy-Authorization": BASIC,
    "Connection": "keep-alive, X-Hop-Custom",
    "X-Hop-Custom": "hop",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Host": "cloud.example.com",
}
# What must pass untouched.
PASSING = {
    "Depth": "1",
    "If-Match": '"etag-1"',
    "If-None-Match": '"etag-2"',
    "Range": "bytes=0-9",
    "Accept": "application/xml",
    "Accept-Language": "nl",
    "X-Requested-With": "XMLHttpRequest",
    "OC-Checksum": "SHA256:abc",
    "X-OC-MTime": "1700000000",
    "User-Agent": "BeeFlow/1.0",
    "Content-Type": "application/json",
}
DROPPED = {k.lower() for k in HOSTILE} - {
    "authorization-app-api",
    "ex-app-id",
    "ex-app-version",
    "aa-version",
    "host",
} | {"x-http-method-override", "x-beeflow-sig", "x-beeflow-nc-uid", "expect"}


@pytest.mark.parametrize(
    "target", ["/nc/ocs/v2.php/apps/echo/h?format=json", "/nc/index.php/apps/echo/h"]
)
async def test_headers_reaching_nextcloud(
    caller: NcCaller, fake_nc: FakeNextcloud, dav: FakeDav, target: str
) -> None:
    resp = await caller.request(
        "PATCH", target, body=b'{"a":1}', tunnel=True, headers={**HOSTILE, **PASSING}
    )
    assert (await outcome(resp))[0] == 200
    seen = dav.last().headers
    # AppAPI's impersonation headers, exactly once each.
    expected_auth = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert seen.getall("AUTHORIZATION-APP-API") == [expected_auth]
    assert seen.getall("EX-APP-ID") == ["bee_flow"]
    assert seen.getall("EX-APP-VERSION") == ["1.0.0"]
    assert seen.getall("AA-VERSION") == ["32.0.0"]
    # OCS, and app controllers too: without it a method lacking #[NoCSRFRequired] fails
    # Nextcloud's CSRF check (Request::passesCSRFCheck accepts the header instead of a token).
    assert seen.getall("OCS-APIRequest") == ["true"]
    # Host is Nextcloud's own, never the caller's.
    assert seen["Host"] == f"{fake_nc.url.host}:{fake_nc.url.port}"
    for name in DROPPED:
        assert name not in {k.lower() for k in seen}, name
    for name, value in PASSING.items():
        assert seen.getall(name) == [value], name
    assert seen["Content-Length"] == "7"
    assert dav.last().method == "PATCH"
    assert dav.last().user == "alice"


async def test_webdav_gets_no_ocs_header(caller: NcCaller, dav: FakeDav) -> None:
    """Sabre has no CSRF check of its own; nc_py_api sends no OCS-APIRequest on DAV either."""
    resp = await caller.request("PUT", "/nc/remote.php/dav/files/alice/o.txt", body=b"o")
    assert (await outcome(resp))[0] == 201
    assert "OCS-APIRequest" not in dav.last("PUT").headers


async def test_service_level_call_and_trimmed_uid(caller: NcCaller, dav: FakeDav) -> None:
    await outcome(await caller.request("GET", "/nc/ocs/v2.php/apps/echo/s", uid=""))
    assert dav.last().headers["AUTHORIZATION-APP-API"] == (
        base64.b64encode(f":{SECRET}".encode()).decode()
    )
    resp = await caller.request("GET", "/nc/ocs/v2.php/apps/echo/s", uid="bob")
    assert (await outcome(resp))[0] == 200
    assert dav.last().user == "bob"


@pytest.mark.parametrize("uid", ["a:b", ":", "x" * 300])
async def test_unusable_uid_is_400_after_the_signature(
    caller: NcCaller, dav: FakeDav, uid: str
) -> None:
    resp = await caller.request("GET", "/nc/ocs/v2.php/apps/echo/s", uid=uid)
    assert await outcome(resp) == (400, "uid_invalid")
    assert dav.seen == []


async def test_empty_content_type_is_not_forwarded(caller: NcCaller, dav: FakeDav) -> None:
    """AppAPI's PHP proxy sends `Content-Type:` (empty) on body-less requests."""
    resp = await caller.request("GET", "/nc/ocs/v2.php/apps/echo/e", headers={"Content-Type": ""})
    assert (await outcome(resp))[0] == 200
    assert "Content-Type" not in dav.last().headers


async def test_response_headers_come_back_intact_minus_cookies(
    caller: NcCaller, dav: FakeDav
) -> None:
    dav.put_file("alice", "r.bin", bytes(range(256)))
    resp = await caller.request("GET", "/nc/remote.php/dav/files/alice/r.bin")
    async with resp:
        assert resp.status == 200
        etag = resp.headers["ETag"]
        assert resp.headers["OC-ETag"] == etag
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["Last-Modified"]
    assert etag == dav.etag(dav.file("alice", "r.bin"))
    resp = await caller.request("GET", "/nc/index.php/apps/echo/c")
    async with resp:
        assert resp.status == 200
        assert "Set-Cookie" not in resp.headers  # a session of the impersonated user stays here


async def test_secrets_never_logged(
    caller: NcCaller, dav: FakeDav, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(12):  # enough failures to trigger the consecutive-failure warnings
        await outcome(
            await caller.request(
                "PUT", "/nc/ocs/v2.php/apps/echo/l", body=b"x", sign_uid="bob", headers=HOSTILE
            )
        )
    for _ in range(10):
        await outcome(
            await caller.request(
                "GET", "/nc/remote.php/dav/files/alice/Private%20Diagnosis.pdf", sign_uid="bob"
            )
        )
    await outcome(await caller.request("GET", "/nc/ocs/v2.php/apps/echo/l", headers=HOSTILE))
    text = caplog.text
    assert "Private" not in text  # file names are users' data: only the prefix is logged
    assert "signature_mismatch" in text  # the warning is there...
    for secret in (
        TENANT_KEY,
        SECRET,
        PHP_APPAPI,
        BASIC,
        "her-nextcloud-password",
        "s3cr3t",
        "harp-secret-value",
    ):
        assert secret not in text  # ...without any secret
