"""Tenant key precedence and the bootstrap, over real sockets against the fake Nextcloud and the
fake service: 200 / 202 / error paths, single flight, admin discovery without burning the
brute-force budget, heartbeat disclosure and re-bootstrap."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from beeflow import keys, tenant
from beeflow.errors import Conflict
from beeflow.redact import REDACTOR
from beeflow.tasks import spawn
from beeflow.tenant import BootstrapFailed, fingerprint
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.fakes.service_control import PROVISIONED_KEY, ServiceControl
from tests.helpers import TENANT_KEY
from tests.tenant.conftest import AutoFactory
from tests.tenant.helpers import heartbeat, progress_values, read_json, run_init, wait_for

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
    state = conn.app[keys.TENANT]
    assert state.key == TENANT_KEY
    assert state.source == "env"
    await run_init(conn, fake_nc)
    assert progress_values(fake_nc) == [25, 60, 100]
    assert control.bootstraps == []
    assert fake_nc.calls_to("/ocs/v2.php/cloud/capabilities") == []
    assert state.key == TENANT_KEY  # the cache did not replace it


async def test_cached_key_is_used_without_bootstrap(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, storage: Path, control: ServiceControl
) -> None:
    write_cache(storage)
    conn = await auto_connector()
    state = conn.app[keys.TENANT]
    assert state.key == CACHED_KEY
    assert (state.source, state.status) == ("cache", "ok")
    assert state.organization_name == "Cached Org"
    await run_init(conn, fake_nc)
    assert progress_values(fake_nc) == [25, 60, 100]
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
    api = conn.app[keys.API_BASE]
    assert (str(api.url), api.source) == ("https://bound.example", "bound")
    conn2 = await connector_factory(
        BEEFLOW_TENANT_KEY="auto", BEEFLOW_API_BASE_URL="https://env.example"
    )
    api2 = conn2.app[keys.API_BASE]
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
    assert progress_values(fake_nc) == [25, 60, 100]

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

    state = conn.app[keys.TENANT]
    assert state.key == PROVISIONED_KEY
    assert (state.source, state.status) == ("bootstrap", "ok")
    path = storage / "tenant-key.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    record = read_json(path)
    assert record["tenantKey"] == PROVISIONED_KEY
    assert record["organizationId"] == "org-42"
    assert record["organizationName"] == "Acme"
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
    await tenant.bootstrapper(conn.app).ensure()
    assert conn.app[keys.TENANT].key == PROVISIONED_KEY
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
    await tenant.bootstrapper(conn.app).ensure()
    assert control.bootstraps[0].headers["X-Beeflow-NC-Instance-Id"] == "oc75yxc5pqcm"


async def test_host_instance_id_is_stable_across_restarts(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    control.bootstrap_mode = "error"
    first = await auto_connector(slow_retries=True)
    await tenant.bootstrapper(first.app).ensure()
    second = await auto_connector(slow_retries=True)
    await tenant.bootstrapper(second.app).ensure()
    ids = [c.headers["X-Beeflow-NC-Instance-Id"] for c in control.bootstraps]
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert ids[0].startswith("nc-host:127.0.0.1:")


def test_host_instance_id_formats() -> None:
    from yarl import URL

    assert tenant.host_instance_id(URL("https://Cloud.Example.com/")) == "nc-host:cloud.example.com"
    assert tenant.host_instance_id(URL("https://cloud.example.com:443")) == (
        "nc-host:cloud.example.com"
    )
    assert tenant.host_instance_id(URL("http://10.0.0.5:8080/nc")) == "nc-host:10.0.0.5:8080"
    assert tenant.host_instance_id(URL("http://[::1]:8080")) == "nc-host:[::1]:8080"


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
    assert progress_values(fake_nc) == [25, 60, 100]
    assert control.bootstraps == []
    state = conn.app[keys.TENANT]
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
    control.bootstrap_mode = "error"
    control.error_status = 400
    control.error_body = {
        "error": "Cannot reach your Nextcloud",
        "code": "nc_capabilities_unreachable",
    }
    conn = await auto_connector()
    boot = tenant.bootstrapper(conn.app)
    await boot.ensure()
    state = conn.app[keys.TENANT]
    assert state.status == "failed"
    assert state.last_error is not None
    assert state.last_error["category"] == "nc_not_publicly_reachable"
    assert state.last_error["phase"] == "saas_response"
    assert "Cannot reach your Nextcloud" in state.last_error["error"]
    assert read_json(storage / "bootstrap-last-error.json")["category"] == (
        "nc_not_publicly_reachable"
    )
    # The backoff retries on its own; once the service answers, the key arrives.
    await wait_for(lambda: len(control.bootstraps) >= 2)
    control.bootstrap_mode = "ok"
    await wait_for(lambda: state.key == PROVISIONED_KEY)
    assert state.status == "ok"
    assert not (storage / "bootstrap-last-error.json").exists()


@pytest.mark.parametrize(
    ("status", "body", "category"),
    [
        (409, {"error": "exists"}, "tenant_already_provisioned"),
        (403, {"error": "no"}, "saas_auth_rejected"),
        (400, {"error": "x", "code": "pairing_required"}, "pairing_required"),
        (503, {"error": "busy"}, "saas_transient"),
        (200, {"nothing": True}, "unknown"),
    ],
)
async def test_error_categories(
    auto_connector: AutoFactory,
    control: ServiceControl,
    status: int,
    body: dict[str, object],
    category: str,
) -> None:
    control.bootstrap_mode = "error"
    control.error_status = status
    control.error_body = body
    conn = await auto_connector(slow_retries=True)
    await tenant.bootstrapper(conn.app).ensure()
    error = conn.app[keys.TENANT].last_error
    assert error is not None
    assert error["category"] == category


async def test_unreachable_service_is_saas_unreachable(
    connector_factory: ConnectorFactory,
) -> None:
    conn = await connector_factory(
        BEEFLOW_TENANT_KEY="auto", BEEFLOW_API_BASE_URL="http://127.0.0.1:9"
    )
    await tenant.bootstrapper(conn.app).ensure()
    error = conn.app[keys.TENANT].last_error
    assert error is not None
    assert (error["category"], error["phase"]) == ("saas_unreachable", "saas_post")


# ------------------------------------------------------------------ 202


async def test_202_email_verification_is_persisted_restored_and_completed(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, storage: Path, control: ServiceControl
) -> None:
    control.bootstrap_mode = "verification"
    conn = await auto_connector()
    await run_init(conn, fake_nc)
    state = conn.app[keys.TENANT]
    assert state.status == "awaiting_email_verification"
    pending = read_json(storage / "pending-bootstrap.json")
    assert pending["kind"] == "verification"
    assert pending["verifyUrl"] == "/auth/connector/bootstrap/pending/p-1/verify"
    assert pending["ncInstanceId"].startswith("nc-host:")
    assert stat.S_IMODE((storage / "pending-bootstrap.json").stat().st_mode) == 0o600
    anonymous = await heartbeat(conn, trusted=None)
    assert anonymous["bootstrap"] == {
        "state": "awaiting_email_verification",
        "expiresAt": "2099-01-01T00:00:00Z",
    }
    # Another trigger does not provision again while the verification is pending.
    await tenant.bootstrapper(conn.app).ensure()
    assert len(control.bootstraps) == 1

    # A restart restores the pending state from the file.
    again = await auto_connector()
    state2 = again.app[keys.TENANT]
    assert state2.status == "awaiting_email_verification"
    assert state2.pending is not None
    assert state2.pending["maskedEmail"] == "a***@example.com"
    boot = tenant.bootstrapper(again.app)
    wrong = await boot.verify_code("000000")
    assert wrong["ok"] is False
    assert wrong["code"] == "invalid_code"
    right = await boot.verify_code("123456")
    assert right == {"ok": True, "fingerprint": fingerprint(PROVISIONED_KEY)}
    assert state2.key == PROVISIONED_KEY
    assert state2.status == "ok"
    assert not (storage / "pending-bootstrap.json").exists()
    assert read_json(storage / "tenant-key.json")["tenantKey"] == PROVISIONED_KEY


async def test_202_legacy_approval_is_polled_until_approved(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    control.bootstrap_mode = "poll"
    control.approve_on_poll = 3
    conn = await auto_connector()
    await tenant.bootstrapper(conn.app).ensure()
    state = conn.app[keys.TENANT]
    assert state.status in ("awaiting_admin_approval", "ok")
    await wait_for(lambda: state.key == PROVISIONED_KEY)
    assert control.polls == 3
    assert not (storage / "pending-bootstrap.json").exists()


async def test_202_legacy_denied_becomes_a_failure(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    control.bootstrap_mode = "poll"
    control.deny_polls = True
    conn = await auto_connector(slow_retries=True)
    boot = tenant.bootstrapper(conn.app)
    boot.poll_interval = 0.01
    await boot.ensure()
    state = conn.app[keys.TENANT]
    await wait_for(lambda: state.status == "failed")
    assert state.last_error is not None
    assert "denied" in state.last_error["error"]


# ------------------------------------------------------------------ single flight


async def test_concurrent_triggers_join_one_bootstrap(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    control.bootstrap_gate = asyncio.Event()
    conn = await auto_connector()
    boot = tenant.bootstrapper(conn.app)
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
    assert conn.app[keys.TENANT].key == PROVISIONED_KEY


# ------------------------------------------------------------------ brute-force budget


@pytest.mark.parametrize("nc_options", [{"registered": False}])
async def test_bootstrap_against_an_unregistered_app_stays_within_the_budget(
    auto_connector: AutoFactory, fake_nc: FakeNextcloud, control: ServiceControl
) -> None:
    conn = await auto_connector()
    boot = tenant.bootstrapper(conn.app)
    budget = conn.app[keys.NEXTCLOUD].budget
    await boot.ensure()
    # Several backoff retries happen meanwhile; none of them may add failed logins.
    await wait_for(lambda: boot.runs >= 4, timeout=10)
    assert fake_nc.failures_for() <= budget.limit < fake_nc.lockout_threshold
    assert not fake_nc.is_locked()
    assert control.bootstraps == []
    state = conn.app[keys.TENANT]
    assert state.last_error is not None
    assert state.last_error["category"] == "nextcloud_auth_paused"
    assert "bruteforce:reset" in state.last_error["remediation"]
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
    control.bootstrap_mode = "error"
    control.error_body = {"error": f"cannot fetch {service.url}/secret-path", "code": "x"}
    conn = await auto_connector(slow_retries=True)
    await tenant.bootstrapper(conn.app).ensure()
    for trusted in (None, False):
        body = await heartbeat(conn, trusted=trusted)
        assert body["bootstrap"] == {"state": "failed", "remediation": tenant.GENERIC_REMEDIATION}
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
    write_cache(storage)
    conn = await auto_connector()
    assert conn.app[keys.TENANT].key == CACHED_KEY
    await conn.app[keys.REBOOTSTRAP]()
    state = conn.app[keys.TENANT]
    assert state.key == PROVISIONED_KEY
    assert state.source == "bootstrap"
    assert read_json(storage / "tenant-key.json")["tenantKey"] == PROVISIONED_KEY
    assert read_json(storage / "tenant-key.previous.json")["tenantKey"] == CACHED_KEY
    assert len(control.bootstraps) == 1


@pytest.mark.parametrize("denied", [True, False], ids=["denied", "approved"])
async def test_rebootstrap_waiting_for_approval_keeps_the_old_key(
    auto_connector: AutoFactory,
    storage: Path,
    control: ServiceControl,
    service: FakeService,
    denied: bool,
) -> None:
    """The legacy approval 202 holds the key in use like the e-mail verification: polled until
    approved (then the new key), or denied (then the old key simply stays)."""
    write_cache(storage, bound=str(service.url))
    control.deny_polls = denied
    control.bootstrap_mode = "poll"
    control.approve_on_poll = 0  # the first polls find it pending
    conn = await auto_connector()
    state = conn.app[keys.TENANT]
    assert state.key == CACHED_KEY
    await conn.app[keys.REBOOTSTRAP]()
    assert (state.key, state.status) == (CACHED_KEY, "awaiting_admin_approval")
    assert state.previous_key_in_use
    body = await heartbeat(conn, trusted=False)
    assert body["bootstrap"]["previousKeyInUse"] is True
    if denied:
        await wait_for(lambda: state.status == "ok")
        assert state.key == CACHED_KEY
        assert (state.last_error or {})["category"] == "rotation_not_completed"
        assert not (storage / "pending-bootstrap.json").exists()
        assert read_json(storage / "tenant-key.json")["tenantKey"] == CACHED_KEY
    else:
        await wait_for(lambda: control.polls >= 2)
        assert state.key == CACHED_KEY  # still pending: the old key serves
        control.approve_on_poll = control.polls + 1
        await wait_for(lambda: state.key == PROVISIONED_KEY)
        assert state.status == "ok"
        assert read_json(storage / "tenant-key.json")["tenantKey"] == PROVISIONED_KEY
        assert read_json(storage / "tenant-key.previous.json")["tenantKey"] == CACHED_KEY


async def test_rebootstrap_failure_restores_the_old_state(
    auto_connector: AutoFactory, storage: Path, control: ServiceControl
) -> None:
    path = write_cache(storage)
    original = path.read_bytes()
    conn = await auto_connector()
    control.bootstrap_mode = "error"
    control.error_status = 409
    control.error_body = {"error": "already provisioned"}
    with pytest.raises(BootstrapFailed) as info:
        await conn.app[keys.REBOOTSTRAP]()
    assert info.value.extra["category"] == "tenant_already_provisioned"
    state = conn.app[keys.TENANT]
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
        await conn.app[keys.REBOOTSTRAP]()
    assert info.value.instance_code == "tenant_key_env_locked"
