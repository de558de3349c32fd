"""Resource-holding attacks on a real `python -m beeflow serve` process, and what they cost it.

Used by tests/reliability/test_resource_attacks.py (scaled down, with bounds) and runnable to
measure one connector build against another (the numbers in docs/security.md):

    python -m tests.reliability.attacks [--pythonpath DIR] [--scale 1.0]

`--pythonpath` runs the connector from another checkout (the tests, fakes and this harness stay
the ones of this checkout). Every attack runs against a fresh process in legacy TCP mode, in
front of the in-process fake Nextcloud and fake service; the process's resident memory, open
descriptors, sockets and spooled bytes are read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs

from tests.fakes.frp import free_port
from tests.helpers import appapi_headers
from tests.procs import ServeProcess
from tests.reliability.world import World, world

MIB: Final = 1024 * 1024
GIB: Final = 1024 * MIB
FORGED_SIG_HEX: Final = "ab" * 32
UPLOAD_TARGET: Final = "/nc/remote.php/dav/files/alice/attack.bin"


@attrs.frozen
class Usage:
    """One look at the connector process."""

    rss: int
    peak_rss: int
    fds: int
    sockets: int
    spooled: int  # bytes held in (unlinked) spool files

    def row(self) -> str:
        return (
            f"RSS {self.rss / MIB:7.1f} MiB (peak {self.peak_rss / MIB:7.1f})  "
            f"fds {self.fds:5d}  sockets {self.sockets:5d}  spooled {self.spooled / MIB:7.1f} MiB"
        )


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def usage(pid: int) -> Usage:
    fds = sockets = spooled = 0
    for entry in os.scandir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue
        fds += 1
        if target.startswith("socket:"):
            sockets += 1
        elif "body-" in target or "(deleted)" in target:
            with contextlib.suppress(OSError):
                spooled += os.stat(entry.path).st_size
    return Usage(
        rss=_status_kib(pid, "VmRSS") * 1024,
        peak_rss=_status_kib(pid, "VmHWM") * 1024,
        fds=fds,
        sockets=sockets,
        spooled=spooled,
    )


def reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


# ------------------------------------------------------------------ attack connections


@attrs.define
class Held:
    """The attacker's connections: open, and whether the server has closed each one."""

    writers: list[asyncio.StreamWriter] = attrs.field(factory=list)
    readers: list[asyncio.StreamReader] = attrs.field(factory=list)
    answers: list[bytes] = attrs.field(factory=list)

    def add(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.readers.append(reader)
        self.writers.append(writer)

    async def closed_by_server(self, within: float) -> int:
        """How many connections the server has answered or closed (each waited `within` s)."""

        async def one(reader: asyncio.StreamReader) -> bytes | None:
            try:
                async with asyncio.timeout(within):
                    data = await reader.read(65536)
                    rest = data
                    while data:
                        data = await reader.read(65536)
                        rest += data
                    return rest
            except TimeoutError:
                return None
            except OSError:
                return b""

        got = await asyncio.gather(*(one(r) for r in self.readers))
        self.answers = [g for g in got if g is not None]
        return len(self.answers)

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for answer in self.answers:
            line = answer.split(b"\r\n", 1)[0].decode("latin-1") if answer else "closed"
            key = " ".join(line.split(" ")[1:2]) or "closed"
            out[key] = out.get(key, 0) + 1
        return out

    def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _send(writer: asyncio.StreamWriter, data: bytes) -> bool:
    """Write and drain; False once the server has closed the connection."""
    try:
        writer.write(data)
        await writer.drain()
    except OSError:
        return False
    return True


def forged_put_head(length: int, *, target: str = UPLOAD_TARGET) -> bytes:
    """A /nc upload with a well-formed, current, forged signature (any hex will do)."""
    return (
        f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-Beeflow-Sig: {int(time.time())}.{FORGED_SIG_HEX}\r\nX-Beeflow-NC-Uid: alice\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def stalled_uploads(port: int, count: int, *, announce: int, send: int) -> Held:
    """`count` forged uploads announcing `announce` bytes that send `send` bytes and stop."""
    held = Held()
    piece = b"\0" * min(send, 64 * 1024)

    async def one() -> None:
        reader, writer = await _connect(port)
        held.add(reader, writer)
        if not await _send(writer, forged_put_head(announce)):
            return
        left = send
        while left > 0:
            if not await _send(writer, piece[:left]):
                return
            left -= min(left, len(piece))

    await asyncio.gather(*(one() for _ in range(count)))
    return held


async def endless_heads(port: int, count: int, *, head_bytes: int, line: int = 16000) -> Held:
    """`count` connections that each send `head_bytes` of header lines and never the blank
    line that ends the head."""
    held = Held()
    start = b"GET /heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n"

    async def one() -> None:
        reader, writer = await _connect(port)
        held.add(reader, writer)
        if not await _send(writer, start):
            return
        sent = 0
        n = 0
        while sent < head_bytes:
            data = b"X-Pad-%d: " % n + b"a" * line + b"\r\n"
            if not await _send(writer, data):
                return
            sent += len(data)
            n += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return held


def chunked_json_head(uid: str = "alice", target: str = "/api/echo") -> bytes:
    """A user's JSON POST through AppAPI (valid AppAPI headers), its body chunked: the service
    proxy reads such a body whole before forwarding it."""
    lines = [f"POST {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in appapi_headers(uid).items()]
    lines += ["Content-Type: application/json", "Transfer-Encoding: chunked"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def buffered_json(port: int, count: int, *, size: int, uid: str = "alice") -> Held:
    """`count` chunked JSON bodies of `size` bytes sent at once by one user, never ended (no
    last chunk): what the proxy buffers of them stays buffered."""
    held = Held()
    piece = b"[" + b" " * (MIB - 2) + b"]"
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"

    async def one() -> None:
        reader, writer = await _connect(port)
        held.add(reader, writer)
        if not await _send(writer, chunked_json_head(uid)):
            return
        for _ in range(size // len(piece)):
            if not await _send(writer, chunk):
                return

    await asyncio.gather(*(one() for _ in range(count)))
    return held


async def idle_connections(port: int, count: int) -> Held:
    """`count` connections that send nothing."""
    held = Held()
    for _ in range(count):
        reader, writer = await _connect(port)
        held.add(reader, writer)
    return held


# ------------------------------------------------------------------ a process to attack


def attack_env(w: World, **overrides: str) -> dict[str, str]:
    """Legacy TCP mode, the connector's default limits (no test shortcuts), INFO logs."""
    env = w.env(harp=False, BEEFLOW_LOG_LEVEL="info")
    for name in ("BEEFLOW_SPOOL_MEMORY_BYTES", "BEEFLOW_SHUTDOWN_GRACE_SECONDS"):
        env.pop(name, None)
    env["APP_PORT"] = str(free_port())
    env.update(overrides)
    return env


@asynccontextmanager
async def target(
    w: World, env: Mapping[str, str], *, pythonpath: str | None = None
) -> AsyncIterator[ServeProcess]:
    child = dict(env)
    script = None
    if pythonpath is not None:
        # `python -m` would put the working directory (this checkout) first on sys.path: run
        # the other checkout's __main__.py as a script instead, with only it on PYTHONPATH.
        child["PYTHONPATH"] = pythonpath
        script = Path(pythonpath) / "beeflow" / "__main__.py"
    proc = await w.start(child, script=script)
    await proc.wait_line("ready in")
    try:
        yield proc
    finally:
        await proc.close()


# ------------------------------------------------------------------ the measuring run

Attack = Callable[[int], Awaitable[Held]]


async def measure(
    name: str,
    attack: Attack,
    *,
    pythonpath: str | None,
    settle: float,
    later: float,
    env: Mapping[str, str] | None = None,
) -> None:
    async with world() as w:
        run_env = attack_env(w, **(env or {}))
        async with target(w, run_env, pythonpath=pythonpath) as proc:
            pid = proc.proc.pid
            port = int(run_env["APP_PORT"])
            await asyncio.sleep(0.5)
            before = usage(pid)
            reset_peak(pid)
            began = time.monotonic()
            held = await attack(port)
            sent = time.monotonic() - began
            await asyncio.sleep(settle)
            during = usage(pid)
            closed = await held.closed_by_server(later)
            after = usage(pid)
            held.close()
            out(f"{name}")
            out(f"  idle            {before.row()}")
            out(f"  after {settle:4.1f} s     {during.row()}   (sent in {sent:.1f} s)")
            out(f"  after {settle + later:4.1f} s     {after.row()}")
            out(f"  server answered/closed {closed} of {len(held.writers)}: {held.statuses()}")


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--pythonpath", help="run the connector from this checkout")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply connection counts")
    parser.add_argument("--only", help="run only the attacks whose name contains this")
    args = parser.parse_args(argv)
    n = args.scale

    def stalled(port: int) -> Awaitable[Held]:
        return stalled_uploads(port, int(60 * n), announce=4 * GIB, send=5 * MIB)

    def trickle(port: int) -> Awaitable[Held]:
        return stalled_uploads(port, int(100 * n), announce=1000, send=10)

    def heads(port: int) -> Awaitable[Held]:
        return endless_heads(port, int(100 * n), head_bytes=2 * 1000 * 1000)

    def idle(port: int) -> Awaitable[Held]:
        return idle_connections(port, int(3000 * n))

    def json_bodies(port: int) -> Awaitable[Held]:
        return buffered_json(port, 6, size=40 * MIB)

    runs: list[tuple[str, Attack, float, float]] = [
        ("60 forged PUTs announcing 4 GiB, 5 MiB sent, then stalled", stalled, 3.0, 40.0),
        ("100 forged PUTs stalled after 10 bytes", trickle, 3.0, 40.0),
        ("100 connections sending 2 MB of header lines, no blank line", heads, 3.0, 20.0),
        ("3000 idle connections", idle, 3.0, 20.0),
        ("one user's 6 chunked JSON bodies of 40 MiB at once, never ended", json_bodies, 3.0, 5.0),
    ]
    for name, attack, settle, later in runs:
        if args.only and args.only not in name:
            continue
        await measure(name, attack, pythonpath=args.pythonpath, settle=settle, later=later)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
