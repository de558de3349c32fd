"""The connector under test, alone in its own process so its CPU time and RSS can be read.

Builds the real application with `beeflow.app.make_app(Config.from_env(os.environ))` and serves
it like `python -m beeflow serve` does (AppRunner with handler cancellation, no access log),
through the transports' listener (GuardedSite with the connection guard built from the same
Config: the connection count, the request-head limits and the JSON answers to parser refusals
are part of what is measured), on TCP (legacy mode, no HP_SHARED_KEY) or on a Unix socket bound
the way the HaRP transport binds it (set HP_SHARED_KEY for HaRP mode, as HaRP's frpc would
reach it). frpc itself is not started: the benchmark client dials the socket.
Prints `READY <where>` when it accepts connections; SIGTERM stops it. `--app minimal` serves
the reference instead: a bare aiohttp proxy, the floor any aiohttp-based connector stands on.

    python -m bench.launcher --transport tcp|unix [--loop asyncio|uvloop] [--app minimal|server]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from bench.upstream import die_with_parent, raise_nofile


def minimal_app(upstream: str) -> web.Application:
    """The reference: the least an aiohttp proxy does (one pooled ClientSession, no checks,
    small bodies read whole). What the connector costs beyond this is the connector's own."""
    import aiohttp

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        ) as session:
            app[SESSION] = session
            yield

    async def forward(request: web.Request) -> web.Response:
        async with request.app[SESSION].get(upstream + request.path_qs) as resp:
            body = await resp.read()
            return web.Response(body=body, status=resp.status, content_type=resp.content_type)

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/api/{tail:.*}", forward)
    return app


SESSION: web.AppKey[Any] = web.AppKey("bench_session")


def server_app() -> web.Application:
    """The server half of the floor: aiohttp answering the small request itself (the upstream's
    body, no client call). With the client half (bench/aioclient.py) it splits the minimal
    proxy's cost into what aiohttp's server and its client each take on this machine."""
    from bench.upstream import SMALL_BODY

    async def answer(_request: web.Request) -> web.Response:
        return web.Response(body=SMALL_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/{tail:.*}", answer)
    return app


def beeflow_app() -> web.Application:
    # Imported here so `--help` and `--app minimal` work without beeflow importable.
    from beeflow.app import make_app
    from beeflow.config import Config
    from beeflow.redact import REDACTOR

    config = Config.from_env(os.environ)
    for handler in logging.getLogger().handlers:
        handler.addFilter(REDACTOR)
    for secret in (config.app_secret, config.hp_shared_key, config.tenant_key_env):
        REDACTOR.add(secret)
    return make_app(config, run_at_boot=False)


BACKLOG = 4096


def connector_site(runner: web.AppRunner, port: int, unix: str | None) -> web.BaseSite:
    """The connector's listener as the transports make it: GuardedSite with the Config's
    connection guard, on TCP or on a Unix socket bound by the HaRP transport's bind_unix."""
    from pathlib import Path

    from beeflow.config import CONFIG
    from beeflow.transports.guard import ConnectionGuard, GuardedSite
    from beeflow.transports.harp import bind_unix

    config = runner.app[CONFIG]
    guard = ConnectionGuard(
        max_connections=config.max_connections,
        max_head_bytes=config.max_head_bytes,
        head_timeout=config.head_timeout_seconds,
    )
    if unix is not None:
        return GuardedSite(runner, guard, sock=bind_unix(Path(unix)), backlog=BACKLOG)
    return GuardedSite(runner, guard, host="127.0.0.1", port=port, backlog=BACKLOG)


async def serve(transport: str, port: int, unix: str | None, which: str) -> None:
    if which == "minimal":
        app = minimal_app(os.environ["BEEFLOW_API_BASE_URL"])
    elif which == "server":
        app = server_app()
    else:
        app = beeflow_app()
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site: web.BaseSite
    path = None
    if transport == "unix":
        assert unix is not None
        path = unix
    if which == "beeflow":
        site = connector_site(runner, port, path)
    elif path is not None:
        # The references are bare aiohttp: its own sites.
        site = web.UnixSite(runner, path, backlog=BACKLOG)
    else:
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True, backlog=BACKLOG)
    await site.start()
    where: Any = unix if transport == "unix" else runner.addresses[0][1]
    print(f"READY {where}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.launcher")
    parser.add_argument("--transport", choices=("tcp", "unix"), default="tcp")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unix", default=None)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--app",
        choices=("beeflow", "minimal", "server"),
        default="beeflow",
        help="the connector, a minimal aiohttp proxy as the reference, or aiohttp's server alone",
    )
    args = parser.parse_args()
    die_with_parent()
    raise_nofile()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.transport, args.port, args.unix, args.app))
    return 0


if __name__ == "__main__":
    sys.exit(main())
