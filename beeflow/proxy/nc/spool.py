"""The /nc body spool: the request body read whole before its signature can be checked, hashed
as it arrives, kept in memory up to a small threshold, then in an already-unlinked temp file in
a private 0700 directory; replayed upstream with a known length.

The v2 signature covers sha256(body), so a body must be complete before it may be forwarded.
The temp file has no name from the moment it exists (TemporaryFile: O_TMPFILE, or unlink right
after creation), so neither a crash nor a client abort can leave it behind; closing the
descriptor frees the space. File writes, reads and hashing of large runs happen in worker
threads, one job at a time per spool."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final, TypeVar

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from beeflow.errors import BadRequest, BeeflowError, PayloadTooLarge
from beeflow.proxy.nc.path import loggable_prefix

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bytes gathered before one write+hash job is handed to a worker thread.
FLUSH_BYTES: Final = 1024 * 1024
# Bytes read back per job when replaying the file upstream.
READ_BYTES: Final = 1024 * 1024
# Buffers one writev(2) takes at most (Linux's IOV_MAX).
IOV_MAX: Final = 1024


class SpoolTooLarge(Exception):
    """The body passed the configured limit; the spool has been closed."""


class SpoolWriteError(Exception):
    """Writing the body to its temp file failed (disk full, file size limit, I/O error); the
    spool has been closed. `errno` is the OSError's; `full` tells a full volume apart."""

    FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

    def __init__(self, errno_value: int | None) -> None:
        self.errno = errno_value
        self.full = errno_value in self.FULL
        name = errno.errorcode.get(errno_value or 0, "unknown error")
        super().__init__(name)


class SpoolDir:
    """The private directory spools live in, with a live count for tests and diagnostics."""

    def __init__(self, path: Path, *, owned: bool) -> None:
        self.path = path
        self.owned = owned
        self.active = 0
        self.opened = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Set when any spool of this directory moves to a file (for tests and diagnostics).
        self.file_opened = asyncio.Event()

    @classmethod
    def create(cls, configured: Path | None) -> SpoolDir:
        """`configured` (created 0700 if missing; refused if it is a symlink or another user's;
        tightened to 0700 if open to others), or a fresh private temp directory that close()
        removes again."""
        if configured is None:
            return cls(Path(tempfile.mkdtemp(prefix="beeflow-spool-")), owned=True)
        configured.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = configured.lstat()
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise RuntimeError(f"spool directory {configured} is not a plain directory")
        if info.st_uid != os.getuid():
            raise RuntimeError(f"spool directory {configured} belongs to another user")
        if stat.S_IMODE(info.st_mode) & 0o077:
            configured.chmod(0o700)
        return cls(configured, owned=False)

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)

    def spool(self, *, memory_limit: int, max_bytes: int) -> Spool:
        return Spool(self, memory_limit=memory_limit, max_bytes=max_bytes)

    async def wait_idle(self) -> None:
        """Resolves once no spool is open (every body has been released)."""
        await self._idle.wait()

    def _enter(self) -> None:
        self.active += 1
        self.opened += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.active = max(0, self.active - 1)
        if self.active == 0:
            self._idle.set()


SPOOLS: web.AppKey[SpoolDir] = web.AppKey("nc_proxy_spools")


