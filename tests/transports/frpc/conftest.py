"""Fixtures of the frpc tests: the stand-in frpc's environment, a tiny app on the Unix socket it
tunnels to, and supervisors stopped at the end of each test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
from aiohttp import web

from beeflow.config import Config
from beeflow.transports.frpc.supervisor import FrpcSupervisor
from tests.transports.conftest import SHARED_KEY
from tests.transports.frpc import realfrp

FAKE_KNOBS = (
    "FAKE_FRPC_MODE",
    "FAKE_FRPC_CRASH_TIMES",
    "FAKE_FRPC_CRASH_AFTER",
    "FAKE_FRPC_EXIT_CODE",
    "FAKE_FRPC_IGNORE_TERM",
    "FAKE_FRPC_IGNORE_INT",
    "FAKE_FRPC_SERVER",
    "FAKE_FRPC_VERSION",
    "FAKE_FRPC_VERSION_HANG",
    "FAKE_FRPC_FORCE_COLOR",
    "FAKE_FRPC_ECHO_TOKEN",
)


@pytest.fixture(autouse=True)
def fake_env(monkeypatch: pytest.MonkeyPatch, record: Path) -> None:
    """The stand-in inherits our environment: start from its defaults, retries sped up."""
    for name in FAKE_KNOBS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAKE_FRPC_RETRY_SCALE", "0.02")


@pytest.fixture
async def unix_app(sockdir: Path) -> AsyncIterator[Path]:
    """A tiny aiohttp app on the Unix socket frpc tunnels to."""

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"pong": True})

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    path = sockdir / "s.sock"
    await web.UnixSite(runner, str(path)).start()
    yield path
    await runner.cleanup()


@pytest.fixture
async def supervisors() -> AsyncIterator[list[FrpcSupervisor]]:
    started: list[FrpcSupervisor] = []
    yield started
    for sup in started:
        await sup.stop()


async def start(
    started: list[FrpcSupervisor], config: Config, unix_path: Path, **kw: object
) -> FrpcSupervisor:
    sup = FrpcSupervisor(config, unix_path, **kw)  # type: ignore[arg-type]
    started.append(sup)
    await sup.start()
    return sup


async def until(sup: FrpcSupervisor, predicate: Callable[[], bool], timeout: float = 10) -> None:
    if not await sup.wait_until(predicate, timeout):
        raise AssertionError(f"timed out; status: {sup.status()}")


def rendered_configs() -> list[int]:
    """Our open in-memory frpc configs (memfds named frpc.toml), by descriptor."""
    found = []
    for entry in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if target.startswith("/memfd:frpc.toml"):
            found.append(int(entry.name))
    return sorted(found)


@attrs.frozen
class RealFrp:
    """The real binaries and HaRP's certificates, once per session."""

    frpc: Path
    frps: Path
    harp_certs: Path  # HaRP's /certs/frp: CA, server and client


@pytest.fixture(scope="session")
def real_frp(tmp_path_factory: pytest.TempPathFactory) -> RealFrp:
    """Skipped on a developer machine without the bundle or openssl; in CI (CI set) the tests
    run anyway and fail loudly."""
    reason = realfrp.unavailable()
    if reason is not None and not os.environ.get("CI"):
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("frp")
    bins = realfrp.extract(root / "bin")
    certs = realfrp.harp_certs(root / "harp-certs")
    return RealFrp(frpc=bins / "frpc", frps=bins / "frps", harp_certs=certs)


@pytest.fixture
async def real_frps(real_frp: RealFrp, sockdir: Path) -> AsyncIterator[realfrp.RealFrps]:
    """HaRP's frps, TLS forced with client certificates, accepting SHARED_KEY."""
    work = sockdir / "frps"
    work.mkdir()
    server = realfrp.RealFrps(real_frp.frps, work, SHARED_KEY, real_frp.harp_certs)
    await server.start()
    yield server
    await server.stop()
