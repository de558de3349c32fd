"""Lean HTTP/1.1 clients on bare asyncio protocols: a keep-alive load generator, SSE readers
that time every event, and bulk download/upload at memory speed. Over TCP or a Unix socket.

aiohttp's client would spend more CPU per request than the upstream it measures; these parse
only what they need (status, Content-Length / chunked / close-delimited framing)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from typing import cast

import attrs

from bench.http1 import HEAD_END, MAX_HEAD, ChunkedDecoder, ProtocolError, parse_headers


@attrs.frozen
class Target:
    """Where to connect: TCP host:port, or a Unix socket path."""

    host: str = "127.0.0.1"
    port: int = 0
    unix: str | None = None

    @property
    def kind(self) -> str:
        return "unix" if self.unix else "tcp"

    def describe(self) -> str:
        return f"unix:{self.unix}" if self.unix else f"http://{self.host}:{self.port}"

    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        if self.unix:
            _, proto = await loop.create_unix_connection(Conn, self.unix)
        else:
            _, proto = await loop.create_connection(Conn, self.host, self.port)
        return proto


def build_request(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes = b"",
    *,
    content_length: int | None = None,
) -> bytes:
    """The bytes of one request head (plus a small body)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    length = len(body) if content_length is None else content_length
    if length or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@attrs.define
class Response:
    status: int = 0
    headers: dict[bytes, bytes] = attrs.field(factory=dict)
    body_bytes: int = 0
    body: bytearray | None = None


class Conn(asyncio.Protocol):
    """One client connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = b""
        self._resp: Response | None = None
        self._done: asyncio.Future[Response] | None = None
        self._mode = 0  # 0 head, 1 length, 2 chunked, 3 until close
        self._left = 0
        self._decoder: ChunkedDecoder | None = None
        self._keep = False
        self._on_data: Callable[[memoryview], None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave like one
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=4 << 20)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._writable.set()
        if self._done is not None and not self._done.done():
            if self._mode == 3 and self._resp is not None:
                self._done.set_result(self._resp)
            else:
                self._done.set_exception(ConnectionError("connection closed mid-response"))

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            self._feed(data)
        except ProtocolError as exc:
            if self._done is not None and not self._done.done():
                self._done.set_exception(exc)
            self.close()

    # -- API

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def send(
        self,
        raw: bytes,
        *,
        keep_body: bool = False,
        on_data: Callable[[memoryview], None] | None = None,
    ) -> asyncio.Future[Response]:
        """Write a request; the future resolves with the whole response."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection is closed")
        self._start(keep_body, on_data)
        self.transport.write(raw)
        assert self._done is not None
        return self._done

    async def request(self, raw: bytes, *, keep_body: bool = False) -> Response:
        return await self.send(raw, keep_body=keep_body)

    async def upload(
        self, head: bytes, block: bytes, total: int, *, keep_body: bool = True
    ) -> Response:
        """Send `head`, then `total` body bytes (repeating `block`) under flow control."""
        done = self.send(head, keep_body=keep_body)
        view = memoryview(block)
        left = total
        assert self.transport is not None
        while left > 0:
            if self.closed or done.done():
                break
            if not self._writable.is_set():
                await self._writable.wait()
                continue
            take = min(left, len(block))
            self.transport.write(view[:take])
            left -= take
        return await done

    # -- parsing

    def _start(self, keep: bool, on_data: Callable[[memoryview], None] | None) -> None:
        self._resp = Response(body=bytearray() if keep else None)
        self._done = asyncio.get_running_loop().create_future()
        self._mode = 0
        self._keep = keep
        self._on_data = on_data

    def _body_data(self, view: memoryview) -> None:
        resp = self._resp
        assert resp is not None
        resp.body_bytes += len(view)
        if resp.body is not None:
            resp.body += view
        if self._on_data is not None:
            self._on_data(view)

    def _finish(self, rest: bytes) -> None:
        self._mode = 0
        self._buf = rest
        done, resp = self._done, self._resp
        self._done = None
        if done is not None and not done.done() and resp is not None:
            done.set_result(resp)

    def _feed(self, data: bytes) -> None:
        mode = self._mode
        if mode == 1:
            take = min(self._left, len(data))
            self._body_data(memoryview(data)[:take])
            self._left -= take
            if self._left == 0:
                self._finish(data[take:])
            return
        if mode == 2:
            assert self._decoder is not None
            rest = self._decoder.feed(data)
            if rest is not None:
                self._finish(rest)
            return
        if mode == 3:
            self._body_data(memoryview(data))
            return
        buf = self._buf + data if self._buf else data
        end = buf.find(HEAD_END)
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise ProtocolError("response head too long")
            self._buf = buf
            return
        if self._resp is None:
            raise ProtocolError("unsolicited response")
        head = buf[:end]
        rest = buf[end + 4 :]
        self._buf = b""
        status = int(head[9:12])
        if status == 100:
            if rest:
                self._feed(rest)
            return
        line_end = head.find(b"\r\n")
        headers = parse_headers(head[line_end + 2 :]) if line_end >= 0 else {}
        self._resp.status = status
        self._resp.headers = headers
        te = headers.get(b"transfer-encoding", b"").lower()
        if status in (204, 304):
            self._finish(rest)
        elif b"chunked" in te:
            self._mode = 2
            self._decoder = ChunkedDecoder(self._body_data)
            if rest:
                self._feed(rest)
        elif b"content-length" in headers:
            self._left = int(headers[b"content-length"])
            if self._left == 0:
                self._finish(rest)
                return
            self._mode = 1
            if rest:
                self._feed(rest)
        else:
            self._mode = 3
            if rest:
                self._feed(rest)


