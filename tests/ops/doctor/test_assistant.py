"""doctor's view of the Assistant and Talk, read from the running connector's heartbeat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from beeflow.config import Config
from beeflow.health import HEALTH
from beeflow.ops.doctor.result import PASS, SKIP, WARN
from tests.ops.doctor.conftest import Env, checks_of


def _health(**fields: dict[str, Any]) -> Callable[[web.Application], None]:
    def customise(app: web.Application) -> None:
        for name, value in fields.items():
            app[HEALTH][name] = _provider(value)

    return customise


def _provider(value: dict[str, Any]) -> Callable[[bool], dict[str, Any]]:
    return lambda _trusted: dict(value)


async def _running(connector_factory: Any, env: Env, **fields: dict[str, Any]) -> Env:
    conn = await connector_factory(Config.from_env(env), customise=_health(**fields))
    return {**env, "APP_PORT": str(conn.url.port)}


async def test_skipped_without_a_running_connector(env: Env) -> None:
    assert (await checks_of(env))["assistant"].status == SKIP


async def test_registered_providers_and_a_missing_talk_pass(
    env: Env, connector_factory: Any
) -> None:
    running = await _running(
        connector_factory,
        env,
        taskProcessing={"state": "registered", "types": 11},
        assistant={"state": "idle", "running": 0, "completed": 7, "failed": 1, "ledger": "ok"},
        talkBot={"state": "talk_missing"},
    )
    check = (await checks_of(running))["assistant"]
    assert check.status == PASS
    assert check.summary == (
        "11 task type(s) served, 7 completed, 1 failed; Talk is not installed (no bot)"
    )


async def test_a_refused_registration_and_an_unwritable_ledger_warn(
    env: Env, connector_factory: Any
) -> None:
    running = await _running(
        connector_factory,
        env,
        taskProcessing={"state": "failed", "types": 0, "lastError": "x: HTTP 503 OCS None"},
        assistant={"state": "paused", "running": 0, "ledger": "failing"},
        talkBot={"state": "registered"},
    )
    check = (await checks_of(running))["assistant"]
    assert check.status == WARN
    assert "registration was refused (x: HTTP 503 OCS None)" in check.summary
    assert "cannot be written" in check.summary
    assert "APP_PERSISTENT_STORAGE" in check.remedy
