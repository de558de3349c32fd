"""The bits of HTTP/1.1 framing both the fast upstream and the bench clients need."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

CRLF: Final = b"\r\n"
HEAD_END: Final = b"\r\n\r\n"
MAX_HEAD: Final = 64 * 1024


class ProtocolError(Exception):
    """The peer sent something this small parser does not accept."""


def parse_headers(block: bytes) -> dict[bytes, bytes]:
    """Header lines (without the start line) -> {lower-case name: value}; the last one wins."""
    out: dict[bytes, bytes] = {}
    for line in block.split(CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:60]!r}")
        out[name.strip().lower()] = value.strip()
    return out


def chunk(payload: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


LAST_CHUNK: Final = b"0\r\n\r\n"

_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ChunkedDecoder:
    """Incremental decoder of a chunked body. feed() hands payload to `on_data` (memoryviews
    of the input, no copies) and returns the bytes after the last chunk once the body ended,
    else None."""

    __slots__ = ("_left", "_line", "_state", "done", "on_data")

    def __init__(self, on_data: Callable[[memoryview], None]) -> None:
        self.on_data = on_data
        self._state = _SIZE
        self._left = 0
        self._line = b""
        self.done = False

    def feed(self, data: bytes) -> bytes | None:
        view = memoryview(data)
        i = 0
        n = len(data)
        while i < n:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - i)
                self.on_data(view[i : i + take])
                i += take
                self._left -= take
                if self._left == 0:
                    self._state = _DATA_END
                continue
            j = data.find(b"\n", i)
            if j < 0:
                if state != _DATA_END:
                    self._line += data[i:]
                    if len(self._line) > 4096:
                        raise ProtocolError("chunk header too long")
                return None
            line = self._line + data[i:j]
            self._line = b""
            i = j + 1
            if state == _DATA_END:
                self._state = _SIZE
            elif state == _SIZE:
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {line[:40]!r}") from None
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._left = size
                    self._state = _DATA
            elif not line.strip():  # _TRAILER: the blank line ends the body
                self.done = True
                return data[i:]
        return None
