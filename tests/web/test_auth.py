"""Inbound AppAPI authentication: the full matrix of contract 1.2 over a real socket."""

from __future__ import annotations

import base64
import logging

import pytest
from aiohttp import web

from beeflow.errors import Unauthorized
from beeflow.web.auth import IDENTITY, Access, add_route, decode_auth_header
from beeflow.web.responses import json_response
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import SECRET, RunningConnector, appapi_headers


async def _whoami(request: web.Request) -> web.Response:
    ident = request[IDENTITY]
    return json_response({"user": ident.user_id, "trusted": ident.trusted})


def _routes(app: web.Application) -> None:
    add_route(app, "GET", "/t/public", _whoami, Access.PUBLIC)
    add_route(app, "GET", "/t/user", _whoami, Access.USER)
    add_route(app, "GET", "/t/admin", _whoami, Access.ADMIN)
    add_route(app, "POST", "/t/admin-service", _whoami, Access.ADMIN, service_ok=True)


@pytest.fixture
async def app_conn(connector_factory: ConnectorFactory) -> RunningConnector:
    return await connector_factory(customise=_routes)


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _with_auth(value: str) -> dict[str, str]:
    return {**appapi_headers("alice"), "AUTHORIZATION-APP-API": value}


BAD_HEADERS = [
    ("missing", {}, "appapi_headers_missing"),
    (
        "no app id",
        {"AUTHORIZATION-APP-API": _b64(f"alice:{SECRET}"), "EX-APP-VERSION": "1"},
        "appapi_headers_missing",
    ),
    (
        "no version",
        {"AUTHORIZATION-APP-API": _b64(f"alice:{SECRET}"), "EX-APP-ID": "bee_flow"},
        "appapi_headers_missing",
    ),
    (
        "garbled base64",
        {**appapi_headers("alice"), "AUTHORIZATION-APP-API": "%%%"},
        "appapi_header_malformed",
    ),
    (
        "no colon",
        {**appapi_headers("alice"), "AUTHORIZATION-APP-API": _b64("alice" + SECRET)},
        "appapi_header_malformed",
    ),
    (
        "non utf-8",
        {**appapi_headers("alice"), "AUTHORIZATION-APP-API": _b64(b"\xff\xfe:" + SECRET.encode())},
        "appapi_header_malformed",
    ),
    (
        "too long",
        {**appapi_headers("alice"), "AUTHORIZATION-APP-API": "A" * 5000},
        "appapi_header_malformed",
    ),
    ("wrong secret", appapi_headers("alice", secret="x" * 128), "appapi_secret_mismatch"),
    ("secret prefix", appapi_headers("alice", secret=SECRET[:-1]), "appapi_secret_mismatch"),
    ("wrong app id", appapi_headers("alice", app_id="other_app"), "appapi_app_id_mismatch"),
]


@pytest.mark.parametrize(("label", "headers", "code"), BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
async def test_user_route_rejects_bad_headers(
    app_conn: RunningConnector, label: str, headers: dict[str, str], code: str
) -> None:
    async with await app_conn.request("GET", "/t/user", headers=headers) as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["code"] == code
    assert SECRET not in str(body)


async def test_user_route_accepts_user_and_rejects_empty_user(app_conn: RunningConnector) -> None:
    async with await app_conn.request("GET", "/t/user", user="alice") as resp:
        assert resp.status == 200
        assert await resp.json() == {"user": "alice", "trusted": True}
    async with await app_conn.request("GET", "/t/user", user="") as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "appapi_user_required"


async def test_secret_may_contain_colons() -> None:
    user, secret = decode_auth_header(_b64("bob:se:cr:et"))
    assert (user, secret) == ("bob", "se:cr:et")
    with pytest.raises(Unauthorized):
        decode_auth_header(_b64("bo\r\nb:secret"))


async def test_public_route_needs_nothing_but_reports_trust(app_conn: RunningConnector) -> None:
    async with await app_conn.request("GET", "/t/public") as resp:
        assert await resp.json() == {"user": "", "trusted": False}
    async with await app_conn.request("GET", "/t/public", user="alice") as resp:
        assert await resp.json() == {"user": "alice", "trusted": True}
    async with await app_conn.request(
        "GET", "/t/public", headers=appapi_headers("alice", secret="nope")
    ) as resp:
        assert await resp.json() == {"user": "", "trusted": False}


async def test_admin_route_checks_the_admin_group(
    app_conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    async with await app_conn.request("GET", "/t/admin", user="admin") as resp:
        assert resp.status == 200
    async with await app_conn.request("GET", "/t/admin", user="alice") as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "admin_required"
    async with await app_conn.request("GET", "/t/admin", user="") as resp:
        assert resp.status == 401
    # The lookup impersonated the user being looked up, with AppAPI headers.
    lookups = fake_nc.calls_to("/ocs/v2.php/cloud/users/")
    assert {c.user for c in lookups} == {"admin", "alice"}
    # Cached for 60 s: a second admin call does not look up again.
    before = len(lookups)
    async with await app_conn.request("GET", "/t/admin", user="admin") as resp:
        assert resp.status == 200
    assert len(fake_nc.calls_to("/ocs/v2.php/cloud/users/")) == before


async def test_admin_route_lets_appapi_service_calls_through_only_where_allowed(
    app_conn: RunningConnector,
) -> None:
    async with await app_conn.request("POST", "/t/admin-service", user="") as resp:
        assert resp.status == 200
        assert await resp.json() == {"user": "", "trusted": True}


async def test_admin_lookup_reads_gzipped_answers(
    app_conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    """Nextcloud gzips OCS answers when offered (issue 11.2): the control plane decodes them."""
    async with await app_conn.request("GET", "/t/admin", user="admin") as resp:
        assert resp.status == 200
    call = fake_nc.calls_to("/ocs/v2.php/cloud/users/admin")[0]
    assert "gzip" in call.headers.get("Accept-Encoding", "")


async def test_admin_check_failing_lookup_is_502_not_500(
    app_conn: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    fake_nc.down = True
    async with await app_conn.request("GET", "/t/admin", user="admin") as resp:
        assert resp.status == 502
        assert (await resp.json())["code"] == "user_lookup_failed"


async def test_secret_mismatch_warning_names_the_repair_and_is_rate_limited(
    app_conn: RunningConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="beeflow.appapi")
    for _ in range(5):
        async with await app_conn.request(
            "GET", "/t/user", headers=appapi_headers("alice", secret="wrong")
        ) as resp:
            assert resp.status == 401
    warnings = [r for r in caplog.records if "appapi_secret_mismatch" in r.getMessage()]
    assert len(warnings) == 1
    assert "occ app_api:app:unregister bee_flow" in warnings[0].getMessage()
    assert "wrong" not in warnings[0].getMessage()


async def test_harp_headers_are_accepted_and_aa_version_is_not_checked(
    app_conn: RunningConnector,
) -> None:
    headers = {
        **appapi_headers("alice"),
        "AA-VERSION": "32",
        "harp-shared-key": "k" * 20,
        "ex-app-host": "127.0.0.1",
        "ex-app-port": "23000",
    }
    async with await app_conn.request("GET", "/t/user", headers=headers) as resp:
        assert resp.status == 200
