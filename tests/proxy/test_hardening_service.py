"""The service proxy against what an attack run found (issue 25), over real sockets: a hostile
service's answers confined on Nextcloud's origin, paths that climb in any layer of encoding,
reserved headers spelled with underscores, and the memory chunked JSON bodies may hold."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from beeflow.config import Config
from beeflow.proxy.service import BUFFERS
from beeflow.tasks import spawn
from beeflow.web.security_headers import confined_policy
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.helpers import RunningConnector, base_env, wait_for

MIB = 1024 * 1024
SCRIPT_PAGE = b"<!doctype html><script>document.cookie='x=1;path=/'</script>"

# What a compromised service (or user content echoed back) could put on an answer.
HOSTILE_ANSWER = (
    ("Set-Cookie", "oc_sessionPassphrase=planted; Path=/; HttpOnly"),
    ("Set-Cookie", "nc_session_id=planted; Path=/"),
    ("set_cookie", "underscored=1; Path=/"),
    ("Content-Security-Policy", "frame-ancestors *"),
    ("Content-Security-Policy-Report-Only", "default-src *"),
    ("X-Frame-Options", "ALLOWALL"),
    ("Clear-Site-Data", '"cookies", "storage"'),
    ("Access-Control-Allow-Origin", "https://evil.example"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Strict-Transport-Security", "max-age=63072000; includeSubDomains"),
    ("Alt-Svc", 'h2="evil.example:443"'),
    ("NEL", '{"report_to":"x","max_age":86400}'),
    ("Report-To", '{"group":"x","endpoints":[{"url":"https://evil.example/r"}]}'),
    ("Service-Worker-Allowed", "/"),
    ("X-Kept", "yes"),
)
STRIPPED = {name.lower().replace("_", "-") for name, _ in HOSTILE_ANSWER} - {
    "x-kept",
    "content-security-policy",
}


async def _hostile(request: web.Request) -> web.StreamResponse:
    response = web.Response(body=SCRIPT_PAGE, content_type="text/html")
    for name, value in HOSTILE_ANSWER:
        response.headers.add(name, value)
    return response


async def _hostile_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    for name, value in HOSTILE_ANSWER:
        response.headers.add(name, value)
    await response.prepare(request)
    await response.write(b"event: done\ndata: {}\n\n")
    await response.write_eof()
    return response


@pytest.fixture
async def hostile() -> AsyncIterator[FakeService]:
    svc = FakeService(
        extra_routes=[
            web.get("/api/hostile", _hostile),
            web.get("/reports/hostile.html", _hostile),
            web.get("/ai/hostile-stream", _hostile_stream),
        ]
    )
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def conn(connector_factory: ConnectorFactory, hostile: FakeService) -> RunningConnector:
    return await connector_factory(
        BEEFLOW_API_BASE_URL=str(hostile.url),
        BEEFLOW_NC_PUBLIC_URL="https://cloud.example.com",
        BEEFLOW_API_BUFFER_BYTES=str(8 * MIB),
        BEEFLOW_API_BUFFER_USER_BYTES=str(3 * MIB),
    )


# ------------------------------------------------------------------ item 4: confinement


@pytest.mark.parametrize("path", ["/api/hostile", "/reports/hostile.html", "/ai/hostile-stream"])
async def test_a_hostile_answer_is_confined(conn: RunningConnector, path: str) -> None:
    """Before: both cookies reached the browser on Nextcloud's origin, the service's own
    `frame-ancestors *` replaced the connector's, and the script page ran with no policy."""
    async with await conn.request("GET", path, user="alice") as resp:
        assert resp.status == 200
        names = {name.lower() for name in resp.headers}
        assert not names & STRIPPED, names & STRIPPED
        assert resp.headers.getall("Content-Security-Policy") == [confined_policy(conn.config)]
        assert resp.headers["X-Kept"] == "yes"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        body = await resp.read()
    assert body.startswith(b"<!doctype html>" if path != "/ai/hostile-stream" else b"event:")


def test_the_confined_policy_runs_nothing_and_keeps_the_frame_ancestors() -> None:
    config = Config.from_env(
        base_env(
            "http://nc.internal:8080",
            Path("/nonexistent"),
            BEEFLOW_NC_PUBLIC_URL="https://cloud.example.com",
        )
    )
    policy = confined_policy(config)
    directives = [d.strip() for d in policy.split(";")]
    assert "default-src 'none'" in directives
    assert "sandbox" in directives  # no allow-scripts, an opaque origin
    assert "frame-ancestors 'self' http://nc.internal:8080 https://cloud.example.com" in directives


# ------------------------------------------------------------------ item 11: paths


@pytest.mark.parametrize(
    "path",
    [
        "/api/%252e%252e/admin",
        "/api/%25252e%25252e/admin",
        "/api/..;/admin",
        "/api/.;/admin",
        "/api/..;jsessionid=x/admin",
        "/api/%2e%2e%3b/admin",
        "/auth/%252e%252e%252fadmin",
        "/ai/chat/..%255c..%255cadmin",
        "/agents/x%2500y",
        "/api/%2525252e%2525252e/admin",
    ],
)
async def test_paths_that_climb_in_any_layer_never_reach_the_service(
    conn: RunningConnector, hostile: FakeService, path: str
) -> None:
    """Before: `/api/%252e%252e/...` and `/api/..;/` reached the service unchanged."""
    async with await conn.request("GET", path, user="alice") as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "bad_path"
    assert hostile.requests == []


@pytest.mark.parametrize(
    "path", ["/api/v1.2/file.name.txt", "/api/...", "/api/a;b/c", "/api/%2e%2e.txt", "/api/.x"]
)
async def test_ordinary_dots_and_semicolons_still_pass(
    conn: RunningConnector, hostile: FakeService, path: str
) -> None:
    async with await conn.request("GET", path, user="alice") as resp:
        assert resp.status == 404  # the service's own JSON 404: it was forwarded
    assert hostile.last().raw_path == path


