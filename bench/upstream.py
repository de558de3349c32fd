"""A fast loopback upstream for the benchmarks, run as its own process.

It plays both the Bee Flow service (`/api/...`) and Nextcloud (`/ocs/...` user lookup, WebDAV
under `/remote.php/dav/...`), so one upstream serves the /api and the /nc proxies and the
direct baseline alike. It is a bare asyncio protocol, not aiohttp, so the direct baseline is as
fast as Python gets and the ratios show what the connector costs. Routes, by path suffix:

    .../small                 GET: a ~90-byte JSON body (Content-Length)
    /ocs/v2.php/cloud/users/U GET: the OCS user record of U (401 without AppAPI headers)
    .../bulk?bytes=N          GET: N bytes (Content-Length), written under flow control
    .../upload                PUT/POST: the body is consumed and counted; {"received": N}
    .../echo                  POST: the (small) body back
    .../sse?n=N&ms=M&wait=W   GET: chunked text/event-stream, N events M ms apart after W ms
                              and a random phase, each `id: i` + `data: <time.monotonic_ns()
                              at send>`
    .../sse?idle=1            GET: one event, then silence until the client leaves

`python -m bench.upstream --unix PATH` prints `READY <tcp port>` once both listeners accept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, cast
from urllib.parse import parse_qs, unquote

from bench.http1 import (
    HEAD_END,
    LAST_CHUNK,
    MAX_HEAD,
    ChunkedDecoder,
    ProtocolError,
    chunk,
    parse_headers,
)

BLOCK: Final = bytes(random.Random(8).randbytes(1 << 20))
SMALL_BODY: Final = b'{"ok":true,"service":"bench","items":[1,2,3],"note":"small json reply"}'
ECHO_LIMIT: Final = 1 << 20
USERS: Final = {
    "alice": {"email": "alice@example.com", "displayname": "Alice", "groups": ["staff"]},
    "admin": {"email": "admin@example.com", "displayname": "Ada Admin", "groups": ["admin"]},
}


def response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 201: b"Created", 401: b"Unauthorized", 404: b"Not Found"}.get(
        status, b"Status"
    )
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        reason,
        content_type,
        len(body),
        body,
    )


SMALL_RESPONSE: Final = response(200, SMALL_BODY)
NOT_FOUND: Final = response(404, b'{"error":"not found"}')
SSE_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def ocs_user(uid: str, authed: bool) -> bytes:
    if not authed:
        meta = {"status": "failure", "statuscode": 997, "message": "Current user is not logged in"}
        return response(401, json.dumps({"ocs": {"meta": meta, "data": []}}).encode())
    facts = USERS.get(uid, {"email": f"{uid}@example.com", "displayname": uid, "groups": []})
    data = {"id": uid, "enabled": True, **facts}
    meta = {"status": "ok", "statuscode": 200, "message": "OK"}
    return response(200, json.dumps({"ocs": {"meta": meta, "data": data}}).encode())


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: HTTP/1.1 keep-alive, Content-Length and chunked request bodies,
    one request at a time (no pipelining needed by our clients)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False  # a streamed response (bulk, sse) is being written
        self.closed = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # the request whose body is arriving
        self._body_left = 0
        self._decoder: ChunkedDecoder | None = None
        self._received = 0
        self._echo: bytearray | None = None
        self._on_body_end: Callable[[], None] | None = None
        self._close_after = False
        self._task: asyncio.Task[None] | None = None

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave like one
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=4 << 20)
        self.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable.set()
        if not self.gone.done():
            self.gone.set_result(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            if self._on_body_end is not None:
                rest = self._body(data)
                if rest is None:
                    return
                data = rest
            self.buf += data
            self._parse()
        except ProtocolError:
            self._abort()

    # -- parsing

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _parse(self) -> None:
        while not self.busy and self._on_body_end is None and not self.closed:
            end = self.buf.find(HEAD_END)
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise ProtocolError("head too long")
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            start, _, rest = head.partition(b"\r\n")
            parts = start.split(b" ")
            if len(parts) != 3:
                raise ProtocolError("bad request line")
            method, target = parts[0], parts[1].decode("latin-1")
            headers = parse_headers(rest)
            self.stats.requests += 1
            self._close_after = headers.get(b"connection", b"").lower() == b"close"
            path, _, query = target.partition("?")
            self._dispatch(method, path, query, headers)

    def _expect_body(self, headers: dict[bytes, bytes], done: Callable[[], None]) -> None:
        """Consume the request body (counting it), then call `done`."""
        self._received = 0
        if headers.get(b"expect", b"").lower() == b"100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._decoder = ChunkedDecoder(self._count)
            self._body_left = -1
        else:
            self._decoder = None
            self._body_left = int(headers.get(b"content-length", b"0") or b"0")
            if self._body_left == 0:
                done()
                return
        self._on_body_end = done
        if self.buf:
            pending = bytes(self.buf)
            self.buf.clear()
            rest = self._body(pending)
            if rest is not None:
                self.buf += rest

    def _count(self, view: memoryview) -> None:
        self._received += len(view)
        if self._echo is not None and len(self._echo) < ECHO_LIMIT:
            self._echo += view

    def _body(self, data: bytes) -> bytes | None:
        """Feed body bytes; returns what follows the body once it is complete, else None."""
        if self._decoder is not None:
            rest = self._decoder.feed(data)
            if rest is None:
                return None
        else:
            take = min(self._body_left, len(data))
            self._count(memoryview(data)[:take])
            self._body_left -= take
            if self._body_left > 0:
                return None
            rest = data[take:]
        done = self._on_body_end
        self._on_body_end = None
        self._decoder = None
        assert done is not None
        done()
        return rest

    # -- routes

    def _send(self, payload: bytes) -> None:
        if self.transport is None or self.closed:
            return
        self.transport.write(payload)
        if self._close_after:
            self.transport.close()

    def _dispatch(self, method: bytes, path: str, query: str, headers: dict[bytes, bytes]) -> None:
        if path.endswith("/small"):
            self._send(SMALL_RESPONSE)
        elif path.startswith("/ocs/v2.php/cloud/users/"):
            uid = unquote(path.rsplit("/", 1)[1])
            self._send(ocs_user(uid, b"authorization-app-api" in headers))
        elif path.endswith("/bulk"):
            size = int(parse_qs(query).get("bytes", ["0"])[0])
            self._stream(self._bulk(size))
        elif path.endswith("/upload"):
            status = 201 if method == b"PUT" else 200
            self._echo = None
            self._expect_body(
                headers,
                lambda: self._send(response(status, b'{"received":%d}' % self._received)),
            )
        elif path.endswith("/echo"):
            self._echo = bytearray()
            self._expect_body(headers, self._echo_done)
        elif path.endswith("/sse"):
            q = parse_qs(query)
            if q.get("idle"):
                self._stream(self._sse_idle())
            else:
                count = int(q.get("n", ["10"])[0])
                interval = float(q.get("ms", ["10"])[0]) / 1000.0
                wait = float(q.get("wait", ["0"])[0]) / 1000.0
                self._stream(self._sse(count, interval, wait))
        else:
            if headers.get(b"content-length") or headers.get(b"transfer-encoding"):
                self._echo = None
                self._expect_body(headers, lambda: self._send(NOT_FOUND))
            else:
                self._send(NOT_FOUND)

    def _echo_done(self) -> None:
        body = bytes(self._echo or b"")
        self._echo = None
        self._send(response(200, body, b"application/octet-stream"))

    def _stream(self, coro: object) -> None:
        self.busy = True
        self._task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._task.add_done_callback(self._stream_done)

    def _stream_done(self, task: asyncio.Task[None]) -> None:
        self.busy = False
        if not task.cancelled() and task.exception() is not None:
            self._abort()
            return
        if self._close_after and self.transport is not None:
            self.transport.close()
            return
        if self.buf and not self.closed:
            try:
                self._parse()
            except ProtocolError:
                self._abort()

    async def _bulk(self, size: int) -> None:
        t = self.transport
        assert t is not None
        t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % size
        )
        view = memoryview(BLOCK)
        left = size
        while left > 0 and not self.closed:
            if not self.writable.is_set():
                await self.writable.wait()
                continue
            take = min(left, len(BLOCK))
            t.write(view[:take])
            left -= take

    async def _sse(self, count: int, interval: float, wait: float) -> None:
        t = self.transport
        assert t is not None
        loop = asyncio.get_running_loop()
        t.write(SSE_HEAD)
        # `wait` lets every stream of a test get established first; the random phase keeps
        # many streams from firing in the same instant
        await asyncio.sleep(wait + random.uniform(0, interval))
        due = loop.time()
        for i in range(count):
            if self.closed:
                return
            t.write(chunk(b"id: %d\ndata: %d\n\n" % (i, time.monotonic_ns())))
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))
        t.write(LAST_CHUNK)

    async def _sse_idle(self) -> None:
        t = self.transport
        assert t is not None
        t.write(SSE_HEAD + chunk(b"data: idle\n\n"))
        await self.gone


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (PR_SET_PDEATHSIG), so a bench
    that crashes or is killed leaves no upstream or connector behind. Best effort."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(unix_path: str | None, port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    tcp = await loop.create_server(
        lambda: UpstreamProtocol(stats), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    servers = [tcp]
    if unix_path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(unix_path)
        servers.append(
            await loop.create_unix_server(lambda: UpstreamProtocol(stats), unix_path, backlog=4096)
        )
    bound = tcp.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    if unix_path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(unix_path)
    print(f"upstream: {stats.requests} requests, {stats.connections} connections", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unix", type=Path, default=None)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    die_with_parent()
    raise_nofile()
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(str(args.unix) if args.unix else None, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
