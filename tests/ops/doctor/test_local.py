"""The checks that need no network: the persistent storage."""

from __future__ import annotations

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
