"""Automations against the real Nextcloud 32.0.1: the rows the registration leaves (`occ
webhook_listeners:list`), however often /init runs and with two processes at once; what bob
does over WebDAV and CalDAV reaching the fake service after a cron run (file.new with his
relative path, file.renamed with oldPath, calendar.event.created, file.tagged); forged
deliveries that do not stop a genuine one; the rows removed on disable and back on enable."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest

from beeflow.nextcloud.hooks import HOOK_CLASSES, HOOK_PATH
from tests.integration.conftest import APP_ID, Lane
from tests.integration.exapp import Connector, wait_until
from tests.integration.server import free_port

pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(300)]

REQUIRED = Counter({h.php_class: 1 for h in HOOK_CLASSES if not h.optional})
DELIVERY_WAIT = 60.0


def our_rows(lane: Lane) -> list[dict[str, Any]]:
    out = lane.nc.occ("webhook_listeners:list", "--output=json").stdout
    return [r for r in json.loads(out) if r["appId"] == APP_ID]


def classes(lane: Lane) -> Counter[str]:
    rows = our_rows(lane)
    assert {r["uri"] for r in rows} <= {HOOK_PATH}
    return Counter(r["event"] for r in rows)


def cron(lane: Lane, runs: int = 4) -> None:
    """`nc cron N`: this instance runs background jobs (and so deliveries) only then."""
    done = lane.nc._run(["cron", str(runs)], timeout=120)
    assert done.returncode == 0, done.stderr


def heartbeat(lane: Lane) -> dict[str, Any]:
    """What doctor sees inside the container: loopback, the secret, no user."""
    url = str(lane.direct / "heartbeat")
    req = urllib.request.Request(url, headers=lane.appapi_headers())  # noqa: S310 - loopback
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        data: dict[str, Any] = json.loads(resp.read())
    return data


def events(lane: Lane) -> list[dict[str, Any]]:
    return list(lane.service.control.automation.events)


def wait_event(lane: Lane, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in events(lane) if match(e)]
        return bool(found)

    deadline = time.monotonic() + DELIVERY_WAIT
    while not seen():
        if time.monotonic() > deadline:
            raise AssertionError(f"no such event; the service got: {events(lane)[-10:]}")
        cron(lane, 1)
    return found[0]


async def dav(lane: Lane, method: str, path: str, **kw: Any) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        headers = {**lane.nc.bob, **kw.pop("headers", {})}
        async with session.request(
            method, str(lane.nc.url) + "/remote.php/dav" + path, headers=headers, **kw
        ) as resp:
            await resp.read()
            return resp


def run_init(lane: Lane, connector: Connector | None = None, port: int | None = None) -> None:
    """POST /init as AppAPI does (the secret, no user), then wait for that run to finish."""
    connector = connector or lane.connector
    assert connector is not None
    since = connector.mark()
    url = f"http://127.0.0.1:{port or lane.port}/init"
    headers = lane.appapi_headers()
    req = urllib.request.Request(url, data=b"", method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        assert resp.status == 200
    connector.wait_line("init pipeline finished", "init pipeline failed", since=since, timeout=90)


def test_init_leaves_one_row_per_class_however_often_it_runs(lane: Lane) -> None:
    assert classes(lane) == REQUIRED
    for _ in range(10):
        run_init(lane)
    assert classes(lane) == REQUIRED
    detail = heartbeat(lane)["webhooks"]
    assert detail["state"] == "registered"
    assert sorted(detail["skipped"]) == sorted(h.event for h in HOOK_CLASSES if h.optional)
    for row in our_rows(lane):
        headers = json.loads(row["headers"])
        assert set(headers) == {"X-Beeflow-Hook-Event", "X-Beeflow-NC-Instance-Id"}
        assert row["authMethod"] == "header"
        assert row["userId"] is None


def test_two_processes_registering_at_once_leave_one_row_per_class(lane: Lane) -> None:
    """A second replica on the same volume, both asked at the same moment."""
    port = free_port()
    other = Connector.start(lane.env(APP_PORT=str(port)))
    try:
        other.wait_line("listening on")
        other.wait_line("init pipeline finished", timeout=90)  # its boot run
        with ThreadPoolExecutor(2) as pool:
            for _ in range(3):
                both = [pool.submit(run_init, lane), pool.submit(run_init, lane, other, port)]
                for done in both:
                    done.result(timeout=120)
                assert classes(lane) == REQUIRED
    finally:
        other.stop()


async def test_bobs_upload_rename_tag_and_event_reach_the_service(lane: Lane) -> None:
    name = f"it-{secrets.token_hex(3)}.TXT"
    resp = await dav(lane, "PUT", f"/files/bob/{name}", data=b"hello")
    assert resp.status in (201, 204)
    match = re.match(r"0*(\d+)", resp.headers.get("OC-FileId", ""))
    assert match, resp.headers
    file_id = int(match.group(1))
    new = wait_event(
        lane, lambda e: e["event"] == "file.new" and e["payload"]["path"] == f"/{name}"
    )
    assert new["ncUid"] == "bob"
    assert new["payload"]["owner"] == "bob"
    assert new["payload"]["extension"] == "txt"
    assert new["payload"]["id"] == file_id

    renamed = f"renamed-{name}"
    resp = await dav(
        lane,
        "MOVE",
        f"/files/bob/{name}",
        headers={"Destination": str(lane.nc.url) + f"/remote.php/dav/files/bob/{renamed}"},
    )
    assert resp.status in (201, 204)
    moved = wait_event(
        lane, lambda e: e["event"] == "file.renamed" and e["payload"]["path"] == f"/{renamed}"
    )
    assert moved["payload"]["oldPath"] == f"/{name}"

    async with aiohttp.ClientSession() as session:
        tag = f"it-tag-{secrets.token_hex(3)}"
        async with session.post(
            str(lane.nc.url) + "/remote.php/dav/systemtags/",
            headers={**lane.nc.admin, "Content-Type": "application/json"},
            json={"name": tag, "userVisible": True, "userAssignable": True},
        ) as created:
            assert created.status == 201, await created.text()
            tag_id = int(created.headers["Content-Location"].rstrip("/").rsplit("/", 1)[1])
    resp = await dav(lane, "PUT", f"/systemtags-relations/files/{file_id}/{tag_id}")
    assert resp.status == 201
    tagged = wait_event(
        lane, lambda e: e["event"] == "file.tagged" and e["payload"]["tagId"] == tag_id
    )
    assert tagged["payload"]["fileId"] == str(file_id)

    uid = f"it-{secrets.token_hex(4)}"
    await dav(lane, "PROPFIND", "/calendars/bob/", headers={"Depth": "1"})
    ics = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//beeflow it//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260105T100000Z\r\n"
        "DTEND:20260105T110000Z\r\nSUMMARY:Quarterly planning\r\nEND:VEVENT\r\n"
        "END:VCALENDAR\r\n"
    )
    resp = await dav(
        lane,
        "PUT",
        f"/calendars/bob/personal/{uid}.ics",
        data=ics.encode(),
        headers={"Content-Type": "text/calendar"},
    )
    assert resp.status == 201
    created_event = wait_event(
        lane, lambda e: e["event"] == "calendar.event.created" and e["payload"]["uid"] == uid
    )
    payload = created_event["payload"]
    assert payload["summary"] == "Quarterly planning"
    assert payload["startsAt"] == "2026-01-05T10:00:00.000Z"
    assert payload["calendarUri"] == "personal"
    assert not lane.service.control.automation.deliveries[-1].reason  # signed as it checks
    detail = heartbeat(lane)["automations"]
    assert detail["forwarded"] >= 4
    assert detail["lastDeliveryAt"]


async def test_a_hundred_forged_deliveries_do_not_stop_a_genuine_one(lane: Lane) -> None:
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession() as session:
        for n in range(100):
            async with session.post(
                str(lane.direct / HOOK_PATH.lstrip("/")),
                data=b'{"event":{"class":"OCP\\\\Files\\\\Events\\\\Node\\\\NodeCreatedEvent"}}',
                headers={"X-Beeflow-Hook-Secret": f"forged-{n}"},
            ) as resp:
                statuses[resp.status] += 1
    assert set(statuses) <= {401, 429}
    assert statuses[401] >= 1
    name = f"after-forgery-{secrets.token_hex(3)}.md"
    resp = await dav(lane, "PUT", f"/files/bob/{name}", data=b"# still here")
    assert resp.status in (201, 204)
    wait_event(lane, lambda e: e["event"] == "file.new" and e["payload"]["path"] == f"/{name}")


def test_background_jobs_that_ran_show_as_ok(lane: Lane) -> None:
    cron(lane, 1)
    run_init(lane)
    detail = heartbeat(lane)["webhooks"]["cron"]
    assert detail["state"] == "ok"
    assert detail["mode"] == "cron"


def test_disable_removes_the_rows_and_enable_brings_them_back(lane: Lane) -> None:
    assert lane.connector is not None
    since = lane.connector.mark()
    try:
        lane.nc.occ("app_api:app:disable", APP_ID)
        lane.connector.wait_line("AppAPI set enabled=0", since=since)
        try:
            wait_until(lambda: classes(lane) == Counter(), 30, "rows removed on disable")
        except AssertionError:
            raise AssertionError("\n".join(lane.connector.find("webhook", since))) from None
    finally:
        lane.nc.occ("app_api:app:enable", APP_ID)
    lane.connector.wait_line("AppAPI set enabled=1", since=since)
    wait_until(lambda: classes(lane) == REQUIRED, 60, "rows back after enable")


class Recorder:
    """A plain HTTP server on loopback that records the paths POSTed to it."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.paths: list[str] = []
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


