"""Starting one frpc process: where its config lives (it holds the shared key) and a child that
dies with us (docs/transports.md, "Tied to its parent" and "frpc.toml")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import tomli_w

from beeflow.transports.frpc.config import CONFIG_NAME, write_config

log = logging.getLogger(__name__)

CHILD: Final = Path(__file__).with_name("child.py")
# A private directory of ours in the temporary directory, when no in-memory file can be had:
# the pid in its name lets a later run remove it once we are gone.
_DIR_PREFIX: Final = "beeflow-frpc-"


class RenderedConfig:
    """frpc.toml where frpc can read it and nothing outlives the processes that use it.

    By default an anonymous in-memory file (memfd): frpc opens it as /proc/self/fd/N (it reads
    its config twice, so a pipe would not do), and it is gone once we and frpc have closed it,
    even after a SIGKILL: the shared key never lies in a file system. With a directory
    configured (BEEFLOW_FRPC_CONFIG_DIR), the file there, mode 0600, replaced atomically. Where
    memfd is missing, a private directory in the temporary directory."""

    def __init__(self, path: Path, *, fd: int | None = None, own_dir: Path | None = None) -> None:
        self.path = path  # what frpc is given after -c
        self.fd = fd  # the memfd frpc inherits, if any
        self._own_dir = own_dir

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return () if self.fd is None else (self.fd,)

    @classmethod
    def create(cls, document: dict[str, Any], directory: Path | None) -> RenderedConfig:
        if directory is not None:
            remove_stale_files(directory)
            return cls(write_config(document, directory))
        memfd = _memfd(tomli_w.dumps(document).encode())
        if memfd is not None:
            return cls(Path(f"/proc/self/fd/{memfd}"), fd=memfd)
        root = Path(tempfile.gettempdir())
        remove_stale_dirs(root)
        own = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-", dir=root))
        return cls(write_config(document, own), own_dir=own)

    def close(self) -> None:
        """Forget the config: close the memfd, or remove the file (and our directory)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None


def _memfd(data: bytes) -> int | None:
    """An anonymous 0600 file holding `data` that a child can open as /proc/self/fd/N."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        return None
    try:
        fd: int = create(CONFIG_NAME, os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        if not os.path.exists(f"/proc/self/fd/{fd}"):  # no procfs: frpc could not open it
            raise OSError("no /proc/self/fd")
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_files(directory: Path) -> None:
    """A killed run's frpc.toml (and a half-written one) in the configured directory."""
    for path in (directory / CONFIG_NAME, *directory.glob(".frpc-*.toml")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            log.info("removed %s left by an earlier run", path)


def remove_stale_dirs(root: Path) -> None:
    """Our private config directories whose process is gone (killed before it could clean
    up). Only ours (same owner, our naming), only when their pid no longer runs."""
    uid = os.getuid()
    for path in root.glob(f"{_DIR_PREFIX}*-*"):
        pid_text = path.name[len(_DIR_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            info = path.lstat()
        except OSError:
            continue
        if info.st_uid != uid or not stat.S_ISDIR(info.st_mode) or _alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s left by an earlier run", path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def start_frpc(
    binary: str, config: RenderedConfig, *, on_warning: Callable[[str], None] | None = None
) -> asyncio.subprocess.Process:
    """Start `binary -c <config>` in its own session (a Ctrl-C on our terminal must not kill
    the tunnel before our requests drained), set to die with this process. Raises OSError
    when frpc cannot be executed, like create_subprocess_exec does for a direct start."""
    read_end, write_end = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            str(CHILD),
            str(os.getpid()),
            str(write_end),
            binary,
            "-c",
            str(config.path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(write_end, *config.pass_fds),
        )
    finally:
        os.close(write_end)
    try:
        report = await _read_all(read_end)
    finally:
        os.close(read_end)
    for line in report.decode(errors="replace").splitlines():
        if line.startswith("exec "):
            await proc.wait()
            errno = int(line.split()[1] or 0)
            raise OSError(errno, os.strerror(errno) if errno else "cannot execute")
        if line == "nopdeathsig" and on_warning is not None:
            on_warning("frpc cannot be tied to this process (no prctl): it may outlive a kill")
    return proc


async def _read_all(fd: int) -> bytes:
    """Everything until end of file, without blocking the loop (a few bytes, or none)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            chunks.append(data)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)
