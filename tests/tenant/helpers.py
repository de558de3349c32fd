"""Small helpers shared by the tenant tests."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import RunningConnector, appapi_headers, wait_for

__all__ = ["heartbeat", "progress_values", "read_json", "run_init", "wait_for"]


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


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
