"""POST /hooks/nextcloud end to end on loopback: the fake Nextcloud's webhook_listeners fires
and runs its job, the connector checks the secret, answers at once and forwards one signed
POST per event, which the fake service verifies like the real one; every bad input gets its
answer, forged deliveries cost nothing to genuine ones, and nothing queued is lost at a stop."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from beeflow.integrations.automations import AUTOMATIONS, MAX_BODY
from beeflow.integrations.hookqueue import SPILL_FILE, Forwarder
from beeflow.nextcloud.hooks import HOOK_PATH, hook_secret
from beeflow.nextcloud.webhooks import REGISTRAR, WATCHER
from beeflow.tenant.state import TENANT
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl, expected_signature
from tests.fakes.service_events import PATH as EVENTS_PATH
from tests.helpers import TENANT_KEY, RunningConnector, wait_for

NODE = "OCP\\Files\\Events\\Node\\"
SECRET = hook_secret(TENANT_KEY)
ALICE = ("alice", "Alice")


@pytest.fixture
async def conn(
    connector_factory: ConnectorFactory, service: FakeService, control: ServiceControl
) -> RunningConnector:
    control.verify_key = TENANT_KEY
    running = await connector_factory(BEEFLOW_API_BASE_URL=str(service.url))
    await running.app[WATCHER].slot.close()
    await running.app[REGISTRAR].ensure()
    return running


async def post(
    conn: RunningConnector,
    body: Any,
    *,
    secret: str | None = SECRET,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    data = raw if raw is not None else json.dumps(body).encode()
    hdrs = {"X-Beeflow-Hook-Secret": secret} if secret is not None else {}
    hdrs.update(headers or {})
    async with await conn.request("POST", HOOK_PATH, data=data, headers=hdrs) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


def envelope(php_class: str, event: dict[str, Any], user: tuple[str, str] | None = ALICE) -> Any:
    return {
        "event": {**event, "class": php_class},
        "user": {"uid": user[0], "displayName": user[1]} if user else None,
        "time": 1796624908,
    }


async def test_an_upload_reaches_the_service_as_file_new_signed(
    conn: RunningConnector, fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    hooks = fake_nc.webhook_listeners
    node = {"node": {"id": 24, "path": "/alice/files/Docs/Report Q1.PDF"}}
    assert hooks.fire(NODE + "NodeCreatedEvent", node, ALICE) == 1
    (delivery,) = await hooks.run_jobs()
    assert delivery.status == 200, delivery.answer
    assert json.loads(delivery.answer) == {
        "ok": True,
        "event": "file.new",
        "events": ["file.new"],
        "queued": 1,
    }
    assert "Content-Type" not in delivery.headers
    assert b"\\/alice\\/files" in delivery.body
    (event,) = await control.automation.wait_events(1)
    payload = event["payload"]
    assert event == {"event": "file.new", "ncUid": "alice", "payload": payload}
    assert payload == {
        "id": 24,
        "path": "/Docs/Report Q1.PDF",
        "name": "Report Q1.PDF",
        "extension": "pdf",
        "kind": "file",
        "owner": "alice",
        "actor": "alice",
        "actorName": "Alice",
        "datetime": payload["datetime"],
        "link": None,
    }
    (sent,) = control.automation.deliveries
    assert sent.reason == ""
    assert sent.status == 202
    assert sent.headers["X-Beeflow-Source"] == "nextcloud-connector"
    assert sent.headers["X-Beeflow-NC-Instance-Id"] == conn.app[TENANT].instance_id
    ts, _, sig = sent.headers["X-Beeflow-Sig"].partition(".")
    assert sig == expected_signature(TENANT_KEY, ts, "POST", EVENTS_PATH, sent.body)


async def test_a_rename_carries_the_old_path(
    conn: RunningConnector, fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    hooks = fake_nc.webhook_listeners
    moved = {
        "source": {"path": "/alice/files/Docs/x.TXT"},
        "target": {"id": 24, "path": "/alice/files/Docs/y.txt"},
    }
    hooks.fire(NODE + "NodeRenamedEvent", moved, ALICE)
    await hooks.run_jobs()
    (event,) = await control.automation.wait_events(1)
    assert event["event"] == "file.renamed"
    assert event["payload"]["path"] == "/Docs/y.txt"
    assert event["payload"]["oldPath"] == "/Docs/x.TXT"
    assert event["payload"]["sourceId"] is None  # the old node no longer exists: no id


async def test_deck_updates_give_completed_and_moved_only_when_they_happened(
    conn: RunningConnector, fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    hooks = fake_nc.webhook_listeners
    hooks.apps.add("deck")
    await conn.app[REGISTRAR].ensure()

    def card(stack: int, done: str | None) -> dict[str, Any]:
        return {"card": {"id": 7, "title": "Ship", "stackId": stack, "boardId": 1, "done": done}}

    deck = "OCA\\Deck\\Event\\"
    hooks.fire(deck + "CardUpdatedEvent", card(1, None), ALICE)  # never seen: changed only
    hooks.fire(deck + "CardUpdatedEvent", card(2, None), ALICE)
    hooks.fire(deck + "CardUpdatedEvent", card(2, "2026-12-07T10:00:00+00:00"), ALICE)
    hooks.fire(deck + "CardUpdatedEvent", card(2, "2026-12-07T10:00:00+00:00"), ALICE)
    await hooks.run_jobs()
    events = await control.automation.wait_events(6)
    names = [e["event"] for e in events]
    assert names == [
        "deck.card.changed",
        "deck.card.changed",
        "deck.card.moved",
        "deck.card.changed",
        "deck.card.completed",
        "deck.card.changed",
    ]
    assert events[2]["payload"]["previousStackId"] == 1


async def test_a_wrong_or_missing_secret_is_401_and_nothing_is_forwarded(
    conn: RunningConnector, control: ServiceControl
) -> None:
    body = envelope(NODE + "NodeCreatedEvent", {"node": {"id": 1, "path": "/alice/files/a"}})
    for secret in (None, "", SECRET[:-1] + "0", hook_secret("another key"), TENANT_KEY):
        status, answer, _ = await post(conn, body, secret=secret)
        assert (status, answer["code"]) == (401, "hook_secret_invalid")
    await asyncio.sleep(0.05)
    assert control.automation.deliveries == []
    assert conn.app[AUTOMATIONS].forwarder.stats.refused_secrets == 5


async def test_a_hundred_forged_deliveries_do_not_stop_a_genuine_one(
    conn: RunningConnector, control: ServiceControl
) -> None:
    body = envelope(NODE + "NodeWrittenEvent", {"node": {"id": 5, "path": "/alice/files/b.md"}})
    answers = [await post(conn, body, secret="forged-" + str(n)) for n in range(100)]
    statuses = [a[0] for a in answers]
    assert statuses[:60] == [401] * 60
    assert set(statuses[60:]) == {429}
    limited = answers[-1]
    assert limited[1]["code"] == "hook_secret_rate_limited"
    assert 1 <= int(limited[2]["Retry-After"]) <= 60
    status, answer, _ = await post(conn, body)
    assert (status, answer["event"]) == (200, "file.changed")
    assert [e["event"] for e in await control.automation.wait_events(1)] == ["file.changed"]


async def test_without_a_tenant_key_deliveries_get_503(conn: RunningConnector) -> None:
    conn.app[TENANT].key = None
    status, answer, headers = await post(conn, {"event": {"class": NODE + "NodeCreatedEvent"}})
    assert (status, answer["code"]) == (503, "not_bootstrapped")
    assert headers["Retry-After"] == "60"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "bad_json"),
        (b"[1, 2]", 400, "bad_json"),
        (b"\xff\xfe", 400, "bad_json"),
        (b"", 400, "bad_json"),
        (b'{"event": {"x": 1}}', 200, "event_class_missing"),
        (
            b'{"event": {"class": "OCP\\\\User\\\\Events\\\\UserCreatedEvent"}}',
            200,
            "event_ignored",
        ),
    ],
)
async def test_bad_bodies_get_their_answer(
    conn: RunningConnector, control: ServiceControl, raw: bytes, status: int, code: str
) -> None:
    got, answer, _ = await post(conn, None, raw=raw)
    assert (got, answer["code"]) == (status, code)
    if code == "event_ignored":
        assert answer["ignored"] == "OCP\\User\\Events\\UserCreatedEvent"
    assert control.automation.deliveries == []


async def test_a_body_over_512_kib_is_413_streamed_or_declared(conn: RunningConnector) -> None:
    big = b'{"event": {"class": "x", "pad": "' + b"a" * MAX_BODY + b'"}}'
    status, answer, _ = await post(conn, None, raw=big)
    assert (status, answer["code"]) == (413, "payload_too_large")

    async def chunks() -> Any:
        for _ in range(9):
            yield b"a" * 65536

    async with await conn.request(
        "POST", HOOK_PATH, data=chunks(), headers={"X-Beeflow-Hook-Secret": SECRET}
    ) as resp:
        assert resp.status == 413


async def test_the_authentication_block_is_never_forwarded(
    conn: RunningConnector, control: ServiceControl
) -> None:
    body = envelope(NODE + "NodeCreatedEvent", {"node": {"id": 1, "path": "/alice/files/c"}})
    body["authentication"] = {"alice": {"token": "one-hour-token-of-alice"}}
    body["event"]["authentication"] = {"token": "nested-token"}
    status, _, _ = await post(conn, body)
    assert status == 200
    await control.automation.wait_events(1)
    sent = control.automation.deliveries[0].body
    assert b"token" not in sent


async def test_the_secret_nextcloud_still_holds_works_until_the_rows_are_updated(
    conn: RunningConnector, control: ServiceControl
) -> None:
    body = envelope(NODE + "NodeCreatedEvent", {"node": {"id": 1, "path": "/alice/files/d"}})
    control.verify_key = "tk_new_" + "d" * 34
    conn.app[TENANT].key = "tk_new_" + "d" * 34
    assert (await post(conn, body, secret=SECRET))[0] == 200  # the rows still carry it
    assert (await post(conn, body, secret=hook_secret(conn.app[TENANT].key or "")))[0] == 200
    await conn.app[REGISTRAR].ensure()
    assert (await post(conn, body, secret=SECRET))[0] == 401


async def test_a_full_queue_answers_503_and_counts(
    conn: RunningConnector, control: ServiceControl
) -> None:
    hub = conn.app[AUTOMATIONS]
    hub.settle = 0.0
    control.automation.gate = asyncio.Event()
    body = envelope(NODE + "NodeCreatedEvent", {"node": {"id": 1, "path": "/alice/files/e"}})
    filler: dict[str, Any] = {"event": "file.new", "ncUid": None, "payload": {}}
    while hub.forwarder.room() > 0:  # the workers take a few and hang on the service
        while hub.forwarder.offer(filler):
            pass
        await asyncio.sleep(0.05)
    status, answer, headers = await post(conn, body)
    assert (status, answer["code"], headers["Retry-After"]) == (503, "queue_full", "60")
    assert hub.health(True)["queueFull"] >= 1
    control.automation.gate.set()


async def test_a_failing_service_is_retried_and_a_refusal_is_not(
    conn: RunningConnector, control: ServiceControl, caplog: pytest.LogCaptureFixture
) -> None:
    forwarder = conn.app[AUTOMATIONS].forwarder
    forwarder.backoff = 0.01
    body = envelope(NODE + "NodeCreatedEvent", {"node": {"id": 1, "path": "/alice/files/f"}})
    control.automation.status = 503
    await post(conn, body)
    await wait_for(lambda: len(control.automation.deliveries) == 3)
    await wait_for(lambda: forwarder.stats.dropped == 1)
    assert forwarder.stats.retried == 2
    control.automation.status = None
    control.automation.gated = True  # the service has no automations module: 404, final
    with caplog.at_level(logging.WARNING):
        await post(conn, body)
        await wait_for(lambda: forwarder.stats.dropped == 2)
    assert forwarder.stats.retried == 2
    assert forwarder.stats.last_error.startswith("file.new: HTTP 404")
    assert SECRET not in caplog.text
    assert TENANT_KEY not in caplog.text


async def test_events_queued_at_a_stop_are_sent_after_the_next_start(
    connector_factory: ConnectorFactory,
    service: FakeService,
    control: ServiceControl,
    storage: Path,
) -> None:
    control.verify_key = TENANT_KEY
    first = await connector_factory(BEEFLOW_API_BASE_URL=str(service.url))
    first.app[AUTOMATIONS].settle = 0.1
    control.automation.gate = asyncio.Event()  # the service hangs: nothing completes
    for n in range(5):
        path = f"/alice/files/q{n}.txt"
        body = envelope(NODE + "NodeCreatedEvent", {"node": {"id": n, "path": path}})
        assert (await post(first, body))[0] == 200
    await first.close()
    kept = json.loads((storage / SPILL_FILE).read_text())["events"]
    assert sorted(e["payload"]["path"] for e in kept) == [f"/q{n}.txt" for n in range(5)]
    assert (storage / SPILL_FILE).stat().st_mode & 0o077 == 0
    control.automation.gate = None
    second = await connector_factory(BEEFLOW_API_BASE_URL=str(service.url))
    events = await control.automation.wait_events(5)
    assert sorted(e["payload"]["path"] for e in events) == [f"/q{n}.txt" for n in range(5)]
    assert json.loads((storage / SPILL_FILE).read_text()) == {"events": []}
    assert second.app[AUTOMATIONS].health(True)["restored"] == 5


async def test_heartbeat_details_only_for_the_trusted(conn: RunningConnector) -> None:
    body = envelope(NODE + "NodeCreatedEvent", {"node": {"id": 1, "path": "/alice/files/g"}})
    await post(conn, body)
    async with await conn.request("GET", "/heartbeat") as resp:
        anonymous = await resp.json()
    assert "automations" not in anonymous
    assert anonymous["webhooks"] == {"state": "registered"}
    async with await conn.request("GET", "/heartbeat", user="") as resp:
        local = await resp.json()  # doctor in the container: loopback, the secret, no user
    assert local["automations"]["received"] == 1
    assert local["webhooks"]["registered"]


async def test_the_setup_page_shows_registration_and_deliveries(conn: RunningConnector) -> None:
    body = envelope(NODE + "NodeCreatedEvent", {"node": {"id": 1, "path": "/alice/files/h"}})
    await post(conn, body)
    async with await conn.request("GET", "/setup/status", user="admin") as resp:
        assert resp.status == 200
        status = await resp.json()
    health = status["health"]
    assert health["webhooks"]["state"] == "registered"
    assert health["webhooks"]["cron"]["state"] == "ok"
    assert health["automations"]["received"] == 1
    assert health["automations"]["lastDeliveryAt"]


async def test_the_kept_events_are_bounded_and_the_oldest_go(tmp_path: Path) -> None:
    async def never(path: str, item: dict[str, Any]) -> Any:
        raise AssertionError("nothing is sent in this test")

    forwarder = Forwarder(never, storage=tmp_path, max_queued=5)
    for n in range(4):
        forwarder.offer({"event": "file.new", "ncUid": None, "payload": {"n": n}})
    await forwarder.stop(0.0)  # no workers started: all four are kept
    for n in range(4, 7):
        forwarder.offer({"event": "file.new", "ncUid": None, "payload": {"n": n}})
    await forwarder.stop(0.0)
    kept = json.loads((tmp_path / SPILL_FILE).read_text())["events"]
    assert [e["payload"]["n"] for e in kept] == [2, 3, 4, 5, 6]
    assert forwarder.stats.dropped == 2
    again = Forwarder(never, storage=tmp_path, max_queued=5)
    await again.restore()
    assert again.queue.qsize() == 5
    assert json.loads((tmp_path / SPILL_FILE).read_text()) == {"events": []}


async def test_without_storage_or_with_a_broken_one_the_stop_says_what_was_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def never(path: str, item: dict[str, Any]) -> Any:
        raise AssertionError("nothing is sent in this test")

    item: dict[str, Any] = {"event": "file.new", "ncUid": None, "payload": {}}
    nowhere = Forwarder(never, storage=None)
    nowhere.offer(item)
    with caplog.at_level(logging.WARNING):
        await nowhere.stop(0.0)
    assert nowhere.stats.dropped == 1
    assert "not delivered: the connector stopped" in caplog.text
    broken = Forwarder(never, storage=tmp_path / "missing" / "dir")
    broken.offer(item)
    await broken.stop(0.0)
    assert broken.stats.dropped == 1
    assert "lost at shutdown" in caplog.text
    (tmp_path / SPILL_FILE).write_text("not json")
    odd = Forwarder(never, storage=tmp_path)
    await odd.restore()  # an unreadable file is taken as empty
    assert odd.queue.qsize() == 0