class Spool:
    """One request body: feed() its chunks, finish(), read `size` and `sha256`, replay it with
    memory_bytes() or read_at(). close() always: idempotent, never blocks, cancellation-safe."""

    def __init__(self, directory: SpoolDir, *, memory_limit: int, max_bytes: int) -> None:
        self._dir = directory
        self._memory_limit = memory_limit
        self._max = max_bytes
        self._hash = hashlib.sha256()
        # The chunks received since the last flush, as they came: kept, not copied into one
        # growing buffer (whose reallocations left about 2 MiB more resident per upload).
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._memory = b""  # the whole body of a finished spool that stayed in memory
        self._file: IO[bytes] | None = None
        self._pending: asyncio.Future[object] | None = None
        self._digest: str | None = None
        self.size = 0
        self.closed = False
        directory._enter()

    @property
    def in_memory(self) -> bool:
        return self._file is None

    @property
    def sha256(self) -> str:
        if self._digest is None:
            raise RuntimeError("spool not finished")
        return self._digest

    async def feed(self, chunk: bytes) -> None:
        """Raises SpoolTooLarge or SpoolWriteError (the spool is closed then)."""
        try:
            await self._feed(chunk)
        except OSError as exc:
            self.close()
            raise SpoolWriteError(exc.errno) from None

    async def finish(self) -> None:
        """Raises SpoolWriteError (the spool is closed then)."""
        try:
            await self._finish()
        except OSError as exc:
            self.close()
            raise SpoolWriteError(exc.errno) from None

    async def _feed(self, chunk: bytes) -> None:
        if self.closed:
            raise RuntimeError("spool closed")
        self.size += len(chunk)
        if self.size > self._max:
            self.close()
            raise SpoolTooLarge
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._file is None:
            if self._buffered <= self._memory_limit:
                return
            self._file = await self._run(self._open_file)
            self._dir.file_opened.set()
        if self._buffered >= FLUSH_BYTES:
            await self._flush()

    async def _finish(self) -> None:
        if self._file is None:
            self._memory = b"".join(self._chunks)
            self._chunks, self._buffered = [], 0
            self._hash.update(self._memory)
        else:
            await self._flush()
            await self._drain()
            await self._run(self._file.flush)
        self._digest = self._hash.hexdigest()

    def memory_bytes(self) -> bytes:
        """The whole body of a spool that stayed in memory."""
        if self._file is not None or self.closed or self._digest is None:
            raise RuntimeError("not a finished in-memory spool")
        return self._memory

    async def read_at(self, offset: int, size: int = READ_BYTES) -> bytes:
        """Up to `size` bytes of the finished body from `offset` (b"" at the end)."""
        if self.closed:
            # The request was abandoned while its body was being replayed upstream.
            raise ConnectionResetError("the spooled body was released")
        file = self._file
        if file is None:
            return self._memory[offset : offset + size]
        fd = file.fileno()
        return await self._run(lambda: os.pread(fd, size, offset))

    def close(self) -> None:
        """Release memory and the file. If a worker thread is still busy with the file, the file
        is closed when that job ends, without waiting for it here."""
        if self.closed:
            return
        self.closed = True
        self._chunks, self._buffered, self._memory = [], 0, b""
        file, self._file = self._file, None
        pending = self._pending
        if pending is not None and not pending.done():
            # A hash+write job may still be running (it is not awaited while the next MiB
            # arrives): the file is closed, and the spool counts as released, when it ends.
            def release(done: asyncio.Future[object]) -> None:
                if not done.cancelled():
                    done.exception()  # retrieved: nobody awaits an abandoned job
                if file is not None:
                    _close_quietly(file)
                self._dir._leave()

            pending.add_done_callback(release)
            return
        if file is not None:
            _close_quietly(file)
        self._dir._leave()

    # -------------------------------------------------------------- internals

    def _open_file(self) -> IO[bytes]:
        return tempfile.TemporaryFile(dir=self._dir.path, prefix="body-")

    async def _flush(self) -> None:
        """Hand the chunks to a worker (hash + one writev) WITHOUT waiting for it: the next MiB
        is received while this one is hashed. At most one job in flight (order kept)."""
        if not self._chunks or self._file is None:
            return
        await self._drain()
        chunks, self._chunks, self._buffered = self._chunks, [], 0  # handed over: no copy
        fd, digest = self._file.fileno(), self._hash

        def job() -> None:
            for chunk in chunks:
                digest.update(chunk)
            _write_all(fd, chunks)

        self._pending = asyncio.get_running_loop().run_in_executor(None, job)

    async def _drain(self) -> None:
        """Wait for the job in flight, if any (its error surfaces here)."""
        pending = self._pending
        if pending is not None:
            try:
                await pending
            finally:
                if self._pending is pending:
                    self._pending = None

    async def _run(self, fn: Callable[[], T]) -> T:
        await self._drain()
        future = asyncio.get_running_loop().run_in_executor(None, fn)
        self._pending = future  # type: ignore[assignment]
        try:
            return await future
        finally:
            if self._pending is future:
                self._pending = None


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Write `chunks` in order with as few writev(2) calls as the kernel allows (a short write
    continues where it stopped). The file's own buffer is never used: reads are pread(2)."""
    views = [memoryview(chunk) for chunk in chunks if chunk]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + IOV_MAX])
        while written:
            head = views[first]
            if written < len(head):
                views[first] = head[written:]
                break
            written -= len(head)
            first += 1


