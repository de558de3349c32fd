"""Nextcloud failing under the connector: down during /init (the error is reported, a later
/init succeeds), unreachable and back within the warm-up, and flapping during the user/group
reconciliation (no false deletion, no duplicate, exactly the true changes once it is back)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from beeflow.integrations import usersync
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.tasks import spawn
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import appapi_headers
from tests.reliability.rawhttp import exchange, request_bytes
from tests.reliability.stack import Stack, running_stack
from tests.tenant.helpers import wait_for

STATUS = "/ocs/v1.php/apps/app_api/ex-app/status"


class FlakyNextcloud(FakeNextcloud):
    """The fake Nextcloud, plus paths that answer 503 while listed in `down_paths`."""

    down_paths: tuple[str, ...] = ()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if any(part in request.path for part in self.down_paths):
            return web.Response(status=503, text="Service Unavailable")
        return await super()._middleware(request, handler)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack(nc_class=FlakyNextcloud) as s:
        yield s


async def post(stack: Stack, path: str, uid: str | None = "") -> dict[str, Any]:
    headers = list(appapi_headers(uid).items()) if uid is not None else []
    resp = await exchange("127.0.0.1", stack.port, request_bytes("POST", path, headers))
    assert resp.status in (200, 202), resp.raw[:300]
    data: dict[str, Any] = resp.json()
    return data


async def heartbeat(stack: Stack) -> dict[str, Any]:
    resp = await exchange(
        "127.0.0.1",
        stack.port,
        request_bytes("GET", "/heartbeat", list(appapi_headers("").items())),
    )
    assert resp.status == 200
    data: dict[str, Any] = resp.json()
    return data


async def wait_state(stack: Stack, state: str, timeout: float = 10) -> dict[str, Any]:
    """The trusted heartbeat once the init pipeline reached `state` (no event announces it)."""

    async def settled() -> dict[str, Any]:
        while True:
            body = await heartbeat(stack)
            if body["init"]["state"] == state:
                return body
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(settled(), timeout)


async def init_and_wait(stack: Stack, state: str) -> dict[str, Any]:
    assert await post(stack, "/init") == {"status": "ok"}
    return await wait_state(stack, state)


def progress(nc: FakeNextcloud) -> list[Any]:
    return [p.get("error") or p["progress"] for p in nc.progress]


async def test_registration_down_reports_the_error_then_a_later_init_succeeds(
    stack: Stack,
) -> None:
    nc = stack.nc
    assert isinstance(nc, FlakyNextcloud)
    nc.down_paths = ("/apps/app_api/api/v1/ui/",)
    body = await init_and_wait(stack, "failed")
    assert "HTTP 503" in body["init"]["error"]
    # The failure reached Nextcloud as progress 0 with the error, as AppAPI shows it to admins.
    assert nc.progress[-1]["progress"] == 0
    assert "HTTP 503" in nc.progress[-1]["error"]
    nc.down_paths = ()
    await init_and_wait(stack, "done")
    await wait_for(lambda: len(nc.callbacks) >= 2)
    assert [p["progress"] for p in nc.progress[-3:]] == [60, 80, 100]
    assert [(c.path, c.status) for c in nc.callbacks] == [
        ("/heartbeat", 200),
        ("/enabled?enabled=1", 200),
    ]
    assert stack.app[NEXTCLOUD].budget.used == 0  # a 503 is not a refused login


async def test_nextcloud_down_for_everything_then_back(stack: Stack) -> None:
    nc = stack.nc
    nc.down = True
    body = await init_and_wait(stack, "failed")
    assert body["init"]["error"]
    # The error report was attempted (Nextcloud was down for it too) and nothing else piled up.
    reports = [c.json() for c in nc.calls_to(STATUS, "PUT")]
    assert reports
    assert reports[-1]["progress"] == 0
    nc.down = False
    await init_and_wait(stack, "done")
    assert [p["progress"] for p in nc.progress[-3:]] == [60, 80, 100]
    assert stack.app[NEXTCLOUD].budget.used == 0


class DeadPort:
    """Nextcloud's port while Nextcloud is down: every connection is accepted, its request read
    and the connection closed without an answer, so the client sees the connection fail (a
    `network` error, like a refused connect, which nobody could count). Each attempt is
    recorded as its request line plus body: a retry is the same request seen again."""

    def __init__(self) -> None:
        self.attempts: Counter[tuple[str, bytes]] = Counter()
        self._seen = asyncio.Condition()
        self._server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._drop, "127.0.0.1", port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _drop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head.decode("latin-1").split("\r\n")
            length = next(
                (
                    int(f.split(":", 1)[1])
                    for f in fields
                    if f.lower().startswith("content-length:")
                ),
                0,
            )
            body = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            line, body = "(incomplete)", b""
        finally:
            writer.close()
        async with self._seen:
            self.attempts[(line, body)] += 1
            self._seen.notify_all()

    async def wait_retried(self, times: int, timeout: float = 10.0) -> tuple[str, bytes]:
        """The first request attempted `times` times."""

        def retried() -> bool:
            return any(n >= times for n in self.attempts.values())

        async with self._seen:
            try:
                await asyncio.wait_for(self._seen.wait_for(retried), timeout)
            except TimeoutError:
                raise AssertionError(f"no request retried: {dict(self.attempts)}") from None
        return next(key for key, n in self.attempts.items() if n >= times)


async def test_nextcloud_unreachable_then_back_within_the_warm_up(stack: Stack) -> None:
    nc = stack.nc
    port = nc.url.port
    assert port is not None
    await nc.stop()
    dead = DeadPort()
    await dead.start(port)
    try:
        assert await post(stack, "/init") == {"status": "ok"}
        # aiohttp sends an idempotent request once more by itself when the connection drops
        # (RFC 9112 9.3.1), and only once: a third attempt is the pipeline's own retry.
        line, body = await dead.wait_retried(3)
        assert (await heartbeat(stack))["init"]["state"] == "running"
    finally:
        await dead.stop()
    assert line.startswith(f"PUT {STATUS}?"), line
    assert json.loads(body) == {"progress": 25}
    await nc.start(port=port)
    await wait_state(stack, "done", timeout=15)
    assert [p["progress"] for p in nc.progress] == [25, 60, 80, 100]


# ------------------------------------------------------------------ flapping during user sync

USERS = 30


def populate(nc: FakeNextcloud) -> None:
    for i in range(USERS):
        groups = ["staff"] + (["ops"] if i % 3 == 0 else [])
        nc.add_user(f"u{i:02d}", email=f"u{i}@example.com", display_name=f"U {i}", groups=groups)


def change(nc: FakeNextcloud) -> Counter[tuple[str, str, str | None]]:
    """Deletions, creations, renames and group moves; the events they must produce."""
    want: Counter[tuple[str, str, str | None]] = Counter()
    for i in range(0, 5):
        uid = f"u{i:02d}"
        user = nc.users.pop(uid)
        for group in user.groups:
            want[("group.member_removed", uid, group)] += 1
        want[("user.deleted", uid, None)] += 1
    for i in range(5):
        uid = f"new{i}"
        nc.add_user(uid, email=f"{uid}@example.com", display_name=uid, groups=["staff"])
        want[("user.created", uid, None)] += 1
        want[("group.member_added", uid, "staff")] += 1
    for i in range(5, 10):
        nc.users[f"u{i:02d}"].email = f"renamed{i}@example.com"
        want[("user.updated", f"u{i:02d}", None)] += 1
    for i in range(10, 15):
        nc.users[f"u{i:02d}"].groups.append("sales")
        want[("group.member_added", f"u{i:02d}", "sales")] += 1
    return want


async def flap(nc: FakeNextcloud, period: float) -> None:
    for down in itertools.cycle([True, False]):
        nc.down = down
        await asyncio.sleep(period)


async def test_flapping_during_user_sync_sends_exactly_the_true_changes_once(
    stack: Stack,
) -> None:
    nc, control = stack.nc, stack.control
    populate(nc)
    first = await post(stack, "/webhook/user-sync?wait=1")
    assert first["state"] == "baseline"
    want = change(nc)
    states: list[str] = []
    flapper = spawn(flap(nc, 0.013), name="test-flap")
    try:
        for _ in range(12):
            states.append((await post(stack, "/webhook/user-sync?wait=1"))["state"])
            # Whatever a run under flapping did, the service never got a wrong event.
            got = Counter((e["event"], e["ncUid"], e["groupId"]) for e in control.events)
            assert not got - want, got - want
    finally:
        flapper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flapper
        nc.down = False
    assert "failed" in states  # the flapping did hit the runs
    final = await post(stack, "/webhook/user-sync?wait=1")
    assert final["state"] == "ok"
    assert final["eventsPending"] == 0
    got = Counter((e["event"], e["ncUid"], e["groupId"]) for e in control.events)
    assert got == want  # every true change, each exactly once
    # Nextcloud's 503s are not refused logins: the budget is untouched, no lock-out risk.
    assert stack.app[NEXTCLOUD].budget.used == 0
    assert nc.failures_for() == 0
    snapshot = stack.app[usersync.USER_SYNC].snapshot
    assert snapshot is not None
    assert sorted(snapshot) == sorted(nc.users)
