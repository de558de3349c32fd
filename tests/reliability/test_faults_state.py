"""Faults around state and time: persistent storage read-only or full (the old tenant key stays,
nothing is corrupted, the error is clear), clock skew beyond the window on /nc, and accepted
webhooks that cannot be delivered (forwarded or logged as failed, never dropped silently)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from beeflow import storage
from beeflow.integrations import events
from beeflow.tasks import running
from beeflow.tenant.failures import BootstrapFailed
from beeflow.tenant.state import TENANT
from beeflow.tenant.wiring import ROTATION
from tests.fakes.service import FakeService
from tests.fakes.service_control import PROVISIONED_KEY
from tests.ports import refused_url
from tests.proxy.conftest import verify_jwt
from tests.reliability.rawhttp import RawResponse, exchange, request_bytes
from tests.reliability.stack import Stack, app_headers, nc_headers, running_stack

CACHED_KEY = "tk_cached_reliability_0123456789abcdef"
MOUNT = shutil.which("mount") or "/bin/mount"
UMOUNT = shutil.which("umount") or "/bin/umount"
ALICE = "/nc/remote.php/dav/files/alice/"


# ------------------------------------------------------------------ helpers


async def send(
    stack: Stack,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> RawResponse:
    return await exchange(
        "127.0.0.1", stack.port, request_bytes(method, target, headers or [], body)
    )


async def as_user(
    stack: Stack, method: str, target: str, uid: str, body: Any = None
) -> RawResponse:
    headers = app_headers(uid)
    data = b""
    if body is not None:
        headers.append(("Content-Type", "application/json"))
        data = json.dumps(body).encode()
    return await send(stack, method, target, headers, data)


def mount_tmpfs(target: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("read-only and full storage need tmpfs mounts (root)")
    done = subprocess.run(
        [MOUNT, "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bfst", dir="/tmp"))
    mount_tmpfs(path, f"size={size},mode=0700")
    try:
        yield path
    finally:
        subprocess.run([UMOUNT, "-l", str(path)], capture_output=True, check=False)
        path.rmdir()


def seed(directory: Path, service_url: str) -> dict[str, bytes]:
    """A cached tenant key bound to the fake service and the picker's saved choice."""
    storage.write_json_atomic(
        directory / "tenant-key.json",
        {
            "tenantKey": CACHED_KEY,
            "organizationId": "org-cached",
            "organizationName": "Cached Org",
            "ncInstanceId": "nc-host:cached",
            "ncVersion": "32.0.1",
            "boundApiBaseUrl": service_url,
            "provisionedAt": "2026-01-01T00:00:00Z",
        },
    )
    storage.write_json_atomic(
        directory / "setup-config.json",
        {"mode": "self-hosted", "apiBaseUrl": service_url, "savedAt": 1.0},
    )
    return snapshot(directory)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def fill(directory: Path) -> None:
    """Use up every free byte of the file system `directory` is on."""
    fd = os.open(directory / "filler.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 64, 1):
            block = b"\0" * size
            failure = None
            try:
                while True:
                    os.write(fd, block)
            except OSError as exc:
                failure = exc.errno
            assert failure == errno.ENOSPC
    finally:
        os.close(fd)


async def api_uses(stack: Stack, key: str) -> None:
    """A chat-side call works and its JWT is signed with `key`."""
    resp = await as_user(stack, "GET", "/api/json", "alice")
    assert resp.status == 200, resp.raw[:300]
    token = stack.service.last("/api/json").headers["Authorization"].removeprefix("Bearer ")
    assert verify_jwt(token, key)["sub"] == "alice"


def no_temp_files(directory: Path) -> None:
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ read-only and full storage


async def _frozen_stack_checks(stack: Stack, data: Path, before: dict[str, bytes]) -> None:
    """The checks shared by the read-only and the full storage cases."""
    state = stack.app[TENANT]
    assert (state.key, state.source) == (CACHED_KEY, "cache")
    await api_uses(stack, CACHED_KEY)
    # The admin's setup change cannot be saved: a clear error, nothing half-written.
    resp = await as_user(
        stack,
        "POST",
        "/setup",
        "admin",
        {"mode": "self-hosted", "apiBaseUrl": refused_url()},
    )
    assert resp.status == 500
    assert resp.code == "setup_not_saved"
    assert "persistent storage" in resp.json()["error"]
    # The user sync's state cannot be written either: said in its status, run not lost.
    resp = await as_user(stack, "POST", "/webhook/user-sync?wait=1", "")
    assert resp.status == 200
    sync = resp.json()
    assert sync["state"] == "baseline"
    assert "could not write user-sync.json" in sync["lastError"]
    # A re-bootstrap (what a saved setup change triggers) keeps the old key and says why.
    with pytest.raises(BootstrapFailed) as info:
        await stack.app[ROTATION].rebootstrap()
    assert info.value.instance_code == "tenant_store_failed"
    assert stack.control.bootstraps == []  # no key was minted that could not be kept
    assert (state.key, state.source, state.status) == (CACHED_KEY, "cache", "ok")
    await api_uses(stack, CACHED_KEY)
    # Nothing corrupted: every file as it was, no temp file left.
    after = snapshot(data)
    for name, content in before.items():
        assert after[name] == content, name
    no_temp_files(data)
    resp = await send(stack, "GET", "/heartbeat")
    assert resp.status == 200


async def test_read_only_storage_keeps_the_old_key_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    before: dict[str, bytes] = {}
    with tmpfs("1m") as data:

        def prepare(service: FakeService) -> None:
            before.update(seed(data, str(service.url)))
            subprocess.run([MOUNT, "-o", "remount,ro", str(data)], check=True)

        async with running_stack(
            APP_PERSISTENT_STORAGE=str(data), BEEFLOW_TENANT_KEY="auto", prepare=prepare
        ) as stack:
            stack.control.verify_key = CACHED_KEY
            await _frozen_stack_checks(stack, data, before)
    logged = [r.getMessage() for r in caplog.records]
    assert any("Read-only file system" in m or "read-only" in m for m in logged), logged


async def test_full_storage_keeps_the_old_key_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    before: dict[str, bytes] = {}
    with tmpfs("256k") as data:

        def prepare(service: FakeService) -> None:
            before.update(seed(data, str(service.url)))
            fill(data)
            before.pop("filler.bin", None)

        async with running_stack(
            APP_PERSISTENT_STORAGE=str(data), BEEFLOW_TENANT_KEY="auto", prepare=prepare
        ) as stack:
            stack.control.verify_key = CACHED_KEY
            await _frozen_stack_checks(stack, data, before)
    logged = [r.getMessage() for r in caplog.records]
    assert any("the storage is full" in m or "No space left" in m for m in logged), logged


async def test_first_bootstrap_on_a_full_disk_uses_the_new_key_and_says_so() -> None:
    with tmpfs("128k") as data:
        async with running_stack(
            APP_PERSISTENT_STORAGE=str(data),
            BEEFLOW_TENANT_KEY="auto",
            prepare=lambda service: seed_and_fill(data, str(service.url)),
        ) as stack:
            stack.control.verify_key = PROVISIONED_KEY
            resp = await as_user(stack, "POST", "/init", "")
            assert resp.status == 200
            async with asyncio.timeout(10):
                while not any(p.get("progress") == 100 for p in stack.nc.progress):
                    await asyncio.sleep(0.02)
            await api_uses(stack, PROVISIONED_KEY)
            resp = await as_user(stack, "GET", "/heartbeat", "")
            boot = resp.json()["bootstrap"]
            assert boot["state"] == "ok"
            assert boot["storageError"] == "could not write tenant-key.json: the storage is full"
            assert "APP_PERSISTENT_STORAGE" in boot["storageRemediation"]
            assert not (data / "tenant-key.json").exists()  # no torn file
            # A background write (the user sync's) may be failing on the full disk right now:
            # what is checked is what it leaves once it is done.
            await storage.settle()
            no_temp_files(data)
            anonymous = (await send(stack, "GET", "/heartbeat")).json()["bootstrap"]
            assert "storageError" not in anonymous


def seed_and_fill(directory: Path, service_url: str) -> None:
    """Only the picker's choice (no key yet), then not a byte free."""
    storage.write_json_atomic(
        directory / "setup-config.json",
        {"mode": "self-hosted", "apiBaseUrl": service_url, "savedAt": 1.0},
    )
    fill(directory)


# ------------------------------------------------------------------ clock skew on /nc


async def test_clock_skew_beyond_the_window_is_refused_and_never_locks_out() -> None:
    async with running_stack() as stack:
        stack.dav.put_file("alice", "a.txt", b"hello")
        target = ALICE + "a.txt"

        async def get(offset: int) -> RawResponse:
            ts = int(time.time()) + offset
            return await send(stack, "GET", target, nc_headers("GET", target, ts=ts))

        for offset in (-295, 295):
            ok = await get(offset)
            assert ok.status == 200
            assert ok.body == b"hello"
        # A service whose clock is 6 minutes off: every call refused with the reason...
        for offset in [-360] * 6 + [360] * 6:
            late = await get(offset)
            assert late.status == 401
            assert late.code == "signature_expired"
            assert b"expected" not in late.body.lower()
        # ...visible to the admin in the heartbeat...
        beat = (await as_user(stack, "GET", "/heartbeat", "")).json()["ncCallbacks"]
        assert beat["consecutive"] == 12
        assert "clock" in beat["warning"]
        assert beat["lastReason"] == "signature_expired"
        # ...and once the clock is right again the genuine caller is never locked out.
        ok = await get(0)
        assert ok.status == 200
        assert len([d for d in stack.dav.seen if d.method == "GET"]) == 3


# ------------------------------------------------------------------ nothing lost


CREATED = "OCP\\User\\Events\\UserCreatedEvent"


async def webhook(stack: Stack, uid: str) -> dict[str, Any]:
    body = {"eventType": "OCP\\User\\Events\\UserCreatedEvent", "userId": uid}
    resp = await as_user(stack, "POST", "/webhook/nc-events", "", body)
    assert resp.status == 200
    assert resp.elapsed < 1.0  # Nextcloud waits 3 s at most
    data: dict[str, Any] = resp.json()
    return data


def undelivered(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if "not delivered to the service" in r.getMessage() or "not forwarded" in r.getMessage()
    ]


async def settle_forwards(stack: Stack, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while running("events-forward"):
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("fault", ["http_500", "bad_signature", "unreachable"])
async def test_every_accepted_webhook_is_forwarded_or_logged(
    fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_stack() as stack:
        if fault == "http_500":
            stack.control.sync_status = 500
        elif fault == "bad_signature":
            stack.control.verify_key = "tk_some_other_key_0123456789abcdef"
        else:
            await stack.service.stop()
        answers = [await webhook(stack, f"user{i}") for i in range(10)]
        assert all(a == {"ok": True, "event": "user.created", "queued": True} for a in answers)
        await settle_forwards(stack)
        delivered = [d for d in stack.control.deliveries if d.status == 200]
        assert delivered == []
        assert len(undelivered(caplog)) == len(answers)
        beat = (await as_user(stack, "GET", "/heartbeat", "")).json()
        assert beat["events"]["webhook"]["failed"] == len(answers)


async def test_a_full_queue_says_so_and_loses_nothing_it_accepted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING)
    # The real limit is 1000; each delivered webhook rewrites (and fsyncs) the
    # user-events-recent.json record, so 1000 take seconds here: a smaller queue, same code.
    monkeypatch.setattr(events, "MAX_QUEUED", 100)
    async with running_stack() as stack:
        stack.control.sync_gate = asyncio.Event()  # the service holds every delivery
        queued = refused = 0
        url = f"http://127.0.0.1:{stack.port}/webhook/nc-events"
        headers = dict(app_headers(""))

        async def one(session: aiohttp.ClientSession, uid: str) -> dict[str, Any]:
            body = {"eventType": "OCP\\User\\Events\\UserCreatedEvent", "userId": uid}
            async with session.post(url, json=body, headers=headers) as resp:
                assert resp.status == 200
                data: dict[str, Any] = await resp.json()
                return data

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as session:
            answers = await asyncio.gather(
                *(one(session, f"user{i}") for i in range(events.MAX_QUEUED + 5))
            )
        for answer in answers:
            if answer.get("queued"):
                queued += 1
            else:
                assert answer["code"] == "queue_full"
                refused += 1
        assert (queued, refused) == (events.MAX_QUEUED, 5)
        assert len(undelivered(caplog)) == refused  # the refused ones are logged
        stack.control.sync_gate.set()
        await settle_forwards(stack, timeout=30)
        delivered = {d.json()["ncUid"] for d in stack.control.deliveries if d.status == 200}
        assert len(delivered) == queued  # each accepted one arrived, once
        assert len(stack.control.deliveries) == queued
