"""The proxy to the service over real sockets: what reaches it (every path the connector does not
own, as the user, with a JWT the service accepts), identity, headers, bodies, errors, tenant key."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from beeflow.nextcloud.users import NcUser
from beeflow.proxy.tokens import TokenCache
from beeflow.service_client import SERVICE_URL
from beeflow.tenant.state import TENANT
from beeflow.web import spa
from beeflow.web.shell import SHELL_FALLBACK
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService, pattern_bytes
from tests.helpers import SECRET, TENANT_KEY, RunningConnector, appapi_headers
from tests.proxy.conftest import ProxyFactory, dead_port, verify_jwt

USER_PASSWORD = "alice-nextcloud-password"  # what a browser's Basic auth carries
BASIC = "Basic " + base64.b64encode(f"alice:{USER_PASSWORD}".encode()).decode()


async def _chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# ------------------------------------------------------------------ basic forwarding


async def test_get_json_path_and_query_unchanged_and_no_store(
    legacy: RunningConnector, service: FakeService
) -> None:
    path = "/api/json?a=1&a=2&sp=x%20y&arr%5B0%5D=z"
    async with await legacy.request("GET", path, user="alice") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        # AppAPI caches a GET for an hour unless told otherwise (contract 4.3).
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    assert body["method"] == "GET"
    rec = service.last("/api/json")
    assert rec.raw_path == path
    assert rec.query.getall("a") == ["1", "2"]


async def test_upstream_cache_control_is_kept(legacy: RunningConnector) -> None:
    async with await legacy.request("GET", "/api/cached", user="alice") as resp:
        assert resp.headers["Cache-Control"] == "private, max-age=60"


async def test_auth_prefix_is_proxied_too(legacy: RunningConnector, service: FakeService) -> None:
    async with await legacy.request("POST", "/auth/some/flow?x=1", user="alice") as resp:
        assert resp.status == 404  # the fake has no such route, and says so
    assert service.last().raw_path == "/auth/some/flow?x=1"


async def test_api_base_url_change_applies_to_the_next_request(
    legacy: RunningConnector, service: FakeService
) -> None:
    async with FakeService() as other:
        legacy.app[SERVICE_URL].url = other.url
        async with await legacy.request("GET", "/api/health", user="alice") as resp:
            assert resp.status == 200
        assert other.find("/api/health")
        assert not service.find("/api/health")


async def test_redirects_are_passed_back_not_followed(
    legacy: RunningConnector, service: FakeService
) -> None:
    async with await legacy.request(
        "GET", "/api/redirect", user="alice", allow_redirects=False
    ) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/api/json"
    assert not service.find("/api/json")


async def test_service_cookies_never_reach_the_browser(legacy: RunningConnector) -> None:
    """The service answers on Nextcloud's origin: its two Set-Cookie headers are dropped (the UI
    authenticates through AppAPI; docs/proxy.md, "Responses")."""
    async with await legacy.request("GET", "/api/cookies", user="alice") as resp:
        assert resp.status == 200
        assert "Set-Cookie" not in resp.headers


async def test_service_cookies_are_not_kept_for_other_users(
    legacy: RunningConnector, service: FakeService, fake_nc: FakeNextcloud
) -> None:
    fake_nc.add_user("bob", email="bob@example.com", display_name="Bob")
    async with await legacy.request("GET", "/api/cookies", user="alice") as resp:
        assert resp.status == 200
    async with await legacy.request("GET", "/api/json", user="bob") as resp:
        assert resp.status == 200
    assert "Cookie" not in service.last("/api/json").headers


@pytest.mark.parametrize("with_length", [True, False])
async def test_bulk_download_is_byte_exact(legacy: RunningConnector, with_length: bool) -> None:
    size = 3 * 1024 * 1024 + 17
    path = f"/api/download?size={size}&chunk=65536" + ("&length=1" if with_length else "")
    async with await legacy.request("GET", path, user="alice") as resp:
        assert resp.status == 200
        if with_length:
            assert resp.headers["Content-Length"] == str(size)
        else:
            assert resp.headers.get("Transfer-Encoding") == "chunked"
        data = await resp.read()
    assert hashlib.sha256(data).digest() == hashlib.sha256(pattern_bytes(size)).digest()


async def test_head_keeps_the_length_and_sends_no_body(legacy: RunningConnector) -> None:
    async with await legacy.request(
        "HEAD", "/api/download?size=100&length=1", user="alice"
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "100"
        assert await resp.read() == b""


async def test_large_streamed_upload_reaches_the_service_intact(
    legacy: RunningConnector, service: FakeService
) -> None:
    data = pattern_bytes(5 * 1024 * 1024 + 3)
    async with await legacy.request(
        "PUT",
        "/api/echo",
        user="alice",
        data=_chunks(data, 256 * 1024),
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Echo-Length"] == str(len(data))
        assert await resp.read() == data
    rec = service.last("/api/echo")
    assert rec.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in rec.headers


@pytest.mark.parametrize(
    "path",
    [
        "/api/%2e%2e/setup",
        "/api/..%2fauth%2fadmin",
        "/api/x/..%5c..%5cadmin",
        "/api/..\\admin",
        "/api/x/%2E%2e\\y",
    ],
)
async def test_dot_segments_are_refused(
    legacy: RunningConnector, service: FakeService, path: str
) -> None:
    async with await legacy.request("GET", path, user="alice") as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "bad_path"
    assert not service.requests


async def test_encoded_slashes_without_dot_segments_pass_unchanged(
    legacy: RunningConnector, service: FakeService
) -> None:
    path = "/api/files/a%2Fb/c..d/.hidden"
    async with await legacy.request("GET", path, user="alice") as resp:
        assert resp.status != 400
    assert service.last().raw_path == path


# ------------------------------------------------------------------ identity and headers


async def test_headers_reaching_the_service_one_by_one(
    legacy: RunningConnector,
    service: FakeService,
    fake_nc: FakeNextcloud,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 10 fact 2 / issue 3 item 4: what the browser, AppAPI and HaRP send, and what the
    service gets. Every header is accounted for."""
    caplog.set_level(logging.DEBUG)
    legacy.app[TENANT].instance_id = "nc-host:cloud.example.com"
    sent = {
        **appapi_headers("alice"),
        "AA-REQUEST-ID": "puykcxkab7f47fz6XDHE",
        "EX-APP-USER-ID": "alice",
        "Authorization": BASIC,
        # AppAPI's copy of the browser's Authorization (Docker Socket Proxy over HTTPS)
        "X-Original-Authorization": BASIC,
        "requesttoken": "csrf-token-of-the-session",
        "Cookie": "oc_sessionPassphrase=secret-session; nc_token=abc",
        "Host": "cloud.example.com",
        "x-origin-ip": "203.0.113.7",
        "X-Forwarded-For": "203.0.113.7",
        "harp-shared-key": "harp-secret",
        "ex-app-host": "bee_flow",
        "ex-app-port": "23000",
        "Origin": "https://cloud.example.com",
        "Referer": "https://cloud.example.com/apps/app_api/embedded/bee_flow",
        "X-HTTP-Method-Override": "DELETE",
        "X-Beeflow-NC-Uid": "admin",
        "X-Beeflow-Source": "forged",
        "Accept-Encoding": "gzip, deflate, br",
        "Accept": "application/json",
        "Accept-Language": "nl",
        "User-Agent": "Mozilla/5.0 test",
        "Content-Type": "application/json",
        "X-Request-Trace": "t-1",
        "Expect": "",  # an empty header never goes on
    }
    async with legacy.session.request(
        "POST",
        URL(str(legacy.url) + "/api/echo"),
        headers=sent,
        data=b'{"hello":"world"}',
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    ) as resp:
        assert resp.status == 200
    got = service.last("/api/echo").headers

    assert got["Host"] == f"127.0.0.1:{service.url.port}"
    assert got["Content-Length"] == "17"
    assert got["Content-Type"] == "application/json"
    assert got["Accept"] == "application/json"
    assert got["Accept-Language"] == "nl"
    assert got["User-Agent"] == "Mozilla/5.0 test"
    assert got["X-Request-Trace"] == "t-1"
    assert got["Accept-Encoding"] == "identity"
    assert got["X-Beeflow-Source"] == "nextcloud-connector"
    assert got["X-Beeflow-NC-Uid"] == "alice"
    assert got["X-Beeflow-NC-Instance-Id"] == "nc-host:cloud.example.com"
    assert got["X-Beeflow-NC-Base-Url"] == str(fake_nc.url)
    assert got.getall("Authorization") == [got["Authorization"]]
    scheme, token = got["Authorization"].split(" ")
    assert scheme == "Bearer"
    assert verify_jwt(token, TENANT_KEY)["sub"] == "alice"
    expected = {
        "host",
        "content-length",
        "content-type",
        "accept",
        "accept-language",
        "user-agent",
        "x-request-trace",
        "accept-encoding",
        "authorization",
        "x-beeflow-source",
        "x-beeflow-nc-uid",
        "x-beeflow-nc-instance-id",
        "x-beeflow-nc-base-url",
    }
    assert {k.lower() for k in got} == expected
    assert len(got) == len(expected)  # nothing doubled
    # No secret reached the service's headers or any log line.
    everything = " ".join(f"{k}: {v}" for k, v in got.items())
    logs = caplog.text
    for secret in (
        SECRET,
        TENANT_KEY,
        USER_PASSWORD,
        BASIC,
        "secret-session",
        "harp-secret",
        "csrf-token-of-the-session",
    ):
        assert secret not in everything
        assert secret not in logs
    assert token not in logs
    assert service.last("/api/echo").method == "POST"  # DELETE override not honoured


