"""A raw HTTP/1.1 client for the catalogue: exact bytes out, a parsed answer back, time-bounded.

aiohttp's client normalises what it sends (no CRLF in values, one Content-Length, valid
methods); request smuggling shapes, slow clients and malformed heads need the bytes as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import attrs
from multidict import CIMultiDict

from beeflow.tasks import spawn


@attrs.define
class RawResponse:
    """What came back on the socket: one parsed response (or none), and how the socket ended."""

    status: int | None
    reason: str
    headers: CIMultiDict[str]
    body: bytes
    raw: bytes
    elapsed: float
    closed: bool  # the server closed the connection (EOF) within the read bound
    extra: bytes = b""  # anything after the first response (a second, smuggled answer?)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        """The `code` of a JSON error body, else None."""
        if "json" not in self.headers.get("Content-Type", ""):
            return None
        try:
            data = self.json()
        except ValueError:
            return None
        return data.get("code") if isinstance(data, dict) else None


def _split_head(raw: bytes) -> tuple[bytes, bytes] | None:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    return raw[:end], raw[end + 4 :]


def _dechunk(data: bytes) -> tuple[bytes, bytes] | None:
    """(body, rest) of a complete chunked body, or None if incomplete."""
    body = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(data[pos:eol].split(b";")[0].strip() or b"0", 16)
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n", pos)
            if end < 0:
                return None
            return bytes(body), data[end + 2 :]
        if len(data) < pos + size + 2:
            return None
        body += data[pos : pos + size]
        pos += size + 2


def parse_response(raw: bytes, *, eof: bool, head_only: bool = False) -> RawResponse | None:
    """A complete first response in `raw`, or None if more bytes are needed."""
    split = _split_head(raw)
    if split is None:
        return None
    head, rest = split
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    if head_only or status in (204, 304) or 100 <= status < 200:
        body, extra = b"", rest
    elif "chunked" in headers.get("Transfer-Encoding", "").lower():
        done = _dechunk(rest)
        if done is None:
            if not eof:
                return None
            body, extra = rest, b""
        else:
            body, extra = done
    elif "Content-Length" in headers:
        length = int(headers["Content-Length"])
        if len(rest) < length and not eof:
            return None
        body, extra = rest[:length], rest[length:]
    else:
        if not eof:
            return None
        body, extra = rest, b""
    return RawResponse(status, reason, headers, body, raw, 0.0, eof, extra)


async def exchange(
    host: str,
    port: int,
    data: bytes | list[tuple[bytes, float]],
    *,
    timeout: float = 10.0,
    head_only: bool = False,
    wait_close: float = 0.5,
    unix: str | None = None,
) -> RawResponse:
    """Send `data` (or pieces with a pause before each) and read the first response. After it
    arrived, wait up to `wait_close` s for more bytes or the server's close (smuggling checks).
    Without any response within `timeout`: status None, `closed` tells whether the server hung
    up or simply never answered."""
    started = time.monotonic()
    if unix is not None:
        reader, writer = await asyncio.open_unix_connection(unix)
    else:
        reader, writer = await asyncio.open_connection(host, port)
    raw = bytearray()
    eof = False
    try:
        pieces = [(data, 0.0)] if isinstance(data, bytes) else data

        async def send() -> None:
            for piece, pause in pieces:
                if pause:
                    await asyncio.sleep(pause)
                writer.write(piece)
                await writer.drain()

        sender = spawn(send(), name="rawhttp-send")
        try:
            deadline = started + timeout
            parsed: RawResponse | None = None
            while parsed is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        chunk = await reader.read(65536)
                except TimeoutError:
                    break
                except ConnectionResetError:
                    eof = True
                    break
                if not chunk:
                    eof = True
                    break
                raw += chunk
                parsed = parse_response(bytes(raw), eof=False, head_only=head_only)
            if parsed is None:
                parsed = parse_response(bytes(raw), eof=eof, head_only=head_only) if raw else None
            elapsed = time.monotonic() - started
            if parsed is not None and not eof and wait_close > 0:
                # Anything more (a second answer) or the close, within a short bound.
                with_more = bytearray()
                try:
                    async with asyncio.timeout(wait_close):
                        while chunk := await reader.read(65536):
                            with_more += chunk
                    eof = True
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    eof = True
                parsed.extra += bytes(with_more)
            if parsed is None:
                return RawResponse(None, "", CIMultiDict(), b"", bytes(raw), elapsed, eof)
            parsed.elapsed = elapsed
            parsed.closed = eof
            return parsed
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def request_bytes(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    body: bytes = b"",
    *,
    host: str = "127.0.0.1",
    content_length: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    """A request head + body. Header names/values may be bytes (to carry non-UTF-8)."""
    out = bytearray(f"{method} {target} {version}\r\nHost: {host}\r\n".encode("latin-1"))
    names: set[str] = set()
    for name, value in headers:
        n = name if isinstance(name, bytes) else name.encode("latin-1")
        v = value if isinstance(value, bytes) else value.encode("latin-1")
        names.add(n.decode("latin-1").lower())
        out += n + b": " + v + b"\r\n"
    if (
        content_length
        and body
        and "content-length" not in names
        and ("transfer-encoding" not in names)
    ):
        out += f"Content-Length: {len(body)}\r\n".encode()
    out += b"Connection: close\r\n" if "connection" not in names else b""
    out += b"\r\n" + body
    return bytes(out)
