"""Bee Flow as a Task Processing provider on the real Nextcloud 32.0.1: the providers Nextcloud
lists, a task scheduled by bob completed with the fake service's output, a service failure and a
service that never answers ending the task as failed with the message stored, two connector
processes draining one queue with every task completed exactly once, and the Talk bot's
registration where Talk is not installed."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import aiohttp
import pytest
from yarl import URL

from tests.integration.conftest import Lane
from tests.integration.exapp import Connector, wait_until
from tests.integration.server import free_port

pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(240)]

TP: Final = "/ocs/v2.php/taskprocessing"
SERVED: Final = {
    "core:text2text",
    "core:text2text:chat",
    "core:text2text:summary",
    "core:text2text:headline",
    "core:text2text:topics",
    "core:text2text:proofread",
    "core:text2text:reformulation",
    "core:text2text:simplification",
    "core:text2text:formalization",
    "core:text2text:translate",
    "core:contextagent:interaction",
}
FAST: Final = {"BEEFLOW_TASK_POLL_SECONDS": "0.2", "BEEFLOW_TASK_POLL_MAX_SECONDS": "1"}
RESULT_LINE: Final = re.compile(r'"POST /ocs/v2\.php/taskprocessing/tasks_provider/(\d+)/result')


def restart(lane: Lane, **overrides: str) -> Connector:
    """The lane's connector again, with settings of this module (the registration with AppAPI
    stays: same port, same secret)."""
    lane.stop_connector()
    lane.connector = Connector.start(lane.env(**overrides))
    lane.connector.wait_line("listening on")
    return lane.connector


@pytest.fixture(scope="module")
def fast_lane(lane: Lane) -> Iterator[Lane]:
    restart(lane, **FAST)
    wait_until(lambda: _health(lane, lane.port)["taskProcessing"]["state"] == "registered", 60,
               "providers registered")  # fmt: skip
    yield lane
    lane.service.service.tasks.mode = "ok"
    restart(lane)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _health(lane: Lane, port: int) -> dict[str, Any]:
    """The connector's heartbeat with the secret from loopback: doctor's view, details in."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/heartbeat", headers=lane.appapi_headers()
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        data: dict[str, Any] = json.loads(resp.read())
    return data


async def ocs(
    session: aiohttp.ClientSession,
    lane: Lane,
    method: str,
    path: str,
    *,
    auth: dict[str, str],
    body: Any = None,
) -> tuple[int, Any]:
    url = URL(str(lane.nc.url) + path).update_query(format="json")
    headers = {**auth, "OCS-APIRequest": "true", "Accept": "application/json"}
    async with session.request(method, url, json=body, headers=headers) as resp:
        data = await resp.json(content_type=None) if resp.status != 204 else None
        return resp.status, data


async def schedule(
    session: aiohttp.ClientSession,
    lane: Lane,
    task_type: str,
    text: str,
    *,
    auth: dict[str, str],
    custom_id: str = "",
) -> int:
    body = {"input": {"input": text}, "type": task_type, "appId": "beeflow-tests"}
    if custom_id:
        body["customId"] = custom_id
    status, data = await ocs(session, lane, "POST", f"{TP}/schedule", auth=auth, body=body)
    assert status == 200, data
    return int(data["ocs"]["data"]["task"]["id"])


def task_rows(lane: Lane, ids: list[int]) -> dict[int, tuple[int, str | None]]:
    """(status, error_message) per task, from Nextcloud's own table (its API shows no error)."""
    uri = f"file:{lane.nc.database}?mode=ro"
    marks = ",".join("?" * len(ids))
    with sqlite3.connect(uri, uri=True, timeout=10) as db:
        rows = db.execute(
            f"SELECT id, status, error_message FROM oc_taskprocessing_tasks WHERE id IN ({marks})",  # noqa: S608
            ids,
        ).fetchall()
    return {int(r[0]): (int(r[1]), r[2]) for r in rows}


