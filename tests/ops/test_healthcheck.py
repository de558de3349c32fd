"""docker/healthcheck.py run as Docker runs it (a separate process) against the real connector on
both transports: legacy -> /heartbeat over TCP; HaRP -> /heartbeat over the Unix socket AND a live
frpc process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from beeflow.app import make_app
from beeflow.config import Config
from tests.helpers import RunningConnector
from tests.ops.executables import healthcheck, sleeper, unique_name
from tests.procs import short_dir

SHARED_KEY = "hp-shared-key-Zq81"


@pytest.fixture
def tmp_short() -> Iterator[Path]:
    with short_dir() as path:
        yield path


@pytest.fixture
async def unix_connector(
    make_config: Callable[..., Config], tmp_short: Path
) -> AsyncIterator[Path]:
    """The real app on a UnixSite, as the HaRP transport binds it."""
    runner = web.AppRunner(make_app(make_config(), run_at_boot=False), access_log=None)
    await runner.setup()
    path = tmp_short / "exapp.sock"
    await web.UnixSite(runner, str(path)).start()
    yield path
    await runner.cleanup()


@pytest.fixture
async def frpc_process(tmp_short: Path) -> AsyncIterator[str]:
    """A live process with a unique frpc-like name; yields the name."""
    name = unique_name()
    proc = await asyncio.create_subprocess_exec(str(sleeper(tmp_short, name)))
    yield name
    proc.kill()
    await proc.wait()


def harp_env(sock: Path, frpc_name: str, directory: Path) -> dict[str, str]:
    return {
        "HP_SHARED_KEY": SHARED_KEY,
        "HP_EXAPP_SOCK": str(sock),
        "BEEFLOW_FRPC_BIN": str(directory / frpc_name),
    }


def spawn_zombie(path: Path) -> subprocess.Popen[bytes]:
    """Start `path` and wait until it has exited WITHOUT reaping it: it stays a zombie."""
    child = subprocess.Popen([str(path)])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    return child


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ legacy (TCP)


async def test_legacy_healthy(connector: RunningConnector) -> None:
    code, out = await healthcheck({"APP_HOST": "127.0.0.1", "APP_PORT": str(connector.url.port)})
    assert (code, out.strip()) == (0, "healthy")


async def test_legacy_all_interfaces_is_probed_on_loopback(connector: RunningConnector) -> None:
    code, _ = await healthcheck({"APP_HOST": "0.0.0.0", "APP_PORT": str(connector.url.port)})
    assert code == 0


async def test_legacy_server_down_is_unhealthy() -> None:
    code, out = await healthcheck({"APP_HOST": "127.0.0.1", "APP_PORT": str(closed_port())})
    assert code == 1
    assert "unhealthy: legacy mode: /heartbeat unreachable" in out


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, '{"status": "starting"}'), (503, '{"status": "ok"}'), (200, "ok"), (200, "[]")],
)
async def test_legacy_bad_heartbeat_is_unhealthy(status: int, body: str) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/heartbeat", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        code, out = await healthcheck({"APP_HOST": "127.0.0.1", "APP_PORT": str(port)})
    finally:
        await runner.cleanup()
    assert code == 1
    assert out.startswith("unhealthy: legacy mode: /heartbeat")


async def test_legacy_bad_port_is_unhealthy() -> None:
    code, out = await healthcheck({"APP_PORT": "eighty"})
    assert code == 1
    assert "APP_PORT" in out


# ------------------------------------------------------------------ HaRP (Unix socket + frpc)


async def test_harp_healthy(unix_connector: Path, frpc_process: str, tmp_short: Path) -> None:
    code, out = await healthcheck(harp_env(unix_connector, frpc_process, tmp_short))
    assert (code, out.strip()) == (0, "healthy")
    assert SHARED_KEY not in out


async def test_harp_without_frpc_is_unhealthy(unix_connector: Path, tmp_short: Path) -> None:
    name = unique_name()
    code, out = await healthcheck(harp_env(unix_connector, name, tmp_short))
    assert code == 1
    assert f"no running {name} process" in out
    assert SHARED_KEY not in out


async def test_harp_without_socket_is_unhealthy(frpc_process: str, tmp_short: Path) -> None:
    code, out = await healthcheck(harp_env(tmp_short / "none.sock", frpc_process, tmp_short))
    assert code == 1
    assert "HaRP mode: /heartbeat unreachable" in out


async def test_harp_ignores_tcp(connector: RunningConnector, tmp_short: Path) -> None:
    """In HaRP mode a TCP listener proves nothing: only the socket counts."""
    env = harp_env(tmp_short / "none.sock", unique_name(), tmp_short)
    env.update({"APP_HOST": "127.0.0.1", "APP_PORT": str(connector.url.port)})
    code, _ = await healthcheck(env)
    assert code == 1


async def test_harp_zombie_frpc_is_not_running(unix_connector: Path, tmp_short: Path) -> None:
    """A crashed frpc the supervisor has not reaped yet is a zombie: not a tunnel."""
    name = unique_name()
    path = tmp_short / name
    path.write_text(f"#!{sys.executable}\n")
    path.chmod(0o755)
    child = await asyncio.to_thread(spawn_zombie, path)
    try:
        code, out = await healthcheck(harp_env(unix_connector, name, tmp_short))
    finally:
        await asyncio.to_thread(child.wait)
    assert code == 1
    assert f"no running {name} process" in out


async def test_harp_is_chosen_by_a_non_empty_shared_key(
    connector: RunningConnector, tmp_short: Path
) -> None:
    env = {"HP_SHARED_KEY": "  ", "APP_HOST": "127.0.0.1", "APP_PORT": str(connector.url.port)}
    code, _ = await healthcheck(env)
    assert code == 0
