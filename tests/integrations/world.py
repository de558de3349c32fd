"""What the Assistant and Talk tests share: a fake Nextcloud with Task Processing and Talk
mounted, the fake service that checks the connector's signatures with the test tenant key, and
the settings that make the worker quick."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs

from beeflow.nextcloud.follow import Follower
from beeflow.nextcloud.talk_bot import TALK_BOT
from beeflow.nextcloud.task_processing import REGISTRAR
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_tasks import FakeTaskProcessing
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.fakes.talk import FakeTalk
from tests.helpers import SECRET, TENANT_KEY, RunningConnector

FAST: dict[str, str] = {
    "BEEFLOW_TASK_POLL_SECONDS": "0.05",
    "BEEFLOW_TASK_POLL_MAX_SECONDS": "0.4",
    "BEEFLOW_TASK_WATCHDOG_MIN_SECONDS": "5",
    "BEEFLOW_TASK_WATCHDOG_MAX_SECONDS": "5",
}


@attrs.define
class World:
    nc: FakeNextcloud
    tasks: FakeTaskProcessing
    talk: FakeTalk
    service: FakeService

    def env(self, **overrides: str) -> dict[str, str]:
        return {"BEEFLOW_API_BASE_URL": str(self.service.url), **FAST, **overrides}


async def open_world(*, talk_installed: bool = True, **nc_options: Any) -> World:
    nc = FakeNextcloud(secret=SECRET, **nc_options)
    nc.add_user("admin", email="admin@example.com", display_name="Ada Admin", groups=["admin"])
    nc.add_user("alice", email="alice@example.com", display_name="Alice", groups=["staff"])
    tasks = FakeTaskProcessing(nc).mount()
    talk = FakeTalk(nc, installed=talk_installed).mount()
    await nc.start()
    service = FakeService(control=ServiceControl(verify_key=TENANT_KEY))
    await service.start()
    return World(nc, tasks, talk, service)


async def close_world(world: World) -> None:
    await world.talk.close()
    await world.service.stop()
    await world.nc.stop()


async def world_fixture(**options: Any) -> AsyncIterator[World]:
    world = await open_world(**options)
    try:
        yield world
    finally:
        await close_world(world)


def registration(conn: RunningConnector) -> Follower:
    follower = conn.app[REGISTRAR].follower
    assert follower is not None
    return follower


def bot_registration(conn: RunningConnector) -> Follower:
    follower = conn.app[TALK_BOT].follower
    assert follower is not None
    return follower
