"""How late SSE events arrive through HAProxy, with and without `option http-no-delay`.

    python -m bench.haproxy_nodelay [--events 8] [--gap 0.3] [--haproxy haproxy]

An aiohttp server writes one event every `gap` seconds, each carrying the time it was written;
a client reads them directly, then through HAProxy in HTTP mode (HaRP's `ex_apps_backend` shape:
`mode http`, one server, the default timeouts), without and with `option http-no-delay`, and
prints each event's delay (arrival minus write time, same clock). Needs Debian's `haproxy`.
Not a test: it prints numbers (docs/troubleshooting.md quotes them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

CONFIG = """
global
    maxconn 1024
defaults
    mode http
    timeout connect 30s
    timeout client 30s
    timeout server 1800s
frontend ex_apps
    bind 127.0.0.1:{port}
    default_backend ex_apps_backend
backend ex_apps_backend
{option}    server app 127.0.0.1:{upstream}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_app(events: int, gap: float) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n in range(events):
            await asyncio.sleep(gap)
            await resp.write(f"id: {n}\ndata: {time.time():.6f}\n\n".encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/events", stream)
    return app


async def read_delays(url: str) -> list[float]:
    delays = []
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                delays.append(time.time() - float(line[6:]))
    return delays


async def through_haproxy(binary: str, upstream: int, option: str) -> list[float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(CONFIG.format(port=port, upstream=upstream, option=option))
        proc = await asyncio.create_subprocess_exec(
            binary, "-f", str(cfg), "-db", stdout=asyncio.subprocess.DEVNULL
        )
        try:
            for _ in range(200):  # until it listens (a benchmark: polling is fine here)
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                await asyncio.sleep(0.01)
            return await read_delays(f"http://127.0.0.1:{port}/events")
        finally:
            proc.terminate()
            await proc.wait()


def row(name: str, delays: list[float]) -> str:
    ms = [d * 1000 for d in delays]
    each = ", ".join(f"{m:.1f}" for m in ms)
    return f"| {name} | {statistics.median(ms):.1f} | {max(ms):.1f} | {each} |"


async def main_async(args: argparse.Namespace) -> int:
    binary = shutil.which(args.haproxy)
    if binary is None:
        print(f"no {args.haproxy}: apt-get install haproxy", file=sys.stderr)
        return 2
    runner = web.AppRunner(make_app(args.events, args.gap), access_log=None)
    await runner.setup()
    upstream = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream).start()
    try:
        version = (await asyncio.to_thread(_version, binary)).strip()
        print(f"{version}; {args.events} events, {args.gap} s apart; delays in ms")
        print("| path | median | max | each |\n| --- | --- | --- | --- |")
        print(row("direct", await read_delays(f"http://127.0.0.1:{upstream}/events")))
        print(row("HAProxy", await through_haproxy(binary, upstream, "")))
        print(
            row(
                "HAProxy, option http-no-delay",
                await through_haproxy(binary, upstream, "    option http-no-delay\n"),
            )
        )
    finally:
        await runner.cleanup()
    return 0


def _version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0] if done.stdout else binary


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=8)
    parser.add_argument("--gap", type=float, default=0.3)
    parser.add_argument("--haproxy", default="haproxy")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
