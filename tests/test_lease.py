"""The lease and the locked shared-file updates, between objects and between real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beeflow.lease import Lease, LeaseRecord, update_json
from tests.procs import REPO


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def generation(lease: Lease) -> int | None:
    """Read through a call: mypy would keep an attribute narrowed across the lease's calls."""
    return lease.generation


def test_one_holder_at_a_time_and_release_hands_over(tmp_path: Path) -> None:
    clock = Clock()
    a = Lease(tmp_path, "bootstrap", ttl=10, holder="a", clock=clock)
    b = Lease(tmp_path, "bootstrap", ttl=10, holder="b", clock=clock)
    assert a.try_acquire()
    assert a.generation == 1
    assert not b.try_acquire()
    assert generation(b) is None
    assert a.held()
    assert not b.held()
    assert a.try_acquire()  # ours: renewed, same tenure
    assert a.generation == 1
    a.release()
    assert not a.held()
    assert b.try_acquire()
    assert b.generation == 2
    assert stat.S_IMODE((tmp_path / "bootstrap.lease").stat().st_mode) == 0o600


def test_a_holder_that_stops_renewing_loses_it_at_expiry(tmp_path: Path) -> None:
    clock = Clock()
    a = Lease(tmp_path, "sync", ttl=10, holder="a", clock=clock)
    b = Lease(tmp_path, "sync", ttl=10, holder="b", clock=clock)
    assert a.try_acquire()
    clock.now += 9
    assert a.renew()  # expires at 1019 now
    clock.now += 9.9
    assert not b.try_acquire()
    clock.now += 0.2
    assert not a.held()
    assert b.try_acquire()
    assert b.generation == 2
    # The old holder, waking up, finds it gone and must stop: renew says so.
    assert not a.renew()
    assert generation(a) is None
    assert not a.try_acquire()
    record = b.current()
    assert record == LeaseRecord("b", 2, clock.now + 10)


def test_a_broken_record_counts_as_free(tmp_path: Path) -> None:
    (tmp_path / "x.lease").write_text("{not json")
    lease = Lease(tmp_path, "x", ttl=1, holder="a", clock=Clock())
    assert lease.current() is None
    assert lease.try_acquire()
    assert lease.generation == 1
    with pytest.raises(ValueError, match="ttl must be positive"):
        Lease(tmp_path, "x", ttl=0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["take", "renew", "give"]),
                          st.floats(0, 4)), max_size=30))  # fmt: skip
def test_never_two_holders_at_once(steps: list[tuple[str, str, float]]) -> None:
    """Whatever the interleaving, at most one lease object believes it holds the lease at any
    time, and each new tenure has a larger generation."""
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        leases = {h: Lease(Path(tmp), "l", ttl=3, holder=h, clock=clock) for h in "abc"}
        last_generation = 0
        for holder, action, wait in steps:
            clock.now += wait
            lease = leases[holder]
            if action == "take":
                lease.try_acquire()
            elif action == "renew":
                lease.renew()
            else:
                lease.release()
            holding = [h for h, lease in leases.items() if lease.held()]
            assert len(holding) <= 1, holding
            if holding:
                generation = leases[holding[0]].generation
                assert generation is not None
                assert generation >= last_generation
                last_generation = generation


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from beeflow.lease import Lease
    lease = Lease(Path(sys.argv[1]), "bootstrap", ttl=float(sys.argv[2]), holder="killed")
    assert lease.try_acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


async def test_a_killed_holder_is_replaced_within_the_ttl(tmp_path: Path) -> None:
    ttl = 0.5
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(tmp_path),
        str(ttl),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"held\n"
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    successor = Lease(tmp_path, "bootstrap", ttl=ttl, holder="successor")
    assert not successor.try_acquire()  # still within the killed holder's term
    record = successor.current()
    assert record is not None
    # The term is wall-clock time: nothing announces its end.
    await asyncio.sleep(max(0.0, record.expires_at - time.time()) + 0.01)
    assert successor.try_acquire()
    assert successor.generation == 2


COUNTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from beeflow.lease import update_json
    for _ in range(int(sys.argv[2])):
        update_json(Path(sys.argv[1]), lambda v: {"n": (v or {"n": 0})["n"] + 1})
    """
)


async def test_locked_updates_from_several_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "counter.json"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            COUNTER,
            str(path),
            "150",
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for _ in range(4)
    ]
    assert [await p.wait() for p in procs] == [0, 0, 0, 0]
    assert json.loads(path.read_text()) == {"n": 600}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["counter.json", "counter.json.lock"]


def test_update_json_starts_from_none_and_survives_garbage(tmp_path: Path) -> None:
    path = tmp_path / "seen.json"
    assert update_json(path, lambda v: [v]) == [None]
    path.write_text("garbage")
    assert update_json(path, lambda v: {"was": v}) == {"was": None}
