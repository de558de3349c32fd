"""Helpers of the relay tests: the chat stream of the fake service, and a reader that records
when each event arrived."""

from __future__ import annotations

import asyncio
import time
from typing import Final

import aiohttp

from tests.helpers import RunningConnector

CHAT: Final = "/ai/chat/direct/stream"  # the service's route: routes/ai.js is mounted at /ai
COMMENT: Final = b": keep-alive\n\n"


class EventReader:
    """Reads an SSE body as it arrives; records when each complete event (comments skipped)
    was received."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buffer = b""
        self.raw = b""
        self.arrivals: list[tuple[float, bytes]] = []

    async def next_event(self, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                while b"\n\n" in self.buffer:
                    event, self.buffer = self.buffer.split(b"\n\n", 1)
                    if event and not event.startswith(b":"):
                        self.arrivals.append((time.monotonic(), event + b"\n\n"))
                        return event + b"\n\n"
                chunk = await self.resp.content.readany()
                if not chunk:
                    raise EOFError("stream ended")
                self.raw += chunk
                self.buffer += chunk

    async def rest(self, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            while chunk := await self.resp.content.readany():
                self.raw += chunk
        return self.raw


async def chat(conn: RunningConnector) -> aiohttp.ClientResponse:
    return await conn.request(
        "POST", CHAT, user="alice", json={"message": "hi"}, headers={"Accept": "text/event-stream"}
    )
