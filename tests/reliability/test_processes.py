"""Faults that need a real `python -m beeflow serve` process: SIGTERM with 100 open SSE streams and
an upload in flight, frpc crashing in a loop, a corrupt tenant-key.json at start, and webhooks
accepted just before a shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from beeflow.tasks import spawn
from tests.fakes.frp import events, pid_alive
from tests.fakes.service import StreamPlan, chat_pieces
from tests.fakes.service_control import PROVISIONED_KEY
from tests.helpers import TENANT_KEY, appapi_headers
from tests.reliability.stack import nc_headers
from tests.reliability.world import World, world

STREAMS = 100
UPLOAD = 3 * 1024 * 1024
GRACE = 10.0


@pytest.fixture
async def w() -> AsyncIterator[World]:
    async with world() as running:
        yield running


async def read_events(resp: aiohttp.ClientResponse) -> bytes:
    return await resp.content.readuntil(b"\n\n")


def exists(path: str) -> bool:
    return os.path.exists(path)


def files_under(path: str) -> list[Path]:
    return [p for p in Path(path).rglob("*") if p.is_file()]


def spool_files(pid: int) -> list[str]:
    """The spool files a process holds open (unlinked at creation: visible only as fds)."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "beeflow-spool-" in target:
            out.append(target)
    return out


