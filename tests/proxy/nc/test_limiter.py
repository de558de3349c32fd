"""Abuse control on /nc: failures are billed after verification into one global failure-only
limiter (60 per 60 s), so a forged flood never locks out the genuine service; counters are
visible in the heartbeat (counts for everyone, details for AppAPI-authenticated callers)."""

from __future__ import annotations

import pytest

from beeflow.proxy.nc.signatures import FAILURE_LIMIT, GUARD
from tests.fakes.nextcloud_dav import FakeDav
from tests.helpers import RunningConnector
from tests.proxy.nc.caller import NcCaller, outcome

TARGET = "/nc/ocs/v2.php/apps/echo/f"


async def test_forged_flood_then_the_genuine_call_succeeds(
    caller: NcCaller, nc_conn: RunningConnector, dav: FakeDav
) -> None:
    statuses = []
    for i in range(FAILURE_LIMIT + 40):
        resp = await caller.request("PUT", TARGET, body=b"forged", key=f"forged-key-{i:08d}")
        async with resp:
            statuses.append(resp.status)
            if resp.status == 429:
                retry_after = int(resp.headers["Retry-After"])
                body = await resp.json()
    assert statuses[:FAILURE_LIMIT] == [401] * FAILURE_LIMIT
    assert set(statuses[FAILURE_LIMIT:]) == {429}
    assert body["code"] == "signature_rate_limited"
    assert 1 <= retry_after <= 60
    assert body["retryAfter"] == retry_after
    assert dav.seen == []

    # Verification comes first: the genuine caller is never refused by the limiter. (Three
    # different bodies: the same signed PUT twice would be a replay.)
    for i in range(3):
        resp = await caller.request("PUT", TARGET, body=b"genuin%d" % i)
        async with resp:
            assert resp.status == 200
            assert (await resp.json())["ocs"]["data"]["bodySize"] == 7
    # The window is not reset by a success; forged calls stay throttled.
    assert await outcome(await caller.request("GET", TARGET, sign_uid="bob")) == (
        429,
        "signature_rate_limited",
    )
    stats = nc_conn.app[GUARD].stats
    assert stats.failures == FAILURE_LIMIT + 41
    assert stats.consecutive == 1
    assert stats.verified == 3
    assert stats.rate_limited == 41


async def test_non_signature_refusals_are_not_billed(
    caller: NcCaller, nc_conn: RunningConnector
) -> None:
    """Unproxied paths, traversal and wrong verbs are refused before any signature work and
    spend nothing of the budget."""
    for _ in range(FAILURE_LIMIT + 5):
        assert (await outcome(await caller.request("GET", "/nc/status.php")))[0] == 404
        assert (await outcome(await caller.request("GET", "/nc/ocs/%2e%2e/x")))[0] == 400
    assert await outcome(await caller.request("GET", TARGET, sign_uid="bob")) == (
        401,
        "signature_mismatch",
    )
    assert nc_conn.app[GUARD].stats.failures == 1


@pytest.mark.parametrize("trusted", [False, True])
async def test_counters_in_the_heartbeat(
    caller: NcCaller, nc_conn: RunningConnector, trusted: bool
) -> None:
    for _ in range(5):
        await outcome(await caller.request("GET", TARGET, sign_uid="bob"))
    resp = await nc_conn.request("GET", "/heartbeat", user="" if trusted else None)
    async with resp:
        health = (await resp.json())["ncCallbacks"]
    assert health["failures"] == 5
    assert health["consecutive"] == 5
    assert "tenant key" in health["warning"]
    if trusted:
        assert health["lastReason"] == "signature_mismatch"
        assert health["lastAt"].endswith("Z")
        assert health["verified"] == 0
        assert health["rateLimited"] == 0
    else:
        assert set(health) == {"failures", "consecutive", "warning"}

    assert (await outcome(await caller.request("GET", TARGET)))[0] == 200
    resp = await nc_conn.request("GET", "/heartbeat", user="" if trusted else None)
    async with resp:
        health = (await resp.json())["ncCallbacks"]
    assert health["consecutive"] == 0
    assert "warning" not in health
