"""The setup page's tenant actions over real sockets, against the fake Nextcloud and the fake
Bee Flow service (its bootstrap as auth/connectorBootstrap.js runs it): e-mail verification (the
code goes out only when the connector asks: to the admin doing the setup, else to the address
the service holds), pairing codes, key rotation, the env lock, concurrency, access, bad input,
and the secrets that must never come back."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from multidict import CIMultiDictProxy

from beeflow.service_client import SERVICE, SERVICE_URL
from beeflow.tasks import spawn
from beeflow.tenant.failures import REMEDIATION
from beeflow.tenant.state import TENANT, fingerprint
from beeflow.tenant.wiring import BOOTSTRAPPER, bootstrapper
from tests.conftest import AutoFactory, ConnectorFactory
from tests.fakes.service import FakeService
from tests.fakes.service_control import (
    PAIRED_KEY,
    PROVISIONED_KEY,
    Limiter,
    ServiceControl,
    verify_hs256,
)
from tests.helpers import SECRET, TENANT_KEY, RunningConnector, wait_for
from tests.ports import refused_port, refused_url

JSON = {"Content-Type": "application/json"}
VERIFY = "/setup/verify-email-code"
RESEND = "/setup/resend-email-code"
PAIR = "/setup/apply-pairing-code"
ROTATE = "/setup/rotate-tenant-key"
REQUEST = "/setup/request-verification-code"
ACTIONS = (VERIFY, RESEND, PAIR, ROTATE, REQUEST)
CACHED_KEY = "tk_cached_00112233445566778899aabbccddeeff"
ROTATED_KEY = "tk_rotated_aabbccddeeff00112233445566778899"
PAIRING = "ABCD-EFGH"
CACHED_INSTANCE = "nc-host:cached"


@attrs.frozen
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    @property
    def body(self) -> dict[str, Any]:
        data = json.loads(self.text)
        assert isinstance(data, dict)
        return data

    @property
    def code(self) -> str:
        return str(self.body.get("code"))


async def call(
    conn: RunningConnector,
    path: str,
    body: Any = None,
    *,
    user: str | None = "admin",
    raw: bytes | None = None,
    ctype: str = "application/json",
) -> Answer:
    data = raw if raw is not None else json.dumps({} if body is None else body).encode()
    async with await conn.request(
        "POST", path, user=user, data=data, headers={"Content-Type": ctype}
    ) as resp:
        text = await resp.text()
        if resp.status != 204:
            assert resp.headers["Content-Type"] == "application/json", text
        return Answer(resp.status, resp.headers, text)


async def status_of(conn: RunningConnector, user: str = "admin") -> dict[str, Any]:
    async with await conn.request("GET", "/setup/status", user=user) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    return body


def write_cache(storage: Path, key: str = CACHED_KEY, bound: str = "") -> None:
    record = {
        "tenantKey": key,
        "organizationId": "org-cached",
        "organizationName": "Cached Org",
        "ncInstanceId": "nc-host:cached",
        "boundApiBaseUrl": bound or refused_url(),
        "provisionedAt": "2026-01-01T00:00:00Z",
    }
    (storage / "tenant-key.json").write_text(json.dumps(record))
    os.chmod(storage / "tenant-key.json", 0o600)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def everything_stored(storage: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(storage.iterdir()) if p.is_file())


def matching_org(control: ServiceControl) -> None:
    """An organisation signed up on the service with the Nextcloud admin's domain: the
    service answers a bootstrap of this Nextcloud with 202 (e-mail verification)."""
    control.add_org("Acme", domain="example.com", key=PROVISIONED_KEY)


def wrong(control: ServiceControl) -> str:
    return "000000" if control.last_mail().code != "000000" else "000001"


async def pending_verification(
    auto_connector: AutoFactory, control: ServiceControl, *, sent: bool = True
) -> Any:
    """A first bootstrap waiting for its code; `sent`: the setup page (opened by the admin)
    asked for it, as it does by itself."""
    matching_org(control)
    conn = await auto_connector()
    await bootstrapper(conn.app).ensure()
    assert conn.app[TENANT].status == "awaiting_email_verification"
    if sent:
        answer = await call(conn, REQUEST)
        assert answer.status == 200, answer.text
    return conn


# ------------------------------------------------------------------ e-mail verification


async def test_email_verification_happy_path(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    conn = await pending_verification(auto_connector, control, sent=False)
    status = await status_of(conn)
    tenant_ = status["tenant"]
    assert tenant_["status"] == "awaiting_email_verification"
    assert tenant_["fingerprint"] is None
    expires = control.bootstraps[0].answer["expiresAt"]
    # The service sent nothing: the page knows no code went out yet (and asks for one).
    assert tenant_["pending"] == {
        "kind": "verification",
        "organizationName": "Acme",
        "expiresAt": expires,
        "codeSent": False,
        "expired": False,
    }
    assert control.mails == []
    assert tenant_["pairingSuggested"] is False
    assert tenant_["keyLocked"] is False
    raw = json.dumps(status)
    pending_id = control.bootstraps[0].answer["pendingId"]
    for hidden in (pending_id, "/verify", "/resend"):
        assert hidden not in raw

    # What the page does when it shows this: the code goes to the admin looking at it.
    sent = await call(conn, REQUEST)
    assert sent.status == 200, sent.text
    assert sent.body["sentVia"] == "retarget"
    assert sent.body["maskedEmail"] == "a•••n@example.com"
    assert [m.to for m in control.mails] == ["admin@example.com"]
    pending = (await status_of(conn))["tenant"]["pending"]
    assert (pending["codeSent"], pending["maskedEmail"]) == (True, "a•••n@example.com")

    # A wrong code: 400 wrong_code with the service's attemptsLeft, shown in the status too.
    bad = await call(conn, VERIFY, {"code": wrong(control)})
    assert bad.status == 400
    assert bad.body["code"] == "wrong_code"
    assert bad.body["attemptsLeft"] == 4
    assert bad.body["serviceCode"] == "invalid_code"
    assert "4 attempts left" in bad.body["error"]
    assert (await status_of(conn))["tenant"]["pending"]["attemptsLeft"] == 4

    # The right one (spaces trimmed): the key is applied, only its fingerprint comes back.
    code = control.last_mail().code
    right = await call(conn, VERIFY, {"code": f" {code} "})
    assert right.status == 200, right.text
    assert right.body == {
        "ok": True,
        "status": "ok",
        "fingerprint": fingerprint(PROVISIONED_KEY),
        "organizationId": "org-acme",
        "organizationName": "Acme",
        "previousKeyInUse": False,
    }
    assert PROVISIONED_KEY not in right.text
    assert [v["code"] for v in control.verifications] == [wrong(control), code]
    assert conn.app[TENANT].key == PROVISIONED_KEY
    assert read_json(storage / "tenant-key.json")["tenantKey"] == PROVISIONED_KEY
    assert not (storage / "pending-bootstrap.json").exists()
    after = (await status_of(conn))["tenant"]
    assert after["status"] == "ok"
    assert after["fingerprint"] == fingerprint(PROVISIONED_KEY)
    assert "pending" not in after
    assert PROVISIONED_KEY not in json.dumps(after)

    # Nothing is pending any more: a second verification is a conflict and reaches nobody.
    again = await call(conn, VERIFY, {"code": code})
    assert (again.status, again.code) == (409, "no_pending_verification")
    assert len(control.verifications) == 2


async def test_double_click_verifies_once(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await pending_verification(auto_connector, control)
    code = control.last_mail().code
    answers = await asyncio.gather(*(call(conn, VERIFY, {"code": code}) for _ in range(3)))
    statuses = sorted(a.status for a in answers)
    assert statuses[0] == 200
    assert statuses[1:] == [409, 409]
    assert {a.code for a in answers if a.status == 409} <= {
        "bootstrap_running",
        "no_pending_verification",
    }
    assert len(control.verifications) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"code": "12345"},
        {"code": "1234567"},
        {"code": "abcdef"},
        {"code": "12 345"},
        {"code": "\uff11\uff12\uff13\uff14\uff15\uff16"},  # full-width digits
        {"code": "123456\n"},
        {"code": 123456},
        {"code": None},
        {},
    ],
    ids=repr,
)
async def test_verify_refuses_malformed_codes_before_calling_anyone(
    auto_connector: AutoFactory, control: ServiceControl, body: dict[str, Any]
) -> None:
    conn = await pending_verification(auto_connector, control)
    if body.get("code") == "123456\n":  # trimmed like the page does: a valid code
        answer = await call(conn, VERIFY, {"code": control.last_mail().code + "\n"})
        assert answer.status == 200
        return
    answer = await call(conn, VERIFY, body)
    assert (answer.status, answer.code) == (400, "invalid_code_format")
    assert control.verifications == []


async def test_verify_and_resend_without_a_pending_verification(
    connector: RunningConnector,
) -> None:
    for path in (VERIFY, RESEND):
        answer = await call(connector, path, {"code": "123456"})
        assert (answer.status, answer.code) == (409, "no_pending_verification"), path


async def test_expired_verification_starts_over(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    conn = await pending_verification(auto_connector, control)
    control.expire_pending()
    answer = await call(conn, VERIFY, {"code": control.last_mail().code})
    assert (answer.status, answer.code) == (410, "verification_expired")
    assert answer.body["serviceCode"] == "expired"
    state = (await status_of(conn))["tenant"]
    assert state["status"] == "failed"
    assert state["lastError"]["category"] == "verification_expired"
    assert "the new code is sent to you" in state["lastError"]["remediation"]
    assert "pending" not in state
    assert not (storage / "pending-bootstrap.json").exists()
    # The next attempt (the backoff's, here triggered at once) asks for a new verification.
    await bootstrapper(conn.app).ensure()
    assert len(control.bootstraps) == 2
    assert (await status_of(conn))["tenant"]["status"] == "awaiting_email_verification"
    assert (await call(conn, REQUEST)).status == 200
    assert (await call(conn, VERIFY, {"code": control.last_mail().code})).status == 200


async def test_too_many_wrong_codes_need_a_new_code(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    """The service's 429 too_many_attempts: this code is spent, the verification is not."""
    conn = await pending_verification(auto_connector, control)
    lefts = []
    for _ in range(4):
        answer = await call(conn, VERIFY, {"code": wrong(control)})
        assert answer.code == "wrong_code"
        lefts.append(answer.body["attemptsLeft"])
    assert lefts == [4, 3, 2, 1]
    assert "1 attempt left" in answer.body["error"]
    last = await call(conn, VERIFY, {"code": wrong(control)})
    assert (last.status, last.code) == (429, "too_many_attempts")
    assert last.body["serviceCode"] == "too_many_attempts"
    assert "Send a new code" in last.body["error"]
    assert (await status_of(conn))["tenant"]["status"] == "awaiting_email_verification"
    assert (await call(conn, RESEND)).status == 200
    assert (await call(conn, VERIFY, {"code": control.last_mail().code})).status == 200


