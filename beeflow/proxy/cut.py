"""Refusing a request whose body is still coming: answer, half-close, close shortly after, instead
of letting aiohttp read and discard the rest (for up to 10 s, buffering up to ~0.5 MiB per
connection meanwhile: a sender could hold that on every connection it opens).

    body_left(request) -> int       bytes of the body not read yet (unknown length: large)
    await cut(request, response)    `response` (an error answer), then the connection closed
                                    CUT_GRACE_SECONDS later; the grace lets a client that is
                                    still sending read the answer before the close resets it
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

# A refused request with more body than this still to come is cut off instead of drained.
LINGER_BODY_BYTES: Final = 64 * 1024
CUT_GRACE_SECONDS: Final = 0.5


def body_left(request: web.BaseRequest) -> int:
    """Bytes of the request body not read yet (a body of unknown length counts as large)."""
    if not request.body_exists:
        return 0
    content = request.content
    if content.is_eof():
        return 0
    length = request.content_length
    if length is None:
        return LINGER_BODY_BYTES + 1
    return max(0, length - content.total_bytes)


async def cut(request: web.BaseRequest, response: web.Response) -> web.Response:
    """Send `response`, half-close, and close the connection CUT_GRACE_SECONDS later."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    transport = request.transport
    if transport is not None:
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(CUT_GRACE_SECONDS, transport.close)
    return response
