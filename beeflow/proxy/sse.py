"""Server-sent events as the relay sees them: where events end, the last event's name, the
keep-alive comment, and the `error` event that ends a stream whose framing cannot show a cut.

The relay copies an event stream byte for byte; it only ever adds whole lines at an event
boundary (a blank line), where they cannot change the meaning of an event being sent."""

from __future__ import annotations

import contextlib
import json
from typing import Final

import attrs
from aiohttp import web

KEEPALIVE_COMMENT: Final = b": keep-alive\n\n"


class Boundary:
    """Whether the bytes relayed so far end between two events (a blank line, in any of the
    line endings the SSE format allows)."""

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b"\n\n"  # the start of a stream is a boundary

    def feed(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk[-4:])[-4:]  # never copy the whole chunk

    @property
    def at_boundary(self) -> bool:
        tail = self.tail
        return (
            tail.endswith(b"\n\n")
            or tail.endswith(b"\r\n\r\n")
            or tail.endswith(b"\n\r\n")
            or tail.endswith(b"\r\r")
        )


@attrs.frozen(kw_only=True)
class ErrorEvents:
    """Ending a broken event stream with `event: error` (data: {"code", "error"}), for framings
    where the end of the connection is the end of the body (close-delimited) and a cut would
    otherwise look like a complete reply. Only at an event boundary, and not after an event
    named in `final_events` (the reply was complete then).

    `upstream_name` names the peer in the message the UI shows ("The Bee Flow service")."""

    upstream_name: str = "The upstream service"
    final_events: frozenset[bytes] = frozenset()

    def disconnected(self) -> tuple[str, str]:
        return (
            "upstream_disconnected",
            f"{self.upstream_name} stopped in the middle of the reply; it is incomplete",
        )

    def restarting(self) -> tuple[str, str]:
        return (
            "connector_restarting",
            "The Nextcloud connector is restarting, so this reply ends here; send your message "
            "again in a moment",
        )

    def idle(self, seconds: float) -> tuple[str, str]:
        return (
            "upstream_idle",
            f"{self.upstream_name} sent nothing for {seconds:g} s; the reply was ended",
        )


class EventTracker:
    """What the relayed bytes of an event stream say so far: at a boundary or not, and the name
    of the last `event:` seen (only followed when some event names matter)."""

    __slots__ = ("boundary", "last_event")

    def __init__(self) -> None:
        self.boundary = Boundary()
        self.last_event = b""

    def note_event_name(self, chunk: bytes) -> None:
        """Remember the last `event:` name in `chunk`. A name split across two chunks is
        missed, which at worst adds or omits one error event."""
        at = chunk.rfind(b"event:")
        if at >= 0 and (at == 0 or chunk[at - 1 : at] in (b"\n", b"\r")):
            end = chunk.find(b"\n", at)
            self.last_event = chunk[at + 6 : end if end >= 0 else None].strip()

    def unfinished(self, events: ErrorEvents) -> bool:
        """At an event boundary, and the last event did not end the reply."""
        return self.boundary.at_boundary and self.last_event not in events.final_events


async def write_error_event(resp: web.StreamResponse, code: str, message: str) -> None:
    """An SSE `error` event the UI renders; the client may already be gone."""
    data = json.dumps({"code": code, "error": message}, separators=(",", ":")).encode()
    with contextlib.suppress(ConnectionError):
        await resp.write(b"event: error\ndata: " + data + b"\n\n")