async def test_sigterm_with_100_sse_streams_and_an_upload_in_flight(w: World) -> None:
    env = w.env(BEEFLOW_SPOOL_DIR="")  # the connector's own private spool directory
    proc = await w.start(env)
    await proc.wait_line("ready in")
    pieces = chat_pieces(["one", "two", "three"], gated=True)
    w.service.sse = StreamPlan(pieces)
    gated = sum(1 for p in pieces if p.gated)
    body = bytes(range(256)) * (UPLOAD // 256)
    target = "/nc/remote.php/dav/files/alice/upload.bin"
    resume = asyncio.Event()

    async def upload_body() -> AsyncIterator[bytes]:
        yield body[: UPLOAD // 3]
        await resume.wait()
        for i in range(UPLOAD // 3, UPLOAD, 256 * 1024):
            yield body[i : i + 256 * 1024]

    async with w.session(env, limit=0) as session:
        base = w.base(env)
        chat = f"{base}/ai/chat/direct/stream"
        streams = [
            await session.post(chat, json={"message": str(i)}, headers=appapi_headers("alice"))
            for i in range(STREAMS)
        ]
        firsts = await asyncio.gather(*(read_events(r) for r in streams))
        assert all(b"conversation_created" in f for f in firsts)
        up_headers = {
            **dict(nc_headers("PUT", target, body=body)),
            "Content-Length": str(UPLOAD),
            "Content-Type": "application/octet-stream",
        }
        upload = spawn(
            session.put(f"{base}{target}", data=upload_body(), headers=up_headers),
            name="t-upload",
        )
        # The upload is in flight: its first third sits in a spool file.
        async with asyncio.timeout(10):
            while not (held := spool_files(proc.proc.pid)):
                await asyncio.sleep(0.01)
        spool_dir = Path(held[0].split(" (deleted)")[0]).parent
        assert spool_dir.name.startswith("beeflow-spool-")
        assert len(w.service.streams) == STREAMS

        began = time.monotonic()
        proc.send(signal.SIGTERM)
        await proc.wait_line(f"draining {STREAMS + 1} in-flight request(s)")
        # New work is refused while the streams and the upload drain.
        async with session.get(f"{base}/heartbeat") as resp:
            assert resp.status == 503
            assert (await resp.json())["code"] == "shutting_down"
        # The service finishes every stream; the upload goes on to its end.
        for _ in range(gated * STREAMS):
            w.service.gate.put_nowait(None)
        resume.set()
        rests = await asyncio.gather(*(r.read() for r in streams))
        for first, rest in zip(firsts, rests, strict=True):
            assert first + rest == b"".join(p.data for p in pieces)
        async with await upload as resp:
            assert resp.status in (201, 204), await resp.text()
        for r in streams:
            r.release()
    code = await proc.wait_exit(GRACE + 5)
    took = time.monotonic() - began
    assert code == 0
    assert took < GRACE, f"drained in {took:.1f}s"
    assert "still running after" not in proc.text
    stored = w.dav.file("alice", "upload.bin").read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(body).digest()
    # Nothing left behind: the socket, the spool files, frpc and its config.
    assert not exists(env["HP_EXAPP_SOCK"])
    assert not exists(str(spool_dir))
    record = Path(env["FAKE_FRPC_RECORD"])
    assert all(not pid_alive(e["pid"]) for e in events(record, "start"))
    assert files_under(env["BEEFLOW_FRPC_CONFIG_DIR"]) == []
    assert "Traceback" not in proc.text


async def test_frpc_crash_loop_is_capped_bounded_and_the_socket_keeps_serving(w: World) -> None:
    cap = 0.2
    env = w.env(
        FAKE_FRPC_MODE="crashloop",
        BEEFLOW_FRPC_BACKOFF_INITIAL_SECONDS="0.05",
        BEEFLOW_FRPC_BACKOFF_CAP_SECONDS=str(cap),
    )
    proc = await w.start(env)
    await proc.wait_line("ready in")
    record = Path(env["FAKE_FRPC_RECORD"])
    latencies: list[float] = []
    statuses: list[int] = []
    async with w.session(env) as session:
        started = time.monotonic()
        # Until the crash loop has outrun the log's token bucket (bounded: 20 s).
        while not proc.find("suppressed: crash loop?") and time.monotonic() - started < 20:
            t0 = time.monotonic()
            async with session.get(f"{w.base(env)}/heartbeat") as resp:
                statuses.append(resp.status)
                await resp.read()
            latencies.append(time.monotonic() - t0)
            await asyncio.sleep(0.02)
        async with session.get(f"{w.base(env)}/heartbeat", headers=appapi_headers("")) as resp:
            tunnel = (await resp.json())["tunnel"]
    starts = [e["t"] for e in events(record, "start")]
    # The HTTP side never stopped: every heartbeat answered, promptly.
    assert set(statuses) == {200}
    assert max(latencies) < 1.5, max(latencies)
    # frpc really crashed in a loop, and every pause before a restart was within the cap.
    assert len(starts) >= 6, len(starts)
    delays = [float(m) for m in re.findall(r"restarting in (\d+\.\d+) s", proc.text)]
    assert delays, proc.text[-2000:]
    assert max(delays) <= cap
    assert delays[0] <= 0.05
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert max(gaps) < cap + 1.5, gaps  # the cap plus a Python start-up of the stand-in
    assert tunnel["restarts"] >= 5
    assert tunnel["state"] in ("exited", "starting")
    # The log stayed bounded: frpc's lines and the restart warnings share a token bucket
    # (40 lines, then one every 2 s); only the one-line "frpc started" notes are outside it.
    frpc_lines = [line for _, line in proc.lines if "frpc" in line]
    started_lines = [line for line in frpc_lines if "frpc started (pid" in line]
    budgeted = len(frpc_lines) - len(started_lines)
    elapsed = time.monotonic() - started
    assert budgeted <= 2 * (40 + 0.5 * elapsed) + 2, budgeted
    assert any("suppressed: crash loop?" in line for line in frpc_lines)
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit(10) == 0
    assert not exists(env["HP_EXAPP_SOCK"])
    assert all(not pid_alive(e["pid"]) for e in events(record, "start"))


async def test_corrupt_tenant_key_file_at_start(w: World) -> None:
    corrupt = b'{"tenantKey": "tk_trunc\x00\xff'
    (w.storage / "tenant-key.json").write_bytes(corrupt)
    w.control.verify_key = PROVISIONED_KEY
    env = w.env(harp=False, BEEFLOW_TENANT_KEY="auto")
    proc = await w.start(env)
    await proc.wait_line("ready in")
    async with w.session(env) as session:
        base = w.base(env)
        async with session.get(f"{base}/heartbeat") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
        async with session.post(f"{base}/init", headers=appapi_headers("")) as resp:
            assert resp.status == 200
        async with asyncio.timeout(10):
            while not any(p.get("progress") == 100 for p in w.nc.progress):
                await asyncio.sleep(0.02)
        async with session.get(f"{base}/api/json", headers=appapi_headers("alice")) as resp:
            assert resp.status == 200
    aside = [p for p in w.storage.iterdir() if p.name.startswith("tenant-key.json.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == corrupt  # kept as it was, for the admin
    fresh = json.loads((w.storage / "tenant-key.json").read_text())
    assert fresh["tenantKey"] == PROVISIONED_KEY
    assert (w.storage / "tenant-key.json").stat().st_mode & 0o777 == 0o600
    complaints = [line for _, line in proc.lines if "tenant-key.json is not valid JSON" in line]
    assert len(complaints) == 1
    assert "ERROR" in complaints[0]
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit(10) == 0
    assert "Traceback" not in proc.text
    assert PROVISIONED_KEY not in proc.text


WEBHOOKS = 20


async def test_webhooks_accepted_before_a_shutdown_are_forwarded_or_logged(w: World) -> None:
    """Nothing is lost silently: each accepted webhook is delivered, or named in a
    'not delivered' log line, even when the process stops while the service is stalled."""
    env = w.env(harp=False, BEEFLOW_SHUTDOWN_GRACE_SECONDS="1")
    proc = await w.start(env)
    await proc.wait_line("ready in")
    w.control.sync_gate = asyncio.Event()  # the service holds every delivery
    accepted = 0
    async with w.session(env) as session:
        for i in range(WEBHOOKS):
            payload: dict[str, Any] = {
                "eventType": "OCP\\User\\Events\\UserCreatedEvent",
                "userId": f"user{i}",
            }
            async with session.post(
                f"{w.base(env)}/webhook/nc-events", json=payload, headers=appapi_headers("")
            ) as resp:
                assert resp.status == 200
                accepted += (await resp.json()).get("queued") is True
    assert accepted == WEBHOOKS
    await asyncio.wait_for(w.control.sync_arrived.wait(), 5)
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit(15) == 0
    w.control.sync_gate.set()
    delivered = len([d for d in w.control.deliveries if d.status == 200])
    not_delivered = len(proc.find("not delivered to the service"))
    assert delivered + not_delivered == accepted, (delivered, not_delivered)
    assert "Traceback" not in proc.text
    assert TENANT_KEY not in proc.text
