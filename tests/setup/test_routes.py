"""The setup picker's HTTP surface: page, status, test, save; locks, limits, SSRF, CSRF."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from beeflow.health import HEALTH, TUNNEL_STATUS
from beeflow.service_client import SERVICE_URL
from beeflow.setup.common import STATE, Rebootstrap
from beeflow.setup.status import CLOUD_URL, LEGACY_NOTE
from beeflow.tenant.state import fingerprint
from beeflow.tenant.wiring import ROTATION
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET, TENANT_KEY, RunningConnector
from tests.setup.conftest import HealthServer

JSON = {"Content-Type": "application/json"}


def with_hook(
    calls: list[str], gate: asyncio.Event | None = None
) -> Callable[[web.Application], None]:
    """Install a re-bootstrap hook that records its runs (and optionally waits on `gate`)."""

    def customise(app: web.Application) -> None:
        async def rebootstrap() -> None:
            calls.append(str(app[SERVICE_URL].url))
            if gate is not None:
                await gate.wait()

        app[STATE].rebootstrap = Rebootstrap(rebootstrap)

    return customise


def without_hook(app: web.Application) -> None:
    app[STATE].rebootstrap = Rebootstrap(None)


async def post(
    running: RunningConnector, path: str, body: Any, user: str = "admin", **kw: Any
) -> tuple[int, Any]:
    headers = {**JSON, **kw.pop("headers", {})}
    async with await running.request(
        "POST", path, user=user, data=json.dumps(body), headers=headers, **kw
    ) as resp:
        return resp.status, await resp.json()


async def get_status(running: RunningConnector, user: str = "admin") -> dict[str, Any]:
    async with await running.request("GET", "/setup/status", user=user) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        body: dict[str, Any] = await resp.json()
        return body


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a background task's visible effect (polling the state, bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------ access


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/setup"),
        ("GET", "/setup/"),
        ("GET", "/setup/status"),
        ("POST", "/setup/test"),
        ("POST", "/setup"),
    ],
)
async def test_admin_only(connector: RunningConnector, method: str, path: str) -> None:
    async with await connector.request(method, path, user="alice", headers=JSON, data="{}") as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "admin_required"
    async with await connector.request(method, path, headers=JSON, data="{}") as resp:
        assert resp.status == 401
    async with await connector.request(method, path, user="", headers=JSON, data="{}") as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "appapi_user_required"


# ------------------------------------------------------------------ page


async def test_page(connector: RunningConnector, fake_nc: FakeNextcloud) -> None:
    async with await connector.request("GET", "/setup", user="admin") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-store"
        csp = resp.headers["Content-Security-Policy"]
        html = await resp.text()
    assert csp.startswith(f"frame-ancestors 'self' {fake_nc.url.origin()}")
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Robots-Tag"] == "noindex, nofollow"
    assert '<script src="js/beeflow-setup.js" defer></script>' in html
    assert "<script>" not in html  # nothing inline: Nextcloud's CSP would block it
    assert SECRET not in html
    assert TENANT_KEY not in html


async def test_page_with_trailing_slash_points_one_level_up(connector: RunningConnector) -> None:
    async with await connector.request("GET", "/setup/", user="admin") as resp:
        assert resp.status == 200
        assert '<script src="../js/beeflow-setup.js" defer></script>' in await resp.text()


async def test_page_script_is_public_and_revalidated(connector: RunningConnector) -> None:
    async with await connector.request("GET", "/js/beeflow-setup.js") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        etag = resp.headers["ETag"]
        script = await resp.text()
    assert '"setup/status"' in script
    assert '"/setup' not in script  # never absolute (reference 0.1.10)
    assert "innerHTML" not in script
    async with await connector.request(
        "GET", "/js/beeflow-setup.js", headers={"If-None-Match": etag}
    ) as resp:
        assert resp.status == 304
    async with await connector.request("HEAD", "/js/beeflow-setup.js") as resp:
        assert resp.status == 200


# ------------------------------------------------------------------ status


async def test_status(connector_factory: ConnectorFactory) -> None:
    calls: list[str] = []

    def customise(app: web.Application) -> None:
        with_hook(calls)(app)
        app[TUNNEL_STATUS] = lambda: {"mode": "legacy", "advice": "tunnel-advice"}
        app[HEALTH]["probe-me"] = lambda trusted: {"trusted": trusted}

    running = await connector_factory(customise=customise)
    status = await get_status(running)
    assert status["envOverridden"] is False
    assert status["envApiBaseUrl"] is None
    assert status["active"] == CLOUD_URL
    assert status["activeSource"] == "default"
    assert status["chosen"] is None
    assert status["cloudUrl"] == CLOUD_URL
    assert status["defaults"]["selfHostedHint"] == "http://bee-flow-server:3001"
    transport = status["transport"]
    assert transport["mode"] == "legacy"
    assert transport["streaming"] is False
    assert transport["note"] == LEGACY_NOTE
    assert "whole" in transport["note"]
    assert "HaRP" in transport["note"]
    assert transport["tunnel"] == {"mode": "legacy", "advice": "tunnel-advice"}
    assert status["tenant"]["status"] == "ok"
    assert status["tenant"]["fingerprint"] == fingerprint(TENANT_KEY)
    assert status["health"]["probe-me"] == {"trusted": True}
    assert status["rebootstrap"] == {"state": "idle"}
    raw = json.dumps(status)
    assert TENANT_KEY not in raw
    assert SECRET not in raw


async def test_status_in_harp_mode(connector_factory: ConnectorFactory) -> None:
    running = await connector_factory(HP_SHARED_KEY="shared-key-x", HP_FRP_ADDRESS="127.0.0.1")
    transport = (await get_status(running))["transport"]
    assert transport["mode"] == "harp"
    assert transport["streaming"] is True
    assert "stream" in transport["note"]


async def test_status_env_locked(connector_factory: ConnectorFactory) -> None:
    running = await connector_factory(BEEFLOW_API_BASE_URL="http://bee.internal:3001/")
    status = await get_status(running)
    assert status["envOverridden"] is True
    assert status["envApiBaseUrl"] == "http://bee.internal:3001"
    assert status["activeSource"] == "env"


# ------------------------------------------------------------------ test connection


async def test_probe_ok(connector: RunningConnector, health: HealthServer) -> None:
    status, body = await post(connector, "/setup/test", {"apiBaseUrl": str(health.url) + "/"})
    assert status == 200
    assert body["ok"] is True
    assert body["status"] == 200
    # The service's health is {status, timestamp, appVersion, otel}: appVersion is its build.
    assert body["appVersion"] == "9f8e7d6"
    assert "version" not in body
    assert "tier" not in body
    assert body["url"] == str(health.url) + "/api/health"
    assert [path for path, _ in health.seen] == ["/api/health"]


async def test_probe_sends_nothing_of_ours(
    connector: RunningConnector, health: HealthServer
) -> None:
    await post(
        connector,
        "/setup/test",
        {"url": str(health.url)},
        headers={"Cookie": "nc_session=abc", "Authorization": "Basic dXNlcjpwdw=="},
    )
    ((_, headers),) = health.seen
    for name in ("AUTHORIZATION-APP-API", "Authorization", "Cookie", "EX-APP-ID"):
        assert name not in headers
    flat = json.dumps(dict(headers))
    assert SECRET not in flat
    assert TENANT_KEY not in flat
    assert "abc" not in flat


@pytest.mark.parametrize(
    ("mode", "code", "status"),
    [("error", "unhealthy", 503), ("redirect", "redirect", 302)],
)
async def test_probe_failures(
    connector: RunningConnector, health: HealthServer, mode: str, code: str, status: int
) -> None:
    health.mode = mode
    http, body = await post(connector, "/setup/test", {"apiBaseUrl": str(health.url)})
    assert http == 200
    assert body["ok"] is False
    assert body["code"] == code
    assert body["status"] == status
    # A redirect is reported, never followed.
    assert [path for path, _ in health.seen] == ["/api/health"]


async def test_probe_unreachable(connector: RunningConnector, health: HealthServer) -> None:
    url = str(health.url)
    await health.stop()
    http, body = await post(connector, "/setup/test", {"apiBaseUrl": url})
    assert http == 200
    assert body["ok"] is False
    assert body["code"] == "unreachable"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://169.254.169.254", "blocked_host"),
        ("http://[::ffff:169.254.169.254]:80", "blocked_host"),
        ("http://metadata.google.internal", "blocked_host"),
        ("http://2852039166", "blocked_host"),
        ("ftp://127.0.0.1", "bad_scheme"),
        ("http://a:b@127.0.0.1", "credentials_in_url"),
        ("", "missing_url"),
    ],
)
async def test_probe_refuses_bad_urls(connector: RunningConnector, url: str, code: str) -> None:
    http, body = await post(connector, "/setup/test", {"apiBaseUrl": url})
    assert http == 400
    assert body["code"] == code


async def test_probe_cloud_mode_uses_cloud_url(connector: RunningConnector) -> None:
    """No network here: the cloud probe fails, but it targets the cloud URL."""
    http, body = await post(connector, "/setup/test", {"mode": "cloud"})
    assert http == 200
    assert body["url"] == CLOUD_URL + "/api/health"
    assert body["ok"] is False


# ------------------------------------------------------------------ save


async def test_a_save_sent_in_pieces_is_read_whole(
    connector_factory: ConnectorFactory, health: HealthServer, storage: Path
) -> None:
    """Through Nextcloud's PHP proxy the body may arrive chunked, in more than one read."""
    running = await connector_factory(BEEFLOW_TENANT_KEY="auto")
    body = json.dumps({"mode": "self-hosted", "apiBaseUrl": str(health.url) + "/"}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        yield body[:10]
        await asyncio.sleep(0.1)
        yield body[10:]

    async with await running.request(
        "POST", "/setup", user="admin", data=pieces(), headers=JSON
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["saved"]["apiBaseUrl"] == str(health.url)


async def test_save_applies_live_and_rebootstraps(
    connector_factory: ConnectorFactory, health: HealthServer, storage: Path
) -> None:
    calls: list[str] = []
    running = await connector_factory(customise=with_hook(calls), BEEFLOW_TENANT_KEY="auto")
    http, body = await post(
        running, "/setup", {"mode": "self-hosted", "apiBaseUrl": str(health.url) + "/"}
    )
    assert http == 200
    assert body["saved"]["mode"] == "self-hosted"
    assert body["saved"]["apiBaseUrl"] == str(health.url)
    assert body["active"] == str(health.url)
    assert body["activeSource"] == "setup"
    assert body["probe"]["ok"] is True
    assert body["rebootstrap"] == "started"
    assert body["restartRequired"] is False
    api_base = running.app[SERVICE_URL]
    assert str(api_base.url) == str(health.url)
    assert api_base.source == "setup"
    await until(lambda: running.app[SERVICE_URL].source == "setup" and bool(calls))
    assert calls == [str(health.url)]  # the re-bootstrap saw the new URL
    path = storage / "setup-config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["apiBaseUrl"] == str(health.url)
    assert saved["mode"] == "self-hosted"
    status = await get_status(running)
    assert status["active"] == str(health.url)
    assert status["chosen"]["apiBaseUrl"] == str(health.url)
    await until(lambda: status_state(running) == "done")


def status_state(running: RunningConnector) -> str:

    rb = running.app[STATE].rebootstrap
    return rb.state if rb is not None else "none"


async def test_save_during_a_rebootstrap_queues_one_more(
    connector_factory: ConnectorFactory, health: HealthServer
) -> None:
    calls: list[str] = []
    gate = asyncio.Event()
    running = await connector_factory(customise=with_hook(calls, gate), BEEFLOW_TENANT_KEY="auto")
    first = {"mode": "self-hosted", "apiBaseUrl": str(health.url)}
    _, body = await post(running, "/setup", first)
    assert body["rebootstrap"] == "started"
    await until(lambda: len(calls) == 1)
    second = {"mode": "self-hosted", "apiBaseUrl": str(health.url) + "/v2"}
    _, body = await post(running, "/setup", second)
    assert body["rebootstrap"] == "queued"
    _, body = await post(running, "/setup", first)
    assert body["rebootstrap"] == "queued"
    gate.set()
    await until(lambda: status_state(running) == "done" and len(calls) == 2)
    assert calls == [str(health.url), str(health.url)]  # one more run, with the newest URL


async def test_save_without_rebootstrap_hook(
    connector_factory: ConnectorFactory, health: HealthServer
) -> None:
    running = await connector_factory(customise=without_hook, BEEFLOW_TENANT_KEY="auto")
    http, body = await post(
        running, "/setup", {"mode": "self-hosted", "apiBaseUrl": str(health.url)}
    )
    assert http == 200
    assert body["rebootstrap"] == "unavailable"
    assert (await get_status(running))["rebootstrap"]["state"] == "unavailable"


async def test_env_tenant_key_is_not_rebootstrapped(
    connector_factory: ConnectorFactory, health: HealthServer
) -> None:
    calls: list[str] = []
    running = await connector_factory(customise=with_hook(calls))  # BEEFLOW_TENANT_KEY set
    http, body = await post(
        running, "/setup", {"mode": "self-hosted", "apiBaseUrl": str(health.url)}
    )
    assert http == 200
    assert body["rebootstrap"] == "env_key"
    assert str(running.app[SERVICE_URL].url) == str(health.url)
    assert calls == []  # no task was started at all


async def test_real_tenant_hook_is_wired(
    connector_factory: ConnectorFactory, health: HealthServer
) -> None:
    """With the tenant's own rotation (no test hook), a save starts it."""
    running = await connector_factory(BEEFLOW_TENANT_KEY="auto")
    hook = running.app[STATE].rebootstrap
    assert hook is not None
    assert hook.hook == running.app[ROTATION].rebootstrap
    http, body = await post(
        running, "/setup", {"mode": "self-hosted", "apiBaseUrl": str(health.url)}
    )
    assert http == 200
    assert body["rebootstrap"] == "started"
    await until(lambda: status_state(running) in ("done", "failed"))


async def test_failing_rebootstrap_is_reported(
    connector_factory: ConnectorFactory, health: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    def customise(app: web.Application) -> None:
        async def broken() -> None:
            raise RuntimeError("bootstrap refused by service")

        app[STATE].rebootstrap = Rebootstrap(broken)

    running = await connector_factory(customise=customise, BEEFLOW_TENANT_KEY="auto")
    await post(running, "/setup", {"mode": "self-hosted", "apiBaseUrl": str(health.url)})
    await until(lambda: status_state(running) == "failed")
    rb = (await get_status(running))["rebootstrap"]
    assert rb["state"] == "failed"
    assert "bootstrap refused" in rb["error"]


async def test_save_cloud(connector: RunningConnector, storage: Path) -> None:
    http, body = await post(connector, "/setup", {"mode": "cloud", "apiBaseUrl": "http://ignored"})
    assert http == 200
    assert body["active"] == CLOUD_URL
    assert body["probe"]["ok"] is False  # no network in tests
    assert json.loads((storage / "setup-config.json").read_text())["mode"] == "cloud"


async def test_save_to_an_unreachable_server_is_saved_with_the_failed_probe(
    connector: RunningConnector, health: HealthServer
) -> None:
    url = str(health.url)
    await health.stop()
    http, body = await post(connector, "/setup", {"mode": "self-hosted", "apiBaseUrl": url})
    assert http == 200
    assert body["active"] == url
    assert body["probe"]["code"] == "unreachable"


async def test_env_locked_refuses_changes(
    connector_factory: ConnectorFactory, health: HealthServer, storage: Path
) -> None:
    calls: list[str] = []
    running = await connector_factory(
        BEEFLOW_API_BASE_URL="http://pinned:3001", customise=with_hook(calls)
    )
    for body in ({"mode": "self-hosted", "apiBaseUrl": str(health.url)}, {"mode": "cloud"}):
        http, answer = await post(running, "/setup", body)
        assert http == 409
        assert answer["code"] == "env_locked"
    assert str(running.app[SERVICE_URL].url) == "http://pinned:3001"
    assert not (storage / "setup-config.json").exists()
    assert calls == []
    # Testing a connection stays possible.
    http, answer = await post(running, "/setup/test", {"apiBaseUrl": str(health.url)})
    assert http == 200
    assert answer["ok"] is True


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"mode": "moon", "apiBaseUrl": "http://127.0.0.1:1"}, "invalid_mode"),
        ({"apiBaseUrl": "http://127.0.0.1:1"}, "invalid_mode"),
        ({"mode": "custom", "apiBaseUrl": "http://127.0.0.1:1"}, "invalid_mode"),
        ({"mode": "self-hosted"}, "missing_url"),
        ({"mode": "self-hosted", "apiBaseUrl": "http://169.254.169.254"}, "blocked_host"),
        ({"mode": "self-hosted", "apiBaseUrl": "http://instance-data"}, "blocked_host"),
        ({"mode": "self-hosted", "apiBaseUrl": "file:///etc/passwd"}, "bad_scheme"),
        ([1, 2], "invalid_json"),
        ("text", "invalid_json"),
    ],
)
async def test_save_refuses_bad_input(
    connector: RunningConnector, storage: Path, body: Any, code: str
) -> None:
    http, answer = await post(connector, "/setup", body)
    assert http == 400
    assert answer["code"] == code
    assert not (storage / "setup-config.json").exists()
    assert connector.app[SERVICE_URL].source == "default"


