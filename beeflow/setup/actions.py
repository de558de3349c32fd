"""The setup page's tenant actions (all ADMIN, rate-limited per Nextcloud user): verify the
e-mailed code, send a code (to the admin doing the setup, or again to the address the service
holds), apply a pairing code, rotate the tenant key; and the service's refusals mapped to our
own codes."""

from __future__ import annotations

import logging
import re
from typing import Any, Final

from aiohttp import web

from beeflow.config import CONFIG
from beeflow.errors import BadRequest, BeeflowError, Conflict, Forbidden, NextcloudError
from beeflow.nextcloud.users import USERS, NcUser
from beeflow.redact import REDACTOR
from beeflow.setup.common import PENDING_FIELDS, busy, json_body, limit
from beeflow.tenant.bootstrap import Bootstrapper
from beeflow.tenant.failures import REFUSED_CATEGORIES, REMEDIATION, BootstrapFailed
from beeflow.tenant.pairing import mask_pairing_code, normalise_pairing_code
from beeflow.tenant.state import PENDING_STATES, TENANT
from beeflow.tenant.wiring import BOOTSTRAPPER, ROTATION
from beeflow.web.auth import IDENTITY
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

VERIFY_CODE_RE: Final = re.compile(r"^[0-9]{6}$")


def _bootstrapper(request: web.Request) -> Bootstrapper:
    boot = request.app.get(BOOTSTRAPPER)
    if boot is None:  # only without the tenant module
        raise BeeflowError(
            "Tenant provisioning is not available", code="tenant_unavailable", status=503
        )
    return boot


def _refuse_env_key(app: web.Application) -> None:
    if app[CONFIG].tenant_key_env:
        raise Conflict(
            "The tenant key is set by BEEFLOW_TENANT_KEY and cannot be re-provisioned here; "
            "change it by re-registering the app with another --env BEEFLOW_TENANT_KEY=... "
            "(or auto)",
            code="tenant_key_env_locked",
        )


def _refuse_busy(app: web.Application) -> None:
    """One provisioning at a time: a second click (or an /init, or a picker save) is refused
    instead of queued, so no action ever mints a second key behind the admin's back."""
    if busy(app):
        raise Conflict(
            "Provisioning is running; try again when it has finished",
            code="bootstrap_running",
            headers={"Retry-After": "5"},
        )


def _user(request: web.Request) -> str:
    return request[IDENTITY].user_id or "?"


def _outcome(app: web.Application) -> tuple[dict[str, Any], int]:
    """After a re-bootstrap: 200 with the key's fingerprint, or 202 when the service asks for an
    e-mail verification first (the page then shows the code field and where the code went)."""
    state = app[TENANT]
    body: dict[str, Any] = {
        "ok": True,
        "status": state.status,
        "fingerprint": state.fingerprint,
        "organizationId": state.organization_id,
        "organizationName": state.organization_name,
        "previousKeyInUse": state.previous_key_in_use,
    }
    if state.status in PENDING_STATES and state.pending:
        body["pending"] = {k: state.pending[k] for k in PENDING_FIELDS if k in state.pending}
        return body, 202
    return body, 200


def _bootstrap_error(exc: BootstrapFailed, *, pairing_code: str = "") -> BeeflowError:
    """A failed re-bootstrap (everything restored). 409 when the service answered and refused,
    502 when it could not be reached or failed, 500 when the key could not be stored."""
    category = str(exc.extra.get("category", "unknown"))
    message = exc.message
    if pairing_code:
        message = message.replace(pairing_code, mask_pairing_code(pairing_code))
    extra = {"category": category, "remediation": exc.extra.get("remediation", "")}
    if exc.instance_code == "tenant_store_failed" or category == "storage_failed":
        return BeeflowError(message, code="tenant_store_failed", status=500, extra=extra)
    if pairing_code and (category.startswith("pairing_code_") or category == "saas_auth_rejected"):
        return Conflict(
            "The Bee Flow service did not accept this pairing code: " + message,
            code="pairing_code_rejected",
            extra=extra,
        )
    if category in REFUSED_CATEGORIES:
        return Conflict(message, code="bootstrap_refused", extra=extra)
    return BeeflowError(message, code="bootstrap_failed", status=502, extra=extra)


