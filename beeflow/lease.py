"""Coordination between connector processes that share one directory (replicas on one
ReadWriteOnce volume, all on one node): a lease for work only one of them may do at a time, and
locked read-modify-write of small shared JSON files (docs/deployments.md).

Both rest on `flock(2)` on a lock file beside the data. flock is per open file description and
released by the kernel when the holder dies, SIGKILL included, so a killed process never leaves a
lock behind; it works between containers that share the volume on one node (one kernel), not
across nodes or on NFS. A lock is held only for the few microseconds of one update, never while
waiting for a network call.

A lease is a record (holder, generation, expiry) updated under that lock: taken when free,
expired or already ours, renewed by its holder before it expires, released on a clean stop. A
killed holder stops renewing and its lease expires after `ttl`; a hung one too, so work guarded by
a lease must check `held()` (or compare `generation`) before its side effects, and stop when it
is lost. The expiry uses the wall clock, which every process on the node shares.

Every call here is synchronous and short; from the event loop, call it through
`asyncio.to_thread` where a blocked lock would matter.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

Clock = Callable[[], float]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, mode 0600, if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or not valid JSON."""
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def write_json(path: Path, value: Any) -> None:
    """Replace `path` with `value` as JSON, atomically, mode 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def update_json(path: Path, change: Callable[[Any], Any]) -> Any:
    """Read `path` (None if missing or unreadable), write `change(value)` back and return it, with
    no other process's update in between (the lock file is `path` + ".lock")."""
    with file_lock(path.with_name(path.name + ".lock")):
        value = change(read_json(path))
        write_json(path, value)
        return value


def default_holder() -> str:
    """This process, recognisably: host (the pod's name), pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@attrs.frozen
class LeaseRecord:
    holder: str
    generation: int  # one more at each new holder: a fencing token
    expires_at: float

    @classmethod
    def parse(cls, raw: Any) -> LeaseRecord | None:
        if not isinstance(raw, dict):
            return None
        holder, generation, expires = raw.get("holder"), raw.get("generation"), raw.get("expires")
        if not isinstance(holder, str) or not isinstance(generation, int):
            return None
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            return None
        return cls(holder, generation, float(expires))

    def to_json(self) -> dict[str, Any]:
        return {"holder": self.holder, "generation": self.generation, "expires": self.expires_at}


class Lease:
    """One named lease in a shared directory (`<name>.lease`, locked through `<name>.lock`)."""

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        ttl: float,
        holder: str | None = None,
        clock: Clock = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.path = directory / f"{name}.lease"
        self._lock = directory / f"{name}.lock"
        self.ttl = ttl
        self.holder = holder or default_holder()
        self._clock = clock
        self.generation: int | None = None  # of our tenure, while we hold it

    def current(self) -> LeaseRecord | None:
        """The lease as recorded (whoever holds it, expired or not)."""
        return LeaseRecord.parse(read_json(self.path))

    def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or ours (then renew it). True if we hold it."""
        with file_lock(self._lock):
            now = self._clock()
            record = self.current()
            if record is not None and record.holder != self.holder and record.expires_at > now:
                self.generation = None
                return False
            if record is not None and record.holder == self.holder and record.expires_at > now:
                generation = record.generation
            else:
                generation = (record.generation if record is not None else 0) + 1
            write_json(self.path, LeaseRecord(self.holder, generation, now + self.ttl).to_json())
            self.generation = generation
            return True

    def renew(self) -> bool:
        """Extend our lease; False (and we no longer hold it) if it expired or changed hands."""
        with file_lock(self._lock):
            now = self._clock()
            record = self.current()
            if (
                record is None
                or record.holder != self.holder
                or record.generation != self.generation
                or record.expires_at <= now
            ):
                self.generation = None
                return False
            write_json(self.path, attrs.evolve(record, expires_at=now + self.ttl).to_json())
            return True

    def held(self) -> bool:
        """Whether we hold it now (read from the shared record, not remembered)."""
        record = self.current()
        return (
            record is not None
            and record.holder == self.holder
            and record.generation == self.generation
            and record.expires_at > self._clock()
        )

    def release(self) -> None:
        """Give it up at once (a clean stop), if it is still ours."""
        with file_lock(self._lock):
            record = self.current()
            if record is not None and record.holder == self.holder:
                write_json(self.path, attrs.evolve(record, expires_at=0.0).to_json())
        self.generation = None
