"""The whole connector in one process for the reliability tests: the fake Nextcloud (WebDAV and
all), the fake Bee Flow service with its control endpoints, and `make_app` on a real TCP socket,
plus helpers to call it as AppAPI, as a browser behind Nextcloud, and as the service on /nc."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from aiohttp import web
from yarl import URL

from beeflow.app import make_app
from beeflow.config import Config
from beeflow.transports.guard import ConnectionGuard, GuardedSite
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_dav import FakeDav
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.helpers import APP_ID, SECRET, TENANT_KEY, RunningConnector, base_env
from tests.proxy.nc.caller import nc_signature

SPA_JS = "assets/app.0123456789.js"
SPA_JS_BODY = b"console.log('bee flow');\n" * 40  # 1000 bytes


def app_headers(
    uid: str = "alice", *, secret: str = SECRET, app_id: str = APP_ID, version: str = "1.0.0"
) -> list[tuple[str, str]]:
    """AppAPI's request headers as (name, value) pairs (raw requests keep their order)."""
    token = base64.b64encode(f"{uid}:{secret}".encode()).decode()
    return [
        ("AUTHORIZATION-APP-API", token),
        ("EX-APP-ID", app_id),
        ("EX-APP-VERSION", version),
        ("AA-VERSION", "32.0.0"),
    ]


def nc_headers(
    method: str,
    target: str,
    *,
    body: bytes = b"",
    uid: str = "alice",
    ts: int | None = None,
    key: str = TENANT_KEY,
) -> list[tuple[str, str]]:
    """The service's /nc signature headers (v2, over the raw target), as pairs."""
    sig = nc_signature(
        key,
        int(time.time()) if ts is None else ts,
        method,
        target,
        uid,
        hashlib.sha256(body).hexdigest(),
    )
    return [("X-Beeflow-Sig", sig), ("X-Beeflow-NC-Uid", uid)]


def make_spa(root: Path) -> Path:
    """A small SPA directory with a hashed asset, a hidden file and a symlink out of it."""
    spa = root / "spa"
    (spa / "assets").mkdir(parents=True)
    (spa / "index.html").write_text("<!doctype html><title>Bee Flow</title><p>shell</p>\n")
    (spa / "favicon.ico").write_bytes(b"\x00\x00\x01\x00")
    (spa / SPA_JS).write_bytes(SPA_JS_BODY)
    (spa / "assets" / ".hidden").write_text("hidden\n")
    outside = root / "outside.txt"
    outside.write_text("OUTSIDE-THE-SPA-ROOT\n")
    (spa / "assets" / "link-out.js").symlink_to(outside)
    return spa


@attrs.define
class Stack:
    nc: FakeNextcloud
    dav: FakeDav
    service: FakeService
    control: ServiceControl
    conn: RunningConnector
    root: Path
    spool_dir: Path

    @property
    def port(self) -> int:
        port = self.conn.url.port
        assert port is not None
        return port

    @property
    def app(self) -> web.Application:
        return self.conn.app


async def start_guarded(
    config: Config, *, customise: Callable[[web.Application], None] | None = None
) -> RunningConnector:
    """make_app behind the listener the transports use (GuardedSite: the connection guard and
    the JSON answers to what aiohttp's parser refuses), on an ephemeral loopback port."""
    app = make_app(config, run_at_boot=False)
    if customise is not None:
        customise(app)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    guard = ConnectionGuard(
        max_connections=config.max_connections,
        max_head_bytes=config.max_head_bytes,
        head_timeout=config.head_timeout_seconds,
    )
    await GuardedSite(runner, guard, host="127.0.0.1", port=0).start()
    url = URL.build(scheme="http", host="127.0.0.1", port=int(runner.addresses[0][1]))
    return RunningConnector(config, app, runner, url, aiohttp.ClientSession(auto_decompress=False))


def stack_env(nc_url: Any, service_url: Any, root: Path, **overrides: str) -> dict[str, str]:
    storage = root / "data"
    storage.mkdir(exist_ok=True)
    # The service URL as the setup picker saves it (not BEEFLOW_API_BASE_URL, which would lock
    # the picker and answer every POST /setup with 409 env_locked).
    choice = {"mode": "self-hosted", "apiBaseUrl": str(service_url), "savedAt": time.time()}
    (storage / "setup-config.json").write_text(json.dumps(choice))
    env = base_env(
        nc_url,
        storage,
        BEEFLOW_SPOOL_DIR=str(root / "spool"),
        BEEFLOW_SPOOL_MEMORY_BYTES=str(64 * 1024),
        BEEFLOW_NC_MAX_BODY_BYTES=str(1024 * 1024),
        BEEFLOW_SPA_DIR=str(root / "spa"),
        BEEFLOW_UPSTREAM_HEADERS_TIMEOUT_SECONDS="2",
    )
    env.update(overrides)
    return env


@asynccontextmanager
async def running_stack(
    *,
    customise: Callable[[web.Application], None] | None = None,
    config_edit: Callable[[Config], Config] | None = None,
    service_routes: list[web.RouteDef] | None = None,
    nc_class: type[FakeNextcloud] = FakeNextcloud,
    prepare: Callable[[FakeService], None] | None = None,
    extra_env: dict[str, str] | None = None,
    **env: str,
) -> AsyncIterator[Stack]:
    """`prepare(service)` runs once the fakes listen, before the connector starts (to seed
    files that name the service's URL)."""
    """Everything started on loopback; everything stopped (and the temp dir removed) after."""
    root = Path(tempfile.mkdtemp(prefix="bfrel", dir="/tmp"))
    make_spa(root)
    (root / "dav").mkdir()
    dav = FakeDav(root / "dav")
    nc = nc_class(secret=SECRET, extra_routes=dav.routes())
    dav.bind(nc)
    nc.add_user("admin", email="admin@example.com", display_name="Ada Admin", groups=["admin"])
    nc.add_user("alice", email="alice@example.com", display_name="Alice", groups=["staff"])
    for uid in ("alice", "admin"):
        (dav.root / uid).mkdir()
    control = ServiceControl(verify_key=env.get("BEEFLOW_TENANT_KEY", TENANT_KEY))
    service = FakeService(extra_routes=[*(service_routes or []), *control.routes()])
    await nc.start()
    await service.start()
    conn: RunningConnector | None = None
    try:
        config = Config.from_env(
            stack_env(nc.url, service.url, root, **{**(extra_env or {}), **env})
        )
        if prepare is not None:
            prepare(service)
        if config_edit is not None:
            config = config_edit(config)
        conn = await start_guarded(config, customise=customise)
        nc.set_connector(url=conn.url)
        yield Stack(nc, dav, service, control, conn, root, root / "spool")
    finally:
        if conn is not None:
            await conn.close()
        await service.stop()
        await nc.stop()
        shutil.rmtree(root, ignore_errors=True)