def _sub_flow_error(
    result: dict[str, Any], *, verifying: bool, key_kept: bool = False, retargeting: bool = False
) -> BeeflowError:
    """A verify, resend or retarget the service did not accept, as our own stable code and
    status (the service's answers: auth/connectorBootstrap.js). `key_kept`: the verification
    belonged to a re-bootstrap and the key in use stays."""
    status = result.get("status")
    service_code = str(result.get("code", ""))[:64]
    extra: dict[str, Any] = {"serviceCode": service_code}
    if isinstance(result.get("attemptsLeft"), int):
        extra["attemptsLeft"] = result["attemptsLeft"]
    ended = status in (404, 410) or (
        status == 409 and service_code in ("not_verification", "already_bound")
    )
    if status is None:
        return BeeflowError(
            "The Bee Flow service could not be reached; try again in a moment",
            code="saas_unreachable",
            status=502,
            extra=extra,
        )
    if ended and key_kept:
        extra["keyKept"] = True
        return BeeflowError(
            "The verification has expired or was ended by the Bee Flow service. No new key was "
            "issued: the current key stays in use. Rotate again (or apply the pairing code "
            "again) for a new code.",
            code="verification_expired",
            status=410,
            extra=extra,
        )
    if ended:
        return BeeflowError(
            "The verification has expired or was ended by the Bee Flow service. The connector "
            "starts over; this page sends you the new code when the service asks for one.",
            code="verification_expired",
            status=410,
            extra=extra,
        )
    if status == 429 and service_code == "too_many_attempts":
        return BeeflowError(
            "Too many wrong codes: this code no longer works. Send a new code, then enter it.",
            code="too_many_attempts",
            status=429,
            extra=extra,
        )
    if status == 429:
        retry = result.get("retryAfter")
        headers = {"Retry-After": str(retry)} if isinstance(retry, int) and retry > 0 else None
        return BeeflowError(
            "The Bee Flow service asks to wait before trying again (it sends at most 5 codes in "
            "15 minutes)",
            code="service_rate_limited",
            status=429,
            headers=headers,
            extra=extra,
        )
    if retargeting and status == 403:
        return BeeflowError(
            "The Bee Flow service does not send the code to your address"
            + (
                ": it does not belong to the organisation"
                if service_code == "email_not_in_org"
                else ""
            ),
            code="email_not_in_org" if service_code == "email_not_in_org" else "retarget_refused",
            status=403,
            extra=extra,
        )
    if retargeting and 400 <= status < 500:
        return BadRequest(
            "The Bee Flow service refused to send the code to your address",
            code="retarget_refused",
            extra=extra,
        )
    if verifying and status == 400 and service_code == "invalid_code":
        left = extra.get("attemptsLeft")
        suffix = f" ({left} attempt{'s' if left != 1 else ''} left)" if left is not None else ""
        return BadRequest("That code is not right" + suffix, code="wrong_code", extra=extra)
    if verifying and status == 409 and service_code == "admin_email_conflict":
        return Conflict(
            "The code is right, but the administrator's address belongs to a user of another "
            "Bee Flow organisation, so the service did not connect this Nextcloud. "
            + REMEDIATION["admin_email_conflict"],
            code="admin_email_conflict",
            extra=extra,
        )
    return BeeflowError(
        f"The Bee Flow service answered HTTP {status}",
        code="service_error",
        status=502,
        extra=extra,
    )


async def verify_email_code(request: web.Request) -> web.Response:
    """POST {"code": "123456"}: finish a 202 e-mail verification; 200 shows the new key's
    fingerprint (never the key)."""
    limit(request, "verify")
    body = await json_body(request)
    raw = body.get("code")
    code = raw.strip() if isinstance(raw, str) else ""
    if not VERIFY_CODE_RE.fullmatch(code):
        raise BadRequest("Enter the 6-digit code from the e-mail", code="invalid_code_format")
    boot = _bootstrapper(request)
    _refuse_busy(request.app)
    result = await boot.pending.verify_code(code)
    if not result.get("ok"):
        kept = bool(request.app[TENANT].key)
        raise _sub_flow_error(result, verifying=True, key_kept=kept)
    log.info(
        "e-mail verification completed by %s (fingerprint %s)",
        _user(request),
        result.get("fingerprint"),
    )
    answer, status = _outcome(request.app)
    return json_response(answer, status=status)


async def resend_email_code(request: web.Request) -> web.Response:
    """POST {}: the service e-mails a new code -> {ok, expiresAt, maskedEmail, emailSent}."""
    limit(request, "send")
    await json_body(request)
    boot = _bootstrapper(request)
    _refuse_busy(request.app)
    return _new_code_answer(request, await boot.pending.resend())


async def request_verification_code(request: web.Request) -> web.Response:
    """POST {}: send the pending verification's code to the admin making this request: to their
    own Nextcloud address when they have one (the service's retarget: it must belong to the
    organisation), else to the address the service holds (resend). The page calls this by
    itself when the service has not sent any code yet (it never does on its own) -> {ok,
    expiresAt, maskedEmail, emailSent, sentVia}."""
    limit(request, "send")
    await json_body(request)
    boot = _bootstrapper(request)
    _refuse_busy(request.app)
    if not boot.pending.is_pending():
        raise Conflict("No e-mail verification is pending", code="no_pending_verification")
    user = await _fresh_admin(request)
    result = await boot.pending.send_code(user)
    answer = _new_code_answer(request, result, retargeting=bool(user.email))
    log.info(
        "verification code requested by %s, sent via %s to %s",
        user.uid,
        result.get("sentVia"),
        result.get("maskedEmail"),
    )
    return answer


