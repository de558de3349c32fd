"""Where Nextcloud admins look, against the real Nextcloud 32.0.1 / AppAPI 32.0.0: the settings
form as Nextcloud's settings API shows it, the Files actions as AppAPI lists them and their
handler called through the PHP proxy, the occ commands run by `occ`, the setup-check route on a
server without setup checks, a bootstrap failure in nextcloud.log, the Studio app menus through
the service's push, and an admin's change of the service through the settings API.

The module restores what it changes: the service's faults, the connector's storage, the lane's
connector process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.service_studio import StudioApp
from tests.integration.conftest import APP_ID, TIMINGS, Lane
from tests.integration.exapp import Connector, wait_until
from tests.integration.server import free_port, kill_group
from tests.integration.service import ServiceThread

pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(300)]

OCS = "/ocs/v2.php/apps/app_api/api/v1"
FORMS = "/ocs/v2.php/settings/api/declarative/forms"
SET_VALUE = "/ocs/v2.php/settings/api/declarative/value"
STUDIO_A = "0f8fad5b-d9cb-469f-a165-70867728950e"
STUDIO_B = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
OCS_HEADERS = {"OCS-APIRequest": "true", "Accept": "application/json"}


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def rows(lane: Lane, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    uri = f"file:{lane.nc.database}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10) as db:
        return list(db.execute(sql, args).fetchall())


def no_secret(lane: Lane, text: str) -> None:
    for secret in (lane.secret, lane.tenant_key, lane.nc.env["NC_ADMIN_PASSWORD"]):
        assert secret not in text


def occ(lane: Lane, *args: str) -> subprocess.CompletedProcess[str]:
    return lane.nc.occ(*args, check=False, timeout=180)


async def as_admin(lane: Lane, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    """A call to Nextcloud's own API as its administrator (Basic auth, as a script would)."""
    headers = {**OCS_HEADERS, **lane.nc.admin}
    async with (
        aiohttp.ClientSession(base_url=str(lane.nc.url)) as session,
        session.request(method, path, headers=headers, **kw) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def our_form(lane: Lane) -> dict[str, Any]:
    status, body = await as_admin(lane, "GET", FORMS, params={"format": "json"})
    assert status == 200, body
    (form,) = [f for f in body["ocs"]["data"] if f.get("app") == APP_ID]
    return dict(form)


# ------------------------------------------------------------------ settings form


async def test_the_settings_form_is_what_nextcloud_shows(lane: Lane) -> None:
    """Nextcloud's own settings API lists the form (its validateSchema accepted it) in
    Administration -> Artificial Intelligence, with the values in force and the setup link."""
    form = await our_form(lane)
    assert (form["id"], form["section_type"], form["section_id"]) == (
        "beeflow_admin",
        "admin",
        "ai",
    )
    values = {f["id"]: f["value"] for f in form["fields"]}
    assert values == {
        "deployment_mode": "self-hosted",
        "api_base_url": str(lane.service.url).rstrip("/"),
    }
    setup = f"{lane.nc.url}/index.php/apps/app_api/proxy/{APP_ID}/setup"
    assert form["doc_url"] == setup
    assert setup in form["description"]
    assert "BEEFLOW_API_BASE_URL is set" in form["description"]  # the lane pins the URL


# ------------------------------------------------------------------ Files actions


async def test_files_actions_are_listed_and_the_handler_redirects(lane: Lane) -> None:
    listed = rows(
        lane,
        "SELECT name, display_name, action_handler, version, mime FROM oc_ex_ui_files_actions "
        "WHERE appid = ? ORDER BY name",
        APP_ID,
    )
    assert [r[:4] for r in listed] == [
        ("beeflow_ask", "Ask Bee Flow about this", "files-action/ask", "2.0"),
        ("beeflow_summarise", "Summarise with Bee Flow", "files-action/summarise", "2.0"),
    ]
    async with aiohttp.ClientSession(base_url=str(lane.nc.url)) as session:
        for name in ("beeflow_ask", "beeflow_summarise", "beeflow_routine"):
            async with session.get(
                f"{OCS}/ui/files-actions-menu",
                params={"name": name, "format": "json"},
                headers=lane.appapi_headers(),
            ) as resp:
                assert resp.status == (404 if name == "beeflow_routine" else 200), name

        # A real file of bob's, and the call AppAPI's Files plugin makes for it.
        dav = f"/remote.php/dav/files/bob/i23-notes-{time.time_ns()}.txt"
        async with session.put(dav, data=b"Minutes of Monday", headers=lane.nc.bob) as resp:
            assert resp.status in (201, 204)
        propfind = (
            '<?xml version="1.0"?><d:propfind xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns">'
            "<d:prop><oc:fileid/></d:prop></d:propfind>"
        )
        async with session.request(
            "PROPFIND", dav, data=propfind, headers={**lane.nc.bob, "Depth": "0"}
        ) as resp:
            tree = ET.fromstring(await resp.read())  # noqa: S314 - our own server's answer
        file_id = int(tree.findtext(".//{http://owncloud.org/ns}fileid") or "0")
        assert file_id > 0
        node = {
            "fileId": file_id,
            "name": dav.rsplit("/", 1)[1],
            "directory": "/",
            "mime": "text/plain",
            "permissions": 27,
            "fileType": "file",
            "userId": "bob",
        }
        async with session.post(
            f"/index.php/apps/app_api/proxy/{APP_ID}/files-action/summarise",
            json={"files": [node]},
            headers=lane.nc.bob,
        ) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 200, body
        assert body == {"redirect_handler": "main/summarise", "fileIds": [file_id]}
        # Where the browser goes next: Nextcloud's page for our entry, with our embed script.
        async with session.get(
            f"/index.php/apps/app_api/embedded/{APP_ID}/main/summarise",
            params={"fileIds": str(file_id)},
            headers=lane.nc.bob,
        ) as resp:
            page = await resp.text()
            assert resp.status == 200
        assert f"/apps/app_api/proxy/{APP_ID}/js/embed.js" in page


# ------------------------------------------------------------------ occ commands


def test_the_occ_commands_run_through_occ(lane: Lane) -> None:
    listed = occ(lane, "list", "bee_flow").stdout
    for name in ("status", "sync-users", "rotate-key", "doctor"):
        assert f"bee_flow:{name}" in listed

    done = occ(lane, "bee_flow:status")
    assert done.returncode == 0, done.stderr
    assert "Tenant:       ok" in done.stdout
    assert f"key fingerprint {fingerprint(lane.tenant_key)}" in done.stdout
    assert f"Setup page:   {lane.nc.url}/index.php/apps/app_api/proxy/{APP_ID}/setup" in done.stdout
    no_secret(lane, done.stdout)

    report = json.loads(occ(lane, "bee_flow:status", "--json").stdout)
    checks = report["health"]["setupChecks"]
    assert checks["optIn"] == "unsupported"  # Nextcloud 32 has no setup_check API
    assert checks["webhook_listeners"] is True  # read through webhook_listeners' own API
    assert checks["admin_uid"] == "admin"  # found through AppAPI's users list
    assert report["health"]["occCommands"]["bee_flow:doctor"] == "registered"

    done = occ(lane, "bee_flow:sync-users")
    assert done.returncode == 0
    assert "State:        ok" in done.stdout

    done = occ(lane, "bee_flow:rotate-key")
    assert done.returncode == 0
    assert "Nothing done." in done.stdout

    # doctor runs in the connector's own environment; when do its lines reach occ's output?
    started = time.monotonic()
    proc = lane.nc.occ_background("bee_flow:doctor")
    arrivals: list[tuple[float, str]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            arrivals.append((time.monotonic() - started, line.rstrip("\n")))
        assert proc.wait(timeout=120) == 0
    finally:
        kill_group(proc)
    text = "\n".join(line for _, line in arrivals)
    assert text.startswith("beeflow doctor ")
    assert "PASS" in text
    no_secret(lane, text)
    TIMINGS["occ_doctor_first_line"] = arrivals[0][0]
    TIMINGS["occ_doctor_last_line"] = arrivals[-1][0]


# ------------------------------------------------------------------ setup checks on 32


async def test_the_setup_checks_route_answers_as_appapi_wants(lane: Lane) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(lane.direct / "setup_checks", headers=lane.appapi_headers()) as resp,
    ):
        assert resp.status == 200
        length = resp.headers["Content-Length"]
        body = await resp.json()
    assert length.isdigit()
    assert int(length) < 256 * 1024
    assert body["tenant"]["status"] == "success"
    assert all(c["status"] in ("success", "warning", "error") for c in body.values())


# ------------------------------------------------------------------ nextcloud.log


def _log_entries(lane: Lane) -> list[dict[str, Any]]:
    path = Path(lane.nc.env["NC_DATA"]) / "nextcloud.log"
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_a_bootstrap_failure_reaches_nextcloud_log(lane: Lane) -> None:
    """A key rotation the service fails (HTTP 500): the connector's warning, with its
    remediation, is in nextcloud.log under the app's id; no secret is."""
    before = len(_log_entries(lane))
    lane.service.control.fault = (500, {"error": "Internal server error"})
    try:
        done = occ(lane, "bee_flow:rotate-key", "--confirm")
    finally:
        lane.service.control.fault = None
    assert done.returncode == 0
    assert "FAILED:" in done.stdout
    assert "The previous key stays in use." in done.stdout

    def logged() -> list[dict[str, Any]]:
        return [
            e
            for e in _log_entries(lane)[before:]
            if e.get("app") == APP_ID and "tenant bootstrap failed" in str(e.get("message"))
        ]

    wait_until(lambda: bool(logged()), 30, "the bootstrap failure in nextcloud.log")
    (entry,) = logged()[:1]
    assert entry["level"] == 2
    assert "Fix: " in entry["message"]
    no_secret(lane, json.dumps(_log_entries(lane)[before:]))
    assert fingerprint(lane.tenant_key) in occ(lane, "bee_flow:status").stdout  # key kept


# ------------------------------------------------------------------ Studio app menus


def _menu(lane: Lane) -> dict[str, str]:
    return dict(
        rows(
            lane,
            "SELECT name, display_name FROM oc_ex_ui_top_menu WHERE appid = ? AND name LIKE 'sa_%'",
            APP_ID,
        )
    )


async def test_studio_apps_become_menu_entries(lane: Lane) -> None:
    studio = lane.service.studio
    org = lane.service.organization
    key = lane.tenant_key
    callback = org.callback_url
    assert callback == f"{lane.nc.url}/index.php/apps/app_api/proxy/{APP_ID}"
    try:
        studio.apps = [StudioApp(STUDIO_A, "Invoices"), StudioApp(STUDIO_B, "Holiday planner")]
        outcome, answer = lane.service.call(studio.push(callback, key))
        assert (outcome, answer) == ("synced", {"ok": True, "added": 2, "removed": 0, "updated": 0})
        entries = _menu(lane)
        assert sorted(entries.values()) == ["Holiday planner", "Invoices"]
        assert all(len(name) == 29 for name in entries)
        (invoices,) = [n for n, d in entries.items() if d == "Invoices"]
        scripts = rows(
            lane,
            "SELECT name, path FROM oc_ex_ui_scripts WHERE appid = ? AND name = ?",
            APP_ID,
            invoices,
        )
        assert scripts == [(invoices, "js/embed-app")]
        async with aiohttp.ClientSession(base_url=str(lane.nc.url)) as session:
            async with session.get(
                f"/index.php/apps/app_api/embedded/{APP_ID}/{invoices}", headers=lane.nc.bob
            ) as resp:
                assert resp.status == 200
                assert f"/apps/app_api/proxy/{APP_ID}/js/embed-app.js" in await resp.text()
            async with session.get(
                f"/index.php/apps/app_api/proxy/{APP_ID}/img/studio-app/{invoices}.svg",
                headers=lane.nc.bob,
            ) as resp:
                assert resp.status == 200
                assert ">I</text>" in await resp.text()

        studio.apps[0].name = "Invoices 2026"
        outcome, answer = lane.service.call(studio.push(callback, key))
        assert answer["updated"] == 1
        assert _menu(lane)[invoices] == "Invoices 2026"

        studio.apps = studio.apps[:1]
        outcome, answer = lane.service.call(studio.push(callback, key))
        assert answer["removed"] == 1
        assert list(_menu(lane)) == [invoices]
    finally:
        studio.apps = []
        lane.service.call(studio.push(callback, key))
    assert _menu(lane) == {}
    assert (
        rows(lane, "SELECT name FROM oc_ex_ui_scripts WHERE appid = ? AND name LIKE 'sa_%'", APP_ID)
        == []
    )


# ------------------------------------------------------------------ an admin's change


@pytest.fixture
def second_service() -> Iterator[ServiceThread]:
    service = ServiceThread()
    try:
        yield service
    finally:
        service.stop()


async def _setup_status(port: int, lane: Lane) -> dict[str, Any]:
    """The second connector's own view, asked as Nextcloud's admin (AppAPI headers)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}/setup/status", headers=lane.appapi_headers("admin")
        ) as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_changing_the_service_in_the_settings_api_retargets_within_a_minute(
    lane: Lane, second_service: ServiceThread
) -> None:
    """A connector without BEEFLOW_API_BASE_URL (the setup page's and the form's case; a second
    process with a copy of the lane's storage, so the lane's own connector stays as it is): an
    admin sets another service through Nextcloud's settings API; the connector moves there and
    provisions its key there within 60 s (its default poll; 5 s here)."""
    storage = Path(tempfile.mkdtemp(prefix="beeflow-it-storage-"))
    shutil.copytree(lane.storage, storage, dirs_exist_ok=True)
    port = free_port()
    env = {k: v for k, v in lane.env().items() if k != "BEEFLOW_API_BASE_URL"}
    env.update(
        APP_PORT=str(port),
        APP_PERSISTENT_STORAGE=str(storage),
        BEEFLOW_SPOOL_DIR=str(storage / "spool"),
        BEEFLOW_SETTINGS_POLL_SECONDS="5",
    )
    connector = Connector.start(env)
    target = str(second_service.url).rstrip("/")
    try:
        connector.wait_line("listening on")
        connector.wait_line("init pipeline finished (boot)", timeout=60)
        before = await _setup_status(port, lane)
        assert before["envOverridden"] is False
        assert before["active"].rstrip("/") == str(lane.service.url).rstrip("/")
        started = time.monotonic()
        for field, value in (("deployment_mode", "self-hosted"), ("api_base_url", target)):
            status, body = await as_admin(
                lane,
                "POST",
                SET_VALUE,
                json={"app": APP_ID, "formId": "beeflow_admin", "fieldId": field, "value": value},
            )
            assert status == 200, body
        deadline = started + 60
        while True:
            now = await _setup_status(port, lane)
            if (
                now["active"].rstrip("/") == target
                and now["tenant"]["status"] == "ok"
                and second_service.control.orgs
                and now["tenant"]["fingerprint"] == fingerprint(second_service.tenant_key)
            ):
                break
            assert time.monotonic() < deadline, (now, connector.text[-3000:])
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        TIMINGS["settings_retarget"] = elapsed
        assert second_service.control.bootstraps[-1].status == 200
        assert (now["chosen"]["mode"], now["chosen"]["apiBaseUrl"].rstrip("/")) == (
            "self-hosted",
            target,
        )
        form = await our_form(lane)
        assert target in form["description"]
        no_secret(lane, connector.text)
    finally:
        connector.stop()
        shutil.rmtree(storage, ignore_errors=True)
        # The form's value back to what the lane's connector uses.
        await as_admin(
            lane,
            "POST",
            SET_VALUE,
            json={
                "app": APP_ID,
                "formId": "beeflow_admin",
                "fieldId": "api_base_url",
                "value": str(lane.service.url).rstrip("/"),
            },
        )
