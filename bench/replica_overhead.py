"""What coordinating replicas costs per request, against what proxying a request costs (issue 24's
acceptance figure: it must be negligible next to the proxy's own cost).

    python -m bench.replica_overhead [--requests 2000]

On a request's path the replicas add: the look at the tenant key file before the key is used
(one stat(); the file is read only when it changed), the routing decision, and before an
authenticated Nextcloud call the look at the shared failure budget (one stat()). The lease and
the locked JSON update run per tenure and per refusal, never per request; their cost per call is
listed too. The proxy's own cost is a small GET through the real connector (make_app on a real
socket) to an upstream in this process: the time a sequential client sees per request, the
client and the upstream included (an upper bound of the connector's share).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request


def _per_call(call: Callable[[], Any], *, n: int = 20000, repeat: int = 5) -> float:
    """Median of `repeat` timings, in microseconds per call."""
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(n):
            call()
        timings.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(timings)


async def _proxied(requests: int) -> tuple[float, float]:
    """Microseconds per proxied request (median of 5 rounds), and per connector-held look."""
    from beeflow.config import Config
    from beeflow.tenant.shared import refresh_key
    from tests.helpers import TENANT_KEY, appapi_headers, base_env, start_connector

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    upstream = web.Application()
    upstream.router.add_get("/api/ping", answer)
    runner = web.AppRunner(upstream, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def users(request: web.Request) -> web.Response:
        data = {"id": "alice", "email": "a@example.com", "displayname": "A", "groups": []}
        return web.json_response({"ocs": {"meta": {"statuscode": 200}, "data": data}})

    nextcloud = web.Application()
    nextcloud.router.add_get("/ocs/v2.php/cloud/users/{uid}", users)
    nc_runner = web.AppRunner(nextcloud, access_log=None)
    await nc_runner.setup()
    nc_site = web.TCPSite(nc_runner, "127.0.0.1", 0)
    await nc_site.start()
    nc_port = nc_runner.addresses[0][1]

    storage = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    # The key from the shared file (as replicas hold it), so every look is a real stat().
    record = {"tenantKey": TENANT_KEY, "boundApiBaseUrl": f"http://127.0.0.1:{port}"}
    (storage / "tenant-key.json").write_text(json.dumps(record))
    config = Config.from_env(
        base_env(
            f"http://127.0.0.1:{nc_port}",
            storage,
            BEEFLOW_API_BASE_URL=f"http://127.0.0.1:{port}",
            BEEFLOW_TENANT_KEY="auto",
        )
    )
    conn = await start_connector(config)
    headers = appapi_headers("alice")
    rounds = []
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{conn.url}/api/ping"
            for _ in range(50):  # warm: the user lookup is cached from here on
                async with session.get(url, headers=headers) as resp:
                    assert resp.status == 200, resp.status
                    await resp.read()
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(requests // 5):
                    async with session.get(url, headers=headers) as resp:
                        await resp.read()
                rounds.append((time.perf_counter() - started) / (requests // 5) * 1e6)
        look = _per_call(lambda: refresh_key(conn.app))
    finally:
        await conn.close()
        await runner.cleanup()
        await nc_runner.cleanup()
    return statistics.median(rounds), look


def _lease_costs() -> list[tuple[str, str, float]]:
    from beeflow.config import Config
    from beeflow.lease import FileWatch, Lease, update_json
    from beeflow.nextcloud.client import NextcloudClient
    from beeflow.web.routing import Routing
    from tests.helpers import base_env

    directory = Path(tempfile.mkdtemp(prefix="bench-lease-"))
    lease = Lease(directory, "work", ttl=30, holder="bench")
    other = Lease(directory, "work", ttl=30, holder="other")
    watched = directory / "tenant-key.json"
    watched.write_text('{"tenantKey": "x"}')
    watch = FileWatch(watched)
    watch.mark()
    config = Config.from_env(base_env("http://127.0.0.1:9", directory))
    client = NextcloudClient(config)
    routing = Routing()
    request = make_mocked_request("GET", "/api/x", headers={"X-Origin-IP": "203.0.113.7"})
    counter = directory / "counter.json"

    def acquire_release() -> None:
        lease.try_acquire()
        lease.release()

    assert lease.try_acquire()
    costs = [
        ("FileWatch.changed, file unchanged (one stat)", "per look", _per_call(watch.changed)),
        (
            "NextcloudClient.sync_budget, file unchanged",
            "per authenticated Nextcloud call",
            _per_call(client.sync_budget),
        ),
        ("Routing.framing", "per proxied request", _per_call(lambda: routing.framing(request))),
        ("Lease.renew", "per third of the TTL (10 s)", _per_call(lease.renew, n=2000)),
        (
            "Lease.try_acquire, held by another",
            "per poll while waiting",
            _per_call(other.try_acquire, n=2000),
        ),
        ("Lease.held (reads the record)", "per check", _per_call(lease.held, n=2000)),
    ]
    lease.release()
    costs.append(("Lease.try_acquire + release", "per tenure", _per_call(acquire_release, n=2000)))
    costs.append(
        (
            "update_json (locked read-modify-write)",
            "per refusal, per webhook burst",
            _per_call(lambda: update_json(counter, lambda v: (v or 0) + 1), n=2000),
        )
    )
    return costs


async def main(requests: int) -> None:
    proxied, look = await _proxied(requests)
    costs = _lease_costs()
    print(f"A small GET through the connector (client + connector + upstream): {proxied:.0f} µs")
    print()
    print("| operation | when | µs per call | share of a proxied request |")
    print("|---|---|---:|---:|")
    rows = [("refresh_key in the running app", "per /api and /nc request", look), *costs]
    for name, when, cost in rows:
        print(f"| {name} | {when} | {cost:.2f} | {cost / proxied * 100:.3f} % |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