async def test_jwt_claims(legacy: RunningConnector, service: FakeService) -> None:
    before = int(time.time())
    async with await legacy.request("GET", "/api/json", user="alice") as resp:
        assert resp.status == 200
    token = service.last().headers["Authorization"].removeprefix("Bearer ")
    claims = verify_jwt(token, TENANT_KEY)
    assert list(claims) == ["sub", "email", "name", "nc_admin", "iss", "aud", "iat", "exp"]
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert claims["name"] == "Alice"
    assert claims["nc_admin"] is False
    assert claims["iss"] == "nextcloud-connector"
    assert claims["aud"] == "beeflow.nl"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == legacy.config.jwt_ttl_seconds


async def test_admin_gets_nc_admin_and_a_token_of_their_own(
    legacy: RunningConnector, service: FakeService
) -> None:
    async with await legacy.request("GET", "/api/json", user="admin") as resp:
        assert resp.status == 200
    async with await legacy.request("GET", "/api/json", user="alice") as resp:
        assert resp.status == 200
    admin_rec, alice_rec = service.find("/api/json")
    admin = verify_jwt(admin_rec.headers["Authorization"][7:], TENANT_KEY)
    alice = verify_jwt(alice_rec.headers["Authorization"][7:], TENANT_KEY)
    assert (admin["sub"], admin["nc_admin"]) == ("admin", True)
    assert (alice["sub"], alice["nc_admin"]) == ("alice", False)


