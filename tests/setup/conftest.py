"""Fixtures of the setup page tests: a tiny health endpoint the probe can reach on loopback, and
the fake service with its connector-control endpoints for the tenant actions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from tests.conftest import AutoFactory
from tests.helpers import RunningConnector


@attrs.define
class HealthServer:
    """GET /api/health answers per `mode`: ok | error | redirect | html; every request recorded."""

    mode: str = "ok"
    seen: list[tuple[str, CIMultiDictProxy[str]]] = attrs.field(factory=list)
    url: URL = attrs.field(factory=URL)
    _runner: web.AppRunner | None = None

    async def _health(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.headers))
        if self.mode == "error":
            return web.json_response({"status": "down"}, status=503)
        if self.mode == "redirect":
            raise web.HTTPFound(str(self.url / "elsewhere" / "api" / "health"))
        if self.mode == "html":
            return web.Response(text="<html>not json</html>", content_type="text/html")
        return web.json_response(
            {"status": "ok", "timestamp": "2026-11-22T10:00:00.000Z", "appVersion": "9f8e7d6"}
            | {"otel": False}
        )

    async def _other(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.headers))
        return web.json_response({"status": "elsewhere"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/health", self._health)
        app.router.add_get("/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = URL.build(scheme="http", host="127.0.0.1", port=self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def health() -> AsyncIterator[HealthServer]:
    server = HealthServer()
    await server.start()
    yield server
    await server.stop()


# ------------------------------------------------------------------ tenant actions


@pytest.fixture
def auto_connector(auto_connector: AutoFactory) -> AutoFactory:
    """The root's auto-mode connector, whose failed bootstraps retry only after a minute, so a
    test decides when the next attempt happens."""

    async def start(**env: str) -> RunningConnector:
        return await auto_connector(slow_retries=True, **env)

    return start
