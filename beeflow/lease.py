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

Every call of Lease and the file helpers is synchronous and short (a lock is held only for one
read-modify-write, never across a network call). The event loop uses them through LeaseHolder
(one per lease and process: shared by the work of the process, renewed in the background, given
up by the last user), Leases (the process's holders, under LEASES) and FileWatch (has a shared
file changed since we last read it?).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
from aiohttp import web

from beeflow.health import provide
from beeflow.tasks import Slot

T = TypeVar("T")
Clock = Callable[[], float]

log = logging.getLogger(__name__)


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
    """The JSON in `path`, or None when it is missing, unreadable or not valid JSON."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
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


# ------------------------------------------------------------------ from the event loop


class LeaseHolder:
    """This process's use of one named lease: taken when the first piece of work needs it (waiting
    while another replica holds it), renewed in the background at a third of the TTL while any
    work of ours runs under it, released when the last one is done. Work of one process shares
    the tenure (phases at one progress level run together under it)."""

    def __init__(self, lease: Lease, *, poll: float | None = None) -> None:
        self.lease = lease
        self.poll = poll if poll is not None else min(1.0, lease.ttl / 10)
        self._users = 0
        self._lock = asyncio.Lock()
        self._renewer = Slot(f"lease-renew:{lease.path.stem}")
        self._broken = False  # the storage refused a lease call: logged once, work goes on
        self.lost = 0  # tenures that ended without our release (expired while we held them)
        self.tenures = 0
        # The last tenure began after another process's: its work may have left what ours
        # was about to do (the caller re-reads the shared state first).
        self.waited = False

    @property
    def name(self) -> str:
        return self.lease.path.stem

    @property
    def held(self) -> bool:
        """Some work of ours runs under the lease now."""
        return self._users > 0

    def held_elsewhere(self) -> bool:
        """Another process holds it now (read from the shared record)."""
        record = self._call(self.lease.current, None)
        return (
            record is not None
            and record.holder != self.lease.holder
            and record.expires_at > self.lease._clock()
        )

    def _call(self, call: Callable[[], T], fallback: T) -> T:
        try:
            return call()
        except OSError as exc:
            if not self._broken:
                self._broken = True
                log.error(
                    "the %s lease cannot be used (%s): replicas sharing this storage may "
                    "repeat its work",
                    self.name,
                    exc.strerror or type(exc).__name__,
                )
            return fallback

    async def acquire(self, *, wait: bool = True, timeout: float | None = None) -> bool:
        """Join our tenure, or take the lease; with `wait`, poll until the holder releases it
        or it expires (at most `timeout`). False: another replica holds it."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self._lock:
            if self._users:
                self._users += 1
                return True
            waited = False
            while not self._call(self.lease.try_acquire, True):
                if not wait or (deadline is not None and loop.time() >= deadline):
                    return False
                waited = True
                await asyncio.sleep(self.poll)
            self._users = 1
            self.waited = waited
            self.tenures += 1
            self._renewer.cancel()
            self._renewer.start(self._renew())
            return True

    def release(self) -> None:
        """Our work under the lease is done; the last one gives the lease up."""
        if self._users <= 0:
            return
        self._users -= 1
        if self._users == 0:
            self._renewer.cancel()
            self._call(self.lease.release, None)

    @contextlib.asynccontextmanager
    async def hold(self, *, wait: bool = True) -> AsyncIterator[bool]:
        """`async with holder.hold() as held:` the block runs as the holder (held True), or,
        without `wait`, learns that another replica holds it (held False)."""
        held = await self.acquire(wait=wait)
        try:
            yield held
        finally:
            if held:
                self.release()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease.ttl / 3)
            if not self._call(self.lease.renew, True):
                self.lost += 1
                log.warning(
                    "the %s lease expired while this process held it (a pause longer than "
                    "%g s?): another replica may take over its work",
                    self.name,
                    self.lease.ttl,
                )
                # Take it back if nobody did; otherwise the work checks held() itself.
                self._call(self.lease.try_acquire, False)

    async def close(self) -> None:
        await self._renewer.close()
        if self._users:
            self._users = 0
            self._call(self.lease.release, None)


class Leases:
    """The named leases of one process (one holder identity) in one shared directory."""

    def __init__(self, directory: Path, *, ttl: float, holder: str | None = None) -> None:
        self.directory = directory
        self.ttl = ttl
        self.holder = holder or default_holder()
        self._holders: dict[str, LeaseHolder] = {}

    def get(self, name: str) -> LeaseHolder:
        holder = self._holders.get(name)
        if holder is None:
            holder = LeaseHolder(Lease(self.directory, name, ttl=self.ttl, holder=self.holder))
            self._holders[name] = holder
        return holder

    def prepare(self) -> None:
        """Create the directory (0700); a failure is logged by the first lease call."""
        with contextlib.suppress(OSError):
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def status(self, trusted: bool = True) -> dict[str, Any]:
        """Health fields (no I/O): who we are and, per lease, whether we hold it now, how many
        tenures we had and how many ran out under us. Details only for trusted callers."""
        if not trusted:
            return {}
        return {
            "holder": self.holder,
            **{
                name: {"ours": h.held, "tenures": h.tenures, "lost": h.lost}
                for name, h in sorted(self._holders.items())
            },
        }

    async def close(self) -> None:
        for holder in self._holders.values():
            await holder.close()


LEASES: web.AppKey[Leases] = web.AppKey("leases")


class FileWatch:
    """Whether a shared file changed since we last looked: its inode, size and modification
    time (an atomic rename gives a new inode, so a rewrite is seen even within one clock tick).
    One stat() per look, about a microsecond; the file is read only when it changed."""

    __slots__ = ("_seen", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        """True once per change (a file appearing or disappearing included)."""
        now = self._signature()
        if now == self._seen:
            return False
        self._seen = now
        return True

    def mark(self) -> None:
        """Take the file as it is now as seen (after our own write)."""
        self._seen = self._signature()

    def forget(self) -> None:
        """The next look reports a change (a change we could not apply yet)."""
        self._seen = (-1, -1, -1)


LEASE_DIR = "leases"


def install(app: web.Application, storage: Path, ttl: float) -> Leases:
    """The process's leases under LEASES, in `<storage>/leases/`: the directory is made at
    start-up, every lease still ours is released at shutdown (after the work using it)."""
    leases = app[LEASES] = Leases(storage / LEASE_DIR, ttl=ttl)
    provide(app, "leases", leases.status)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(leases.prepare)
        yield
        await leases.close()

    app.cleanup_ctx.append(ctx)
    return leases
