"""The bootstrap's e-mail verification at the Bootstrapper level, as the service runs it
(auth/connectorBootstrap.js): its 202 e-mails nobody; the connector asks for the code (resend, or
retarget to the admin doing the setup); verify answers with the service's status; an ended
verification starts over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beeflow import cli
from beeflow.config import Config
from beeflow.errors import Conflict
from beeflow.nextcloud.users import NcUser
from beeflow.redact import REDACTOR
from beeflow.tenant.state import TENANT
from beeflow.tenant.wiring import bootstrapper
from tests.conftest import AutoFactory, ConnectorFactory
from tests.fakes.service_control import PROVISIONED_KEY, ServiceControl
from tests.helpers import RunningConnector, base_env
from tests.tenant.helpers import read_json, wait_for

SETUP_ADMIN = NcUser(uid="ops", email="ops@example.com", display_name="Ops", groups=("admin",))


def matching_org(control: ServiceControl) -> None:
    """An organisation signed up on the service with the Nextcloud admin's domain."""
    control.add_org("Acme", domain="example.com", key=PROVISIONED_KEY)


async def pending(auto_connector: AutoFactory, control: ServiceControl) -> RunningConnector:
    matching_org(control)
    conn = await auto_connector(slow_retries=True)
    await bootstrapper(conn.app).ensure()
    assert conn.app[TENANT].status == "awaiting_email_verification"
    return conn


