"""The frpc supervisor against the stand-in frpc (a real child process) and a fake frps: the
tunnel's life, restarts with backoff, the bounded log, stopping, the status snapshot."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from beeflow.config import Config
from beeflow.limits import TokenBucket
from beeflow.transports.frpc.binary import FrpcError
from beeflow.transports.frpc.diagnose import CONNECTED, EXITED, RETRYING, STARTING
from beeflow.transports.frpc.supervisor import FrpcSupervisor
from tests.fakes.frp import FakeFrps, events, free_port, pid_alive
from tests.transports.conftest import SHARED_KEY
from tests.transports.frpc.conftest import rendered_configs, start, until


async def test_connects_tunnels_and_stops_by_term(
    make_harp_config: Callable[..., Config],
    unix_app: Path,
    frps: FakeFrps,
    record: Path,
    supervisors: list[FrpcSupervisor],
) -> None:
    config = make_harp_config()
    sup = await start(supervisors, config, unix_app)
    await until(sup, lambda: sup.tunnel.state == CONNECTED and sup.version is not None)
    status = sup.status()
    assert status["running"] is True
    assert status["pid"] == events(record, "start")[0]["pid"]
    assert status["restarts"] == 0
    assert status["logins"] == 1
    assert status["connected_since"] is not None
    assert status["frpc_version"] == "0.61.1"
    # Traffic really flows: TCP (frps side) -> stand-in frpc -> our Unix socket.
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{config.app_port}/ping") as resp,
    ):
        assert resp.status == 200
        assert await resp.json() == {"pong": True}
    # The config (it holds the shared key) is an in-memory file, frpc's -c /proc/self/fd/N.
    assert sup.config_file == Path(f"/proc/self/fd/{rendered_configs()[0]}")
    began = time.monotonic()
    await sup.stop()
    assert time.monotonic() - began < config.frpc_stop_grace_seconds  # no KILL needed
    assert sup.last_exit_code == -15  # killed by our TERM: its clean stop
    assert sup.tunnel.state == EXITED
    assert not sup.running
    assert sup.restarts == 0
    assert len(events(record, "term")) == 1
    assert rendered_configs() == []  # closed: it held the shared key


async def test_frps_down_means_retrying_not_restarting(
    make_harp_config: Callable[..., Config],
    unix_app: Path,
    record: Path,
    supervisors: list[FrpcSupervisor],
) -> None:
    """frpc retries by itself (loginFailExit = false): the supervisor only watches."""
    port = free_port()
    config = make_harp_config(HP_FRP_PORT=str(port))
    sup = await start(supervisors, config, unix_app)
    await until(sup, lambda: sup.tunnel.connect_errors >= 2)
    assert sup.tunnel.state == RETRYING
    assert "connection refused" in sup.tunnel.last_error
    assert sup.restarts == 0
    pid = sup.pid
    # frps comes up: the same process logs in.
    server = await FakeFrps(token=SHARED_KEY).start(port)
    try:
        await until(sup, lambda: sup.tunnel.state == CONNECTED)
    finally:
        await server.stop()
    assert sup.pid == pid
    assert sup.restarts == 0
    assert sup.tunnel.last_error == ""
    assert len(events(record, "start")) == 1


async def test_session_shutdown_then_reconnect(
    make_harp_config: Callable[..., Config],
    unix_app: Path,
    frps: FakeFrps,
    supervisors: list[FrpcSupervisor],
) -> None:
    sup = await start(supervisors, make_harp_config(), unix_app)
    await until(sup, lambda: sup.tunnel.state == CONNECTED)
    frps.drop_sessions()
    await until(sup, lambda: sup.tunnel.state == RETRYING)
    assert sup.tunnel.last_error == "session shutdown"
    assert sup.tunnel.connected_since is None
    await until(sup, lambda: sup.tunnel.state == CONNECTED)
    assert len(frps.logins) == 2
    assert sup.restarts == 0


async def test_restart_with_capped_backoff(
    make_harp_config: Callable[..., Config],
    unix_app: Path,
    frps: FakeFrps,
    record: Path,
    supervisors: list[FrpcSupervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_FRPC_CRASH_TIMES", "3")
    config = make_harp_config(
        BEEFLOW_FRPC_BACKOFF_INITIAL_SECONDS="0.1", BEEFLOW_FRPC_BACKOFF_CAP_SECONDS="0.3"
    )
    sup = await start(supervisors, config, unix_app)
    await until(sup, lambda: sup.tunnel.state == CONNECTED)
    assert sup.restarts == 3
    assert sup.last_exit_code == 1
    starts = [e["t"] for e in events(record, "start")]
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    delays = list(sup.backoff_history)
    assert len(delays) == 3
    # Doubling with jitter in [0.5, 1] of min(cap, initial * 2^n): 0.1, 0.2, then capped 0.3.
    for delay, ceiling in zip(delays, (0.1, 0.2, 0.3), strict=True):
        assert ceiling / 2 <= delay <= ceiling
    # The real gaps between starts include each delay (plus the stand-in's start-up).
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay
    assert gaps[0] < 1.0  # the first retry comes within a second


def test_backoff_bounds_with_production_defaults() -> None:
    config = Config.from_env({"APP_SECRET": "s" * 16, "NEXTCLOUD_URL": "http://nc"})
    sup = FrpcSupervisor(config, Path("/tmp/x.sock"), rng=random.Random(7))
    for _ in range(200):
        assert 0.5 <= sup._backoff(0) <= 1.0  # first retry within 1 s
        assert 15.0 <= sup._backoff(50) <= 30.0  # capped at 30 s
    seq = [sup._backoff(n) for n in range(8)]
    assert max(seq) <= 30.0
    assert seq[5] > seq[0]


async def test_backoff_resets_after_a_long_enough_run(
    make_harp_config: Callable[..., Config],
    unix_app: Path,
    frps: FakeFrps,
    supervisors: list[FrpcSupervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each run outlives the reset window, so every restart is a 'first' retry again."""
    monkeypatch.setenv("FAKE_FRPC_MODE", "crash")
    monkeypatch.setenv("FAKE_FRPC_CRASH_AFTER", "0.3")
    config = make_harp_config(
        BEEFLOW_FRPC_BACKOFF_INITIAL_SECONDS="0.05",
        BEEFLOW_FRPC_BACKOFF_CAP_SECONDS="10",
        BEEFLOW_FRPC_BACKOFF_RESET_SECONDS="0.2",
    )
    sup = await start(supervisors, config, unix_app)
    await until(sup, lambda: sup.restarts >= 3)
    assert all(delay <= 0.05 for delay in sup.backoff_history), sup.backoff_history


