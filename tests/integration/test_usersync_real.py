"""User sync against the real Nextcloud: no Nextcloud 32 event reaches an ExApp when a user is
added, so the reconciliation finds `occ user:add`'s user and the service gets `user.created`
(then the group membership), signed as the service verifies it."""

from __future__ import annotations

import secrets

import aiohttp
import pytest

from tests.integration.conftest import Lane

pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(120)]


async def test_a_user_added_with_occ_reaches_the_service_as_user_created(lane: Lane) -> None:
    uid = f"it{secrets.token_hex(3)}"
    before = len(lane.service.control.events)
    lane.nc.occ(
        "user:add",
        "--password-from-env",
        "--display-name",
        "Carol Integration",
        "--group",
        "staff",
        uid,
        extra_env={"OC_PASS": secrets.token_urlsafe(18)},
    )
    try:
        # An administrator asks for a run now (the periodic one would come within the interval).
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                (lane.base / "webhook/user-sync").with_query(wait="1"), headers=lane.nc.admin
            ) as resp,
        ):
            status = await resp.json(content_type=None)
            assert resp.status == 200, status
        assert status["state"] == "ok", status
        events = lane.service.control.events[before:]
        mine = [e for e in events if e.get("ncUid") == uid]
        assert [e["event"] for e in mine] == ["user.created", "group.member_added"], events
        assert mine[1]["groupId"] == "staff"
        assert not lane.service.control.refused
    finally:
        lane.nc.occ("user:delete", uid, check=False)
