"""The administrator's require-v3 choice (beeflow/proxy/nc/choice.py) over real sockets: saved
from the setup route, applied to the very next /nc call, kept across a restart, locked by the
environment, refused to anyone but an administrator."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from beeflow.proxy.nc.choice import FILENAME
from tests.conftest import ConnectorFactory
from tests.helpers import RunningConnector
from tests.proxy.nc.caller import NcCaller, outcome

TARGET = "/nc/ocs/v2.php/apps/echo/x"


async def _choose(
    conn: RunningConnector, value: object, user: str = "admin"
) -> tuple[int, dict[str, object]]:
    async with await conn.request(
        "POST", "/setup/nc-signatures", user=user, json={"requireV3": value}
    ) as resp:
        return resp.status, await resp.json()


async def _signatures(conn: RunningConnector) -> dict[str, object]:
    async with await conn.request("GET", "/setup/status", user="admin") as resp:
        body = await resp.json()
    return dict(body["health"]["ncCallbacks"]["signatures"])


async def test_requiring_v3_applies_at_once_and_after_a_restart(
    connector_factory: ConnectorFactory,
    session: aiohttp.ClientSession,
    spool_dir: Path,
    storage: Path,
) -> None:
    conn = await connector_factory(BEEFLOW_SPOOL_DIR=str(spool_dir))
    caller = NcCaller(session, conn.url)
    assert (await outcome(await caller.request("GET", TARGET)))[0] == 200
    assert await _signatures(conn) == {"v1": True, "requireV3": False, "requireV3Source": "default"}
    assert await _choose(conn, True) == (200, {"requireV3": True, "source": "setup"})
    assert await outcome(await caller.request("GET", TARGET)) == (401, "signature_version_refused")
    assert (await outcome(await caller.request("GET", TARGET, version=3)))[0] == 200
    assert json.loads((storage / FILENAME).read_text())["requireV3"] is True
    assert (storage / FILENAME).stat().st_mode & 0o777 == 0o600
    # A new process on the same storage starts with the choice.
    again = await connector_factory(BEEFLOW_SPOOL_DIR=str(spool_dir.with_name("spool-again")))
    caller = NcCaller(session, again.url)
    assert await outcome(await caller.request("GET", TARGET)) == (401, "signature_version_refused")
    assert (await _signatures(again))["requireV3Source"] == "setup"
    assert await _choose(again, False) == (200, {"requireV3": False, "source": "setup"})
    assert (await outcome(await caller.request("GET", TARGET)))[0] == 200


async def test_the_environment_locks_it(
    connector_factory: ConnectorFactory, session: aiohttp.ClientSession, spool_dir: Path
) -> None:
    conn = await connector_factory(
        BEEFLOW_SPOOL_DIR=str(spool_dir), BEEFLOW_NC_SIGNATURE_REQUIRE_V3="1"
    )
    status, body = await _choose(conn, False)
    assert (status, body["code"]) == (409, "env_locked")
    assert (await _signatures(conn))["requireV3Source"] == "env"
    caller = NcCaller(session, conn.url)
    assert await outcome(await caller.request("GET", TARGET)) == (401, "signature_version_refused")


async def test_only_an_administrator_may_choose(nc_conn: RunningConnector) -> None:
    status, body = await _choose(nc_conn, True, user="alice")
    assert (status, body["code"]) == (403, "admin_required")
    async with await nc_conn.request(
        "POST", "/setup/nc-signatures", json={"requireV3": True}
    ) as resp:
        assert resp.status == 401
    for bad in ("yes", 1, None):
        status, body = await _choose(nc_conn, bad)
        assert (status, body["code"]) == (400, "invalid_choice")
    async with await nc_conn.request(
        "POST",
        "/setup/nc-signatures",
        user="admin",
        data=b"requireV3=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        assert resp.status == 415
