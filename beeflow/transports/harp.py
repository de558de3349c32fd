"""HaRP transport: a hardened Unix socket (no TCP listener) reached through a supervised frpc."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from beeflow.config import Config
from beeflow.transports.base import Transport, TransportError
from beeflow.transports.frpc import supervisor as frpc
from beeflow.transports.frpc.supervisor import FrpcSupervisor
from beeflow.transports.guard import GuardedSite

SOCKET_MODE = 0o600
FLUSH_TIMEOUT_SECONDS = 1.0
FLUSH_POLL_SECONDS = 0.01
RELAY_SETTLE_SECONDS = 0.1
# `serve` closes the runner with shutdown_timeout = min(1 s, grace): connections still open
# after the drain get at most this long (beeflow/cli.py).
RUNNER_CLOSE_SECONDS = 1.0


def stop_budget(config: Config) -> float:
    """The longest HaRP shutdown takes AFTER the drain: flush our buffers and let frpc relay
    them, stop frpc (TERM, grace, KILL, output), close the runner."""
    return (
        FLUSH_TIMEOUT_SECONDS
        + RELAY_SETTLE_SECONDS
        + frpc.stop_budget(config)
        + RUNNER_CLOSE_SECONDS
    )


def shutdown_budget(config: Config) -> float:
    """SIGTERM to exit, at most: the pre-stop delay (BEEFLOW_PRESTOP_SECONDS, 0 by default), the
    drain (BEEFLOW_SHUTDOWN_GRACE_SECONDS, streams ended at its deadline included) plus
    stop_budget(). The image keeps it under `docker stop`'s 10 s with a margin
    (tests/ops/test_image.py)."""
    return config.prestop_seconds + config.shutdown_grace_seconds + stop_budget(config)


def _unflushed(conn: RequestHandler) -> bool:
    # Not isinstance(transport, asyncio.WriteTransport): uvloop's transports are not, and the
    # flush would never wait under uvloop (tests/transports/test_flush.py, both loops).
    transport = conn.transport
    return (
        transport is not None
        and not transport.is_closing()
        and transport.get_write_buffer_size() > 0
    )


def bind_unix(path: Path) -> socket.socket:
    """Bind (not yet listen) a Unix stream socket at `path`: a stale socket file is removed
    first, and the mode is set to 0600 before listen(), so no connection ever sees looser
    permissions. A live socket or a non-socket file at the path is an error, not removed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise TransportError(f"{path} exists and is not a socket; refusing to replace it")
        if _accepts(path):
            raise TransportError(f"another process is already listening on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot bind {path}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _accepts(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError as exc:
        # ECONNREFUSED: stale file. Anything else (e.g. EAGAIN, a full backlog) is alive.
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return True


class HarpTransport(Transport):
    name = "harp"

    def __init__(self, config: Config, *, supervisor: FrpcSupervisor | None = None) -> None:
        super().__init__(config)
        self.socket_path = config.socket_path
        self.supervisor = supervisor or FrpcSupervisor(config, self.socket_path)
        self._site: GuardedSite | None = None
        self._inode: int | None = None

    def describe(self) -> str:
        return f"unix:{self.socket_path}"

    async def _start(self, runner: web.AppRunner) -> None:
        # A missing frpc fails here, before anything is bound.
        await self.supervisor.preflight()
        sock = bind_unix(self.socket_path)
        self._inode = os.stat(self.socket_path).st_ino
        self._site = GuardedSite(runner, self.guard, sock=sock)
        await self._site.start()

    async def _started(self) -> None:
        # frpc only once the socket listens: with frp 0.61.x a request dialled to a socket that
        # is not listening hangs its caller until the caller's own timeout (docs/transports.md,
        # "What frpc 0.61.1 does").
        await self.supervisor.start()

    async def before_close(self) -> None:
        # In-flight requests have drained; frpc goes now, while the socket still listens.
        await self._flush()
        await self.supervisor.stop()

    async def _flush(self) -> None:
        """aiohttp writes a response after its handler returned (and left the drain count):
        wait until our write buffers are empty, then give frpc a moment to relay the last
        bytes, because frpc dies on TERM without draining (docs/transports.md, "What frpc
        0.61.1 does")."""
        server = self._runner.server if self._runner is not None else None
        if server is None:
            return
        await asyncio.sleep(0)  # let handlers that just returned write their responses
        # No event tells when a transport's buffer empties: poll it, bounded.
        for _ in range(int(FLUSH_TIMEOUT_SECONDS / FLUSH_POLL_SECONDS)):
            if not any(_unflushed(conn) for conn in server.connections):
                break
            await asyncio.sleep(FLUSH_POLL_SECONDS)
        await asyncio.sleep(RELAY_SETTLE_SECONDS)

    async def _stop(self) -> None:
        self._remove_socket()

    def abort(self) -> None:
        self.supervisor.kill_now()
        self._remove_socket()

    def _remove_socket(self) -> None:
        """Remove the socket file if it is still ours (not a successor's)."""
        if self._inode is None:
            return
        with contextlib.suppress(OSError):
            if os.lstat(self.socket_path).st_ino == self._inode:
                self.socket_path.unlink()
        self._inode = None

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.name,
            "socket": str(self.socket_path),
            "connections": self.guard.status(),
            **self.supervisor.status(),
        }
