"""Shared fixtures: a fake Nextcloud on loopback (in the personality a test asks for), the fake
Bee Flow service with its control endpoints, and connectors in front of them (auto mode too)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from beeflow.config import Config
from beeflow.tenant.wiring import BOOTSTRAPPER
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.helpers import SECRET, RunningConnector, base_env, start_connector
from tests.ports import pytest_configure, pytest_report_header, pytest_unconfigure

# The busy-ports hooks (BEEFLOW_TEST_BUSY_PORTS, tests/ports.py) run for the whole session.
__all__ = ["pytest_configure", "pytest_report_header", "pytest_unconfigure"]

ConnectorFactory = Callable[..., Awaitable[RunningConnector]]


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


VERSIONS = {"31": "31.0.9", "32": "32.0.1", "33.0.0": "33.0.0", "34": "34.0.0"}


@pytest.fixture
def nc_personality() -> str:
    return "32"


@pytest.fixture
def nc_options() -> dict[str, Any]:
    """Extra FakeNextcloud keyword arguments (override in a test module or parametrize)."""
    return {}


@pytest.fixture
async def fake_nc(nc_personality: str, nc_options: dict[str, Any]) -> AsyncIterator[FakeNextcloud]:
    """A registered, enabled Nextcloud (32 unless a test overrides nc_personality) with an
    admin (with e-mail) and a plain user."""
    nc = FakeNextcloud(
        secret=SECRET,
        personality=nc_personality,
        version=VERSIONS.get(nc_personality, "32.0.1"),
        **nc_options,
    )
    nc.add_user("admin", email="admin@example.com", display_name="Ada Admin", groups=["admin"])
    nc.add_user("alice", email="alice@example.com", display_name="Alice", groups=["staff"])
    await nc.start()
    yield nc
    await nc.stop()


@pytest.fixture
def control() -> ServiceControl:
    return ServiceControl()


@pytest.fixture
async def service(control: ServiceControl) -> AsyncIterator[FakeService]:
    async with FakeService(control=control) as svc:
        yield svc


def fast_retries(app: web.Application) -> None:
    """Shorten the bootstrap's backoff so the tests see several attempts."""
    boot = app[BOOTSTRAPPER]
    boot.retry_base = 0.05
    boot.retry_cap = 0.2


AutoFactory = Callable[..., Awaitable[RunningConnector]]


@pytest.fixture
def auto_connector(connector_factory: ConnectorFactory, service: FakeService) -> AutoFactory:
    """A connector with BEEFLOW_TENANT_KEY=auto pointed at the fake service."""

    async def start(
        *,
        customise: Callable[[web.Application], None] | None = None,
        slow_retries: bool = False,
        run_at_boot: bool = False,
        **env: str,
    ) -> RunningConnector:
        def custom(app: web.Application) -> None:
            if not slow_retries:
                fast_retries(app)
            if customise is not None:
                customise(app)

        settings = {
            "BEEFLOW_TENANT_KEY": "auto",
            "BEEFLOW_API_BASE_URL": str(service.url),
        }
        settings.update(env)
        return await connector_factory(customise=custom, run_at_boot=run_at_boot, **settings)

    return start
