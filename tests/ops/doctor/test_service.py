"""The Bee Flow service as doctor sees it: the URL the server would use (env, tenant binding,
setup choice) and its health endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web

from beeflow.ops.doctor.result import FAIL, PASS, SKIP
from beeflow.tenant.store import KEY_FILE
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.helpers import base_env
from tests.ops.doctor.conftest import FILE_KEY, Env, checks_of, closed_port


async def test_service_unreachable_fails(env: Env) -> None:
    env["BEEFLOW_API_BASE_URL"] = f"http://127.0.0.1:{closed_port()}"
    checks = await checks_of(env)
    assert checks["service"].status == FAIL
    assert checks["clock_service"].status == SKIP
    assert checks["service"].details["source"] == "BEEFLOW_API_BASE_URL"


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (web.HTTPServiceUnavailable(), "HTTP 503"),
        (web.HTTPFound("https://elsewhere.example/api/health"), "redirects"),
    ],
)
async def test_service_unhealthy_fails(
    fake_nc: FakeNextcloud, storage: Path, answer: web.HTTPException, words: str
) -> None:
    async def health(request: web.Request) -> web.Response:
        raise answer

    svc = FakeService(extra_routes=[web.get("/api/health", health)])
    await svc.start()
    try:
        env = base_env(fake_nc.url, storage, BEEFLOW_API_BASE_URL=str(svc.url))
        check = (await checks_of(env))["service"]
    finally:
        await svc.stop()
    assert check.status == FAIL
    assert words in check.summary


async def test_the_service_url_follows_the_tenant_binding_then_the_setup_choice(
    fake_nc: FakeNextcloud, service: FakeService, storage: Path
) -> None:
    env = base_env(fake_nc.url, storage)  # no BEEFLOW_API_BASE_URL
    (storage / "setup-config.json").write_text(
        json.dumps({"mode": "self-hosted", "apiBaseUrl": str(service.url), "savedAt": 1})
    )
    check = (await checks_of(env))["service"]
    assert (check.status, check.details["source"]) == (PASS, "the setup page")
    (storage / KEY_FILE).write_text(
        json.dumps({"tenantKey": FILE_KEY, "boundApiBaseUrl": f"http://127.0.0.1:{closed_port()}"})
    )
    check = (await checks_of(env))["service"]
    assert check.status == FAIL
    assert check.details["source"].endswith("(bound)")
