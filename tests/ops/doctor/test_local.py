"""The checks that need no network: the persistent storage."""

from __future__ import annotations

import os
from pathlib import Path

from beeflow.ops.doctor.result import FAIL, WARN
from tests.ops.doctor.conftest import Env, checks_of


async def test_storage_that_is_not_a_directory_fails(env: Env, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    env["APP_PERSISTENT_STORAGE"] = str(target)
    assert (await checks_of(env))["storage"].status == FAIL


async def test_storage_not_created_yet_warns(env: Env, tmp_path: Path) -> None:
    env["APP_PERSISTENT_STORAGE"] = str(tmp_path / "later")
    check = (await checks_of(env))["storage"]
    assert check.status == WARN
    assert "does not exist yet" in check.summary


async def test_storage_under_a_file_fails(env: Env, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    env["APP_PERSISTENT_STORAGE"] = str(tmp_path / "file" / "data")
    assert (await checks_of(env))["storage"].status == FAIL


async def test_storage_that_cannot_be_made_fails_with_the_fix(env: Env) -> None:
    """/proc passes access(2)'s write test as root but takes no directory: doctor tries."""
    env["APP_PERSISTENT_STORAGE"] = "/proc/beeflow-no-such-dir/data"
    check = (await checks_of(env))["storage"]
    assert check.status == FAIL
    assert check.summary.startswith(
        "/proc/beeflow-no-such-dir/data does not exist and it cannot be created in /proc"
    )
    assert "does not exist yet" not in check.summary
    assert "nc_app_bee_flow_data" in check.remedy


async def test_storage_not_created_yet_is_checked_without_a_trace(env: Env, tmp_path: Path) -> None:
    env["APP_PERSISTENT_STORAGE"] = str(tmp_path / "volume" / "data")
    check = (await checks_of(env))["storage"]
    assert check.status == WARN
    assert "the connector makes it when it starts" in check.summary
    assert os.listdir(tmp_path) == ["data"]  # the fixture's storage, nothing new
