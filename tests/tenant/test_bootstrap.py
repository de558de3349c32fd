"""Tenant key precedence and the bootstrap, over real sockets against the fake Nextcloud and the
fake service: 200 / 202 / error paths, single flight, admin discovery without burning the
brute-force budget, heartbeat disclosure and re-bootstrap."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from beeflow.errors import Conflict
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.redact import REDACTOR
from beeflow.service_client import SERVICE_URL
from beeflow.tasks import spawn
from beeflow.tenant.discovery import host_instance_id
from beeflow.tenant.failures import GENERIC_REMEDIATION, BootstrapFailed
from beeflow.tenant.records import unstructure
from beeflow.tenant.state import TENANT, fingerprint
from beeflow.tenant.wiring import ROTATION, bootstrapper
from tests.conftest import AutoFactory, ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.fakes.service_control import PROVISIONED_KEY, ServiceControl
from tests.helpers import TENANT_KEY
from tests.ports import refused_url
from tests.tenant.helpers import (
    dead_port,
    heartbeat,
    progress_values,
    read_json,
    run_init,
    wait_for,
)

CACHED_KEY = "tk_cached_00112233445566778899aabbccddeeff"


def write_cache(storage: Path, key: str = CACHED_KEY, **extra: str) -> Path:
    path = storage / "tenant-key.json"
    record = {
        "tenantKey": key,
        "organizationId": "org-cached",
        "organizationName": "Cached Org",
        "ncInstanceId": "nc-host:cached",
        "ncVersion": "32.0.1",
        "boundApiBaseUrl": extra.pop("bound", "https://bound.example"),
        "provisionedAt": "2026-01-01T00:00:00Z",
    }
    record.update(extra)
    path.write_text(json.dumps(record))
    os.chmod(path, 0o600)
    return path


def key_temp_files(directory: Path) -> list[str]:
    """Leftover temp files of the key file's atomic write (`.tenant-key.json.*.tmp`)."""
    return [name for name in os.listdir(directory) if name.startswith(".tenant-key.json.")]


# ------------------------------------------------------------------ precedence


async def test_env_key_wins_over_the_cache_and_nothing_is_called(
    connector_factory: ConnectorFactory,
    fake_nc: FakeNextcloud,
    storage: Path,
    service: FakeService,
    control: ServiceControl,
) -> None:
    write_cache(storage)
    conn = await connector_factory(BEEFLOW_API_BASE_URL=str(service.url))
    state = conn.app[TENANT]
    assert state.key == TENANT_KEY
    assert state.source == "env"
    await run_init(conn, fake_nc)
    assert progress_values(fake_nc) == [25, 60, 80, 100]
    assert control.bootstraps == []
    assert fake_nc.calls_to("/ocs/v2.php/cloud/capabilities") == []
    assert state.key == TENANT_KEY  # the cache did not replace it


async def test_cached_key_is_used_without_bootstrap(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, storage: Path, control: ServiceControl
) -> None:
    write_cache(storage)
    conn = await auto_connector()
    state = conn.app[TENANT]
    assert state.key == CACHED_KEY
    assert (state.source, state.status) == ("cache", "ok")
    assert state.organization_name == "Cached Org"
    await run_init(conn, fake_nc)
    assert progress_values(fake_nc) == [25, 60, 80, 100]
    assert control.bootstraps == []
    body = await heartbeat(conn, trusted=True)
    assert body["bootstrap"]["state"] == "ok"
    assert body["bootstrap"]["fingerprint"] == fingerprint(CACHED_KEY)
    assert CACHED_KEY not in str(body)


async def test_cached_binding_pins_the_service_url_unless_the_env_sets_it(
    connector_factory: ConnectorFactory, storage: Path
) -> None:
    write_cache(storage, bound="https://bound.example")
    conn = await connector_factory(BEEFLOW_TENANT_KEY="auto")
    api = conn.app[SERVICE_URL]
    assert (str(api.url), api.source) == ("https://bound.example", "bound")
    conn2 = await connector_factory(
        BEEFLOW_TENANT_KEY="auto", BEEFLOW_API_BASE_URL="https://env.example"
    )
    api2 = conn2.app[SERVICE_URL]
    assert (str(api2.url), api2.source) == ("https://env.example", "env")


