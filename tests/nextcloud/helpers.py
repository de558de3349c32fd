"""Helpers of the registration-surface tests."""

from __future__ import annotations

from beeflow.integrations.usersync import USER_SYNC
from tests.helpers import RunningConnector, wait_for


async def settled(conn: RunningConnector, timeout: float = 10.0) -> None:
    """Wait until the background work an /init starts (the first user sync) has finished, so a
    test that changes the failure budget is not undone by a success it did not make."""
    sync = conn.app[USER_SYNC]
    await wait_for(lambda: sync.status.runs >= 1 and not sync.run_slot.running, timeout)
