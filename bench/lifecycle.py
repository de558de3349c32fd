"""Lifecycle answer latency: POST /init and GET /heartbeat, 200 sequential calls each, against
the real connector in front of the fake Nextcloud (issue 2's acceptance figures).

    python -m bench.lifecycle
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET, appapi_headers, base_env, start_connector

CALLS = 200


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(session: aiohttp.ClientSession, method: str, url: str, **kw: object) -> float:
    started = time.perf_counter()
    async with session.request(method, url, **kw) as resp:  # type: ignore[arg-type]
        await resp.read()
        assert resp.status == 200, resp.status
    return (time.perf_counter() - started) * 1000


async def main() -> None:
    from beeflow.config import Config

    nc = FakeNextcloud(secret=SECRET)
    nc.add_user("admin", email="admin@example.com", groups=["admin"])
    await nc.start()
    storage = Path(tempfile.mkdtemp(prefix="bench-lc-"))
    conn = await start_connector(Config.from_env(base_env(nc.url, storage)))
    nc.set_connector(url=conn.url)
    try:
        async with aiohttp.ClientSession() as session:
            results: dict[str, list[float]] = {"POST /init": [], "GET /heartbeat": []}
            for _ in range(CALLS):
                results["POST /init"].append(
                    await _timed(session, "POST", f"{conn.url}/init", headers=appapi_headers(""))
                )
            for _ in range(CALLS):
                results["GET /heartbeat"].append(
                    await _timed(session, "GET", f"{conn.url}/heartbeat")
                )
        print("| call | n | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|")
        for name, values in results.items():
            print(
                f"| {name} | {len(values)} | {statistics.median(values):.2f} | "
                f"{_pct(values, 0.99):.2f} | {max(values):.2f} |"
            )
    finally:
        await conn.close()
        await nc.stop()


if __name__ == "__main__":
    asyncio.run(main())
