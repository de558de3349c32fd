"""POST /webhook/nc-events: mapping, lenient extraction, the signed forward verified byte for byte
by the fake service, Nextcloud answered at once while the service stalls, failures logged."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from beeflow.integrations.userevents import RECENT_FILE, USER_EVENTS_SINK
from beeflow.tenant.state import TENANT
from tests.conftest import AutoFactory, ConnectorFactory
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl, expected_signature
from tests.helpers import TENANT_KEY, RunningConnector
from tests.tenant.helpers import heartbeat, read_json, wait_for

CLASSES = [
    ("OCP\\User\\Events\\UserCreatedEvent", "user.created", None),
    ("OCP\\User\\Events\\UserDeletedEvent", "user.deleted", None),
    ("OCP\\User\\Events\\UserChangedEvent", "user.updated", None),
    ("OCP\\Group\\Events\\UserAddedEvent", "group.member_added", "staff"),
    ("OCP\\Group\\Events\\UserRemovedEvent", "group.member_removed", "staff"),
]


@pytest.fixture
async def conn(
    connector_factory: ConnectorFactory, service: FakeService, control: ServiceControl
) -> RunningConnector:
    control.verify_key = TENANT_KEY
    return await connector_factory(BEEFLOW_API_BASE_URL=str(service.url))


async def post_event(
    conn: RunningConnector, payload: Any, *, user: str | None = "", raw: bytes | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(payload).encode()
    async with await conn.request(
        "POST",
        "/webhook/nc-events",
        user=user,
        data=data,
        headers={"Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(("event_class", "event", "group"), CLASSES)
async def test_each_class_is_mapped_and_forwarded_signed(
    conn: RunningConnector,
    control: ServiceControl,
    storage: Path,
    event_class: str,
    event: str,
    group: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    payload: dict[str, Any] = {"eventType": event_class, "userId": "alice"}
    if group:
        payload["groupId"] = group
    status, body = await post_event(conn, payload)
    assert (status, body) == (200, {"ok": True, "event": event, "queued": True})
    (received,) = await control.wait_events(1)
    assert received == {"event": event, "ncUid": "alice", "groupId": group}
    delivery = control.deliveries[0]
    assert delivery.verified, delivery.reason
    assert delivery.path == "/auth/webhook/nc-user-sync"
    # The exact bytes sent are the ones signed (compact JSON, reference 7.3).
    assert delivery.body == json.dumps(received, separators=(",", ":")).encode()
    ts, _, sig = delivery.headers["X-Beeflow-Sig"].partition(".")
    assert abs(int(ts) - time.time()) < 60
    assert sig == expected_signature(TENANT_KEY, ts, "POST", delivery.path, delivery.body)
    assert delivery.headers["X-Beeflow-Source"] == "nextcloud-connector"
    assert delivery.headers["X-Beeflow-NC-Instance-Id"].startswith("nc-host:127.0.0.1:")
    assert delivery.headers["Content-Type"] == "application/json"
    assert "Authorization" not in delivery.headers
    assert "AUTHORIZATION-APP-API" not in delivery.headers
    # Remembered for the reconciliation (no duplicate within the interval), 0600.
    recent = storage / RECENT_FILE
    await wait_for(recent.exists)
    assert read_json(recent)["events"][0][:3] == [event, "alice", group or ""]
    assert stat.S_IMODE(recent.stat().st_mode) == 0o600
    for record in caplog.records:
        assert TENANT_KEY not in record.getMessage()
        assert sig not in record.getMessage()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {"event_type": "OCP\\User\\Events\\UserCreatedEvent", "uid": "bob"},
            {"event": "user.created", "ncUid": "bob", "groupId": None},
        ),
        (
            {"eventType": "OCP\\User\\Events\\UserChangedEvent", "user": {"UID": "bob"}},
            {"event": "user.updated", "ncUid": "bob", "groupId": None},
        ),
        (
            {
                "eventType": "OCP\\Group\\Events\\UserAddedEvent",
                "user": {"uid": "bob"},
                "group": {"gid": "devs"},
            },
            {"event": "group.member_added", "ncUid": "bob", "groupId": "devs"},
        ),
        (
            # webhook_listeners' envelope: the top-level user is the ACTOR, not the subject.
            {
                "event": {
                    "class": "OCP\\Group\\Events\\UserRemovedEvent",
                    "user": {"uid": "bob"},
                    "group": {"gid": "devs"},
                },
                "user": {"uid": "admin", "displayName": "Ada Admin"},
                "time": 1700000000,
            },
            {"event": "group.member_removed", "ncUid": "bob", "groupId": "devs"},
        ),
        (
            {"eventType": "UserDeletedEvent", "event": {"userId": "bob"}},
            {"event": "user.deleted", "ncUid": "bob", "groupId": None},
        ),
    ],
)
async def test_lenient_extraction(
    conn: RunningConnector, control: ServiceControl, payload: Any, expected: Any
) -> None:
    status, body = await post_event(conn, payload)
    assert status == 200
    assert body["event"] == expected["event"]
    assert await control.wait_events(1) == [expected]


async def test_unusable_input_is_answered_200_ignored_and_not_forwarded(
    conn: RunningConnector, control: ServiceControl
) -> None:
    cases: list[tuple[Any, bytes | None, dict[str, Any]]] = [
        (
            {"eventType": "OCA\\Files\\Event\\Foo", "userId": "a"},
            None,
            {"ignored": "OCA\\Files\\Event\\Foo", "code": "event_ignored"},
        ),
        (None, b"{not json", {"ignored": "bad_json", "code": "bad_json"}),
        (None, b"\xff\xfe", {"ignored": "bad_json", "code": "bad_json"}),
        ([1, 2], None, {"ignored": "bad_json", "code": "bad_json"}),
        ({"userId": "a"}, None, {"ignored": "no_event_class", "code": "event_ignored"}),
        (
            {"eventType": "OCP\\User\\Events\\UserCreatedEvent"},
            None,
            {
                "ignored": "OCP\\User\\Events\\UserCreatedEvent",
                "code": "user_missing",
                "event": "user.created",
            },
        ),
        (
            {"eventType": "OCP\\Group\\Events\\UserAddedEvent", "userId": "a"},
            None,
            {
                "ignored": "OCP\\Group\\Events\\UserAddedEvent",
                "code": "group_missing",
                "event": "group.member_added",
            },
        ),
        (None, b"{" + b" " * (300 * 1024) + b"}", {"ignored": "payload_too_large"}),
    ]
    for payload, raw, expected in cases:
        status, body = await post_event(conn, payload, raw=raw)
        assert status == 200
        assert {k: body[k] for k in expected} == expected
    # A valid event after them is the only one the service ever sees.
    await post_event(conn, {"eventType": "OCP\\User\\Events\\UserCreatedEvent", "userId": "z"})
    await control.wait_events(1)
    assert [d.json()["ncUid"] for d in control.deliveries] == ["z"]


async def test_nextcloud_is_answered_within_100ms_while_the_service_stalls(
    conn: RunningConnector, control: ServiceControl
) -> None:
    control.sync_gate = asyncio.Event()
    timings = []
    for uid in ("u1", "u2", "u3"):
        started = time.monotonic()
        status, body = await post_event(
            conn, {"eventType": "OCP\\User\\Events\\UserCreatedEvent", "userId": uid}
        )
        timings.append(time.monotonic() - started)
        assert (status, body["ok"]) == (200, True)
    await asyncio.wait_for(control.sync_arrived.wait(), 5)  # the forwards are under way ...
    assert control.deliveries == []  # ... and still held by the service
    assert max(timings) < 0.1, timings
    control.sync_gate.set()
    events = await control.wait_events(3)
    assert sorted(e["ncUid"] for e in events) == ["u1", "u2", "u3"]


@pytest.mark.parametrize("failure", ["http_500", "bad_signature"])
async def test_a_failed_forward_is_logged_not_dropped_silently(
    conn: RunningConnector,
    control: ServiceControl,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    if failure == "http_500":
        control.sync_status = 500
    else:
        control.verify_key = "tk_some_other_key_0000000000000000"
    status, _ = await post_event(
        conn, {"eventType": "OCP\\User\\Events\\UserDeletedEvent", "userId": "alice"}
    )
    assert status == 200
    stats = conn.app[USER_EVENTS_SINK].stats["webhook"]
    await wait_for(lambda: stats.failed == 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = "HTTP 500" if failure == "http_500" else "HTTP 401"
    assert any("user.deleted for alice not delivered" in w and expected in w for w in warnings)
    body = await heartbeat(conn, trusted=True)
    assert body["events"]["webhook"]["failed"] == 1
    assert expected in body["events"]["webhook"]["lastError"]


async def test_webhook_access_levels(conn: RunningConnector) -> None:
    payload = {"eventType": "OCP\\User\\Events\\UserCreatedEvent", "userId": "x"}
    status, body = await post_event(conn, payload, user=None)
    assert (status, body["code"]) == (401, "appapi_headers_missing")
    status, body = await post_event(conn, payload, user="alice")  # not an admin
    assert (status, body["code"]) == (403, "admin_required")
    status, body = await post_event(conn, payload, user="admin")
    assert (status, body["ok"]) == (200, True)


async def test_without_a_tenant_key_the_event_is_ignored_and_logged(
    auto_connector: AutoFactory, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await auto_connector(slow_retries=True)
    assert conn.app[TENANT].key is None
    status, body = await post_event(
        conn, {"eventType": "OCP\\User\\Events\\UserCreatedEvent", "userId": "x"}
    )
    assert (status, body["code"]) == (200, "tenant_key_missing")
    assert any("no tenant key yet" in r.getMessage() for r in caplog.records)
