"""Fixtures for the transport tests: a short socket dir, the stand-in frpc, a fake frps."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from beeflow.config import Config
from tests.fakes.frp import FakeFrps, exapp_port, make_certs, make_frpc
from tests.helpers import SECRET, base_env
from tests.ports import refused_url
from tests.procs import Launcher, short_dir

# A shared key full of what TOML and shells care about, within what HaRP's start.sh accepts
# (printable ASCII without `"` and `\`: HaRP refuses those, so no real key holds them).
SHARED_KEY = "k3y'with'quotes&$ymbols~#=[x]{y}"
UNREACHABLE_NC = refused_url()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for Unix sockets (sun_path is 108 bytes; tmp_path is too long)."""
    with short_dir() as path:
        yield path


@pytest.fixture
async def launcher() -> AsyncIterator[Launcher]:
    """`python -m beeflow serve` children of this test, killed at its end if still running."""
    procs = Launcher()
    yield procs
    await procs.close()


@pytest.fixture(autouse=True)
def private_tmp(
    sockdir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """This test's temporary files (the supervisor's rendered frpc.toml above all: it holds the
    shared key) go to a directory of its own, in-process and in the servers it starts
    (harp_env sets TMPDIR); whatever is left there at the end fails the test."""
    tmp_path_factory.getbasetemp()  # pytest's own base stays where it is
    path = sockdir / "tmp"
    path.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    left = sorted(p.name for p in path.glob("beeflow-frpc-*"))
    assert not left, f"rendered frpc configs left behind: {left}"


@pytest.fixture
def frpc_bin(sockdir: Path) -> Path:
    return make_frpc(sockdir)


@pytest.fixture
def record(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in's event record (its env var is inherited by every child we start)."""
    path = sockdir / "record.jsonl"
    monkeypatch.setenv("FAKE_FRPC_RECORD", str(path))
    return path


@pytest.fixture
async def frps() -> AsyncIterator[FakeFrps]:
    server = await FakeFrps(token=SHARED_KEY).start()
    yield server
    await server.stop()


def harp_env(
    sockdir: Path, frpc_bin: Path, frps_port: int, storage: Path, **overrides: str
) -> dict[str, str]:
    """A complete HaRP-mode environment with tiny timings, as AppAPI deploys it with HaRP's
    defaults: APP_PORT in 23000-23999 and the frp certificates in place (frps forces TLS)."""
    env = base_env(
        UNREACHABLE_NC,
        storage,
        APP_PORT=str(exapp_port()),
        HP_SHARED_KEY=SHARED_KEY,
        HP_FRP_ADDRESS="127.0.0.1",
        HP_FRP_PORT=str(frps_port),
        HP_EXAPP_SOCK=str(sockdir / "exapp.sock"),
        BEEFLOW_FRPC_BIN=str(frpc_bin),
        BEEFLOW_FRP_CERT_DIR=str(make_certs(sockdir / "certs")),
        BEEFLOW_FRPC_BACKOFF_INITIAL_SECONDS="0.05",
        BEEFLOW_FRPC_BACKOFF_CAP_SECONDS="0.2",
        BEEFLOW_FRPC_STOP_GRACE_SECONDS="0.5",
        BEEFLOW_SHUTDOWN_GRACE_SECONDS="5",
        FAKE_FRPC_RETRY_SCALE="0.02",
    )
    # Servers started with it keep their temporary files (frpc.toml) in the test's own place.
    tmp = sockdir / "tmp"
    tmp.mkdir(exist_ok=True)
    env.setdefault("TMPDIR", str(tmp))
    env.update(overrides)
    return env


@pytest.fixture
def make_harp_config(
    sockdir: Path, frpc_bin: Path, frps: FakeFrps, storage: Path
) -> Callable[..., Config]:
    def make(**overrides: str) -> Config:
        return Config.from_env(harp_env(sockdir, frpc_bin, frps.port, storage, **overrides))

    return make


__all__ = ["SECRET", "SHARED_KEY", "UNREACHABLE_NC", "harp_env"]
