"""The tenant key file store: atomic 0600 writes, corrupt or unreadable files moved aside, and a
read-only or full storage that keeps the old key in use with a clear error.

Read-only and full storage use a real tmpfs mount when the tests run as root (as in CI's
container); as another user, read-only is a 0500 directory and the full-disk case is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from beeflow import storage
from beeflow.tenant.failures import BootstrapFailed
from beeflow.tenant.state import TENANT
from beeflow.tenant.wiring import ROTATION
from tests.conftest import AutoFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service_control import PROVISIONED_KEY, ServiceControl
from tests.tenant.helpers import heartbeat, read_json, run_init

CACHED_KEY = "tk_cached_00112233445566778899aabbccddeeff"


def cache_record(key: str = CACHED_KEY) -> dict[str, str]:
    return {
        "tenantKey": key,
        "organizationId": "org-cached",
        "organizationName": "Cached Org",
        "ncInstanceId": "nc-host:cached",
        "ncVersion": "32.0.1",
        "boundApiBaseUrl": "http://127.0.0.1:9",
        "provisionedAt": "2026-01-01T00:00:00Z",
    }


MOUNT = shutil.which("mount") or "/bin/mount"
UMOUNT = shutil.which("umount") or "/bin/umount"


def aside_files(directory: Path, name: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(f"{name}.corrupt-")]


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        [MOUNT, "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _umount(target: Path) -> None:
    subprocess.run([UMOUNT, "-l", str(target)], capture_output=True, check=False)


@contextlib.contextmanager
def small_tmpfs(size: str = "64k") -> Iterator[Path]:
    target = Path(tempfile.mkdtemp(dir="/tmp", prefix="bfs"))
    if not _mount(target, f"size={size},mode=0700"):
        target.rmdir()
        pytest.skip("needs root and tmpfs mounts to simulate a full disk")
    try:
        yield target
    finally:
        _umount(target)
        target.rmdir()


class ReadOnly:
    """A storage directory that can be made read-only after files are put in it."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(dir="/tmp", prefix="bro"))
        self.mounted = _mount(self.path, "size=1m,mode=0700")
        if os.geteuid() == 0 and not self.mounted:
            self.path.rmdir()
            pytest.skip("as root, read-only storage needs a tmpfs mount")

    def freeze(self) -> None:
        if self.mounted:
            subprocess.run([MOUNT, "-o", "remount,ro", str(self.path)], check=True)
        else:
            self.path.chmod(0o500)

    def close(self) -> None:
        if self.mounted:
            _umount(self.path)
        else:
            self.path.chmod(0o700)
            for child in self.path.iterdir():
                child.unlink()
        self.path.rmdir()


@pytest.fixture
def readonly() -> Iterator[ReadOnly]:
    ro = ReadOnly()
    yield ro
    ro.close()


# ------------------------------------------------------------------ atomic writes


def test_atomic_write_is_0600_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tenant-key.json"
    storage.write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    first_inode = path.stat().st_ino
    storage.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert path.stat().st_ino != first_inode  # renamed over, not rewritten in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["tenant-key.json"]


def test_full_disk_keeps_the_old_file_whole() -> None:
    with small_tmpfs() as mount:
        path = mount / "tenant-key.json"
        storage.write_json_atomic(path, cache_record())
        before = path.read_bytes()
        filler = mount / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        with pytest.raises(storage.StoreError) as info:
            storage.write_json_atomic(path, {"tenantKey": "x" * 200_000})
        assert info.value.reason == "the storage is full"
        assert path.read_bytes() == before
        assert sorted(p.name for p in mount.iterdir()) == ["filler", "tenant-key.json"]


def test_read_only_write_is_a_clear_error(readonly: ReadOnly) -> None:
    path = readonly.path / "tenant-key.json"
    storage.write_json_atomic(path, cache_record())
    readonly.freeze()
    with pytest.raises(storage.StoreError) as info:
        storage.write_json_atomic(path, cache_record("tk_other_0000000000000000000000"))
    expected = "the storage is mounted read-only" if readonly.mounted else "permission denied"
    assert info.value.reason == expected
    assert str(info.value) == f"could not write tenant-key.json: {expected}"
    assert json.loads(path.read_text())["tenantKey"] == CACHED_KEY


