"""`python -m beeflow doctor` as a command: every check passing (legacy and HaRP), the lines and
--json it prints, exit codes, a bad environment, and no secret in the output."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from beeflow.ops import doctor
from beeflow.ops.doctor.result import FAIL, PASS
from beeflow.tenant.state import fingerprint
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET, TENANT_KEY
from tests.ops.doctor.conftest import (
    FILE_KEY,
    HARP_CHECKS,
    LEGACY_CHECKS,
    NOT_RUNNING,
    SHARED_KEY,
    Env,
    authenticated_calls,
    checks_of,
    closed_port,
    write_key,
)
from tests.ports import COMMON_PORTS, held


async def test_a_healthy_legacy_installation_passes_every_check(
    env: Env, fake_nc: FakeNextcloud
) -> None:
    checks = await checks_of(env)
    assert list(checks) == LEGACY_CHECKS
    assert {n: c.status for n, c in checks.items()} == {
        **dict.fromkeys(LEGACY_CHECKS, PASS),
        **NOT_RUNNING,
    }
    assert authenticated_calls(fake_nc) == 1
    assert "32.0.1" in checks["nextcloud_version"].summary
    assert checks["tenant_key"].details["fingerprint"] == fingerprint(TENANT_KEY)
    assert "HaRP is available" in checks["nextcloud_version"].summary


async def test_ports_in_use_elsewhere_change_no_check(env: Env) -> None:
    """Something answering heartbeats on the ports a developer's machine commonly has in use
    (a connector on the manual-install guide's 23000, AppAPI's 8080, ...) is not this
    installation's connector: the checks are those of the healthy installation."""
    with held() as busy:
        assert busy.ports == COMMON_PORTS
        checks = await checks_of(env)
    assert {n: c.status for n, c in checks.items()} == {
        **dict.fromkeys(LEGACY_CHECKS, PASS),
        **NOT_RUNNING,
    }


async def test_a_healthy_harp_installation_passes_every_check(
    harp_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    checks = await checks_of(harp_env)
    assert list(checks) == LEGACY_CHECKS + HARP_CHECKS
    assert {n: c.status for n, c in checks.items()} == {
        **dict.fromkeys(LEGACY_CHECKS + HARP_CHECKS, PASS),
        **NOT_RUNNING,
    }
    assert "HaRP is available" not in checks["nextcloud_version"].summary
    code = await asyncio.to_thread(doctor.run, argparse.Namespace(json=False, timeout=5), harp_env)
    assert code == 0
    assert SHARED_KEY not in capsys.readouterr().out


async def test_harp_checks_only_run_in_harp_mode(env: Env) -> None:
    assert not set(HARP_CHECKS) & set(await checks_of(env))


async def test_run_prints_lines_and_exits_zero(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(doctor.run, argparse.Namespace(json=False, timeout=5), env)
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("beeflow doctor ")
    for name in LEGACY_CHECKS:
        status = NOT_RUNNING.get(name, PASS).upper()
        assert any(line.startswith(status) and f" {name} " in line for line in out.splitlines())
    for secret in (SECRET, TENANT_KEY):
        assert secret not in out


async def test_json_output(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(doctor.run, argparse.Namespace(json=True, timeout=5), env)
    body = json.loads(capsys.readouterr().out)
    assert code == 0
    assert body["ok"] is True
    skipped = len(NOT_RUNNING)
    assert body["counts"] == {
        "pass": len(LEGACY_CHECKS) - skipped,
        "warn": 0,
        "fail": 0,
        "skip": skipped,
    }
    assert [c["name"] for c in body["checks"]] == LEGACY_CHECKS


async def test_bad_config_fails_and_names_the_variables(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.update(APP_PORT="99999", NEXTCLOUD_URL="ftp://x", HP_SHARED_KEY='bad "quoted" key')
    code = await asyncio.to_thread(doctor.run, argparse.Namespace(json=True, timeout=5), env)
    body = json.loads(capsys.readouterr().out)
    assert code == 1
    (check,) = body["checks"]
    assert check["status"] == FAIL
    assert set(check["details"]["variables"]) >= {"APP_PORT", "NEXTCLOUD_URL", "HP_SHARED_KEY"}
    assert "bad key with spaces" not in json.dumps(body)


async def test_the_exit_code_is_one_when_a_check_fails_and_zero_on_warnings(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env["APP_PERSISTENT_STORAGE"] = str(tmp_path / "later")  # a warning only
    args = argparse.Namespace(json=False, timeout=5)
    assert await asyncio.to_thread(doctor.run, args, env) == 0
    env["BEEFLOW_API_BASE_URL"] = f"http://127.0.0.1:{closed_port()}"  # a failure
    assert await asyncio.to_thread(doctor.run, args, env) == 1
    out = capsys.readouterr().out
    assert "FAIL  service" in out
    assert "fix: The container must reach the Bee Flow service" in out


async def test_no_secret_is_ever_printed(
    env: Env, storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env["BEEFLOW_TENANT_KEY"] = "auto"
    write_key(storage)
    env["APP_SECRET"] = "wrong-" + SECRET[:40]
    for as_json in (False, True):
        await asyncio.to_thread(doctor.run, argparse.Namespace(json=as_json, timeout=5), env)
        captured = capsys.readouterr()
        for secret in (env["APP_SECRET"], FILE_KEY, SECRET):
            assert secret not in captured.out + captured.err