# ------------------------------------------------------------------ load generator


@attrs.frozen
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_us: list[float]
    statuses: dict[int, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def load(
    target: Target, raw: bytes, *, concurrency: int, duration: float, warmup: float = 0.0
) -> LoadResult:
    """`concurrency` keep-alive connections send `raw` back to back for `duration` seconds."""
    conns = [await target.connect() for _ in range(concurrency)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    counting = False
    stopping = asyncio.Event()

    async def worker(conn: Conn) -> None:
        nonlocal errors
        clock = time.perf_counter_ns
        while not stopping.is_set():
            t0 = clock()
            try:
                resp = await conn.send(raw)
            except (ConnectionError, ProtocolError):
                errors += 1
                if stopping.is_set():
                    return
                conn = await target.connect()
                continue
            if counting:
                latencies.append((clock() - t0) / 1000.0)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.headers.get(b"connection", b"").lower() == b"close":
                conn.close()
                conn = await target.connect()

    tasks = [asyncio.get_running_loop().create_task(worker(c)) for c in conns]
    try:
        if warmup:
            await asyncio.sleep(warmup)
        counting = True
        started = time.perf_counter()
        await asyncio.sleep(duration)
        counting = False
        seconds = time.perf_counter() - started
        stopping.set()
        await asyncio.wait(tasks, timeout=10)
    finally:
        stopping.set()
        for task in tasks:
            task.cancel()
        for conn in conns:
            conn.close()
    ok = sum(n for s, n in statuses.items() if 200 <= s < 400)
    bad = sum(n for s, n in statuses.items() if not 200 <= s < 400)
    return LoadResult(ok, errors + bad, seconds, latencies, statuses)


# ------------------------------------------------------------------ SSE


class SseTimer:
    """Splits a decoded event-stream into events and times `data: <monotonic ns>` lines."""

    def __init__(self) -> None:
        self._buf = b""
        self.latencies_us: list[float] = []
        self.events = 0
        self.first = asyncio.get_running_loop().create_future()
        self.first_at = math.inf

    def feed(self, view: memoryview) -> None:
        now = time.monotonic_ns()
        buf = self._buf + bytes(view)
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            event, buf = buf[:end], buf[end + 2 :]
            if not event or event.startswith(b":"):
                continue  # keep-alive comment
            self.events += 1
            if not self.first.done():
                self.first.set_result(None)
                self.first_at = time.monotonic()
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    value = line[6:]
                    if value.isdigit():
                        self.latencies_us.append((now - int(value)) / 1000.0)
        self._buf = buf


@attrs.frozen
class SseResult:
    latencies_us: list[float]
    events: int
    failed: int
    # every stream had its first event before any stream had its last: all ran concurrently
    concurrent: bool


async def sse_run(target: Target, raw: bytes, streams: int) -> SseResult:
    """Open `streams` event streams at once and read each to its end."""

    async def one() -> tuple[SseTimer, float, float]:
        conn = await target.connect()
        timer = SseTimer()
        try:
            resp = await conn.send(raw, on_data=timer.feed)
            if resp.status != 200:
                raise ConnectionError(f"HTTP {resp.status}")
        finally:
            conn.close()
        return timer, timer.first_at, time.monotonic()

    results = await asyncio.gather(*(one() for _ in range(streams)), return_exceptions=True)
    latencies: list[float] = []
    events = failed = 0
    firsts: list[float] = []
    lasts: list[float] = []
    for r in results:
        if isinstance(r, BaseException):
            failed += 1
            continue
        timer, first_at, last_at = r
        latencies += timer.latencies_us
        events += timer.events
        firsts.append(first_at)
        lasts.append(last_at)
    concurrent = bool(firsts) and max(firsts) < min(lasts)
    return SseResult(latencies, events, failed, concurrent)


class IdleStreams:
    """Hold many open event streams, each having received its first event."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.failed = 0
        self.opened = 0

    async def open(
        self, target: Target, raw: bytes, count: int, *, batch: int = 200, wait: float = 10.0
    ) -> None:
        """Open `count` streams, `batch` at a time; stop at the first batch in which a stream
        did not get its first event within `wait` seconds (a concurrency cap)."""

        async def one() -> bool:
            conn = await target.connect()
            self.conns.append(conn)
            timer = SseTimer()
            fut = conn.send(raw, on_data=timer.feed)
            first = timer.first
            await asyncio.wait([fut, first], return_when=asyncio.FIRST_COMPLETED, timeout=wait)
            fut.add_done_callback(_ignore)
            # open means: the first event arrived and the stream did not end
            return first.done() and not fut.done()

        for start in range(0, count, batch):
            n = min(batch, count - start)
            results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
            good = sum(1 for r in results if r is True)
            self.opened += good
            if good < n:
                self.failed = count - self.opened
                return

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns.clear()


def _ignore(fut: asyncio.Future[Response]) -> None:
    with contextlib.suppress(BaseException):
        fut.exception()


# ------------------------------------------------------------------ bulk


async def download(target: Target, raw: bytes) -> tuple[int, float, int]:
    """(body bytes, seconds, status) of one download on a fresh connection."""
    conn = await target.connect()
    try:
        t0 = time.perf_counter()
        resp = await conn.send(raw)
        return resp.body_bytes, time.perf_counter() - t0, resp.status
    finally:
        conn.close()


async def upload(target: Target, head: bytes, block: bytes, total: int) -> tuple[float, Response]:
    """(seconds, response) of one upload of `total` bytes on a fresh connection."""
    conn = await target.connect()
    try:
        t0 = time.perf_counter()
        resp = await conn.upload(head, block, total)
        return time.perf_counter() - t0, resp
    finally:
        conn.close()
