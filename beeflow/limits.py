"""Every limiter in one place: per-key fixed windows (requests, failures), a minimum interval
(one warning a minute), and a token bucket (log lines of a child process)."""

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
    (the oldest forgotten first) so key churn cannot grow memory without bound. `hit` bills
    every call, `penalise` bills failures only."""

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


@attrs.define
class Interval:
    """At most one event per `seconds` (a flood of the same warning must not flood the log)."""

    seconds: float = 60.0
    last: float = -1e18

    def ready(self) -> bool:
        """True, and the interval starts again, when the last event is `seconds` old."""
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last = now
            return True
        return False


class TokenBucket:
    """`capacity` events at once, refilled at `per_second`; `refused` counts what it refused
    since the owner last reset it (to say how many log lines were left out)."""

    def __init__(self, capacity: int = 40, per_second: float = 0.5) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self._tokens = float(capacity)
        self._stamp = time.monotonic()
        self.refused = 0

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.refused += 1
        return False
