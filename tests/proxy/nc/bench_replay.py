"""What recording a write's signature costs per request: the per-process cache against the cache
shared through the volume (beeflow/proxy/nc/replay_shared.py), on this machine's disk.

    python -m tests.proxy.nc.bench_replay [--claims 20000] [--dir /some/volume]

Claims distinct signatures one after another (each a lock, a look at what others appended, one
appended line; the log rewritten when it outgrows its live claims), then checks them again
(`seen`, what the head check does), and prints microseconds per operation. A second run makes two
caches on the same directory alternate, as two replicas taking turns. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from beeflow.proxy.nc.replay import MemoryReplayCache, ReplayCache
from beeflow.proxy.nc.replay_shared import SharedReplayCache


async def _claims(caches: list[ReplayCache], n: int) -> tuple[float, float]:
    until = time.time() + 600
    macs = [os.urandom(32) for _ in range(n)]
    began = time.perf_counter()
    for i, mac in enumerate(macs):
        assert await caches[i % len(caches)].claim(mac, until)
    claimed = time.perf_counter() - began
    began = time.perf_counter()
    for i, mac in enumerate(macs):
        assert caches[(i + 1) % len(caches)].seen(mac)
    seen = time.perf_counter() - began
    return claimed / n * 1e6, seen / n * 1e6


def _shared(directory: Path) -> SharedReplayCache:
    cache = SharedReplayCache.open(directory)
    if cache is None:
        raise SystemExit(f"cannot use {directory}")
    return cache


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--claims", type=int, default=20000)
    parser.add_argument("--dir", type=Path, default=None, help="default: a new directory in /tmp")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-replay-", dir=args.dir) as name:
        root = Path(name)
        rows: list[tuple[str, list[ReplayCache]]] = [
            ("memory (one process)", [MemoryReplayCache()]),
            ("shared, one process", [_shared(root / "one")]),
            ("shared, two taking turns", [_shared(root / "two"), _shared(root / "two")]),
        ]
        for label, caches in rows:
            claim_us, seen_us = await _claims(caches, args.claims)
            sys.stdout.write(
                f"{label:26s} claim {claim_us:7.2f} us   seen {seen_us:7.2f} us   "
                f"({args.claims} signatures)\n"
            )
            for cache in caches:
                if isinstance(cache, SharedReplayCache):
                    cache.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
