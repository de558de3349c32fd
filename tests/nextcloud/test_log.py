"""Warnings and errors into nextcloud.log through AppAPI's log endpoint, against the fake: levels
mapped, secrets masked by the local redactor, held until Nextcloud knows the app and while the
failure budget is paused, no feedback from a failed log call, a flood cut by the rate limit,
records from worker threads shipped too."""

from __future__ import annotations

import asyncio
import logging

from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.nextcloud.log import BURST, HANDLER, LOG_PATH, nextcloud_level
from beeflow.redact import REDACTOR
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET, RunningConnector, wait_for
from tests.nextcloud.helpers import settled
from tests.tenant.helpers import run_init

probe = logging.getLogger("beeflow.probe")


def messages(nc: FakeNextcloud) -> list[tuple[int, str]]:
    return [(int(e["level"]), str(e["message"])) for e in nc.logs]


async def enabled(connector: RunningConnector, nc: FakeNextcloud) -> None:
    await run_init(connector, nc)
    await settled(connector)
    nc.logs.clear()


def test_levels() -> None:
    assert [nextcloud_level(n) for n in (30, 35, 40, 45, 50, 60)] == [2, 2, 3, 3, 4, 4]


async def test_warnings_and_errors_reach_nextcloud_with_their_level(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    await enabled(connector, fake_nc)
    probe.info("not shipped")
    probe.warning("disk %s is at %d%%", "data", 93)
    probe.error("the service refused the key")
    try:
        raise ValueError("bad value 42")
    except ValueError:
        probe.exception("crashed while reading")
    await wait_for(lambda: len(fake_nc.logs) == 3)
    assert messages(fake_nc) == [
        (2, "[probe] disk data is at 93%"),
        (3, "[probe] the service refused the key"),
        (3, "[probe] crashed while reading (ValueError)"),
    ]
    calls = fake_nc.calls_to(LOG_PATH, "POST")
    assert all(c.user == "" and c.auth == "ok" for c in calls)


async def test_secrets_are_masked_like_in_the_local_log(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    await enabled(connector, fake_nc)
    key = "tk_live_abcdefghijklmnop0123456789"
    REDACTOR.add(key)
    probe.warning("secret %s and key %s in a message", SECRET, key)
    await wait_for(lambda: len(fake_nc.logs) == 1)
    (_, text) = messages(fake_nc)[0]
    assert text == "[probe] secret *** and key *** in a message"
    raw = b"".join(c.body for c in fake_nc.calls)
    assert SECRET.encode() not in raw
    assert key.encode() not in raw


async def test_held_until_the_app_is_known_and_while_the_budget_is_paused(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    handler = connector.app[HANDLER]
    handler.hold_seconds = 0.02
    probe.warning("before install")
    await asyncio.sleep(0.05)
    assert fake_nc.calls_to(LOG_PATH) == []  # nobody knows whether Nextcloud knows us yet
    await run_init(connector, fake_nc)
    await wait_for(lambda: any("before install" in m for _, m in messages(fake_nc)))
    await settled(connector)

    client = connector.app[NEXTCLOUD]
    for _ in range(client.budget.limit):
        client.budget.record_failure("test")
    assert client.budget.spent
    sent = len(fake_nc.calls_to(LOG_PATH))
    probe.warning("while paused")
    await asyncio.sleep(0.1)
    assert len(fake_nc.calls_to(LOG_PATH)) == sent
    assert handler.stats.held >= 1
    client.budget.reset()
    await wait_for(lambda: any("while paused" in m for _, m in messages(fake_nc)), timeout=10)


async def test_a_failed_log_call_is_not_logged_to_nextcloud_again(
    connector: RunningConnector, fake_nc: FakeNextcloud, caplog: object
) -> None:
    await enabled(connector, fake_nc)
    handler = connector.app[HANDLER]
    client = connector.app[NEXTCLOUD]
    fake_nc.secret = "another-secret"  # every call refused from now on: the budget pauses
    for i in range(client.budget.limit + 2):
        probe.warning("line %d", i)
    await wait_for(lambda: client.budget.spent, timeout=10)
    await asyncio.sleep(0.1)
    refused = fake_nc.calls_to(LOG_PATH)
    # One call per line until the budget paused; the budget's own error ("pausing Nextcloud
    # calls"), logged during a log call, was never queued.
    # (A trusted inbound request, e.g. AppAPI's own call, may lift the pause for one trial.)
    assert client.budget.limit <= len(refused) <= client.budget.limit + 1
    assert all("pausing" not in message for _, message in handler._queue)
    assert fake_nc.logs == []


async def test_a_flood_is_cut_by_the_rate_limit(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    await enabled(connector, fake_nc)
    handler = connector.app[HANDLER]
    for i in range(BURST * 3):
        probe.warning("flood %d", i)
    await wait_for(lambda: len(fake_nc.logs) >= BURST - 1, timeout=10)
    await asyncio.sleep(0.1)
    assert BURST - 1 <= len(fake_nc.logs) <= BURST + 1
    assert handler.stats.dropped_rate >= BURST * 2 - 1


async def test_records_from_worker_threads_are_shipped(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    await enabled(connector, fake_nc)
    await asyncio.to_thread(probe.warning, "from a thread")
    await wait_for(lambda: messages(fake_nc) == [(2, "[probe] from a thread")])


async def test_only_while_the_app_runs(connector: RunningConnector, fake_nc: FakeNextcloud) -> None:
    await enabled(connector, fake_nc)
    handler = connector.app[HANDLER]
    assert handler in logging.getLogger("beeflow").handlers
    await connector.close()
    assert handler not in logging.getLogger("beeflow").handlers
    probe.warning("after stop")
    await asyncio.sleep(0.05)
    assert fake_nc.logs == []
