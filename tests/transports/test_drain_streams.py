"""Issue 24, 4(c), through the tunnel: a chat stream still open when the drain's grace period
ends gets its final event (the connector restarts) and the terminating chunk before frpc is
stopped; before, it was cut without its final chunk when frpc died (the stand-in, like frpc
0.61.1, dies on TERM without draining)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp

from tests.fakes.frp import FakeFrps, events
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService, Piece, StreamPlan, sse_event
from tests.fakes.service_control import ServiceControl
from tests.helpers import TENANT_KEY, appapi_headers
from tests.procs import Launcher
from tests.transports.conftest import harp_env


async def test_an_open_stream_ends_cleanly_before_frpc_stops(
    launcher: Launcher,
    sockdir: Path,
    frpc_bin: Path,
    frps: FakeFrps,
    storage: Path,
    record: Path,
    fake_nc: FakeNextcloud,
    service: FakeService,
    control: ServiceControl,
) -> None:
    control.verify_key = TENANT_KEY
    service.sse = StreamPlan([Piece(sse_event("content", {"text": "half"}))], then="hold")
    env = harp_env(
        sockdir,
        frpc_bin,
        frps.port,
        storage,
        FAKE_FRPC_RECORD=str(record),
        NEXTCLOUD_URL=str(fake_nc.url),
        BEEFLOW_API_BASE_URL=str(service.url),
        BEEFLOW_TENANT_KEY=TENANT_KEY,
        BEEFLOW_SHUTDOWN_GRACE_SECONDS="1",
    )
    proc = await launcher.start(env)
    await proc.wait_line("start proxy success")
    url = f"http://127.0.0.1:{env['APP_PORT']}/ai/chat/direct/stream"
    body = b""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"message": "hi"}, headers=appapi_headers("alice")) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"  # HaRP's framing: streamed
        while b"half" not in body:
            body += await resp.content.readany()
        proc.send(signal.SIGTERM)
        async with asyncio.timeout(10):
            async for chunk in resp.content.iter_any():  # to a clean end, or ClientPayloadError
                body += chunk
    assert await proc.wait_exit() == 0
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"event: error\ndata: ")
    assert json.loads(last.split(b"data: ", 1)[1])["code"] == "connector_restarting"
    assert events(record, "term"), "frpc was stopped"
    lines = [line for _, line in proc.lines]
    ending = next(i for i, line in enumerate(lines) if "ended at the drain deadline" in line)
    stopped = next(i for i, line in enumerate(lines) if "frpc stopped" in line)
    assert ending < stopped
