"""Both transports on real sockets: TCP and the hardened Unix socket with its frpc."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from beeflow.app import make_app
from beeflow.config import Config
from beeflow.transports.base import TransportError
from beeflow.transports.frpc.binary import FrpcError
from beeflow.transports.frpc.diagnose import CONNECTED
from beeflow.transports.frpc.supervisor import FrpcSupervisor
from beeflow.transports.harp import HarpTransport, bind_unix
from beeflow.transports.tcp import TcpTransport
from tests.fakes.frp import FakeFrps, events, free_port
from tests.helpers import base_env
from tests.transports.conftest import UNREACHABLE_NC
from tests.transports.test_tcp_backlog import kernel_unix_backlog, somaxconn


@pytest.fixture(autouse=True)
def fake_env(monkeypatch: pytest.MonkeyPatch, record: Path) -> None:
    for name in ("FAKE_FRPC_MODE", "FAKE_FRPC_IGNORE_TERM", "FAKE_FRPC_SERVER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAKE_FRPC_RETRY_SCALE", "0.02")


@pytest.fixture
async def runner_for() -> AsyncIterator[Callable[[Config], web.AppRunner]]:
    """Runners (and the HaRP transports' frpc) are cleaned up even when a test fails."""
    runners: list[web.AppRunner] = []

    def make(config: Config) -> web.AppRunner:
        runner = web.AppRunner(make_app(config, run_at_boot=False), shutdown_timeout=0.5)
        runners.append(runner)
        return runner

    yield make
    for sup in list(_SUPERVISORS):
        await sup.stop()
    _SUPERVISORS.clear()
    for runner in runners:
        await runner.cleanup()


_SUPERVISORS: list[FrpcSupervisor] = []


def harp(config: Config) -> HarpTransport:
    transport = HarpTransport(config)
    _SUPERVISORS.append(transport.supervisor)
    return transport


async def unix_get(path: Path, url_path: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session,
        session.get(f"http://localhost{url_path}") as resp,
    ):
        return resp.status, await resp.json()


async def test_tcp_transport_serves_heartbeat(
    storage: Path, runner_for: Callable[[Config], web.AppRunner]
) -> None:
    port = free_port()
    config = Config.from_env(base_env(UNREACHABLE_NC, storage, APP_PORT=str(port)))
    runner = runner_for(config)
    await runner.setup()
    transport = TcpTransport(config)
    await transport.start(runner)
    assert transport.bound_port == port
    assert transport.status()["mode"] == "legacy"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/heartbeat") as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"
    await transport.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{port}/heartbeat")


async def test_tcp_port_in_use_is_a_transport_error(
    storage: Path, runner_for: Callable[[Config], web.AppRunner]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config.from_env(base_env(UNREACHABLE_NC, storage, APP_PORT=str(port)))
        runner = runner_for(config)
        await runner.setup()
        with pytest.raises(TransportError, match=f"cannot listen on 127.0.0.1:{port}"):
            await TcpTransport(config).start(runner)


async def test_harp_transport_serves_heartbeat_on_a_private_socket(
    make_harp_config: Callable[..., Config],
    runner_for: Callable[[Config], web.AppRunner],
    frps: FakeFrps,
    record: Path,
) -> None:
    config = make_harp_config()
    runner = runner_for(config)
    await runner.setup()
    transport = harp(config)
    await transport.start(runner)
    path = config.socket_path
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    # No TCP listener of ours: the only address is the socket path.
    assert runner.addresses == [str(path)]
    status, body = await unix_get(path, "/heartbeat")
    assert status == 200
    assert body["status"] == "ok"
    await transport.supervisor.wait_until(
        lambda: transport.supervisor.tunnel.state == CONNECTED, 10
    )
    # frpc was started only once the socket listened, pointed at the socket actually bound.
    start = events(record, "start")[0]
    assert start["socket_listening"] is True
    assert start["config"]["proxies"][0]["plugin"]["unixPath"] == str(path)
    assert start["config_mode"] == "0o600"
    assert transport.status()["mode"] == "harp"
    assert transport.status()["socket"] == str(path)
    # The socket's accept queue is the configured one, not aiohttp's 128.
    expected = min(config.listen_backlog, somaxconn())
    assert expected > 128
    assert kernel_unix_backlog(path) == expected
    assert transport.status()["backlog"] == expected
    await transport.stop()
    # frpc got TERM while the socket still accepted connections; then the file went.
    term = events(record, "term")
    assert [t["socket_listening"] for t in term] == [True]
    assert not path.exists()
    assert transport.status()["last_exit_code"] == -15


def stale_socket(path: Path) -> int:
    """A socket file left by a crashed process: bound, then closed without unlink."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    return os.lstat(path).st_ino


async def test_stale_socket_is_replaced(
    make_harp_config: Callable[..., Config],
    runner_for: Callable[[Config], web.AppRunner],
    frps: FakeFrps,
) -> None:
    config = make_harp_config()
    stale_socket(config.socket_path)
    config.socket_path.chmod(0o777)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):
        probe.connect(str(config.socket_path))
    probe.close()
    runner = runner_for(config)
    await runner.setup()
    transport = harp(config)
    await transport.start(runner)
    try:
        assert stat.S_IMODE(os.lstat(config.socket_path).st_mode) == 0o600
        assert (await unix_get(config.socket_path, "/heartbeat"))[0] == 200
    finally:
        await transport.stop()
    assert not config.socket_path.exists()


async def test_regular_file_at_socket_path_is_refused_and_kept(
    make_harp_config: Callable[..., Config],
    runner_for: Callable[[Config], web.AppRunner],
) -> None:
    config = make_harp_config()
    config.socket_path.write_text("not a socket")
    runner = runner_for(config)
    await runner.setup()
    with pytest.raises(TransportError, match="is not a socket"):
        await harp(config).start(runner)
    assert config.socket_path.read_text() == "not a socket"


async def test_live_socket_is_refused(
    make_harp_config: Callable[..., Config],
    runner_for: Callable[[Config], web.AppRunner],
) -> None:
    config = make_harp_config()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(config.socket_path))
        other.listen()
        runner = runner_for(config)
        await runner.setup()
        with pytest.raises(TransportError, match="already listening"):
            await harp(config).start(runner)
        assert config.socket_path.exists()


def test_mode_is_0600_before_listening(sockdir: Path) -> None:
    """Between bind and listen nobody can connect, and the mode is already 0600."""
    old = os.umask(0)
    try:
        sock = bind_unix(sockdir / "m.sock")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.lstat(sockdir / "m.sock").st_mode) == 0o600
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with pytest.raises(ConnectionRefusedError):
            probe.connect(str(sockdir / "m.sock"))
        probe.close()
    finally:
        sock.close()


async def test_missing_frpc_fails_before_binding(
    make_harp_config: Callable[..., Config],
    runner_for: Callable[[Config], web.AppRunner],
    sockdir: Path,
) -> None:
    config = make_harp_config(BEEFLOW_FRPC_BIN=str(sockdir / "absent"))
    runner = runner_for(config)
    await runner.setup()
    transport = harp(config)
    with pytest.raises(FrpcError, match="not found"):
        await transport.start(runner)
    assert not config.socket_path.exists()
    await transport.stop()


async def test_successor_socket_is_not_removed(
    make_harp_config: Callable[..., Config],
    runner_for: Callable[[Config], web.AppRunner],
    frps: FakeFrps,
) -> None:
    """Stop removes the socket only if it is still ours (inode check)."""
    config = make_harp_config()
    runner = runner_for(config)
    await runner.setup()
    transport = harp(config)
    await transport.start(runner)
    config.socket_path.unlink()
    successor = stale_socket(config.socket_path)
    await transport.stop()
    assert os.lstat(config.socket_path).st_ino == successor


async def test_abort_leaves_nothing_behind(
    make_harp_config: Callable[..., Config],
    runner_for: Callable[[Config], web.AppRunner],
    frps: FakeFrps,
) -> None:
    config = make_harp_config()
    runner = runner_for(config)
    await runner.setup()
    transport = harp(config)
    await transport.start(runner)
    sup = transport.supervisor
    await sup.wait_until(lambda: sup.tunnel.state == CONNECTED, 10)
    transport.abort()
    assert not config.socket_path.exists()
    assert await sup.wait_until(lambda: not sup.running, 5)
    assert sup.last_exit_code == -9
    await transport.stop()


async def test_both_transports_put_their_listener_behind_the_connection_guard(
    make_harp_config: Callable[..., Config],
    runner_for: Callable[[Config], web.AppRunner],
    storage: Path,
    frps: FakeFrps,
) -> None:
    """One connection more than BEEFLOW_MAX_CONNECTIONS gets 503 too_many_connections on the
    HaRP socket and on the TCP port alike, and the status shows the guard's counters."""
    config = make_harp_config(BEEFLOW_MAX_CONNECTIONS="1")
    runner = runner_for(config)
    await runner.setup()
    transport = harp(config)
    await transport.start(runner)
    _, writer = await asyncio.open_unix_connection(str(config.socket_path))
    status, body = await unix_get(config.socket_path, "/heartbeat")
    assert (status, body["code"]) == (503, "too_many_connections")
    assert transport.status()["connections"] == {
        "open": 1,
        "limit": 1,
        "refused": 1,
        "headsRefused": 0,
    }
    writer.close()
    await transport.stop()

    port = free_port()
    tcp_config = Config.from_env(
        base_env(UNREACHABLE_NC, storage, APP_PORT=str(port), BEEFLOW_MAX_CONNECTIONS="1")
    )
    tcp_runner = runner_for(tcp_config)
    await tcp_runner.setup()
    tcp = TcpTransport(tcp_config)
    await tcp.start(tcp_runner)
    _, held = await asyncio.open_connection("127.0.0.1", port)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/heartbeat") as resp,
    ):
        assert resp.status == 503
        assert (await resp.json())["code"] == "too_many_connections"
    assert tcp.status()["connections"]["refused"] == 1
    held.close()
    await tcp.stop()
