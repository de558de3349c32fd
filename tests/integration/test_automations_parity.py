"""One test body, two servers: the fake webhook_listeners (tests/fakes/webhook_listeners.py) and
the real one of Nextcloud 32.0.1. What the real one answers is what the fake must answer: the
row a create reads back, no de-duplication, an update of a missing id that answers 200 and
writes nothing, the refusals (incompatible class, header auth without data, a missing
parameter, a non-admin, the app disabled) and their codes."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import attrs
import pytest
from yarl import URL

from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET, appapi_headers

pytestmark = pytest.mark.timeout(120)

API = "/ocs/v2.php/apps/webhook_listeners/api/v1/webhooks"
CREATED = "OCP\\Files\\Events\\Node\\NodeCreatedEvent"
TAGGED = "OCP\\SystemTag\\TagAssignedEvent"


@attrs.define
class Server:
    kind: str
    url: URL
    secret: str
    version: str
    set_app: Callable[[bool], None]  # webhook_listeners enabled or not

    def headers(self, user: str = "") -> dict[str, str]:
        return {
            **appapi_headers(user, secret=self.secret, version=self.version),
            "OCS-APIRequest": "true",
        }


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.nextcloud)])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    if request.param == "fake":
        fake = FakeNextcloud(secret=SECRET)
        fake.add_user("admin", groups=["admin"])
        fake.add_user("bob")
        await fake.start()

        def fake_app(on: bool) -> None:
            fake.webhook_listeners.enabled = on

        yield Server("fake", fake.url, SECRET, "1.0.0", fake_app)
        await fake.stop()
        return
    lane = request.getfixturevalue("lane")

    def real_app(on: bool) -> None:
        lane.nc.occ("app:enable" if on else "app:disable", "webhook_listeners")

    yield Server("real", lane.nc.url, lane.secret, lane.env()["APP_VERSION"], real_app)


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Callable[..., Any]]:
    """call(method, path_suffix, body=None, user="") -> (HTTP status, OCS statuscode, data);
    every row the test made is deleted afterwards."""
    made: set[int] = set()
    async with aiohttp.ClientSession() as session:

        async def call(
            method: str, suffix: str = "", body: Any = None, *, user: str = "", **query: str
        ) -> tuple[int, int, Any]:
            async with session.request(
                method,
                URL(str(server.url) + API + suffix),
                headers=server.headers(user),
                json=body,
                params={"format": "json", **query},
            ) as resp:
                doc = await resp.json(content_type=None)
            meta, data = doc["ocs"]["meta"], doc["ocs"]["data"]
            if method == "POST" and isinstance(data, dict) and isinstance(data.get("id"), int):
                made.add(data["id"])
            return resp.status, int(meta["statuscode"]), (data if data != [] else meta["message"])

        yield call
        for row_id in made:
            await call("DELETE", f"/{row_id}")


def body(uri: str, event: str = CREATED, **extra: Any) -> dict[str, Any]:
    return {
        "httpMethod": "POST",
        "uri": uri,
        "event": event,
        "eventFilter": {},
        "userIdFilter": None,
        "headers": {"X-Beeflow-Hook-Event": "file.new"},
        "authMethod": "header",
        "authData": {"X-Beeflow-Hook-Secret": "s3cr3t-value"},
        **extra,
    }


def uri() -> str:
    return f"/hooks/parity-{secrets.token_hex(4)}"


async def test_a_created_row_reads_back_like_this(api: Any) -> None:
    where = uri()
    status, code, row = await api("POST", "", body(where, "\\" + CREATED))
    assert (status, code) == (200, 200)
    assert row == {
        "id": row["id"],
        "appId": "bee_flow",
        "userId": None,
        "httpMethod": "POST",
        "uri": where,
        "event": CREATED,  # the leading backslash trimmed
        "eventFilter": [],
        "userIdFilter": "",
        "headers": {"X-Beeflow-Hook-Event": "file.new"},
        "authMethod": "header",
        "authData": row["authData"],
    }
    assert isinstance(row["authData"], str)
    assert "s3cr3t" not in row["authData"]
    _, _, empty = await api("POST", "", body(where, headers={}))
    assert empty["headers"] == []
    _, _, none = await api("POST", "", {**body(where), "headers": None})
    assert none["headers"] is None
    status, _, listed = await api("GET", uri=where)
    assert status == 200
    assert [r["id"] for r in listed] == sorted([row["id"], empty["id"], none["id"]])


async def test_nothing_is_deduplicated_and_updates_rewrite_in_place(api: Any) -> None:
    where = uri()
    _, _, first = await api("POST", "", body(where))
    _, _, second = await api("POST", "", body(where))
    assert first["id"] != second["id"]
    status, _, updated = await api("POST", f"/{first['id']}", body(where, TAGGED))
    assert (status, updated["id"], updated["event"]) == (200, first["id"], TAGGED)
    _, _, listed = await api("GET", uri=where)
    assert {(r["id"], r["event"]) for r in listed} == {
        (first["id"], TAGGED),
        (second["id"], CREATED),
    }


async def test_an_update_of_a_missing_id_answers_200_and_writes_nothing(api: Any) -> None:
    where = uri()
    missing = 900_000 + secrets.randbelow(99_999)
    status, code, row = await api("POST", f"/{missing}", body(where))
    assert (status, code, row["id"]) == (200, 200, missing)
    _, _, listed = await api("GET", uri=where)
    assert listed == "OK"  # an empty list: the envelope's data is []
    status, _, _ = await api("GET", f"/{missing}")
    assert status == 404


async def test_delete_answers_true_then_false(api: Any) -> None:
    _, _, row = await api("POST", "", body(uri()))
    assert (await api("DELETE", f"/{row['id']}"))[2] is True
    assert (await api("DELETE", f"/{row['id']}"))[2] is False


@pytest.mark.parametrize(
    ("change", "status", "code", "words"),
    [
        ({"event": "OCP\\User\\Events\\UserCreatedEvent"}, 400, 400, "not an event class"),
        ({"event": "OCP\\Files\\Events\\Node\\NodeRestoredEvent"}, 400, 400, "not an event"),
        ({"event": "OCA\\Deck\\Event\\CardCreatedEvent"}, 400, 400, "compatible with webhooks"),
        ({"authData": None}, 400, 400, "Header auth method needs"),
        ({"authMethod": "basic"}, 400, 400, "This auth method does not exist"),
        ({"httpMethod": None}, 500, 996, "Internal Server Error"),
    ],
)
async def test_what_it_refuses(
    api: Any, change: dict[str, Any], status: int, code: int, words: str
) -> None:
    got_status, got_code, message = await api("POST", "", {**body(uri()), **change})
    assert (got_status, got_code) == (status, code)
    assert words in message


async def test_only_admins_and_the_exapp_itself(api: Any) -> None:
    assert (await api("GET", user="bob"))[:2] == (403, 403)
    assert (await api("GET", user="admin"))[:2] == (200, 200)
    _, _, row = await api("POST", "", body(uri()), user="admin")
    assert row["userId"] == "admin"
    assert row["appId"] == "bee_flow"


async def test_the_app_disabled_is_404_with_998(server: Server, api: Any) -> None:
    server.set_app(False)
    try:
        assert (await api("GET", uri="/x"))[:2] == (404, 998)
        assert (await api("POST", "", body(uri())))[:2] == (404, 998)
    finally:
        server.set_app(True)
    assert (await api("GET", uri="/x"))[:2] == (200, 200)