async def test_token_is_reused_per_user(legacy: RunningConnector, service: FakeService) -> None:
    for _ in range(3):
        async with await legacy.request("GET", "/api/json", user="alice") as resp:
            assert resp.status == 200
    tokens = {r.headers["Authorization"] for r in service.find("/api/json")}
    assert len(tokens) == 1


def test_token_cache_reuses_only_while_more_than_half_the_life_is_left() -> None:
    cache = TokenCache()
    alice = NcUser("alice", "alice@example.com", "Alice", ())
    first = cache.token(TENANT_KEY, alice, 300, now=1000.0)
    assert cache.token(TENANT_KEY, alice, 300, now=1149.0) == first
    renewed = cache.token(TENANT_KEY, alice, 300, now=1150.0)
    assert renewed != first
    assert verify_jwt(renewed, TENANT_KEY)["iat"] == 1150


def test_token_cache_renews_on_new_key_or_changed_user_facts() -> None:
    cache = TokenCache()
    alice = NcUser("alice", "alice@example.com", "Alice", ())
    first = cache.token(TENANT_KEY, alice, 300, now=1000.0)
    other_key = TENANT_KEY + "-rotated"
    rotated = cache.token(other_key, alice, 300, now=1001.0)
    assert verify_jwt(rotated, other_key)["sub"] == "alice"
    promoted = NcUser("alice", "alice@example.com", "Alice", ("admin",))
    as_admin = cache.token(other_key, promoted, 300, now=1002.0)
    assert verify_jwt(as_admin, other_key)["nc_admin"] is True
    assert len({first, rotated, as_admin}) == 3


def test_token_cache_is_bounded() -> None:
    cache = TokenCache(max_entries=2)
    users = [NcUser(f"u{i}", None, f"U{i}", ()) for i in range(3)]
    tokens = [cache.token(TENANT_KEY, u, 300, now=1000.0) for u in users]
    assert cache.token(TENANT_KEY, users[2], 300, now=1001.0) == tokens[2]
    assert cache.token(TENANT_KEY, users[0], 300, now=1001.0) != tokens[0]  # evicted, re-minted


async def test_service_call_without_user_is_refused(
    legacy: RunningConnector, service: FakeService
) -> None:
    async with await legacy.request("GET", "/api/json", user="") as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "appapi_user_required"
    assert not service.requests


