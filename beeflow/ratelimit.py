"""In-memory fixed-window limiters: `hit` bills every call, `penalise` bills failures only."""

from __future__ import annotations

import time
from collections import OrderedDict

import attrs


@attrs.define
class _Window:
    start: float
    count: int = 0


@attrs.define
class RateLimiter:
    """`limit` events per `window` seconds per key; at most `max_keys` keys are remembered
    (the oldest forgotten first) so key churn cannot grow memory without bound."""

    limit: int
    window: float
    max_keys: int = 10_000
    _windows: OrderedDict[str, _Window] = attrs.field(factory=OrderedDict)

    def _current(self, key: str, now: float) -> _Window:
        win = self._windows.get(key)
        if win is None or now - win.start >= self.window:
            win = _Window(start=now)
            self._windows[key] = win
        self._windows.move_to_end(key)
        while len(self._windows) > self.max_keys:
            self._windows.popitem(last=False)
        return win

    def hit(self, key: str = "") -> bool:
        """Bill one event; True if it is within the limit."""
        win = self._current(key, time.monotonic())
        win.count += 1
        return win.count <= self.limit

    def blocked(self, key: str = "") -> bool:
        win = self._windows.get(key)
        if win is None or time.monotonic() - win.start >= self.window:
            return False
        return win.count >= self.limit

    def penalise(self, key: str = "") -> bool:
        """Bill one failure; True while still within the limit."""
        return self.hit(key)

    def clear(self, key: str = "") -> None:
        self._windows.pop(key, None)

    def retry_after(self, key: str = "") -> int:
        win = self._windows.get(key)
        if win is None:
            return 0
        return max(1, int(self.window - (time.monotonic() - win.start) + 0.999))