def test_describe_os_error() -> None:
    assert storage.describe_os_error(OSError(errno.EROFS, "x")) == (
        "the storage is mounted read-only"
    )
    assert storage.describe_os_error(OSError(errno.ENOSPC, "x")) == "the storage is full"
    assert storage.describe_os_error(OSError(errno.EDQUOT, "x")) == "the storage is full"


# ------------------------------------------------------------------ corrupt / unreadable


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"tenantKey": "tk_trunc', "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (json.dumps({"organizationId": "x"}).encode(), "missing a usable tenantKey"),
        (json.dumps(["not", "an", "object"]).encode(), "missing a usable tenantKey"),
    ],
)
async def test_corrupt_cache_is_moved_aside_logged_once_and_reprovisioned(
    auto_connector: AutoFactory,
    fake_nc: FakeNextcloud,
    storage: Path,
    control: ServiceControl,
    caplog: pytest.LogCaptureFixture,
    content: bytes,
    reason: str,
) -> None:
    caplog.set_level(logging.INFO)
    (storage / "tenant-key.json").write_bytes(content)
    conn = await auto_connector()
    state = conn.app[TENANT]
    assert state.key is None
    aside = aside_files(storage, "tenant-key.json")
    assert len(aside) == 1
    assert aside[0].read_bytes() == content  # moved, not deleted or rewritten
    errors = [r for r in caplog.records if "tenant-key.json" in r.getMessage()]
    assert len([r for r in errors if r.levelno == logging.ERROR]) == 1
    assert reason in errors[0].getMessage()
    # Treated as missing: the install provisions a fresh key.
    await run_init(conn, fake_nc)
    assert conn.app[TENANT].key == PROVISIONED_KEY
    assert read_json(storage / "tenant-key.json")["tenantKey"] == PROVISIONED_KEY
    assert len(control.bootstraps) == 1


async def test_unreadable_cache_is_moved_aside(
    auto_connector: AutoFactory, storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (storage / "tenant-key.json").mkdir()  # reading it fails (EISDIR) even as root
    conn = await auto_connector(slow_retries=True)
    assert conn.app[TENANT].key is None
    aside = aside_files(storage, "tenant-key.json")
    assert len(aside) == 1
    assert any("unreadable" in r.getMessage() for r in caplog.records)


async def test_corrupt_pending_file_is_moved_aside(
    auto_connector: AutoFactory, storage: Path
) -> None:
    (storage / "pending-bootstrap.json").write_text("{nope")
    conn = await auto_connector(slow_retries=True)
    assert conn.app[TENANT].pending is None
    assert len(aside_files(storage, "pending-bootstrap.json")) == 1


# ------------------------------------------------------------------ read-only storage


async def test_read_only_storage_keeps_the_old_key_on_rebootstrap(
    auto_connector: AutoFactory, readonly: ReadOnly, control: ServiceControl
) -> None:
    storage.write_json_atomic(readonly.path / "tenant-key.json", cache_record())
    readonly.freeze()
    conn = await auto_connector(APP_PERSISTENT_STORAGE=str(readonly.path))
    state = conn.app[TENANT]
    assert state.key == CACHED_KEY
    with pytest.raises(BootstrapFailed) as info:
        await conn.app[ROTATION].rebootstrap()
    assert info.value.instance_code == "tenant_store_failed"
    assert "read-only" in info.value.message or "permission" in info.value.message
    assert (state.key, state.source, state.status) == (CACHED_KEY, "cache", "ok")
    assert control.bootstraps == []  # nothing was provisioned that could not be kept


async def test_first_bootstrap_on_read_only_storage_uses_the_key_and_says_so(
    auto_connector: AutoFactory,
    fake_nc: FakeNextcloud,
    readonly: ReadOnly,
    caplog: pytest.LogCaptureFixture,
) -> None:
    readonly.freeze()
    conn = await auto_connector(APP_PERSISTENT_STORAGE=str(readonly.path))
    await run_init(conn, fake_nc)
    state = conn.app[TENANT]
    assert state.key == PROVISIONED_KEY
    assert state.store_error is not None
    assert state.store_error.startswith("could not write tenant-key.json")
    trusted = await heartbeat(conn, trusted=True)
    assert trusted["bootstrap"]["storageError"] == state.store_error
    assert "APP_PERSISTENT_STORAGE" in trusted["bootstrap"]["storageRemediation"]
    anonymous = await heartbeat(conn, trusted=None)
    assert anonymous["bootstrap"] == {"state": "ok"}
    assert any(
        "will be lost on restart" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR
    )
