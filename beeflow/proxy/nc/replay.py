"""Signatures already used by /nc writes, so a captured signed DELETE (or PUT, MOVE...) cannot run
twice within the clock-skew window (docs/nc-proxy.md, "Replays").

    ReplayCache       the interface the handler uses
    MemoryReplayCache one process's bounded cache (also the index of the shared one)
    SharedReplayCache (replay_shared.py) the same, shared by the replicas on one volume

A signature is claimed once it verified and released again only when its request never reached
Nextcloud (refused afterwards, or Nextcloud unreachable), so the service may resend it. An entry
lives until its timestamp has left the skew window: after that the signature is refused as
expired anyway. Only verified signatures are stored, so only the tenant key's holder can fill
the cache; when it is full of live entries, new writes are refused (503 replay_cache_full)
rather than let an old signature be forgotten early.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Final, Protocol

# 65,536 live entries: about 110 writes a second for the default 600 s window (±300 s), in
# about 10 MiB.
DEFAULT_MAX_ENTRIES: Final = 65536


class ReplayCacheFull(Exception):
    """Every entry is still live: the claim cannot be recorded."""


class ReplayCache(Protocol):
    def __len__(self) -> int:
        """Live claims (as far as this process knows)."""
        ...

    def seen(self, mac: bytes) -> bool:
        """Whether this signature was already used (a cheap look before the body is read)."""
        ...

    async def claim(self, mac: bytes, until: float) -> bool:
        """Record a use until `until` (Unix seconds); False if it was already used. May raise
        ReplayCacheFull."""
        ...

    async def release(self, mac: bytes) -> None:
        """Forget a claim whose request never reached Nextcloud."""
        ...


class MemoryReplayCache:
    """The per-process ReplayCache: a dict of live claims and a heap of their expiry times."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._until: dict[bytes, float] = {}
        self._expiry: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._until)

    def seen(self, mac: bytes) -> bool:
        until = self._until.get(mac)
        return until is not None and until > self._clock()

    async def claim(self, mac: bytes, until: float) -> bool:
        return self.add(mac, until)

    async def release(self, mac: bytes) -> None:
        self.remove(mac)

    # The index operations (synchronous), which the shared cache applies from its log too.

    def add(self, mac: bytes, until: float) -> bool:
        """Record a live claim; False if one is live already. Raises ReplayCacheFull."""
        self._prune()
        if mac in self._until:
            return False
        if len(self._until) >= self.max_entries:
            raise ReplayCacheFull
        self._until[mac] = until
        heapq.heappush(self._expiry, (until, mac))
        return True

    def remove(self, mac: bytes) -> None:
        self._until.pop(mac, None)  # its heap entry goes when it expires

    def live(self) -> list[tuple[bytes, float]]:
        """The claims still live, (mac, until)."""
        self._prune()
        return list(self._until.items())

    def clear(self) -> None:
        self._until.clear()
        self._expiry.clear()

    def _prune(self) -> None:
        now = self._clock()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            until, mac = heapq.heappop(expiry)
            if self._until.get(mac) == until:
                del self._until[mac]
        # Released entries leave their heap items behind: rebuild once they dominate.
        if len(expiry) > 2 * len(self._until) + 1024:
            self._expiry = [(t, m) for m, t in self._until.items()]
            heapq.heapify(self._expiry)
