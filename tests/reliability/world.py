"""`python -m beeflow serve` as a real process in front of the in-process fakes, for the faults
that need real processes (signals, frpc, start-up files)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from tests.fakes.frp import free_port, make_frpc
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_dav import FakeDav
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.helpers import SECRET, TENANT_KEY, appapi_headers, base_env
from tests.procs import Launcher, ServeProcess

HP_KEY = "harp-key-for-reliability-tests-0123"


@attrs.define
class World:
    """The fakes, a short directory for sockets and spools, and the processes started."""

    root: Path
    nc: FakeNextcloud
    dav: FakeDav
    service: FakeService
    control: ServiceControl
    procs: Launcher = attrs.field(factory=Launcher)

    @property
    def sock(self) -> str:
        return str(self.root / "exapp.sock")

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def storage(self) -> Path:
        return self.root / "data"

    def env(self, *, harp: bool = True, **overrides: str) -> dict[str, str]:
        """A complete environment; HaRP mode (Unix socket + stand-in frpc) by default."""
        env = base_env(
            self.nc.url,
            self.storage,
            APP_PORT=str(free_port()),
            BEEFLOW_API_BASE_URL=str(self.service.url),
            BEEFLOW_SPOOL_DIR=str(self.spool),
            BEEFLOW_SPOOL_MEMORY_BYTES=str(64 * 1024),
            BEEFLOW_SHUTDOWN_GRACE_SECONDS="10",
            BEEFLOW_LOG_LEVEL="debug",
        )
        if harp:
            env.update(
                HP_SHARED_KEY=HP_KEY,
                HP_FRP_ADDRESS="127.0.0.1",
                HP_EXAPP_SOCK=self.sock,
                BEEFLOW_FRPC_BIN=str(make_frpc(self.root)),
                BEEFLOW_FRP_CERT_DIR=str(self.root / "no-certs"),
                BEEFLOW_FRPC_CONFIG_DIR=str(self.root / "frpc-config"),
                BEEFLOW_FRPC_STOP_GRACE_SECONDS="0.5",
                FAKE_FRPC_SERVER="none",
                FAKE_FRPC_RECORD=str(self.root / "frpc-record.jsonl"),
                FAKE_FRPC_RETRY_SCALE="0.02",
            )
        env.update(overrides)
        return env

    async def start(
        self, env: dict[str, str], *args: str, script: Path | None = None
    ) -> ServeProcess:
        """`python -m beeflow serve`, or `python <script> serve` (a CLI with a test route)."""
        proc = await self.procs.start(env, *args, script=script)
        self.nc.set_connector(
            socket=env.get("HP_EXAPP_SOCK") if "HP_SHARED_KEY" in env else None,
            url=None if "HP_SHARED_KEY" in env else f"http://127.0.0.1:{env['APP_PORT']}",
        )
        return proc

    def session(self, env: dict[str, str], **kw: Any) -> aiohttp.ClientSession:
        """A client for the process: over its Unix socket in HaRP mode, else TCP."""
        if "HP_SHARED_KEY" in env:
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(
                path=env["HP_EXAPP_SOCK"], **kw
            )
        else:
            connector = aiohttp.TCPConnector(**kw)
        return aiohttp.ClientSession(connector=connector)

    @staticmethod
    def base(env: dict[str, str]) -> str:
        if "HP_SHARED_KEY" in env:
            return "http://localhost"
        return f"http://127.0.0.1:{env['APP_PORT']}"


def trusted(uid: str = "") -> dict[str, str]:
    return appapi_headers(uid)


@asynccontextmanager
async def world(*, verify_key: str = TENANT_KEY) -> AsyncIterator[World]:
    root = Path(tempfile.mkdtemp(prefix="bfp", dir="/tmp"))
    (root / "data").mkdir()
    (root / "dav").mkdir()
    dav = FakeDav(root / "dav")
    nc = FakeNextcloud(secret=SECRET, extra_routes=dav.routes())
    dav.bind(nc)
    nc.add_user("admin", email="admin@example.com", display_name="Ada Admin", groups=["admin"])
    nc.add_user("alice", email="alice@example.com", display_name="Alice", groups=["staff"])
    (dav.root / "alice").mkdir()
    control = ServiceControl(verify_key=verify_key)
    service = FakeService(extra_routes=control.routes())
    await nc.start()
    await service.start()
    w = World(root, nc, dav, service, control)
    try:
        yield w
    finally:
        await w.procs.close()
        await service.stop()
        await nc.stop()
        shutil.rmtree(root, ignore_errors=True)
