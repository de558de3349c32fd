"""Test helpers around the stand-in frpc: its launcher, a fake frps to log in to, its record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shlex
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import attrs

FAKE_FRPC = Path(__file__).with_name("fake_frpc.py")
# HaRP's frps.toml: `allowPorts` 23000-23999 (ExApps) and 24000-24099 (Docker engines).
HARP_ALLOW_PORTS: tuple[tuple[int, int], ...] = ((23000, 23999), (24000, 24099))
EXAPP_PORTS = HARP_ALLOW_PORTS[0]


def make_frpc(directory: Path, name: str = "frpc") -> Path:
    """An executable named `frpc` in `directory` that runs the stand-in with this Python."""
    path = directory / name
    path.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE_FRPC))} "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exapp_port() -> int:
    """A free loopback port in the ExApp range HaRP's frps allows (AppAPI picks APP_PORT there);
    random, so parallel runs rarely meet."""
    low, high = EXAPP_PORTS
    for port in random.sample(range(low, high + 1), 64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def make_certs(directory: Path) -> Path:
    """What AppAPI copies into /certs/frp at install (contract 5.3): ca.crt, client.crt,
    client.key. PEM-shaped placeholders: the stand-ins check presence, not cryptography."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("ca.crt", "client.crt", "client.key"):
        label = "PRIVATE KEY" if name.endswith(".key") else "CERTIFICATE"
        (directory / name).write_text(f"-----BEGIN {label}-----\nMIIB\n-----END {label}-----\n")
    return directory


def read_record(path: Path) -> list[dict[str, Any]]:
    """The stand-in's JSON-lines record (start, login, proxy, relay, term, exit events)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def events(path: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in read_record(path) if e["event"] == name]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): look at its state.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


async def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait for a process that is not our child to terminate (pidfd: an event, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(fd, gone.set)
    try:
        await asyncio.wait_for(gone.wait(), timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return True


@attrs.define
class FakeFrps:
    """A stand-in for HaRP's frps + login plugin, with HaRP's frps.toml rules: a client that
    does not speak TLS is disconnected before any answer (`transport.tls.force = true`; frpc
    logs `connect to server error: EOF`), the token is checked byte for byte, and a proxy
    outside `allowPorts` is refused after the login (frpc logs `[<name>] start error: port not
    allowed`), and so is a proxy name another session holds (`proxy [<name>] already exists`)
    until that session ends. `tls_required=False` is HaRP with HP_FRP_DISABLE_TLS=true;
    `allow_ports=None` allows any port. The session is held until dropped."""

    token: str | None = None
    tls_required: bool = True
    allow_ports: tuple[tuple[int, int], ...] | None = HARP_ALLOW_PORTS
    logins: list[dict[str, Any]] = attrs.field(factory=list)
    # Connections closed before the login plugin saw them (a plain client while TLS is forced).
    refused: list[dict[str, Any]] = attrs.field(factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _sessions: set[asyncio.StreamWriter] = attrs.field(factory=set)
    # Proxy names registered, and by which session (frps refuses a second one of a name).
    proxies: dict[str, asyncio.StreamWriter] = attrs.field(factory=dict)
    _login: asyncio.Condition = attrs.field(factory=asyncio.Condition)

    async def start(self, port: int = 0) -> FakeFrps:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def port_allowed(self, port: object) -> bool:
        if self.allow_ports is None:
            return True
        return isinstance(port, int) and any(lo <= port <= hi for lo, hi in self.allow_ports)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = json.loads(await reader.readline())
        except ValueError:
            writer.close()
            return
        if self.tls_required and not hello.get("tls"):
            # tls.force: frps closes a plain connection without a word; frpc reads EOF.
            writer.close()
            async with self._login:
                self.refused.append(hello)
                self._login.notify_all()
            return
        ok = self.token is None or hello.get("token") == self.token
        answer: dict[str, Any] = {"ok": ok} if ok else {"ok": False, "error": "invalid token"}
        name = str(hello.get("proxy"))
        if ok and (error := self._proxy_error(name, hello.get("remotePort"), writer)):
            answer["proxy_error"] = error
        writer.write(json.dumps(answer).encode() + b"\n")
        async with self._login:
            self.logins.append(hello)
            self._login.notify_all()
        if not ok:
            writer.close()
            return
        self._sessions.add(writer)
        try:
            # The only thing frpc sends later: asking again for a refused proxy (every 30 s).
            while await reader.readline():
                error = self._proxy_error(name, hello.get("remotePort"), writer)
                writer.write(json.dumps({"proxy_error": error}).encode() + b"\n")
        except OSError:
            pass
        finally:
            self._sessions.discard(writer)
            if self.proxies.get(name) is writer:
                del self.proxies[name]
            writer.close()

    def _proxy_error(self, name: str, port: object, session: asyncio.StreamWriter) -> str:
        """Why frps refuses the proxy (its allowPorts, a name another client holds), or ""
        after registering it for `session`."""
        if not self.port_allowed(port):
            return "port not allowed"
        if name in self.proxies:
            return f"proxy [{name}] already exists"
        self.proxies[name] = session
        return ""

    async def wait_refused(self, count: int, timeout: float = 10.0) -> None:
        async with self._login:
            await asyncio.wait_for(
                self._login.wait_for(lambda: len(self.refused) >= count), timeout
            )

    async def wait_logins(self, count: int, timeout: float = 10.0) -> None:
        async with self._login:
            await asyncio.wait_for(self._login.wait_for(lambda: len(self.logins) >= count), timeout)

    def drop_sessions(self) -> None:
        """Like an frps restart: every frpc session ends (frpc logs "session shutdown")."""
        for writer in list(self._sessions):
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.drop_sessions()
            await self._server.wait_closed()
            self._server = None
