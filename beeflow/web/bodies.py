"""Small bodies read whole within a cap: the one reader for every route that takes a JSON object
(setup, Files actions, occ, webhook, Talk and Studio deliveries) and for small answers of the
service read whole (the Studio listing).

`StreamReader.read(n)` returns what is buffered, up to n bytes, not the body up to n: a body that
arrives in two pieces (chunked through Nextcloud's PHP proxy, or two TCP segments) would be cut.
This reads to the end, and stops as soon as the cap is passed."""

from __future__ import annotations

from typing import Protocol

from aiohttp import StreamReader


class _Body(Protocol):
    """A request (web.BaseRequest) or an answer (aiohttp.ClientResponse)."""

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> StreamReader: ...


async def read_capped(message: _Body, limit: int) -> bytes | None:
    """The whole body, or None when it is (or says it is) longer than `limit` bytes; nothing
    past the cap is kept."""
    if message.content_length is not None and message.content_length > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in message.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)
