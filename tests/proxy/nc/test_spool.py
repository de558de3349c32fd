"""The body spool alone: memory then file, hashes, replay, limits, release, its directory."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest

from beeflow.proxy.nc.spool import FLUSH_BYTES, Spool, SpoolDir, SpoolTooLarge
from tests.proxy.nc.memory import MIB, entries, mode_of, open_fds_under


@pytest.fixture
def base() -> Path:
    return Path(tempfile.mkdtemp(prefix="spool-t-", dir="/tmp"))


async def _replay(spool: Spool) -> bytes:
    out = bytearray()
    while chunk := await spool.read_at(len(out)):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize(
    "sizes",
    [[], [10], [100, 100], [4096] * 3, [FLUSH_BYTES + 5, 7], [300_000] * 10],
)
@pytest.mark.parametrize("memory_limit", [0, 1024, MIB])
async def test_hash_and_replay(base: Path, sizes: list[int], memory_limit: int) -> None:
    spools = SpoolDir.create(base / "s")
    spool = spools.spool(memory_limit=memory_limit, max_bytes=1 << 40)
    data = b"".join(os.urandom(n) for n in sizes)
    offset = 0
    for n in sizes:
        await spool.feed(data[offset : offset + n])
        offset += n
    await spool.finish()
    assert spool.size == len(data)
    assert spool.sha256 == hashlib.sha256(data).hexdigest()
    assert spool.in_memory == (len(data) <= memory_limit)
    if spool.in_memory:
        assert spool.memory_bytes() == data
    else:
        assert len(open_fds_under(spools.path)) == 1
        assert entries(spools.path) == []  # the file has no name
    assert await _replay(spool) == data
    spool.close()
    spool.close()  # idempotent
    assert open_fds_under(spools.path) == []
    assert spools.active == 0
    with pytest.raises(ConnectionResetError):
        await spool.read_at(0)


async def test_limit(base: Path) -> None:
    spools = SpoolDir.create(base / "s")
    spool = spools.spool(memory_limit=10, max_bytes=100)
    await spool.feed(b"x" * 100)
    with pytest.raises(SpoolTooLarge):
        await spool.feed(b"x")
    assert spool.closed
    assert spools.active == 0
    assert open_fds_under(spools.path) == []


async def test_counts_and_idle(base: Path) -> None:
    spools = SpoolDir.create(base / "s")
    a = spools.spool(memory_limit=0, max_bytes=10)
    b = spools.spool(memory_limit=0, max_bytes=10)
    assert (spools.active, spools.opened) == (2, 2)
    a.close()
    assert spools.active == 1
    b.close()
    await spools.wait_idle()
    assert (spools.active, spools.opened) == (0, 2)


async def test_fresh_directory_is_private_and_removed(base: Path) -> None:
    spools = SpoolDir.create(None)
    try:
        assert mode_of(spools.path) == 0o700
        assert spools.owned
    finally:
        spools.close()
    assert not spools.path.exists()


async def test_configured_directory(base: Path) -> None:
    created = SpoolDir.create(base / "a" / "b")
    assert mode_of(created.path) == 0o700
    created.close()
    assert created.path.exists()  # configured directories are not removed

    loose = base / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    SpoolDir.create(loose)
    assert mode_of(loose) == 0o700

    link = base / "link"
    link.symlink_to(loose)
    with pytest.raises(RuntimeError):
        SpoolDir.create(link)


@pytest.mark.parametrize("limit", [None, 7, 70_000])
async def test_file_writes_continue_after_short_writes(
    base: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    """The chunks of a flush go to the file with writev(2), in order, whole: a short write
    continues where it stopped, and more chunks than one writev takes are split."""
    real = os.writev
    calls: list[int] = []

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        if limit is None:
            return real(fd, buffers)
        return os.write(fd, b"".join(bytes(b) for b in buffers)[:limit])

    monkeypatch.setattr(os, "writev", short_writev)
    spools = SpoolDir.create(base / "s")
    spool = spools.spool(memory_limit=0, max_bytes=1 << 40)
    sizes = [1] * 1500 if limit is None else [100, 0, 5000, 3, 65_536]
    data = os.urandom(sum(sizes))
    offset = 0
    for n in sizes:
        await spool.feed(data[offset : offset + n])
        offset += n
    await spool.finish()
    assert spool.sha256 == hashlib.sha256(data).hexdigest()
    assert await _replay(spool) == data
    assert calls
    assert max(calls) <= 1024
    spool.close()