async def test_user_lookup_failure_is_502_json(
    legacy: RunningConnector, service: FakeService
) -> None:
    async with await legacy.request("GET", "/api/json", user="ghost") as resp:
        assert resp.status == 502
        assert (await resp.json())["code"] == "user_lookup_failed"
    assert not service.requests


# ------------------------------------------------------------------ AppAPI quirks


async def test_patch_tunnel(legacy: RunningConnector, service: FakeService) -> None:
    """The UI renames a conversation with POST + X-HTTP-Method-Override: PATCH (AppAPI's PHP
    proxy has no PATCH); the service has only PATCH on that path and renames it."""
    async with await legacy.request(
        "POST", "/ai/chat/direct/stream", user="alice", json={"message": "hi"}
    ) as resp:
        assert resp.status == 200
        await resp.read()  # conversation_created conv-1
    async with await legacy.request(
        "POST",
        "/ai/direct/conversations/conv-1",
        user="alice",
        json={"title": "Renamed"},
        headers={"X-HTTP-Method-Override": "patch"},
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"success": True}
    rec = service.last()
    assert rec.method == "PATCH"
    assert rec.body == b'{"title": "Renamed"}'
    assert "X-HTTP-Method-Override" not in rec.headers
    assert service.conversations["conv-1"].title == "Renamed"


@pytest.mark.parametrize("override", ["DELETE", "PUT", "GET", "PROPFIND"])
async def test_no_other_override_is_honoured(
    legacy: RunningConnector, service: FakeService, override: str
) -> None:
    async with await legacy.request(
        "POST", "/api/echo", user="alice", data=b"x", headers={"X-HTTP-Method-Override": override}
    ) as resp:
        assert resp.headers["X-Echo-Method"] == "POST"
    assert "X-HTTP-Method-Override" not in service.last().headers


async def test_direct_patch_passes(harp: RunningConnector, service: FakeService) -> None:
    async with await harp.request("PATCH", "/api/echo", user="alice", data=b"{}") as resp:
        assert resp.headers["X-Echo-Method"] == "PATCH"