async def finished(
    lane: Lane, ids: list[int], timeout: float = 60.0
) -> dict[int, tuple[int, str | None]]:
    """Wait until every task is successful (3), failed (4) or cancelled (5)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await asyncio.to_thread(task_rows, lane, ids)
        if len(rows) == len(ids) and all(status >= 3 for status, _ in rows.values()):
            return rows
        if time.monotonic() >= deadline:
            tail = "\n".join(lane.connector.lines[-30:]) if lane.connector else ""
            raise AssertionError(f"tasks not finished: {rows}\nthe connector's last lines:\n{tail}")
        await asyncio.sleep(0.2)


async def test_the_providers_are_listed_for_the_types_nextcloud_knows(
    fast_lane: Lane, session: aiohttp.ClientSession
) -> None:
    status, data = await ocs(session, fast_lane, "GET", f"{TP}/tasktypes", auth=fast_lane.nc.bob)
    assert status == 200
    listed = set(data["ocs"]["data"]["types"])
    assert listed >= SERVED
    # Nextcloud 32 has no core:text2text:improve: registered, not offered, then dropped.
    assert "core:text2text:improve" not in listed
    detail = _health(fast_lane, fast_lane.port)["taskProcessing"]
    assert detail["state"] == "registered"
    assert detail["typeStates"]["core:text2text:improve"] in ("checking", "not_offered")
    assert {t for t, s in detail["typeStates"].items() if s == "registered"} == SERVED
    name = "bee_flow:core:contextagent:interaction"
    status, data = await ocs(
        session,
        fast_lane,
        "GET",
        f"/ocs/v2.php/apps/app_api/api/v1/ai_provider/task_processing?name={name}",
        auth=fast_lane.appapi_headers(),
    )
    assert status == 200, data
    provider = data["ocs"]["data"]
    assert (provider["name"], provider["task_type"]) == (name, "core:contextagent:interaction")


async def test_bobs_task_completes_with_the_services_output(
    fast_lane: Lane, session: aiohttp.ClientSession
) -> None:
    task_id = await schedule(session, fast_lane, "core:text2text", "hello", auth=fast_lane.nc.bob)
    await finished(fast_lane, [task_id])
    status, data = await ocs(
        session, fast_lane, "GET", f"{TP}/task/{task_id}", auth=fast_lane.nc.bob
    )
    assert status == 200
    task = data["ocs"]["data"]["task"]
    assert (task["status"], task["userId"], task["output"]) == (
        "STATUS_SUCCESSFUL",
        "bob",
        {"output": "Bee Flow (core:text2text): hello"},
    )
    # Signed with the tenant key the bootstrap handed out, as the service checks it.
    assert not fast_lane.service.service.tasks.refused


async def test_a_service_failure_ends_the_task_failed_with_its_message(
    fast_lane: Lane, session: aiohttp.ClientSession
) -> None:
    tasks = fast_lane.service.service.tasks
    tasks.mode = "status:502"
    try:
        task_id = await schedule(
            session, fast_lane, "core:text2text:summary", "a text", auth=fast_lane.nc.bob
        )
        rows = await finished(fast_lane, [task_id])
    finally:
        tasks.mode = "ok"
    assert rows[task_id] == (4, "Bee Flow: HTTP 502: The model returned no output")
    _status, data = await ocs(
        session, fast_lane, "GET", f"{TP}/task/{task_id}", auth=fast_lane.nc.bob
    )
    task = data["ocs"]["data"]["task"]
    assert task["status"] == "STATUS_FAILED"
    assert "errorMessage" not in task  # Nextcloud 32's task API shows the status only


async def test_a_service_that_never_answers_fails_the_task_after_the_watchdog(
    fast_lane: Lane, session: aiohttp.ClientSession
) -> None:
    restart(
        fast_lane,
        **FAST,
        BEEFLOW_TASK_WATCHDOG_MIN_SECONDS="2",
        BEEFLOW_TASK_WATCHDOG_MAX_SECONDS="2",
    )
    tasks = fast_lane.service.service.tasks
    try:
        wait_until(
            lambda: _health(fast_lane, fast_lane.port)["taskProcessing"]["state"] == "registered",
            60,
            "providers registered",
        )
        tasks.mode = "stall"
        started = time.monotonic()
        task_id = await schedule(
            session, fast_lane, "core:text2text:headline", "slow", auth=fast_lane.nc.bob
        )
        rows = await finished(fast_lane, [task_id])
        assert time.monotonic() - started >= 2
        assert rows[task_id] == (4, "Bee Flow: no answer within 2 s")
    finally:
        tasks.mode = "ok"
        restart(fast_lane, **FAST)


async def test_two_connectors_drain_one_queue_and_complete_each_task_once(
    fast_lane: Lane, session: aiohttp.ClientSession
) -> None:
    """Replicas need no lease for this: Nextcloud locks each task to the caller it hands it to.
    The second process shares the first one's storage (replicas on one volume)."""
    wait_until(
        lambda: _health(fast_lane, fast_lane.port)["taskProcessing"]["state"] == "registered",
        60,
        "providers registered",
    )
    port = free_port()
    second = Connector.start(fast_lane.env(APP_PORT=str(port), **FAST))
    tasks = fast_lane.service.service.tasks
    try:
        second.wait_line("listening on")
        wait_until(
            lambda: _health(fast_lane, port)["taskProcessing"]["state"] == "registered",
            60,
            "the second connector's providers registered",
        )
        tasks.delay = 0.4  # long enough for both to be busy at once
        before = len(tasks.executions)
        log_mark = fast_lane.nc.access_count()
        ids = [
            await schedule(
                session,
                fast_lane,
                "core:text2text:summary",
                f"text {i}",
                auth=fast_lane.nc.admin,
                custom_id=f"once-{i}",
            )
            for i in range(16)
        ]
        rows = await finished(fast_lane, ids, timeout=90)
        shares = [_health(fast_lane, p)["assistant"]["completed"] for p in (fast_lane.port, port)]
    finally:
        tasks.delay = 0.0
        second.stop()
    assert {status for status, _ in rows.values()} == {3}, rows
    runs = Counter(e.body["customId"] for e in tasks.executions[before:])
    assert runs == Counter({f"once-{i}": 1 for i in range(16)})
    reports = Counter(
        int(m.group(1))
        for line in fast_lane.nc.access_lines(log_mark)
        if (m := RESULT_LINE.search(line))
    )
    assert reports == Counter(dict.fromkeys(ids, 1))
    # Both took part (each runs at most 4 at once and a task takes 0.4 s), and no task twice.
    assert sum(shares) == 16
    assert min(shares) >= 1, shares


async def test_the_talk_bot_waits_for_talk(fast_lane: Lane) -> None:
    """Talk is not in the bundled Nextcloud: AppAPI 32 answers 400 "Talk bots could not be
    registered", which is not an error of the connector's."""
    talk = _health(fast_lane, fast_lane.port)["talkBot"]
    assert talk == {"state": "talk_missing"}
    init = _health(fast_lane, fast_lane.port)["init"]
    assert init["state"] == "done"
