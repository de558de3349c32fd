"""Peak resident memory of this process (Linux /proc): the test process hosts the client, the
connector and the fake Nextcloud, so its peak is an upper bound for the connector's."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

MIB = 1024 * 1024


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match, field
    return int(match.group(1))


class PeakRss:
    """`with PeakRss() as peak: ...; peak.growth` = peak RSS during the block minus RSS before
    it, in bytes. Writing 5 to /proc/self/clear_refs resets the kernel's high-water mark."""

    def __enter__(self) -> PeakRss:
        Path("/proc/self/clear_refs").write_text("5")
        self.before = _status_kib("VmRSS") * 1024
        self.growth = 0
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.growth = _status_kib("VmHWM") * 1024 - self.before


def open_fds_under(directory: Path) -> list[str]:
    """Targets of this process's open descriptors inside `directory` (deleted files included)."""
    prefix = str(directory.resolve()) + "/"
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix):
            out.append(target)
    return out


class Blob:
    """A large deterministic body, generated chunk by chunk (never held whole)."""

    def __init__(self, size: int, chunk: int = MIB, seed: bytes = b"beeflow") -> None:
        self.size = size
        self.chunk = chunk
        self._block = hashlib.shake_256(seed).digest(chunk)
        self._sha = ""

    def _chunks(self) -> list[tuple[int, int]]:
        return [(i, min(self.chunk, self.size - i)) for i in range(0, self.size, self.chunk)]

    def piece(self, index: int, length: int) -> bytes:
        return index.to_bytes(8, "big") + self._block[8:length] if length >= 8 else b"x" * length

    @property
    def sha256(self) -> str:
        if not self._sha:
            digest = hashlib.sha256()
            for offset, length in self._chunks():
                digest.update(self.piece(offset, length))
            self._sha = digest.hexdigest()
        return self._sha

    async def stream(self) -> AsyncIterator[bytes]:
        for offset, length in self._chunks():
            yield self.piece(offset, length)


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o7777
