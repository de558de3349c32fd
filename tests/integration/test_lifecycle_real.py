"""The connector's lifecycle against the real Nextcloud 32.0.1 / AppAPI 32.0.0: registration from
appinfo/info.xml with `--wait-finish`, restarts before registration and the brute-force counter,
the heartbeat's detail rule through the PHP proxy, the UI registrations as AppAPI stores them,
disable and enable, and an /init that never reached the connector."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import APP_ID, RESTARTS, Lane
from tests.integration.exapp import StandIn, json_info, wait_until
from tests.integration.server import kill_group

pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(300)]

NC_MAX_ATTEMPTS = 10  # the throttler refuses an IP with MORE attempts than this in 30 minutes
# Fields of the heartbeat that only an administrator (or doctor, inside the container) may see.
DETAIL_KEYS = ("fingerprint", "organizationName", "instanceId", "progress", "source")


def _keys(value: Any) -> set[str]:
    """Every key anywhere in a JSON value."""
    if isinstance(value, dict):
        out = set(value)
        for item in value.values():
            out |= _keys(item)
        return out
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value)) if value else set()
    return set()


async def _get_json(session: aiohttp.ClientSession, url: Any, **kw: Any) -> tuple[int, Any]:
    async with session.get(url, **kw) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


def test_registration_from_the_manifest_reaches_progress_100(lane: Lane) -> None:
    """`occ app_api:app:register --json-info <appinfo/info.xml> --wait-finish` ends, and AppAPI
    stores init 100, no error, the app enabled, and every route of the manifest."""
    assert lane.registration is not None
    assert lane.registration.returncode == 0, lane.registration.output
    row = lane.nc.ex_app(APP_ID)
    assert row is not None
    assert row["enabled"] is True
    assert row["status"]["init"] == 100
    assert row["status"]["error"] == ""
    assert lane.connector is not None
    lane.connector.wait_line("init pipeline finished (init)")
    listed = lane.nc.occ("app_api:app:list").stdout
    assert APP_ID in listed


def test_restarts_before_registration_stay_under_the_lockout(lane: Lane) -> None:
    """Issue 19 (3b): the manual-install order with ten restarts before registering. Each refused
    boot probe adds 2 attempts to Nextcloud's counter; the connector keeps its count across
    restarts and stops probing before the counter passes the threshold, so registration still
    works and leaves the counter at 0."""
    phase = lane.restarts
    assert len(phase.attempts_after_each) == RESTARTS
    assert not phase.reset_before_register, phase.attempts_after_each
    assert max(phase.attempts_after_each) <= NC_MAX_ATTEMPTS, phase.attempts_after_each
    # The count grows by 2 per probe, then stops: the later restarts did not call at all.
    assert phase.attempts_after_each[:2] == [2, 4], phase.attempts_after_each
    assert phase.attempts_after_each[-1] == phase.attempts_after_each[-2]
    assert any("Not probing Nextcloud at boot" in line for line in phase.boot_lines)
    assert lane.registration is not None
    assert lane.registration.returncode == 0
    # The first accepted login (same app, same empty user) cleared the attempts.
    assert lane.registration.attempts_after == 0


async def test_the_heartbeat_shows_details_only_to_administrators(lane: Lane) -> None:
    """Issue 19 (3a): AppAPI adds the secret with an empty user to an anonymous request through
    its proxy. Such a request (and bob's) gets the states; an administrator and a process in the
    container (doctor) get the details; AppAPI's own liveness check gets {"status":"ok"}."""
    url = lane.base / "heartbeat"
    async with aiohttp.ClientSession() as session:
        status, anonymous = await _get_json(session, url)
        assert status == 200, anonymous
        assert anonymous["status"] == "ok"
        assert anonymous["bootstrap"]["state"] == "ok"
        assert not _keys(anonymous) & set(DETAIL_KEYS), anonymous

        status, as_bob = await _get_json(session, url, headers=lane.nc.bob)
        assert status == 200
        assert not _keys(as_bob) & set(DETAIL_KEYS), as_bob

        status, as_admin = await _get_json(session, url, headers=lane.nc.admin)
        assert status == 200
        assert as_admin["bootstrap"]["organizationName"] == lane.service.organization.name
        assert "fingerprint" in as_admin["bootstrap"]
        assert as_admin["init"]["progress"] == 100

        # doctor's call: inside the container, with the secret, not through any proxy.
        status, local = await _get_json(
            session, lane.direct / "heartbeat", headers=lane.appapi_headers()
        )
        assert status == 200
        assert "fingerprint" in local["bootstrap"]

        # AppAPI's own liveness check: no credentials at all.
        status, plain = await _get_json(session, lane.direct / "heartbeat")
        assert (status, plain["status"]) == (200, "ok")
        assert not _keys(plain) & set(DETAIL_KEYS)


async def test_top_menu_and_script_are_registered_in_appapi(lane: Lane) -> None:
    """What the connector registered at progress 60, as AppAPI stores it, and the embedded page
    Nextcloud renders for bob with the connector's script in it."""
    ocs = lane.nc.url / "ocs/v1.php/apps/app_api/api/v1/ui"
    async with aiohttp.ClientSession(headers=lane.appapi_headers()) as session:
        status, menu = await _get_json(
            session, (ocs / "top-menu").with_query(name="main", format="json")
        )
        assert status == 200
        assert menu["ocs"]["meta"]["statuscode"] == 100, menu
        entry = menu["ocs"]["data"]
        assert (entry["appid"], entry["name"]) == (APP_ID, "main")
        assert (entry["display_name"], entry["icon"], entry["admin_required"]) == (
            "Bee Flow",
            "img/app.svg",
            0,
        )
        query = {"type": "top_menu", "name": "main", "path": "js/embed", "format": "json"}
        status, script = await _get_json(session, (ocs / "script").with_query(query))
        assert script["ocs"]["meta"]["statuscode"] == 100, script
        assert script["ocs"]["data"]["path"] == "js/embed"
    page = lane.nc.url / "index.php/apps/app_api/embedded" / APP_ID / "main"
    async with (
        aiohttp.ClientSession() as session,
        session.get(page, headers=lane.nc.bob) as resp,
    ):
        html = await resp.text()
        assert resp.status == 200
    assert f"/apps/app_api/proxy/{APP_ID}/js/embed.js" in html


async def test_disable_and_enable(lane: Lane) -> None:
    """`occ app_api:app:disable` calls PUT /enabled?enabled=0 and the proxy stops serving the
    app (404); `enable` calls heartbeat and PUT /enabled?enabled=1 and it serves again."""
    assert lane.connector is not None
    since = lane.connector.mark()
    url = lane.base / "api/session-token"  # the service's: 200 only for an accepted JWT
    bob = lane.nc.bob
    async with aiohttp.ClientSession() as session:
        lane.nc.occ("app_api:app:disable", APP_ID)
        lane.connector.wait_line("AppAPI set enabled=0", since=since)
        reached = len(lane.service.service.find("/api/session-token"))
        async with session.get(url, headers=bob) as resp:
            assert resp.status == 404
        assert len(lane.service.service.find("/api/session-token")) == reached
        lane.nc.occ("app_api:app:enable", APP_ID)
        lane.connector.wait_line("AppAPI set enabled=1", since=since)
        async with session.get(url, headers=bob) as resp:
            assert resp.status == 200, await resp.text()
        (served,) = lane.service.service.find("/api/session-token")[reached:]
        assert (served.auth, served.user_email) == ("ok", "bob@example.com")
    row = lane.nc.ex_app(APP_ID)
    assert row is not None
    assert row["enabled"] is True


async def test_a_boot_run_on_an_installed_app_changes_nothing_in_appapi(lane: Lane) -> None:
    """The boot run reports its progress (for an AppAPI still waiting for init); on an app whose
    init is already 100 AppAPI ignores the reports: no error, still enabled, no enable round."""
    before = lane.nc.ex_app(APP_ID)
    assert before is not None
    assert before["status"]["init"] == 100
    lane.stop_connector()
    connector = lane.start_connector()
    connector.wait_line("init pipeline finished (boot)")
    after = lane.nc.ex_app(APP_ID)
    assert after is not None
    assert after["enabled"] is True
    assert (after["status"]["init"], after["status"]["error"]) == (100, "")
    assert after["status"]["init_start_time"] == before["status"]["init_start_time"]
    assert not connector.find("AppAPI set enabled")  # AppAPI ran no enable round
    assert not connector.find("init progress")  # every report was accepted


def test_an_init_the_connector_never_got_still_reaches_100(lane: Lane) -> None:
    """Issue 19 (3c): AppAPI sent /init to a connector that went away right after answering it
    (a crash, a redeploy). AppAPI now waits at progress 0 with `--wait-finish`; the connector
    that starts next must report its progress through to 100, or the install hangs forever."""
    lane.stop_connector()
    lane.nc.occ("app_api:app:unregister", APP_ID, "--force")
    stand_in = StandIn(lane.port)
    register = lane.nc.occ_background(
        "app_api:app:register",
        APP_ID,
        "manual_install",
        "--json-info",
        json.dumps(json_info(lane.secret, lane.port)),
        "--wait-finish",
    )
    try:
        assert stand_in.init_seen.wait(60), stand_in.calls
        stand_in.stop()
        row = lane.nc.ex_app(APP_ID)
        assert row is not None
        assert row["status"]["init"] == 0  # AppAPI waits
        lane.connector = None
        connector = lane.start_connector()
        try:
            output, _ = register.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            kill_group(register)
            pytest.fail(f"--wait-finish never ended\n--- connector:\n{connector.text}")
        assert register.returncode == 0, output
        connector.wait_line("init pipeline finished (boot)")
        wait_until(
            lambda: (lane.nc.ex_app(APP_ID) or {}).get("status", {}).get("init") == 100,
            10,
            "init 100",
        )
    finally:
        kill_group(register)
        stand_in.stop()
