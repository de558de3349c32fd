"""What the user reconciliation costs at 1,000, 10,000 and 100,000 users (issue 24's acceptance
figures): calls to Nextcloud, wall time and peak memory of the sync, for the first run (the
baseline) and for a run after 1 % of the users changed (their events sent to the service).

    python -m bench.usersync_scale [--sizes 1000,10000,100000] [--changed 0.01]

The strict fake Nextcloud (tests/fakes/nextcloud.py) and the fake Bee Flow service run in child
processes, so the memory measured (tracemalloc, Python allocations) and the CPU are the sync's
own: the real UserSync, NextcloudClient and UserEvents of the connector, in this process. The
child Nextcloud keeps its users sorted between calls, as a database index does; the fake's own
`cloud/users/details` sorts every account for every page (quadratic over a sync: not the
connector's cost). Prints a table and the growth from each size to the next: the connector's
CPU time and memory must grow no faster than the number of users (wall time includes the fakes'
work on the same cores). Not a test: numbers (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

HERE = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the children


def _serve_nextcloud(users: int) -> None:
    """Child: the fake Nextcloud with `users` accounts, plus /bench/calls and /bench/change."""
    from tests.fakes.nextcloud import FakeNextcloud
    from tests.helpers import SECRET

    class Indexed(FakeNextcloud):
        """Pages through accounts kept sorted between calls (a database's index)."""

        _sorted: list[str] | None = None

        async def _users_details(self, request: web.Request) -> web.Response:
            if self._sorted is None:
                self._sorted = sorted(self.users, key=str.lower)
            offset = int(request.query.get("offset", "0"))
            limit = int(request.query.get("limit", "500"))
            page = self._sorted[offset : offset + limit]
            details = {uid: self.users[uid].ocs() for uid in page}
            return self._ocs(request, {"users": details or []})

    async def calls(request: web.Request) -> web.Response:
        count = len(nc.calls)
        nc.calls.clear()
        return web.json_response({"calls": count})

    async def change(request: web.Request) -> web.Response:
        share = float(request.query["share"])
        names = sorted(nc.users)[1 :: max(1, round(1 / share))]
        for uid in names:
            nc.users[uid].display_name = f"Renamed {uid}"
        return web.json_response({"changed": len(names)})

    nc = Indexed(
        secret=SECRET,
        extra_routes=[web.get("/bench/calls", calls), web.post("/bench/change", change)],
    )
    nc.add_user("admin", email="admin@example.com", display_name="Admin", groups=["admin"])
    for n in range(users - 1):
        uid = f"user{n:06d}"
        nc.add_user(uid, email=f"{uid}@example.com", display_name=uid.title(), groups=["staff"])
    _serve_forever(nc.start, nc.stop)


def _serve_service() -> None:
    """Child: the fake Bee Flow service, knowing the tenant key the sync signs with."""
    from tests.fakes.service import FakeService
    from tests.fakes.service_control import ServiceControl
    from tests.helpers import TENANT_KEY

    service = FakeService(control=ServiceControl(verify_key=TENANT_KEY))
    _serve_forever(service.start, service.stop)


def _serve_forever(start: Any, stop: Any) -> None:
    async def run() -> None:
        url = await start()
        print(url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await stop()

    asyncio.run(run())


@contextlib.asynccontextmanager
async def _child(*args: str) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.usersync_scale",
        *args,
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 600)
        yield line.decode().strip()
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# ------------------------------------------------------------------ the measurement


async def _measure(users: int, share: float) -> list[dict[str, Any]]:
    import aiohttp

    from beeflow.config import Config
    from beeflow.integrations.userevents import UserEvents
    from beeflow.integrations.usersync import STATE_FILE, UserSync
    from beeflow.nextcloud.client import NextcloudClient
    from beeflow.service_client import ServiceClient, ServiceUrl
    from beeflow.tenant.state import TenantState
    from tests.helpers import TENANT_KEY, base_env

    rows: list[dict[str, Any]] = []
    async with (
        _child("--serve-nextcloud", str(users)) as nc_url,
        _child("--serve-service") as service_url,
        aiohttp.ClientSession() as bench,
    ):
        storage = Path(tempfile.mkdtemp(prefix="bench-sync-"))
        config = Config.from_env(
            base_env(
                nc_url, storage, BEEFLOW_API_BASE_URL=service_url, BEEFLOW_TENANT_KEY=TENANT_KEY
            )
        )
        tenant = TenantState(key=TENANT_KEY, status="ok", instance_id="bench")
        client = NextcloudClient(config)
        service = ServiceClient(config, ServiceUrl.from_config(config), tenant)
        await client.open()
        await service.open()
        sink = UserEvents(service, storage, config.sync_interval_seconds)
        sync = UserSync(config, storage / STATE_FILE, tenant, client, sink)
        try:
            await bench.get(f"{nc_url}/bench/calls")  # start counting from here
            for run in ("baseline", "changed"):
                if run == "changed":
                    async with bench.post(f"{nc_url}/bench/change?share={share}") as resp:
                        changed = (await resp.json())["changed"]
                gc.collect()
                tracemalloc.start()
                started, cpu = time.perf_counter(), time.process_time()
                await sync.run()
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                async with bench.get(f"{nc_url}/bench/calls") as resp:
                    calls = (await resp.json())["calls"]
                status = sync.status
                assert status.state in ("baseline", "ok"), (status.state, status.last_error)
                rows.append(
                    {
                        "users": users,
                        "run": run,
                        "calls": calls,
                        "wall": wall,
                        "cpu": cpu,
                        "peak": peak / 2**20,
                        "events": status.events_sent,
                        "changed": changed if run == "changed" else 0,
                        "state_bytes": (storage / STATE_FILE).stat().st_size,
                    }
                )
        finally:
            await service.close()
            await client.close()
    return rows


def _growth(rows: list[dict[str, Any]], run: str) -> list[str]:
    mine = [r for r in rows if r["run"] == run]
    out = []
    for small, large in itertools.pairwise(mine):
        users = large["users"] / small["users"]
        wall = large["wall"] / small["wall"]
        cpu = large["cpu"] / small["cpu"]
        peak = large["peak"] / small["peak"]
        calls = large["calls"] / small["calls"]
        # Sorting (the diff, the state file) adds log n: x1.25 from 10,000 to 100,000.
        verdict = "linear or better" if max(cpu, peak, calls) <= users * 1.3 else "SUPERLINEAR"
        out.append(
            f"{run}: {small['users']:,} -> {large['users']:,} users (x{users:g}): calls "
            f"x{calls:.1f}, wall x{wall:.1f}, connector CPU x{cpu:.1f}, peak memory "
            f"x{peak:.1f}: {verdict}"
        )
    return out


async def main(sizes: list[int], share: float) -> None:
    rows: list[dict[str, Any]] = []
    for users in sizes:
        rows += await _measure(users, share)
    print(
        "| users | run | Nextcloud calls | wall s | connector CPU s | peak MiB | events sent "
        "| user-sync.json KiB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['users']:,} | {r['run']} | {r['calls']} | {r['wall']:.2f} | {r['cpu']:.2f} | "
            f"{r['peak']:.1f} | {r['events']} | {r['state_bytes'] / 1024:.0f} |"
        )
    print()
    for run in ("baseline", "changed"):
        for line in _growth(rows, run):
            print(line)
    print(json.dumps(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--serve-nextcloud", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-service", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_nextcloud:
        _serve_nextcloud(args.serve_nextcloud)
    elif args.serve_service:
        _serve_service()
    else:
        asyncio.run(main([int(s) for s in args.sizes.split(",")], args.changed))
