"""The bootstrap's e-mail verification sub-flows at the Bootstrapper level (reference 6.4 step 5):
resend, verify results with the service's status, the end of a pending state, and the
pairing code's one-shot life."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beeflow import cli, keys, tenant
from beeflow.config import Config
from beeflow.errors import Conflict
from beeflow.redact import REDACTOR
from tests.conftest import ConnectorFactory
from tests.fakes.service_control import EXPIRES_AT, PENDING_ID, PROVISIONED_KEY, ServiceControl
from tests.helpers import RunningConnector, base_env
from tests.tenant.conftest import AutoFactory
from tests.tenant.helpers import read_json, wait_for


async def pending(auto_connector: AutoFactory, control: ServiceControl) -> RunningConnector:
    control.bootstrap_mode = "verification"
    conn = await auto_connector(slow_retries=True)
    await tenant.bootstrapper(conn.app).ensure()
    assert conn.app[keys.TENANT].status == "awaiting_email_verification"
    return conn


async def test_resend_posts_to_the_resend_url_and_refreshes_the_pending_state(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    conn = await pending(auto_connector, control)
    boot = tenant.bootstrapper(conn.app)
    control.masked_email = "b***@example.org"
    result = await boot.resend()
    assert result == {
        "ok": True,
        "expiresAt": control.resend_expires_at,
        "maskedEmail": "b***@example.org",
        "emailSent": True,
    }
    assert len(control.resends) == 1
    state = conn.app[keys.TENANT]
    assert state.pending is not None
    assert state.pending["expiresAt"] == control.resend_expires_at
    assert state.pending["maskedEmail"] == "b***@example.org"
    saved = read_json(storage / "pending-bootstrap.json")
    assert saved["expiresAt"] == control.resend_expires_at
    assert saved["verifyUrl"].endswith(f"/{PENDING_ID}/verify")  # the rest of the record stays
    # The fresh code verifies.
    assert (await boot.verify_code("123456"))["ok"] is True


async def test_resend_without_a_resend_url_uses_the_reference_default(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    await pending(auto_connector, control)
    record = read_json(storage / "pending-bootstrap.json")
    record.pop("resendUrl")
    (storage / "pending-bootstrap.json").write_text(json.dumps(record))
    again = await auto_connector(slow_retries=True)  # restored from the file
    assert (await tenant.bootstrapper(again.app).resend())["ok"] is True
    assert len(control.resends) == 1


async def test_resend_and_verify_need_a_pending_verification(
    connector_factory: ConnectorFactory,
) -> None:
    conn = await connector_factory()
    boot = tenant.bootstrapper(conn.app)
    for action in (boot.resend(), boot.verify_code("123456")):
        with pytest.raises(Conflict) as info:
            await action
        assert info.value.instance_code == "no_pending_verification"


async def test_legacy_approval_is_not_an_email_verification(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    control.bootstrap_mode = "poll"
    control.approve_on_poll = 0
    conn = await auto_connector(slow_retries=True)
    await tenant.bootstrapper(conn.app).ensure()
    assert conn.app[keys.TENANT].status == "awaiting_admin_approval"
    with pytest.raises(Conflict):
        await tenant.bootstrapper(conn.app).resend()


async def test_verify_reports_the_service_status_and_attempts(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await pending(auto_connector, control)
    result = await tenant.bootstrapper(conn.app).verify_code("000000")
    assert result == {
        "ok": False,
        "status": 400,
        "code": "invalid_code",
        "error": "Wrong code",
        "attemptsLeft": 4,
    }
    pending_ = conn.app[keys.TENANT].pending
    assert pending_ is not None
    assert pending_["attemptsLeft"] == 4


async def test_a_verified_key_ends_the_pending_record(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await pending(auto_connector, control)
    boot = tenant.bootstrapper(conn.app)
    assert (await boot.verify_code("123456"))["ok"] is True
    with pytest.raises(Conflict):
        await boot.verify_code("123456")
    with pytest.raises(Conflict):
        await boot.resend()
    assert len(control.verifications) == 1


async def test_an_ended_verification_schedules_a_new_bootstrap(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    control.bootstrap_mode = "verification"
    conn = await auto_connector()  # fast retries
    boot = tenant.bootstrapper(conn.app)
    await boot.ensure()
    control.expire_now()
    result = await boot.resend()
    assert (result["ok"], result["status"], result["code"]) == (False, 410, "verification_expired")
    state = conn.app[keys.TENANT]
    assert state.last_error is not None
    assert state.last_error["category"] == "verification_expired"
    assert not (storage / "pending-bootstrap.json").exists()
    control.expires_at = EXPIRES_AT
    await wait_for(lambda: len(control.bootstraps) == 2)
    await wait_for(lambda: state.status == "awaiting_email_verification")
    assert (await boot.verify_code("123456"))["ok"] is True
    assert state.key == PROVISIONED_KEY


def test_pairing_code_is_registered_as_a_secret(storage: Path) -> None:
    env = base_env("http://nc.invalid", storage, BEEFLOW_PAIRING_CODE="qrst-4321")
    config = Config.from_env(env)
    cli.register_secrets(config)
    assert REDACTOR.scrub("code QRST-4321 here") == "code *** here"
