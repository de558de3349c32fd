"""Demo mode: the stand-ins, the whole stack through the AppAPI-style front, and the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from beeflow.config import Config
from beeflow.demo import DEMO_TENANT_KEY, Demo
from beeflow.demo.service import reply_pieces, verify_jwt
from beeflow.service_client import SERVICE_URL
from beeflow.setup import store
from beeflow.signing import mint_jwt, user_claims
from tests.demo.stack import DemoStack, start_demo_stack

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
async def stack() -> AsyncIterator[DemoStack]:
    running = await start_demo_stack()
    yield running
    await running.close()


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


async def test_env_and_cleanup() -> None:
    demo = Demo()
    env = await demo.start()
    try:
        config = Config.from_env(env)
        assert config.app_host == "127.0.0.1"
        assert config.nextcloud_url.host == "127.0.0.1"
        assert config.tenant_key_env == DEMO_TENANT_KEY
        assert len(config.app_secret) >= 64
        assert not config.api_base_url_from_env  # the picker stays usable
        assert config.persistent_storage.is_dir()
        saved = store.load(config.persistent_storage)
        assert saved is not None
        assert demo.service is not None
        assert saved.api_base_url == str(demo.service.url)
        assert demo.url.endswith("/index.php/apps/app_api/proxy/bee_flow/")
        storage = config.persistent_storage
    finally:
        await demo.stop()
    assert not storage.exists()
    await demo.stop()  # twice is fine
    assert Demo().secret != demo.secret


async def test_startup_time(stack: DemoStack) -> None:
    """Stand-ins + connector until the heartbeat answers through the front."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "demo-startup.txt").write_text(
        f"demo stack start-up (in-process): {stack.startup_seconds * 1000:.0f} ms\n"
    )
    assert stack.startup_seconds < 5.0


