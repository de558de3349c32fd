"""HaRP's frps rules (its frps.toml): `transport.tls.force = true` unless HP_FRP_DISABLE_TLS, and
`allowPorts` 23000-23999 + 24000-24099. What the stand-in frpc prints when frps applies them, how
the supervisor reads it, what it logs, and what doctor says about a running server."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from beeflow.config import Config
from beeflow.ops.doctor.command import run_checks
from beeflow.ops.doctor.result import FAIL, PASS, Check
from beeflow.transports.frpc.config import harp_allows_port, port_problem
from beeflow.transports.frpc.diagnose import CONNECTED, RETRYING, TLS_REQUIRED
from beeflow.transports.frpc.supervisor import FrpcSupervisor
from tests.fakes.frp import FakeFrps, events, free_port
from tests.procs import ServeProcess
from tests.transports.conftest import SHARED_KEY, harp_env
from tests.transports.frpc.conftest import start, until


@pytest.fixture(autouse=True)
def fake_env(monkeypatch: pytest.MonkeyPatch, record: Path) -> None:
    monkeypatch.delenv("FAKE_FRPC_SERVER", raising=False)
    monkeypatch.setenv("FAKE_FRPC_RETRY_SCALE", "0.02")


def outside_harp_ports() -> int:
    """A free port frps would refuse (the ephemeral range lies above 24099)."""
    for _ in range(20):
        port = free_port()
        if not harp_allows_port(port):
            return port
    raise AssertionError("no free port outside 23000-24099")


# Our own warnings about the tunnel (frpc's lines go to "beeflow.frpc"): the port check before
# the start, and the remedies read from frpc's output.
OUR_LOGGERS = frozenset({"beeflow.transports.frpc.supervisor", "beeflow.transports.frpc.diagnose"})


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name in OUR_LOGGERS
        if text in r.getMessage()
    ]


# ------------------------------------------------------------------ tls.force


async def test_without_certs_every_word_frpc_has_for_the_tls_refusal_gets_one_diagnosis(
    make_harp_config: Callable[..., Config],
    sockdir: Path,
    frps: FakeFrps,
    supervisors: list[FrpcSupervisor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No /certs/frp: frpc connects without TLS; HaRP's frps closes the connection unanswered,
    and frpc reports it in one of several words (EOF, session shutdown, stream closed, a reset,
    a broken pipe) and retries, forever. Each of them gets the same cause and remedy, from the
    first error on, and the remedy is logged once."""
    caplog.set_level(logging.INFO)
    missing = sockdir / "no-certs"
    sup = await start(
        supervisors, make_harp_config(BEEFLOW_FRP_CERT_DIR=str(missing)), sockdir / "s.sock"
    )
    seen = []
    for n in range(1, 7):
        await until(sup, lambda n=n: sup.tunnel.connect_errors >= n)  # type: ignore[misc]
        seen.append(sup.tunnel.last_error)
        assert sup.tunnel.cause == TLS_REQUIRED, seen
        assert sup.status()["cause"] == TLS_REQUIRED
    assert frps.logins == []  # the login plugin never saw it
    assert len(frps.refused) >= 6
    assert sup.tunnel.state == RETRYING
    assert sup.restarts == 0  # frpc retries by itself
    frpc_lines = [r.getMessage() for r in caplog.records if r.name == "beeflow.frpc"]
    said = {line.split("connect to server error: ")[-1] for line in frpc_lines if "error" in line}
    assert {"EOF", "session shutdown", "stream closed"} <= said
    assert any(w.endswith("connection reset by peer") for w in said), said
    assert any(w.endswith("broken pipe") for w in said), said
    # The remedy names the certificates and the redeploy, once, not per retry.
    assert str(missing) in sup.tunnel.remedy
    assert "occ app_api:app:unregister bee_flow" in sup.tunnel.remedy
    assert "HP_FRP_DISABLE_TLS=true" in sup.tunnel.remedy
    assert sup.status()["remedy"] == sup.tunnel.remedy
    assert len(warnings(caplog, sup.tunnel.remedy)) == 1


async def test_the_tls_diagnosis_stays_until_a_login_succeeds(
    make_harp_config: Callable[..., Config],
    sockdir: Path,
    frps: FakeFrps,
    supervisors: list[FrpcSupervisor],
) -> None:
    """frps going away in between (connection refused) does not clear the diagnosis; the
    first login does (here HaRP restarted with HP_FRP_DISABLE_TLS=true)."""
    sup = await start(
        supervisors,
        make_harp_config(BEEFLOW_FRP_CERT_DIR=str(sockdir / "no-certs")),
        sockdir / "s.sock",
    )
    await until(sup, lambda: sup.tunnel.cause == TLS_REQUIRED)
    port = frps.port
    await frps.stop()
    await until(sup, lambda: "connection refused" in sup.tunnel.last_error)
    assert sup.tunnel.cause == TLS_REQUIRED
    assert "HP_FRP_DISABLE_TLS=true" in sup.tunnel.remedy
    plain = await FakeFrps(token=SHARED_KEY, tls_required=False).start(port)
    try:
        await until(sup, lambda: sup.tunnel.state == CONNECTED)
        assert sup.tunnel.cause == sup.tunnel.remedy == sup.tunnel.last_error == ""
        # Once frps took a plain login, a dropped session is frps going away, not TLS.
        plain.drop_sessions()
        await until(sup, lambda: sup.tunnel.state == RETRYING)
        assert sup.tunnel.last_error == "session shutdown"
        assert sup.tunnel.cause == ""
    finally:
        await plain.stop()


