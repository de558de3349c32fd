"""Small JSON state files in APP_PERSISTENT_STORAGE: atomic 0600 writes, corrupt files moved aside.

Pure file I/O (blocking); callers on the event loop run these through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from beeflow.tasks import running, spawn

log = logging.getLogger(__name__)

WRITE_TASK_PREFIX: Final = "state-write:"

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700


class StoreError(Exception):
    """A state file could not be written; `reason` is short and safe to show an admin."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"could not write {path.name}: {reason}")


def describe_os_error(exc: OSError) -> str:
    """A plain reason for the usual storage failures (no paths beyond the file name)."""
    if exc.errno == errno.EROFS:
        return "the storage is mounted read-only"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the storage is full"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "the storage path is not a directory"
    return exc.strerror or type(exc).__name__


def write_json_atomic(path: Path, data: Any) -> None:
    """Temp file in the same directory, 0600 from the start, fsync, rename over, fsync the dir.
    A reader sees the old file or the new one, never a torn one. Raises StoreError."""
    text = json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    write_text_atomic(path, (text,))


def write_text_atomic(path: Path, chunks: Iterable[str]) -> None:
    """write_json_atomic for a document written piece by piece (a large one need not be built
    whole in memory first). Raises StoreError."""
    directory = path.parent
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StoreError(path, describe_os_error(exc)) from None
    tmp = Path(tmp_name)
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                fd = -1
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            if fd >= 0:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(path, describe_os_error(exc)) from None
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is done regardless
    finally:
        os.close(dir_fd)


STORAGE_REMEDY: Final = (
    "APP_PERSISTENT_STORAGE must be a writable directory that survives updates (AppAPI mounts "
    "the app's volume, nc_app_<appid>_data, there): it keeps the tenant key, the count of "
    "refused AppAPI logins and the setup choice. Mount the volume, or point the variable at a "
    "writable directory."
)


def check_directory(directory: Path) -> str | None:
    """Make `directory` if it is missing (0700) and prove it takes a file: written, fsynced,
    removed. None when usable, else why not (short, safe to show). Blocking."""
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except FileExistsError:
        return "it exists and is not a directory"
    except OSError as exc:
        return f"it cannot be created ({describe_os_error(exc)})"
    if not directory.is_dir():
        return "it is not a directory"
    return write_probe(directory)


def probe_creatable(directory: Path) -> str | None:
    """For a `directory` that does not exist: whether check_directory could make it, found
    without leaving anything behind (a scratch directory is made and removed in the nearest
    existing ancestor). None when it could, else why not. Blocking."""
    ancestor = directory
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            return "no part of its path exists"
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a directory"
    try:
        scratch = tempfile.mkdtemp(prefix=".beeflow-probe-", dir=ancestor)
    except OSError as exc:
        return f"it cannot be created in {ancestor} ({describe_os_error(exc)})"
    os.rmdir(scratch)
    return None


def write_probe(directory: Path) -> str | None:
    """None when a file can be written, fsynced and removed in `directory`, else why not."""
    try:
        fd, name = tempfile.mkstemp(prefix=".beeflow-probe-", dir=directory)
    except OSError as exc:
        return f"no file can be written in it ({describe_os_error(exc)})"
    try:
        os.write(fd, b"beeflow")
        os.fsync(fd)
    except OSError as exc:
        return f"no file can be written in it ({describe_os_error(exc)})"
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
    return None


class Unusable:
    """read_json's answer for a file that exists but cannot be used (it was moved aside)."""

    def __init__(self, reason: str, moved_to: Path | None) -> None:
        self.reason = reason
        self.moved_to = moved_to


def read_json(path: Path) -> Any | Unusable | None:
    """The parsed file; None if it does not exist; Unusable (after moving it aside, logged
    once) if it cannot be read or is not JSON."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _set_aside(path, f"unreadable ({describe_os_error(exc)})")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return _set_aside(path, "not valid JSON")


def set_aside(path: Path, reason: str) -> Unusable:
    """Move a file whose content is unusable out of the way (never delete it), log once."""
    return _set_aside(path, reason)


def _set_aside(path: Path, reason: str) -> Unusable:
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{n}")
    try:
        os.replace(path, target)
    except OSError as exc:
        log.error(
            "%s is %s and could not be moved aside (%s); ignoring it",
            path.name,
            reason,
            describe_os_error(exc),
        )
        return Unusable(reason, None)
    log.error("%s is %s; moved it to %s and ignoring it", path.name, reason, target.name)
    return Unusable(reason, target)


def remove(path: Path) -> None:
    """Delete a state file if present; a failure is logged, not raised (stale files are read
    back as stale state, which every reader tolerates)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not remove %s: %s", path.name, describe_os_error(exc))


# ------------------------------------------------------------------ from the event loop


async def _write(path: Path, data: Any) -> StoreError | None:
    try:
        await asyncio.to_thread(write_json_atomic, path, data)
    except StoreError as exc:
        return exc
    return None


async def write_json(path: Path, data: Any) -> None:
    """write_json_atomic in a worker thread, as a task of its own: cancelling the caller does not
    abandon a half-done write (settle() waits for it at shutdown). Raises StoreError."""
    task = spawn(_write(path, data), name=WRITE_TASK_PREFIX + path.name)
    error = await asyncio.shield(task)
    if error is not None:
        raise error


async def write_text(path: Path, chunks: Iterable[str]) -> None:
    """write_text_atomic the same way (the chunks are produced in the worker thread: they must
    not depend on state the event loop changes meanwhile). Raises StoreError."""

    async def write() -> StoreError | None:
        try:
            await asyncio.to_thread(write_text_atomic, path, chunks)
        except StoreError as exc:
            return exc
        return None

    task = spawn(write(), name=WRITE_TASK_PREFIX + path.name)
    error = await asyncio.shield(task)
    if error is not None:
        raise error


async def settle(timeout: float = 5.0) -> None:
    """Wait for state writes still in flight (shutdown: the storage may be removed next)."""
    pending = running(WRITE_TASK_PREFIX)
    if pending:
        await asyncio.wait(pending, timeout=timeout)
