"""Nextcloud as doctor sees it: reachable, installed, a supported version, the ONE authenticated
call proving the AppAPI secret, and the clocks read from the probes' Date headers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from beeflow.ops.doctor.nextcloud import NC_MAX, NC_MIN
from beeflow.ops.doctor.result import FAIL, PASS, SKIP, WARN
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.helpers import SECRET
from tests.ops.doctor.conftest import Env, authenticated_calls, checks_of, closed_port


async def test_nextcloud_unreachable_fails_and_makes_no_authenticated_call(env: Env) -> None:
    env["NEXTCLOUD_URL"] = f"http://127.0.0.1:{closed_port()}"
    checks = await checks_of(env)
    assert checks["nextcloud"].status == FAIL
    assert "cannot connect" in checks["nextcloud"].summary
    assert "NEXTCLOUD_URL" in checks["nextcloud"].remedy
    for name in ("nextcloud_version", "appapi_secret", "clock_nextcloud"):
        assert checks[name].status == SKIP


async def test_a_server_that_is_not_nextcloud_fails(env: Env, service: FakeService) -> None:
    env["NEXTCLOUD_URL"] = str(service.url)  # answers 404 JSON to /status.php
    checks = await checks_of(env)
    assert checks["nextcloud"].status == FAIL
    assert "without Nextcloud's status" in checks["nextcloud"].summary


@pytest.mark.parametrize(
    ("status", "expected", "words"),
    [
        ({"maintenance": True}, FAIL, "maintenance"),
        ({"installed": False}, FAIL, "not installed"),
        ({"needsDbUpgrade": True}, WARN, "database upgrade"),
    ],
)
async def test_nextcloud_states(
    env: Env,
    status_php: Callable[..., Any],
    status: dict[str, Any],
    expected: str,
    words: str,
) -> None:
    env["NEXTCLOUD_URL"] = await status_php(**status)
    check = (await checks_of(env))["nextcloud"]
    assert check.status == expected
    assert words in check.summary


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("30.0.12", FAIL),
        ("31.0.9", PASS),
        ("33.0.0", WARN),
        ("33.0.1", PASS),
        ("34.0.2", PASS),
        ("35.0.0", PASS),
        ("36.0.0", FAIL),
    ],
)
async def test_nextcloud_version_range(env: Env, version: str, expected: str) -> None:
    nc = FakeNextcloud(secret=SECRET, version=version)
    await nc.start()
    try:
        env["NEXTCLOUD_URL"] = str(nc.url)
        check = (await checks_of(env))["nextcloud_version"]
    finally:
        await nc.stop()
    assert check.status == expected, check
    assert version in check.summary


def test_supported_range_is_the_manifests() -> None:
    from tests.manifest.manifest import load

    nc = load().find("dependencies/nextcloud")
    assert nc is not None
    assert (
        int(nc.attrib["min-version"]),
        int(nc.attrib["max-version"]),
    ) == (NC_MIN, NC_MAX)


async def test_wrong_secret_fails_with_the_repair_and_costs_one_failed_login(
    env: Env, fake_nc: FakeNextcloud
) -> None:
    env["APP_SECRET"] = "not-the-secret-nextcloud-has"
    check = (await checks_of(env))["appapi_secret"]
    assert check.status == FAIL
    assert "occ app_api:app:unregister bee_flow" in check.remedy
    assert "occ app_api:app:register bee_flow" in check.remedy
    assert "occ security:bruteforce:reset 127.0.0.1" in check.remedy
    assert check.details["ocsStatus"] == 997
    assert authenticated_calls(fake_nc) == 1
    assert fake_nc.failures_for("127.0.0.1") == 1


async def test_an_unregistered_app_fails(env: Env, fake_nc: FakeNextcloud) -> None:
    fake_nc.registered = False
    check = (await checks_of(env))["appapi_secret"]
    assert check.status == FAIL
    assert "not registered" in check.summary
    assert authenticated_calls(fake_nc) == 1


async def test_a_locked_out_ip_fails_with_the_bruteforce_reset(
    env: Env, fake_nc: FakeNextcloud
) -> None:
    fake_nc.locked_until["127.0.0.1"] = time.monotonic() + 600
    check = (await checks_of(env))["appapi_secret"]
    assert check.status == FAIL
    assert "brute-force" in check.summary
    assert "occ security:bruteforce:reset 127.0.0.1" in check.remedy
    assert authenticated_calls(fake_nc) == 1


async def test_a_disabled_app_still_passes_the_secret_check(
    env: Env, fake_nc: FakeNextcloud
) -> None:
    fake_nc.enabled = False
    check = (await checks_of(env))["appapi_secret"]
    assert check.status == PASS
    assert "registered but disabled" in check.summary


async def test_never_more_than_one_authenticated_call_whatever_fails(
    env: Env, fake_nc: FakeNextcloud, service: FakeService
) -> None:
    env["APP_SECRET"] = "wrong-secret-for-this-check"
    env["BEEFLOW_TENANT_KEY"] = "auto"
    env["BEEFLOW_API_BASE_URL"] = f"http://127.0.0.1:{closed_port()}"
    await checks_of(env)
    assert authenticated_calls(fake_nc) == 1
    assert fake_nc.failures_for("127.0.0.1") == 1


@pytest.mark.parametrize(("offset", "expected"), [(0, PASS), (200, WARN), (-1000, FAIL)])
async def test_clock_skew_against_nextcloud_and_the_service(
    env: Env, offset: float, expected: str
) -> None:
    checks = await checks_of(env, clock=lambda: time.time() + offset)
    for name in ("clock_nextcloud", "clock_service"):
        assert checks[name].status == expected, checks[name]
        assert abs(checks[name].details["skewSeconds"] - offset) <= 2
    if expected == FAIL:
        assert "BEEFLOW_SIG_SKEW_SECONDS=300" in checks["clock_service"].remedy
        assert "behind" in checks["clock_nextcloud"].summary


async def test_the_allowed_skew_comes_from_the_config(env: Env) -> None:
    env["BEEFLOW_SIG_SKEW_SECONDS"] = "30"
    checks = await checks_of(env, clock=lambda: time.time() + 60)
    assert checks["clock_service"].status == FAIL
