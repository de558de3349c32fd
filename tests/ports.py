"""Ports the suite must not depend on. With BEEFLOW_TEST_BUSY_PORTS set, a pytest plugin holds
the ports a developer's machine commonly has in use (the connector's documented ports, the
defaults of the peers, the classic "nothing listens here" ports) for the whole session, each with
a listener that answers every request like a foreign connector's heartbeat would. A test that
assumed one of them free, or assumed nobody answers there, fails in that run.

`refused_port()` is the way to get a port where a connection is refused for sure: a socket bound
but never listening holds it for the session, so nothing else can take it."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import Final

import pytest

ENV: Final = "BEEFLOW_TEST_BUSY_PORTS"
# The ports named in the docs and defaults: AppAPI's legacy default (8080), HaRP's (8780, 8782),
# the manual-install guide's connector (23000) and the ends of HaRP's ExApp range, the Docker
# socket proxy (2375), a local Bee Flow service and UI (3001, 5173), plain web ports, and the
# ports tests once used as "unreachable" (1, 9).
COMMON_PORTS: Final = (1, 9, 80, 443, 2375, 3001, 5173, 8000, 8080, 8780, 8782, 23000, 23999)
_ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n"
    b"Connection: close\r\n\r\n"
    b'{"status": "ok"}'
)


class _Foreign(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.settimeout(2.0)
        with contextlib.suppress(OSError):
            sock.recv(65536)
            sock.sendall(_ANSWER)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def busy_ports(spec: str) -> tuple[int, ...]:
    """`1` or `common`: COMMON_PORTS; otherwise a comma-separated list of ports."""
    if spec.strip().lower() in ("1", "common", "yes", "true"):
        return COMMON_PORTS
    return tuple(int(part) for part in spec.split(",") if part.strip())


class BusyPorts:
    """Listeners on `ports` (each one this process could bind; the others are busy already)."""

    def __init__(self, ports: tuple[int, ...]) -> None:
        self.ports = ports
        self.held: list[int] = []
        self._servers: list[_Server] = []

    def start(self) -> None:
        for port in self.ports:
            try:
                server = _Server(("127.0.0.1", port), _Foreign)
            except OSError:
                continue  # taken already (by someone else): busy, as wanted
            self._servers.append(server)
            self.held.append(port)
            threading.Thread(
                target=server.serve_forever, name=f"busy-port-{port}", daemon=True
            ).start()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()


@contextlib.contextmanager
def held(ports: tuple[int, ...] = COMMON_PORTS) -> Iterator[BusyPorts]:
    """`ports` busy (held by foreign listeners, or by someone else already) inside the block."""
    busy = BusyPorts(ports)
    busy.start()
    try:
        yield busy
    finally:
        busy.stop()


_refused: list[socket.socket] = []


@functools.cache
def refused_port() -> int:
    """A loopback port where a connection is refused, held (bound, not listening) until the
    process exits, so no other listener can appear on it. One per process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _refused.append(sock)
    return int(sock.getsockname()[1])


def refused_url() -> str:
    """`http://127.0.0.1:<refused_port()>`: a base URL nothing answers on."""
    return f"http://127.0.0.1:{refused_port()}"


_busy: BusyPorts | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _busy
    spec = os.environ.get(ENV, "")
    if spec and _busy is None:
        _busy = BusyPorts(busy_ports(spec))
        _busy.start()


def pytest_report_header(config: pytest.Config) -> str | None:
    if _busy is None:
        return None
    return f"busy ports ({ENV}): held {_busy.held or 'none'} of {list(_busy.ports)}"


def pytest_unconfigure(config: pytest.Config) -> None:
    global _busy
    if _busy is not None:
        _busy.stop()
        _busy = None
