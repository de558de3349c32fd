"""Setup checks against the fake AppAPI: on 32 the opt-in route does not exist (OCS 998, as the
real 32.0.1 answers) and the install goes on; on 35 the app opts in and the fake runs AppAPI's
own refresh (ExAppSetupCheckRefreshService: 5 s, numeric Content-Length <= 256 KiB, status
warning/error only, links http(s) only) over `GET /setup_checks`: a connected connector reports
nothing, each problem its issue with a link to the setup page."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from beeflow.config import Config
from beeflow.health import TUNNEL_STATUS, provide
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.nextcloud.links import setup_page_url
from beeflow.nextcloud.setup_checks import OPT_IN_PATH, SETUP_CHECKS
from beeflow.tenant.state import TENANT
from tests.conftest import AutoFactory, ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.helpers import RunningConnector, appapi_headers
from tests.nextcloud.helpers import settled
from tests.tenant.helpers import heartbeat, run_init

SETUP = "/index.php/apps/app_api/proxy/bee_flow/setup"


async def fetch(conn: RunningConnector, **kw: Any) -> tuple[int, dict[str, str], Any]:
    async with await conn.request("GET", "/setup_checks", **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, dict(resp.headers), body


async def test_on_32_the_route_exists_and_the_opt_in_is_skipped(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    assert not any(p.get("error") for p in fake_nc.progress)
    (call,) = fake_nc.calls_to(OPT_IN_PATH, "POST")
    assert call.auth == "ok"
    assert conn.app[SETUP_CHECKS].opt_in == "unsupported"
    body = await heartbeat(conn, trusted=True)
    assert body["setupChecks"]["optIn"] == "unsupported"
    status, headers, checks = await fetch(conn, user="")
    assert status == 200
    assert headers["Content-Length"].isdigit()
    assert checks["tenant"]["status"] == "success"


@pytest.mark.parametrize("nc_personality", ["35"])
async def test_on_35_a_connected_connector_reports_nothing(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, nc_personality: str
) -> None:
    fake_nc.surfaces.app_config["core"] = {"lastcron": str(int(time.time()) - 60)}
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    assert fake_nc.surfaces.setup_checks_opted_in
    assert conn.app[SETUP_CHECKS].opt_in == "opted_in"
    assert await fake_nc.surfaces.refresh_setup_checks() == []
    (probe,) = fake_nc.surfaces.setup_check_probes
    assert probe["status"] == 200
    assert probe["seconds"] < 5
    assert int(probe["headers"]["content-length"]) < 262144
    facts = conn.app[SETUP_CHECKS].facts
    assert facts.webhook_listeners is True
    assert facts.admin_uid == "admin"


@pytest.mark.parametrize("nc_personality", ["35"])
async def test_no_tenant_key_is_an_error_with_the_setup_link(
    auto_connector: AutoFactory,
    fake_nc: FakeNextcloud,
    service: FakeService,
    nc_personality: str,
) -> None:
    service.control.provisioning = "pairing_only"  # the bootstrap is refused
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    assert conn.app[TENANT].key is None
    issues = await fake_nc.surfaces.refresh_setup_checks()
    tenant = [i for i in issues if "Not connected" in i.text]
    assert len(tenant) == 1
    assert tenant[0].severity == "error"
    assert "pairing" in tenant[0].text.lower()
    assert tenant[0].link_url == f"{fake_nc.url}{SETUP}"
    assert tenant[0].link_label == "Open the Bee Flow setup page"


@pytest.mark.parametrize("nc_personality", ["35"])
async def test_late_cron_and_a_streak_of_refused_signatures_are_warnings(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, nc_personality: str
) -> None:
    fake_nc.surfaces.app_config["core"] = {"lastcron": str(int(time.time()) - 7200)}
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    for _ in range(5):
        headers = {"X-Beeflow-Sig": f"{int(time.time())}.{'0' * 64}", "X-Beeflow-NC-Uid": ""}
        async with await conn.request(
            "GET", "/nc/ocs/v2.php/cloud/capabilities", headers=headers
        ) as resp:
            assert resp.status == 401
    issues = await fake_nc.surfaces.refresh_setup_checks()
    assert len(issues) == 2
    assert all(i.severity == "warning" for i in issues)
    assert any("background jobs last ran" in i.text for i in issues)
    assert any("were refused" in i.text and i.link_url.endswith(SETUP) for i in issues)


async def test_the_facts_behind_the_warnings(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    checks = conn.app[SETUP_CHECKS]
    checks.facts.webhook_listeners = False
    checks.facts.last_cron = 0
    checks.php_proxy_seen = True
    _, _, body = await fetch(conn, user="")
    assert body["webhook_listeners"]["status"] == "warning"
    assert "occ app:enable webhook_listeners" in body["webhook_listeners"]["text"]
    assert body["background_jobs"]["status"] == "warning"
    assert "last ran never" in body["background_jobs"]["text"]
    assert body["deploy_daemon"]["status"] == "warning"
    assert "Docker Socket Proxy" in body["deploy_daemon"]["text"]


async def test_a_php_proxy_request_marks_the_legacy_daemon(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await auto_connector()
    _, _, before = await fetch(conn, user="")
    assert before["deploy_daemon"]["status"] == "success"
    _, _, after = await fetch(conn, user="", headers={"x-origin-ip": "10.0.0.9"})
    assert after["deploy_daemon"]["status"] == "warning"


async def test_who_may_ask(auto_connector: AutoFactory, fake_nc: FakeNextcloud) -> None:
    conn = await auto_connector()
    status, _, body = await fetch(conn)
    assert (status, body["code"]) == (401, "appapi_headers_missing")
    status, _, body = await fetch(conn, user="alice")
    assert (status, body["code"]) == (403, "admin_required")
    status, _, _ = await fetch(conn, user="admin")
    assert status == 200
    status, _, body = await fetch(conn, headers=appapi_headers("", secret="wrong"))
    assert status == 401


async def test_the_refresh_stays_quiet_while_the_budget_is_paused(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    await settled(conn)
    client = conn.app[NEXTCLOUD]
    for _ in range(client.budget.limit):
        client.budget.record_failure("test")
    before = len(fake_nc.calls)
    await conn.app[SETUP_CHECKS].refresh()
    assert len(fake_nc.calls) == before


async def test_the_tunnel_check_follows_frpc(connector_factory: ConnectorFactory) -> None:
    tunnel: dict[str, Any] = {"state": "retrying", "remedy": "frps refused the key"}

    def customise(app: web.Application) -> None:
        # What cli installs from the HaRP transport (the frpc supervisor's snapshot).
        app[TUNNEL_STATUS] = lambda: dict(tunnel)
        provide(app, "tunnel", lambda trusted: dict(tunnel))

    conn = await connector_factory(
        HP_SHARED_KEY="k" * 12, HP_FRP_ADDRESS="harp", customise=customise
    )
    _, _, body = await fetch(conn, user="")
    assert body["tunnel"] == {
        "status": "error",
        "text": "The FRP tunnel to HaRP is retrying: frps refused the key",
    }
    tunnel["state"] = "connected"
    _, _, body = await fetch(conn, user="")
    assert body["tunnel"]["status"] == "success"


async def test_a_failed_opt_in_is_recorded_not_fatal(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await auto_connector()
    checks = conn.app[SETUP_CHECKS]
    fake_nc.down = True  # 503 to everything
    await checks.register()
    assert checks.opt_in == "failed"


def test_setup_page_links_per_transport(make_config: Callable[..., Config]) -> None:
    legacy = make_config(BEEFLOW_NC_PUBLIC_URL="https://cloud.example.com/nc/")
    assert setup_page_url(legacy) == (
        "https://cloud.example.com/nc/index.php/apps/app_api/proxy/bee_flow/setup"
    )
    harp = make_config(HP_SHARED_KEY="k" * 12, HP_FRP_ADDRESS="harp")
    assert setup_page_url(harp) == f"{harp.nextcloud_url}/exapps/bee_flow/setup".replace(
        "//exapps", "/exapps"
    )
