"""The user reconciliation on replicas sharing one storage: one syncs at a time from the state
the last one left, so each event reaches the service once; a scheduled run on a replica that
is not the one skips; the webhook deliveries one replica received are known to the one that
syncs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from beeflow.integrations.usersync import USER_SYNC
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service_control import ServiceControl
from tests.helpers import wait_for
from tests.integrations.test_usersync import received, start, sync

FAST = {"BEEFLOW_LEASE_TTL_SECONDS": "2"}
__all__ = ["start"]  # the fixture, imported for these tests


async def test_each_event_reaches_the_service_once_whichever_replica_syncs(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    first = await start(**FAST)
    assert (await sync(first))["state"] == "baseline"
    # Each replica starts with the baseline in memory: alone, each would diff against it.
    replicas = [first] + [await start(**FAST) for _ in range(2)]
    fake_nc.add_user("bob", email="bob@example.com", display_name="Bob", groups=["staff"])
    fake_nc.users["alice"].groups = ["staff", "devs"]
    answers = await asyncio.gather(*(sync(r) for r in replicas))
    assert sorted(received(control), key=str) == sorted(
        [
            ("user.created", "bob", None),
            ("group.member_added", "bob", "staff"),
            ("group.member_added", "alice", "devs"),
        ],
        key=str,
    )
    assert sum(a["eventsSent"] for a in answers) == 3
    assert [a["state"] for a in answers] == ["ok", "ok", "ok"]
    # Again, with the roles as they fall: each run starts from the snapshot the last one left.
    fake_nc.users["bob"].display_name = "Robert"
    await asyncio.gather(*(sync(r) for r in reversed(replicas)))
    assert received(control)[3:] == [("user.updated", "bob", None)]


async def test_a_scheduled_run_skips_while_another_replica_syncs(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    a, b = [await start(**FAST) for _ in range(2)]
    await sync(a)
    holder = a.app[USER_SYNC].lease
    assert holder is not None
    assert await holder.acquire()  # as if a's run were going on
    try:
        calls = len(fake_nc.calls)
        await b.app[USER_SYNC].run(scheduled=True)
        assert b.app[USER_SYNC].status.state == "standby"
        assert len(fake_nc.calls) == calls  # not one call to Nextcloud
    finally:
        holder.release()
    # Free again, a scheduled run right after a's still skips: a synced moments ago.
    await b.app[USER_SYNC].run(scheduled=True)
    assert b.app[USER_SYNC].status.state == "standby"


async def test_a_webhook_delivery_on_one_replica_is_not_sent_again_by_another(
    start: Callable[..., Any], fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    a, b = [await start(**FAST) for _ in range(2)]
    await sync(a)
    fake_nc.add_user("dave", email="dave@example.com", display_name="Dave", groups=["staff"])
    async with await b.request(
        "POST",
        "/webhook/nc-events",
        user="",
        json={"eventType": "OCP\\User\\Events\\UserCreatedEvent", "userId": "dave"},
    ) as resp:
        assert resp.status == 200
    await control.wait_events(1)
    recent = b.config.persistent_storage / "user-events-recent.json"
    await wait_for(recent.exists)
    body = await sync(a)
    assert received(control) == [
        ("user.created", "dave", None),
        ("group.member_added", "dave", "staff"),
    ]
    assert (body["eventsSent"], body["eventsSkippedAsDelivered"]) == (1, 1)
