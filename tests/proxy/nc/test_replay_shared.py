"""The /nc replay cache shared through the volume (beeflow/proxy/nc/replay_shared.py): two
connectors on one storage directory refuse each other's used signatures (before, each process
kept its own: a signed DELETE ran once per replica), and the log's own rules (locking, rewrites,
a writer killed mid-line, a volume that cannot be written)."""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from beeflow.proxy.nc import replay_shared
from beeflow.proxy.nc.replay import DEFAULT_MAX_ENTRIES, ReplayCacheFull
from beeflow.proxy.nc.replay_shared import LOG_NAME, ReplayCacheBusy, SharedReplayCache
from beeflow.proxy.nc.signatures import GUARD
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import RunningConnector
from tests.proxy.nc.caller import NcCaller, outcome

DAV = "/nc/remote.php/dav/files/alice"
MAC_A = bytes(range(32))
MAC_B = bytes(range(1, 33))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="replay-") as name:
        yield Path(name)


def _cache(
    directory: Path, now: list[float] | None = None, *, max_entries: int = DEFAULT_MAX_ENTRIES
) -> SharedReplayCache:
    clock = time.time if now is None else (lambda: now[0])
    cache = SharedReplayCache.open(directory, max_entries=max_entries, clock=clock)
    assert cache is not None
    return cache


# ------------------------------------------------------------------ two replicas


@pytest.fixture
async def replicas(
    connector_factory: ConnectorFactory, spool_dir: Path
) -> tuple[RunningConnector, RunningConnector]:
    """Two connectors on the same persistent storage (the fixture's), each on its socket."""
    first = await connector_factory(BEEFLOW_SPOOL_DIR=str(spool_dir))
    second = await connector_factory(BEEFLOW_SPOOL_DIR=str(spool_dir.with_name("spool2")))
    return first, second


async def test_a_signed_delete_runs_once_across_replicas(
    replicas: tuple[RunningConnector, RunningConnector],
    session: aiohttp.ClientSession,
    dav: FakeDav,
) -> None:
    first, second = replicas
    for conn in replicas:
        assert isinstance(conn.app[GUARD].replays, SharedReplayCache)
    (dav.root / "alice" / "d.txt").write_bytes(b"d")
    caller = NcCaller(session, first.url)
    hdrs = caller.headers("DELETE", f"{DAV}/d.txt")
    resp = await session.delete(caller.url(f"{DAV}/d.txt"), headers=hdrs)
    assert (await outcome(resp))[0] == 204
    (dav.root / "alice" / "d.txt").write_bytes(b"again")
    other = NcCaller(session, second.url)
    resp = await session.delete(other.url(f"{DAV}/d.txt"), headers=hdrs)
    assert await outcome(resp) == (401, "signature_replayed")
    assert (dav.root / "alice" / "d.txt").read_bytes() == b"again"
    assert sum(1 for r in dav.seen if r.method == "DELETE") == 1


async def test_a_replayed_upload_is_refused_on_the_other_replica_before_its_body(
    replicas: tuple[RunningConnector, RunningConnector],
    session: aiohttp.ClientSession,
    dav: FakeDav,
) -> None:
    first, second = replicas
    body = b"u" * 200_000
    caller = NcCaller(session, first.url)
    hdrs = caller.headers("PUT", f"{DAV}/u.bin", body=body)
    resp = await session.put(caller.url(f"{DAV}/u.bin"), headers=hdrs, data=body)
    assert (await outcome(resp))[0] == 201
    hdrs["Expect"] = "100-continue"
    other = NcCaller(session, second.url)
    resp = await session.put(other.url(f"{DAV}/u.bin"), headers=hdrs, data=body)
    assert await outcome(resp) == (401, "signature_replayed")
    assert sum(1 for r in dav.seen if r.method == "PUT") == 1


# ------------------------------------------------------------------ the log


async def test_claims_and_releases_are_seen_by_the_other_process(shared_dir: Path) -> None:
    now = [1000.0]
    a, b = _cache(shared_dir, now), _cache(shared_dir, now)
    assert await a.claim(MAC_A, 1100.0)
    assert b.seen(MAC_A)
    assert not await b.claim(MAC_A, 1100.0)
    await a.release(MAC_A)
    assert not b.seen(MAC_A)
    assert await b.claim(MAC_A, 1100.0)
    assert not await a.claim(MAC_A, 1100.0)
    now[0] = 1100.0  # its window has passed: the signature is expired anyway
    assert await a.claim(MAC_A, 1200.0)
    assert (shared_dir / LOG_NAME).stat().st_mode & 0o777 == 0o600


async def test_a_new_process_reads_what_is_live(shared_dir: Path) -> None:
    now = [1000.0]
    a = _cache(shared_dir, now)
    assert await a.claim(MAC_A, 1100.0)
    assert await a.claim(MAC_B, 1001.0)
    now[0] = 1050.0
    late = _cache(shared_dir, now)
    assert late.seen(MAC_A)
    assert not late.seen(MAC_B)
    assert len(late) == 1


async def test_the_log_is_rewritten_with_only_the_live_claims(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_shared, "MIN_COMPACT", 4096)
    now = [1000.0]
    a, b = _cache(shared_dir, now), _cache(shared_dir, now)
    keep = b"\x07" * 32
    assert await a.claim(keep, 5000.0)
    for i in range(200):
        mac = i.to_bytes(32, "big")
        assert await a.claim(mac, 1000.5 + i / 1000)
        await a.release(mac)
    assert a.compactions >= 1
    assert (shared_dir / LOG_NAME).stat().st_size < 4096 + 200
    # The other process notices the new file, reads it whole, and still sees what is live.
    assert b.seen(keep)
    assert not await b.claim(keep, 5000.0)
    assert await b.claim(MAC_B, 5000.0)
    assert a.seen(MAC_B)


async def test_a_line_cut_short_by_a_killed_writer_is_skipped_and_ended(shared_dir: Path) -> None:
    now = [1000.0]
    a = _cache(shared_dir, now)
    with (shared_dir / LOG_NAME).open("ab") as fh:
        fh.write(b"+0000009999 0123")  # the rest never written
    assert await a.claim(MAC_A, 1100.0)
    b = _cache(shared_dir, now)
    assert b.seen(MAC_A)
    assert len(b) == 1


async def test_garbage_in_the_log_is_ignored(shared_dir: Path) -> None:
    (shared_dir / LOG_NAME).write_bytes(b"hello\n+abcdefghij " + b"zz" * 32 + b"\n")
    now = [1000.0]
    a = _cache(shared_dir, now)
    assert len(a) == 0
    assert await a.claim(MAC_A, 1100.0)


async def test_a_lock_held_elsewhere_is_waited_for_then_503(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_shared, "LOCK_WAIT", 0.05)
    a = _cache(shared_dir)
    fd = os.open(shared_dir / (LOG_NAME + ".lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ReplayCacheBusy):
            await a.claim(MAC_A, 2e9)
        assert a.waits > 0
    finally:
        os.close(fd)
    assert await a.claim(MAC_A, 2e9)


async def test_full_fails_closed(shared_dir: Path) -> None:
    now = [1000.0]
    a = _cache(shared_dir, now, max_entries=1)
    assert await a.claim(MAC_A, 1100.0)
    with pytest.raises(ReplayCacheFull):
        await a.claim(MAC_B, 1100.0)


def test_a_volume_that_cannot_hold_it_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    assert SharedReplayCache.open(Path("/proc/self/no-such-dir")) is None
    assert "cannot be shared" in caplog.text