async def test_an_absolute_uri_to_a_local_address_is_refused_by_default(lane: Lane) -> None:
    """Why the connector's uri is relative (docs/automations.md, "Why a relative uri"): an
    absolute uri to a local address is delivered only while `allow_local_remote_servers` is on
    (the lane's bundle turns it on); with Nextcloud's default (off) it gets nothing, while the
    relative rows still deliver."""
    recorder = Recorder()
    api = str(lane.nc.url) + "/ocs/v2.php/apps/webhook_listeners/api/v1/webhooks"
    body = {
        "httpMethod": "POST",
        "uri": f"http://127.0.0.1:{recorder.port}/absolute",
        "event": "OCP\\SystemTag\\TagAssignedEvent",
        "authMethod": "none",
    }
    name = f"abs-{secrets.token_hex(3)}.txt"
    put = await dav(lane, "PUT", f"/files/bob/{name}", data=b"x")
    file_id = re.match(r"0*(\d+)", put.headers.get("OC-FileId", ""))
    assert file_id
    row_id = None
    async with aiohttp.ClientSession() as session:

        async def tag_it() -> int:
            async with session.post(
                str(lane.nc.url) + "/remote.php/dav/systemtags/",
                headers={**lane.nc.admin, "Content-Type": "application/json"},
                json={"name": f"abs-{secrets.token_hex(3)}", "userAssignable": True},
            ) as created:
                tag = int(created.headers["Content-Location"].rstrip("/").rsplit("/", 1)[1])
            await dav(lane, "PUT", f"/systemtags-relations/files/{file_id.group(1)}/{tag}")
            return tag

        try:
            async with session.post(
                api, json=body, params={"format": "json"}, headers=lane.appapi_headers()
            ) as resp:
                row_id = (await resp.json())["ocs"]["data"]["id"]
            allowed = await tag_it()
            wait_event(
                lane, lambda e: e["event"] == "file.tagged" and e["payload"]["tagId"] == allowed
            )
            cron(lane, 2)
            assert recorder.paths == ["/absolute"]  # allowed: delivered
            lane.nc.occ(
                "config:system:set", "allow_local_remote_servers", "--value=false", "--type=boolean"
            )
            refused = await tag_it()
            wait_event(
                lane, lambda e: e["event"] == "file.tagged" and e["payload"]["tagId"] == refused
            )
            cron(lane, 2)
            assert recorder.paths == ["/absolute"]  # "violates local access rules": nothing
        finally:
            lane.nc.occ(
                "config:system:set", "allow_local_remote_servers", "--value=true", "--type=boolean"
            )
            if row_id is not None:
                headers = lane.appapi_headers()
                async with session.delete(
                    f"{api}/{row_id}", params={"format": "json"}, headers=headers
                ):
                    pass
            recorder.stop()