async def test_pending_shows_expired_before_the_service_says_so(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    conn = await pending_verification(auto_connector, control, sent=False)
    await conn.close()
    record = read_json(storage / "pending-bootstrap.json")
    record["expiresAt"] = "2020-01-01T00:00:00Z"
    (storage / "pending-bootstrap.json").write_text(json.dumps(record))

    def keep_expired(app: Any) -> None:
        app[BOOTSTRAPPER].pending.grace = 10 * 365 * 86400.0

    again = await auto_connector(customise=keep_expired)
    assert (await status_of(again))["tenant"]["pending"]["expired"] is True


async def test_verify_with_the_service_unreachable(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await pending_verification(auto_connector, control)
    conn.app[SERVICE_URL].url = conn.app[SERVICE_URL].url.with_port(refused_port())
    answer = await call(conn, VERIFY, {"code": control.last_mail().code})
    assert (answer.status, answer.code) == (502, "saas_unreachable")
    assert (await status_of(conn))["tenant"]["status"] == "awaiting_email_verification"


async def test_resend(auto_connector: AutoFactory, control: ServiceControl, storage: Path) -> None:
    conn = await pending_verification(auto_connector, control, sent=False)
    answer = await call(conn, RESEND)
    assert answer.status == 200, answer.text
    assert answer.body == {
        "ok": True,
        "expiresAt": answer.body["expiresAt"],
        "maskedEmail": "a•••n@example.com",  # the address the pending row holds
        "emailSent": True,
        "sentVia": "resend",
    }
    assert [(m.to, m.kind) for m in control.mails] == [("admin@example.com", "resend")]
    (sent,) = control.resends
    assert sent["X-Beeflow-Source"] == "nextcloud-connector"
    assert sent["Content-Type"] == "application/json"
    await call(conn, VERIFY, {"code": wrong(control)})
    assert (await call(conn, RESEND)).status == 200
    pending = (await status_of(conn))["tenant"]["pending"]
    assert pending["expiresAt"] == read_json(storage / "pending-bootstrap.json")["expiresAt"]
    assert "attemptsLeft" not in pending  # a new code, new attempts
    assert (pending["codeSent"], pending["sentVia"]) == (True, "resend")


async def test_resend_limited_by_the_service(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    """5 codes per 15 minutes per client IP at the service: its bare 429 is ours too."""
    conn = await pending_verification(auto_connector, control, sent=False)
    control.limits["resend"] = Limiter(0, 900.0)
    answer = await call(conn, RESEND)
    assert (answer.status, answer.code) == (429, "service_rate_limited")
    assert answer.body["serviceCode"] == "http_429"
    assert "5 codes in 15 minutes" in answer.body["error"]
    assert (await status_of(conn))["tenant"]["status"] == "awaiting_email_verification"


async def test_resend_after_expiry(auto_connector: AutoFactory, control: ServiceControl) -> None:
    conn = await pending_verification(auto_connector, control)
    control.expire_pending()
    answer = await call(conn, RESEND)
    assert (answer.status, answer.code) == (410, "verification_expired")
    assert (await status_of(conn))["tenant"]["status"] == "failed"


# ------------------------------------------------------------------ send the code to me instead


async def test_request_the_code_at_my_own_address(
    auto_connector: AutoFactory, control: ServiceControl, fake_nc: Any, storage: Path
) -> None:
    fake_nc.add_user("root2", email="root2@example.com", display_name="Root Two", groups=["admin"])
    conn = await pending_verification(auto_connector, control)
    assert (await call(conn, VERIFY, {"code": wrong(control)})).status == 400  # 4 left
    answer = await call(conn, REQUEST, {}, user="root2")
    assert answer.status == 200, answer.text
    assert answer.body == {
        "ok": True,
        "expiresAt": answer.body["expiresAt"],
        "maskedEmail": "r•••2@example.com",
        "emailSent": True,
        "sentVia": "retarget",
    }
    # The service got the requesting admin's own address, uid and display name.
    assert control.retargets[-1] == {
        "email": "root2@example.com",
        "uid": "root2",
        "displayName": "Root Two",
    }
    assert control.last_mail().to == "root2@example.com"
    pending = (await status_of(conn))["tenant"]["pending"]
    assert pending["maskedEmail"] == "r•••2@example.com"
    assert "attemptsLeft" not in pending  # a new code, new attempts
    saved = read_json(storage / "pending-bootstrap.json")
    assert saved["maskedEmail"] == "r•••2@example.com"
    assert saved["verifyUrl"].endswith("/verify")
    assert (await call(conn, VERIFY, {"code": control.last_mail().code})).status == 200
    assert conn.app[TENANT].key == PROVISIONED_KEY


async def test_request_the_code_without_an_email_address_resends(
    auto_connector: AutoFactory, control: ServiceControl, fake_nc: Any
) -> None:
    """An admin without an address of their own: the code goes to the address the service
    holds, and the answer says so."""
    fake_nc.add_user("nomail", email=None, display_name="No Mail", groups=["admin"])
    conn = await pending_verification(auto_connector, control, sent=False)
    answer = await call(conn, REQUEST, {}, user="nomail")
    assert answer.status == 200, answer.text
    assert (answer.body["sentVia"], answer.body["maskedEmail"]) == ("resend", "a•••n@example.com")
    assert control.retargets == []
    assert [(m.to, m.kind) for m in control.mails] == [("admin@example.com", "resend")]


async def test_request_the_code_sees_a_fresh_address(
    auto_connector: AutoFactory, control: ServiceControl, fake_nc: Any
) -> None:
    """The user directory's cached entry is not used: an address set a moment ago counts."""
    fake_nc.add_user("late", email=None, display_name="Late", groups=["admin"])
    conn = await pending_verification(auto_connector, control, sent=False)
    assert (await call(conn, REQUEST, {}, user="late")).body["sentVia"] == "resend"
    fake_nc.users["late"].email = "late@example.com"
    answer = await call(conn, REQUEST, {}, user="late")
    assert answer.status == 200, answer.text
    assert control.retargets[-1]["email"] == "late@example.com"


async def test_request_the_code_rechecks_a_demoted_admin(
    auto_connector: AutoFactory, control: ServiceControl, fake_nc: Any
) -> None:
    """The admin check of the middleware is cached for a minute; this action re-reads the user,
    so an admin demoted a moment ago cannot send the code to their own address."""
    fake_nc.add_user("ex", email="ex@example.com", display_name="Ex Admin", groups=["admin"])
    conn = await pending_verification(auto_connector, control, sent=False)
    assert (await status_of(conn, user="ex"))["tenant"]["pending"]  # cached as an admin now
    fake_nc.users["ex"].groups.remove("admin")
    answer = await call(conn, REQUEST, {}, user="ex")
    assert (answer.status, answer.code) == (403, "admin_required")
    assert control.retargets == []
    assert control.mails == []


@pytest.mark.parametrize(
    ("setup", "status", "code"),
    [
        ("not_in_org", 403, "email_not_in_org"),
        ("expired", 410, "verification_expired"),
        ("unknown", 410, "verification_expired"),
    ],
)
async def test_request_the_code_refused_by_the_service(
    auto_connector: AutoFactory,
    control: ServiceControl,
    fake_nc: Any,
    storage: Path,
    setup: str,
    status: int,
    code: str,
) -> None:
    fake_nc.add_user("root2", email="root2@example.org", display_name="Root Two", groups=["admin"])
    conn = await pending_verification(auto_connector, control, sent=False)
    user = "admin"
    if setup == "not_in_org":
        user = "root2"  # example.org is not the organisation's domain
    elif setup == "expired":
        control.expire_pending()
    else:
        record = read_json(storage / "pending-bootstrap.json")
        record["retargetUrl"] = "/auth/connector/bootstrap/pending/p-9/retarget"
        (storage / "pending-bootstrap.json").write_text(json.dumps(record))
        conn = await auto_connector()  # restored from the file
    answer = await call(conn, REQUEST, {}, user=user)
    assert (answer.status, answer.code) == (status, code), answer.text
    assert len(control.retargets) == 1
    assert control.mails == []
    state = conn.app[TENANT]
    if status == 403:
        # Nothing changes: the verification waits for a code sent elsewhere.
        assert state.status == "awaiting_email_verification"
        assert answer.body["serviceCode"] == "email_not_in_org"
    else:
        assert state.status == "failed"  # first bootstrap: the connector starts over


async def test_request_the_code_uses_the_services_default_url(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    await pending_verification(auto_connector, control, sent=False)
    record = read_json(storage / "pending-bootstrap.json")
    record.pop("retargetUrl")
    (storage / "pending-bootstrap.json").write_text(json.dumps(record))
    conn = await auto_connector()
    assert (await call(conn, REQUEST, {})).status == 200
    assert control.retargets == [
        {"email": "admin@example.com", "uid": "admin", "displayName": "Ada Admin"}
    ]


async def test_request_the_code_needs_a_pending_verification(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await auto_connector()
    await bootstrapper(conn.app).ensure()
    answer = await call(conn, REQUEST, {})
    assert (answer.status, answer.code) == (409, "no_pending_verification")
    assert control.retargets == []


async def test_resend_and_request_share_one_budget(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await pending_verification(auto_connector, control, sent=False)
    control.limits["resend"] = Limiter(100, 900.0)  # the service's own IP limit is not tested
    for _ in range(3):
        assert (await call(conn, RESEND)).status == 200
    for _ in range(2):
        assert (await call(conn, REQUEST)).status == 200
    assert (await call(conn, REQUEST)).code == "rate_limited"
    assert (await call(conn, RESEND)).code == "rate_limited"


# ------------------------------------------------------------------ pairing codes


async def test_pairing_code_binds_to_the_existing_organisation(
    auto_connector: AutoFactory,
    control: ServiceControl,
    storage: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A self-hosted server refuses new organisations (403 pairing_required); the admin enters
    a code made in an existing organisation: 200 pairing_code_redeemed."""
    caplog.set_level(logging.DEBUG)
    control.provisioning = "pairing_only"
    conn = await auto_connector()
    await bootstrapper(conn.app).ensure()
    before = (await status_of(conn))["tenant"]
    assert before["status"] == "failed"
    assert before["lastError"]["category"] == "pairing_required"
    assert "setup page" in before["lastError"]["remediation"]
    assert "BEEFLOW_CONNECTOR_PROVISIONING=open" in before["lastError"]["remediation"]
    assert before["pairingSuggested"] is True

    code = control.issue_pairing_code(control.add_org("Existing Org", key=PAIRED_KEY))
    tail = code[5:]
    answer = await call(conn, PAIR, {"code": f"  {code.lower()} "})
    assert answer.status == 200, answer.text
    assert answer.body == {
        "ok": True,
        "status": "ok",
        "fingerprint": fingerprint(PAIRED_KEY),
        "organizationId": "org-existing-org",
        "organizationName": "Existing Org",
        "previousKeyInUse": False,
    }
    first, second = control.bootstraps
    assert "X-Beeflow-Pairing-Code" not in first.headers
    assert second.headers["X-Beeflow-Pairing-Code"] == code
    assert second.answer["code"] == "pairing_code_redeemed"
    assert read_json(storage / "tenant-key.json")["tenantKey"] == PAIRED_KEY
    assert bootstrapper(conn.app).pairing_code is None  # one shot
    assert control.pairing_codes == {}  # spent at the service too
    after = (await status_of(conn))["tenant"]
    assert after["status"] == "ok"
    assert after["pairingSuggested"] is False
    # Never echoed, never logged beyond its first 4 characters, never stored.
    assert tail not in answer.text
    assert tail not in json.dumps(after)
    assert tail not in caplog.text
    assert f"{code[:4]}***" in caplog.text
    assert tail not in everything_stored(storage)


@pytest.mark.parametrize(
    ("refusal", "status", "category"),
    [
        ("invalid", 401, "pairing_code_invalid"),
        ("gone", 410, "pairing_code_org_gone"),
        ("bound", 409, "pairing_code_org_already_bound"),
    ],
)
async def test_rejected_pairing_code_restores_everything(
    auto_connector: AutoFactory,
    control: ServiceControl,
    storage: Path,
    caplog: pytest.LogCaptureFixture,
    refusal: str,
    status: int,
    category: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    write_cache(storage)
    conn = await auto_connector()
    if refusal == "invalid":
        code = PAIRING
    elif refusal == "gone":
        gone = control.add_org("Gone")
        code = control.issue_pairing_code(gone)
        del control.orgs[gone.id]
    else:
        code = control.issue_pairing_code(control.add_org("Taken", instance_id="oc-elsewhere"))
    answer = await call(conn, PAIR, {"code": code})
    assert (answer.status, answer.code) == (409, "pairing_code_rejected")
    assert control.bootstraps[0].status == status
    assert answer.body["category"] == category
    assert answer.body["remediation"] == REMEDIATION[category]
    assert control.bootstraps[0].headers["X-Beeflow-Pairing-Code"] == code
    assert code[5:] not in answer.text
    assert code[5:] not in caplog.text
    assert code[5:] not in everything_stored(storage)
    assert code[5:] not in json.dumps(await status_of(conn))
    state = conn.app[TENANT]
    assert (state.key, state.status) == (CACHED_KEY, "ok")
    assert bootstrapper(conn.app).pairing_code is None


async def test_a_pairing_code_quoted_back_is_masked(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    """Fault injection, not the service's behaviour (it answers a fixed sentence): a refusal
    that quoted the code would still not put it in an answer, a log or a file."""
    write_cache(storage)
    conn = await auto_connector()
    control.fault = (401, {"error": f"Pairing code {PAIRING} is not valid", "code": "x"})
    answer = await call(conn, PAIR, {"code": PAIRING})
    assert (answer.status, answer.code) == (409, "pairing_code_rejected")
    assert "EFGH" not in answer.text
    assert "ABCD***" in answer.text
    assert "EFGH" not in everything_stored(storage)


@pytest.mark.parametrize(
    "code",
    [
        "ABCDEFGH",
        "ABC-DEFGH",
        "ABCD-EFG!",
        "ABCD EFGH",
        "",
        "ABCD-EFGH-IJKL",
        "\u00c0BCD-EFGH",
        1234,
    ],
    ids=repr,
)
async def test_pairing_code_format(
    auto_connector: AutoFactory, control: ServiceControl, code: object
) -> None:
    conn = await auto_connector()
    answer = await call(conn, PAIR, {"code": code})
    assert (answer.status, answer.code) == (400, "invalid_pairing_code")
    assert control.bootstraps == []
    if isinstance(code, str) and code:
        assert code not in answer.text


async def test_pairing_code_from_the_environment_is_used_once(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    code = control.issue_pairing_code(control.add_org("Existing Org", key=PAIRED_KEY))
    conn = await auto_connector(BEEFLOW_PAIRING_CODE=f" {code.lower()} ")
    assert code[5:] not in repr(conn.config)
    await bootstrapper(conn.app).ensure()
    (call_,) = control.bootstraps
    assert call_.headers["X-Beeflow-Pairing-Code"] == code
    assert conn.app[TENANT].key == PAIRED_KEY
    # A rotation later is a plain bootstrap: the code was for the first one only, and the
    # service, knowing this Nextcloud now, hands back the organisation's one key.
    answer = await call(conn, ROTATE)
    assert answer.status == 200
    assert "X-Beeflow-Pairing-Code" not in control.bootstraps[1].headers
    assert control.bootstraps[1].answer["code"] == "returning_bind"
    assert answer.body["keyChanged"] is False
    assert conn.app[TENANT].key == PAIRED_KEY


async def test_pairing_code_from_the_environment_ignored_when_a_key_is_cached(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    write_cache(storage)
    conn = await auto_connector(BEEFLOW_PAIRING_CODE=PAIRING)
    assert bootstrapper(conn.app).pairing_code is None
    answer = await call(conn, ROTATE)
    assert answer.status == 200
    assert "X-Beeflow-Pairing-Code" not in control.bootstraps[0].headers


# ------------------------------------------------------------------ rotation


async def test_rotate_provisions_a_new_key_and_keeps_the_previous_file(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    """A cached key from another service: this one creates an organisation and a key."""
    write_cache(storage)
    conn = await auto_connector()
    control.tenant_key = ROTATED_KEY
    answer = await call(conn, ROTATE)
    assert answer.status == 200, answer.text
    assert answer.body["fingerprint"] == fingerprint(ROTATED_KEY)
    assert answer.body["previousFingerprint"] == fingerprint(CACHED_KEY)
    assert answer.body["keyChanged"] is True
    assert answer.body["status"] == "ok"
    assert ROTATED_KEY not in answer.text
    assert CACHED_KEY not in answer.text
    assert conn.app[TENANT].key == ROTATED_KEY
    assert read_json(storage / "tenant-key.json")["tenantKey"] == ROTATED_KEY
    assert read_json(storage / "tenant-key.previous.json")["tenantKey"] == CACHED_KEY
    assert (await status_of(conn))["tenant"]["fingerprint"] == fingerprint(ROTATED_KEY)


async def test_rotation_against_the_service_that_issued_the_key_keeps_it(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    """The service keeps one key per organisation (getOrMintTenantKey): a "rotation" of a
    Nextcloud it knows is a returning binding with the same key, and the answer says so."""
    conn = await auto_connector()
    await bootstrapper(conn.app).ensure()
    assert conn.app[TENANT].key == PROVISIONED_KEY
    answer = await call(conn, ROTATE)
    assert answer.status == 200, answer.text
    assert control.bootstraps[-1].answer["code"] == "returning_bind"
    assert answer.body["keyChanged"] is False
    assert answer.body["fingerprint"] == answer.body["previousFingerprint"]
    assert conn.app[TENANT].key == PROVISIONED_KEY


def _conflict_elsewhere(control: ServiceControl) -> None:
    control.add_org("Other", emails=("admin@example.com",), instance_id="oc-other")


@pytest.mark.parametrize(
    ("prepare", "status", "code", "category"),
    [
        ((503, {"error": "down"}), 502, "bootstrap_failed", "saas_transient"),
        ((409, {"error": "already"}), 409, "bootstrap_refused", "tenant_already_provisioned"),
        (_conflict_elsewhere, 409, "bootstrap_refused", "admin_email_conflict"),
    ],
    ids=["503", "409-without-code", "admin_email_conflict"],
)
async def test_failed_rotation_keeps_the_old_key(
    auto_connector: AutoFactory,
    control: ServiceControl,
    storage: Path,
    prepare: Any,
    status: int,
    code: str,
    category: str,
) -> None:
    write_cache(storage)
    conn = await auto_connector()
    if callable(prepare):
        prepare(control)  # the service's own branch
    else:
        control.fault = prepare  # an answer without a bootstrap code
    answer = await call(conn, ROTATE)
    assert (answer.status, answer.code) == (status, code)
    assert answer.body["category"] == category
    assert answer.body["remediation"] == REMEDIATION[category]
    assert conn.app[TENANT].key == CACHED_KEY
    assert read_json(storage / "tenant-key.json")["tenantKey"] == CACHED_KEY
    assert (await status_of(conn))["tenant"]["status"] == "ok"


async def test_rotation_with_the_service_unreachable(
    auto_connector: AutoFactory, storage: Path
) -> None:
    write_cache(storage)
    conn = await auto_connector(BEEFLOW_API_BASE_URL=refused_url())
    answer = await call(conn, ROTATE)
    assert (answer.status, answer.code) == (502, "bootstrap_failed")
    assert answer.body["category"] == "saas_unreachable"
    assert conn.app[TENANT].key == CACHED_KEY


async def test_rebootstrap_for_another_service_drops_the_old_key_at_once(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    """The cached key was issued by another service (here: the env points elsewhere, as after
    a picker save): it is no use at this one, so it is not held while the code is pending. The
    code goes straight to the admin who asked (the service e-mails nobody on its own)."""
    write_cache(storage)  # bound to a refused port, not the fake service
    conn = await auto_connector()
    matching_org(control)
    answer = await call(conn, ROTATE)
    assert answer.status == 202, answer.text
    assert answer.body["status"] == "awaiting_email_verification"
    assert answer.body["fingerprint"] is None
    assert answer.body["previousKeyInUse"] is False
    assert conn.app[TENANT].key is None
    assert not (storage / "tenant-key.json").exists()
    assert answer.body["pending"]["codeSent"] is True
    assert answer.body["pending"]["maskedEmail"] == "a•••n@example.com"
    assert answer.body["pending"]["sentVia"] == "retarget"
    assert [(m.to, m.kind) for m in control.mails] == [("admin@example.com", "retarget")]
    assert read_json(storage / "tenant-key.previous.json")["tenantKey"] == CACHED_KEY
    assert (await call(conn, VERIFY, {"code": control.last_mail().code})).status == 200
    assert conn.app[TENANT].key == PROVISIONED_KEY


async def test_a_code_that_cannot_be_sent_is_said(
    auto_connector: AutoFactory, control: ServiceControl, fake_nc: Any, storage: Path
) -> None:
    """The admin doing the rotation has an address outside the organisation: the 202 comes
    back with why no code went out; the buttons can still send one elsewhere."""
    fake_nc.add_user("root2", email="root2@example.org", display_name="Root Two", groups=["admin"])
    write_cache(storage)
    conn = await auto_connector()
    matching_org(control)
    answer = await call(conn, ROTATE, user="root2")
    assert answer.status == 202, answer.text
    assert answer.body["pending"]["codeSent"] is False
    assert answer.body["sendProblem"]["code"] == "email_not_in_org"
    assert control.mails == []
    assert (await call(conn, RESEND, user="root2")).status == 200
    assert control.last_mail().to == "admin@example.com"


async def api_key(conn: RunningConnector, service: FakeService, user: str = "alice") -> str:
    """Which tenant key signed the JWT the service received (and accepted) for a request.
    After a verification moved this Nextcloud to another organisation, ask as its admin: the
    service refuses a user of the previous organisation (403 NC_ORG_MISMATCH)."""
    async with await conn.request("GET", "/api/json", user=user) as resp:
        assert resp.status == 200, await resp.text()
    token = service.last("/api/json").headers["Authorization"].removeprefix("Bearer ")
    for key in (CACHED_KEY, PROVISIONED_KEY):
        claims = verify_hs256(token, key)
        if claims is not None:
            assert claims["sub"] == user
            return key
    raise AssertionError("the JWT was signed by neither key")


async def signed_with(conn: RunningConnector, control: ServiceControl, key: str) -> bool:
    """A connector -> service HMAC call (reference 7.3): does the fake verify it with `key`?"""
    control.verify_key = key
    before = len(control.deliveries)
    body = {"event": "user.updated", "ncUid": "alice", "groupId": None}
    await conn.app[SERVICE].post_signed("/auth/webhook/nc-user-sync", body)
    return control.deliveries[before].verified


async def held_rotation(
    auto_connector: AutoFactory, control: ServiceControl, service: FakeService, storage: Path
) -> RunningConnector:
    """A cached key the service knows (for the Nextcloud's previous instance id), then a
    rotation the service answers with 202: an organisation with the admin's domain."""
    write_cache(storage, bound=str(service.url))
    control.add_org("Cached Org", key=CACHED_KEY, instance_id=CACHED_INSTANCE)
    conn = await auto_connector()
    assert await api_key(conn, service) == CACHED_KEY
    matching_org(control)
    answer = await call(conn, ROTATE)
    assert answer.status == 202, answer.text
    assert answer.body["status"] == "awaiting_email_verification"
    assert answer.body["fingerprint"] == fingerprint(CACHED_KEY)
    assert answer.body["previousFingerprint"] == fingerprint(CACHED_KEY)
    assert answer.body["previousKeyInUse"] is True
    assert answer.body["pending"]["maskedEmail"] == "a•••n@example.com"
    return conn


async def test_rotation_waiting_for_the_code_keeps_the_old_key_serving(
    auto_connector: AutoFactory, control: ServiceControl, service: FakeService, storage: Path
) -> None:
    conn = await held_rotation(auto_connector, control, service, storage)
    # Chat keeps working with the old key: JWT and the outbound HMAC.
    assert await api_key(conn, service) == CACHED_KEY
    assert await signed_with(conn, control, CACHED_KEY)
    state = (await status_of(conn))["tenant"]
    assert state["status"] == "awaiting_email_verification"
    assert state["previousKeyInUse"] is True
    assert state["fingerprint"] == fingerprint(CACHED_KEY)
    assert state["pending"]["kind"] == "verification"
    async with await conn.request("GET", "/heartbeat", user="") as resp:
        beat = (await resp.json())["bootstrap"]
    assert beat["state"] == "awaiting_email_verification"
    assert beat["previousKeyInUse"] is True
    assert beat["fingerprint"] == fingerprint(CACHED_KEY)
    # Both files are on disk: the key in use and the pending state that replaces it.
    assert read_json(storage / "tenant-key.json")["tenantKey"] == CACHED_KEY
    assert read_json(storage / "pending-bootstrap.json")["replacesKey"] == fingerprint(CACHED_KEY)
    assert read_json(storage / "tenant-key.previous.json")["tenantKey"] == CACHED_KEY
    # /init does not provision behind the pending verification's back.
    await bootstrapper(conn.app).ensure()
    assert len(control.bootstraps) == 1

    right = await call(conn, VERIFY, {"code": control.last_mail().code})
    assert right.status == 200, right.text
    assert right.body["fingerprint"] == fingerprint(PROVISIONED_KEY)
    assert right.body["previousKeyInUse"] is False
    assert await api_key(conn, service, "admin") == PROVISIONED_KEY
    assert await signed_with(conn, control, PROVISIONED_KEY)
    assert read_json(storage / "tenant-key.json")["tenantKey"] == PROVISIONED_KEY
    assert read_json(storage / "tenant-key.previous.json")["tenantKey"] == CACHED_KEY
    assert not (storage / "pending-bootstrap.json").exists()
    after = (await status_of(conn))["tenant"]
    assert (after["status"], after["previousKeyInUse"]) == ("ok", False)


async def test_restart_while_a_rotation_waits_for_the_code(
    auto_connector: AutoFactory, control: ServiceControl, service: FakeService, storage: Path
) -> None:
    first = await held_rotation(auto_connector, control, service, storage)
    await first.close()
    conn = await auto_connector()  # load(): tenant-key.json and pending-bootstrap.json
    state = conn.app[TENANT]
    assert state.key == CACHED_KEY
    assert state.status == "awaiting_email_verification"
    assert (await status_of(conn))["tenant"]["previousKeyInUse"] is True
    assert await api_key(conn, service) == CACHED_KEY
    assert (await call(conn, VERIFY, {"code": control.last_mail().code})).status == 200
    assert await api_key(conn, service, "admin") == PROVISIONED_KEY
    assert len(control.bootstraps) == 1


async def test_expired_rotation_keeps_the_old_key(
    auto_connector: AutoFactory, control: ServiceControl, service: FakeService, storage: Path
) -> None:
    conn = await held_rotation(auto_connector, control, service, storage)
    control.expire_pending()
    answer = await call(conn, VERIFY, {"code": control.last_mail().code})
    assert (answer.status, answer.code) == (410, "verification_expired")
    assert answer.body["keyKept"] is True
    assert "current key stays in use" in answer.body["error"]
    state = conn.app[TENANT]
    assert (state.key, state.status, state.pending) == (CACHED_KEY, "ok", None)
    tenant_ = (await status_of(conn))["tenant"]
    assert tenant_["status"] == "ok"
    assert tenant_["previousKeyInUse"] is False
    assert tenant_["lastError"]["category"] == "rotation_not_completed"
    assert tenant_["lastError"]["remediation"] == REMEDIATION["rotation_not_completed"]
    assert not (storage / "pending-bootstrap.json").exists()
    assert not (storage / "bootstrap-last-error.json").exists()
    assert read_json(storage / "tenant-key.json")["tenantKey"] == CACHED_KEY
    assert await api_key(conn, service) == CACHED_KEY
    # Nothing starts over by itself: the old key is simply kept.
    await bootstrapper(conn.app).ensure()
    assert len(control.bootstraps) == 1


async def test_rotation_code_expiring_unused_ends_the_pending_state(
    auto_connector: AutoFactory, control: ServiceControl, service: FakeService, storage: Path
) -> None:
    """Nobody enters the code: at expiresAt + grace the pending state ends on its own and the
    old key stays."""

    def quick(app: Any) -> None:
        boot = app[BOOTSTRAPPER]
        boot.pending.grace = 0.0
        boot.pending.expiry_check = 0.05

    write_cache(storage, bound=str(service.url))
    control.add_org("Cached Org", key=CACHED_KEY, instance_id=CACHED_INSTANCE)
    conn = await auto_connector(customise=quick)
    matching_org(control)
    assert (await call(conn, ROTATE)).status == 202
    await asyncio.sleep(0.1)  # the watch has run a round with a far expiry and goes on
    assert conn.app[TENANT].status == "awaiting_email_verification"
    boot = bootstrapper(conn.app)
    record = boot.pending.record
    assert record is not None
    # as a resend a day ago would have left it
    boot.pending.record = attrs.evolve(record, expires_at="2020-01-01T00:00:00Z")
    await wait_for(lambda: conn.app[TENANT].status == "ok")
    assert conn.app[TENANT].key == CACHED_KEY
    error = conn.app[TENANT].last_error
    assert error is not None
    assert error.category == "rotation_not_completed"
    assert not (storage / "pending-bootstrap.json").exists()
    assert await api_key(conn, service) == CACHED_KEY


async def test_restart_after_the_rotation_code_expired(
    auto_connector: AutoFactory, control: ServiceControl, service: FakeService, storage: Path
) -> None:
    first = await held_rotation(auto_connector, control, service, storage)
    await first.close()
    record = read_json(storage / "pending-bootstrap.json")
    record["expiresAt"] = "2020-01-01T00:00:00Z"
    (storage / "pending-bootstrap.json").write_text(json.dumps(record))
    conn = await auto_connector()
    state = conn.app[TENANT]
    assert (state.key, state.status, state.pending) == (CACHED_KEY, "ok", None)
    assert not (storage / "pending-bootstrap.json").exists()
    assert await api_key(conn, service) == CACHED_KEY


async def test_stale_pending_file_next_to_another_key_is_dropped(
    auto_connector: AutoFactory, control: ServiceControl, service: FakeService, storage: Path
) -> None:
    """A pending state that replaces some other key (or none) never attaches to this one."""
    first = await held_rotation(auto_connector, control, service, storage)
    await first.close()
    write_cache(storage, key=ROTATED_KEY, bound=str(service.url))
    conn = await auto_connector()
    state = conn.app[TENANT]
    assert (state.key, state.status, state.pending) == (ROTATED_KEY, "ok", None)
    assert not (storage / "pending-bootstrap.json").exists()
    answer = await call(conn, VERIFY, {"code": control.last_mail().code})
    assert (answer.status, answer.code) == (409, "no_pending_verification")


async def test_failed_rotation_during_a_held_verification_restores_it(
    auto_connector: AutoFactory, control: ServiceControl, service: FakeService, storage: Path
) -> None:
    conn = await held_rotation(auto_connector, control, service, storage)
    code = control.last_mail().code
    control.fault = (503, {"error": "maintenance"})
    answer = await call(conn, ROTATE)
    assert (answer.status, answer.code) == (502, "bootstrap_failed")
    state = conn.app[TENANT]
    assert (state.key, state.status) == (CACHED_KEY, "awaiting_email_verification")
    assert read_json(storage / "pending-bootstrap.json")["replacesKey"] == fingerprint(CACHED_KEY)
    assert await api_key(conn, service) == CACHED_KEY
    control.fault = None
    assert (await call(conn, VERIFY, {"code": code})).status == 200
    assert conn.app[TENANT].key == PROVISIONED_KEY


async def test_actions_are_locked_by_the_env_key(connector: RunningConnector) -> None:
    for path, body in ((ROTATE, {}), (PAIR, {"code": PAIRING})):
        answer = await call(connector, path, body)
        assert (answer.status, answer.code) == (409, "tenant_key_env_locked"), path
        assert "BEEFLOW_TENANT_KEY" in answer.body["error"]
        assert TENANT_KEY not in answer.text
    state = (await status_of(connector))["tenant"]
    assert state["keyLocked"] is True
    assert state["source"] == "env"
    assert state["fingerprint"] == fingerprint(TENANT_KEY)
    assert connector.app[TENANT].key == TENANT_KEY


async def test_one_provisioning_at_a_time(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    """While a rotation (or /init's bootstrap) waits for the service, every other action is
    refused with 409 bootstrap_running instead of queueing a second key."""
    write_cache(storage)
    conn = await auto_connector()
    control.bootstrap_gate = asyncio.Event()
    control.tenant_key = ROTATED_KEY
    first = spawn(call(conn, ROTATE), name="test-rotate")
    await asyncio.wait_for(control.bootstrap_arrived.wait(), 5)
    assert (await status_of(conn))["tenant"]["busy"] is True
    for path, body in ((ROTATE, {}), (PAIR, {"code": PAIRING}), (VERIFY, {"code": "123456"})):
        answer = await call(conn, path, body)
        assert (answer.status, answer.code) == (409, "bootstrap_running"), path
        assert answer.headers["Retry-After"] == "5"
    control.bootstrap_gate.set()
    done = await asyncio.wait_for(first, 5)
    assert done.status == 200
    assert len(control.bootstraps) == 1
    assert (await status_of(conn))["tenant"]["busy"] is False


async def test_rotation_refused_while_init_provisions(
    auto_connector: AutoFactory, control: ServiceControl
) -> None:
    conn = await auto_connector()
    control.bootstrap_gate = asyncio.Event()
    async with await conn.request("POST", "/init", user="") as resp:
        assert resp.status == 200
    await asyncio.wait_for(control.bootstrap_arrived.wait(), 5)
    answer = await call(conn, ROTATE)
    assert (answer.status, answer.code) == (409, "bootstrap_running")
    control.bootstrap_gate.set()
    await wait_for(lambda: conn.app[TENANT].key == PROVISIONED_KEY)
    assert len(control.bootstraps) == 1


# ------------------------------------------------------------------ access and bad input


@pytest.mark.parametrize("path", ACTIONS)
async def test_admin_only(connector: RunningConnector, path: str) -> None:
    answer = await call(connector, path, {"code": "123456"}, user="alice")
    assert (answer.status, answer.code) == (403, "admin_required")
    answer = await call(connector, path, {"code": "123456"}, user=None)
    assert answer.status == 401
    answer = await call(connector, path, {"code": "123456"}, user="")
    assert (answer.status, answer.code) == (401, "appapi_user_required")
    async with await connector.request("GET", path, user="admin") as resp:
        assert resp.status == 405
        assert (await resp.json())["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ACTIONS)
@pytest.mark.parametrize(
    ("raw", "ctype", "status", "code"),
    [
        (b"{nope", "application/json", 400, "invalid_json"),
        (b"[]", "application/json", 400, "invalid_json"),
        (b'"123456"', "application/json", 400, "invalid_json"),
        (b'{"code": "123456"}', "text/plain", 415, "json_required"),
        (b"code=123456", "application/x-www-form-urlencoded", 415, "json_required"),
        (b'{"pad": "' + b"x" * 17_000 + b'"}', "application/json", 413, "payload_too_large"),
    ],
    ids=["invalid", "array", "string", "text-plain", "form", "too-large"],
)
async def test_bad_bodies(
    connector_factory: ConnectorFactory,
    path: str,
    raw: bytes,
    ctype: str,
    status: int,
    code: str,
) -> None:
    conn = await connector_factory(BEEFLOW_TENANT_KEY="auto", BEEFLOW_API_BASE_URL=refused_url())
    answer = await call(conn, path, raw=raw, ctype=ctype)
    assert (answer.status, answer.code) == (status, code)


@pytest.mark.parametrize(
    ("path", "limit"), [(PAIR, 10), (VERIFY, 10), (RESEND, 5), (ROTATE, 10), (REQUEST, 5)]
)
async def test_rate_limited_per_user(
    connector: RunningConnector, fake_nc: Any, path: str, limit: int
) -> None:
    fake_nc.add_user("root2", email="r2@example.com", display_name="Root 2", groups=["admin"])
    for _ in range(limit):
        answer = await call(connector, path, {"code": "x"})
        assert answer.status in (400, 409), answer.text
    answer = await call(connector, path, {"code": "x"})
    assert (answer.status, answer.code) == (429, "rate_limited")
    assert int(answer.headers["Retry-After"]) > 0
    # Another admin has a bucket of their own.
    other = await call(connector, path, {"code": "x"}, user="root2")
    assert other.status != 429


async def test_pairing_and_verification_share_one_budget(connector: RunningConnector) -> None:
    for _ in range(5):
        assert (await call(connector, PAIR, {"code": "x"})).status == 400
    for _ in range(5):
        assert (await call(connector, VERIFY, {"code": "x"})).status == 400
    assert (await call(connector, PAIR, {"code": "x"})).status == 429


async def test_status_has_no_secret(
    auto_connector: AutoFactory, control: ServiceControl, storage: Path
) -> None:
    conn = await pending_verification(auto_connector, control)
    raw = json.dumps(await status_of(conn))
    pending_id = control.bootstraps[0].answer["pendingId"]
    for secret in (SECRET, pending_id, "/auth/connector", PROVISIONED_KEY):
        assert secret not in raw