def _close_quietly(file: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        file.close()


class SpoolReplay:
    """A finished spool as an async byte stream for the upstream request (a class, not a
    generator: nothing to finalise when the upload is abandoned half way)."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._offset = 0

    def __aiter__(self) -> SpoolReplay:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._spool.read_at(self._offset)
        if not chunk:
            raise StopAsyncIteration
        self._offset += len(chunk)
        return chunk


# ------------------------------------------------------------------ reading a request body


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The body exceeds {limit} bytes", code="payload_too_large", extra={"limit": limit}
    )


async def read_body(
    request: web.Request,
    spool: Spool,
    limit: int,
    *,
    idle_seconds: float | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Spool the whole body (the v2 signature covers its hash) at constant memory: 413 over
    `limit`, 400 for a malformed body, 408 when no byte arrives for `idle_seconds`, 507/500
    when it cannot be written. `on_bytes(n)` is told of each chunk before it is kept (and may
    refuse it by raising)."""
    try:
        if request.body_exists:
            try:
                await _read_chunks(request.content, spool, idle_seconds, on_bytes)
            except SpoolTooLarge:
                raise too_large(limit) from None
            except (HttpProcessingError, web.RequestPayloadError):
                raise BadRequest(
                    "The request body is malformed or incomplete", code="body_incomplete"
                ) from None
            except TimeoutError:
                raise BadRequest(
                    f"The request body stalled: no byte for {idle_seconds:g} s",
                    code="body_timeout",
                    status=408,
                ) from None
        await spool.finish()
    except SpoolWriteError as exc:
        raise _spool_failed(request, spool, exc) from None


async def _read_chunks(
    reader: StreamReader,
    spool: Spool,
    idle_seconds: float | None,
    on_bytes: Callable[[int], None] | None,
) -> None:
    """The read loop. The idle timer runs only while waiting for the client (one timer moved
    per chunk), never while a chunk is written to the spool."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as timer:
        while True:
            if idle_seconds is not None:
                timer.reschedule(loop.time() + idle_seconds)
            chunk = await reader.readany()
            timer.reschedule(None)
            if not chunk:
                return
            if on_bytes is not None:
                on_bytes(len(chunk))
            await spool.feed(chunk)


def _spool_failed(request: web.Request, spool: Spool, exc: SpoolWriteError) -> BeeflowError:
    """507 when the spool volume is full (ENOSPC, EDQUOT, EFBIG), else 500; logged with the
    errno name and the allow-listed prefix only, never the user's path."""
    log.warning(
        "/nc request body could not be spooled (%s after %d bytes; %s %s...): check the free "
        "space of BEEFLOW_SPOOL_DIR and BEEFLOW_NC_MAX_BODY_BYTES",
        exc,
        spool.size,
        request.method,
        loggable_prefix(request.raw_path),
    )
    if exc.full:
        return BeeflowError(
            "The connector's spool for request bodies is full; retry later or with a smaller body",
            code="spool_full",
            status=507,
        )
    return BeeflowError("The request body could not be spooled", code="spool_failed")
