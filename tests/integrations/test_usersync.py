"""The periodic user/group reconciliation against the fake Nextcloud (31, 32, 33.0.0) and the
fake service: baseline, then exactly the right events; no duplicates of webhook deliveries;
resumable after a crash; a failed listing never reads as deletions; the budget is respected."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from beeflow.integrations import userrecords, usersync
from beeflow.nextcloud.client import NEXTCLOUD
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.helpers import TENANT_KEY, RunningConnector
from tests.tenant.helpers import heartbeat, read_json, run_init, wait_for

Ev = tuple[str, str, str | None]


@pytest.fixture
def start(
    connector_factory: ConnectorFactory, service: FakeService, control: ServiceControl
) -> Callable[..., Any]:
    control.verify_key = TENANT_KEY

    async def go(**env: str) -> RunningConnector:
        return await connector_factory(BEEFLOW_API_BASE_URL=str(service.url), **env)

    return go


async def sync(conn: RunningConnector) -> dict[str, Any]:
    async with await conn.request("POST", "/webhook/user-sync?wait=1", user="") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    return body


def received(control: ServiceControl) -> list[Ev]:
    return [(e["event"], e["ncUid"], e["groupId"]) for e in control.events]


def per_user(events: list[Ev]) -> dict[str, list[Ev]]:
    out: dict[str, list[Ev]] = {}
    for event in events:
        out.setdefault(event[1], []).append(event)
    return out


@pytest.mark.parametrize("nc_personality", ["31", "32", "33.0.0"])
async def test_baseline_then_exactly_the_right_events(
    start: Callable[..., Any],
    fake_nc: FakeNextcloud,
    control: ServiceControl,
    storage: Path,
) -> None:
    fake_nc.add_user("carol", email="carol@example.com", display_name="Carol", groups=["staff"])
    conn = await start()
    first = await sync(conn)
    assert first["state"] == "baseline"
    assert (first["usersSeen"], first["eventsSent"]) == (3, 0)
    assert control.deliveries == []
    state_file = storage / usersync.STATE_FILE
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert sorted(read_json(state_file)["snapshot"]["users"]) == ["admin", "alice", "carol"]

    fake_nc.add_user("bob", email="bob@example.com", display_name="Bob", groups=["staff", "devs"])
    del fake_nc.users["alice"]
    fake_nc.users["admin"].display_name = "Ada A. Admin"  # renamed
    carol = fake_nc.users["carol"]
    carol.email = "carol@new.example.com"
    carol.groups = ["devs"]  # left staff, joined devs
    second = await sync(conn)
    assert second["state"] == "ok"
    expected: list[Ev] = [
        ("user.updated", "admin", None),
        ("group.member_removed", "alice", "staff"),
        ("user.deleted", "alice", None),
        ("user.created", "bob", None),
        ("group.member_added", "bob", "devs"),
        ("group.member_added", "bob", "staff"),
        ("user.updated", "carol", None),
        ("group.member_added", "carol", "devs"),
        ("group.member_removed", "carol", "staff"),
    ]
    got = received(control)
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert per_user(got) == per_user(expected)  # each user's events in Nextcloud's order
    assert all(d.verified for d in control.deliveries)
    assert (second["usersSeen"], second["eventsSent"], second["eventsPending"]) == (3, 9, 0)

    third = await sync(conn)
    assert (third["state"], third["eventsSent"]) == ("ok", 0)
    assert len(control.deliveries) == 9
    assert fake_nc.failure_count_total == 0


async def test_events_the_webhook_delivered_are_not_sent_again(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    conn = await start()
    await sync(conn)
    fake_nc.add_user("dave", email="dave@example.com", display_name="Dave", groups=["staff"])
    async with await conn.request(
        "POST",
        "/webhook/nc-events",
        user="",
        json={"eventType": "OCP\\User\\Events\\UserCreatedEvent", "userId": "dave"},
    ) as resp:
        assert resp.status == 200
    await control.wait_events(1)
    sink_file = conn.config.persistent_storage / "user-events-recent.json"
    await wait_for(sink_file.exists)
    body = await sync(conn)
    # user.created came through the webhook; only the group membership is new to the service.
    assert received(control) == [
        ("user.created", "dave", None),
        ("group.member_added", "dave", "staff"),
    ]
    assert (body["eventsSent"], body["eventsSkippedAsDelivered"]) == (1, 1)


async def test_resumes_after_a_crash_without_losing_or_repeating_events(
    start: Callable[..., Any],
    fake_nc: FakeNextcloud,
    control: ServiceControl,
    storage: Path,
) -> None:
    conn = await start()
    await sync(conn)
    fake_nc.add_user("erin", email="erin@example.com", display_name="Erin", groups=["ops"])
    control.sync_gate = asyncio.Event()
    async with await conn.request("POST", "/webhook/user-sync", user="") as resp:
        assert resp.status == 202
    await asyncio.wait_for(control.sync_arrived.wait(), 5)
    # What a crash at this moment leaves on disk: the new snapshot and every unsent event.
    on_disk = read_json(storage / usersync.STATE_FILE)
    assert "erin" in on_disk["snapshot"]["users"]
    assert on_disk["pending"] == [
        ["user.created", "erin", None],
        ["group.member_added", "erin", "ops"],
    ]
    await conn.close()  # the process goes away with the forward in flight
    control.sync_gate = None
    control.sync_arrived.clear()
    assert control.events == []

    again = await start()
    assert again.app[usersync.USER_SYNC].pending == [
        ("user.created", "erin", None),
        ("group.member_added", "erin", "ops"),
    ]
    body = await sync(again)
    assert body["state"] == "ok"
    assert received(control) == [
        ("user.created", "erin", None),
        ("group.member_added", "erin", "ops"),
    ]
    assert read_json(storage / usersync.STATE_FILE)["pending"] == []


async def test_service_down_keeps_events_queued_until_it_answers(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    conn = await start()
    await sync(conn)
    del fake_nc.users["alice"]
    control.sync_status = 503
    down = await sync(conn)
    assert down["state"] == "failed"
    # Both stay queued: the deletion waits behind alice's failed first event (order kept).
    assert down["eventsPending"] == 2
    assert len(control.deliveries) == 1
    assert "could not be delivered" in down["lastError"]
    control.sync_status = 200
    up = await sync(conn)
    assert up["state"] == "ok"
    assert received(control) == [
        ("group.member_removed", "alice", "staff"),
        ("user.deleted", "alice", None),
    ]


class Breaker:
    """The user-details route failing on demand (and otherwise the fake's own answer)."""

    def __init__(self) -> None:
        self.nc: FakeNextcloud | None = None
        self.broken = False

    async def handle(self, request: web.Request) -> web.Response:
        assert self.nc is not None
        if self.broken:
            return web.json_response(
                {"ocs": {"meta": {"status": "failure", "statuscode": 996, "message": "boom"}}},
                status=500,
            )
        return await self.nc._users_details(request)


BREAKER = Breaker()


@pytest.mark.parametrize(
    "nc_options", [{"extra_routes": [web.get("/ocs/v2.php/cloud/users/details", BREAKER.handle)]}]
)
async def test_a_failed_read_never_reads_as_a_deletion(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    BREAKER.nc, BREAKER.broken = fake_nc, False
    conn = await start()
    await sync(conn)
    BREAKER.broken = True
    fake_nc.add_user("fay", email="fay@example.com", display_name="Fay", groups=[])
    body = await sync(conn)
    assert body["state"] == "failed"
    assert "user details" in body["lastError"]
    assert control.deliveries == []  # neither alice's "deletion" nor a half-diff
    assert "fay" not in (conn.app[usersync.USER_SYNC].snapshot or {})
    BREAKER.broken = False
    body = await sync(conn)
    assert received(control) == [("user.created", "fay", None)]


async def test_a_refused_listing_stays_within_the_budget_and_sends_nothing(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    conn = await start()
    await sync(conn)
    fake_nc.registered = False  # e.g. unregistered: every AppAPI login is refused and counted
    budget = conn.app[NEXTCLOUD].budget
    runner = conn.app[usersync.USER_SYNC]
    # Periodic runs (not a trusted inbound request, which would reset the budget).
    states = []
    for _ in range(budget.limit + 3):
        await runner.run()
        states.append(runner.status.state)
    # One refused call per run; the run that spends the budget and every later one pause.
    assert states == ["failed"] * (budget.limit - 1) + ["paused"] * 4
    assert fake_nc.failures_for() == budget.limit < fake_nc.lockout_threshold
    assert not fake_nc.is_locked()
    assert control.deliveries == []
    assert runner.snapshot is not None
    assert sorted(runner.snapshot) == ["admin", "alice"]  # nothing read as deleted
    fake_nc.register()
    budget.reset()
    body = await sync(conn)
    assert (body["state"], body["eventsSent"]) == ("ok", 0)


async def test_a_demoted_admin_does_not_block_the_sync(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    conn = await start()
    await sync(conn)
    fake_nc.users["admin"].groups = []
    body = await sync(conn)
    assert body["state"] == "ok"
    assert received(control) == [("group.member_removed", "admin", "admin")]


def impersonated(nc: FakeNextcloud, since: int = 0) -> list[str]:
    """Calls with a user part: each one is a line in Nextcloud's exapp_impersonation.log."""
    return [f"{c.user} {c.path}" for c in nc.calls[since:] if c.user]


async def test_demoting_the_remembered_admin_deletes_nobody(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    """Review P1-1: as a non-admin, Nextcloud answers another user's info with 998/404; that
    must never read as "deleted": only AppAPI's listing decides who exists."""
    fake_nc.add_user("zoe", email="zoe@example.com", display_name="Zoe", groups=["admin"])
    fake_nc.add_user("bob", email="bob@example.com", display_name="Bob", groups=["sales"])
    conn = await start()
    assert (await sync(conn))["state"] == "baseline"
    fake_nc.users["admin"].groups = []  # the remembered admin is demoted; zoe still is one
    body = await sync(conn)
    assert (body["state"], body["readAs"]) == ("ok", "zoe")
    assert received(control) == [("group.member_removed", "admin", "admin")]
    again = await sync(conn)
    assert (again["state"], again["eventsSent"], again["readAs"]) == ("ok", 0, "zoe")
    assert len(control.deliveries) == 1
    assert fake_nc.failure_count_total == 0


async def test_disabled_users_keep_their_record_and_spend_no_budget(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    """Review P1-2/P2-3: AppAPI lists disabled users; impersonating one is 997 that Nextcloud
    does not count. The sync reads them as the admin, and a disabled admin is skipped."""
    for n in ("aa1", "aa2", "aa3", "aa4", "aa5"):  # sort before everyone: read first
        fake_nc.add_user(n, email=f"{n}@example.com", enabled=False)
    fake_nc.add_user("zoe", email="zoe@example.com", display_name="Zoe", groups=["admin"])
    conn = await start()
    budget = conn.app[NEXTCLOUD].budget
    first = await sync(conn)
    assert (first["state"], first["usersSeen"], first["usersUnreadable"]) == ("baseline", 8, 0)
    snapshot = conn.app[usersync.USER_SYNC].snapshot
    assert snapshot is not None
    assert snapshot["aa1"].enabled is False
    fake_nc.users["admin"].enabled = False  # the remembered admin's account is disabled
    fake_nc.add_user("newbie", email="n@example.com", display_name="Newbie", groups=["staff"])
    second = await sync(conn)
    assert (second["state"], second["readAs"]) == ("ok", "zoe")
    assert received(control) == [
        ("user.created", "newbie", None),
        ("group.member_added", "newbie", "staff"),
    ]
    assert budget.used == 0
    assert not budget.spent
    assert fake_nc.failure_count_total == 0


async def test_a_disabled_user_nobody_can_read_keeps_the_last_record(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    conn = await start()
    await sync(conn)
    fake_nc.users["admin"].groups = []  # no administrator left: everyone reads themselves
    fake_nc.users["alice"].enabled = False  # and alice cannot even do that
    body = await sync(conn)
    assert (body["state"], body["readAs"], body["usersUnreadable"]) == ("ok", None, 1)
    assert received(control) == [("group.member_removed", "admin", "admin")]  # alice stays
    assert conn.app[NEXTCLOUD].budget.used == 0


async def test_one_impersonated_call_per_500_users_and_old_snapshots_still_load(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl, storage: Path
) -> None:
    """Review P3-5: AppAPI writes a line to exapp_impersonation.log per impersonated call."""
    for i in range(1100):
        fake_nc.add_user(f"u{i:04d}", email=None, display_name=f"U{i}", groups=["staff"])
    # A snapshot from before `enabled` was kept: its admin is still the one remembered.
    old = {"email": "admin@example.com", "displayName": "Ada Admin", "groups": ["admin"]}
    state = {"version": 1, "snapshot": {"takenAt": 1.0, "users": {"admin": old}}, "pending": []}
    (storage / usersync.STATE_FILE).write_text(json.dumps(state))
    conn = await start()
    mark = len(fake_nc.calls)
    body = await sync(conn)
    assert (body["state"], body["usersSeen"], body["readAs"]) == ("ok", 1102, "admin")
    calls = impersonated(fake_nc, mark)
    assert calls[0] == "admin /ocs/v2.php/cloud/users/admin"  # the remembered admin, checked
    assert calls[1:] == ["admin /ocs/v2.php/cloud/users/details"] * 3  # 1,102 users: 3 pages
    assert len(control.events) == 2 * 1101  # alice and the u* users are new to this snapshot


async def test_a_disabled_app_skips_the_run_until_enabled(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    conn = await start()
    client = conn.app[NEXTCLOUD]
    fake_nc.enabled = False
    client.app_enabled = False  # as PUT /enabled?enabled=0 or the boot probe leave it
    mark = len(fake_nc.calls)
    body = await sync(conn)
    assert body["state"] == "app_disabled"
    assert [c.path for c in fake_nc.calls[mark:]] == ["/ocs/v1.php/apps/app_api/ex-app/state"]
    assert client.budget.used == 0
    fake_nc.enabled = True
    assert (await sync(conn))["state"] == "baseline"


async def test_runs_on_its_interval_after_init_and_shows_its_status(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    conn = await start(BEEFLOW_SYNC_INTERVAL_SECONDS="1")
    sync_state = conn.app[usersync.USER_SYNC]
    await run_init(conn, fake_nc)  # the progress-100 phase starts the first run
    await wait_for(lambda: sync_state.status.state == "baseline")
    fake_nc.add_user("gus", email=None, display_name="Gus", groups=[])
    await control.wait_events(1, timeout=5)  # sent by the periodic run, no trigger
    assert received(control) == [("user.created", "gus", None)]
    anonymous = await heartbeat(conn, trusted=None)
    assert set(anonymous["userSync"]) == {"state", "lastRunAt"}
    trusted = await heartbeat(conn, trusted=True)
    details = trusted["userSync"]
    assert details["intervalSeconds"] == 1
    assert details["usersSeen"] == 3
    assert details["eventsSentTotal"] == 1
    assert {"lastRunAt", "lastSuccessAt", "nextRunAt", "baselineAt", "eventsPending"} <= set(
        details
    )


async def test_no_tenant_key_waits(
    connector_factory: ConnectorFactory, service: FakeService
) -> None:
    conn = await connector_factory(BEEFLOW_TENANT_KEY="auto", BEEFLOW_API_BASE_URL=str(service.url))
    body = await sync(conn)
    assert body["state"] == "waiting_for_tenant_key"


def test_diff_is_pure_and_ordered() -> None:
    rec = userrecords.UserRecord
    old = {"a": rec("a@x", "A", ("g1",)), "b": rec(None, "B", ())}
    new = {"a": rec("a@x", "A", ("g2",)), "c": rec(None, "C", ("g1", "g3"))}
    assert userrecords.diff(old, new) == [
        ("group.member_added", "a", "g2"),
        ("group.member_removed", "a", "g1"),
        ("user.deleted", "b", None),
        ("user.created", "c", None),
        ("group.member_added", "c", "g1"),
        ("group.member_added", "c", "g3"),
    ]
    assert userrecords.diff(new, new) == []
