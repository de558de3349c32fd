"""The Task Processing worker against the fake Nextcloud's task queue and the fake service's
execute route: tasks completed and failed, the watchdog, the trigger and the poll backstop, the
bounded pool, several workers on one queue, shutdown, and the sweep of a dead worker's tasks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from beeflow.integrations.assistant import (
    MAX_PER_DRAIN,
    REPORT_GRACE,
    WORKER,
    Worker,
    watchdog,
)
from beeflow.integrations.assistant_ledger import LEDGER_FILE, Entry, Ledger
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.nextcloud.task_processing import PROVIDERS, REGISTRAR
from beeflow.service_client import SERVICE
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import RunningConnector, wait_for
from tests.integrations.world import World, registration, world_fixture

SUMMARY = "core:text2text:summary"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async for w in world_fixture():
        yield w


@pytest.fixture
def fake_nc(world: World) -> FakeNextcloud:
    return world.nc


async def registered(conn: RunningConnector) -> RunningConnector:
    conn.app[REGISTRAR].offer_cache_seconds = 0.0
    await registration(conn).run_now("test")
    assert conn.app[PROVIDERS].state == "registered"
    return conn


@pytest.mark.parametrize(
    ("runtime", "low", "high", "expected"),
    [(30, 60, 300, 180), (5, 60, 300, 60), (60, 60, 300, 300), (15, 60, 300, 90), (20, 9, 3, 9)],
)
def test_the_watchdog_is_six_runtimes_clamped(
    runtime: int, low: float, high: float, expected: float
) -> None:
    assert watchdog(runtime, low, high) == expected


async def test_a_scheduled_task_completes_with_the_services_output(
    world: World, connector_factory: ConnectorFactory
) -> None:
    await registered(await connector_factory(**world.env()))
    task = world.tasks.schedule(SUMMARY, "a long text", user="alice")
    (done,) = await world.tasks.wait_done(1)
    assert done is task
    assert (task.status_name, task.output) == (
        "STATUS_SUCCESSFUL",
        {"output": f"Bee Flow ({SUMMARY}): a long text"},
    )
    (execution,) = world.service.tasks.executions
    assert execution.body == {
        "taskType": SUMMARY,
        "input": {"input": "a long text"},
        "ncUid": "alice",
        "customId": "",
        "appId": "test",
    }
    assert world.service.tasks.refused == []  # signed with the tenant key


async def test_the_agent_reports_its_token_actions_and_sources(
    world: World, connector_factory: ConnectorFactory
) -> None:
    await registered(await connector_factory(**world.env()))
    task = world.tasks.schedule("core:contextagent:interaction", "what is new?", user="alice")
    task.input["conversation_token"] = "conv-7"
    await world.tasks.wait_done(1)
    assert task.status_name == "STATUS_SUCCESSFUL"
    assert task.output == {
        "output": "Bee Flow (core:contextagent:interaction): what is new?",
        "conversation_token": "conv-7",
        "actions": "",
        "sources": [],
    }


@pytest.mark.parametrize(
    ("mode", "error", "user_error"),
    [
        ("status:502", "Bee Flow: HTTP 502: The model returned no output", "right now"),
        ("status:500", "Bee Flow: HTTP 500: The model returned no output", "right now"),
    ],
)
async def test_a_service_failure_fails_the_task_with_its_message(
    world: World,
    connector_factory: ConnectorFactory,
    mode: str,
    error: str,
    user_error: str,
) -> None:
    await registered(await connector_factory(**world.env()))
    world.service.tasks.mode = mode
    task = world.tasks.schedule(SUMMARY)
    await world.tasks.wait_done(1)
    assert (task.status_name, task.error_message) == ("STATUS_FAILED", error)
    (report,) = [
        c
        for c in world.nc.calls_to("/ocs/v2.php/taskprocessing/tasks_provider/")
        if "result" in c.path
    ]
    assert user_error in report.json()["userFacingErrorMessage"]


async def test_a_text_task_without_text_fails_without_asking_the_service(
    world: World, connector_factory: ConnectorFactory
) -> None:
    await registered(await connector_factory(**world.env()))
    task = world.tasks.schedule(SUMMARY, "   ")
    await world.tasks.wait_done(1)
    assert task.status_name == "STATUS_FAILED"
    assert "no text to work on" in (task.error_message or "")
    assert world.service.tasks.executions == []


async def test_an_answer_nextcloud_would_refuse_is_failed_with_a_reason(
    world: World, connector_factory: ConnectorFactory
) -> None:
    await registered(await connector_factory(**world.env()))
    world.service.tasks.answer = lambda _type, _inputs: ""  # the service's 502
    world.service.tasks.mode = "ok"
    agent = world.tasks.schedule("core:contextagent:interaction", "hi", user=None)
    await world.tasks.wait_done(1)
    # No Nextcloud user: the service cannot run the agent for nobody (its 500, worded).
    assert agent.status_name == "STATUS_FAILED"
    assert "No Bee Flow user is linked" in (agent.error_message or "")


async def test_a_service_that_never_answers_gives_an_error_after_the_watchdog(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await registered(
        await connector_factory(
            **world.env(
                BEEFLOW_TASK_WATCHDOG_MIN_SECONDS="0.4", BEEFLOW_TASK_WATCHDOG_MAX_SECONDS="0.4"
            )
        )
    )
    world.service.tasks.mode = "stall"
    task = world.tasks.schedule(SUMMARY)
    started = time.monotonic()
    await world.tasks.wait_done(1)
    assert time.monotonic() - started >= 0.4
    assert task.status_name == "STATUS_FAILED"
    assert task.error_message == "Bee Flow: no answer within 0.4 s"
    stats = conn.app[WORKER].stats
    assert (stats.timed_out, stats.failed, stats.completed) == (1, 1, 0)


async def test_trigger_answers_at_once_and_drains(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await registered(
        await connector_factory(
            **world.env(BEEFLOW_TASK_POLL_SECONDS="30", BEEFLOW_TASK_POLL_MAX_SECONDS="30")
        )
    )
    world.service.tasks.gate = asyncio.Event()
    task = world.tasks.schedule(SUMMARY)
    async with await conn.request(
        "POST", f"/trigger?providerId=bee_flow:{SUMMARY}", user=""
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    # Answered while the task is still with the service.
    await world.service.tasks.wait_executions(1)
    assert task.status_name == "STATUS_RUNNING"
    world.service.tasks.gate.set()
    await world.tasks.wait_done(1)
    async with await conn.request("GET", "/trigger?providerId=other_app:core:x", user="") as resp:
        assert await resp.json() == {"status": "ignored", "code": "unknown_provider"}


async def test_trigger_is_for_appapi_not_for_users(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await registered(await connector_factory(**world.env()))
    async with await conn.request("POST", "/trigger?providerId=x") as resp:
        assert resp.status == 401
    async with await conn.request("POST", "/trigger?providerId=x", user="alice") as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "admin_required"


async def test_the_poll_backs_off_when_idle_and_comes_back_with_a_trigger(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await registered(await connector_factory(**world.env()))
    worker = conn.app[WORKER]
    await wait_for(lambda: worker.interval == 0.4, timeout=10)
    calls = world.tasks.next_calls
    worker.trigger()
    assert worker.interval == 0.05
    await wait_for(lambda: world.tasks.next_calls > calls)
    world.tasks.schedule(SUMMARY)
    await world.tasks.wait_done(1)
    assert worker.interval <= 0.1  # a found task keeps the interval short


async def test_at_most_the_concurrency_per_provider_and_fifty_per_drain(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await registered(
        await connector_factory(
            **world.env(
                BEEFLOW_TASK_CONCURRENCY="2",
                BEEFLOW_TASK_POLL_SECONDS="60",
                BEEFLOW_TASK_POLL_MAX_SECONDS="60",
            )
        )
    )
    worker = conn.app[WORKER]
    gate = world.service.tasks.gate = asyncio.Event()
    for _ in range(5):
        world.tasks.schedule(SUMMARY)
    for _ in range(5):
        world.tasks.schedule("core:text2text:headline")
    worker.trigger()
    # Two per provider; the held tasks finish nothing, so nothing fetches more meanwhile.
    await wait_for(lambda: len([t for t in world.tasks.tasks.values() if t.status == 2]) == 4)
    assert await worker.drain() == 0  # no room
    await world.service.tasks.wait_executions(4)
    assert world.service.tasks.max_running == 4
    scheduled = [t for t in world.tasks.tasks.values() if t.status == 1]
    assert len(scheduled) == 6
    gate.set()
    await world.tasks.wait_done(10)
    assert world.service.tasks.max_running <= 4
    assert len(world.service.tasks.executions) == 10
    # A drain stops after 50 tasks (the next one picks up the rest). All 55 are scheduled before
    # any drain can fetch one, so the first drain that fetches takes exactly 50.
    worker.config = attrs.evolve(worker.config, task_concurrency=64)
    for _ in range(MAX_PER_DRAIN + 5):
        world.tasks.schedule(SUMMARY)
    worker.trigger()
    await world.tasks.wait_done(10 + MAX_PER_DRAIN + 5, timeout=20)
    assert worker.stats.largest_drain == MAX_PER_DRAIN
    assert len(world.service.tasks.executions) == 10 + MAX_PER_DRAIN + 5


async def test_a_drain_during_a_drain_only_asks_for_another_round(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await registered(
        await connector_factory(
            **world.env(BEEFLOW_TASK_POLL_SECONDS="60", BEEFLOW_TASK_POLL_MAX_SECONDS="60")
        )
    )
    # The app's own worker drained once when the providers appeared and now sleeps for 60 s; a
    # second worker on the same resources is driven by hand.
    await wait_for(lambda: world.tasks.next_calls >= 1 and not conn.app[WORKER].draining)
    app_worker = conn.app[WORKER]
    worker = Worker(
        app_worker.config,
        lambda: conn.app[NEXTCLOUD],
        conn.app[SERVICE],
        app_worker.providers,
        None,
    )
    world.tasks.schedule(SUMMARY)
    first = asyncio.ensure_future(worker.drain())  # noqa: TID251 - the test's own task
    await asyncio.sleep(0)
    assert await worker.drain() == 0  # joined: nothing fetched by this call
    assert await first == 1
    await world.tasks.wait_done(1)
    await worker.close()


async def test_two_workers_on_one_queue_complete_each_task_once(
    world: World, connector_factory: ConnectorFactory, tmp_path: Path
) -> None:
    """Nextcloud locks each task to the caller it hands it to; nothing in the worker assumes it
    is alone (tests/integration/test_task_processing_real.py does this with two processes)."""
    one = await registered(await connector_factory(**world.env()))
    other = tmp_path / "other"
    other.mkdir()
    two = await registered(
        await connector_factory(APP_PERSISTENT_STORAGE=str(other), **world.env())
    )
    tasks = [world.tasks.schedule(SUMMARY, f"text {i}") for i in range(30)]
    await world.tasks.wait_done(30, timeout=20)
    assert all(t.status_name == "STATUS_SUCCESSFUL" and t.results == 1 for t in tasks)
    assert len(world.service.tasks.executions) == 30
    counts = [c.app[WORKER].stats.completed for c in (one, two)]
    assert sum(counts) == 30


async def test_stopping_reports_a_running_task_as_stopped(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await registered(await connector_factory(**world.env()))
    world.service.tasks.gate = asyncio.Event()  # never set: the task is still running
    task = world.tasks.schedule(SUMMARY)
    await world.service.tasks.wait_executions(1)
    await conn.close()
    assert task.status_name == "STATUS_FAILED"
    assert task.error_message == "Bee Flow: the connector stopped"
    ledger = json.loads((Path(conn.config.persistent_storage) / LEDGER_FILE).read_text())
    assert ledger == {"tasks": {}}


async def test_a_dead_workers_task_is_reported_by_the_sweep(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await registered(
        await connector_factory(
            **world.env(BEEFLOW_TASK_POLL_SECONDS="60", BEEFLOW_TASK_POLL_MAX_SECONDS="60")
        )
    )
    worker = conn.app[WORKER]
    assert worker.ledger is not None
    # The poller swept once when the providers appeared; the next sweep is 30 s away.
    await wait_for(lambda: world.tasks.next_calls >= 1)
    stuck = world.tasks.schedule(SUMMARY, user="alice")
    fresh = world.tasks.schedule(SUMMARY, user="alice")
    done = world.tasks.schedule(SUMMARY, user="alice")
    for task in (stuck, fresh, done):
        task.status = 2  # handed out by `next` to a worker that then died
    done.status, done.output = 3, {"output": "reported just before it died"}
    ledger = Ledger(Path(conn.config.persistent_storage), holder="pod-b:7:dead")
    now = time.time()
    ledger.add(Entry(stuck.id, ledger.holder, "p", SUMMARY, "alice", now - REPORT_GRACE - 1))
    ledger.add(Entry(fresh.id, ledger.holder, "p", SUMMARY, "alice", now + 100))
    ledger.add(Entry(done.id, ledger.holder, "p", SUMMARY, "alice", now - REPORT_GRACE - 1))
    assert await worker.sweep() == 1
    assert (stuck.status_name, stuck.error_message) == (
        "STATUS_FAILED",
        "Bee Flow: the connector stopped",
    )
    assert done.status_name == "STATUS_SUCCESSFUL"  # asked as alice first: not overwritten
    assert fresh.status_name == "STATUS_RUNNING"  # its worker may still report it
    assert {e.task_id for e in ledger.entries()} == {fresh.id}
    assert worker.stats.recovered == 1


async def test_a_restart_reports_the_previous_process_tasks_at_once(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await registered(
        await connector_factory(
            **world.env(BEEFLOW_TASK_POLL_SECONDS="60", BEEFLOW_TASK_POLL_MAX_SECONDS="60")
        )
    )
    worker = conn.app[WORKER]
    assert worker.ledger is not None
    await wait_for(lambda: world.tasks.next_calls >= 1)  # the poller's first sweep is done
    task = world.tasks.schedule(SUMMARY, user=None)
    task.status = 2
    host_pid = worker.ledger.holder.rsplit(":", 1)[0]
    earlier = Ledger(Path(conn.config.persistent_storage), holder=f"{host_pid}:0ld")
    earlier.add(Entry(task.id, earlier.holder, "p", SUMMARY, None, time.time() + 300))
    assert await worker.sweep() == 1
    assert task.status_name == "STATUS_FAILED"


async def test_a_result_nextcloud_could_not_store_is_sent_again(
    world: World, connector_factory: ConnectorFactory
) -> None:
    """SQLite's "database is locked" reaches the provider as 500 "Internal error"."""
    await registered(await connector_factory(**world.env()))
    world.tasks.result_failures = 2
    task = world.tasks.schedule(SUMMARY)
    await world.tasks.wait_done(1)
    assert task.status_name == "STATUS_SUCCESSFUL"
    results = [c for c in world.nc.calls_to("/ocs/v2.php/taskprocessing/") if "result" in c.path]
    assert len(results) == 3
