"""Soak: many concurrent clients sending mixed requests (API JSON, SSE chat, /nc WebDAV, static
files, heartbeats) at a real `serve` process in front of the fakes, then the server must be back
to its baseline: no request in flight, asyncio tasks and open descriptors as before, RSS flat.

The default run is short (BEEFLOW_SOAK_SECONDS=5, 100 clients); the full soak is
`BEEFLOW_SOAK_SECONDS=60 python -m pytest tests/reliability/test_soak.py -s` (1,000 clients by
default for runs of a minute or more; BEEFLOW_SOAK_CLIENTS overrides). The figures (requests per
kind, errors, tasks/fds/RSS before and after, the RSS curve) are printed and written to
test-artifacts/reliability/soak-<seconds>s-<clients>c.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from tests.fakes.service import StreamPlan, chat_pieces
from tests.helpers import appapi_headers
from tests.reliability.stack import nc_headers
from tests.reliability.world import World, world

# The environment is read here on purpose: it selects the test's length, not the product's.
SECONDS: Final = float(os.environ.get("BEEFLOW_SOAK_SECONDS", "5"))
CLIENTS: Final = int(os.environ.get("BEEFLOW_SOAK_CLIENTS", "1000" if SECONDS >= 60 else "100"))

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(SECONDS) + 120)]
ARTIFACTS: Final = Path(__file__).resolve().parents[2] / "test-artifacts" / "reliability"
SOAK_SERVE: Final = Path(__file__).with_name("soak_serve.py")
REPO_SPA: Final = Path(__file__).resolve().parents[2] / "spa"
NC_FILE: Final = "/nc/remote.php/dav/files/alice/soak.txt"
USERS: Final = ("alice", "bob", "carol", "dave")
# (kind, weight)
MIX: Final = (("api", 30), ("sse", 20), ("nc", 20), ("static", 20), ("heartbeat", 10))
# Pooled idle connections to the service and to Nextcloud are closed 10-30 s after their last use
# (keep-alive 10 and 15 s, checked by aiohttp every keep-alive period). The full soak waits for
# them too; the short one checks everything else and bounds the pool.
POOL_SETTLE_SECONDS: Final = 35.0
SETTLE_SECONDS: Final = 10.0
STRICT_POOLS: Final = SECONDS >= 60


@pytest.fixture
async def w() -> AsyncIterator[World]:
    async with world() as running:
        for uid in USERS[1:]:
            running.nc.add_user(uid, email=f"{uid}@example.com", display_name=uid.title())
        running.dav.put_file("alice", "soak.txt", b"soak " * 200)
        yield running


async def stats(session: aiohttp.ClientSession, base: str, *, collect: bool = False) -> Any:
    async with session.get(f"{base}/test/stats" + ("?gc=1" if collect else "")) as resp:
        assert resp.status == 200
        return await resp.json()


def asset() -> str:
    return "/assets/" + sorted(p.name for p in (REPO_SPA / "assets").iterdir())[0]


class Load:
    def __init__(self, base: str) -> None:
        self.base = base
        self.done: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {kind: [] for kind, _ in MIX}
        self.static = ["/", "/index.html", asset()]

    async def one(self, session: aiohttp.ClientSession, kind: str, rng: random.Random) -> None:
        uid = rng.choice(USERS)
        began = time.monotonic()
        expect: tuple[int, ...] = (200,)
        kw: dict[str, Any] = {}
        if kind == "api":
            method, path, headers = "GET", f"/api/json?n={rng.randrange(1000)}", appapi_headers(uid)
        elif kind == "sse":
            method, path = "POST", "/ai/chat/direct/stream"
            headers, kw = appapi_headers(uid), {"json": {"message": "soak"}}
        elif kind == "nc":
            verb = rng.choice(["GET", "PROPFIND"])
            method, path = verb, NC_FILE
            headers = dict(nc_headers(verb, NC_FILE))
            if verb == "PROPFIND":
                headers["Depth"] = "0"
                expect = (207,)
        elif kind == "static":
            method, path, headers = "GET", rng.choice(self.static), {}
        else:
            method, path, headers = "GET", "/heartbeat", {}
        try:
            async with session.request(method, self.base + path, headers=headers, **kw) as resp:
                body = await resp.read()
                if resp.status not in expect:
                    self.errors[f"{kind}: HTTP {resp.status} {body[:80]!r}"] += 1
                    return
                if kind == "sse" and not body.endswith(
                    b'event: done\ndata: {"conversationId":"conv-1"}\n\n'
                ):
                    self.errors[f"{kind}: truncated stream"] += 1
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[f"{kind}: {type(exc).__name__}"] += 1
            return
        self.done[kind] += 1
        self.latency[kind].append(time.monotonic() - began)

    async def client(self, session: aiohttp.ClientSession, seed: int, until: float) -> None:
        rng = random.Random(seed)
        kinds = [kind for kind, _ in MIX]
        weights = [weight for _, weight in MIX]
        while time.monotonic() < until:
            await self.one(session, rng.choices(kinds, weights)[0], rng)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def test_soak(w: World, record_property: Callable[[str, object], None]) -> None:
    env = w.env(harp=False, BEEFLOW_LOG_LEVEL="info", BEEFLOW_SHUTDOWN_GRACE_SECONDS="5")
    w.service.sse = StreamPlan(chat_pieces(["a", "b", "c"], interval=0.02))
    proc = await w.start(env, script=SOAK_SERVE)
    await proc.wait_line("ready in")
    base = w.base(env)
    load = Load(base)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as probe:
        # Warm the caches and pools once, then take the baseline of an idle server.
        async with aiohttp.ClientSession() as warm:
            for kind, _ in MIX:
                await load.one(warm, kind, random.Random(0))
        assert not load.errors, load.errors
        before = await settle(probe, base, None)
        curve: list[tuple[float, int]] = []
        started = time.monotonic()
        until = started + SECONDS

        async def sample() -> None:
            while time.monotonic() < until:
                s = await stats(probe, base)
                curve.append((round(time.monotonic() - started, 2), s["rss_kib"]))
                await asyncio.sleep(max(0.5, SECONDS / 60))

        connector = aiohttp.TCPConnector(limit=CLIENTS, limit_per_host=CLIENTS)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            peak = {"tasks": 0, "fds": 0}

            async def watch_peak() -> None:
                while time.monotonic() < until:
                    s = await stats(probe, base)
                    peak["tasks"] = max(peak["tasks"], s["tasks"])
                    peak["fds"] = max(peak["fds"], s["fds"]["total"])
                    await asyncio.sleep(1.0)

            await asyncio.gather(
                sample(),
                watch_peak(),
                *(load.client(session, seed, until) for seed in range(CLIENTS)),
            )
        ran = time.monotonic() - started
        after = await settle(probe, base, before)
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit(20) == 0

    total = sum(load.done.values())
    rss_growth_kib = curve[-1][1] - curve[len(curve) // 2][1] if len(curve) > 2 else 0
    figures = {
        "seconds": round(ran, 1),
        "clients": CLIENTS,
        "requests": total,
        "per_kind": dict(load.done),
        "requests_per_second": round(total / ran, 1),
        "errors": dict(load.errors),
        "latency_p50_ms": {k: ms(percentile(v, 0.5)) for k, v in load.latency.items()},
        "latency_p99_ms": {k: ms(percentile(v, 0.99)) for k, v in load.latency.items()},
        "before": before,
        "peak": peak,
        "after": after,
        "rss_curve_kib": curve,
        "rss_growth_second_half_kib": rss_growth_kib,
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / f"soak-{int(SECONDS)}s-{CLIENTS}c.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    summary = {k: v for k, v in figures.items() if k != "rss_curve_kib"}
    sys.stdout.write(f"\nsoak figures ({out}): {json.dumps(summary)}\n")
    sys.stdout.write(f"rss curve (s, KiB): {curve}\n")
    for name, value in summary.items():
        record_property(f"soak_{name}", value)

    assert load.errors == Counter(), load.errors
    assert all(load.done[kind] > 0 for kind, _ in MIX), load.done
    assert peak["fds"] > before["fds"]["total"] + min(CLIENTS, 50) // 2  # it was concurrent
    # Back to the baseline: nothing in flight, no task or descriptor left behind...
    assert after["in_flight"] == 0
    assert after["tasks"] <= before["tasks"], (before, after)
    assert after["fds"]["clients"] <= before["fds"]["clients"], (before, after)
    assert after["fds"]["other"] <= before["fds"]["other"], (before, after)
    # ...but idle pooled upstream connections, at most one per client and upstream (and, in the
    # full soak, gone too once their keep-alive ran out).
    assert after["fds"]["upstream"] <= 2 * CLIENTS, (before, after)
    if STRICT_POOLS:
        assert after["fds"]["upstream"] <= before["fds"]["upstream"], (before, after)
    # RSS flat: no growth over the second half of the run beyond allocator noise.
    assert rss_growth_kib < 16 * 1024, curve
    assert "Traceback" not in proc.text


async def settle(session: aiohttp.ClientSession, base: str, baseline: Any) -> Any:
    """The server's figures once idle: without a baseline, once they stop changing; with one,
    once back to it (pooled upstream connections too when STRICT_POOLS), within a bound."""
    limit = POOL_SETTLE_SECONDS if STRICT_POOLS and baseline is not None else SETTLE_SECONDS
    deadline = time.monotonic() + limit
    last = await stats(session, base, collect=True)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await stats(session, base, collect=True)
        if baseline is None:
            if now["fds"] == last["fds"] and now["tasks"] == last["tasks"]:
                return now
        elif (
            now["in_flight"] == 0
            and now["tasks"] <= baseline["tasks"]
            and now["fds"]["clients"] <= baseline["fds"]["clients"]
            and now["fds"]["other"] <= baseline["fds"]["other"]
            and (not STRICT_POOLS or now["fds"]["upstream"] <= baseline["fds"]["upstream"])
        ):
            return now
        last = now
    return last