async def test_the_202_sends_no_email_and_says_so(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    conn = await pending(auto_connector, control)
    assert control.mails == []
    state = conn.app[TENANT]
    assert state.pending == {
        "expiresAt": control.bootstraps[0].answer["expiresAt"],
        "organizationName": "Acme",
        "codeSent": False,
        "kind": "verification",
    }
    saved = read_json(storage / "pending-bootstrap.json")
    assert saved["codeSent"] is False
    assert "maskedEmail" not in saved
    assert not bootstrapper(conn.app).pending.code_sent()


async def test_send_code_retargets_to_the_admin_doing_the_setup(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    conn = await pending(auto_connector, control)
    boot = bootstrapper(conn.app)
    result = await boot.pending.send_code(SETUP_ADMIN)
    assert result["ok"] is True
    assert result["sentVia"] == "retarget"
    assert result["maskedEmail"] == "o•••s@example.com"
    assert [(m.to, m.kind) for m in control.mails] == [("ops@example.com", "retarget")]
    assert control.retargets == [{"email": "ops@example.com", "uid": "ops", "displayName": "Ops"}]
    state = conn.app[TENANT]
    assert state.pending is not None
    assert state.pending["codeSent"] is True
    assert state.pending["maskedEmail"] == "o•••s@example.com"
    assert read_json(storage / "pending-bootstrap.json")["sentVia"] == "retarget"
    assert (await boot.pending.verify_code(control.last_mail().code))["ok"] is True
    assert state.key == PROVISIONED_KEY


async def test_send_code_without_an_address_resends_to_the_one_the_service_holds(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await pending(auto_connector, control)
    boot = bootstrapper(conn.app)
    nobody = NcUser(uid="ops", email=None, display_name="Ops", groups=("admin",))
    result = await boot.pending.send_code(nobody)
    assert (result["ok"], result["sentVia"]) == (True, "resend")
    # The bootstrap's primary admin (the fake Nextcloud's admin@example.com).
    assert [(m.to, m.kind) for m in control.mails] == [("admin@example.com", "resend")]
    assert result["maskedEmail"] == "a•••n@example.com"


async def test_retarget_refused_for_an_address_outside_the_organisation(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await pending(auto_connector, control)
    outsider = NcUser(uid="x", email="x@elsewhere.example", display_name="X", groups=("admin",))
    result = await bootstrapper(conn.app).pending.send_code(outsider)
    assert (result["ok"], result["status"], result["code"]) == (False, 403, "email_not_in_org")
    assert control.mails == []
    assert conn.app[TENANT].status == "awaiting_email_verification"


async def test_resend_without_a_resend_url_uses_the_services_path(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    await pending(auto_connector, control)
    record = read_json(storage / "pending-bootstrap.json")
    record.pop("resendUrl")
    (storage / "pending-bootstrap.json").write_text(json.dumps(record))
    again = await auto_connector(slow_retries=True)  # restored from the file
    assert (await bootstrapper(again.app).pending.resend())["ok"] is True
    assert len(control.resends) == 1


async def test_resend_and_verify_need_a_pending_verification(
    connector_factory: ConnectorFactory,
) -> None:
    conn = await connector_factory()
    boot = bootstrapper(conn.app)
    for action in (boot.pending.resend(), boot.pending.verify_code("123456")):
        with pytest.raises(Conflict) as info:
            await action
        assert info.value.instance_code == "no_pending_verification"


async def test_a_202_without_a_verification_is_an_unsupported_answer(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    """The older server's approval-by-polling 202 ({pendingId?, pollUrl}) is not the service's
    any more: the connector says so instead of polling."""
    control.fault = (202, {"status": "pending_claim", "pollUrl": "/x/poll", "expiresAt": "z"})
    conn = await auto_connector(slow_retries=True)
    await bootstrapper(conn.app).ensure()
    state = conn.app[TENANT]
    assert state.status == "failed"
    assert state.last_error is not None
    assert state.last_error.category == "unsupported_answer"


async def test_verify_reports_the_service_status_and_attempts(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await pending(auto_connector, control)
    boot = bootstrapper(conn.app)
    await boot.pending.send_code(SETUP_ADMIN)
    wrong = "000000" if control.last_mail().code != "000000" else "000001"
    result = await boot.pending.verify_code(wrong)
    assert result == {
        "ok": False,
        "status": 400,
        "code": "invalid_code",
        "error": "That code is not correct.",
        "attemptsLeft": 4,
    }
    pending_ = conn.app[TENANT].pending
    assert pending_ is not None
    assert pending_["attemptsLeft"] == 4


async def test_too_many_wrong_codes_keep_the_verification_until_a_new_code(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    """429 too_many_attempts: the code is spent, the verification is not; a new code works."""
    conn = await pending(auto_connector, control)
    boot = bootstrapper(conn.app)
    await boot.pending.send_code(SETUP_ADMIN)
    wrong = "000000" if control.last_mail().code != "000000" else "000001"
    for _ in range(4):
        assert (await boot.pending.verify_code(wrong))["status"] == 400
    result = await boot.pending.verify_code(wrong)
    assert (result["status"], result["code"]) == (429, "too_many_attempts")
    assert conn.app[TENANT].status == "awaiting_email_verification"
    await boot.pending.send_code(SETUP_ADMIN)
    assert (await boot.pending.verify_code(control.last_mail().code))["ok"] is True


async def test_a_verified_key_ends_the_pending_record(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await pending(auto_connector, control)
    boot = bootstrapper(conn.app)
    await boot.pending.send_code(SETUP_ADMIN)
    assert (await boot.pending.verify_code(control.last_mail().code))["ok"] is True
    with pytest.raises(Conflict):
        await boot.pending.verify_code("123456")
    with pytest.raises(Conflict):
        await boot.pending.resend()
    assert len(control.verifications) == 1
    # Bound now: the next bootstrap of this Nextcloud is a returning binding.
    assert control.orgs["org-acme"].instance_id == conn.app[TENANT].instance_id


async def test_an_ended_verification_schedules_a_new_bootstrap(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    matching_org(control)
    conn = await auto_connector()  # fast retries
    boot = bootstrapper(conn.app)
    await boot.ensure()
    control.expire_pending()
    result = await boot.pending.resend()
    assert (result["ok"], result["status"], result["code"]) == (False, 410, "expired")
    state = conn.app[TENANT]
    assert state.last_error is not None
    assert state.last_error.category == "verification_expired"
    assert not (storage / "pending-bootstrap.json").exists()
    await wait_for(lambda: len(control.bootstraps) == 2)
    await wait_for(lambda: state.status == "awaiting_email_verification")
    await boot.pending.send_code(SETUP_ADMIN)
    assert (await boot.pending.verify_code(control.last_mail().code))["ok"] is True
    assert state.key == PROVISIONED_KEY


def test_pairing_code_is_registered_as_a_secret(storage: Path) -> None:
    env = base_env("http://nc.invalid", storage, BEEFLOW_PAIRING_CODE="qrst-4321")
    config = Config.from_env(env)
    cli.register_secrets(config)
    assert REDACTOR.scrub("code QRST-4321 here") == "code *** here"
