"""Fixtures for the tenant/bootstrap/events/user-sync tests: a fake Nextcloud whose personality
a test can choose, the fake service with the control endpoints, and connectors in auto mode."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from beeflow.tenant.wiring import BOOTSTRAPPER
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.helpers import SECRET, RunningConnector

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
    """The shared fixture's users, in the personality the test asks for."""
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