async def test_chat_through_the_real_auth_path(stack: DemoStack) -> None:
    demo = stack.demo
    assert demo.service is not None
    async with (
        aiohttp.ClientSession(cookies={"nc_session": "browser-cookie"}) as session,
        session.post(
            demo.url + "ai/chat/direct/stream",
            json={"message": "What is on my calendar?"},
            headers={"Authorization": "Basic YWRtaW46cGFzc3dvcmQ="},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = parse_sse(await resp.text())
    names = [name for name, _ in events]
    assert names[0] == "conversation_created"
    assert names[-1] == "done"
    assert set(names[1:-1]) == {"content"}
    text = "".join(data["text"] for name, data in events if name == "content")
    assert text == "".join(reply_pieces("Demo Admin", "What is on my calendar?"))
    seen = [s for s in demo.service.seen if s.path == "/ai/chat/direct/stream"][-1]
    assert seen.claims is not None
    assert seen.claims["sub"] == "admin"
    assert seen.claims["nc_admin"] is True
    lowered = {k.lower(): v for k, v in seen.headers.items()}
    assert "authorization-app-api" not in lowered
    assert "cookie" not in lowered
    assert demo.secret not in json.dumps(seen.headers)
    assert "browser-cookie" not in json.dumps(seen.headers)
    assert lowered["x-beeflow-source"] == "nextcloud-connector"


async def test_the_old_api_prefixed_chat_path_is_the_services_404(stack: DemoStack) -> None:
    """The service serves chat at /ai/... only: /api/ai/... is an unknown /api path there."""
    demo = stack.demo
    async with (
        aiohttp.ClientSession() as session,
        session.post(demo.url + "api/ai/chat/direct/stream", json={"message": "hi"}) as resp,
    ):
        assert resp.status == 404
        assert await resp.json() == {"error": "Not found"}


async def test_the_stand_in_refuses_tokens_the_service_would(stack: DemoStack) -> None:
    """No X-Beeflow-Source: the token is not even looked at (401 Not authenticated); a token
    without e-mail: 400 (the connector never sends one: it answers such users itself)."""
    demo = stack.demo
    assert demo.service is not None
    url = str(demo.service.url) + "/ai/chat/direct/stream"
    claims = {"sub": "x", "email": "", "iat": 1, "exp": 2**31}
    token = mint_jwt(demo.tenant_key, claims)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url, json={"message": "hi"}, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 401
            assert await resp.json() == {"error": "Not authenticated"}
        marked = {"Authorization": f"Bearer {token}", "X-Beeflow-Source": "nextcloud-connector"}
        async with session.post(url, json={"message": "hi"}, headers=marked) as resp:
            assert resp.status == 400
            assert await resp.json() == {"error": "Connector token missing email claim"}


async def test_patch_is_tunnelled(stack: DemoStack) -> None:
    demo = stack.demo
    assert demo.service is not None
    demo.service.conversations["demo-x"] = "old"
    url = demo.url + "ai/direct/conversations/demo-x"
    async with aiohttp.ClientSession() as session:
        async with session.patch(url, json={"title": "new"}) as resp:
            assert resp.status == 405  # like AppAPI's PHP proxy
        async with session.post(
            url, json={"title": "renamed"}, headers={"X-HTTP-Method-Override": "PATCH"}
        ) as resp:
            assert resp.status == 200
            assert await resp.json() == {"success": True}
        # The HaRP-style front passes PATCH itself.
        async with session.patch(
            demo.harp_url + url.split("/bee_flow/")[1], json={"title": "h"}
        ) as resp:
            assert resp.status == 200
    assert demo.service.conversations["demo-x"] == "h"
    methods = [s.method for s in demo.service.seen if s.path.endswith("/demo-x")]
    assert methods == ["PATCH", "PATCH"]


async def test_setup_works_against_the_stand_ins(stack: DemoStack) -> None:
    demo = stack.demo
    assert demo.service is not None
    async with aiohttp.ClientSession() as session:
        async with session.get(demo.url + "setup/status") as resp:
            status = await resp.json()
        assert status["active"] == str(demo.service.url)
        assert status["activeSource"] == "setup"
        assert status["tenant"]["status"] == "ok"
        assert "Demo mode" in status["transport"]["note"]
        assert status["transport"]["demo"] is True
        async with session.post(
            demo.url + "setup/test", json={"apiBaseUrl": str(demo.service.url)}
        ) as resp:
            probe = await resp.json()
        assert probe["ok"] is True
        assert probe["appVersion"] == "demo-1"
        assert "version" not in probe
        async with session.post(
            demo.url + "setup", json={"mode": "self-hosted", "apiBaseUrl": str(demo.service.url)}
        ) as resp:
            assert resp.status == 200
    assert stack.app[SERVICE_URL].source == "setup"


# Health states that mean a part of the connector does not work.
BAD_STATES = frozenset({"failed", "paused", "exited", "retrying", "unreachable"})


def failed_parts(health: dict[str, Any], where: str = "") -> list[str]:
    """Every part of a health answer that reports a failure: a bad `state`, an error text, or
    a registration that did not happen."""
    found: list[str] = []
    for name, value in health.items():
        path = f"{where}.{name}" if where else name
        if isinstance(value, dict):
            found += failed_parts(value, path)
            continue
        bad_state = name == "state" and value in BAD_STATES
        error = name in ("lastError", "error") and bool(value)
        unregistered = where == "ui" and value != "registered"
        if bad_state or error or unregistered:
            found.append(f"{path}={value}")
    return found


async def test_the_demo_shows_a_healthy_connector(
    caplog: pytest.LogCaptureFixture, stack: DemoStack
) -> None:
    """Every part of the demo's health is well: the stand-in Nextcloud answers every call the
    connector makes (the user sync reads the accounts as the admin), and nothing is logged as
    a warning or worse."""
    caplog.set_level(logging.INFO)
    demo = stack.demo
    async with aiohttp.ClientSession() as session:
        # One reconciliation run to its end (the boot run may still be on its way).
        async with session.post(demo.url + "webhook/user-sync?wait=1") as resp:
            assert resp.status == 200
            sync = await resp.json()
        assert sync["state"] in ("baseline", "ok"), sync
        assert sync["usersSeen"] == 1
        async with session.get(demo.url + "heartbeat") as resp:
            heartbeat = await resp.json()
        async with session.get(demo.url + "setup/status") as resp:
            status = await resp.json()
    assert heartbeat["status"] == "ok"
    assert heartbeat["init"] == {"state": "done", "progress": 100}
    assert heartbeat["userSync"]["readAs"] == "admin"  # details only shown to an admin
    assert failed_parts(heartbeat) == []
    assert failed_parts(status["health"]) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


def test_failed_parts_finds_each_kind_of_failure() -> None:
    health = {
        "status": "ok",
        "userSync": {"state": "failed", "lastError": "user details as admin: HTTP 404"},
        "ui": {"top-menu": "registered", "embed script": "failed"},
        "tunnel": {"state": "running"},
        "serviceProxy": {"lastError": None},
    }
    assert failed_parts(health) == [
        "userSync.state=failed",
        "userSync.lastError=user details as admin: HTTP 404",
        "ui.embed script=failed",
    ]


async def test_the_root_without_its_slash_redirects_to_the_slash_form(stack: DemoStack) -> None:
    """The demo's front sees the missing slash (Nextcloud and HaRP hand the connector `/`
    either way; the bundled page explains it there: tests/browser/test_trailing_slash.py)."""
    demo = stack.demo
    async with aiohttp.ClientSession() as session:
        for root in (demo.url, demo.harp_url):
            bare = root.rstrip("/")
            for method in ("GET", "POST"):
                async with session.request(method, bare + "?a=1&b", allow_redirects=False) as resp:
                    assert resp.status == 308
                    assert resp.headers["Location"] == URL(bare).path + "/?a=1&b"
            async with session.get(bare) as resp:
                assert resp.status == 200
                assert str(resp.url) == root
                assert "<title>Bee Flow</title>" in await resp.text()


async def test_front_reports_a_down_connector_like_nextcloud(stack: DemoStack) -> None:
    await stack.runner.cleanup()
    async with aiohttp.ClientSession() as session, session.get(stack.demo.url) as resp:
        assert resp.status == 500
        assert await resp.read() == b""


async def test_stand_in_nextcloud_checks_the_secret(stack: DemoStack) -> None:
    assert stack.demo.nextcloud is not None
    url = str(stack.demo.nextcloud_url) + "/ocs/v2.php/cloud/users/admin?format=json"
    good = stack.demo.nextcloud.appapi_headers("admin")
    bad = {**good, "AUTHORIZATION-APP-API": base64.b64encode(b"admin:wrong").decode()}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={**good, "OCS-APIRequest": "true"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["ocs"]["data"]["groups"] == ["admin"]
        async with session.get(url, headers=bad) as resp:
            assert resp.status == 401


def test_stand_in_service_verifies_tokens() -> None:
    now = int(time.time())
    claims = user_claims(uid="admin", email=None, name="A", nc_admin=True, iat=now, ttl=300)
    token = mint_jwt(DEMO_TENANT_KEY, claims)
    assert verify_jwt(token, DEMO_TENANT_KEY) == claims
    assert verify_jwt(token, "another-key-0123456789") is None
    assert verify_jwt(token, DEMO_TENANT_KEY, now=now + 301) is None
    assert verify_jwt(token[:-2] + "xx", DEMO_TENANT_KEY) is None
    assert verify_jwt("not.a.jwt", DEMO_TENANT_KEY) is None
    assert verify_jwt(mint_jwt(DEMO_TENANT_KEY, {**claims, "aud": "x"}), DEMO_TENANT_KEY) is None
    assert verify_jwt(mint_jwt(DEMO_TENANT_KEY, {**claims, "iss": "x"}), DEMO_TENANT_KEY) is None
    # Like the service: iss and aud are checked only when present, exp only when present.
    bare = {"sub": "admin", "email": "a@b.c"}
    assert verify_jwt(mint_jwt(DEMO_TENANT_KEY, bare), DEMO_TENANT_KEY) == bare


def demo_dirs(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith("beeflow-demo-")]


async def test_cli_demo_starts_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The README's first command, as a process: prints a URL that serves the UI; SIGINT exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "BEEFLOW_", "HP_"))}
    env["TMPDIR"] = str(tmp_path)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "beeflow", "serve", "--demo",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, "the demo exited before printing its URL"
            if "Bee Flow demo: open " in line:
                url = line.split("open ", 1)[1].strip()
        ready = time.monotonic() - started
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200
            assert "<title>Bee Flow</title>" in await resp.text()
        assert demo_dirs(tmp_path)
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    assert not demo_dirs(tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "demo-startup.txt").open("a") as out:
        out.write(f"python -m beeflow serve --demo, process start to URL printed: {ready:.2f} s\n")
