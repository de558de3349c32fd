"""The image's ENTRYPOINT command, run for real: it starts the server on each transport, the image's
health check turns healthy long before HaRP's 90 s, and SIGTERM ends it with exit code 0."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest

from tests.fakes.frp import free_port
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET, base_env
from tests.ops.dockerfile import ROOT, parse
from tests.ops.executables import frpc_launcher, healthcheck, unique_name
from tests.procs import child_env, short_dir

HARP_LIMIT = 90.0  # HaRP waits 90 s for "healthy" (docs/install-harp.md)
SHARED_KEY = "hp-entry-key-7Qx"


def entrypoint() -> list[str]:
    """ENTRYPOINT of the runtime stage, with this interpreter standing in for the image's python."""
    (ins,) = [i for i in parse() if i.keyword == "ENTRYPOINT"]
    command = ins.exec_form()
    assert command is not None
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


@attrs.define
class Server:
    proc: asyncio.subprocess.Process
    started: float
    lines: list[str] = attrs.field(factory=list)

    async def wait_for_line(self, needle: str, timeout: float = 30.0) -> float:
        """Read stderr until a line contains `needle`; returns seconds since start."""
        assert self.proc.stderr is not None

        async def read() -> float:
            assert self.proc.stderr is not None
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"server exited before {needle!r}: {self.lines}")
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if needle in line:
                    return time.monotonic() - self.started

        return await asyncio.wait_for(read(), timeout)

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        rest = await asyncio.wait_for(self.proc.stderr.read(), 30)
        self.lines += rest.decode(errors="replace").splitlines()
        return await asyncio.wait_for(self.proc.wait(), 30)


StartServer = Callable[[dict[str, str]], Awaitable[Server]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    started: list[Server] = []

    async def start(env: dict[str, str]) -> Server:
        proc = await asyncio.create_subprocess_exec(
            *entrypoint(),
            env=child_env(env),
            cwd=str(ROOT),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        server = Server(proc, time.monotonic())
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()


async def _healthy_within(env: dict[str, str], server: Server, limit: float) -> float:
    """Probe like Docker does until healthy; returns seconds since the server started."""
    while True:
        code, out = await healthcheck(env)
        elapsed = time.monotonic() - server.started
        if code == 0:
            return elapsed
        assert elapsed < limit, f"not healthy after {elapsed:.1f} s: {out} {server.lines}"
        await asyncio.sleep(0.1)  # Docker's own probe interval stands in here


async def test_legacy_entrypoint_serves_turns_healthy_and_stops_on_sigterm(
    fake_nc: FakeNextcloud, storage: Path, start_server: StartServer
) -> None:
    port = free_port()
    env = base_env(fake_nc.url, storage, APP_PORT=str(port), APP_HOST="127.0.0.1")
    server = await start_server(env)
    listening = await server.wait_for_line("listening on")
    healthy = await _healthy_within(env, server, HARP_LIMIT / 3)
    assert listening < 15
    assert healthy < 20, f"healthy after {healthy:.1f} s"
    assert await server.terminate() == 0
    assert not [line for line in server.lines if SECRET in line]


async def test_harp_entrypoint_binds_the_socket_starts_frpc_and_turns_healthy(
    fake_nc: FakeNextcloud, storage: Path, start_server: StartServer
) -> None:
    with short_dir() as tmp:
        name = unique_name()
        frpc = frpc_launcher(tmp, name)
        sock = tmp / "exapp.sock"
        env = base_env(
            fake_nc.url,
            storage,
            APP_PORT=str(free_port()),
            HP_SHARED_KEY=SHARED_KEY,
            HP_FRP_ADDRESS="127.0.0.1",
            HP_FRP_PORT=str(free_port()),
            HP_EXAPP_SOCK=str(sock),
            BEEFLOW_FRPC_BIN=str(frpc),
            BEEFLOW_FRP_CERT_DIR=str(tmp / "no-certs"),
            BEEFLOW_FRPC_CONFIG_DIR=str(tmp),
            FAKE_FRPC_SERVER="none",
        )
        server = await start_server(env)
        await server.wait_for_line("frpc started")
        healthy = await _healthy_within(env, server, HARP_LIMIT / 3)
        assert healthy < 20, f"healthy after {healthy:.1f} s"
        assert await server.terminate() == 0
        assert not sock.exists()
        code, out = await healthcheck(env)
        assert code == 1, out
    for line in server.lines:
        assert SHARED_KEY not in line
        assert SECRET not in line
