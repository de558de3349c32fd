"""The real /init pipeline with the real phases, against the fake Nextcloud in its personalities:
progress 25/60/100 as the fake records it, UI registration, no events_listener on any version
(it never delivered user/group events), 409 idempotence, the 997 warm-up, and a failure reported
as progress 0 with its text."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web

from beeflow.nextcloud import ui
from beeflow.tenant.state import TENANT
from tests.conftest import AutoFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service_control import PROVISIONED_KEY, ServiceControl
from tests.tenant.helpers import heartbeat, progress_values, run_init, wait_for

LISTENER = "/ocs/v1.php/apps/app_api/api/v1/events_listener"


@pytest.mark.parametrize("nc_personality", ["31", "32", "33.0.0", "34"])
async def test_init_reports_25_60_100_and_registers_per_version(
    auto_connector: AutoFactory,
    fake_nc: FakeNextcloud,
    control: ServiceControl,
    nc_personality: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    assert progress_values(fake_nc) == [25, 60, 80, 100]
    assert not any(p.get("error") for p in fake_nc.progress)
    # progress 100 made Nextcloud call /heartbeat and /enabled while holding its answer
    assert [(c.method, c.path, c.status) for c in fake_nc.callbacks] == [
        ("GET", "/heartbeat", 200),
        ("PUT", "/enabled?enabled=1", 200),
    ]
    assert conn.app[TENANT].key == PROVISIONED_KEY
    assert list(fake_nc.top_menu) == ["main"]
    assert len(fake_nc.scripts) == 1
    top = fake_nc.calls_to("/ocs/v1.php/apps/app_api/api/v1/ui/top-menu", "POST")
    script = fake_nc.calls_to("/ocs/v1.php/apps/app_api/api/v1/ui/script", "POST")
    assert [c.json() for c in top] == [ui.TOP_MENU_BODY]
    assert [c.json() for c in script] == [ui.SCRIPT_BODY]
    assert all(c.user == "" and c.auth == "ok" for c in top + script)

    # Review P3-6: AppAPI's events_listener only ever delivered node_event (contract 6.6), so
    # registering user/group classes (accepted on 31, refused on 32+) promised nothing real.
    assert fake_nc.calls_to(LISTENER) == []
    assert fake_nc.events_listeners == {}
    body = await heartbeat(conn, trusted=True)
    assert body["events"]["listeners"] == "not_used"
    assert "periodic reconciliation" in body["events"]["reason"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    anonymous = await heartbeat(conn, trusted=None)
    assert anonymous["events"] == {"listeners": body["events"]["listeners"]}
    assert fake_nc.failure_count_total == 0


@pytest.mark.parametrize("nc_personality", ["31", "32"])
async def test_second_init_is_idempotent_through_409(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, nc_personality: str
) -> None:
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    await run_init(conn, fake_nc)
    assert progress_values(fake_nc) == [25, 60, 80, 100, 25, 60, 80, 100]
    assert not any(p.get("error") for p in fake_nc.progress)
    top = fake_nc.calls_to("/ocs/v1.php/apps/app_api/api/v1/ui/top-menu", "POST")
    assert len(top) == 2  # the second answered 409 in-band and counted as done
    assert len(fake_nc.top_menu) == 1
    assert len(fake_nc.scripts) == 1
    body = await heartbeat(conn, trusted=True)
    assert body["ui"] == {"top-menu": "registered", "embed script": "registered"}
    assert fake_nc.calls_to(LISTENER) == []


@pytest.mark.parametrize("nc_options", [{"warmup_seconds": 1.2}])
async def test_997_warm_up_during_init_is_waited_out(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await auto_connector()
    await run_init(conn, fake_nc, timeout=20)
    assert progress_values(fake_nc) == [25, 60, 80, 100]
    refused = [c for c in fake_nc.calls if c.auth == "disabled"]
    assert refused  # AppAPI really refused during the warm-up ...
    assert fake_nc.top_menu  # ... and the registration went through afterwards
    assert fake_nc.failure_count_total == 0  # a registered app's refusals do not count
    assert conn.app[TENANT].key == PROVISIONED_KEY


async def _refuse_top_menu(request: web.Request) -> web.Response:
    return web.json_response(
        {"ocs": {"meta": {"status": "failure", "statuscode": 400, "message": "Bad icon"}}},
        status=200,
    )


@pytest.mark.parametrize(
    "nc_options",
    [{"extra_routes": [web.post("/ocs/v1.php/apps/app_api/api/v1/ui/top-menu", _refuse_top_menu)]}],
)
async def test_a_refused_registration_reports_progress_0_with_the_error(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    last: dict[str, Any] = fake_nc.progress[-1]
    assert last["progress"] == 0
    assert "top-menu" in last["error"]
    assert "OCS 400" in last["error"]
    assert "Bad icon" in last["error"]
    assert 100 not in progress_values(fake_nc)
    body = await heartbeat(conn, trusted=True)
    assert body["ui"]["top-menu"] == "failed"
    assert body["init"]["state"] == "failed"


async def test_boot_run_provisions_registers_and_reports_progress(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud
) -> None:
    """The pipeline also runs once at boot (after one accepted probe), idempotently, and reports
    its progress: AppAPI may be waiting for an init whose /init never reached us (issue 19)."""
    conn = await auto_connector(run_at_boot=True)
    await wait_for(lambda: bool(fake_nc.scripts) and len(fake_nc.progress) == 4)
    assert conn.app[TENANT].key == PROVISIONED_KEY
    assert list(fake_nc.top_menu) == ["main"]
    assert [p["progress"] for p in fake_nc.progress] == [25, 60, 80, 100]
