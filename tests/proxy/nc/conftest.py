"""Fixtures for the /nc proxy: a fake Nextcloud with WebDAV, a connector, a signing caller."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import SECRET, RunningConnector
from tests.proxy.nc.caller import NcCaller


@pytest.fixture
def dav(tmp_path: Path) -> FakeDav:
    root = tmp_path / "dav"
    root.mkdir()
    return FakeDav(root)


@pytest.fixture
async def fake_nc(dav: FakeDav) -> AsyncIterator[FakeNextcloud]:
    """The shared fake Nextcloud (same users) with the WebDAV/app endpoints mounted."""
    nc = FakeNextcloud(secret=SECRET, extra_routes=dav.routes())
    dav.bind(nc)
    nc.add_user("admin", email="admin@example.com", display_name="Ada Admin", groups=["admin"])
    nc.add_user("alice", email="alice@example.com", display_name="Alice", groups=["staff"])
    nc.add_user("bob", email="bob@example.com", display_name="Bob")
    for uid in ("alice", "bob"):
        (dav.root / uid).mkdir()
    await nc.start()
    yield nc
    await nc.stop()


@pytest.fixture
def spool_dir() -> Iterator[Path]:
    """A spool directory for the connector to create (removed again afterwards)."""
    parent = Path(tempfile.mkdtemp(prefix="nc-spool-", dir="/tmp"))
    yield parent / "spool"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
async def nc_conn(connector_factory: ConnectorFactory, spool_dir: Path) -> RunningConnector:
    return await connector_factory(
        BEEFLOW_SPOOL_DIR=str(spool_dir), BEEFLOW_SPOOL_MEMORY_BYTES=str(64 * 1024)
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def caller(session: aiohttp.ClientSession, nc_conn: RunningConnector) -> NcCaller:
    return NcCaller(session, nc_conn.url)


@pytest.fixture
def session_caller(session: aiohttp.ClientSession, dest_conn: RunningConnector) -> NcCaller:
    return NcCaller(session, dest_conn.url)
