"""The fake Nextcloud answers user reads like Nextcloud's provisioning API and AppAPI do
(UsersController::getUser / getUsersDetails, Session::isLoggedIn, V2Response, the throttler):
the connector's user sync and budget are only as right as these answers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import appapi_headers


async def get(
    nc: FakeNextcloud, path: str, uid: str = "", **query: str
) -> tuple[int, dict[str, Any]]:
    headers = {**appapi_headers(uid), "OCS-APIRequest": "true", "Accept": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            nc.url.with_path(path), params={"format": "json", **query}, headers=headers
        ) as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return resp.status, body


def code(body: dict[str, Any]) -> int:
    return int(body["ocs"]["meta"]["statuscode"])


async def test_reading_another_user_without_being_their_admin_is_998_not_403(
    fake_nc: FakeNextcloud,
) -> None:
    fake_nc.add_user("bob", groups=["staff"])
    status, body = await get(fake_nc, "/ocs/v2.php/cloud/users/bob", "alice")
    assert (status, code(body)) == (404, 998)  # V2Response maps 998 to HTTP 404
    status, body = await get(fake_nc, "/ocs/v1.php/cloud/users/bob", "alice")
    assert (status, code(body)) == (200, 998)  # v1 keeps it in-band
    status, body = await get(fake_nc, "/ocs/v2.php/cloud/users/nobody", "admin")
    assert (status, code(body)) == (404, 404)  # a missing user is OCS 404, not 998
    status, body = await get(fake_nc, "/ocs/v2.php/cloud/users/bob", "admin")
    assert (status, body["ocs"]["data"]["id"]) == (200, "bob")
    fake_nc.add_user("sam", subadmin_of=["staff"])
    status, _ = await get(fake_nc, "/ocs/v2.php/cloud/users/bob", "sam")
    assert status == 200  # a subadmin of one of bob's groups may read him
    assert fake_nc.failure_count_total == 0


async def test_a_disabled_user_is_not_logged_in_and_is_not_a_failed_login(
    fake_nc: FakeNextcloud,
) -> None:
    fake_nc.add_user("dora", enabled=False)
    status, body = await get(fake_nc, "/ocs/v2.php/cloud/users/dora", "dora")
    assert (status, code(body)) == (401, 997)
    status, body = await get(fake_nc, "/ocs/v2.php/cloud/users/dora", "admin")
    assert (status, body["ocs"]["data"]["enabled"]) == (200, False)
    # AppAPI's own routes are public pages: the impersonated disabled user passes there.
    status, body = await get(fake_nc, "/ocs/v2.php/apps/app_api/ex-app/state", "dora")
    assert (status, body["ocs"]["data"]) == (200, 1)
    assert fake_nc.failures_for() == 0
    assert fake_nc.failure_count_total == 0


async def test_the_empty_user_on_an_admin_route_is_401_without_a_failed_login(
    fake_nc: FakeNextcloud,
) -> None:
    status, body = await get(fake_nc, "/ocs/v2.php/cloud/groups/admin/users", "")
    assert (status, code(body)) == (401, 997)
    assert fake_nc.failure_count_total == 0  # the AppAPI login succeeded; nobody is logged in


async def test_users_details_pages_for_admins_and_subadmins_only(fake_nc: FakeNextcloud) -> None:
    for name in ("Bob", "carl", "dave"):
        fake_nc.add_user(name, email=f"{name}@example.com", groups=["staff"])
    fake_nc.users["dave"].enabled = False
    fake_nc.add_user("sam", groups=["ops"], subadmin_of=["staff"])
    path = "/ocs/v2.php/cloud/users/details"
    status, body = await get(fake_nc, path, "admin", limit="2", offset="0")
    assert status == 200
    first = body["ocs"]["data"]["users"]
    assert isinstance(first, dict)
    assert list(first) == ["admin", "alice"]
    assert first["alice"]["email"] == "alice@example.com"
    _, body = await get(fake_nc, path, "admin", limit="2", offset="2")
    assert list(body["ocs"]["data"]["users"]) == ["Bob", "carl"]  # case-insensitive order
    _, body = await get(fake_nc, path, "admin", limit="2", offset="4")
    last = body["ocs"]["data"]["users"]
    assert list(last) == ["dave", "sam"]
    assert last["dave"]["enabled"] is False
    _, body = await get(fake_nc, path, "admin", limit="2", offset="6")
    assert body["ocs"]["data"]["users"] == []  # PHP encodes an empty map as a list
    _, body = await get(fake_nc, path, "sam", limit="500", offset="0")
    assert sorted(body["ocs"]["data"]["users"]) == ["Bob", "alice", "carl", "dave"]
    _, body = await get(fake_nc, path, "alice", limit="500", offset="0")
    assert body["ocs"]["data"]["users"] == []  # neither admin nor subadmin: nobody
    status, body = await get(fake_nc, path, "", limit="500", offset="0")
    assert (status, code(body)) == (401, 997)
    assert fake_nc.failure_count_total == 0


@pytest.mark.parametrize(("ocs", "http"), [(100, 200), (200, 200), (400, 400), (404, 404)])
async def test_v2_http_mapping_of_ordinary_codes(
    fake_nc: FakeNextcloud, ocs: int, http: int
) -> None:
    from tests.fakes.nextcloud import _v2_http

    assert _v2_http(ocs) == http
    assert (_v2_http(996), _v2_http(997), _v2_http(998), _v2_http(999)) == (500, 401, 404, 500)
    assert _v2_http(102) == 400