async def test_with_certs_frpc_speaks_tls_and_connects(
    make_harp_config: Callable[..., Config],
    sockdir: Path,
    frps: FakeFrps,
    supervisors: list[FrpcSupervisor],
) -> None:
    sup = await start(supervisors, make_harp_config(), sockdir / "s.sock")
    await until(sup, lambda: sup.tunnel.state == CONNECTED)
    assert frps.refused == []
    assert frps.logins[0]["tls"] is True
    assert frps.logins[0]["serverName"] == "harp.nc"
    assert sup.tunnel.remedy == ""


async def test_harp_without_tls_accepts_a_plain_frpc(
    sockdir: Path, frpc_bin: Path, storage: Path
) -> None:
    """HaRP with HP_FRP_DISABLE_TLS=true: no certificates are copied, frps takes plain frpc."""
    server = await FakeFrps(token=SHARED_KEY, tls_required=False).start()
    env = harp_env(
        sockdir, frpc_bin, server.port, storage, BEEFLOW_FRP_CERT_DIR=str(sockdir / "none")
    )
    sup = FrpcSupervisor(Config.from_env(env), sockdir / "s.sock")
    try:
        await sup.start()
        await until(sup, lambda: sup.tunnel.state == CONNECTED)
        assert server.logins[0]["tls"] is False
    finally:
        await sup.stop()
        await server.stop()


# ------------------------------------------------------------------ allowPorts


async def test_a_port_outside_allow_ports_is_refused_after_the_login(
    make_harp_config: Callable[..., Config],
    sockdir: Path,
    frps: FakeFrps,
    record: Path,
    supervisors: list[FrpcSupervisor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    port = outside_harp_ports()
    sup = await start(supervisors, make_harp_config(APP_PORT=str(port)), sockdir / "s.sock")
    # Said before frpc even runs: the port will not work behind HaRP.
    assert warnings(caplog, f"APP_PORT {port} is outside the ports HaRP's frps allows")
    await until(sup, lambda: sup.tunnel.last_error != "")
    assert sup.tunnel.last_error == "start error: port not allowed"
    assert sup.tunnel.state == RETRYING
    assert sup.tunnel.logins == 1  # logged in: the proxy, not the login, was refused
    assert len(frps.logins) == 1
    assert [e["error"] for e in events(record, "proxy_refused")] == ["port not allowed"]
    frpc_lines = [r.getMessage() for r in caplog.records if r.name == "beeflow.frpc"]
    assert any(line.endswith("[bee_flow] start error: port not allowed") for line in frpc_lines)
    assert "Let AppAPI choose the port" in sup.tunnel.remedy
    assert "23000-23999" in sup.tunnel.remedy
    # Nothing listens on the refused port: HaRP cannot reach us.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{port}/heartbeat")


@pytest.mark.parametrize("port", [23000, 23999, 24000, 24099])
def test_harps_allow_ports_bounds(port: int) -> None:
    assert harp_allows_port(port)
    assert port_problem(port) == ""


@pytest.mark.parametrize("port", [8080, 22999, 24100, 32768])
def test_ports_frps_refuses(port: int) -> None:
    assert not harp_allows_port(port)
    assert "port not allowed" in port_problem(port)


# ------------------------------------------------------------------ doctor, on a running server


async def _doctor_on_running_server(env: dict[str, str], line: str) -> dict[str, Check]:
    proc = await ServeProcess.start(env)
    try:
        await proc.wait_line(line)
        checks, _ = await run_checks(env, timeout=2.0)
    finally:
        proc.send(signal.SIGTERM)
        assert await proc.wait_exit() == 0
    return {c.name: c for c in checks}


async def test_doctor_names_the_certs_when_frps_drops_a_plain_frpc(
    sockdir: Path, frpc_bin: Path, storage: Path, frps: FakeFrps
) -> None:
    missing = sockdir / "no-certs"
    env = harp_env(sockdir, frpc_bin, frps.port, storage, BEEFLOW_FRP_CERT_DIR=str(missing))
    checks = await _doctor_on_running_server(env, "connect to server error: EOF")
    running = checks["connector"]
    assert running.status == FAIL, running
    assert "EOF" in running.summary
    assert str(missing) in running.remedy
    assert "occ app_api:app:unregister bee_flow" in running.remedy
    assert "HP_SHARED_KEY" not in running.remedy  # not the key: the certificates
    certs = checks["frp_certs"]
    assert certs.status == FAIL, certs
    assert "HaRP forces TLS" in certs.summary
    assert "reinstall" in certs.remedy


async def test_doctor_names_the_port_when_frps_refuses_it(
    sockdir: Path, frpc_bin: Path, storage: Path, frps: FakeFrps
) -> None:
    port = outside_harp_ports()
    env = harp_env(sockdir, frpc_bin, frps.port, storage, APP_PORT=str(port))
    checks = await _doctor_on_running_server(env, "start error: port not allowed")
    running = checks["connector"]
    assert running.status == FAIL, running
    assert "port not allowed" in running.summary
    assert "Let AppAPI choose the port" in running.remedy
    assert checks["harp_port"].status == FAIL
    assert checks["frp_certs"].status == PASS
