"""The spool volume fills up while a /nc body is being written: 507 `spool_full` (JSON), a log
line without the user's path, the spool released, nothing forwarded. Simulated with
RLIMIT_FSIZE (EFBIG, no root needed) and, as root, a tiny tmpfs (ENOSPC)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from beeflow.proxy.nc.spool import SPOOLS
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import RunningConnector
from tests.proxy.nc.caller import NcCaller

NAME = "quarterly-salaries.bin"
TARGET = f"/nc/remote.php/dav/files/alice/{NAME}"
BODY = b"x" * (8 * 1024 * 1024)
MOUNT = shutil.which("mount") or "/bin/mount"
UMOUNT = shutil.which("umount") or "/bin/umount"


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


@contextlib.contextmanager
def _tiny_tmpfs() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("a full tmpfs needs root to mount")
    path = Path(tempfile.mkdtemp(prefix="ncfull", dir="/tmp"))
    done = subprocess.run(
        [MOUNT, "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run([UMOUNT, "-l", str(path)], capture_output=True, check=False)
        path.rmdir()


async def _check_refused(
    caller: NcCaller,
    conn: RunningConnector,
    dav: FakeDav,
    caplog: pytest.LogCaptureFixture,
    limit: contextlib.AbstractContextManager[object],
) -> None:
    caplog.set_level(logging.DEBUG)
    with limit:
        resp = await caller.request(
            "PUT", TARGET, body=BODY, body_sha256=hashlib.sha256(BODY).hexdigest()
        )
        async with resp:
            status, body = resp.status, await resp.json()
    assert status == 507, body
    assert body["code"] == "spool_full"
    spools = conn.app[SPOOLS]
    await spools.wait_idle()
    assert spools.active == 0
    assert list(spools.path.iterdir()) == []
    assert dav.seen == []
    assert "spool" in caplog.text
    assert NAME not in caplog.text
    assert "Traceback" not in caplog.text
    # The next, smaller upload goes through: nothing stayed behind.
    resp = await caller.request("PUT", TARGET, body=b"small")
    async with resp:
        assert resp.status == 201


async def test_file_size_limit_is_507(
    caller: NcCaller, nc_conn: RunningConnector, dav: FakeDav, caplog: pytest.LogCaptureFixture
) -> None:
    await _check_refused(caller, nc_conn, dav, caplog, _file_size_limit(2 * 1024 * 1024))


async def test_full_volume_is_507(
    connector_factory: ConnectorFactory,
    session: aiohttp.ClientSession,
    dav: FakeDav,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with _tiny_tmpfs() as volume:
        conn = await connector_factory(
            BEEFLOW_SPOOL_DIR=str(volume / "spool"), BEEFLOW_SPOOL_MEMORY_BYTES=str(64 * 1024)
        )
        caller = NcCaller(session, conn.url)
        await _check_refused(caller, conn, dav, caplog, contextlib.nullcontext())
