"""The event loop's side of the lease: one holder per lease and process, shared by the work of
the process, waited for while another process holds it, renewed in the background, released by
the last user; the registry and its status; FileWatch."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from beeflow.lease import FileWatch, Lease, LeaseHolder, Leases


def held(holder: LeaseHolder) -> bool:
    """Read through a call: mypy would keep the property narrowed across awaits."""
    return holder.held


def waited(holder: LeaseHolder) -> bool:
    return holder.waited


def other(tmp_path: Path, name: str = "work", ttl: float = 30.0) -> Lease:
    return Lease(tmp_path, name, ttl=ttl, holder="another-replica")


async def test_work_of_one_process_shares_the_tenure(tmp_path: Path) -> None:
    holder = LeaseHolder(Lease(tmp_path, "work", ttl=30, holder="us"))
    async with holder.hold() as first:
        async with holder.hold() as second:
            assert first
            assert second
            assert holder.tenures == 1
            assert not other(tmp_path).try_acquire()
        assert held(holder)  # the outer work still runs under it
        assert not other(tmp_path).try_acquire()
    assert not held(holder)
    assert other(tmp_path).try_acquire()  # the last user gave it up


async def test_without_wait_another_processs_lease_is_reported(tmp_path: Path) -> None:
    theirs = other(tmp_path)
    assert theirs.try_acquire()
    holder = LeaseHolder(Lease(tmp_path, "work", ttl=30, holder="us"))
    assert holder.held_elsewhere()
    async with holder.hold(wait=False) as held:
        assert not held
    assert not await holder.acquire(wait=True, timeout=0.05)
    theirs.release()
    assert not holder.held_elsewhere()


async def test_waiting_ends_when_the_other_releases_and_says_it_waited(tmp_path: Path) -> None:
    theirs = other(tmp_path)
    assert theirs.try_acquire()
    holder = LeaseHolder(Lease(tmp_path, "work", ttl=30, holder="us"), poll=0.01)
    waiting = asyncio.get_running_loop().create_task(holder.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    theirs.release()
    assert await asyncio.wait_for(waiting, 5)
    assert waited(holder)
    holder.release()
    assert await holder.acquire()
    assert not waited(holder)  # free at once this time
    holder.release()


async def test_the_holder_renews_while_work_runs(tmp_path: Path) -> None:
    lease = Lease(tmp_path, "work", ttl=0.3, holder="us")
    holder = LeaseHolder(lease)
    async with holder.hold():
        first = lease.current()
        assert first is not None
        await asyncio.sleep(0.5)  # longer than the TTL: only renewals keep it
        assert lease.held()
        assert not other(tmp_path, ttl=0.3).try_acquire()
        later = lease.current()
        assert later is not None
        assert later.expires_at > first.expires_at
        assert later.generation == first.generation
    assert holder.lost == 0


async def test_a_tenure_lost_to_expiry_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pause longer than the TTL (the renewal could not run): another process took it."""
    lease = Lease(tmp_path, "work", ttl=0.2, holder="us")
    holder = LeaseHolder(lease)
    assert await holder.acquire()
    lease.generation = 999  # as if our tenure ended: renew() fails, as it does after expiry
    await asyncio.sleep(0.3)
    assert holder.lost >= 1
    assert any("expired while this process held it" in r.getMessage() for r in caplog.records)
    await holder.close()


async def test_close_gives_up_a_lease_still_held(tmp_path: Path) -> None:
    leases = Leases(tmp_path / "leases", ttl=30, holder="us")
    leases.prepare()
    assert (tmp_path / "leases").stat().st_mode & 0o777 == 0o700
    holder = leases.get("work")
    assert leases.get("work") is holder
    assert await holder.acquire()
    status = leases.status(True)
    assert status["holder"] == "us"
    assert status["work"] == {"ours": True, "tenures": 1, "lost": 0}
    assert leases.status(False) == {}
    await leases.close()
    assert Lease(tmp_path / "leases", "work", ttl=30, holder="them").try_acquire()
    assert leases.status()["work"]["ours"] is False


async def test_an_unusable_storage_lets_the_work_run_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="beeflow.lease")
    blocker = tmp_path / "file"
    blocker.write_text("")
    holder = Leases(blocker, ttl=30).get("work")  # its directory is a file
    for _ in range(2):
        async with holder.hold() as held:
            assert held
    assert not holder.held_elsewhere()
    errors = [r for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(errors) == 1


def test_a_file_watch_sees_each_change_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    watch = FileWatch(path)
    assert not watch.changed()  # missing, and still missing
    path.write_text("{}")
    assert watch.changed()
    assert not watch.changed()
    # An atomic replacement with the same size within the same clock tick: a new inode.
    tmp = tmp_path / "tmp"
    tmp.write_text("{}")
    keep = tmp_path / "keep"  # keeps the old inode from being reused at once
    os.link(path, keep)
    os.replace(tmp, path)
    assert watch.changed()
    path.write_text('{"a": 1}')
    watch.mark()  # our own write
    assert not watch.changed()
    watch.forget()
    assert watch.changed()
    path.unlink()
    assert watch.changed()
