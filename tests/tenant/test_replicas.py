"""Two connectors on one storage directory, as two replicas on one volume: one provisions, the
other waits and takes its key; a key rotated on one is used by the other (before it judges a
`/nc` signature, and in the background); a failure is not repeated at once; a setup choice saved
on one applies on the other; the other's tenant work shows as busy. The process-level proof with
a real load balancer is tests/replicas/."""

from __future__ import annotations

import asyncio
import hashlib
import time

from beeflow.service_client import SERVICE_URL
from beeflow.tenant.shared import TENANT_FILES
from beeflow.tenant.state import TENANT, fingerprint
from beeflow.tenant.wiring import bootstrapper
from tests.conftest import AutoFactory, ConnectorFactory
from tests.fakes.service import FakeService
from tests.fakes.service_control import PROVISIONED_KEY, ServiceControl
from tests.helpers import RunningConnector, wait_for
from tests.proxy.nc.caller import nc_signature
from tests.setup.test_tenant_actions import (
    REQUEST,
    ROTATE,
    ROTATED_KEY,
    VERIFY,
    call,
    matching_org,
)

FAST = {"BEEFLOW_LEASE_TTL_SECONDS": "2"}  # waiting replicas look again every 0.2 s
TARGET = "/nc/ocs/v2.php/cloud/users/alice"


async def signed_get(conn: RunningConnector, key: str) -> int:
    sig = nc_signature(
        key, int(time.time()), "GET", TARGET, "alice", hashlib.sha256(b"").hexdigest()
    )
    headers = {"X-Beeflow-Sig": sig, "X-Beeflow-NC-Uid": "alice", "OCS-APIRequest": "true"}
    async with await conn.request("GET", TARGET, headers=headers) as resp:
        return resp.status


async def test_two_replicas_starting_together_create_one_organisation(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    a = await auto_connector(**FAST)
    b = await auto_connector(**FAST)
    await asyncio.wait_for(
        asyncio.gather(bootstrapper(a.app).ensure(), bootstrapper(b.app).ensure()), 15
    )
    assert len(control.bootstraps) == 1
    assert len([o for o in control.orgs.values() if o.key]) == 1
    assert a.app[TENANT].key == b.app[TENANT].key == PROVISIONED_KEY
    # The one that waited read the key from the file the other wrote.
    assert {a.app[TENANT].source, b.app[TENANT].source} == {"bootstrap", "cache"}


async def test_a_failure_on_one_replica_is_not_repeated_at_once_by_the_other(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    control.fault = (503, {"error": "Service unavailable"})
    a = await auto_connector(slow_retries=True, **FAST)
    b = await auto_connector(slow_retries=True, **FAST)
    await asyncio.wait_for(
        asyncio.gather(bootstrapper(a.app).ensure(), bootstrapper(b.app).ensure()), 15
    )
    assert len(control.bootstraps) == 1
    assert a.app[TENANT].status == b.app[TENANT].status == "failed"
    assert bootstrapper(a.app).retry.running
    assert bootstrapper(b.app).retry.running


async def test_a_key_rotated_on_one_replica_is_used_by_the_other(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    a = await auto_connector(**FAST)
    b = await auto_connector(**FAST)
    await bootstrapper(a.app).ensure()
    await bootstrapper(b.app).ensure()
    assert await signed_get(b, PROVISIONED_KEY) == 200
    org = next(o for o in control.orgs.values() if o.key)
    org.key = ROTATED_KEY  # the service hands out a new key for this organisation
    answer = await call(a, ROTATE)
    assert answer.status == 200, answer.text
    assert answer.body["fingerprint"] == fingerprint(ROTATED_KEY)
    # The very next /nc call signed with the new key verifies on the other replica: it looks
    # at the key file before it judges the signature (no wait for the background watch).
    assert await signed_get(b, ROTATED_KEY) == 200
    assert b.app[TENANT].key == ROTATED_KEY
    assert b.app[TENANT_FILES].reloads >= 1


async def test_the_background_watch_takes_a_new_key_without_any_request(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    a = await auto_connector(**FAST)
    b = await auto_connector(**FAST)
    await bootstrapper(a.app).ensure()
    await bootstrapper(b.app).ensure()
    next(o for o in control.orgs.values() if o.key).key = ROTATED_KEY
    assert (await call(a, ROTATE)).status == 200
    await wait_for(lambda: b.app[TENANT].key == ROTATED_KEY, timeout=5)
    assert b.app[TENANT].fingerprint == fingerprint(ROTATED_KEY)


async def test_the_other_replicas_tenant_work_shows_as_busy(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    a = await auto_connector(**FAST)
    b = await auto_connector(**FAST)
    await bootstrapper(a.app).ensure()
    control.bootstrap_gate = asyncio.Event()
    rotation = asyncio.get_running_loop().create_task(call(a, ROTATE))
    await asyncio.wait_for(control.bootstrap_arrived.wait(), 5)
    control.bootstrap_arrived.clear()
    await wait_for(lambda: len(control.bootstraps) == 2)
    answer = await call(b, ROTATE)
    assert answer.status == 409, answer.text
    assert answer.body["code"] == "bootstrap_running"
    control.bootstrap_gate.set()
    assert (await rotation).status == 200


async def test_a_setup_choice_saved_on_one_replica_applies_on_the_other(
    connector_factory: ConnectorFactory, service: FakeService
) -> None:
    """The picker's choice (no BEEFLOW_API_BASE_URL): saved through one replica, in force on
    the other within its one-second look at setup-config.json."""
    a = await connector_factory(**FAST)
    b = await connector_factory(**FAST)
    url = str(service.url).rstrip("/")
    answer = await call(a, "/setup", {"mode": "self-hosted", "apiBaseUrl": url})
    assert answer.status == 200, answer.text
    assert b.app[SERVICE_URL].source == "default"
    await wait_for(lambda: str(b.app[SERVICE_URL].url).rstrip("/") == url, timeout=5)
    assert b.app[SERVICE_URL].source == "setup"


async def test_a_verification_pending_on_one_replica_is_finished_on_another(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    """The service answers 202 (an organisation with the admin's domain): the replica that
    waited takes the pending verification from the file instead of asking again; the admin's
    next clicks land on it; the key it obtains reaches the first replica."""
    matching_org(control)
    a = await auto_connector(**FAST)
    b = await auto_connector(**FAST)
    await asyncio.wait_for(
        asyncio.gather(bootstrapper(a.app).ensure(), bootstrapper(b.app).ensure()), 15
    )
    assert len(control.bootstraps) == 1
    assert a.app[TENANT].status == b.app[TENANT].status == "awaiting_email_verification"
    assert (await call(b, REQUEST)).status == 200  # the code goes out
    code = control.last_mail().code
    await wait_for(lambda: bool((a.app[TENANT].pending or {}).get("codeSent")))
    answer = await call(b, VERIFY, {"code": code})
    assert answer.status == 200, answer.text
    assert b.app[TENANT].key == PROVISIONED_KEY
    await wait_for(lambda: a.app[TENANT].key == PROVISIONED_KEY, timeout=5)
    assert a.app[TENANT].status == "ok"
    assert a.app[TENANT].pending is None
