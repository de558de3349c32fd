"""Serve a demo stand-in on an ephemeral loopback port."""

from __future__ import annotations

from aiohttp import web
from yarl import URL


async def serve_loopback(app: web.Application) -> tuple[web.AppRunner, URL]:
    """Start `app` on 127.0.0.1 with a free port; returns the runner (to clean up) and its URL."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, URL.build(scheme="http", host="127.0.0.1", port=runner.addresses[0][1])
