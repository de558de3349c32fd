"""The worker's parts on their own: a task as Nextcloud hands it out, the service's answer checked
against what Nextcloud accepts, the error texts, the execute call's failures, the in-progress
ledger, and reporting a result."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from beeflow.config import Config
from beeflow.integrations import assistant_ledger
from beeflow.integrations.assistant_execute import (
    ERROR_MAX,
    NcTask,
    Outcome,
    check_output,
    clean,
    execute,
)
from beeflow.integrations.assistant_ledger import Entry, Ledger
from beeflow.integrations.assistant_nc import deliver, still_running
from beeflow.nextcloud.client import NextcloudClient
from beeflow.redact import REDACTOR
from beeflow.service_client import ServiceClient, ServiceUrl
from beeflow.tenant.state import TenantState
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_tasks import FakeTaskProcessing
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.helpers import SECRET, TENANT_KEY, base_env
from tests.integration.server import free_port

AGENT = "core:contextagent:interaction"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"id": 4, "type": "t", "userId": "bob", "appId": "a", "customId": "c", "input": []},
            NcTask(4, "t", "bob", "a", "c", {}),
        ),
        (
            {"id": 5, "type": "t", "userId": None, "input": {"input": "x"}},
            NcTask(5, "t", None, "", "", {"input": "x"}),
        ),
        ({"id": "5", "type": "t"}, None),
        ({"id": True, "type": "t"}, None),
        ({"id": 5}, None),
        ([1, 2], None),
    ],
)
def test_a_task_is_read_leniently(raw: Any, expected: NcTask | None) -> None:
    assert NcTask.parse(raw) == expected


@pytest.mark.parametrize(
    ("task_type", "output", "checked", "why"),
    [
        ("core:text2text", {"output": "x", "extra": 1}, {"output": "x"}, ""),
        ("core:text2text", {"output": 3}, None, "no output text"),
        ("core:text2text", "x", None, "no output object"),
        (
            AGENT,
            {"output": "a", "conversation_token": "t", "sources": ["f", "g"]},
            {"output": "a", "conversation_token": "t", "actions": "", "sources": ["f", "g"]},
            "",
        ),
        (
            AGENT,
            {"output": "a", "conversation_token": "t", "actions": "", "sources": [1]},
            {"output": "a", "conversation_token": "t", "actions": ""},
            "",
        ),
        (AGENT, {"output": "a"}, None, "no conversation_token"),
        (AGENT, {"output": "a", "conversation_token": "t", "actions": []}, None, "not text"),
    ],
)
def test_the_answer_is_what_nextcloud_accepts(
    task_type: str, output: Any, checked: dict[str, Any] | None, why: str
) -> None:
    outcome = check_output(task_type, output)
    assert outcome.output == checked
    if checked is None:
        assert outcome.kind == "invalid_output"
        assert why in outcome.detail


def test_error_texts_are_clean_bounded_and_secret_free() -> None:
    REDACTOR.add(TENANT_KEY)
    # The filler is no secret another test may have registered ("x" * 20 is an APP_SECRET).
    text = clean(f"oops\x00\x1b[31m {TENANT_KEY} " + ". " * 1000)
    assert TENANT_KEY not in text
    assert "\x00" not in text
    assert "\x1b" not in text
    assert len(text) == ERROR_MAX
    body = Outcome(None, "weird", "").report_body()
    assert body["errorMessage"] == "Bee Flow failed"
    assert "right now" in body["userFacingErrorMessage"]  # an unknown kind reads as upstream


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    async with FakeService(control=ServiceControl(verify_key=TENANT_KEY)) as svc:
        yield svc


async def _client(url: URL, key: str | None) -> ServiceClient:
    config = Config.from_env(
        base_env("http://nc.invalid", Path("unused"), BEEFLOW_API_BASE_URL=str(url))
    )
    client = ServiceClient(config, ServiceUrl(url), TenantState(key=key, instance_id="nc-1"))
    await client.open()
    return client


@pytest.mark.parametrize(
    ("key", "mode", "kind", "detail"),
    [
        (None, "ok", "unconfigured", "no tenant key"),
        ("tk_wrong_key_0123456789abcdef", "ok", "rejected", "signature"),
        (TENANT_KEY, "status:429", "rejected", "HTTP 429"),
        (TENANT_KEY, "status:503", "upstream", "HTTP 503: The model returned no output"),
    ],
)
async def test_execute_failures_become_outcomes(
    service: FakeService, key: str | None, mode: str, kind: str, detail: str
) -> None:
    service.tasks.mode = mode
    client = await _client(service.url, key)
    try:
        outcome = await execute(
            client, NcTask(1, "core:text2text", "bob", "", "", {"input": "x"}), 5
        )
    finally:
        await client.close()
    assert (outcome.kind, outcome.ok) == (kind, False)
    assert detail in outcome.detail


async def test_an_unknown_type_and_an_unreachable_service(service: FakeService) -> None:
    client = await _client(service.url, TENANT_KEY)
    try:
        task = NcTask(1, "core:text2image", None, "", "", {"input": "a cat"})
        outcome = await execute(client, task, 5)
        assert (outcome.kind, outcome.detail) == (
            "rejected",
            "HTTP 400: Unsupported task type: core:text2image",
        )
    finally:
        await client.close()
    gone = await _client(URL(f"http://127.0.0.1:{free_port()}"), TENANT_KEY)
    try:
        outcome = await execute(gone, NcTask(1, "core:text2text", None, "", "", {"input": "x"}), 5)
    finally:
        await gone.close()
    assert outcome.kind == "upstream"
    assert "cannot be reached" in outcome.detail


# ------------------------------------------------------------------ the ledger


def test_the_ledger_keeps_what_it_can_read(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, holder="h:1:a")
    ledger.path.write_text(
        '{"tasks": {"7": {"holder": "x", "provider": "p", "type": "t", "user": null,'
        ' "deadline": 5}, "x": {}, "8": {"holder": 1}, "9": {"holder": "x", "provider": "p",'
        ' "type": "t", "user": 3, "deadline": 1}, "10": {"holder": "x", "provider": "p",'
        ' "type": "t", "user": null, "deadline": true}}}'
    )
    assert [e.task_id for e in ledger.entries()] == [7]
    ledger.path.write_text("not json")
    assert ledger.entries() == []
    ledger.add(Entry(1, "h:1:a", "p", "t", None, 10.0))
    assert [e.task_id for e in ledger.entries()] == [1]


def test_the_ledger_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assistant_ledger, "MAX_ENTRIES", 3)
    ledger = Ledger(tmp_path, holder="h:1:a")
    for i in range(5):
        ledger.add(Entry(i, ledger.holder, "p", "t", None, float(i)))
    assert sorted(e.task_id for e in ledger.entries()) == [2, 3, 4]


def test_only_one_process_claims_an_abandoned_task(tmp_path: Path) -> None:
    dead = Ledger(tmp_path, holder="pod-a:1:dead")
    dead.add(Entry(1, dead.holder, "p", "t", None, 0.0))
    one, two = Ledger(tmp_path, holder="pod-b:2:one"), Ledger(tmp_path, holder="pod-c:3:two")
    (lost,) = one.abandoned(100.0, set(), 60.0)
    assert two.abandoned(100.0, set(), 60.0) == [lost]
    mine = one.claim(lost, 200.0)
    assert mine is not None
    assert mine.holder == one.holder
    assert two.claim(lost, 200.0) is None
    two.remove(1)  # not its entry: nothing happens
    assert [e.holder for e in one.entries()] == [one.holder]
    one.remove(1)
    assert one.entries() == []


# ------------------------------------------------------------------ reporting


@pytest.fixture
async def nc() -> AsyncIterator[tuple[FakeNextcloud, FakeTaskProcessing, NextcloudClient]]:
    fake = FakeNextcloud(secret=SECRET)
    fake.add_user("alice")
    queue = FakeTaskProcessing(fake).mount()
    await fake.start()
    client = NextcloudClient(Config.from_env(base_env(fake.url, Path("unused"))))
    client.budget_path = None
    await client.open()
    yield fake, queue, client
    await client.close()
    await fake.stop()


async def test_a_report_nextcloud_keeps_refusing_gives_up_with_the_reason(
    nc: tuple[FakeNextcloud, FakeTaskProcessing, NextcloudClient],
) -> None:
    fake, queue, client = nc
    task = queue.schedule("core:text2text")
    queue.result_failures = 5
    assert await deliver(client, task.id, {"errorMessage": "x"}) == "HTTP 500"
    assert len(fake.calls_to("/ocs/v2.php/taskprocessing/tasks_provider/")) == 3
    fake.enabled = False  # a disabled app's calls are refused
    assert await deliver(client, task.id, {"errorMessage": "x"}) == "HTTP 401"
    fake.enabled = True
    fake.down = True
    assert await deliver(client, task.id, {"errorMessage": "x"}) == "HTTP 503"


async def test_asking_whether_a_task_still_runs(
    nc: tuple[FakeNextcloud, FakeTaskProcessing, NextcloudClient],
) -> None:
    _, queue, client = nc
    task = queue.schedule("core:text2text", user="alice")
    task.status = 2
    assert await still_running(client, task.id, "alice") is True
    task.status = 3
    assert await still_running(client, task.id, "alice") is False
    assert await still_running(client, 999, "alice") is False  # gone
    assert await still_running(client, task.id, None) is True  # cannot be asked: assume so
