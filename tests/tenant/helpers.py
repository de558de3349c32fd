"""Small helpers shared by the tenant tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import RunningConnector, appapi_headers


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition that no event announces (a fake's record list, a state field)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def run_init(conn: RunningConnector, nc: FakeNextcloud, *, timeout: float = 10.0) -> None:
    """POST /init as AppAPI does, then wait until the fake recorded progress 100 or an error."""
    before = len(nc.progress)
    callbacks = len(nc.callbacks)
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}

    def finished() -> bool:
        return any(p.get("progress") == 100 or p.get("error") for p in nc.progress[before:])

    await wait_for(finished, timeout)
    if any(p.get("progress") == 100 for p in nc.progress[before:]) and nc.callback_on_progress_100:
        # Nextcloud answers the progress-100 call only after /heartbeat and /enabled returned.
        await wait_for(lambda: len(nc.callbacks) >= callbacks + 2, timeout)


def progress_values(nc: FakeNextcloud) -> list[int]:
    return [int(p["progress"]) for p in nc.progress]


async def heartbeat(conn: RunningConnector, *, trusted: bool | None) -> dict[str, Any]:
    """trusted=True: valid AppAPI headers; False: a wrong secret; None: no headers at all."""
    headers: dict[str, str] = {}
    if trusted is False:
        headers = appapi_headers("", secret="not-the-secret")
    async with await conn.request(
        "GET", "/heartbeat", user="" if trusted else None, headers=headers
    ) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    assert body["status"] == "ok"
    return body


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