async def test_chunked_json_is_reframed_with_content_length(
    legacy: RunningConnector, service: FakeService
) -> None:
    body = b'{"message": "hello", "list": [1, 2, 3]}'
    async with await legacy.request(
        "POST",
        "/api/echo",
        user="alice",
        data=_chunks(body),
        headers={"Content-Type": "application/json; charset=utf-8"},
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == body
    rec = service.last("/api/echo")
    assert rec.headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in rec.headers
    assert rec.body == body


async def test_chunked_non_json_streams_as_it_comes(
    legacy: RunningConnector, service: FakeService
) -> None:
    body = b"--b\r\ncontent\r\n--b--\r\n"
    async with await legacy.request(
        "POST",
        "/api/echo",
        user="alice",
        data=_chunks(body),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    ) as resp:
        assert await resp.read() == body
    rec = service.last("/api/echo")
    assert rec.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in rec.headers


async def test_sized_body_keeps_its_length(legacy: RunningConnector, service: FakeService) -> None:
    async with await legacy.request(
        "PUT", "/api/echo", user="alice", data=b"0123456789", headers={"Content-Type": "text/plain"}
    ) as resp:
        assert await resp.read() == b"0123456789"
    rec = service.last("/api/echo")
    assert rec.headers["Content-Length"] == "10"
    assert "Transfer-Encoding" not in rec.headers


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_compressed_request_body_is_refused_not_relabelled(
    legacy: RunningConnector, service: FakeService, encoding: str
) -> None:
    body = gzip.compress(b'{"message": "hi"}')
    async with await legacy.request(
        "POST",
        "/api/echo",
        user="alice",
        data=body,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    ) as resp:
        assert resp.status == 415
        assert resp.content_type == "application/json"
        assert (await resp.json())["code"] == "content_encoding_unsupported"
    assert not service.find("/api/echo")
    # identity is no encoding at all
    async with await legacy.request(
        "POST",
        "/api/echo",
        user="alice",
        data=b"plain",
        headers={"Content-Type": "text/plain", "Content-Encoding": "identity"},
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == b"plain"


# ------------------------------------------------------------------ upstream failures


async def test_refused_connection_is_502(
    proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await proxy_factory(BEEFLOW_API_BASE_URL=f"http://127.0.0.1:{dead_port()}")
    async with await conn.request("GET", "/api/json", user="alice") as resp:
        assert resp.status == 502
        body = await resp.json()
    assert body["code"] == "upstream_unreachable"
    assert set(body) == {"code", "error"}
    assert TENANT_KEY not in caplog.text


async def test_reset_before_headers_is_502(legacy: RunningConnector) -> None:
    async with await legacy.request("POST", "/api/reset", user="alice", data=b"x") as resp:
        assert resp.status == 502
        assert (await resp.json())["code"] == "upstream_disconnected"


async def test_slow_headers_are_504(proxy_factory: ProxyFactory, service: FakeService) -> None:
    conn = await proxy_factory(BEEFLOW_UPSTREAM_HEADERS_TIMEOUT_SECONDS="0.3")
    started = time.monotonic()
    async with await conn.request("GET", "/api/slow?delay=5", user="alice") as resp:
        assert resp.status == 504
        assert (await resp.json())["code"] == "upstream_timeout"
    assert time.monotonic() - started < 3
    # Headers within the limit are fine, and the body has no total timeout.
    async with await conn.request("GET", "/api/slow?delay=0.1", user="alice") as resp:
        assert resp.status == 200


async def test_stale_pooled_connection_get_is_retried_once(
    legacy: RunningConnector, service: FakeService
) -> None:
    async with await legacy.request("GET", "/api/json", user="alice") as resp:
        assert resp.status == 200  # opens the pooled connection
    service.drop_reused = 1
    async with await legacy.request("GET", "/api/json?second", user="alice") as resp:
        assert resp.status == 200
    seconds = [r for r in service.requests if r.raw_path == "/api/json?second"]
    assert [r.dropped for r in seconds] == [True, False]
    assert seconds[1].connection_request_no == 1  # the retry went out on a new connection


@pytest.mark.parametrize(
    ("method", "content_type"), [("POST", "text/plain"), ("PUT", "application/json")]
)
async def test_nothing_but_get_head_is_replayed(
    legacy: RunningConnector, service: FakeService, method: str, content_type: str
) -> None:
    async with await legacy.request("GET", "/api/json", user="alice") as resp:
        assert resp.status == 200
    service.drop_reused = 1
    async with await legacy.request(
        method,
        "/api/echo",
        user="alice",
        data=_chunks(
            b'{"x": 1}'
        ),  # chunked JSON is buffered: replayable bytes, still not sent twice
        headers={"Content-Type": content_type},
    ) as resp:
        assert resp.status == 502
        assert (await resp.json())["code"] == "upstream_disconnected"
    assert [r.dropped for r in service.find("/api/echo")] == [True]


# ------------------------------------------------------------------ before the tenant key


@pytest.fixture
def keyless(legacy: RunningConnector) -> RunningConnector:
    legacy.app[TENANT].key = None
    return legacy


async def test_no_tenant_key_xhr_is_503_json(
    keyless: RunningConnector, service: FakeService
) -> None:
    for method in ("GET", "POST"):
        async with await keyless.request(
            method, "/api/json", user="alice", headers={"Sec-Fetch-Mode": "cors"}
        ) as resp:
            assert resp.status == 503
            assert resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["code"] == "tenant_key_missing"
    # fetch()'s Accept: */* is not a navigation either (reference 2, 1.0.2 fix)
    async with await keyless.request(
        "GET", "/api/json", user="alice", headers={"Accept": "*/*"}
    ) as resp:
        assert resp.status == 503
    assert not service.requests


async def test_no_tenant_key_navigation_gets_the_spa_shell(
    proxy_factory: ProxyFactory, service: FakeService, tmp_path: Path
) -> None:
    spa = tmp_path / "spa"
    spa.mkdir()
    (spa / "index.html").write_text("<!doctype html><title>shell-marker</title>")
    conn = await proxy_factory(BEEFLOW_SPA_DIR=str(spa))
    conn.app[TENANT].key = None
    for headers in ({"Sec-Fetch-Mode": "navigate"}, {"Accept": "text/html,application/xhtml+xml"}):
        async with await conn.request(
            "GET", "/auth/callback", user="alice", headers=headers
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
            assert resp.headers["Cache-Control"] == "no-store"
            assert "shell-marker" in await resp.text()
    assert not service.requests


async def test_no_tenant_key_without_spa_files_uses_the_built_in_page(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    conn = await proxy_factory(BEEFLOW_SPA_DIR=str(tmp_path / "missing"))
    conn.app[TENANT].key = None
    async with await conn.request(
        "GET", "/api/x", user="alice", headers={"Sec-Fetch-Mode": "navigate"}
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == SHELL_FALLBACK


REPO_INDEX = Path(__file__).resolve().parents[2] / "spa" / "index.html"


async def test_default_shell_is_the_repository_spa(keyless: RunningConnector) -> None:
    index = REPO_INDEX
    if not index.exists():
        pytest.skip("no spa/ directory in this checkout")
    async with await keyless.request(
        "GET", "/api/x", user="alice", headers={"Sec-Fetch-Mode": "navigate"}
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == index.read_bytes()


async def test_lookup_happens_only_with_a_key(
    keyless: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    before = len(fake_nc.calls_to("/ocs/v2.php/cloud/users"))
    async with await keyless.request("GET", "/api/json", user="alice") as resp:
        assert resp.status == 503
    assert len(fake_nc.calls_to("/ocs/v2.php/cloud/users")) == before


async def test_service_errors_pass_through(legacy: RunningConnector) -> None:
    """A 4xx/5xx from the service is passed through as is (not turned into our errors)."""
    async with await legacy.request("GET", "/api/status/418", user="alice") as resp:
        assert resp.status == 418
        assert await resp.json() == {"status": 418}
    async with await legacy.request("GET", "/api/status/500", user="alice") as resp:
        assert resp.status == 500
        assert await resp.json() == {"status": 500}


async def test_headers_timeout_does_not_count_the_clients_upload_pace(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    conn = await proxy_factory(BEEFLOW_UPSTREAM_HEADERS_TIMEOUT_SECONDS="0.3")

    async def slow_body() -> AsyncIterator[bytes]:
        for i in range(4):
            await asyncio.sleep(0.2)  # the client's own pace: 0.8 s in all
            yield f"part{i};".encode()

    async with await conn.request(
        "PUT", "/api/echo", user="alice", data=slow_body(), headers={"Content-Type": "text/plain"}
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == b"part0;part1;part2;part3;"


async def test_expect_100_continue_is_handled_here_not_forwarded(
    legacy: RunningConnector, service: FakeService
) -> None:
    """The PHP proxy sends `Expect: 100-Continue` on large PUTs (issue 11 item 5)."""
    data = pattern_bytes(256 * 1024)
    async with await legacy.request(
        "PUT",
        "/api/echo",
        user="alice",
        data=data,
        expect100=True,
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == data
    assert "Expect" not in service.last("/api/echo").headers


async def test_client_leaving_while_waiting_for_headers_cancels_the_upstream_call(
    legacy: RunningConnector, service: FakeService
) -> None:
    assert legacy.url.port is not None
    _reader, writer = await asyncio.open_connection("127.0.0.1", legacy.url.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in appapi_headers("alice").items())
    writer.write(f"GET /api/slow?delay=30 HTTP/1.1\r\nHost: nc\r\n{head}\r\n".encode())
    rec = await service.wait_for(lambda r: r.path == "/api/slow")
    left = time.monotonic()
    writer.close()
    async with asyncio.timeout(1.0):
        await rec.finished.wait()
    assert rec.cancelled
    assert rec.finished_at is not None
    assert rec.finished_at - left < 1.0


async def test_service_base_url_with_a_path_prefix(
    legacy: RunningConnector, service: FakeService
) -> None:
    legacy.app[SERVICE_URL].url = service.url / "tenant-a"
    async with await legacy.request("GET", "/api/json?q=1", user="alice") as resp:
        # Nothing of the service's lives under the prefix: its web UI answers (the fallback
        # the real service gives every unmatched path outside /api and /auth).
        assert resp.status == 200
        assert resp.content_type == "text/html"
    assert service.last().raw_path == "/tenant-a/api/json?q=1"


async def test_heartbeat_tells_how_replies_stream_and_counts_upstream_errors(
    proxy_factory: ProxyFactory,
) -> None:
    conn = await proxy_factory(BEEFLOW_API_BASE_URL=f"http://127.0.0.1:{dead_port()}")
    async with await conn.request("GET", "/api/json", user="alice") as resp:
        assert resp.status == 502
    async with await conn.request("GET", "/heartbeat") as resp:
        public = (await resp.json())["serviceProxy"]
    assert "need HaRP" in public["streaming"]
    assert public["upstreamErrors"] == 1
    assert "lastError" not in public
    async with await conn.request("GET", "/heartbeat", user="") as resp:
        trusted = (await resp.json())["serviceProxy"]
    assert trusted["lastError"] == "upstream_unreachable"
    assert trusted["inFlight"] == 0
    assert trusted["requests"] == 1


async def test_heartbeat_in_harp_mode_says_replies_stream(harp: RunningConnector) -> None:
    async with await harp.request("GET", "/heartbeat") as resp:
        assert "stream to the browser" in (await resp.json())["serviceProxy"]["streaming"]


@pytest.mark.parametrize(("method", "arrivals"), [("GET", 2), ("HEAD", 2), ("POST", 1)])
async def test_dropped_connection_retry_happens_once_and_only_for_get_head(
    legacy: RunningConnector, service: FakeService, method: str, arrivals: int
) -> None:
    async with await legacy.request(method, "/api/reset", user="alice") as resp:
        assert resp.status == 502
        if method != "HEAD":
            assert (await resp.json())["code"] == "upstream_disconnected"
    assert len(service.find("/api/reset")) == arrivals


# ------------------------------------------------------------------ the service's whole UI


async def chat(conn: RunningConnector, path: str = "/ai/chat/direct/stream", **kw: Any) -> str:
    async with await conn.request(
        "POST", path, user="alice", json={"message": "hello"}, **kw
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return await resp.text()


async def test_chat_reaches_the_service_with_a_jwt_it_accepts(
    legacy: RunningConnector, service: FakeService
) -> None:
    """The service's chat route (routes/ai.js at /ai), as the user, with the token its
    connectorJwt verifies against the tenant keys it holds."""
    text = await chat(legacy)
    assert "event: done" in text
    rec = service.last("/ai/chat/direct/stream")
    assert rec.auth == "ok"
    assert rec.user_email == "alice@example.com"
    assert rec.claims is not None
    assert (rec.claims["sub"], rec.claims["iss"], rec.claims["aud"]) == (
        "alice",
        "nextcloud-connector",
        "beeflow.nl",
    )
    assert rec.headers["X-Beeflow-Source"] == "nextcloud-connector"
    assert rec.headers["X-Beeflow-NC-Uid"] == "alice"


async def test_the_old_api_chat_path_is_the_services_404(
    legacy: RunningConnector, service: FakeService
) -> None:
    """What the connector's UI used to call: the service answers its JSON 404, relayed."""
    async with await legacy.request(
        "POST", "/api/ai/chat/direct/stream", user="alice", json={"message": "hi"}
    ) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "Not found"}
    assert service.last().path == "/api/ai/chat/direct/stream"


@pytest.mark.parametrize(
    "path",
    [
        "/agents/7/chat/stream",
        "/components/list",
        "/reports/weekly",
        "/apps/a1",
        "/versions/v2",
        "/uploads/x.png",
        "/share/t0k3n",
        "/w/page",
        "/verify/c3rt",
        "/mcp",
        "/api/session-token",
    ],
)
async def test_every_path_of_the_service_is_forwarded(
    legacy: RunningConnector, service: FakeService, path: str
) -> None:
    """Not just /api and /auth: the UI's /agents, /components, /reports, ... (USER)."""
    async with await legacy.request("GET", path, user="alice") as resp:
        assert resp.status in (200, 404), await resp.text()
    rec = service.last()
    assert (rec.path, rec.auth, rec.user_email) == (path, "ok", "alice@example.com")


async def test_agent_chat_streams(legacy: RunningConnector, service: FakeService) -> None:
    assert "event: done" in await chat(legacy, "/agents/7/chat/stream")
    assert service.last().path == "/agents/7/chat/stream"


async def test_the_service_rejects_a_key_it_does_not_hold(
    proxy_factory: ProxyFactory, service: FakeService
) -> None:
    """connectorJwt: no tenant key of the service verifies the token -> 401, relayed."""
    conn = await proxy_factory(BEEFLOW_TENANT_KEY="tk_unknown_to_the_service_0123456789")
    async with await conn.request("GET", "/api/health", user="alice") as resp:
        assert resp.status == 401
        assert await resp.json() == {"error": "Connector token rejected: no matching tenant key"}
    assert service.last().auth == "401"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PUT", "/setup", 405),
        ("DELETE", "/setup/status", 405),
        ("GET", "/setup/diagnostics", 404),
        ("GET", "/SETUP/status", 404),
        ("GET", "//setup/status", 404),
        ("POST", "/assets/x.js", 405),
        ("PUT", "/index.html", 405),
        ("GET", "/hooks/studio-menus", 405),  # the push hook takes POST only
        ("POST", "/hooks/other", 404),
        ("PUT", "/trigger", 405),  # the Task Processing wake-up takes GET and POST
        ("POST", "/heartbeat/", 404),
        ("PATCH", "/init", 405),
        ("GET", "/nc", 404),
        ("GET", "/webhook/nc-events", 405),
        ("GET", "/js/embed.js?x=1", 200),
        ("GET", "/img/app.svg", 200),
    ],
)
async def test_connector_paths_are_never_forwarded(
    legacy: RunningConnector, service: FakeService, method: str, path: str, status: int
) -> None:
    """Whatever verb, case or slashes bring one of the connector's paths to it (the catch-all
    in AppAPI's table, 32.0.0's fall-through), it is answered here, as JSON, for anyone."""
    for user in ("alice", "admin", None):
        async with await legacy.request(method, path, user=user) as resp:
            if resp.status == 403:  # an admin path for alice: refused by the connector itself
                assert (await resp.json())["code"] == "admin_required"
                continue
            if path.startswith("//") and user is None:
                assert resp.status == 401  # the catch-all's USER check comes first
                continue
            assert resp.status == status, (user, await resp.text())
            if status >= 400:
                assert resp.content_type == "application/json"
    assert service.requests == []


async def test_an_admin_path_refused_to_a_user_never_reaches_the_service(
    legacy: RunningConnector, service: FakeService
) -> None:
    """AppAPI 32.0.0 hands bob's refused /setup to the USER catch-all: the connector's own ADMIN
    check refuses it."""
    for method, path in (("GET", "/setup"), ("POST", "/setup/rotate-tenant-key")):
        async with await legacy.request(
            method, path, user="alice", json={}, headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 403
            assert (await resp.json())["code"] == "admin_required"
    assert service.requests == []


async def test_a_user_without_email_gets_the_connectors_answer(
    legacy: RunningConnector, service: FakeService, fake_nc: FakeNextcloud
) -> None:
    """The service refuses a token without e-mail (400 "Connector token missing email claim");
    the connector says why, in a sentence, and asks the service nothing."""
    fake_nc.add_user("noemail", email=None, display_name="No Mail", groups=["staff"])
    async with await legacy.request(
        "POST", "/ai/chat/direct/stream", user="noemail", json={"message": "hi"}
    ) as resp:
        assert resp.status == 403
        body = await resp.json()
    assert body["code"] == "nextcloud_email_missing"
    assert "Personal settings" in body["error"]
    navigation = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
    async with await legacy.request("GET", "/chat/5", user="noemail", headers=navigation) as resp:
        assert resp.status == 200  # the UI shell, which shows the sentence from its calls
        assert resp.content_type == "text/html"
    assert service.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/languages/user/locales",
        "/api/languages/user/strings/de",
        "/api/languages/public/strings/nl",
    ],
)
async def test_l10n_calls_are_answered_here(
    legacy: RunningConnector, service: FakeService, path: str
) -> None:
    async with await legacy.request("GET", path, user="alice") as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "translations": {},
            "pluralForm": "nplurals=2; plural=(n != 1);",
        }
    assert service.requests == []


async def test_the_service_refuses_a_browser_origin_the_connector_strips(
    legacy: RunningConnector, service: FakeService
) -> None:
    """The service 403s any Origin it does not serve (index.js): the connector must not pass
    the browser's on."""
    headers = {
        # What AppAPI's PHP proxy passes on from a browser on Nextcloud's own page.
        "Host": "cloud.example.com",
        "Origin": "https://cloud.example.com",
        "Referer": "https://cloud.example.com/x",
    }
    assert "event: done" in await chat(legacy, headers=headers)
    assert "Origin" not in service.last().headers


async def test_an_installed_connector_serves_the_installed_ui_as_its_shell(
    proxy_factory: ProxyFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip-installed, without BEEFLOW_SPA_DIR: the package sits in site-packages and the UI in
    the wheel's data files (<prefix>/share/beeflow/spa); the shell comes from there, as the
    static routes' files do (one place finds the UI: beeflow.web.spa)."""
    prefix = tmp_path / "venv"
    installed = prefix / "share" / "beeflow" / "spa"
    installed.mkdir(parents=True)
    (installed / "index.html").write_text("<!doctype html><title>installed-marker</title>")
    site = prefix / "lib" / "python3" / "site-packages" / "beeflow" / "web"
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.setattr(spa, "__file__", str(site / "spa.py"))
    conn = await proxy_factory()
    assert conn.app[spa.SPA_DIR] == installed
    conn.app[TENANT].key = None
    async with await conn.request(
        "GET", "/api/x", user="alice", headers={"Sec-Fetch-Mode": "navigate"}
    ) as resp:
        assert resp.status == 200
        assert "installed-marker" in await resp.text()
    async with await conn.request("GET", "/index.html") as resp:
        assert "installed-marker" in await resp.text()
