"""Request bodies a proxy reads whole before forwarding them (a chunked JSON body must go on with a
Content-Length), bounded in memory across requests and per caller (docs/proxy.md, "Buffered
bodies").

    budget = BufferBudget(max_bytes, max_per_key)
    body = await read_whole(request, budget, key)   -> Buffered (bytes held until release())
        Reads the body chunk by chunk, reserving each chunk before it is kept:
            413 payload_too_large     the body alone is larger than max_per_key (or max_bytes)
            503 api_buffer_user_full  this key's bodies buffered at once would pass max_per_key
            503 api_buffer_full       all bodies buffered at once would pass max_bytes
        The refusal comes as soon as the chunk that crosses a limit arrives: nothing past the
        limit is ever held. A body stalling is the caller's business (the head timeout and the
        client's own timeouts); what it holds is counted meanwhile.
    body.release()   idempotent: the bytes no longer count (call once they were sent on)
    pieces(chunks)   a large buffered body as an async iterable of its chunks, each dropped once
                     handed on (aiohttp sends bytes over 1 MiB only from a file or a stream; a
                     BytesIO would copy it)

The chunks are kept as they were received, not appended to one growing buffer: a bytearray grown
chunk by chunk is reallocated as it grows, and glibc's allocator may copy it (old and new held at
once) and keep the freed space, so a held body used to cost up to twice its size at its peak.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import web

from beeflow.errors import BeeflowError, ServiceUnavailable

RETRY_AFTER_SECONDS: Final = 5
PIECE_BYTES: Final = 64 * 1024


class BufferBudget:
    """The limits and what is held now, in total and per key (advisory counters too)."""

    def __init__(self, max_bytes: int, max_per_key: int) -> None:
        self.max_bytes = max_bytes
        self.max_per_key = min(max_per_key, max_bytes)
        self.held = 0
        self.peak = 0
        self.refused = 0
        self._per_key: dict[str, int] = {}

    def held_by(self, key: str) -> int:
        return self._per_key.get(key, 0)

    def reserve(self, key: str, n: int, body_so_far: int) -> None:
        """Count `n` more bytes for `key` (a body already holding `body_so_far`), or refuse."""
        if body_so_far + n > self.max_per_key:
            self.refused += 1
            raise BeeflowError(
                f"The request body is larger than {self.max_per_key} bytes",
                code="payload_too_large",
                status=413,
            )
        mine = self._per_key.get(key, 0)
        if mine + n > self.max_per_key:
            self.refused += 1
            raise _full(
                "api_buffer_user_full", "your other requests in progress hold too much already"
            )
        if self.held + n > self.max_bytes:
            self.refused += 1
            raise _full("api_buffer_full", "the connector holds too many request bodies")
        self._per_key[key] = mine + n
        self.held += n
        self.peak = max(self.peak, self.held)

    def give_back(self, key: str, n: int) -> None:
        if n <= 0:
            return
        self.held -= n
        left = self._per_key.get(key, 0) - n
        if left > 0:
            self._per_key[key] = left
        else:
            self._per_key.pop(key, None)

    def health(self) -> dict[str, Any]:
        return {
            "heldBytes": self.held,
            "peakBytes": self.peak,
            "limitBytes": self.max_bytes,
            "limitPerUserBytes": self.max_per_key,
            "refused": self.refused,
        }


def _full(code: str, why: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The request body cannot be buffered now ({why}); retry shortly",
        code=code,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class Buffered:
    """A body read whole; its bytes count against the budget until release()."""

    __slots__ = ("_budget", "_key", "_size", "data")

    def __init__(self, budget: BufferBudget, key: str, chunks: list[bytes], size: int) -> None:
        self._budget: BufferBudget | None = budget
        self._key = key
        self._size = size
        self.data: list[bytes] | None = chunks

    @property
    def size(self) -> int:
        return self._size

    def take(self) -> list[bytes]:
        """The chunks, handed over once (this holder drops its reference)."""
        data, self.data = self.data, None
        return data if data is not None else []

    def release(self) -> None:
        """The bytes no longer count (they were sent on, or never will be); idempotent."""
        budget, self._budget = self._budget, None
        self.data = None
        if budget is not None:
            budget.give_back(self._key, self._size)


async def read_whole(request: web.BaseRequest, budget: BufferBudget, key: str) -> Buffered:
    """The whole body of `request`, each chunk reserved before it is kept (see the module
    docstring). On a refusal nothing stays reserved."""
    chunks: list[bytes] = []
    small = bytearray()  # small chunks gathered up to PIECE_BYTES: a body sent a byte per chunk
    size = 0  # must not cost an object per byte
    content = request.content
    try:
        while chunk := await content.readany():
            budget.reserve(key, len(chunk), size)
            size += len(chunk)
            if len(chunk) >= PIECE_BYTES and not small:
                chunks.append(chunk)
                continue
            small += chunk
            if len(small) >= PIECE_BYTES:
                chunks.append(bytes(small))
                small.clear()
    except BaseException:
        budget.give_back(key, size)
        raise
    if small:
        chunks.append(bytes(small))
    return Buffered(budget, key, chunks, size)


async def pieces(chunks: list[bytes]) -> AsyncIterator[bytes]:
    """`chunks` one after the other for a streamed upload, each dropped from the list as it is
    handed on (so what was sent is no longer held here)."""
    for i in range(len(chunks)):
        chunk, chunks[i] = chunks[i], b""
        yield chunk
