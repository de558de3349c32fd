"""Profile the connector under one benchmark load with py-spy, and summarise where it spends.

    python -m bench.profile small-api [--transport tcp] [--seconds 10] [--src DIR]

Scenarios: small-api, small-nc, sse (200 streams), api-down, api-up, nc-down, nc-up. Starts the
same upstream and connector as `python -m bench`, attaches `py-spy record` to the connector
(it must be installed: pip install py-spy), drives the load, then prints the functions with
the most samples: self (the frame itself) and total (anywhere on the stack). The raw collapsed
stacks are kept next to the summary in --out.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
import time
from pathlib import Path
from typing import Final

from bench import client
from bench.run import MIB, Bench, Plan, body_sha256, parse_args, user_headers
from bench.upstream import raise_nofile

SCENARIOS: Final = ("small-api", "small-nc", "sse", "api-down", "api-up", "nc-down", "nc-up")


def summarise(collapsed: Path, top: int = 30) -> str:
    """Self and total sample counts per function from py-spy's raw (collapsed) output."""
    self_count: collections.Counter[str] = collections.Counter()
    total_count: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        # py-spy frames: "function (file:line)"; drop the line so one function is one entry
        names = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in frames]
        self_count[names[-1]] += count
        for name in set(names):
            total_count[name] += count
    out = [f"{samples} samples", "", "self %  function"]
    for name, n in self_count.most_common(top):
        out.append(f"{n / samples * 100:5.1f}  {name}")
    out += ["", "total %  function"]
    for name, n in total_count.most_common(top):
        out.append(f"{n / samples * 100:5.1f}  {name}")
    return "\n".join(out)


async def drive(bench: Bench, scenario: str, target: client.Target, seconds: float) -> str:
    """Run the scenario's load against the connector for about `seconds`."""
    deadline = time.monotonic() + seconds
    done = 0
    if scenario.startswith("small"):
        path, headers = bench.small_request(scenario.split("-")[1])
        raw = client.build_request("GET", path, headers)
        result = await client.load(
            target, raw, concurrency=bench.plan.concurrency, duration=seconds
        )
        return f"{result.requests} requests, {result.rps:.0f}/s, {result.errors} errors"
    if scenario == "sse":
        raw = client.build_request(
            "GET",
            "/api/sse?n=100000&ms=50&wait=0",
            {**user_headers(), "Accept": "text/event-stream"},
        )
        streams = client.IdleStreams()
        await streams.open(target, raw, bench.plan.sse_many)
        await asyncio.sleep(seconds)
        streams.close()
        return f"{streams.opened} streams at 20 events/s for {seconds:g} s"
    while time.monotonic() < deadline:
        _rate, problem = await bench.bulk_once(target, scenario, True)
        if problem:
            return problem
        done += 1
    return f"{done} transfers of {bench.plan.bulk_bytes // MIB} MiB"


async def main_async(args: argparse.Namespace) -> int:
    plan_args = ["--loops", args.loop, "--bulk-mib", str(args.bulk_mib)]
    if args.src:
        plan_args += ["--src", str(args.src)]
    plan = Plan.make(parse_args(plan_args))
    bench = Bench(plan)
    out: Path = args.out
    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    if args.scenario == "nc-up":
        await asyncio.to_thread(body_sha256, plan.bulk_bytes)
    await bench.start_upstream()
    conn, target = await bench.start_connector(args.loop, args.transport)
    try:
        await bench.warm(target)
        raw_file = out / f"{args.scenario}-{args.transport}.txt"
        common = ["--pid", str(conn.pid), "--rate", str(args.rate), "--nonblocking"]
        common += ["--duration", str(int(args.seconds))]
        recorder = await asyncio.create_subprocess_exec(
            spy,
            "record",
            *common,
            "--format",
            "raw",
            "-o",
            str(raw_file),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.5)
        what = await drive(bench, args.scenario, target, args.seconds)
        _, err = await recorder.communicate()
        if recorder.returncode != 0 or not raw_file.exists():
            print(f"py-spy failed: {err.decode()[-800:]}", file=sys.stderr)
            return 1
        report = f"# {args.scenario} over {args.transport} ({args.loop}): {what}\n\n"
        report += summarise(raw_file, args.top)
        (out / f"{args.scenario}-{args.transport}.summary.txt").write_text(report + "\n")
        print(report)
    finally:
        await bench.stop(conn)
        await bench.stop(bench.upstream)
        shutil.rmtree(bench.work, ignore_errors=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--transport", choices=("tcp", "unix"), default="tcp")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--bulk-mib", type=int, default=1024)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--src", type=Path, default=None, help="connector source tree")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-profile"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    raise_nofile()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
