"""Fixtures of the doctor tests: the fake Nextcloud (root conftest), the fake Bee Flow service, a
fake frps and stand-in frpc binaries, and `checks_of` to run every check once."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from beeflow.ops.doctor.command import run_checks
from beeflow.ops.doctor.result import FAIL, SKIP, Check
from beeflow.tenant.store import KEY_FILE
from tests.fakes.frp import FakeFrps
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.helpers import base_env
from tests.procs import short_dir

SHARED_KEY = "hp-doctor-key-Xy42"
FILE_KEY = "tk_from_file_abcdef0123456789abcdef"
Env = dict[str, str]

LEGACY_CHECKS = [
    "config",
    "storage",
    "nextcloud",
    "nextcloud_version",
    "appapi_secret",
    "clock_nextcloud",
    "service",
    "clock_service",
    "tenant_key",
    "connector",
    "assistant",
    "automations",
    "deploy_daemon",
]
# No connector runs in these tests unless one is started: its checks are skipped.
NOT_RUNNING = {"connector": SKIP, "assistant": SKIP, "automations": SKIP}
HARP_CHECKS = ["harp_socket", "harp_port", "frpc", "frps", "frp_certs"]


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    svc = FakeService()
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
def env(fake_nc: FakeNextcloud, service: FakeService, storage: Path) -> Env:
    """A complete legacy environment where every check passes."""
    return base_env(fake_nc.url, storage, BEEFLOW_API_BASE_URL=str(service.url))


@pytest.fixture
def tmp_short() -> Iterator[Path]:
    with short_dir() as path:
        yield path


async def checks_of(
    environ: Env, *, clock: Callable[[], float] = time.time, timeout: float = 5.0
) -> dict[str, Check]:
    checks, _ = await run_checks(environ, clock=clock, timeout=timeout)
    names = [c.name for c in checks]
    assert len(names) == len(set(names))
    # Every failure says how to fix it, in every scenario the doctor tests make.
    assert [c.name for c in checks if c.status == FAIL and not c.remedy.strip()] == []
    return {c.name: c for c in checks}


def authenticated_calls(nc: FakeNextcloud) -> int:
    return sum(1 for c in nc.calls if "AUTHORIZATION-APP-API" in c.headers)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def status_php() -> AsyncIterator[Callable[..., Any]]:
    """A stand-in Nextcloud that only answers /status.php with the given fields."""
    runners: list[web.AppRunner] = []

    async def start(**status: Any) -> str:
        async def handler(request: web.Request) -> web.Response:
            body = {"installed": True, "maintenance": False, "versionstring": "32.0.1"}
            body.update(status)
            return web.json_response(body)

        app = web.Application()
        app.router.add_get("/status.php", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def write_key(storage: Path, mode: int = 0o600, **extra: Any) -> None:
    path = storage / KEY_FILE
    record = {"tenantKey": FILE_KEY, "organizationId": "org-1", "organizationName": "Acme"}
    record.update(extra)
    path.write_text(json.dumps(record))
    path.chmod(mode)


def stub_frpc(directory: Path, version_line: str | None, *, hang: bool = False) -> Path:
    path = directory / "frpc"
    body = "import time\ntime.sleep(60)\n" if hang else f"print({version_line!r})\n"
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


@pytest.fixture
async def frps() -> AsyncIterator[FakeFrps]:
    server = await FakeFrps(token=SHARED_KEY).start()
    yield server
    await server.stop()


def write_certs(directory: Path, skip: str = "", empty: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "client.crt", "client.key"):
        if name == skip:
            continue
        label = "PRIVATE KEY" if name.endswith(".key") else "CERTIFICATE"
        text = "" if name == empty else f"-----BEGIN {label}-----\nMIIB\n-----END {label}-----\n"
        (directory / name).write_text(text)


@pytest.fixture
def harp_env(env: Env, tmp_short: Path, frps: FakeFrps) -> Env:
    certs = tmp_short / "certs"
    write_certs(certs)
    env.update(
        # frpc's remotePort, in HaRP's ExApp range; in HaRP mode nothing listens on it here.
        APP_PORT="23000",
        HP_SHARED_KEY=SHARED_KEY,
        HP_FRP_ADDRESS="127.0.0.1",
        HP_FRP_PORT=str(frps.port),
        HP_EXAPP_SOCK=str(tmp_short / "exapp.sock"),
        BEEFLOW_FRPC_BIN=str(stub_frpc(tmp_short, "0.61.1")),
        BEEFLOW_FRP_CERT_DIR=str(certs),
    )
    return env
