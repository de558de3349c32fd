"""Shared fixtures: a fake Nextcloud on loopback and the connector in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from beeflow.config import Config
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET, RunningConnector, base_env, start_connector

ConnectorFactory = Callable[..., Awaitable[RunningConnector]]


@pytest.fixture
async def fake_nc() -> AsyncIterator[FakeNextcloud]:
    """A registered, enabled NC 32 with an admin (with e-mail) and a plain user."""
    nc = FakeNextcloud(secret=SECRET)
    nc.add_user("admin", email="admin@example.com", display_name="Ada Admin", groups=["admin"])
    nc.add_user("alice", email="alice@example.com", display_name="Alice", groups=["staff"])
    await nc.start()
    yield nc
    await nc.stop()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_config(fake_nc: FakeNextcloud, storage: Path) -> Callable[..., Config]:
    """Config.from_env over a complete test environment; keyword overrides are env vars."""

    def make(**overrides: str) -> Config:
        return Config.from_env(base_env(fake_nc.url, storage, **overrides))

    return make


@pytest.fixture
async def connector_factory(
    fake_nc: FakeNextcloud, make_config: Callable[..., Config]
) -> AsyncIterator[ConnectorFactory]:
    """Start connectors (closed at teardown); the fake Nextcloud calls back the last one."""
    started: list[RunningConnector] = []

    async def start(
        config: Config | None = None,
        *,
        run_at_boot: bool = False,
        customise: Callable[[web.Application], None] | None = None,
        **env: Any,
    ) -> RunningConnector:
        running = await start_connector(
            config or make_config(**env), run_at_boot=run_at_boot, customise=customise
        )
        fake_nc.set_connector(url=running.url)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        await running.close()


@pytest.fixture
async def connector(connector_factory: ConnectorFactory) -> RunningConnector:
    return await connector_factory()
