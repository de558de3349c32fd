"""One test body, two servers: the fake Task Processing and Talk of tests/fakes/ and the real
Nextcloud 32.0.1 with AppAPI 32.0.0. What the real one shows here is what the fakes must do.

The probe provider serves `core:generateemoji`, a type Bee Flow never registers, so the lane's
connector never takes its tasks. The calls come from 127.0.0.2 (the connector's counters are
127.0.0.1's)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
from yarl import URL

from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_tasks import FakeTaskProcessing
from tests.fakes.talk import FakeTalk
from tests.helpers import SECRET

pytestmark = pytest.mark.timeout(120)

PROBE_IP = "127.0.0.2"
APP_ID = "bee_flow"
PROVIDER = "/ocs/v2.php/apps/app_api/api/v1/ai_provider/task_processing"
TP = "/ocs/v2.php/taskprocessing"
PROBE = "bee_flow:parity-probe"
EMOJI = "core:generateemoji"


@attrs.define
class Server:
    kind: str
    url: URL
    secret: str
    version: str
    attempts: Any  # () -> int

    def headers(self, user: str = "") -> dict[str, str]:
        token = base64.b64encode(f"{user}:{self.secret}".encode()).decode()
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
        fake.add_user("admin", groups=["admin"])
        FakeTaskProcessing(fake).mount()
        talk = FakeTalk(fake, installed=False).mount()
        await fake.start()
        yield Server("fake", fake.url, SECRET, "1.0.0", lambda: fake.attempts_for(PROBE_IP))
        await talk.close()
        await fake.stop()
        return
    lane = request.getfixturevalue("lane")
    lane.nc.reset_bruteforce(PROBE_IP)
    yield Server(
        "real",
        lane.nc.url,
        lane.secret,
        lane.env()["APP_VERSION"],
        lambda: lane.nc.attempts(PROBE_IP),
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(local_addr=(PROBE_IP, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def call(
    session: aiohttp.ClientSession,
    server: Server,
    method: str,
    path: str,
    *,
    user: str = "",
    body: Any = None,
) -> tuple[int, Any]:
    url = URL(str(server.url) + path).update_query(format="json")
    async with session.request(method, url, json=body, headers=server.headers(user)) as resp:
        text = await resp.text()
        return resp.status, (await resp.json(content_type=None)) if text else None


def probe(shape_type: Any) -> dict[str, Any]:
    return {
        "provider": {
            "id": PROBE,
            "name": "Parity probe",
            "task_type": EMOJI,
            "expected_runtime": 5,
            "optional_input_shape": [
                {"name": "hint", "description": "a hint", "shape_type": shape_type}
            ],
            "optional_output_shape": [],
            "input_shape_enum_values": {},
            "input_shape_defaults": {},
            "optional_input_shape_enum_values": {},
            "optional_input_shape_defaults": {},
            "output_shape_enum_values": {},
            "optional_output_shape_enum_values": {},
        },
        "customTaskType": None,
    }


async def offered(session: aiohttp.ClientSession, server: Server) -> set[str]:
    status, data = await call(session, server, "GET", f"{TP}/tasktypes", user="bob")
    assert status == 200, data
    return set(data["ocs"]["data"]["types"])


async def test_a_shape_type_given_by_name_registers_but_is_never_offered(
    server: Server, session: aiohttp.ClientSession
) -> None:
    try:
        status, _ = await call(session, server, "POST", PROVIDER, body=probe("Text"))
        assert status == 200
        assert EMOJI not in await offered(session, server)
        status, _ = await call(session, server, "POST", PROVIDER, body=probe(1))
        assert status == 200  # the same name again: overwritten
        assert EMOJI in await offered(session, server)
    finally:
        status, _ = await call(session, server, "DELETE", PROVIDER, body={"name": PROBE})
    assert status == 200
    status, _ = await call(session, server, "DELETE", PROVIDER, body={"name": PROBE})
    assert status == 404
    assert EMOJI not in await offered(session, server)


async def test_a_provider_without_a_required_key_is_400(
    server: Server, session: aiohttp.ClientSession
) -> None:
    body = probe(1)
    del body["provider"]["input_shape_defaults"]
    status, data = await call(session, server, "POST", PROVIDER, body=body)
    assert (status, data["ocs"]["data"]) == (400, [])


async def test_the_listing_needs_a_user_and_refusing_the_empty_one_counts_nothing(
    server: Server, session: aiohttp.ClientSession
) -> None:
    before = server.attempts()
    status, data = await call(session, server, "GET", f"{TP}/tasktypes")
    assert (status, data["ocs"]["meta"]["statuscode"]) == (401, 997)
    assert server.attempts() == before


async def test_next_hands_a_task_out_once_and_a_later_result_overwrites(
    server: Server, session: aiohttp.ClientSession
) -> None:
    await call(session, server, "POST", PROVIDER, body=probe(1))
    try:
        body = {"input": {"input": "party"}, "type": EMOJI, "appId": "parity"}
        status, data = await call(session, server, "POST", f"{TP}/schedule", user="bob", body=body)
        assert status == 200, data
        task_id = data["ocs"]["data"]["task"]["id"]
        assert data["ocs"]["data"]["task"]["status"] == "STATUS_SCHEDULED"
        query = f"{TP}/tasks_provider/next?providerIds[]={PROBE}&taskTypeIds[]={EMOJI}"
        status, data = await call(session, server, "GET", query)
        assert status == 200
        handed = data["ocs"]["data"]
        assert (handed["task"]["id"], handed["task"]["status"]) == (task_id, "STATUS_RUNNING")
        assert handed["provider"] == {"name": PROBE}
        assert handed["task"]["userId"] == "bob"
        status, _ = await call(session, server, "GET", query)
        assert status == 204  # locked to the first caller
        result = f"{TP}/tasks_provider/{task_id}/result"
        status, data = await call(
            session, server, "POST", result, body={"output": {"output": "🎉", "extra": 1}}
        )
        task = data["ocs"]["data"]["task"]
        assert (status, task["status"], task["output"]) == (
            200,
            "STATUS_SUCCESSFUL",
            {"output": "🎉"},
        )
        status, data = await call(
            session,
            server,
            "POST",
            result,
            body={"errorMessage": "late", "userFacingErrorMessage": "x"},
        )
        assert (status, data["ocs"]["data"]["task"]["status"]) == (200, "STATUS_FAILED")
        status, data = await call(session, server, "GET", f"{TP}/task/{task_id}", user="bob")
        assert data["ocs"]["data"]["task"]["status"] == "STATUS_FAILED"
        assert "errorMessage" not in data["ocs"]["data"]["task"]
        status, _ = await call(session, server, "GET", f"{TP}/task/{task_id}", user="admin")
        assert status == 404  # someone else's task
        status, data = await call(
            session,
            server,
            "POST",
            f"{TP}/tasks_provider/99999999/result",
            body={"errorMessage": "x"},
        )
        assert status == 404
    finally:
        await call(session, server, "DELETE", PROVIDER, body={"name": PROBE})


async def test_a_talk_bot_without_talk_is_refused_with_400(
    server: Server, session: aiohttp.ClientSession
) -> None:
    body = {"name": "Bee Flow", "route": "/hooks/parity", "description": "probe"}
    status, data = await call(
        session, server, "POST", "/ocs/v2.php/apps/app_api/api/v1/talk_bot", body=body
    )
    assert (status, data["ocs"]["meta"]["message"]) == (400, "Talk bots could not be registered")
    status, _ = await call(
        session,
        server,
        "DELETE",
        "/ocs/v2.php/apps/app_api/api/v1/talk_bot",
        body={"route": "/hooks/parity"},
    )
    assert status == 404
