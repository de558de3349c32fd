"""The queue's progress: the snapshot and queue are written before the sends and after them;
in between only which events went (user-sync-sent.json), so a run's writes grow with the users,
not with their square, and a run stopped half-way resumes after what it sent."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beeflow import storage as storage_module
from beeflow.integrations import usersync
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service_control import ServiceControl
from tests.integrations.test_usersync import received, start, sync

__all__ = ["start"]  # the fixture, imported for these tests

QUEUE = [
    ["user.created", "erin", None],
    ["group.member_added", "erin", "ops"],
    ["user.created", "fred", None],
]


def write_state(storage: Path, queue_id: str | None, sent: list[int] | None) -> None:
    users = {
        "admin": {"email": "admin@example.com", "displayName": "Ada Admin", "groups": ["admin"]}
    }
    state: dict[str, Any] = {
        "version": 1,
        "snapshot": {"takenAt": 1.0, "users": users},
        "pending": QUEUE,
    }
    if queue_id is not None:
        state["queueId"] = queue_id
    (storage / usersync.STATE_FILE).write_text(json.dumps(state))
    if sent is not None:
        progress = {"queueId": "q1", "sent": sent}
        (storage / usersync.PROGRESS_FILE).write_text(json.dumps(progress))


async def test_a_run_stopped_half_way_resumes_after_what_it_sent(
    start: Callable[..., Any], storage: Path
) -> None:
    write_state(storage, "q1", [0, 2])
    conn = await start()
    assert conn.app[usersync.USER_SYNC].pending == [("group.member_added", "erin", "ops")]


async def test_progress_of_another_queue_is_ignored(
    start: Callable[..., Any], storage: Path
) -> None:
    write_state(storage, "q2", [0, 2])  # the state was written again since
    conn = await start()
    assert len(conn.app[usersync.USER_SYNC].pending) == 3
    write_state(storage, None, [0])  # a state file from before queue ids
    again = await start()
    assert len(again.app[usersync.USER_SYNC].pending) == 3


async def test_a_run_writes_the_state_twice_and_leaves_no_progress_behind(
    start: Callable[..., Any],
    fake_nc: FakeNextcloud,
    control: ServiceControl,
    storage: Path,
    monkeypatch: Any,
) -> None:
    conn = await start()
    await sync(conn)
    for n in range(60):  # more events than PERSIST_EVERY: progress is written on the way
        fake_nc.add_user(f"new{n:02d}", email=f"n{n}@example.com", display_name="N", groups=[])
    writes: list[str] = []
    real = storage_module.write_text

    async def counting(path: Path, chunks: Any) -> None:
        writes.append(path.name)
        await real(path, chunks)

    monkeypatch.setattr(storage_module, "write_text", counting)
    body = await sync(conn)
    assert body["eventsSent"] == 60
    assert len(received(control)) == 60
    assert writes == [usersync.STATE_FILE, usersync.STATE_FILE]
    assert not (storage / usersync.PROGRESS_FILE).exists()
    assert json.loads((storage / usersync.STATE_FILE).read_text())["pending"] == []
