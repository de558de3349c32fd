"""Unusable persistent storage is a start-up error: `serve` makes APP_PERSISTENT_STORAGE when it
is missing, proves a file can be written there, and otherwise exits 1 saying what is wrong and
how to fix it (the heartbeat of a connector that cannot keep its tenant key, its count of
refused AppAPI logins or its setup choice would say "ok" for nothing)."""

from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path

import pytest

from beeflow import cli, storage
from beeflow.config import Config
from tests.fakes.frp import free_port
from tests.helpers import base_env
from tests.ports import refused_url
from tests.procs import ServeProcess

# /proc looks writable to root (access(2) says so) but takes no new directory.
PROC_PATH = Path("/proc/beeflow-no-such-dir/data")


def config_for(storage_path: Path) -> Config:
    env = base_env(refused_url(), storage_path, APP_PORT=str(free_port()))
    return Config.from_env(env)


@pytest.mark.parametrize("kind", ["file", "under_a_file", "proc"])
async def test_unusable_storage_stops_serve_with_the_fix(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("x")
    path = {
        "file": tmp_path / "file",
        "under_a_file": tmp_path / "file" / "data",
        "proc": PROC_PATH,
    }[kind]
    caplog.set_level(logging.ERROR)
    code = await asyncio.wait_for(cli.serve(config_for(path)), 10)
    assert code == cli.EXIT_STARTUP
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith(f"cannot start: APP_PERSISTENT_STORAGE {path} is unusable: ")
    assert "Fix: APP_PERSISTENT_STORAGE must be a writable directory" in line
    assert "nc_app_bee_flow_data" in line


async def test_a_missing_storage_directory_is_made_at_start(tmp_path: Path) -> None:
    path = tmp_path / "volume" / "data"
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.ensure_future(cli.serve(config_for(path), ready=ready, stop=stop))  # noqa: TID251
    await asyncio.wait_for(ready.wait(), 10)
    assert path.is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert [p.name for p in path.iterdir() if p.name.startswith(".beeflow-probe")] == []
    stop.set()
    assert await asyncio.wait_for(task, 10) == cli.EXIT_OK


async def test_the_process_says_it_on_stderr_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    env = base_env(refused_url(), tmp_path / "file", APP_PORT=str(free_port()))
    proc = await ServeProcess.start(env)
    try:
        assert await proc.wait_exit() == 1
    finally:
        await proc.close()
    assert "is unusable: it exists and is not a directory. Fix: " in proc.text
    assert "Traceback" not in proc.text


def test_check_directory_reasons(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert storage.check_directory(tmp_path / "new") is None
    assert storage.check_directory(tmp_path / "file") == "it exists and is not a directory"
    assert storage.check_directory(tmp_path / "file" / "x") == (
        "it cannot be created (the storage path is not a directory)"
    )
    assert (storage.check_directory(PROC_PATH) or "").startswith("it cannot be created")


def test_probe_creatable_leaves_nothing_behind(tmp_path: Path) -> None:
    assert storage.probe_creatable(tmp_path / "a" / "b") is None
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    assert (
        storage.probe_creatable(tmp_path / "file" / "x")
        == f"{tmp_path / 'file'} is not a directory"
    )
    assert (storage.probe_creatable(PROC_PATH) or "").startswith("it cannot be created in /proc")
