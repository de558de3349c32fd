"""One real Nextcloud 32 for the service-contract tests, started through `../shared/nextcloud/nc`
(relative to the repository root; BEEFLOW_TEST_NC_SCRIPT overrides it), with the connector
registered from appinfo/info.xml (manual_install, --json-info) in front of the fake Bee Flow
service.

* Nextcloud: its own directory (BEEFLOW_TEST_NC_DIR, default `<tempdir>/beeflow-nc-service-<uid>`,
  kept between runs: the first start installs it, ~15 s; later ones take ~0.1 s) and its own port
  (BEEFLOW_TEST_NC_PORT, default the directory's last port, else a free one). Stopped at the end
  when this session started it.
* The connector runs in this process (make_app on a free loopback port), BEEFLOW_TENANT_KEY fixed
  to a key the fake service holds; `admin` and `bob` get e-mail addresses (the service signs
  users in by e-mail).
* Skipped when Nextcloud cannot start here (no script, packages missing without root); under
  CI=... it fails instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import socket
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from beeflow.app import make_app
from beeflow.config import Config
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.helpers import SECRET, TENANT_KEY
from tests.manifest.manifest import json_routes, load

ROOT: Final = Path(__file__).resolve().parents[2]
APP_ID: Final = "bee_flow"
USERS: Final = {"admin": "admin@example.com", "bob": "bob@example.com"}


def _script() -> Path:
    configured = os.environ.get("BEEFLOW_TEST_NC_SCRIPT")
    return Path(configured) if configured else ROOT.parent / "shared" / "nextcloud" / "nc"


def _directory() -> Path:
    configured = os.environ.get("BEEFLOW_TEST_NC_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"beeflow-nc-service-{os.getuid()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the real Nextcloud is required in CI: {reason}")
    pytest.skip(reason)


@attrs.define
class Nextcloud:
    """The `nc` script for one directory and port."""

    script: Path
    directory: Path
    port: int
    env: dict[str, str] = attrs.field(factory=dict)

    @property
    def url(self) -> URL:
        return URL(self.env.get("NC_URL", f"http://127.0.0.1:{self.port}"))

    @property
    def proxy(self) -> str:
        return f"{self.url}/index.php/apps/app_api/proxy/{APP_ID}"

    async def run(
        self, *args: str, timeout: float = 120.0, extra_env: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(self.script),
            "--dir",
            str(self.directory),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(extra_env or {})},
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return int(proc.returncode or 0), out.decode(errors="replace")

    async def occ(self, *args: str, extra_env: Mapping[str, str] | None = None) -> str:
        """occ, retried once: SQLite in WAL mode answers "database is locked" when a web request
        writes at the same moment."""
        for attempt in (1, 2):
            code, out = await self.run("occ", *args, extra_env=extra_env)
            if code == 0:
                return out
            if attempt == 1 and "database is locked" in out:
                await asyncio.sleep(0.5)
                continue
            raise AssertionError(f"occ {shlex.join(args)} failed ({code}): {out[-2000:]}")
        raise AssertionError("unreachable")

    def basic(self, user: str, password: str | None = None) -> dict[str, str]:
        """A browser's Basic credentials (Nextcloud logs the user in from them)."""
        if password is None:
            password = self.env["NC_ADMIN_PASSWORD" if user == "admin" else "NC_BOB_PASSWORD"]
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}


@attrs.define
class Stack:
    nc: Nextcloud
    service: FakeService
    control: ServiceControl
    connector: URL
    app: web.Application


async def _start_nextcloud() -> tuple[Nextcloud, bool]:
    script = _script()
    if not script.is_file():
        _unavailable(f"no Nextcloud script at {script} (BEEFLOW_TEST_NC_SCRIPT)")
    directory = _directory()
    stored = directory / "port"
    port = int(os.environ.get("BEEFLOW_TEST_NC_PORT") or 0)
    if not port and stored.is_file() and stored.read_text().strip().isdigit():
        port = int(stored.read_text().strip())
    nc = Nextcloud(script, directory, port or free_port())
    status, _ = await nc.run("status", timeout=30)
    was_running = status == 0
    code, out = await nc.run("up", "--port", str(nc.port), timeout=600)
    if code == 4 and not os.environ.get("BEEFLOW_TEST_NC_PORT"):
        nc.port = free_port()  # the old port is someone else's now
        code, out = await nc.run("up", "--port", str(nc.port), timeout=600)
    if code == 3:
        _unavailable("Nextcloud's packages are missing and this is not root:\n" + out[-800:])
    if code != 0:
        _unavailable(f"`nc up` failed ({code}):\n{out[-2000:]}")
    code, out = await nc.run("env", timeout=30)
    assert code == 0, out
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            nc.env[name] = shlex.split(value)[0] if value else ""
    await nc.run("reset-bruteforce", timeout=60)
    return nc, not was_running


async def _register(nc: Nextcloud, port: int) -> None:
    root = load()
    info = {
        "id": APP_ID,
        "name": root.findtext("name"),
        "daemon_config_name": "manual_install",
        "version": root.findtext("version"),
        "secret": SECRET,
        "port": port,
        "routes": json_routes(root),
    }
    listing = await nc.occ("app_api:app:list")
    if f"{APP_ID} " in listing or f"{APP_ID}:" in listing:
        await nc.occ("app_api:app:unregister", APP_ID, "--force")
    # --wait-finish has no timeout of its own (Nextcloud observed): run() bounds it.
    await nc.occ(
        "app_api:app:register", APP_ID, "manual_install", "--json-info", json.dumps(info),
        "--wait-finish",
    )  # fmt: skip


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack() -> AsyncIterator[Stack]:
    nc, started = await _start_nextcloud()
    for user, email in USERS.items():
        await nc.occ("user:setting", user, "settings", "email", email)
    control = ServiceControl(verify_key=TENANT_KEY)
    service = FakeService(control=control)
    await service.start()
    storage = Path(tempfile.mkdtemp(prefix="beeflow-svc-"))
    port = free_port()
    config = Config.from_env(
        {
            "APP_ID": APP_ID,
            "APP_SECRET": SECRET,
            "APP_VERSION": load().findtext("version") or "0.1.0",
            "APP_HOST": "127.0.0.1",
            "APP_PORT": str(port),
            "APP_PERSISTENT_STORAGE": str(storage),
            "NEXTCLOUD_URL": str(nc.url),
            "BEEFLOW_TENANT_KEY": TENANT_KEY,
            "BEEFLOW_API_BASE_URL": str(service.url),
            "BEEFLOW_EMBED_BASE_URL": "bundled",
        }
    )
    app = make_app(config, run_at_boot=False)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await _register(nc, port)
        yield Stack(nc, service, control, URL(f"http://127.0.0.1:{port}"), app)
    finally:
        with contextlib.suppress(AssertionError):
            await nc.occ("app_api:app:unregister", APP_ID, "--force")
        await runner.cleanup()
        await service.stop()
        if started and not os.environ.get("BEEFLOW_TEST_NC_KEEP"):
            await nc.run("down", timeout=60)


@pytest_asyncio.fixture(loop_scope="session")
async def browser_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client like a browser's fetch: no cookies kept between tests."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.nextcloud)


Json = Any
