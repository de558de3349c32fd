"""Bodies read whole (chunked JSON for the service): kept as received, small chunks gathered, so a
body costs about its size however it was cut, and a large one is handed on chunk by chunk."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiohttp import web

from beeflow.proxy.buffers import PIECE_BYTES, BufferBudget, pieces, read_whole

MIB = 1024 * 1024


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)

    async def readany(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


class _Request:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Content(chunks)


def request_of(chunks: list[bytes]) -> web.BaseRequest:
    return cast(web.BaseRequest, _Request(chunks))


async def collected(it: Any) -> bytes:
    return b"".join([piece async for piece in it])


@pytest.mark.parametrize(
    "cut",
    [
        [b"x"] * 200_000,  # a byte per chunk
        [b"a" * 100, b"b" * (PIECE_BYTES * 3), b"c" * 7, b"d" * PIECE_BYTES],  # mixed
        [bytes([i % 251]) * 1000 for i in range(300)],
    ],
    ids=["bytewise", "mixed", "kilobytes"],
)
async def test_the_body_is_whole_in_order_and_in_few_objects(cut: list[bytes]) -> None:
    budget = BufferBudget(64 * MIB, 16 * MIB)
    body = b"".join(cut)
    held = await read_whole(request_of(cut), budget, "bob")
    assert held.size == len(body)
    assert budget.held_by("bob") == len(body)
    chunks = held.take()
    assert b"".join(chunks) == body
    # Never an object per tiny chunk: at most one per PIECE_BYTES, plus a received large one.
    assert len(chunks) <= len(body) // PIECE_BYTES + 1 + sum(
        1 for c in cut if len(c) >= PIECE_BYTES
    )
    assert held.take() == []  # handed over once
    held.release()
    assert budget.held_by("bob") == 0


async def test_a_large_body_is_handed_on_chunk_by_chunk_and_dropped_as_sent() -> None:
    cut = [bytes([i]) * PIECE_BYTES for i in range(8)]
    held = await read_whole(request_of(cut), BufferBudget(64 * MIB, 16 * MIB), "bob")
    chunks = held.take()
    it = pieces(chunks)
    first = await anext(it)
    assert first == cut[0]
    assert chunks[0] == b""  # no longer held by the list once handed on
    assert first + await collected(it) == b"".join(cut)
    assert all(c == b"" for c in chunks)


async def test_a_refused_body_gives_back_what_it_had_counted() -> None:
    budget = BufferBudget(64 * MIB, 2 * PIECE_BYTES)
    cut = [b"y" * 1000] * (3 * PIECE_BYTES // 1000)
    with pytest.raises(Exception, match="larger than"):
        await read_whole(request_of(cut), budget, "bob")
    assert budget.held_by("bob") == 0
    assert budget.held == 0