async def test_crash_loop_is_bounded_in_the_log(
    make_harp_config: Callable[..., Config],
    unix_app: Path,
    supervisors: list[FrpcSupervisor],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FAKE_FRPC_MODE", "crashloop")
    config = make_harp_config(
        BEEFLOW_FRPC_BACKOFF_INITIAL_SECONDS="0.001", BEEFLOW_FRPC_BACKOFF_CAP_SECONDS="0.005"
    )
    caplog.set_level(logging.INFO)
    log_limit = TokenBucket(capacity=4, per_second=0.0)
    sup = await start(supervisors, config, unix_app, log_limit=log_limit)
    await until(sup, lambda: sup.restarts >= 8, timeout=30)
    noisy = [
        r for r in caplog.records if r.name == "beeflow.frpc" or "restarting in" in r.getMessage()
    ]
    # Each run prints 2 lines and a restart warning (~27 lines); the log got what the bucket holds.
    assert len(noisy) <= 4
    assert log_limit.refused >= 15
    assert "told to crash at start" in sup.tunnel.last_error


async def test_term_ignored_escalates_to_kill(
    make_harp_config: Callable[..., Config],
    unix_app: Path,
    frps: FakeFrps,
    record: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FAKE_FRPC_IGNORE_TERM", "1")
    config = make_harp_config(BEEFLOW_FRPC_STOP_GRACE_SECONDS="0.3")
    sup = FrpcSupervisor(config, unix_app)
    await sup.start()
    await until(sup, lambda: sup.tunnel.state == CONNECTED)
    pid = sup.pid
    assert pid is not None
    began = time.monotonic()
    await sup.stop()
    took = time.monotonic() - began
    assert 0.3 <= took < 2.0
    assert sup.last_exit_code == -9
    assert len(events(record, "term")) == 1  # it got TERM first, and ignored it
    assert not pid_alive(pid)  # reaped
    assert any("ignored TERM" in r.getMessage() for r in caplog.records)
    assert sup.restarts == 0


async def test_hanging_frpc_is_still_stopped(
    make_harp_config: Callable[..., Config],
    unix_app: Path,
    frps: FakeFrps,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_FRPC_MODE", "hang")
    sup = FrpcSupervisor(make_harp_config(), unix_app)
    await sup.start()
    await until(sup, lambda: sup.running)
    assert sup.tunnel.state == STARTING
    await sup.stop()
    assert sup.last_exit_code == -15


async def test_binary_lost_after_preflight_fails_start_without_loop(
    make_harp_config: Callable[..., Config], sockdir: Path, frpc_bin: Path
) -> None:
    sup = FrpcSupervisor(make_harp_config(), sockdir / "s.sock")
    await sup.preflight()
    os.unlink(frpc_bin)
    with pytest.raises(FrpcError, match="cannot start"):
        await sup.start()
    assert sup.restarts == 0
    # The rendered config holds the shared key: a failed start forgets it.
    assert rendered_configs() == []


async def test_output_is_logged_clean_and_masked(
    make_harp_config: Callable[..., Config],
    unix_app: Path,
    frps: FakeFrps,
    supervisors: list[FrpcSupervisor],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FAKE_FRPC_FORCE_COLOR", "1")
    monkeypatch.setenv("FAKE_FRPC_ECHO_TOKEN", "1")
    caplog.set_level(logging.DEBUG)
    sup = await start(supervisors, make_harp_config(), unix_app)
    await until(sup, lambda: sup.tunnel.state == CONNECTED)
    lines = [r.getMessage() for r in caplog.records if r.name == "beeflow.frpc"]
    assert any("start proxy success" in line for line in lines)
    dump = [line for line in lines if "metadatas: token=" in line]
    assert dump == [dump[0]]
    assert 'token=*** json="***"' in dump[0]
    for line in lines:
        assert "\x1b" not in line
        assert SHARED_KEY not in line
        assert "quotes" not in line  # nor any escaped form of the key
    # frpc's [I]/[D] levels map onto ours.
    by_text = {r.getMessage(): r.levelno for r in caplog.records if r.name == "beeflow.frpc"}
    assert by_text[next(t for t in by_text if "start proxy success" in t)] == logging.INFO
    assert by_text[dump[0]] == logging.DEBUG


async def test_socket_down_while_frpc_runs_hangs_the_caller(
    make_harp_config: Callable[..., Config],
    sockdir: Path,
    frps: FakeFrps,
    supervisors: list[FrpcSupervisor],
) -> None:
    """The 0.61.x behaviour the shutdown order exists for (docs/transports.md, "What frpc 0.61.1
    does"): a connection dialled to a socket that is not listening gets no answer and no
    close."""
    config = make_harp_config()
    sup = await start(supervisors, config, sockdir / "nobody.sock")
    await until(sup, lambda: sup.tunnel.state == CONNECTED)
    timeout = aiohttp.ClientTimeout(total=0.5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.get(f"http://127.0.0.1:{config.app_port}/ping")
    await until(sup, lambda: sup.tunnel.socket_errors == 1)


def test_status_snapshot_shape() -> None:
    config = Config.from_env(
        {
            "APP_SECRET": "s" * 16,
            "NEXTCLOUD_URL": "http://nc",
            "HP_SHARED_KEY": "abcdefgh",
            "HP_FRP_ADDRESS": "harp",
        }
    )
    snap = FrpcSupervisor(config, Path("/tmp/x.sock")).status()
    assert {
        "state",
        "running",
        "pid",
        "restarts",
        "last_exit_code",
        "last_error",
        "connected_since",
    } <= set(snap)
    assert snap["server"] == "harp:8782"
    assert "abcdefgh" not in repr(snap)
