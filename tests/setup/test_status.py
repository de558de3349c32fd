"""The setup status says "Connected" only when the tenant has a working key AND the saved
service answers its health check: an unreachable saved service is reported as such (checked
when saved, tested, or when the status is read and the last check is older than 15 s)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from yarl import URL

from beeflow.service_client import SERVICE_URL
from beeflow.setup.common import STATE
from beeflow.setup.reachability import FRESH_SECONDS, Reachability, connection, service_field
from tests.conftest import ConnectorFactory
from tests.ports import refused_url
from tests.setup.conftest import HealthServer
from tests.setup.test_routes import get_status, post

OK = {"reachable": True, "status": 200}
DOWN = {"reachable": False, "status": None, "code": "unreachable", "error": "Could not connect"}


async def test_an_unreachable_saved_service_is_not_connected(
    connector_factory: ConnectorFactory,
) -> None:
    conn = await connector_factory()
    status, body = await post(conn, "/setup", {"mode": "self-hosted", "apiBaseUrl": refused_url()})
    assert status == 200
    assert body["probe"]["ok"] is False
    state = await get_status(conn)
    # The key (BEEFLOW_TENANT_KEY) is there, but the service it is for does not answer.
    assert state["tenant"]["status"] == "ok"
    assert state["service"] == {
        "reachable": False,
        "status": None,
        "code": "unreachable",
        "error": "Could not connect to the server",
    }
    assert state["connection"]["state"] == "unreachable"
    assert state["connection"]["label"] == (
        "Not connected: the Bee Flow service does not answer "
        "(Could not connect to the server [unreachable])"
    )


async def test_a_key_and_an_answering_service_are_connected(
    connector_factory: ConnectorFactory, health: HealthServer
) -> None:
    conn = await connector_factory()
    status, _ = await post(conn, "/setup", {"mode": "self-hosted", "apiBaseUrl": str(health.url)})
    assert status == 200
    state = await get_status(conn)
    assert state["service"] == {"reachable": True, "status": 200}
    assert state["connection"] == {"state": "connected", "label": "Connected", "detail": ""}


async def test_a_stale_check_is_made_again_when_the_status_is_read(
    connector_factory: ConnectorFactory, health: HealthServer
) -> None:
    conn = await connector_factory(BEEFLOW_API_BASE_URL=str(health.url))
    assert (await get_status(conn))["connection"]["state"] == "connected"
    checks = len(health.seen)
    health.mode = "error"
    # Within 15 s the last check stands (the page polls the status).
    assert (await get_status(conn))["connection"]["state"] == "connected"
    assert len(health.seen) == checks
    reach = conn.app[STATE].reachability
    url = conn.app[SERVICE_URL].url
    result = reach.fresh(url)
    assert result is not None
    reach.record(url, result, at=time.monotonic() - FRESH_SECONDS - 1)
    state = await get_status(conn)
    assert len(health.seen) == checks + 1
    assert state["service"]["code"] == "unhealthy"
    assert state["connection"]["state"] == "unreachable"


async def test_statuses_read_at_once_share_one_check(
    connector_factory: ConnectorFactory, health: HealthServer
) -> None:
    conn = await connector_factory(BEEFLOW_API_BASE_URL=str(health.url))
    states = await asyncio.gather(*(get_status(conn) for _ in range(5)))
    assert {s["connection"]["state"] for s in states} == {"connected"}
    assert len(health.seen) == 1


async def test_a_test_of_the_service_in_force_counts_as_its_check(
    connector_factory: ConnectorFactory, health: HealthServer
) -> None:
    conn = await connector_factory(BEEFLOW_API_BASE_URL=str(health.url))
    health.mode = "error"
    status, body = await post(conn, "/setup/test", {"apiBaseUrl": str(health.url)})
    assert (status, body["ok"]) == (200, False)
    state = await get_status(conn)
    assert len(health.seen) == 1
    assert state["connection"]["state"] == "unreachable"


async def test_one_check_per_url_even_when_called_together() -> None:
    reach = Reachability()
    calls: list[URL] = []
    gate = asyncio.Event()

    async def probe(url: URL) -> dict[str, Any]:
        calls.append(url)
        await gate.wait()
        return {"ok": True, "status": 200}

    url = URL("http://svc.example:3001/")
    waiting = [asyncio.ensure_future(reach.current(url, probe)) for _ in range(3)]  # noqa: TID251
    await asyncio.sleep(0)
    other = asyncio.ensure_future(reach.current(URL("http://other.example"), probe))  # noqa: TID251
    await asyncio.sleep(0)
    gate.set()
    assert [await w for w in waiting] == [{"ok": True, "status": 200}] * 3
    await other
    assert calls == [url, URL("http://other.example")]
    assert reach.fresh(URL("http://svc.example:3001")) == {"ok": True, "status": 200}


def test_service_field_says_why_not() -> None:
    assert service_field({"ok": True, "status": 200, "appVersion": "x"}) == OK
    assert service_field(
        {"ok": False, "status": 503, "code": "unhealthy", "error": "HTTP 503"}
    ) == {
        "reachable": False,
        "status": 503,
        "code": "unhealthy",
        "error": "HTTP 503",
    }


@pytest.mark.parametrize(
    ("tenant", "service", "state", "label"),
    [
        ({"status": "ok"}, OK, "connected", "Connected"),
        ({"status": "ok"}, DOWN, "unreachable", "Not connected"),
        ({"status": "failed", "lastError": {"error": "x"}}, OK, "failed", "Failed"),
        ({"status": "failed"}, DOWN, "failed", "Failed"),
        ({"status": "provisioning"}, OK, "connecting", "Connecting"),
        ({"status": "initialising"}, DOWN, "unreachable", "Not connected"),
        ({"status": "ok", "busy": True}, OK, "connecting", "Connecting"),
        ({"status": "awaiting_email_verification"}, OK, "waiting", "Waiting for e-mail"),
        (
            {"status": "awaiting_email_verification", "previousKeyInUse": True},
            OK,
            "connected",
            "Connected (the new key waits for e-mail verification)",
        ),
        ({"status": "unknown"}, OK, "unknown", "unknown"),
    ],
)
def test_connection_table(
    tenant: dict[str, Any], service: dict[str, Any], state: str, label: str
) -> None:
    verdict = connection(tenant, service)
    assert verdict["state"] == state
    assert verdict["label"].startswith(label)
