"""Webhook deliveries through the connector: how many it forwards per second, the latency it adds
to an event, and its memory with 10,000 events queued.

    python -m bench.automations [--deliveries 3000] [--concurrency 16] [--samples 300]
                                [--backlog 10000] [--out bench/results]

The connector runs as a real process (`python -m beeflow serve`, legacy TCP, a fixed tenant key,
no Nextcloud reachable: nothing but the deliveries runs). A sink in this process plays the Bee
Flow service's ingest (202, nothing checked, so the numbers are the connector's). Deliveries are
what Nextcloud 32.0.1's webhook job sends (a NodeCreatedEvent envelope, the hook secret, no
Content-Type).

1. Throughput: `--deliveries` sent over `--concurrency` connections; accepted per second (what
   Nextcloud's job sees) and forwarded per second (first send to last arrival at the sink).
2. Added latency: `--samples` deliveries one at a time; from the start of the delivery to the
   sink's arrival, against the same event posted straight to the sink.
3. Memory: the sink holds every request; `--backlog` deliveries are queued; the connector's RSS
   before and after, then the time the queue takes to drain once the sink answers again.

Not a test (numbers vary with the machine): it writes a results file; docs/automations.md
quotes one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from beeflow.nextcloud.hooks import HOOK_PATH, hook_secret

ROOT = Path(__file__).resolve().parents[1]
KEY = "tk_bench_" + "0123456789abcdef" * 2
SECRET = "b" * 64
EVENTS_PATH = "/api/automation/events/nextcloud"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def envelope(n: int) -> bytes:
    """What WebhookCall sends for an upload (PHP's json_encode, slashes escaped)."""
    data = {
        "event": {
            "node": {"id": 1000 + n, "path": f"/bob/files/Reports/report-{n}.pdf"},
            "class": "OCP\\Files\\Events\\Node\\NodeCreatedEvent",
        },
        "user": {"uid": "bob", "displayName": "Bob"},
        "time": int(time.time()),
    }
    return json.dumps(data, separators=(",", ":")).replace("/", "\\/").encode()


class Sink:
    """The service's ingest: records when each event arrived; `hold` keeps requests open."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.changed = asyncio.Condition()

    async def ingest(self, request: web.Request) -> web.Response:
        body = await request.read()
        await self.hold.wait()
        path = json.loads(body)["payload"]["path"]
        async with self.changed:
            self.arrivals[path] = time.perf_counter()
            self.count += 1
            self.changed.notify_all()
        return web.Response(status=202)

    async def wait(self, count: int, timeout: float = 600.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: self.count >= count)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_connector(port: int, sink_port: int, storage: Path) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "APP_ID": "bee_flow",
        "APP_SECRET": SECRET,
        "APP_VERSION": "1.0.0",
        "APP_HOST": "127.0.0.1",
        "APP_PORT": str(port),
        "APP_PERSISTENT_STORAGE": str(storage),
        "NEXTCLOUD_URL": f"http://127.0.0.1:{free_port()}",  # nobody there
        "BEEFLOW_TENANT_KEY": KEY,
        "BEEFLOW_API_BASE_URL": f"http://127.0.0.1:{sink_port}",
        "BEEFLOW_EMBED_BASE_URL": "bundled",
        "BEEFLOW_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "beeflow", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_up(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(200):
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url + "/heartbeat") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError("the connector did not come up")


async def deliver(session: aiohttp.ClientSession, url: str, n: int) -> float:
    started = time.perf_counter()
    async with session.post(
        url + HOOK_PATH,
        data=envelope(n),
        headers={"X-Beeflow-Hook-Secret": hook_secret(KEY)},
        skip_auto_headers=("Content-Type",),
    ) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"delivery {n}: HTTP {resp.status}")
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sink = Sink()
    app = web.Application(client_max_size=1024**2)
    app.router.add_post(EVENTS_PATH, sink.ingest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sink_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", sink_port).start()
    port = free_port()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-hooks-") as storage:
        proc = start_connector(port, sink_port, Path(storage))
        url = f"http://127.0.0.1:{port}"
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                await wait_up(session, url)
                await deliver(session, url, -1)  # warm up
                await sink.wait(1)
                out["throughput"] = await throughput(session, url, sink, args)
                sink_url = f"http://127.0.0.1:{sink_port}"
                out["latency"] = await latency(session, url, sink_url, sink, args)
                out["memory"] = await memory(session, url, sink, proc.pid, args)
        finally:
            proc.terminate()
            proc.wait(15)
            await runner.cleanup()
    return out


async def throughput(
    session: aiohttp.ClientSession, url: str, sink: Sink, args: argparse.Namespace
) -> dict[str, float]:
    base = sink.count
    gate = asyncio.Semaphore(args.concurrency)

    async def one(n: int) -> float:
        async with gate:
            return await deliver(session, url, n)

    started = time.perf_counter()
    waits = await asyncio.gather(*(one(n) for n in range(args.deliveries)))
    accepted = time.perf_counter() - started
    await sink.wait(base + args.deliveries)
    forwarded = time.perf_counter() - started
    return {
        "accepted_per_s": args.deliveries / accepted,
        "forwarded_per_s": args.deliveries / forwarded,
        "answer_p50_ms": pct(waits, 0.5) * 1000,
        "answer_p99_ms": pct(waits, 0.99) * 1000,
    }


async def latency(
    session: aiohttp.ClientSession,
    url: str,
    sink_url: str,
    sink: Sink,
    args: argparse.Namespace,
) -> dict[str, float]:
    via: list[float] = []
    direct: list[float] = []
    for n in range(args.samples):
        tag = 10_000_000 + n
        started = time.perf_counter()
        await deliver(session, url, tag)
        path = f"/Reports/report-{tag}.pdf"
        async with sink.changed:
            await sink.changed.wait_for(lambda: path in sink.arrivals)  # noqa: B023 - awaited now
        via.append(sink.arrivals[path] - started)
        body = {"event": "file.new", "ncUid": "bob", "payload": {"path": f"/direct-{n}"}}
        started = time.perf_counter()
        async with session.post(sink_url + EVENTS_PATH, json=body) as resp:
            await resp.read()
        direct.append(sink.arrivals[f"/direct-{n}"] - started)
    return {
        "via_p50_ms": statistics.median(via) * 1000,
        "via_p95_ms": pct(via, 0.95) * 1000,
        "direct_p50_ms": statistics.median(direct) * 1000,
        "added_p50_ms": (statistics.median(via) - statistics.median(direct)) * 1000,
        "added_p95_ms": (pct(via, 0.95) - pct(direct, 0.95)) * 1000,
    }


async def memory(
    session: aiohttp.ClientSession, url: str, sink: Sink, pid: int, args: argparse.Namespace
) -> dict[str, float]:
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    sink.hold.clear()
    base = sink.count
    gate = asyncio.Semaphore(args.concurrency)

    async def one(n: int) -> None:
        async with gate:
            await deliver(session, url, 20_000_000 + n)

    await asyncio.gather(*(one(n) for n in range(args.backlog)))
    await asyncio.sleep(0.5)
    after = rss_kib(pid)
    started = time.perf_counter()
    sink.hold.set()
    await sink.wait(base + args.backlog)
    drained = time.perf_counter() - started
    return {
        "rss_before_mib": before / 1024,
        "rss_queued_mib": after / 1024,
        "per_event_bytes": (after - before) * 1024 / args.backlog,
        "drain_per_s": args.backlog / drained,
    }


def report(out: dict[str, Any], args: argparse.Namespace) -> str:
    t, lat, mem = out["throughput"], out["latency"], out["memory"]
    load = os.getloadavg()
    return "\n".join(
        [
            f"# Webhook deliveries through the connector ({time.strftime('%Y-%m-%d %H:%M')})",
            "",
            f"`python -m bench.automations --deliveries {args.deliveries} --concurrency "
            f"{args.concurrency} --samples {args.samples} --backlog {args.backlog}`; Python "
            f"{sys.version.split()[0]}, aiohttp {aiohttp.__version__}, the connector's event "
            f"loop {'uvloop' if find_spec('uvloop') else 'asyncio'}, {os.cpu_count()} cores, "
            "load average "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end (a shared machine).",
            "",
            "| Measure | Value |",
            "| --- | --- |",
            f"| deliveries accepted per second | {t['accepted_per_s']:.0f} |",
            f"| events forwarded per second | {t['forwarded_per_s']:.0f} |",
            f"| Nextcloud's wait for the answer, p50 / p99 | {t['answer_p50_ms']:.1f} / "
            f"{t['answer_p99_ms']:.1f} ms |",
            f"| event to service, through the connector, p50 / p95 | {lat['via_p50_ms']:.1f} / "
            f"{lat['via_p95_ms']:.1f} ms |",
            f"| the same event posted straight to the service, p50 | "
            f"{lat['direct_p50_ms']:.1f} ms |",
            f"| latency added, p50 / p95 | {lat['added_p50_ms']:.1f} / "
            f"{lat['added_p95_ms']:.1f} ms |",
            f"| RSS idle / with {args.backlog} events queued | {mem['rss_before_mib']:.1f} / "
            f"{mem['rss_queued_mib']:.1f} MiB |",
            f"| memory per queued event | {mem['per_event_bytes']:.0f} bytes |",
            f"| backlog drained per second | {mem['drain_per_s']:.0f} |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.automations")
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    out = asyncio.run(run(args))
    text = report(out, args)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"{time.strftime('%Y-%m-%d-%H%M')}-automations.md"
    target.write_text(text)
    print(f"written: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
