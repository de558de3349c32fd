"""A/B: two connector source trees side by side on one scenario, alternating runs.

    python -m bench.ab --a /path/to/tree-a --b /path/to/tree-b small-api [--rounds 6]

For checking a performance fix before it lands: copy the tree (`git archive HEAD beeflow | tar
-x -C /tmp/a`), patch a second copy, and compare. Both connectors run at once against the same
upstream; runs alternate A, B, B, A... so drift in the machine's load hits both alike. Prints
the connector's CPU per request (or MiB/s for bulk scenarios) per side and the paired ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path

from bench import client, proc
from bench.run import Bench, Plan, body_sha256, parse_args, production_loop, user_headers
from bench.stats import Summary, percentile
from bench.upstream import raise_nofile

SCENARIOS = ("small-api", "small-nc", "sse", "api-down", "api-up", "nc-down", "nc-up")


async def measure(
    bench: Bench, scenario: str, conn: int, target: client.Target, seconds: float
) -> tuple[float, float]:
    """(connector CPU µs per request, req/s), (CPU µs per event, p99 event latency µs) for
    sse (the many-stream case of the full run), or (peak RSS growth MiB, MiB/s) for bulk."""
    if scenario.startswith("small"):
        path, headers = bench.small_request(scenario.split("-")[1])
        raw = client.build_request("GET", path, headers)
        cpu0 = proc.cpu_seconds(conn)
        result = await client.load(
            target, raw, concurrency=bench.plan.concurrency, duration=seconds
        )
        cpu = proc.cpu_seconds(conn) - cpu0
        if result.errors:
            raise RuntimeError(f"{result.errors} errors: {result.statuses}")
        return cpu / max(result.requests, 1) * 1e6, result.rps
    if scenario == "sse":
        plan = bench.plan
        path = f"/api/sse?n={plan.sse_many_events}&ms={plan.sse_many_ms:g}&wait=500"
        raw = client.build_request("GET", path, {**user_headers(), "Accept": "text/event-stream"})
        cpu0 = proc.cpu_seconds(conn)
        sse = await client.sse_run(target, raw, plan.sse_many)
        cpu = proc.cpu_seconds(conn) - cpu0
        if sse.failed or not sse.concurrent:
            raise RuntimeError(f"{sse.failed} streams failed (concurrent: {sse.concurrent})")
        return cpu / max(sse.events, 1) * 1e6, percentile(sorted(sse.latencies_us), 99)
    async with proc.RssSampler(conn) as rss:
        rate, problem = await bench.bulk_once(target, scenario, True)
    if problem:
        raise RuntimeError(problem)
    return rss.growth / (1 << 20), rate


async def main_async(args: argparse.Namespace) -> int:
    loops = ",".join(dict.fromkeys(x for x in (args.loop, args.a_loop, args.b_loop) if x))
    plan = Plan.make(parse_args(["--loops", loops, "--bulk-mib", str(args.bulk_mib)]))
    bench = Bench(plan)
    if args.scenario == "nc-up":
        await asyncio.to_thread(body_sha256, plan.bulk_bytes)
    await bench.start_upstream()
    a, ta = await bench.start_connector(args.a_loop or args.loop, args.transport, args.a, "a")
    b, tb = await bench.start_connector(args.b_loop or args.loop, args.transport, args.b, "b")
    sides = {"A": (a, ta), "B": (b, tb)}
    got: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    try:
        for child, target in sides.values():  # warm both
            await bench.warm(target)
            await measure(bench, args.scenario, child.pid, target, 1.0)
        order = ["A", "B"]
        for _ in range(args.rounds):
            for name in order:
                child, target = sides[name]
                got[name].append(
                    await measure(bench, args.scenario, child.pid, target, args.seconds)
                )
            order.reverse()
    finally:
        await bench.stop(a)
        await bench.stop(b)
        await bench.stop(bench.upstream)
        shutil.rmtree(bench.work, ignore_errors=True)
    if args.scenario == "sse":
        first, second = "CPU µs/event", "p99 µs"
    elif args.scenario.startswith("small"):
        first, second = "CPU µs/req", "req/s"
    else:
        first, second = "RSS growth MiB", "MiB/s"
    print(
        f"{args.scenario} over {args.transport} ({args.loop}), {args.rounds} rounds, "
        f"load {proc.loadavg()}"
    )
    print(
        f"  A = {args.a} ({args.a_loop or args.loop})\n  B = {args.b} ({args.b_loop or args.loop})"
    )
    for name in ("A", "B"):
        x = Summary.of([v[0] for v in got[name]])
        y = Summary.of([v[1] for v in got[name]])
        print(f"  {name}: {first} {x.fmt(1)}   {second} {y.fmt(0)}")
    pairs = list(zip(got["A"], got["B"], strict=True))
    rates = Summary.of([bv[1] / av[1] for av, bv in pairs if av[1]])
    if first.startswith("RSS"):
        # growth is often 0 on one side: a ratio would say nothing, the difference does
        growth = Summary.of([bv[0] - av[0] for av, bv in pairs])
        print(f"  B-A: {first} {growth.fmt(1)}   B/A: {second} {rates.fmt(3)}")
    else:
        ratios = Summary.of([bv[0] / av[0] for av, bv in pairs if av[0]])
        print(f"  B/A: {first} {ratios.fmt(3)}   {second} {rates.fmt(3)}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--a", type=Path, required=True, help="source tree A (holds beeflow/)")
    p.add_argument("--b", type=Path, required=True, help="source tree B")
    p.add_argument("--transport", choices=("tcp", "unix"), default="tcp")
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default=production_loop(),
        help="default: the connector's production loop (uvloop when installed)",
    )
    p.add_argument("--a-loop", choices=("asyncio", "uvloop"), default=None, help="A's loop")
    p.add_argument("--b-loop", choices=("asyncio", "uvloop"), default=None, help="B's loop")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--bulk-mib", type=int, default=256)
    args = p.parse_args()
    raise_nofile()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
