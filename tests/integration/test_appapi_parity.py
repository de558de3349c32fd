"""One test body, two servers: the fake Nextcloud of tests/fakes/ and the real Nextcloud 32.0.1
with AppAPI 32.0.0. What the real one shows here is what the fake must do: re-registering a UI
entry overwrites it (200, not 409), and the brute-force throttler's arithmetic (2 attempts per
refused call on AppAPI's routes, 1 elsewhere; a lock-out past 10 that refuses valid logins too;
a success clears only its own user's attempts).

The calls come from 127.0.0.2, so the counters they grow are not the connector's (127.0.0.1)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import attrs
import pytest
from yarl import URL

from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET

pytestmark = pytest.mark.timeout(120)

PROBE_IP = "127.0.0.2"
APP_ID = "bee_flow"
UI = "/ocs/v1.php/apps/app_api/api/v1/ui"
STATE_V1 = "/ocs/v1.php/apps/app_api/ex-app/state"
STATE_V2 = "/ocs/v2.php/apps/app_api/ex-app/state"


@attrs.define
class Server:
    """What a test needs of either server."""

    kind: str
    url: URL
    secret: str
    attempts: Callable[[], int]  # `occ security:bruteforce:attempts 127.0.0.2 app_api`
    reset: Callable[[], None]  # `occ security:bruteforce:reset 127.0.0.2`
    version: str

    def headers(self, user: str = "", *, secret: str | None = None) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{secret or self.secret}".encode()).decode()
        return {
            "AUTHORIZATION-APP-API": token,
            "EX-APP-ID": APP_ID,
            "EX-APP-VERSION": self.version,
            "AA-VERSION": "32.0.0",
            "OCS-APIRequest": "true",
        }


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.nextcloud)])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    if request.param == "fake":
        fake = FakeNextcloud(secret=SECRET)
        fake.add_user("bob")
        await fake.start()
        yield Server(
            "fake",
            fake.url,
            SECRET,
            lambda: fake.attempts_for(PROBE_IP),
            lambda: fake.reset_bruteforce(PROBE_IP),
            "1.0.0",
        )
        await fake.stop()
        return
    lane = request.getfixturevalue("lane")
    server = Server(
        "real",
        lane.nc.url,
        lane.secret,
        lambda: lane.nc.attempts(PROBE_IP),
        lambda: lane.nc.reset_bruteforce(PROBE_IP),
        lane.env()["APP_VERSION"],
    )
    server.reset()
    yield server
    server.reset()


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(PROBE_IP, 0)))


async def _call(
    session: aiohttp.ClientSession,
    server: Server,
    method: str,
    path: str,
    *,
    headers: dict[str, str],
    json_body: Any = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    query = {"format": "json", **(params or {})} if "/ocs/" in path else params
    async with session.request(
        method, URL(str(server.url) + path), headers=headers, json=json_body, params=query
    ) as resp:
        if "json" in resp.headers.get("Content-Type", ""):
            return resp.status, await resp.json()
        return resp.status, await resp.text()


def _statuscode(body: Any) -> int:
    return int(body["ocs"]["meta"]["statuscode"])


# ------------------------------------------------------------------ UI registrations


async def test_registering_a_top_menu_entry_again_overwrites_it(server: Server) -> None:
    name = f"it{secrets.token_hex(3)}"
    headers = server.headers()
    async with _client() as session:
        for display, icon in (("One", "img/one.svg"), ("Two", "/img/two.svg")):
            body = {"name": name, "displayName": display, "icon": icon, "adminRequired": 0}
            status, answer = await _call(
                session, server, "POST", f"{UI}/top-menu", headers=headers, json_body=body
            )
            assert (status, _statuscode(answer), answer["ocs"]["data"]) == (200, 100, [])
        status, answer = await _call(
            session, server, "GET", f"{UI}/top-menu", headers=headers, params={"name": name}
        )
        entry = answer["ocs"]["data"]
        assert (entry["display_name"], entry["icon"], entry["appid"]) == (
            "Two",
            "img/two.svg",
            APP_ID,
        )
        status, answer = await _call(
            session, server, "DELETE", f"{UI}/top-menu", headers=headers, params={"name": name}
        )
        assert _statuscode(answer) == 100
        status, answer = await _call(
            session, server, "GET", f"{UI}/top-menu", headers=headers, params={"name": name}
        )
        assert (status, _statuscode(answer)) == (200, 404)


async def test_registering_a_script_again_overwrites_it(server: Server) -> None:
    name = f"it{secrets.token_hex(3)}"
    headers = server.headers()
    key = {"type": "top_menu", "name": name, "path": "js/probe"}
    async with _client() as session:
        for after, path in (("", "js/probe"), ("files", "/js/probe")):
            body = {**key, "path": path, "afterAppId": after}
            status, answer = await _call(
                session, server, "POST", f"{UI}/script", headers=headers, json_body=body
            )
            assert (status, _statuscode(answer)) == (200, 100)
        status, answer = await _call(
            session, server, "GET", f"{UI}/script", headers=headers, params=key
        )
        assert _statuscode(answer) == 100
        assert (answer["ocs"]["data"]["path"], answer["ocs"]["data"]["after_app_id"]) == (
            "js/probe",
            "files",
        )
        status, answer = await _call(
            session, server, "DELETE", f"{UI}/script", headers=headers, params=key
        )
        assert _statuscode(answer) == 100


# ------------------------------------------------------------------ the brute-force throttler


async def test_a_refused_call_adds_two_attempts_on_appapi_routes_and_one_elsewhere(
    server: Server,
) -> None:
    wrong = server.headers("", secret="not-the-secret")
    async with _client() as session:
        status, answer = await _call(session, server, "GET", STATE_V2, headers=wrong)
        assert (status, _statuscode(answer)) == (401, 997)
        assert server.attempts() == 2
        status, _ = await _call(
            session, server, "PROPFIND", "/remote.php/dav/files/bob/", headers=wrong
        )
        assert status == 401
        assert server.attempts() == 3
        # A public page answers anyway, and still counts the refused login.
        status, answer = await _call(
            session, server, "GET", "/ocs/v2.php/cloud/capabilities", headers=wrong
        )
        assert (status, _statuscode(answer)) == (200, 200)
        assert "version" in answer["ocs"]["data"]
        assert server.attempts() == 4
        status, answer = await _call(session, server, "GET", "/status.php", headers=wrong)
        assert (status, answer["installed"]) == (200, True)
        assert server.attempts() == 4  # status.php logs nobody in


async def test_more_than_ten_attempts_lock_the_ip_out_for_valid_logins_too(
    server: Server,
) -> None:
    wrong = server.headers("", secret="not-the-secret")
    async with _client() as session:
        for _ in range(5):
            status, answer = await _call(session, server, "GET", STATE_V2, headers=wrong)
            assert (status, _statuscode(answer)) == (401, 997)
        assert server.attempts() == 10  # at the threshold, not past it: still let in
        status, answer = await _call(session, server, "GET", STATE_V2, headers=wrong)
        # The first validation adds an attempt (11), the second finds the IP over the limit.
        assert (status, _statuscode(answer)) == (429, 429)
        assert answer["ocs"]["meta"]["message"] == "Reached maximum delay"
        assert server.attempts() == 11
        good = server.headers("")
        status, answer = await _call(session, server, "GET", STATE_V2, headers=good)
        assert (status, _statuscode(answer)) == (429, 429)
        status, answer = await _call(session, server, "GET", STATE_V1, headers=good)
        assert (status, _statuscode(answer)) == (200, 429)  # OCS v1: in-band
        status, answer = await _call(
            session, server, "GET", "/ocs/v2.php/cloud/capabilities", headers=good
        )
        assert (status, _statuscode(answer)) == (429, 429)  # public pages too
        status, answer = await _call(
            session, server, "PROPFIND", "/remote.php/dav/files/bob/", headers=good
        )
        assert status == 500  # WebDAV: Sabre turns MaxDelayReached into a 500
        assert "MaxDelayReached" in answer
        assert server.attempts() == 11  # a refused-before-validation call adds nothing


async def test_a_success_clears_only_the_attempts_of_its_own_user(server: Server) -> None:
    async with _client() as session:
        for user in ("", "bob"):
            wrong = server.headers(user, secret="not-the-secret")
            status, _ = await _call(session, server, "GET", STATE_V2, headers=wrong)
            assert status == 401
        assert server.attempts() == 4
        status, answer = await _call(session, server, "GET", STATE_V2, headers=server.headers(""))
        assert (status, _statuscode(answer)) == (200, 200)
        assert server.attempts() == 2  # bob's refusal is still counted
        status, _ = await _call(session, server, "GET", STATE_V2, headers=server.headers("bob"))
        assert status == 200
        assert server.attempts() == 0