# ------------------------------------------------------------------ item 12: underscores


async def test_reserved_headers_spelled_with_underscores_are_dropped(
    conn: RunningConnector, hostile: FakeService
) -> None:
    """Before: `X_Beeflow_NC_Uid: admin` reached the service (a CGI-style server reads it as
    X-Beeflow-NC-Uid)."""
    forged = {
        "X_Beeflow_NC_Uid": "admin",
        "x_beeflow_source": "forged",
        "X_Original_Authorization": "Basic YWRtaW46cGFzcw==",
        "AUTHORIZATION_APP_API": "Zm9yZ2Vk",
        "Ex_App_Id": "other",
        "X_Forwarded_For": "203.0.113.9",
        "Proxy_Authorization": "Basic eA==",
        "X_HTTP_Method_Override": "DELETE",
        "Content_Length": "5",
        "X_Custom_Ok": "kept",
    }
    async with await conn.request("GET", "/api/json", user="alice", headers=forged) as resp:
        assert resp.status == 200
    seen = hostile.last("/api/json").headers
    names = {name.lower() for name in seen}
    for name in forged:
        if name != "X_Custom_Ok":
            assert name.lower() not in names, name
    assert seen["X_Custom_Ok"] == "kept"
    assert seen.getall("X-Beeflow-NC-Uid") == ["alice"]
    assert seen.getall("X-Beeflow-Source") == ["nextcloud-connector"]


# ------------------------------------------------------------------ item 3: buffered bodies


async def _chunks(
    size: int, hold: asyncio.Event | None = None, hold_at: int | None = None
) -> AsyncIterator[bytes]:
    """A chunked JSON body of about `size` bytes; with `hold`, it waits for the event once
    `hold_at` bytes (half, by default) were sent."""
    piece = b" " * (256 * 1024)
    at = size // 2 if hold_at is None else hold_at
    sent = 0
    yield b"["
    while sent < size:
        yield piece
        sent += len(piece)
        if hold is not None and sent >= at:
            await hold.wait()
            hold = None
    yield b"]"


async def test_one_body_over_the_user_limit_is_413(
    conn: RunningConnector, hostile: FakeService
) -> None:
    headers = {"Content-Type": "application/json"}
    async with await conn.request(
        "POST", "/api/echo", user="alice", headers=headers, data=_chunks(4 * MIB)
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["code"] == "payload_too_large"
    assert not hostile.find("/api/echo")


async def test_a_user_cannot_hold_more_than_their_share_at_once(
    conn: RunningConnector, hostile: FakeService
) -> None:
    """Before: each chunked JSON body was buffered whole, however many one user sent at once."""
    headers = {"Content-Type": "application/json"}
    hold = asyncio.Event()
    first = spawn(
        conn.request(
            "POST", "/api/echo", user="alice", headers=headers, data=_chunks(2 * MIB, hold)
        ),
        name="held-upload",
    )
    await wait_for(lambda: conn.app[BUFFERS].held_by("alice") >= MIB)
    async with await conn.request(
        "POST", "/api/echo", user="alice", headers=headers, data=_chunks(2 * MIB)
    ) as resp:
        assert resp.status == 503
        assert (await resp.json())["code"] == "api_buffer_user_full"
        assert resp.headers["Retry-After"] == "5"
    # Another user still has room, and the held one finishes once it sends the rest.
    async with await conn.request(
        "POST", "/api/echo", user="admin", headers=headers, data=_chunks(MIB)
    ) as resp:
        assert resp.status == 200
    hold.set()
    async with await first as resp:
        assert resp.status == 200
        assert len(await resp.read()) > 2 * MIB
    assert conn.app[BUFFERS].held == 0


async def test_all_users_together_are_bounded(
    conn: RunningConnector, fake_nc: FakeNextcloud, hostile: FakeService
) -> None:
    for uid in ("u1", "u2", "u3", "u4"):
        fake_nc.add_user(uid, email=f"{uid}@example.com", display_name=uid)
    headers = {"Content-Type": "application/json"}
    hold = asyncio.Event()
    held = [
        spawn(
            conn.request(
                "POST",
                "/api/echo",
                user=uid,
                headers=headers,
                data=_chunks(5 * MIB // 2, hold, hold_at=5 * MIB // 2),
            ),
            name=f"held-upload-{uid}",
        )
        for uid in ("u1", "u2", "u3")
    ]
    budget = conn.app[BUFFERS]
    await wait_for(lambda: budget.held >= 15 * MIB // 2)
    async with await conn.request(
        "POST", "/api/echo", user="u4", headers=headers, data=_chunks(MIB)
    ) as resp:
        assert resp.status == 503
        assert (await resp.json())["code"] == "api_buffer_full"
    assert budget.peak <= 8 * MIB
    hold.set()
    for future in held:
        async with await future as resp:
            assert resp.status == 200
    assert budget.held == 0


async def test_sized_and_other_bodies_still_stream(
    conn: RunningConnector, hostile: FakeService
) -> None:
    body = b"x" * (5 * MIB)
    async with await conn.request(
        "POST",
        "/api/echo",
        user="alice",
        headers={"Content-Type": "application/octet-stream"},
        data=_chunks(5 * MIB),
    ) as resp:
        assert resp.status == 200
    async with await conn.request(
        "POST",
        "/api/echo",
        user="alice",
        headers={"Content-Type": "application/json"},
        data=io.BytesIO(body),
    ) as resp:
        assert resp.status == 200  # a Content-Length: streamed, never buffered
    assert conn.app[BUFFERS].peak == 0
