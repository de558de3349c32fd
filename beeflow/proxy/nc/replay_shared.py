"""The /nc replay cache shared by every replica on one volume (docs/nc-proxy.md, "Replays";
docs/deployments.md, "Replicas on one volume"): a write's signature used on one replica is
refused on all of them.

    cache = SharedReplayCache.open(directory)   (None when the directory is not writable)
    cache.seen(mac); await cache.claim(mac, until); await cache.release(mac)   as ReplayCache

The claims live in an append-only log, `nc-replay.log`, changed only under `flock` on
`nc-replay.log.lock` (the lock convention of beeflow/lease.py, whose `file_lock` also guards
the rewrites): one line per event, `+<until> <mac hex>` for a claim, `-0000000000 <mac hex>`
for a release. Each process keeps an index of the live claims (a MemoryReplayCache) and the
offset it has read to; a claim takes the lock, reads what other replicas appended since,
decides, appends its line and lets go. That is a few system calls on a local file (measured in
tests/proxy/nc/bench_replay.py), never a rewrite of the whole set. When the log has grown to
several times its live claims, the claimant rewrites it with only those (atomically, a new
file); the others notice the new file and read it whole.

The lock is held for microseconds: a claim tries it without blocking, and while another replica
holds it polls the event loop (never a blocked loop, never a thread) for up to LOCK_WAIT
seconds, then answers 503 replay_cache_busy. A process killed mid-line leaves a partial last
line: the next writer ends it first, and the reader skips what does not parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Final

from beeflow.errors import ServiceUnavailable
from beeflow.lease import file_lock
from beeflow.proxy.nc.replay import DEFAULT_MAX_ENTRIES, MemoryReplayCache

log = logging.getLogger(__name__)

LOG_NAME: Final = "nc-replay.log"
LOCK_WAIT: Final = 2.0
_POLL: Final = 0.001
# One line: sign, 10 digits, space, 64 hex digits, newline.
LINE_BYTES: Final = 77
# Rewrite once the log holds this many times its live claims (and at least MIN_COMPACT bytes).
COMPACT_FACTOR: Final = 4
MIN_COMPACT: Final = 1024 * 1024


class ReplayCacheBusy(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__(
            "The shared replay cache is locked by another replica; retry shortly",
            code="replay_cache_busy",
            headers={"Retry-After": "1"},
        )


def _line(sign: str, until: float, mac: bytes) -> bytes:
    return f"{sign}{math.ceil(until):010d} {mac.hex()}\n".encode("ascii")


class SharedReplayCache:
    """A ReplayCache whose claims every process on the volume sees (module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = directory / LOG_NAME
        self.lock_path = directory / (LOG_NAME + ".lock")
        self._clock = clock
        self.index = MemoryReplayCache(max_entries, clock=clock)
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fd = -1
        self._ino = -1
        self._offset = 0
        self.compactions = 0
        self.waits = 0

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> SharedReplayCache | None:
        """The cache in `directory`, or None (logged) when it cannot be used there."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            cache = cls(directory, max_entries=max_entries, clock=clock)
            with cache._locked_blocking():
                cache._sync()
        except OSError as exc:
            log.warning(
                "the /nc replay cache cannot be shared through %s (%s): this process keeps "
                "its own, so a replica that shares the volume would not see its claims",
                directory,
                exc.strerror or type(exc).__name__,
            )
            return None
        return cache

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1

    def __len__(self) -> int:
        return len(self.index)

    # -------------------------------------------------------------- ReplayCache

    def seen(self, mac: bytes) -> bool:
        """A cheap early refusal (from the request head): what the log says now, read without
        the lock (only whole lines are taken); claim() is the one that decides."""
        with contextlib.suppress(OSError):  # claim() will say what is wrong
            self._sync()
        return self.index.seen(mac)

    async def claim(self, mac: bytes, until: float) -> bool:
        async with self._locked():
            self._sync()
            if not self.index.add(mac, until):  # may raise ReplayCacheFull
                return False
            try:
                self._append(_line("+", until, mac))
            except OSError:
                self.index.remove(mac)
                raise
            self._maybe_compact()
            return True

    async def release(self, mac: bytes) -> None:
        async with self._locked():
            self._sync()
            self.index.remove(mac)
            self._append(_line("-", 0, mac))

    # -------------------------------------------------------------- the log

    def _open_log(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._ino = os.fstat(self._fd).st_ino
        self._offset = 0
        self.index.clear()

    def _sync(self) -> None:
        """Apply what was appended since our last look (all of a new file). Under the lock."""
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = -2
        if self._fd < 0 or current != self._ino:
            self._open_log()
        size = os.fstat(self._fd).st_size
        if size <= self._offset:
            return
        data = os.pread(self._fd, size - self._offset, self._offset)
        end = data.rfind(b"\n") + 1
        for raw in data[:end].splitlines():
            self._apply(raw)
        self._offset += end

    def _apply(self, raw: bytes) -> None:
        if len(raw) != LINE_BYTES - 1 or raw[:1] not in (b"+", b"-") or raw[11:12] != b" ":
            return  # a line cut short by a killed writer, or not ours
        try:
            until = int(raw[1:11])
            mac = bytes.fromhex(raw[12:].decode("ascii"))
        except ValueError:
            return
        if raw[:1] == b"-":
            self.index.remove(mac)
        elif until > self._clock():
            with contextlib.suppress(Exception):
                self.index.add(mac, until)

    def _append(self, line: bytes) -> None:
        size = os.fstat(self._fd).st_size
        if size > self._offset:
            # A partial last line of a writer that died mid-write: end it, so ours parses.
            line = b"\n" + line
        os.write(self._fd, line)
        self._offset = size + len(line)

    def _maybe_compact(self) -> None:
        size = self._offset
        if size < MIN_COMPACT or size < COMPACT_FACTOR * LINE_BYTES * max(len(self.index), 1):
            return
        tmp = self.path.with_name(f".{LOG_NAME}.{os.getpid()}")
        body = b"".join(_line("+", until, mac) for mac, until in self.index.live())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self.compactions += 1
        self._open_log()
        self._sync()

    # -------------------------------------------------------------- the lock

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                raise ReplayCacheBusy
            self.waits += 1
            await asyncio.sleep(_POLL)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _locked_blocking(self) -> Iterator[None]:
        """At start, outside any request: the lease helper's blocking lock."""
        with file_lock(self.lock_path):
            yield
