"""The busy-ports helpers the suite relies on: a held port answers like a foreign connector, a
refused port refuses, and the environment variable's forms."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from tests.ports import COMMON_PORTS, BusyPorts, busy_ports, held, refused_port, refused_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_held_port_answers_like_a_connector_heartbeat() -> None:
    port = free_port()
    with held((port,)) as busy:
        assert busy.held == [port]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/heartbeat") as resp,
        ):
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no listener
        sock.bind(("127.0.0.1", port))
        sock.listen()  # released again


def test_a_port_taken_already_is_left_alone() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        busy = BusyPorts((port,))
        busy.start()
        busy.stop()
        assert busy.held == []


async def test_the_refused_port_refuses_and_stays_the_same() -> None:
    assert refused_port() == refused_port()
    assert refused_url() == f"http://127.0.0.1:{refused_port()}"
    with pytest.raises(aiohttp.ClientConnectorError):
        async with aiohttp.ClientSession() as session, session.get(refused_url()):
            pass
    with socket.socket() as sock, pytest.raises(OSError, match="in use"):
        sock.bind(("127.0.0.1", refused_port()))


@pytest.mark.parametrize(
    ("spec", "ports"),
    [("1", COMMON_PORTS), ("common", COMMON_PORTS), ("8080, 23000", (8080, 23000))],
)
def test_the_variable_names_the_ports(spec: str, ports: tuple[int, ...]) -> None:
    assert busy_ports(spec) == ports
    assert 23000 in COMMON_PORTS  # the manual-install guide's connector
