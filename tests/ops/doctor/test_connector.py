"""The connector running in this container, asked through its heartbeat: healthy, paused after
refused AppAPI logins, or with an exited tunnel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from beeflow.config import Config
from beeflow.demo.loopback import serve_loopback
from beeflow.health import HEALTH
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.ops.doctor.connector import excerpt
from beeflow.ops.doctor.result import FAIL, PASS
from tests.ops.doctor.conftest import Env, checks_of


async def _running(
    connector_factory: Any, env: Env, customise: Callable[[web.Application], None] | None = None
) -> Env:
    conn = await connector_factory(Config.from_env(env), customise=customise)
    return {**env, "APP_PORT": str(conn.url.port)}


async def test_a_running_connector_is_asked_how_it_is(env: Env, connector_factory: Any) -> None:
    running = await _running(connector_factory, env)
    check = (await checks_of(running))["connector"]
    assert check.status == PASS
    assert "healthy" in check.summary
    assert check.details["init"]["state"] in ("idle", "done", "running")


async def test_a_paused_connector_fails_with_the_bruteforce_remedy(
    env: Env, connector_factory: Any
) -> None:
    apps: list[web.Application] = []
    running = await _running(connector_factory, env, apps.append)
    budget = apps[0][NEXTCLOUD].budget
    for _ in range(budget.limit):
        budget.record_failure("GET /ocs/... -> HTTP 401 (OCS 997)")
    check = (await checks_of(running))["connector"]
    assert check.status == FAIL
    assert "paused" in check.summary
    assert "occ security:bruteforce:reset" in check.remedy
    # Asking (with the secret) did not lift the pause: the heartbeat has no side effects.
    assert budget.spent


async def test_an_exited_tunnel_fails(env: Env, connector_factory: Any) -> None:
    def tunnel(app: web.Application) -> None:
        app[HEALTH]["tunnel"] = lambda trusted: {
            "state": "exited",
            "last_error": "exit code 1",
        }

    running = await _running(connector_factory, env, tunnel)
    check = (await checks_of(running))["connector"]
    assert check.status == FAIL
    assert "frpc exited (exit code 1)" in check.summary


async def test_another_program_on_the_port_is_named_with_a_fix(env: Env) -> None:
    """Something else answers on APP_PORT: doctor says what it answered and what to do."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>It works!</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/heartbeat", page)
    runner, url = await serve_loopback(app)
    try:
        check = (await checks_of({**env, "APP_PORT": str(url.port)}))["connector"]
    finally:
        await runner.cleanup()
    assert check.status == FAIL
    assert check.summary == (
        f"127.0.0.1:{url.port} answered GET /heartbeat with something other than this "
        "connector's heartbeat: HTTP 200, text/html; charset=utf-8: "
        "'<html><body>It works!</body></html>'"
    )
    assert check.remedy == (
        f"Another program listens on 127.0.0.1:{url.port}: stop it, or give this connector "
        "another APP_PORT (and register the app with that port)."
    )


def test_an_answer_is_shown_as_one_short_printable_line() -> None:
    assert excerpt(b"") == "(empty body)"
    assert excerpt(b"a\r\n\tb\x00c") == "'a b c'"
    assert excerpt(b"x" * 500) == repr("x" * 120 + "...")
    assert excerpt(b"\xff\xfe") == repr("\ufffd\ufffd")
