"""Shared test helpers: the test secret, AppAPI headers, and a connector on a real socket."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import string
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
from aiohttp import web
from yarl import URL

from beeflow.app import make_app
from beeflow.config import DEFAULT_API_BASE_URL, Config
from beeflow.setup.common import STATE
from beeflow.signing import nc_message_v1
from tests.ports import refused_port

# A 128-character secret from NC's alphabet, like AppAPI's (contract 1.1).
SECRET = (string.ascii_letters + string.digits + "+/") * 2
TENANT_KEY = "tk_test_0123456789abcdef0123456789abcdef"
APP_ID = "bee_flow"


def appapi_headers(
    uid: str = "", *, secret: str = SECRET, app_id: str = APP_ID, version: str = "1.0.0"
) -> dict[str, str]:
    token = base64.b64encode(f"{uid}:{secret}".encode()).decode()
    return {
        "AUTHORIZATION-APP-API": token,
        "EX-APP-ID": app_id,
        "EX-APP-VERSION": version,
        "AA-VERSION": "32.0.0",
    }


# What the setup page's health check answers for a service that is not there.
OFFLINE: Final = {
    "ok": False,
    "status": None,
    "code": "unreachable",
    "error": "No network in tests",
}


def base_env(nextcloud_url: URL | str, storage: Path, **overrides: str) -> dict[str, str]:
    env = {
        "APP_ID": APP_ID,
        "APP_SECRET": SECRET,
        "APP_VERSION": "1.0.0",
        "APP_HOST": "127.0.0.1",
        # A port where nothing answers (doctor asks 127.0.0.1:APP_PORT for a running connector).
        "APP_PORT": str(refused_port()),
        "APP_PERSISTENT_STORAGE": str(storage),
        "NEXTCLOUD_URL": str(nextcloud_url),
        "BEEFLOW_TENANT_KEY": TENANT_KEY,
        # The UI shell from the bundled spa/, never from the network (tests/web/test_shell.py
        # points it at a local stand-in of the front-end host).
        "BEEFLOW_EMBED_BASE_URL": "bundled",
    }
    env.update(overrides)
    return env


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition that no event announces (a fake's record list, a state field)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@attrs.define
class RunningConnector:
    """make_app(config) served by a real TCPSite on 127.0.0.1 (ephemeral port)."""

    config: Config
    app: web.Application
    runner: web.AppRunner
    url: URL
    session: aiohttp.ClientSession

    async def request(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> aiohttp.ClientResponse:
        """Send a request; `user` (str, "" = service) adds valid AppAPI headers."""
        hdrs: dict[str, str] = {}
        if user is not None:
            hdrs.update(appapi_headers(user))
        if headers:
            hdrs.update(headers)
        return await self.session.request(
            method, URL(str(self.url) + path, encoded=True), headers=hdrs, **kw
        )

    async def close(self) -> None:
        await self.session.close()
        await self.runner.cleanup()


async def start_connector(
    config: Config,
    *,
    run_at_boot: bool = False,
    customise: Callable[[web.Application], None] | None = None,
) -> RunningConnector:
    app = make_app(config, run_at_boot=run_at_boot)
    # The tests never reach the internet: the default service (Bee Flow Cloud) counts as
    # checked and unreachable, so the setup status does not try it.
    app[STATE].reachability.record(URL(DEFAULT_API_BASE_URL), OFFLINE, at=math.inf)
    if customise is not None:
        customise(app)  # e.g. extra test routes, before the app freezes
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    url = URL.build(scheme="http", host="127.0.0.1", port=port)
    session = aiohttp.ClientSession(auto_decompress=False)
    return RunningConnector(config, app, runner, url, session)


def sign_nc_v1(key: str, ts: int, method: str, path: str, uid: str) -> str:
    """A v1 `/nc` signature (no body digest), as callers from before v2 sign: the connector
    only verifies these (beeflow.signing.nc_message_v1), it never makes one."""
    mac = hmac.new(key.encode(), nc_message_v1(ts, method, path, uid).encode(), hashlib.sha256)
    return f"{ts}.{mac.hexdigest()}"
