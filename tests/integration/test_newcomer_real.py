"""What a newcomer and an operator meet, against the real Nextcloud 32.0.1 / AppAPI 32.0.0: the
app's root without its trailing slash (AppAPI hands the connector `/` for both forms, so only
the page can tell), the access log of requests through AppAPI's PHP proxy (route family, status
and Nextcloud's request id, nothing of the path), and the setup status through that proxy
(the saved service's reachability and the connection the page shows)."""

from __future__ import annotations

import functools
import json
import re

import aiohttp
import pytest

from tests.integration.conftest import Lane
from tests.integration.exapp import wait_until

pytestmark = [pytest.mark.nextcloud, pytest.mark.timeout(120)]

ACCESS = re.compile(
    r"beeflow\.access: (?P<method>\S+) (?P<route>\S+) (?P<status>\d+) \S+ms (?P<bytes>\S+)B "
    r"rid=(?P<rid>\S+)$"
)


def logged(lane: Lane, since: int) -> bool:
    return bool(access_lines(lane, since))


def access_lines(lane: Lane, since: int) -> list[re.Match[str]]:
    assert lane.connector is not None
    return [m for line in lane.connector.lines[since:] if (m := ACCESS.search(line))]


async def test_the_root_without_its_slash_reaches_the_connector_as_the_root(lane: Lane) -> None:
    """Measured: `.../proxy/bee_flow` and `.../proxy/bee_flow/` both arrive as `GET /`. The
    connector cannot redirect; the bundled page carries the hint shown when its links break."""
    assert lane.connector is not None
    bare = str(lane.base)
    assert not bare.endswith("/")
    for url in (bare, bare + "/"):
        since = lane.connector.mark()
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers=lane.nc.admin) as resp,
        ):
            body = await resp.text()
            assert resp.status == 200, body
            request_id = resp.headers["X-Request-Id"]
        assert "<title>Bee Flow</title>" in body
        assert 'class="slash-hint"' in body
        wait_until(functools.partial(logged, lane, since), 10, "the access-log line")
        (line,) = access_lines(lane, since)
        assert (line["method"], line["route"], line["status"]) == ("GET", "/", "200")
        # The id AppAPI passes on is the one Nextcloud answered the browser with.
        assert line["rid"] == request_id


async def test_the_access_log_holds_no_path_query_or_file_name(lane: Lane) -> None:
    assert lane.connector is not None
    since = lane.connector.mark()
    secret_name = "Quarterly-Salaries-2026.pdf"
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            lane.base / "api" / "files" / secret_name,
            params={"token": "t0ps3cret"},
            headers=lane.nc.bob,
        ) as resp,
    ):
        await resp.read()
    wait_until(functools.partial(logged, lane, since), 10, "the access-log line")
    (line,) = access_lines(lane, since)
    assert (line["method"], line["route"]) == ("GET", "/api/*")
    written = "\n".join(lane.connector.lines[since:])
    for leak in (secret_name, "t0ps3cret", "bob@example.com", lane.secret):
        assert leak not in written


async def test_the_setup_status_says_whether_the_saved_service_answers(lane: Lane) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(lane.base / "setup/status", headers=lane.nc.admin) as resp,
    ):
        status = json.loads(await resp.text())
        assert resp.status == 200, status
    assert status["service"] == {"reachable": True, "status": 200}
    assert status["connection"]["state"] == "connected"
    assert status["connection"]["label"] == "Connected"
