"""The HaRP defects, shown with the real frpc and frps 0.61.1 set up as HaRP runs them
(realfrp.py): the TLS refusal in all its words gets one diagnosis that holds until a login
succeeds; our rendered frpc.toml passes HaRP's mutual TLS; a SIGKILLed connector takes its frpc
down and leaves no key behind, so its successor gets the proxy name; and an frpc holding the name
gets a remedy."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from beeflow.config import Config
from beeflow.ops.doctor.command import run_checks
from beeflow.ops.doctor.result import FAIL
from beeflow.transports.frpc.config import render, write_config
from beeflow.transports.frpc.diagnose import (
    CONNECTED,
    PROXY_TAKEN,
    RETRYING,
    TLS_REQUIRED,
    Tunnel,
    clean_line,
)
from beeflow.transports.frpc.supervisor import FrpcSupervisor
from tests.fakes.frp import exapp_port, wait_gone
from tests.procs import Launcher
from tests.transports.conftest import SHARED_KEY, harp_env
from tests.transports.frpc.conftest import RealFrp, start, until
from tests.transports.frpc.realfrp import RealFrps, client_cert_dir

ERROR = "connect to server error: "


@pytest.fixture
def real_env(
    sockdir: Path, real_frp: RealFrp, real_frps: RealFrps, storage: Path
) -> Callable[..., dict[str, str]]:
    """A HaRP environment with the real frpc against the real frps; by default with the
    client certificates AppAPI copies into /certs/frp."""

    def make(**overrides: str) -> dict[str, str]:
        # Not harp_env's own "certs": it writes placeholders there.
        certs = client_cert_dir(real_frp.harp_certs, sockdir / "frp-certs")
        settings = {"BEEFLOW_FRP_CERT_DIR": str(certs), **overrides}
        return harp_env(sockdir, real_frp.frpc, real_frps.port, storage, **settings)

    return make


async def first_error(frpc: Path, config_file: Path) -> str:
    """Run a real frpc once and return the first error it reports (then kill it)."""
    proc = await asyncio.create_subprocess_exec(
        str(frpc),
        "-c",
        str(config_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    try:
        while line := await asyncio.wait_for(proc.stdout.readline(), 10):
            text = clean_line(line.decode(), ())
            if ERROR in text:
                return text
        raise AssertionError("frpc ended without an error")
    finally:
        proc.kill()
        await proc.wait()


async def test_every_word_real_frpc_has_for_the_tls_refusal_gets_one_diagnosis(
    real_frp: RealFrp, real_frps: RealFrps, sockdir: Path, storage: Path
) -> None:
    """frpc without certificates against HaRP's TLS-forcing frps: the refusal comes in several
    words, picked by a race. Every one of them is diagnosed as the TLS refusal."""
    env = harp_env(
        sockdir, real_frp.frpc, real_frps.port, storage, BEEFLOW_FRP_CERT_DIR="/nonexistent"
    )
    config = Config.from_env(env)
    config_file = write_config(render(config, sockdir / "s.sock"), sockdir / "cfg")
    words: list[str] = []
    while len(words) < 60 and len(set(words)) < 3:
        batch = await asyncio.gather(*(first_error(real_frp.frpc, config_file) for _ in range(12)))
        for line in batch:
            tunnel = Tunnel(config)
            tunnel.observe(line)
            assert tunnel.cause == TLS_REQUIRED, line
            assert "HP_FRP_DISABLE_TLS=true" in tunnel.remedy
            words.append(line.split(ERROR, 1)[1].split(": ")[-1])
    assert real_frps.logins == []  # frps dropped every one before its Login plugin
    assert len(set(words)) >= 2, words  # the variety is real: one word would be a fluke


async def test_the_diagnosis_holds_until_real_frps_takes_a_login(
    real_frp: RealFrp,
    real_frps: RealFrps,
    sockdir: Path,
    storage: Path,
    supervisors: list[FrpcSupervisor],
) -> None:
    """The supervisor on the real frpc: the TLS cause from the first error; HaRP restarted
    with HP_FRP_DISABLE_TLS=true takes the next login, and the cause is gone."""
    env = harp_env(
        sockdir, real_frp.frpc, real_frps.port, storage, BEEFLOW_FRP_CERT_DIR="/nonexistent"
    )
    sup = await start(supervisors, Config.from_env(env), sockdir / "s.sock")
    await until(sup, lambda: sup.tunnel.connect_errors >= 1)
    assert sup.status()["cause"] == TLS_REQUIRED
    assert sup.tunnel.state == RETRYING
    await real_frps.restart(tls=False)
    # frpc's own retry (about 2 s after its first try) now logs in.
    await until(sup, lambda: sup.tunnel.state == CONNECTED, timeout=15)
    assert sup.status()["cause"] == sup.status()["remedy"] == ""
    assert [c["metas"]["token"] for c in real_frps.logins] == [SHARED_KEY]


async def test_doctor_fails_on_the_tls_refusal_of_a_running_connector(
    real_env: Callable[..., dict[str, str]], launcher: Launcher
) -> None:
    """The connector runs, frpc is refused for want of certificates: doctor says so and fails,
    whichever word frpc used last."""
    env = real_env(BEEFLOW_FRP_CERT_DIR="/nonexistent")
    proc = await launcher.start(env)
    await proc.wait_line(ERROR)
    checks = {c.name: c for c in (await run_checks(env, timeout=2.0))[0]}
    assert checks["connector"].status == FAIL, checks["connector"]
    assert "HP_FRP_DISABLE_TLS=true" in checks["connector"].remedy
    assert checks["frp_certs"].status == FAIL, checks["frp_certs"]
    assert "HaRP forces TLS" in checks["frp_certs"].summary
    proc.send(signal.SIGTERM)
    assert await proc.wait_exit() == 0


async def test_our_frpc_toml_passes_harps_mutual_tls(
    real_env: Callable[..., dict[str, str]],
    real_frps: RealFrps,
    unix_app: Path,
    supervisors: list[FrpcSupervisor],
) -> None:
    """The rendered config (in memory, TLS with AppAPI's copy of HaRP's client certificates,
    serverName harp.nc, the key as a Login metadata) logs in and carries traffic."""
    config = Config.from_env(real_env())
    sup = await start(supervisors, config, unix_app)
    await until(sup, lambda: sup.tunnel.state == CONNECTED)
    assert str(sup.config_file).startswith("/proc/self/fd/")
    assert [c["metas"]["token"] for c in real_frps.logins] == [SHARED_KEY]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{config.app_port}/ping") as resp,
    ):
        assert await resp.json() == {"pong": True}


def files_holding(root: Path, secret: str) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and secret.encode() in path.read_bytes():
                found.append(path)
        except OSError:
            continue
    return found


async def test_a_sigkilled_connector_takes_its_real_frpc_down(
    real_env: Callable[..., dict[str, str]],
    real_frps: RealFrps,
    launcher: Launcher,
    sockdir: Path,
) -> None:
    """SIGKILL of the connector: its frpc dies with it (nothing else could stop it), no file
    holds the shared key, and the next connector gets the proxy name at once."""
    env = real_env()
    first = await launcher.start(env)
    await first.wait_line("start proxy success")
    _, started = await first.wait_line("frpc started (pid ")
    frpc_pid = int(started.split("(pid ")[1].split(")")[0])
    first.send(signal.SIGKILL)
    assert await first.wait_exit() == -signal.SIGKILL
    assert await wait_gone(frpc_pid, timeout=5), "frpc outlived its connector"
    assert files_holding(sockdir, SHARED_KEY) == []
    assert files_holding(Path(env["TMPDIR"]), SHARED_KEY) == []
    second = await launcher.start(env)
    await second.wait_line("start proxy success")
    assert "already exists" not in second.text
    second.send(signal.SIGTERM)
    assert await second.wait_exit() == 0


async def test_an_frpc_holding_the_proxy_name_gets_a_remedy(
    real_env: Callable[..., dict[str, str]],
    real_frp: RealFrp,
    unix_app: Path,
    sockdir: Path,
    supervisors: list[FrpcSupervisor],
) -> None:
    """An frpc of an older release that outlived its connector (started here on its own, in its
    own session) still holds the name: ours is refused and says what to do."""
    env = real_env(APP_PORT=str(exapp_port()))
    config = Config.from_env(env)
    leftover_config = write_config(render(config, unix_app), sockdir / "leftover")
    leftover = await asyncio.create_subprocess_exec(
        str(real_frp.frpc),
        "-c",
        str(leftover_config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert leftover.stdout is not None
        while b"start proxy success" not in await asyncio.wait_for(leftover.stdout.readline(), 10):
            pass
        sup = await start(supervisors, config, unix_app)
        await until(sup, lambda: sup.tunnel.cause == PROXY_TAKEN)
        assert sup.tunnel.state == RETRYING
        assert "already exists" in sup.tunnel.last_error
        assert "restart this container" in sup.status()["remedy"]
    finally:
        leftover.kill()
        await leftover.wait()
    os.unlink(leftover_config)
