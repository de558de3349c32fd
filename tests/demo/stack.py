"""The demo as `serve --demo` runs it: the stand-ins plus the real connector on APP_PORT."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import aiohttp
import attrs
from aiohttp import web
from yarl import URL

from beeflow.app import make_app
from beeflow.config import Config
from beeflow.demo import Demo
from beeflow.lifecycle import pipeline


@attrs.define
class DemoStack:
    demo: Demo
    config: Config
    app: web.Application
    runner: web.AppRunner
    connector_url: URL
    startup_seconds: float

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.demo.stop()


async def start_demo_stack(
    *, delay: float = 0.0, env_overrides: Mapping[str, str] | None = None
) -> DemoStack:
    """Start like cli.serve_demo does (make_app with the boot run, TCP on APP_PORT) and wait
    until the connector answers its heartbeat through the stand-in front."""
    started = time.monotonic()
    demo = Demo(delay=delay)
    env = await demo.start()
    try:
        config = attrs.evolve(Config.from_env({**env, **(env_overrides or {})}), demo=True)
        app = make_app(config, run_at_boot=True)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
        await runner.setup()
        try:
            await web.TCPSite(runner, config.app_host, config.app_port).start()
            async with (
                aiohttp.ClientSession() as session,
                session.get(demo.url + "heartbeat") as resp,
            ):
                assert resp.status == 200
            up = time.monotonic() - started
            # The boot run (tenant, UI, webhooks) talks to the stand-in Nextcloud: let it end
            # before the test, so no call of it is in flight when the stand-ins stop.
            run = pipeline(app).run_info
            deadline = time.monotonic() + 10
            while run.state in ("idle", "running") and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        except BaseException:
            await runner.cleanup()
            raise
    except BaseException:
        await demo.stop()
        raise
    url = URL.build(scheme="http", host=config.app_host, port=config.app_port)
    return DemoStack(demo, config, app, runner, url, up)
