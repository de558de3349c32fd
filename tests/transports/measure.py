"""Measurements (not a test): `python -m tests.transports.measure`.

Time from process start to listening (TCP and HaRP; HaRP also to "tunnel connected" with the
stand-in frpc), and /heartbeat latency p50/p99 over 200 sequential calls on each path."""

from __future__ import annotations

import asyncio
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.fakes.frp import FakeFrps, free_port, make_frpc
from tests.helpers import base_env
from tests.procs import ServeProcess
from tests.transports.conftest import UNREACHABLE_NC, harp_env

RUNS = 5
CALLS = 200


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def heartbeat_latencies(session: aiohttp.ClientSession, url: str) -> list[float]:
    for _ in range(10):  # warm-up: connection set up, code paths hot
        async with session.get(url) as resp:
            await resp.read()
    took = []
    for _ in range(CALLS):
        began = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
            assert resp.status == 200
        took.append((time.perf_counter() - began) * 1000)
    return took


def summary(name: str, took: list[float]) -> None:
    took.sort()
    p50 = took[len(took) // 2]
    p99 = took[int(len(took) * 0.99) - 1]
    out(f"  {name:<34} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   max {took[-1]:6.2f} ms")


async def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="bfm", dir="/tmp"))
    storage = base / "data"
    storage.mkdir()
    frpc_bin = make_frpc(base)
    frps = await FakeFrps().start()
    try:
        ready: dict[str, list[float]] = {"TCP": [], "HaRP": []}
        tcp_listen: list[float] = []
        harp_listen: list[float] = []
        harp_tunnel: list[float] = []
        latencies: dict[str, list[float]] = {}
        for run in range(RUNS):
            port = free_port()
            env = base_env(UNREACHABLE_NC, storage, APP_PORT=str(port))
            proc = await ServeProcess.start(env)
            at, _ = await proc.wait_line("listening on")
            tcp_listen.append((at - proc.spawned_at) * 1000)
            ready["TCP"].append(ready_ms(await proc.wait_line("ready in")))
            if run == 0:
                async with aiohttp.ClientSession() as session:
                    latencies["TCP direct"] = await heartbeat_latencies(
                        session, f"http://127.0.0.1:{port}/heartbeat"
                    )
            proc.send(signal.SIGTERM)
            await proc.wait_exit()

            env = harp_env(base, frpc_bin, frps.port, storage, FAKE_FRPC_RETRY_SCALE="0.02")
            env["HP_SHARED_KEY"] = "measure-key-0123"
            proc = await ServeProcess.start(env)
            at, _ = await proc.wait_line("listening on")
            harp_listen.append((at - proc.spawned_at) * 1000)
            ready["HaRP"].append(ready_ms(await proc.wait_line("ready in")))
            at, _ = await proc.wait_line("start proxy success")
            harp_tunnel.append((at - proc.spawned_at) * 1000)
            if run == 0:
                connector = aiohttp.UnixConnector(path=env["HP_EXAPP_SOCK"])
                async with aiohttp.ClientSession(connector=connector) as session:
                    latencies["Unix socket direct"] = await heartbeat_latencies(
                        session, "http://localhost/heartbeat"
                    )
                async with aiohttp.ClientSession() as session:
                    latencies["through stand-in frpc tunnel"] = await heartbeat_latencies(
                        session, f"http://127.0.0.1:{env['APP_PORT']}/heartbeat"
                    )
            proc.send(signal.SIGTERM)
            await proc.wait_exit()

        out(f"start -> listening (median of {RUNS} process starts):")
        out(f"  TCP   {statistics.median(tcp_listen):7.0f} ms  (all: {fmt(tcp_listen)})")
        out(f"  HaRP  {statistics.median(harp_listen):7.0f} ms  (all: {fmt(harp_listen)})")
        tunnel_ms = statistics.median(harp_tunnel)
        out(f"  HaRP tunnel connected {tunnel_ms:7.0f} ms  ({fmt(harp_tunnel)})")
        for name, values in ready.items():
            median = statistics.median(values)
            out(f"  in-process (serve() to listening, 'ready in'): {name} median {median:.0f} ms")
        out(f"/heartbeat over {CALLS} sequential keep-alive calls:")
        for name, took in latencies.items():
            summary(name, took)
    finally:
        await frps.stop()
        shutil.rmtree(base, ignore_errors=True)


def ready_ms(hit: tuple[float, str]) -> float:
    return float(hit[1].rsplit("ready in ", 1)[1].split()[0])


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    asyncio.run(main())
