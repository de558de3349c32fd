"""The /nc bodies read before their signature can be checked, capped by count and bytes
(docs/nc-proxy.md, "Limits").

A v2 signature covers sha256(body): it verifies only once the whole body is spooled, so anyone
can make the connector hold an upload by sending a well-formed signature header. These caps
bound what such uploads hold at once; a request whose signature verified from its head alone
(v3, v1) and a request without a body never count, so forged uploads cannot crowd them out.

    uploads = UnverifiedUploads(max_count, max_bytes)
    uploads.check()              503 unverified_uploads_full when no slot is free (before
                                 `100 Continue`)
    ticket = uploads.admit()     takes a slot (or the same 503)
    ticket.add(n)                n more bytes held; past max_bytes the upload that pushed the
                                 total over is refused, unless it is the only one (one upload
                                 may always reach BEEFLOW_NC_MAX_BODY_BYTES on its own)
    ticket.release()             idempotent
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from beeflow.errors import ServiceUnavailable

RETRY_AFTER_SECONDS: Final = 5


def _full(why: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"Too many unverified uploads are in progress ({why}); retry later, or sign with v3 "
        "(its signature is checked before the body is read)",
        code="unverified_uploads_full",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class UnverifiedUploads:
    """The caps and what is held now (advisory counters for the heartbeat)."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.active = 0
        self.held = 0
        self.refused = 0

    def check(self) -> None:
        if self.active >= self.max_count:
            self.refused += 1
            raise _full(f"{self.max_count} at once")

    def admit(self) -> Ticket:
        self.check()
        self.active += 1
        return Ticket(self)

    def health(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "heldBytes": self.held,
            "limit": self.max_count,
            "limitBytes": self.max_bytes,
            "refused": self.refused,
        }


class Ticket:
    """One admitted upload's share."""

    __slots__ = ("_owner", "bytes", "released")

    def __init__(self, owner: UnverifiedUploads) -> None:
        self._owner = owner
        self.bytes = 0
        self.released = False

    def add(self, n: int) -> None:
        owner = self._owner
        owner.held += n
        self.bytes += n
        if owner.held > owner.max_bytes and owner.active > 1:
            owner.refused += 1
            raise _full(f"{owner.max_bytes} bytes together")

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._owner.active -= 1
        self._owner.held -= self.bytes


UPLOADS: web.AppKey[UnverifiedUploads] = web.AppKey("nc_proxy_unverified_uploads")
