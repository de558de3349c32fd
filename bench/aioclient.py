"""The client half of the floor: aiohttp's ClientSession alone, as a proxy uses it.

Runs `--concurrency` request loops on one pooled ClientSession (no limit, auto_decompress off,
the body read whole: what bench/launcher.py's minimal proxy does per request) against the
upstream for `--seconds`, and prints one JSON line: requests, errors, and this process's own
CPU seconds over the timed part (getrusage, so start-up is not counted).

    python -m bench.aioclient --url http://127.0.0.1:PORT/api/small [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import aiohttp
from yarl import URL

from bench.upstream import die_with_parent


async def run(url: URL, concurrency: int, seconds: float) -> dict[str, float]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
    ) as session:

        async def one() -> None:
            async with session.get(url) as resp:
                await resp.read()

        for _ in range(concurrency):  # open the pool before timing
            await one()
        requests = errors = 0
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal requests, errors
            while time.monotonic() < deadline:
                try:
                    await one()
                    requests += 1
                except aiohttp.ClientError:
                    errors += 1

        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"requests": requests, "errors": errors, "cpu_s": cpu, "seconds": elapsed}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.aioclient", description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = p.parse_args()
    die_with_parent()
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        out = runner.run(run(URL(args.url), args.concurrency, args.seconds))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
