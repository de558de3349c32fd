"""The Bee Flow service's side of the contract, as the fake service plays it: its v2-only `/nc`
callbacks (the verb tunnel, the uid header, the decoded path) reach Nextcloud through the
connector; its studio-menus push is verified and answered by the connector; and the service holds
the connector's own calls to the strict nc-user-sync body."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import aiohttp
import pytest
from yarl import URL

from beeflow.integrations.userevents import USER_EVENTS_SINK
from beeflow.service_client import SERVICE
from beeflow.signing import parse_sig_header, verify_nc
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.fakes.service_control import (
    ServiceControl,
    callback_request,
    decode_uri_component,
    expected_signature,
)
from tests.helpers import TENANT_KEY, RunningConnector

NC_VERBS = ("GET", "POST", "PUT", "DELETE", "PATCH", "PROPFIND", "REPORT", "MKCOL", "MOVE", "COPY")


@pytest.mark.parametrize("verb", NC_VERBS)
def test_the_service_tunnels_every_verb_but_get_and_post(verb: str) -> None:
    wire, headers = callback_request(TENANT_KEY, verb, "/nc/remote.php/dav/files/bob/", uid="bob")
    assert wire == (verb if verb in ("GET", "POST") else "POST")
    assert headers.get("X-HTTP-Method-Override") == (None if verb in ("GET", "POST") else verb)
    assert headers["X-Beeflow-NC-Uid"] == "bob"
    # The connector's verifier accepts it as v2 over the real verb (never v1: v2 only).
    sig = parse_sig_header(headers["X-Beeflow-Sig"])
    assert verify_nc(
        TENANT_KEY, sig, verb, ["/nc/remote.php/dav/files/bob/"], "bob", _sha(b"")
    ) == ("v2:0")
    assert verify_nc(TENANT_KEY, sig, verb, ["/nc/remote.php/dav/files/bob/"], "bob", None) is None


def test_the_uid_header_is_always_sent_and_the_path_signed_decoded() -> None:
    path = "/nc/remote.php/dav/calendars/bob/work/ev%40host.ics?x=%40"
    _, headers = callback_request(TENANT_KEY, "PUT", path, body=b"BEGIN:VCALENDAR")
    assert headers["X-Beeflow-NC-Uid"] == ""
    sig = parse_sig_header(headers["X-Beeflow-Sig"])
    decoded = "/nc/remote.php/dav/calendars/bob/work/ev@host.ics?x=@"
    digest = _sha(b"BEGIN:VCALENDAR")
    assert verify_nc(TENANT_KEY, sig, "PUT", [decoded], "", digest) == "v2:0"
    assert verify_nc(TENANT_KEY, sig, "PUT", [path], "", digest) is None


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [("a%40b", "a@b"), ("a%zzb%40", "a%zzb%40"), ("a%E9", "a%E9"), ("%C3%A9", "é")],
)
def test_decode_uri_component_falls_back_where_javascript_throws(raw: str, decoded: str) -> None:
    assert decode_uri_component(raw) == decoded


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# ------------------------------------------------------------------ over the wire


async def _callback(
    conn: RunningConnector, method: str, nc_path: str, *, uid: str = "", body: bytes = b""
) -> tuple[int, str]:
    wire, headers = callback_request(TENANT_KEY, method, nc_path, uid=uid, body=body)
    async with aiohttp.ClientSession() as session:
        url = URL(str(conn.url) + nc_path, encoded=True)
        async with session.request(wire, url, headers=headers, data=body) as resp:
            return resp.status, await resp.text()


async def test_signed_callbacks_reach_nextcloud_with_the_real_verb(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    status, text = await _callback(
        connector, "GET", "/nc/ocs/v2.php/cloud/users/alice?format=json", uid="alice"
    )
    assert status == 200, text
    assert json.loads(text)["ocs"]["data"]["id"] == "alice"
    for verb in ("PUT", "DELETE", "PATCH", "PROPFIND"):
        path = f"/nc/remote.php/dav/files/alice/{verb.lower()}.txt"
        await _callback(connector, verb, path, uid="alice", body=b"x" if verb == "PUT" else b"")
        (call,) = fake_nc.calls_to(path[3:])
        assert call.method == verb
        assert "X-HTTP-Method-Override" not in call.headers
        assert "X-Beeflow-Sig" not in call.headers


async def test_a_callback_signed_v1_is_not_what_the_service_sends(
    connector: RunningConnector,
) -> None:
    """Sanity of the fake itself: it never emits the body-less v1 message."""
    _, headers = callback_request(TENANT_KEY, "POST", "/nc/ocs/v2.php/x", body=b"{}")
    sig = parse_sig_header(headers["X-Beeflow-Sig"])
    assert verify_nc(TENANT_KEY, sig, "POST", ["/nc/ocs/v2.php/x"], "", _sha(b"{}")) == "v2:0"


async def test_the_studio_menus_push_is_verified_and_goes_nowhere(
    connector_factory: ConnectorFactory,
) -> None:
    """appStudio/nextcloudMenuSync.js pushes POST {callback}/hooks/studio-menus (v2, uid ''):
    the connector checks the signature and answers 200 itself (a 5xx would count towards HaRP's
    ban list); before Nextcloud is known to have the app enabled it reconciles nothing, so
    nothing reaches the service (tests/integrations/test_studio.py has the rest)."""
    async with FakeService() as service:
        conn = await connector_factory(BEEFLOW_API_BASE_URL=str(service.url))
        body = json.dumps({"reason": "published", "studioAppId": "a1", "sentAt": int(time.time())})
        wire, headers = callback_request(
            TENANT_KEY, "POST", "/hooks/studio-menus", body=body.encode()
        )
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                wire, str(conn.url) + "/hooks/studio-menus", headers=headers, data=body
            ) as resp,
        ):
            assert resp.status == 200
            assert resp.content_type == "application/json"
            answer = await resp.json()
        assert answer["skipped"] == "nextcloud_paused"  # signed right: no signature error
        assert service.requests == []


# ------------------------------------------------------------------ connector -> service


@pytest.fixture
async def sync_service() -> Any:
    control = ServiceControl(verify_key=TENANT_KEY)
    async with FakeService(control=control) as service:
        yield service


async def test_the_connectors_user_sync_body_is_what_the_service_accepts(
    connector_factory: ConnectorFactory, sync_service: FakeService
) -> None:
    conn = await connector_factory(BEEFLOW_API_BASE_URL=str(sync_service.url))
    events = conn.app[USER_EVENTS_SINK]
    assert await events.forward("user.created", "alice", None, origin="sync") == "sent"
    (delivery,) = sync_service.control.deliveries
    assert (delivery.status, delivery.reason) == (200, "")
    assert delivery.json() == {"event": "user.created", "ncUid": "alice", "groupId": None}


async def test_a_signed_call_with_a_query_signs_the_query_too(
    connector_factory: ConnectorFactory, sync_service: FakeService
) -> None:
    conn = await connector_factory(BEEFLOW_API_BASE_URL=str(sync_service.url))
    body = {"event": "user.created", "ncUid": "alice", "groupId": None}
    client = conn.app[SERVICE]
    reply = await client.post_signed("/auth/webhook/nc-user-sync?source=sync&x=%40", body)
    assert reply.status == 200
    assert (
        sync_service.control.deliveries[-1].path == "/auth/webhook/nc-user-sync?source=sync&x=%40"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"event": "user.created", "ncUid": "a", "groupId": None, "x": 1}, "A Nextcloud event"),
        ({"event": "user.renamed", "ncUid": "a", "groupId": None}, "event is one of"),
        ({"event": "user.created", "ncUid": "", "groupId": None}, "ncUid is"),
        ({"event": "user.created", "ncUid": ["a"], "groupId": None}, "ncUid is"),
        ({"event": "group.member_added", "ncUid": "a", "groupId": 7}, "groupId is"),
    ],
)
async def test_the_service_holds_user_sync_to_its_strict_body(
    sync_service: FakeService, body: dict[str, Any], message: str
) -> None:
    """ncEvents.js: checked only after the signature; `.strict()`: no key beyond the three."""
    status, answer = await _signed_post(sync_service, "/auth/webhook/nc-user-sync", body)
    assert status == 400
    assert answer["code"] == "invalid_request"
    assert answer["error"].startswith(message)


async def test_the_signature_is_checked_first_and_says_nothing(sync_service: FakeService) -> None:
    body = {"event": "nope"}
    status, answer = await _signed_post(sync_service, "/auth/webhook/nc-user-sync", body, key="x")
    assert (status, answer) == (401, {"error": "Invalid or missing signature"})


async def test_the_signature_covers_the_raw_path_with_its_query(sync_service: FakeService) -> None:
    """originalUrl as received: the query is part of it and is not decoded."""
    body = {"event": "user.created", "ncUid": "a", "groupId": None}
    ok, _ = await _signed_post(sync_service, "/auth/webhook/nc-user-sync?a=%40", body)
    assert ok == 200
    bad, _ = await _signed_post(
        sync_service,
        "/auth/webhook/nc-user-sync?a=%40",
        body,
        signed_path="/auth/webhook/nc-user-sync?a=@",
    )
    assert bad == 401


async def _signed_post(
    service: FakeService,
    path: str,
    body: dict[str, Any],
    *,
    key: str = TENANT_KEY,
    signed_path: str | None = None,
) -> tuple[int, Any]:
    raw = json.dumps(body)
    ts = str(int(time.time()))
    sig = expected_signature(key, ts, "POST", signed_path or path, raw.encode())
    headers = {
        "X-Beeflow-Sig": f"{ts}.{sig}",
        "X-Beeflow-Source": "nextcloud-connector",
        "X-Beeflow-NC-Instance-Id": "nc-host:127.0.0.1",
        "Content-Type": "application/json",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(URL(str(service.url) + path, encoded=True), data=raw, headers=headers) as resp,
    ):
        return resp.status, await resp.json()