async def _fresh_admin(request: web.Request) -> NcUser:
    """The requesting user as Nextcloud sees them now (address, admin group)."""
    uid = _user(request)
    users = request.app[USERS]
    users.forget(uid)
    try:
        user = await users.lookup(uid)
    except NextcloudError as exc:
        log.warning("looking up %s failed: %s", uid, exc)
        raise BeeflowError(
            "Your Nextcloud account could not be read; try again in a moment",
            code="user_lookup_failed",
            status=502,
        ) from None
    if not user.is_admin:
        raise Forbidden("Only Nextcloud administrators can do this", code="admin_required")
    return user


def _new_code_answer(
    request: web.Request, result: dict[str, Any], *, retargeting: bool = False
) -> web.Response:
    """Resend and "send it to me": the service's new-code fields, or its refusal as an error."""
    if not result.get("ok"):
        kept = bool(request.app[TENANT].key)
        raise _sub_flow_error(result, verifying=False, key_kept=kept, retargeting=retargeting)
    return json_response({k: result.get(k) for k in _NEW_CODE_FIELDS})


_NEW_CODE_FIELDS: Final = ("ok", "expiresAt", "maskedEmail", "emailSent", "sentVia")


async def apply_pairing_code(request: web.Request) -> web.Response:
    """POST {"code": "ABCD-EFGH"}: provision again, sending the code to bind this Nextcloud to an
    existing organisation. The code is never echoed and never logged beyond 4 characters."""
    limit(request, "verify")
    body = await json_body(request)
    code = normalise_pairing_code(body.get("code"))
    if code is None:
        raise BadRequest(
            "A pairing code looks like ABCD-EFGH: 4 letters or digits, a dash, 4 more",
            code="invalid_pairing_code",
        )
    _refuse_env_key(request.app)
    boot = _bootstrapper(request)
    _refuse_busy(request.app)
    REDACTOR.add(code)
    log.info("pairing code %s entered by %s", mask_pairing_code(code), _user(request))
    try:
        await request.app[ROTATION].rebootstrap(pairing_code=code)
    except BootstrapFailed as exc:
        raise _bootstrap_error(exc, pairing_code=code) from None
    answer, status = await _after_rebootstrap(request, boot)
    return json_response(answer, status=status)


async def rotate_tenant_key(request: web.Request) -> web.Response:
    """POST {}: provision a new key (the old file is kept as tenant-key.previous.json); on
    failure the old key stays in use."""
    limit(request, "save")
    await json_body(request)
    _refuse_env_key(request.app)
    boot = _bootstrapper(request)
    _refuse_busy(request.app)
    previous = request.app[TENANT].fingerprint
    log.info(
        "tenant key rotation requested by %s (current fingerprint %s)", _user(request), previous
    )
    try:
        await request.app[ROTATION].rebootstrap()
    except BootstrapFailed as exc:
        raise _bootstrap_error(exc) from None
    answer, status = await _after_rebootstrap(request, boot)
    answer["previousFingerprint"] = previous
    # The service keeps one key per organisation: a returning binding hands back the same one.
    answer["keyChanged"] = previous != answer.get("fingerprint")
    return json_response(answer, status=status)


async def _after_rebootstrap(
    request: web.Request, boot: Bootstrapper
) -> tuple[dict[str, Any], int]:
    """The outcome; when the service answered 202, the code goes to the admin who asked right
    away (the service e-mails nobody by itself), and the answer says where it went."""
    problem: dict[str, Any] | None = None
    if boot.pending.is_pending() and not boot.pending.code_sent():
        try:
            user: NcUser | None = await _fresh_admin(request)
        except BeeflowError:
            user = None
        sent = await boot.pending.send_code(user)
        if sent.get("ok"):
            log.info("verification code sent via %s to %s", sent["sentVia"], sent["maskedEmail"])
        else:
            refusal = _sub_flow_error(
                sent, verifying=False, key_kept=True, retargeting=bool(user and user.email)
            )
            problem = {"code": refusal.instance_code, "error": refusal.message}
    answer, status = _outcome(request.app)
    if problem is not None:
        answer["sendProblem"] = problem
    return answer, status


TENANT_ROUTES: Final = {
    "/setup/verify-email-code": verify_email_code,
    "/setup/resend-email-code": resend_email_code,
    "/setup/request-verification-code": request_verification_code,
    "/setup/apply-pairing-code": apply_pairing_code,
    "/setup/rotate-tenant-key": rotate_tenant_key,
}
