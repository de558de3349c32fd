"""HaRP shutdown, step 3 (docs/transports.md): the bytes of a response whose handler has already
returned must leave our write buffers, and frpc must relay them, before frpc gets TERM.

aiohttp writes a `web.Response` body after the handler returned, so the drain (which counts
handlers) is over while the body can still sit in the transport's write buffer; frpc 0.61.x
(and the stand-in) dies on TERM without draining. A slow reader makes that window as wide as
we like: the client reads the response head, then stops reading; the body is larger than every
buffer between us and the client together, so its end waits in our write buffer; SIGTERM
comes now. A reader that resumes once `serve` reported the drain over gets every byte; a reader
that never resumes holds frpc for the flush budget, no longer. Both on the two event loops
`serve` runs on (BEEFLOW_EVENT_LOOP; the image takes uvloop)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from beeflow.transports import harp
from tests.fakes.frp import FakeFrps, events, pid_alive
from tests.helpers import appapi_headers
from tests.procs import Launcher, ServeProcess
from tests.transports.conftest import harp_env

# Larger than all the buffers between our socket and the client put together: the Unix
# socket's (~200 KiB), the stand-in's (~2 x 64 KiB), its TCP send buffer (autotuned, at most
# net.ipv4.tcp_wmem's 4 MiB by default) and the client's (pinned to 64 KiB below, plus its
# StreamReader's 128 KiB). What does not fit stays in the connector's write buffer.
BODY_BYTES = 8 * 1024 * 1024
CLIENT_RCVBUF = 64 * 1024
READ_TIMEOUT = 15.0


LOOPS = ["asyncio", "uvloop"]


def big_shell(directory: Path) -> bytes:
    """A SPA directory whose index.html (served whole by the proxy's shell response while the
    connector has no tenant key) is BODY_BYTES of incompressible bytes."""
    directory.mkdir()
    body = os.urandom(BODY_BYTES)
    (directory / "index.html").write_bytes(body)
    return body


def exists(path: str) -> bool:
    return os.path.exists(path)


async def open_slow_reader(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP client with a small pinned receive buffer (the kernel does not autotune it), so
    that while it does not read, hardly anything of the body can wait on its side."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=CLIENT_RCVBUF)


def request_head(path: str) -> bytes:
    headers = {
        "Host": "localhost",
        # A user's document navigation, as Nextcloud's ExApp proxy forwards it.
        **appapi_headers("alice"),
        "Sec-Fetch-Mode": "navigate",
        "Accept": "text/html",
        "Connection": "close",
    }
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while chunk := await reader.read(1024 * 1024):
        chunks.append(chunk)
    return b"".join(chunks)


class Stuck(NamedTuple):
    proc: ServeProcess
    env: dict[str, str]
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def stuck_response(
    launcher: Launcher,
    sockdir: Path,
    frpc_bin: Path,
    frps: FakeFrps,
    storage: Path,
    record: Path,
    loop: str,
) -> Stuck:
    """`serve` in HaRP mode, and a client through the tunnel that has read the head of the big
    response and nothing more. The head is written after the handler returned, so the drain
    will find nothing running, while the body (bigger than every buffer on the way) waits."""
    body = big_shell(sockdir / "spa")
    env = harp_env(
        sockdir,
        frpc_bin,
        frps.port,
        storage,
        FAKE_FRPC_RECORD=str(record),
        BEEFLOW_SPA_DIR=str(sockdir / "spa"),
        BEEFLOW_EVENT_LOOP=loop,
    )
    env.pop("BEEFLOW_TENANT_KEY")  # `auto`, nothing cached: the proxy answers with the shell
    proc = await launcher.start(env)
    await proc.wait_line(f"(event loop: {loop})")
    await proc.wait_line("start proxy success")
    reader, writer = await open_slow_reader(int(env["APP_PORT"]))
    writer.write(request_head("/api/shell"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 200 "), head
    length = next(
        int(line.split(":", 1)[1])
        for line in header_lines
        if line.lower().startswith("content-length:")
    )
    assert length == len(body)
    return Stuck(proc, env, body, reader, writer)


async def check_clean_exit(stuck: Stuck, record: Path) -> dict[str, object]:
    assert await stuck.proc.wait_exit() == 0
    term = events(record, "term")
    assert len(term) == 1
    assert term[0]["socket_listening"] is True  # frpc went first, the socket after
    assert not pid_alive(term[0]["pid"])
    assert not exists(stuck.env["HP_EXAPP_SOCK"])
    assert "Traceback" not in stuck.proc.text
    return term[0]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_the_end_of_a_response_still_in_our_write_buffer_reaches_a_slow_reader(
    launcher: Launcher,
    sockdir: Path,
    frpc_bin: Path,
    frps: FakeFrps,
    storage: Path,
    record: Path,
    loop: str,
) -> None:
    stuck = await stuck_response(launcher, sockdir, frpc_bin, frps, storage, record, loop)
    try:
        stuck.proc.send(signal.SIGTERM)
        await stuck.proc.wait_line("draining 0 in-flight request(s)")
        # The reader wakes up now: frpc must still be there to relay the rest.
        received = await asyncio.wait_for(read_to_eof(stuck.reader), READ_TIMEOUT)
    finally:
        stuck.writer.close()
    assert len(received) == len(stuck.body), f"got {len(received)} of {len(stuck.body)} bytes"
    assert hashlib.sha256(received).digest() == hashlib.sha256(stuck.body).digest()
    await check_clean_exit(stuck, record)


@pytest.mark.parametrize("loop", LOOPS)
async def test_frpc_waits_for_our_write_buffer_up_to_the_flush_budget(
    launcher: Launcher,
    sockdir: Path,
    frpc_bin: Path,
    frps: FakeFrps,
    storage: Path,
    record: Path,
    loop: str,
) -> None:
    """A reader that never resumes: the bytes stay in our write buffer, so frpc is stopped only
    when the flush gives up (FLUSH_TIMEOUT_SECONDS), plus the relay pause; the exit stays
    bounded. A load only makes the wait longer: the lower bound cannot flake."""
    stuck = await stuck_response(launcher, sockdir, frpc_bin, frps, storage, record, loop)
    try:
        sent_at = time.time()
        stuck.proc.send(signal.SIGTERM)
        term = await check_clean_exit(stuck, record)
    finally:
        stuck.writer.close()
    waited = float(str(term["t"])) - sent_at
    least = harp.FLUSH_TIMEOUT_SECONDS + harp.RELAY_SETTLE_SECONDS
    assert waited >= least, f"frpc stopped {waited:.2f} s after SIGTERM, before {least} s"
    assert waited < least + 5.0, f"frpc stopped only {waited:.2f} s after SIGTERM"
