"""Profile the connector under one benchmark load with py-spy, and summarise where it spends.

    python -m bench.profile small-api [--transport tcp] [--seconds 10] [--src DIR]
    python -m bench.profile small-api --app minimal    # the minimal aiohttp proxy, to compare

Scenarios: small-api, small-nc, sse (200 streams), api-down, api-up, nc-down, nc-up. Starts the
same upstream and connector as `python -m bench`, attaches `py-spy record` to the connector
(it must be installed: pip install py-spy), drives the load, then prints the functions with
the most samples: self (the frame itself) and total (anywhere on the stack), and the self
samples by package (beeflow, aiohttp, asyncio, ...). With the proxy's CPU time read from /proc
over the same load, each share is also given in µs of CPU per request (or per event): the
shares of a beeflow profile and of a `--app minimal` one, side by side, show where beeflow's
cost above the minimal proxy goes. The raw collapsed stacks are kept next to the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Final

from bench import client
from bench.run import MIB, Bench, Plan, body_sha256, parse_args, production_loop, user_headers
from bench.upstream import raise_nofile

SCENARIOS: Final = ("small-api", "small-nc", "sse", "api-down", "api-up", "nc-down", "nc-up")


PACKAGES: Final = ("beeflow", "aiohttp", "yarl", "multidict", "asyncio", "concurrent", "hashlib")


def package(frame: str) -> str:
    """The package a py-spy frame ("function (path:line)") belongs to; the event loop's own
    C code (uvloop) shows as the asyncio runner that started it."""
    path = frame.rpartition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    top = path.split("/", 1)[0].removesuffix(".py")
    if top in PACKAGES:
        return top
    if top.startswith("<attrs generated") and "beeflow." in top:
        return "beeflow"
    return "other (stdlib and the rest)"


def summarise(collapsed: Path, top: int = 30, per_unit_us: float = math.nan) -> str:
    """Self and total sample counts per function from py-spy's raw (collapsed) output;
    `per_unit_us` (CPU µs per request or event) turns shares into µs."""
    self_count: collections.Counter[str] = collections.Counter()
    total_count: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
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
        by_package[package(frames[-1])] += count
        for name in set(names):
            total_count[name] += count
    if not samples:
        return "0 samples"

    def us(n: int) -> str:
        return "" if math.isnan(per_unit_us) else f"  {n / samples * per_unit_us:6.1f} µs"

    out = [f"{samples} samples", "", "self %  package (self samples by the frame's package)"]
    for name, n in by_package.most_common():
        out.append(f"{n / samples * 100:5.1f}{us(n)}  {name}")
    out += ["", "self %  function"]
    for name, n in self_count.most_common(top):
        out.append(f"{n / samples * 100:5.1f}{us(n)}  {name}")
    out += ["", "total %  function"]
    for name, n in total_count.most_common(top):
        out.append(f"{n / samples * 100:5.1f}{us(n)}  {name}")
    return "\n".join(out)


async def drive(
    bench: Bench, scenario: str, target: client.Target, seconds: float
) -> tuple[str, int]:
    """Run the scenario's load against the connector for about `seconds`: (what was done, the
    requests or events it made, 0 for bulk)."""
    deadline = time.monotonic() + seconds
    done = 0
    if scenario.startswith("small"):
        path, headers = bench.small_request(scenario.split("-")[1])
        raw = client.build_request("GET", path, headers)
        result = await client.load(
            target, raw, concurrency=bench.plan.concurrency, duration=seconds
        )
        what = f"{result.requests} requests, {result.rps:.0f}/s, {result.errors} errors"
        return what, result.requests
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
        events = int(streams.opened * seconds * 20)
        return f"{streams.opened} streams at 20 events/s for {seconds:g} s", events
    while time.monotonic() < deadline:
        _rate, problem = await bench.bulk_once(target, scenario, True)
        if problem:
            return problem, 0
        done += 1
    return f"{done} transfers of {bench.plan.bulk_bytes // MIB} MiB", 0


async def main_async(args: argparse.Namespace) -> int:
    plan_args = ["--loops", args.loop, "--bulk-mib", str(args.bulk_mib)]
    if args.src:
        plan_args += ["--src", str(args.src)]
    plan = Plan.make(parse_args(plan_args))
    bench = Bench(plan)
    out: Path = args.out
    # py-spy comes with the bench extra: beside this Python when its venv is not on PATH
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    if args.scenario == "nc-up":
        await asyncio.to_thread(body_sha256, plan.bulk_bytes)
    await bench.start_upstream()
    conn, target = await bench.start_connector(args.loop, args.transport, app=args.app)
    try:
        await bench.warm(target)
        raw_file = out / f"{args.scenario}-{args.transport}-{args.app}.txt"
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
        cpu0 = conn.cpu_seconds()
        what, units = await drive(bench, args.scenario, target, args.seconds)
        cpu = conn.cpu_seconds() - cpu0
        _, err = await recorder.communicate()
        if recorder.returncode != 0 or not raw_file.exists():
            print(f"py-spy failed: {err.decode()[-800:]}", file=sys.stderr)
            return 1
        per_unit = cpu / units * 1e6 if units else math.nan
        unit = "event" if args.scenario == "sse" else "request"
        report = f"# {args.scenario} over {args.transport} ({args.loop}, {args.app}): {what}\n"
        if units:
            report += f"# proxy CPU {per_unit:.0f} µs per {unit} (py-spy attached)\n"
        report += "\n" + summarise(raw_file, args.top, per_unit)
        (out / f"{args.scenario}-{args.transport}-{args.app}.summary.txt").write_text(report + "\n")
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
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default=production_loop(),
        help="default: the connector's production loop (uvloop when installed)",
    )
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--bulk-mib", type=int, default=1024)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--src", type=Path, default=None, help="connector source tree")
    p.add_argument(
        "--app",
        choices=("beeflow", "minimal"),
        default="beeflow",
        help="profile the connector, or the minimal aiohttp proxy (small-api only)",
    )
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-profile"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    raise_nofile()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
