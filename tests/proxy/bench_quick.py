"""A quick look at what the /api proxy costs: req/s and CPU per request, proxied vs direct.

    python -m tests.proxy.bench_quick [--seconds 5] [--concurrency 32]

Runs a lean upstream and a real connector (`python -m beeflow serve`, legacy TCP mode) as child
processes, the fake Nextcloud (for the one cached user lookup) and the load generator here.
CPU is read from /proc for each child. Also times JWT minting with and without reuse. Not a
test (pytest does not collect it); the full benchmark is bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

from beeflow.nextcloud.users import NcUser
from beeflow.proxy.tokens import TokenCache
from beeflow.signing import mint_jwt, user_claims
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET, TENANT_KEY, appapi_headers, base_env
from tests.proxy.conftest import dead_port

SMALL = b'{"ok":true,"items":[1,2,3],"message":"a small JSON answer of about ninety bytes"}'


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def _serve_upstream(port: int) -> None:
    async def small(request: web.Request) -> web.Response:
        return web.Response(body=SMALL, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/small", small)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def _wait_http(url: URL, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not come up")
            await asyncio.sleep(0.1)


async def _load(
    url: URL, headers: dict[str, str], seconds: float, concurrency: int
) -> tuple[int, float]:
    done = 0
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                async with session.get(url) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, time.monotonic() - started


def _jwt_costs() -> tuple[float, float]:
    user = NcUser("alice", "alice@example.com", "Alice", ("staff",))
    cache = TokenCache()

    def mint() -> str:
        claims = user_claims(
            uid=user.uid,
            email=user.email,
            name=user.display_name,
            nc_admin=user.is_admin,
            iat=int(time.time()),
            ttl=300,
        )
        return mint_jwt(TENANT_KEY, claims)

    def reuse() -> str:
        return cache.token(TENANT_KEY, user, 300)

    n = 50000
    return tuple(  # type: ignore[return-value]
        min(timeit.repeat(f, number=n, repeat=5)) / n * 1e6 for f in (mint, reuse)
    )


async def _main(seconds: float, concurrency: int) -> None:
    mint_us, reuse_us = _jwt_costs()
    _say(f"JWT: mint {mint_us:.2f} us/token, reuse (cache hit) {reuse_us:.2f} us/token")

    nc = FakeNextcloud(secret=SECRET)
    nc.add_user("alice", email="alice@example.com", display_name="Alice", groups=["staff"])
    await nc.start()
    up_port, conn_port = dead_port(), dead_port()
    storage = Path(tempfile.mkdtemp(dir="/tmp"))
    env = {
        **os.environ,
        **base_env(nc.url, storage),
        "APP_PORT": str(conn_port),
        "BEEFLOW_API_BASE_URL": f"http://127.0.0.1:{up_port}",
    }
    upstream = subprocess.Popen(  # noqa: ASYNC220 - two long-lived children, started once
        [sys.executable, "-m", "tests.proxy.bench_quick", "--upstream", str(up_port)]
    )
    connector = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "beeflow", "serve"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        direct_url = URL(f"http://127.0.0.1:{up_port}/api/small")
        proxy_url = URL(f"http://127.0.0.1:{conn_port}/api/small")
        await _wait_http(direct_url)
        await _wait_http(URL(f"http://127.0.0.1:{conn_port}/heartbeat"))
        nc.set_connector(url=URL(f"http://127.0.0.1:{conn_port}"))
        headers = appapi_headers("alice")
        await _load(proxy_url, headers, 1.0, concurrency)  # warm up: lookup, pool, JWT
        for name, url in (("direct", direct_url), ("proxied", proxy_url)):
            up0, conn0 = _cpu_seconds(upstream.pid), _cpu_seconds(connector.pid)
            count, elapsed = await _load(url, headers, seconds, concurrency)
            up_cpu = _cpu_seconds(upstream.pid) - up0
            conn_cpu = _cpu_seconds(connector.pid) - conn0
            _say(
                f"{name:8s} {count / elapsed:8.0f} req/s  upstream {up_cpu / count * 1e6:6.0f} "
                f"us CPU/req  connector {conn_cpu / count * 1e6:6.0f} us CPU/req  "
                f"({count} requests, {concurrency} concurrent, {elapsed:.1f} s)"
            )
    finally:
        for child in (connector, upstream):
            child.terminate()
            child.wait(10)
        await nc.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        asyncio.run(_serve_upstream(args.upstream))
        return
    asyncio.run(_main(args.seconds, args.concurrency))


if __name__ == "__main__":
    main()
