"""Task Processing throughput: tasks completed per second with a service that answers at once, and
the connector's CPU per task. The connector runs as its own process (`python -m beeflow serve`,
so /proc gives its CPU alone) in front of the fake Nextcloud with Task Processing mounted and the
fake service, both in this process; the tasks are scheduled at once and AppAPI's trigger is sent,
as Nextcloud 33 does.

    python -m bench.tasks [--tasks 400] [--types 1,4] [--concurrency 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from beeflow.nextcloud.task_processing import TASK_TYPES
from bench import proc
from bench.children import clean_env
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_tasks import NC32_TYPES, FakeTaskProcessing
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.helpers import SECRET, TENANT_KEY, appapi_headers, base_env
from tests.integration.server import free_port

REPO = Path(__file__).resolve().parents[1]
TYPES = [t.id for t in TASK_TYPES if t.id in NC32_TYPES and t.id.startswith("core:text2text")]


async def _wait_registered(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{url}/heartbeat", headers=appapi_headers("")) as resp:
                data: dict[str, Any] = await resp.json()
            if data.get("taskProcessing", {}).get("state") == "registered":
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the connector did not register its providers within 60 s")


async def run(tasks: int, types: int, concurrency: int) -> dict[str, float]:
    nc = FakeNextcloud(secret=SECRET)
    nc.add_user("admin", email="admin@example.com", groups=["admin"])
    nc.add_user("alice", email="alice@example.com")
    queue = FakeTaskProcessing(nc).mount()
    await nc.start()
    service = FakeService(control=ServiceControl(verify_key=TENANT_KEY), instruments=False)
    await service.start()
    storage = Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    port = free_port()
    env = (
        clean_env()
        | base_env(nc.url, storage)
        | {
            "APP_PORT": str(port),
            "BEEFLOW_API_BASE_URL": str(service.url),
            "BEEFLOW_TASK_CONCURRENCY": str(concurrency),
            "BEEFLOW_LOG_LEVEL": "warning",
            "PYTHONPATH": str(REPO),
        }
    )
    url = f"http://127.0.0.1:{port}"
    nc.set_connector(url=url)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "beeflow", "serve", env=env, cwd=str(REPO),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_registered(session, url)
            await asyncio.sleep(0.5)  # the start-up work settles
            for i in range(tasks):
                queue.schedule(TYPES[i % types], f"text {i}", user="alice")
            cpu0, t0 = proc.cpu_seconds(child.pid), time.perf_counter()
            provider = f"bee_flow:{TYPES[0]}"
            async with session.post(
                f"{url}/trigger?providerId={provider}", headers=appapi_headers("")
            ) as resp:
                assert resp.status == 200
            await queue.wait_done(tasks, timeout=600)
            seconds, cpu = time.perf_counter() - t0, proc.cpu_seconds(child.pid) - cpu0
        done = [t for t in queue.tasks.values() if t.status_name == "STATUS_SUCCESSFUL"]
        assert len(done) == tasks, f"{tasks - len(done)} tasks did not succeed"
        return {"seconds": seconds, "rate": tasks / seconds, "cpu_ms": cpu * 1000 / tasks}
    finally:
        child.terminate()
        await child.wait()
        await service.stop()
        await nc.stop()
        shutil.rmtree(storage, ignore_errors=True)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tasks")
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--types", default="1,4", help="task types the tasks are spread over")
    parser.add_argument("--concurrency", type=int, default=4, help="tasks at once per type")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"cores {os.cpu_count()}, load {proc.loadavg()}, {args.tasks} tasks, median of "
          f"{args.repeat}")  # fmt: skip
    print("| types | at once per type | tasks/s | connector CPU ms/task | seconds |")
    print("|---|---|---|---|---|")
    for types in (int(n) for n in args.types.split(",")):
        runs = [await run(args.tasks, types, args.concurrency) for _ in range(args.repeat)]
        rate = statistics.median(r["rate"] for r in runs)
        cpu = statistics.median(r["cpu_ms"] for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        print(f"| {types} | {args.concurrency} | {rate:.0f} | {cpu:.2f} | {seconds:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