async def test_save_requires_json(connector: RunningConnector) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with await connector.request(
        "POST", "/setup", user="admin", data="mode=cloud", headers=form
    ) as resp:
        assert resp.status == 415
        assert (await resp.json())["code"] == "json_required"
    async with await connector.request(
        "POST", "/setup", user="admin", data="{nope", headers=JSON
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "invalid_json"
    async with await connector.request(
        "POST", "/setup", user="admin", data=b"{" + b" " * 20000 + b"}", headers=JSON
    ) as resp:
        assert resp.status == 413


async def test_cross_site_writes_blocked(connector: RunningConnector, storage: Path) -> None:
    for path in ("/setup", "/setup/test"):
        http, body = await post(
            connector, path, {"mode": "cloud"}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert http == 403
        assert body["code"] == "cross_site_request_blocked"
    assert not (storage / "setup-config.json").exists()
    http, _ = await post(
        connector, "/setup", {"mode": "cloud"}, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert http == 200


async def test_unwritable_storage(
    connector_factory: ConnectorFactory, tmp_path: Path, health: HealthServer
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    running = await connector_factory(APP_PERSISTENT_STORAGE=str(blocker))
    http, body = await post(
        running, "/setup", {"mode": "self-hosted", "apiBaseUrl": str(health.url)}
    )
    assert http == 500
    assert body["code"] == "setup_not_saved"
    assert running.app[SERVICE_URL].source == "default"


# ------------------------------------------------------------------ rate limits


async def test_rate_limited_per_user(
    connector: RunningConnector, fake_nc: FakeNextcloud, health: HealthServer
) -> None:
    fake_nc.add_user("root2", display_name="Second Admin", groups=["admin"])
    body = {"apiBaseUrl": str(health.url)}
    for _ in range(20):
        http, _answer = await post(connector, "/setup/test", body)
        assert http == 200
    http, answer = await post(connector, "/setup/test", body)
    assert http == 429
    assert answer["code"] == "rate_limited"
    assert 1 <= answer["retryAfter"] <= 60
    http, _answer = await post(connector, "/setup/test", body, user="root2")
    assert http == 200
    assert len(health.seen) == 21


async def test_save_rate_limit(connector: RunningConnector) -> None:
    for _ in range(10):
        http, _ = await post(connector, "/setup", {"mode": "cloud"})
        assert http == 200
    async with await connector.request(
        "POST", "/setup", user="admin", data='{"mode":"cloud"}', headers=JSON
    ) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) > 60


# ------------------------------------------------------------------ start-up


async def test_saved_choice_applied_at_start(
    connector_factory: ConnectorFactory, storage: Path
) -> None:
    (storage / "setup-config.json").write_text(
        json.dumps({"mode": "self-hosted", "apiBaseUrl": "http://bee.lan:3001", "savedAt": 1})
    )
    running = await connector_factory()
    assert str(running.app[SERVICE_URL].url) == "http://bee.lan:3001"
    assert running.app[SERVICE_URL].source == "setup"
    assert (await get_status(running))["chosen"]["apiBaseUrl"] == "http://bee.lan:3001"


async def test_env_wins_over_saved_choice(
    connector_factory: ConnectorFactory, storage: Path
) -> None:
    (storage / "setup-config.json").write_text(
        json.dumps({"mode": "self-hosted", "apiBaseUrl": "http://bee.lan:3001"})
    )
    running = await connector_factory(BEEFLOW_API_BASE_URL="http://pinned:3001")
    assert str(running.app[SERVICE_URL].url) == "http://pinned:3001"
    assert running.app[SERVICE_URL].source == "env"


@pytest.mark.parametrize(
    "content",
    [
        "{broken",
        json.dumps({"mode": "self-hosted", "apiBaseUrl": "http://169.254.169.254"}),
        json.dumps({"mode": "self-hosted", "apiBaseUrl": "gopher://x"}),
    ],
)
async def test_bad_saved_choice_ignored(
    connector_factory: ConnectorFactory,
    storage: Path,
    caplog: pytest.LogCaptureFixture,
    content: str,
) -> None:
    (storage / "setup-config.json").write_text(content)
    with caplog.at_level(logging.WARNING, logger="beeflow.setup"):
        running = await connector_factory()
    assert running.app[SERVICE_URL].source == "default"
    assert str(running.app[SERVICE_URL].url) == CLOUD_URL
    assert any("ignoring" in r.getMessage() for r in caplog.records)


async def test_no_secret_in_any_answer_or_log(
    connector: RunningConnector, health: HealthServer, caplog: pytest.LogCaptureFixture
) -> None:
    bodies: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for method, path, body in [
            ("GET", "/setup", None),
            ("GET", "/setup/status", None),
            ("POST", "/setup/test", {"apiBaseUrl": str(health.url)}),
            ("POST", "/setup", {"mode": "self-hosted", "apiBaseUrl": str(health.url)}),
            ("POST", "/setup", {"mode": "self-hosted", "apiBaseUrl": "http://169.254.169.254"}),
        ]:
            data = json.dumps(body) if body is not None else None
            async with await connector.request(
                method, path, user="admin", data=data, headers=JSON
            ) as resp:
                bodies.append(await resp.text())
                bodies.append(json.dumps(dict(resp.headers)))
    text = "\n".join(bodies) + "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in text
    assert TENANT_KEY not in text