# ------------------------------------------------------------------ 200


async def test_bootstrap_200_persists_the_key_and_sends_reference_headers(
    auto_connector: AutoFactory,
    fake_nc: FakeNextcloud,
    storage: Path,
    service: FakeService,
    control: ServiceControl,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_nc.add_user("zed", email="zed@example.com", display_name="Zed", groups=["admin"])
    fake_nc.add_user("bob", email=None, display_name="Bob", groups=["admin", "staff"])
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    assert progress_values(fake_nc) == [25, 60, 80, 100]

    assert len(control.bootstraps) == 1
    call = control.bootstraps[0]
    port = fake_nc.url.port
    assert call.headers["X-Beeflow-NC-Instance-Id"] == f"nc-host:127.0.0.1:{port}"
    assert call.headers["X-Beeflow-NC-Base-Url"] == str(fake_nc.url)
    assert call.headers["X-Beeflow-Source"] == "nextcloud-connector"
    assert call.headers["Content-Type"] == "application/json"
    # Sorted by uid, admins with an e-mail only: admin < zed; bob has none.
    assert call.headers["X-Beeflow-NC-Admin-Uid"] == "admin"
    assert call.headers["X-Beeflow-NC-Admin-Email"] == "admin@example.com"
    assert call.headers["X-Beeflow-NC-Admin-Display-Name"] == "Ada Admin"
    assert call.headers["X-Beeflow-Connector-Callback-Url"] == (
        f"{fake_nc.url}/index.php/apps/app_api/proxy/bee_flow"
    )
    assert "X-Beeflow-Sig" not in call.headers  # the bootstrap is unsigned
    assert call.json() == {
        "themingName": "Nextcloud",
        "version": "32.0.1",
        "ncAdmins": [
            {"uid": "admin", "email": "admin@example.com", "displayName": "Ada Admin"},
            {"uid": "zed", "email": "zed@example.com", "displayName": "Zed"},
        ],
    }

    state = conn.app[TENANT]
    assert state.key == PROVISIONED_KEY
    assert (state.source, state.status) == ("bootstrap", "ok")
    path = storage / "tenant-key.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A fresh organisation, named as the service names it (theming name and host).
    assert call.status == 200
    assert (call.answer["code"], call.answer["isNew"]) == ("fresh_org", True)
    assert call.answer["ncVersion"] == "32.0.1"  # from the service's own capabilities fetch
    record = read_json(path)
    assert record["tenantKey"] == PROVISIONED_KEY
    assert record["organizationId"] == call.answer["organizationId"]
    assert record["organizationName"] == f"Nextcloud (127.0.0.1:{port})"
    assert record["ncInstanceId"] == f"nc-host:127.0.0.1:{port}"
    assert record["ncVersion"] == "32.0.1"
    assert record["boundApiBaseUrl"] == str(service.url)
    assert record["provisionedAt"].endswith("Z")
    assert not (storage / "bootstrap-last-error.json").exists()
    assert key_temp_files(storage) == []

    # Admin discovery never asked the admin group as the service (401 on NC 32: nobody is
    # logged in) and no AppAPI login failed at all.
    assert [
        c for c in fake_nc.calls_to("/ocs/v2.php/cloud/groups/admin/users") if c.user == ""
    ] == []
    assert fake_nc.failure_count_total == 0
    caps = fake_nc.calls_to("/ocs/v2.php/cloud/capabilities")
    assert caps
    assert all("AUTHORIZATION-APP-API" not in c.headers for c in caps)
    # The key never reached a log line, and the redactor would mask it if it ever did.
    assert all(PROVISIONED_KEY not in r.getMessage() for r in caplog.records)
    assert REDACTOR.scrub(f"key={PROVISIONED_KEY}") == "key=***"


async def test_disabled_admin_is_never_the_primary_admin(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    """A disabled admin sorted first: its own lookup is refused (997, not a failed login) and
    the other admin reads it with enabled=false: it is in neither the headers nor ncAdmins."""
    fake_nc.add_user(
        "aaron", email="aaron@example.com", display_name="Aaron", groups=["admin"], enabled=False
    )
    conn = await auto_connector()
    await bootstrapper(conn.app).ensure()
    assert conn.app[TENANT].key == PROVISIONED_KEY
    call = control.bootstraps[0]
    assert call.headers["X-Beeflow-NC-Admin-Uid"] == "admin"
    assert call.headers["X-Beeflow-NC-Admin-Email"] == "admin@example.com"
    assert [a["uid"] for a in call.json()["ncAdmins"]] == ["admin"]
    # aaron was read by the found admin through the admin group, and skipped.
    assert any(c.user == "admin" for c in fake_nc.calls_to("/ocs/v2.php/cloud/users/aaron"))
    assert fake_nc.failure_count_total == 0


@pytest.mark.parametrize("nc_options", [{"expose_instance_id": "oc75yxc5pqcm"}])
async def test_instance_id_from_capabilities_when_exposed(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    conn = await auto_connector()
    await bootstrapper(conn.app).ensure()
    assert control.bootstraps[0].headers["X-Beeflow-NC-Instance-Id"] == "oc75yxc5pqcm"


async def test_host_instance_id_is_stable_across_restarts(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    control.fault = (503, {"error": "Service unavailable"})
    first = await auto_connector(slow_retries=True)
    await bootstrapper(first.app).ensure()
    second = await auto_connector(slow_retries=True)
    await bootstrapper(second.app).ensure()
    ids = [c.headers["X-Beeflow-NC-Instance-Id"] for c in control.bootstraps]
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert ids[0].startswith("nc-host:127.0.0.1:")


def test_host_instance_id_formats() -> None:
    from yarl import URL

    assert host_instance_id(URL("https://Cloud.Example.com/")) == "nc-host:cloud.example.com"
    assert host_instance_id(URL("https://cloud.example.com:443")) == ("nc-host:cloud.example.com")
    assert host_instance_id(URL("http://10.0.0.5:8080/nc")) == "nc-host:10.0.0.5:8080"
    assert host_instance_id(URL("http://[::1]:8080")) == "nc-host:[::1]:8080"


# ------------------------------------------------------------------ errors


async def test_admin_without_email_is_a_categorised_error_and_nothing_is_invented(
    auto_connector: AutoFactory,
    fake_nc: FakeNextcloud,
    storage: Path,
    control: ServiceControl,
) -> None:
    fake_nc.users["admin"].email = None
    conn = await auto_connector(slow_retries=True)
    await run_init(conn, fake_nc)
    # The install still completes: a bootstrap failure is advisory (reference 5.2).
    assert progress_values(fake_nc) == [25, 60, 80, 100]
    assert control.bootstraps == []
    state = conn.app[TENANT]
    assert state.status == "failed"
    assert state.key is None
    record = read_json(storage / "bootstrap-last-error.json")
    assert record["category"] == "admin_email_missing"
    assert record["phase"] == "admin"
    assert "e-mail" in record["remediation"]
    assert record["lastAttemptAt"]
    assert record["nextRetryAt"]
    assert stat.S_IMODE((storage / "bootstrap-last-error.json").stat().st_mode) == 0o600


async def test_service_error_is_categorised_persisted_and_retried_with_backoff(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, storage: Path, control: ServiceControl
) -> None:
    """The service fetches the capabilities at the public URL the connector names (its
    anti-spoof check): an unreachable one is its 403 nc_capabilities_unreachable."""
    conn = await auto_connector(BEEFLOW_NC_PUBLIC_URL=f"http://127.0.0.1:{dead_port()}")
    boot = bootstrapper(conn.app)
    await boot.ensure()
    state = conn.app[TENANT]
    assert state.status == "failed"
    assert control.bootstraps[0].status == 403
    assert state.last_error is not None
    assert state.last_error.category == "nc_not_publicly_reachable"
    assert state.last_error.phase == "saas_response"
    assert "Could not verify NC instance ownership" in state.last_error.error
    assert "BEEFLOW_NC_PUBLIC_URL" in state.last_error.remediation
    assert read_json(storage / "bootstrap-last-error.json")["category"] == (
        "nc_not_publicly_reachable"
    )
    # The backoff retries on its own; once the service gets past the check, the key arrives.
    await wait_for(lambda: len(control.bootstraps) >= 2)
    control.skip_verify = True
    await wait_for(lambda: state.key == PROVISIONED_KEY)
    assert state.status == "ok"
    assert not (storage / "bootstrap-last-error.json").exists()


@pytest.mark.parametrize(
    ("status", "body", "category"),
    [
        # Answers without a code of the bootstrap: categorised by status.
        (409, {"error": "exists"}, "tenant_already_provisioned"),
        (403, {"error": "no"}, "saas_auth_rejected"),
        (503, {"error": "busy"}, "saas_transient"),
        (200, {"nothing": True}, "unknown"),
    ],
)
async def test_error_categories_without_a_code(
    auto_connector: AutoFactory,
    control: ServiceControl,
    status: int,
    body: dict[str, object],
    category: str,
) -> None:
    control.fault = (status, body)
    conn = await auto_connector(slow_retries=True)
    await bootstrapper(conn.app).ensure()
    error = conn.app[TENANT].last_error
    assert error is not None
    assert error.category == category


def _pairing_required(control: ServiceControl) -> str | None:
    control.provisioning = "pairing_only"
    return None


def _org_create_failed(control: ServiceControl) -> str | None:
    control.org_create_fails = True
    return None


def _code_invalid(control: ServiceControl) -> str | None:
    return "ZZZZ-9999"


def _org_gone(control: ServiceControl) -> str | None:
    org = control.add_org("Gone")
    code = control.issue_pairing_code(org)
    del control.orgs[org.id]
    return code


def _already_bound(control: ServiceControl) -> str | None:
    return control.issue_pairing_code(control.add_org("Taken", instance_id="oc-elsewhere"))


def _race(control: ServiceControl) -> str | None:
    control.pairing_race = True
    return control.issue_pairing_code(control.add_org("Raced"))


def _email_conflict(control: ServiceControl) -> str | None:
    # The admin's address is a member of another organisation that is bound elsewhere.
    control.add_org("Other", emails=("admin@example.com",), instance_id="oc-other")
    return None


def _too_many(control: ServiceControl) -> str | None:
    control.add_org("Acme", domain="example.com")
    return None


@pytest.mark.parametrize(
    ("prepare", "status", "code", "category", "in_remediation"),
    [
        (_pairing_required, 403, "pairing_required", "pairing_required",
         "BEEFLOW_CONNECTOR_PROVISIONING=open"),
        (_org_create_failed, 500, "org_create_failed", "saas_transient", "retries on its own"),
        (_code_invalid, 401, "pairing_code_invalid", "pairing_code_invalid", "works once"),
        (_org_gone, 410, "pairing_code_org_gone", "pairing_code_org_gone", "no longer exists"),
        (_already_bound, 409, "pairing_code_org_already_bound",
         "pairing_code_org_already_bound", "another Nextcloud"),
        (_race, 409, "pairing_code_race", "pairing_code_race", "fresh code"),
        (_email_conflict, 409, "admin_email_conflict", "admin_email_conflict", "pairing code"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)  # fmt: skip
async def test_every_bootstrap_code_gets_a_remediation_an_admin_can_act_on(
    auto_connector: AutoFactory,
    control: ServiceControl,
    prepare: Callable[[ServiceControl], str | None],
    status: int,
    code: str,
    category: str,
    in_remediation: str,
) -> None:
    """The service's real branches (auth/connectorBootstrap.js), one per refusal: the category
    is the connector's, the remediation names what to do here (not the service's text, which
    says to reinstall the connector)."""
    pairing = prepare(control)
    env = {"BEEFLOW_PAIRING_CODE": pairing} if pairing else {}
    conn = await auto_connector(slow_retries=True, **env)
    await bootstrapper(conn.app).ensure()
    answer = control.bootstraps[-1]
    assert (answer.status, answer.answer.get("code")) == (status, code)
    error = conn.app[TENANT].last_error
    assert error is not None
    assert error.category == category
    assert in_remediation in error.remediation
    assert "reinstall" not in error.remediation
    if pairing:
        assert pairing not in json.dumps(unstructure(error))


async def test_too_many_pending_verifications_is_its_own_category(
    auto_connector: AutoFactory,
    control: ServiceControl,
    service: FakeService,
    fake_nc: FakeNextcloud,
) -> None:
    """Five verifications already wait for the organisation: the sixth bootstrap is 429."""
    _too_many(control)
    headers = {
        "X-Beeflow-NC-Instance-Id": host_instance_id(fake_nc.url),
        "X-Beeflow-NC-Base-Url": str(fake_nc.url),
        "X-Beeflow-NC-Admin-Uid": "admin",
        "X-Beeflow-NC-Admin-Email": "admin@example.com",
    }
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.post(
                service.url / "auth/connector/bootstrap", json={}, headers=headers
            ) as resp:
                assert resp.status == 202
    conn = await auto_connector(slow_retries=True)
    await bootstrapper(conn.app).ensure()
    assert control.bootstraps[-1].status == 429
    error = conn.app[TENANT].last_error
    assert error is not None
    assert error.category == "too_many_pending"
    assert "30 minutes" in error.remediation


async def test_unreachable_service_is_saas_unreachable(
    connector_factory: ConnectorFactory,
) -> None:
    conn = await connector_factory(BEEFLOW_TENANT_KEY="auto", BEEFLOW_API_BASE_URL=refused_url())
    await bootstrapper(conn.app).ensure()
    error = conn.app[TENANT].last_error
    assert error is not None
    assert (error.category, error.phase) == ("saas_unreachable", "saas_post")


# ------------------------------------------------------------------ 202


async def test_202_email_verification_is_persisted_restored_and_completed(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, storage: Path, control: ServiceControl
) -> None:
    """An organisation on the service with the admin's domain: 202, no e-mail sent by the
    service; the state survives a restart; the code (sent on the connector's request) binds."""
    control.add_org("Acme", domain="example.com", key=PROVISIONED_KEY)
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    state = conn.app[TENANT]
    assert state.status == "awaiting_email_verification"
    answer = control.bootstraps[0].answer
    assert answer["status"] == "pending_verification"
    assert "maskedEmail" not in answer
    assert control.mails == []
    pending = read_json(storage / "pending-bootstrap.json")
    assert pending["kind"] == "verification"
    assert pending["verifyUrl"] == f"/auth/connector/bootstrap/pending/{answer['pendingId']}/verify"
    assert pending["ncInstanceId"].startswith("nc-host:")
    assert pending["codeSent"] is False
    assert stat.S_IMODE((storage / "pending-bootstrap.json").stat().st_mode) == 0o600
    anonymous = await heartbeat(conn, trusted=None)
    assert anonymous["bootstrap"] == {
        "state": "awaiting_email_verification",
        "expiresAt": answer["expiresAt"],
    }
    trusted = await heartbeat(conn, trusted=True)
    assert trusted["bootstrap"]["codeSent"] is False
    assert trusted["bootstrap"]["organizationName"] == "Acme"
    # Another trigger does not provision again while the verification is pending.
    await bootstrapper(conn.app).ensure()
    assert len(control.bootstraps) == 1

    # A restart restores the pending state from the file.
    again = await auto_connector()
    state2 = again.app[TENANT]
    assert state2.status == "awaiting_email_verification"
    assert state2.pending is not None
    assert state2.pending["codeSent"] is False
    boot = bootstrapper(again.app)
    sent = await boot.pending.resend()
    assert (sent["ok"], sent["maskedEmail"]) == (True, "a•••n@example.com")
    assert state2.pending["maskedEmail"] == "a•••n@example.com"
    code = control.last_mail().code
    wrong = await boot.pending.verify_code("000000" if code != "000000" else "000001")
    assert wrong["ok"] is False
    assert wrong["code"] == "invalid_code"
    right = await boot.pending.verify_code(code)
    assert right == {"ok": True, "fingerprint": fingerprint(PROVISIONED_KEY)}
    assert state2.key == PROVISIONED_KEY
    assert state2.status == "ok"
    assert not (storage / "pending-bootstrap.json").exists()
    assert read_json(storage / "tenant-key.json")["tenantKey"] == PROVISIONED_KEY


async def test_returning_binding_hands_back_the_same_key(
    auto_connector: AutoFactory, storage: Path, control: ServiceControl
) -> None:
    """The service keeps one key per organisation: the same Nextcloud bootstrapping again (a
    lost key file, a reinstall) gets its key back (`returning_bind`), not a new one."""
    conn = await auto_connector()
    await bootstrapper(conn.app).ensure()
    (storage / "tenant-key.json").unlink()
    again = await auto_connector()
    await bootstrapper(again.app).ensure()
    assert [c.answer["code"] for c in control.bootstraps] == ["fresh_org", "returning_bind"]
    assert again.app[TENANT].key == PROVISIONED_KEY


# ------------------------------------------------------------------ single flight


async def test_concurrent_triggers_join_one_bootstrap(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    control.bootstrap_gate = asyncio.Event()
    conn = await auto_connector()
    boot = bootstrapper(conn.app)
    waiters = [spawn(boot.ensure(), name=f"test-ensure-{i}") for i in range(5)]
    for _ in range(3):
        async with await conn.request("POST", "/init", user="") as resp:
            assert resp.status == 200
    await asyncio.wait_for(control.bootstrap_arrived.wait(), 5)
    assert not any(w.done() for w in waiters)
    control.bootstrap_gate.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    await wait_for(lambda: any(p.get("progress") == 100 for p in fake_nc.progress))
    assert len(control.bootstraps) == 1
    assert boot.runs == 1
    assert conn.app[TENANT].key == PROVISIONED_KEY


# ------------------------------------------------------------------ brute-force budget


@pytest.mark.parametrize("nc_options", [{"registered": False}])
async def test_bootstrap_against_an_unregistered_app_stays_within_the_budget(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    conn = await auto_connector()
    boot = bootstrapper(conn.app)
    budget = conn.app[NEXTCLOUD].budget
    await boot.ensure()
    # Several backoff retries happen meanwhile; none of them may add failed logins.
    await wait_for(lambda: boot.runs >= 4, timeout=10)
    assert fake_nc.failures_for() <= budget.limit < fake_nc.lockout_threshold
    assert not fake_nc.is_locked()
    assert control.bootstraps == []
    state = conn.app[TENANT]
    assert state.last_error is not None
    assert state.last_error.category == "nextcloud_auth_paused"
    assert "bruteforce:reset" in state.last_error.remediation
    # Registered (and the counter reset by the admin): the next attempt succeeds.
    fake_nc.register()
    fake_nc.reset_bruteforce()
    budget.reset()
    await wait_for(lambda: state.key == PROVISIONED_KEY, timeout=10)
    assert fake_nc.failures_for() == 0


# ------------------------------------------------------------------ heartbeat disclosure


async def test_heartbeat_discloses_details_only_with_the_secret(
    auto_connector: AutoFactory, control: ServiceControl, service: FakeService
) -> None:
    control.fault = (400, {"error": f"cannot fetch {service.url}/secret-path", "code": "x"})
    conn = await auto_connector(slow_retries=True)
    await bootstrapper(conn.app).ensure()
    for trusted in (None, False):
        body = await heartbeat(conn, trusted=trusted)
        assert body["bootstrap"] == {"state": "failed", "remediation": GENERIC_REMEDIATION}
        assert "secret-path" not in str(body)
    body = await heartbeat(conn, trusted=True)
    details = body["bootstrap"]
    assert details["state"] == "failed"
    assert details["category"] == "unknown"
    assert "secret-path" in details["error"]
    assert {"remediation", "lastAttemptAt", "nextRetryAt", "source"} <= details.keys()


# ------------------------------------------------------------------ re-bootstrap


async def test_rebootstrap_provisions_a_new_key_and_keeps_the_old_file(
    auto_connector: AutoFactory, storage: Path, control: ServiceControl
) -> None:
    """A cached key the service does not know (another service): the re-bootstrap gets this
    Nextcloud a fresh organisation and its key."""
    write_cache(storage)
    conn = await auto_connector()
    assert conn.app[TENANT].key == CACHED_KEY
    await conn.app[ROTATION].rebootstrap()
    state = conn.app[TENANT]
    assert state.key == PROVISIONED_KEY
    assert state.source == "bootstrap"
    assert read_json(storage / "tenant-key.json")["tenantKey"] == PROVISIONED_KEY
    assert read_json(storage / "tenant-key.previous.json")["tenantKey"] == CACHED_KEY
    assert len(control.bootstraps) == 1


@pytest.mark.parametrize("finished", [True, False], ids=["verified", "expired"])
async def test_rebootstrap_waiting_for_verification_keeps_the_old_key(
    auto_connector: AutoFactory,
    storage: Path,
    control: ServiceControl,
    service: FakeService,
    finished: bool,
) -> None:
    """A re-bootstrap answered 202 holds the key in use: the code binds (then the new key), or
    the verification ends unfinished (then the old key simply stays)."""
    write_cache(storage, bound=str(service.url))
    control.add_org("Acme", domain="example.com", key=PROVISIONED_KEY)
    conn = await auto_connector()
    state = conn.app[TENANT]
    assert state.key == CACHED_KEY
    await conn.app[ROTATION].rebootstrap()
    assert (state.key, state.status) == (CACHED_KEY, "awaiting_email_verification")
    assert state.previous_key_in_use
    body = await heartbeat(conn, trusted=False)
    assert body["bootstrap"]["previousKeyInUse"] is True
    boot = bootstrapper(conn.app)
    await boot.pending.resend()
    if finished:
        assert (await boot.pending.verify_code(control.last_mail().code))["ok"] is True
        assert (state.key, state.status) == (PROVISIONED_KEY, "ok")
        assert read_json(storage / "tenant-key.json")["tenantKey"] == PROVISIONED_KEY
        assert read_json(storage / "tenant-key.previous.json")["tenantKey"] == CACHED_KEY
    else:
        control.expire_pending()
        result = await boot.pending.verify_code(control.last_mail().code)
        assert (result["status"], result["code"]) == (410, "expired")
        assert (state.key, state.status) == (CACHED_KEY, "ok")
        assert (state.last_error.category if state.last_error else None) == "rotation_not_completed"
        assert not (storage / "pending-bootstrap.json").exists()
        assert read_json(storage / "tenant-key.json")["tenantKey"] == CACHED_KEY


async def test_rebootstrap_failure_restores_the_old_state(
    auto_connector: AutoFactory, storage: Path, control: ServiceControl
) -> None:
    path = write_cache(storage)
    original = path.read_bytes()
    conn = await auto_connector()
    control.fault = (409, {"error": "already provisioned"})
    with pytest.raises(BootstrapFailed) as info:
        await conn.app[ROTATION].rebootstrap()
    assert info.value.extra["category"] == "tenant_already_provisioned"
    state = conn.app[TENANT]
    assert (state.key, state.source, state.status) == (CACHED_KEY, "cache", "ok")
    assert state.organization_name == "Cached Org"
    assert json.loads(path.read_bytes()) == json.loads(original)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The failed attempt does not keep retrying behind the restored key.
    await asyncio.sleep(0.3)
    assert len(control.bootstraps) == 1


async def test_rebootstrap_refused_when_the_key_comes_from_the_env(
    connector_factory: ConnectorFactory,
) -> None:
    conn = await connector_factory()
    with pytest.raises(Conflict) as info:
        await conn.app[ROTATION].rebootstrap()
    assert info.value.instance_code == "tenant_key_env_locked"
