"""The admin setup page: which Bee Flow service this connector talks to, and the tenant states an
admin must act on (reference 9).

GET /setup (page), POST /setup (save + apply live + re-bootstrap), GET /setup/status,
POST /setup/test (probe); the tenant actions POST /setup/verify-email-code,
/setup/resend-email-code, /setup/request-verification-code (the code to the admin doing the
setup instead), /setup/apply-pairing-code and /setup/rotate-tenant-key. All ADMIN,
rate-limited per Nextcloud user. The saved choice lives in
${APP_PERSISTENT_STORAGE}/setup-config.json; BEEFLOW_API_BASE_URL in the environment locks it,
BEEFLOW_TENANT_KEY locks the tenant actions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any, Final

import aiohttp
import attrs
from aiohttp import web

from beeflow import keys, tenant
from beeflow.appapi import Access, add_route
from beeflow.config import DEFAULT_API_BASE_URL
from beeflow.errors import (
    BadRequest,
    BeeflowError,
    Conflict,
    Forbidden,
    NextcloudError,
    TooManyRequests,
)
from beeflow.middleware import frame_ancestors, json_response
from beeflow.nextcloud import NcUser
from beeflow.ratelimit import RateLimiter
from beeflow.redact import REDACTOR
from beeflow.setup import store
from beeflow.setup.probe import probe, probe_session
from beeflow.setup.urlcheck import UrlRejected, assert_allowed_url, parse_allowed_url
from beeflow.tasks import spawn

log = logging.getLogger(__name__)

CLOUD_URL: Final = DEFAULT_API_BASE_URL
DEFAULTS: Final = {
    "cloud": CLOUD_URL,
    "selfHostedHint": "http://bee-flow-server:3001",
    "selfHostedLan": "http://server.example.lan:3001",
}
MAX_BODY: Final = 16 * 1024
SCRIPT_PATH: Final = "/js/beeflow-setup.js"
LEGACY_NOTE: Final = (
    "Legacy mode (no HaRP): Nextcloud's PHP proxy delivers each reply whole, when it ends, so chat "
    "replies appear all at once instead of word by word. Streaming needs HaRP (Nextcloud 32+)."
)
HARP_NOTE: Final = "HaRP mode: replies stream to the browser as they are written."
DEMO_NOTE: Final = "Demo mode: the built-in stand-in proxy streams replies as HaRP would."

# Per Nextcloud user (reference 9: probe 20/min, rebind 10/10 min, verify 10/10 min, sendCode
# 5/15 min); status is cheap but bounded. Rotating the key counts as a rebind ("save").
LIMITS: Final = {
    "status": (120, 60.0),
    "probe": (20, 60.0),
    "save": (10, 600.0),
    "verify": (10, 600.0),
    "send": (5, 900.0),
}
VERIFY_CODE_RE: Final = re.compile(r"^[0-9]{6}$")


@attrs.define
class Rebootstrap:
    """Runs the tenant module's re-bootstrap in the background, one at a time; a save during a
    run makes exactly one more run follow it (the newest URL always gets provisioned)."""

    hook: Callable[[], Awaitable[None]] | None
    state: str = "idle"  # idle | running | done | failed | unavailable
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    _again: bool = False
    _task: asyncio.Task[None] | None = None

    def request(self) -> str:
        if self.hook is None:
            self.state = "unavailable"
            return "unavailable"
        if self._task is not None and not self._task.done():
            self._again = True
            return "queued"
        self._task = spawn(self._run(), name="setup-rebootstrap")
        return "started"

    async def _run(self) -> None:
        assert self.hook is not None
        while True:
            self._again = False
            self.state, self.error = "running", ""
            self.started_at, self.finished_at = time.time(), None
            try:
                await self.hook()
            except asyncio.CancelledError:
                self.state = "idle"
                raise
            except Exception as exc:
                self.state, self.error = "failed", (str(exc) or type(exc).__name__)[:300]
                log.warning("re-bootstrap after a setup change failed: %s", self.error)
            else:
                self.state = "done"
            self.finished_at = time.time()
            if not self._again:
                return

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.started_at is not None:
            out["startedAt"] = round(self.started_at, 3)
        if self.finished_at is not None:
            out["finishedAt"] = round(self.finished_at, 3)
        if self.error:
            out["error"] = self.error
        return out


@attrs.define
class SetupState:
    limits: dict[str, RateLimiter]
    page: str
    script: bytes
    script_etag: str
    rebootstrap: Rebootstrap | None = None
    session: aiohttp.ClientSession | None = None
    loaded_from_file: bool = False


_STATE: web.AppKey[SetupState] = web.AppKey("setup_state")


def _state(request: web.Request) -> SetupState:
    return request.app[_STATE]


def _rebootstrap(app: web.Application) -> Rebootstrap:
    state = app[_STATE]
    if state.rebootstrap is None:
        # keys.REBOOTSTRAP is set by the tenant module's setup (or later): look it up lazily.
        state.rebootstrap = Rebootstrap(app.get(keys.REBOOTSTRAP))
    return state.rebootstrap


# ------------------------------------------------------------------ helpers


def _limit(request: web.Request, bucket: str) -> None:
    limiter = _state(request).limits[bucket]
    user = request[keys.IDENTITY].user_id or "anonymous"
    if not limiter.hit(user):
        raise TooManyRequests(
            "Too many setup requests; wait a moment",
            retry_after=limiter.retry_after(user),
            code="rate_limited",
        )


async def _json_body(request: web.Request) -> dict[str, Any]:
    """JSON objects only. Requiring application/json also keeps plain HTML forms out."""
    if request.content_type != "application/json":
        raise BadRequest("Send the request as application/json", code="json_required", status=415)
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest("Request body too large", code="payload_too_large", status=413)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest("Request body too large", code="payload_too_large", status=413)
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than the parser's recursion limit ("[" * 15000).
        raise BadRequest("The body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object", code="invalid_json")
    return data


def _session(request: web.Request) -> aiohttp.ClientSession:
    session = _state(request).session
    if session is None:  # only outside a running app
        raise BeeflowError("The probe is not ready", code="not_ready", status=503)
    return session


def _transport(app: web.Application) -> dict[str, Any]:
    config = app[keys.CONFIG]
    harp = config.harp
    out: dict[str, Any] = {"mode": "harp" if harp else "legacy", "streaming": harp}
    if config.demo:
        out["demo"] = True
        out["note"] = DEMO_NOTE
    else:
        out["note"] = HARP_NOTE if harp else LEGACY_NOTE
    tunnel = app.get(keys.TUNNEL_STATUS)
    if tunnel is not None:
        try:
            out["tunnel"] = tunnel()
        except Exception:
            log.exception("tunnel status failed")
    return out


_TENANT_ERROR_FIELDS: Final = (
    "category",
    "phase",
    "error",
    "remediation",
    "lastAttemptAt",
    "nextRetryAt",
)


_PENDING_FIELDS: Final = (
    "kind",
    "organizationName",
    "expiresAt",
    "attemptsLeft",
    "codeSent",
    "maskedEmail",
    "sentVia",
)


def _tenant(app: web.Application) -> dict[str, Any]:
    """The tenant as the page needs it: never the key, the pending id or its URLs."""
    state = app.get(keys.TENANT)
    if state is None:
        return {"status": "unknown", "fingerprint": None}
    boot = app.get(tenant.BOOTSTRAPPER)
    out: dict[str, Any] = {
        "status": state.status,
        "fingerprint": state.fingerprint,  # never the key itself
        "organizationName": state.organization_name,
        "organizationId": state.organization_id,
        "source": state.source,
        # BEEFLOW_TENANT_KEY fixes the key: no verification, pairing or rotation applies.
        "keyLocked": bool(app[keys.CONFIG].tenant_key_env),
        "busy": _busy(app),
        # A re-bootstrap waits (e-mail code, approval) while the key in use keeps serving.
        "previousKeyInUse": state.previous_key_in_use,
    }
    if state.pending and state.status in tenant.PENDING_STATES:
        pending: dict[str, Any] = {
            k: state.pending[k] for k in _PENDING_FIELDS if k in state.pending
        }
        expires = _parse_time(pending.get("expiresAt"))
        pending["expired"] = expires is not None and time.time() > expires
        out["pending"] = pending
    if isinstance(state.last_error, dict):
        out["lastError"] = {
            k: state.last_error[k] for k in _TENANT_ERROR_FIELDS if k in state.last_error
        }
    category = (state.last_error or {}).get("category")
    out["pairingSuggested"] = bool(
        boot is not None and not out["keyLocked"] and category in tenant.PAIRING_CATEGORIES
    )
    if state.store_error:
        out["storageError"] = state.store_error
    return out


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _busy(app: web.Application) -> bool:
    """A provisioning run, a re-bootstrap or the picker's background re-bootstrap is running."""
    boot = app.get(tenant.BOOTSTRAPPER)
    if boot is not None and boot.busy:
        return True
    return _rebootstrap(app).state == "running"


def _health(app: web.Application) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, provider in app.get(keys.HEALTH, {}).items():
        try:
            fields = provider(True)
        except Exception:
            log.exception("health provider %s failed", name)
            continue
        if fields:
            out[name] = fields
    return out


def status_body(app: web.Application) -> dict[str, Any]:
    api_base = app[keys.API_BASE]
    choice = store.load(app[keys.CONFIG].persistent_storage)
    return {
        "envOverridden": api_base.locked,
        "envApiBaseUrl": str(api_base.url) if api_base.locked else None,
        "active": str(api_base.url),
        "activeSource": api_base.source,
        "chosen": choice.to_json() if choice is not None else None,
        "cloudUrl": CLOUD_URL,
        "defaults": DEFAULTS,
        "transport": _transport(app),
        "tenant": _tenant(app),
        "rebootstrap": _rebootstrap(app).snapshot(),
        "health": _health(app),
    }


# ------------------------------------------------------------------ handlers


async def page(request: web.Request) -> web.Response:
    """The picker. Its script is referenced relative to the page's own URL (0.1.10 bug), with one
    `../` more when AppAPI delivered it as `setup/`."""
    prefix = "../" if request.path.endswith("/") else ""
    html = _state(request).page.replace("{{SCRIPT}}", prefix + SCRIPT_PATH.lstrip("/"))
    csp = (
        frame_ancestors(request.app) + "; default-src 'none'; script-src 'self'; "
        "style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'"
    )
    return web.Response(
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store", "Content-Security-Policy": csp},
    )


async def script(request: web.Request) -> web.Response:
    state = _state(request)
    headers = {
        "Content-Type": "text/javascript; charset=utf-8",
        "Cache-Control": "no-cache",
        "ETag": state.script_etag,
    }
    if state.script_etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=state.script, headers=headers)


async def status(request: web.Request) -> web.Response:
    _limit(request, "status")
    return json_response(status_body(request.app))


async def test(request: web.Request) -> web.Response:
    _limit(request, "probe")
    body = await _json_body(request)
    raw = body.get("apiBaseUrl", body.get("url"))
    if raw is None and body.get("mode") == "cloud":
        raw = CLOUD_URL
    url = await assert_allowed_url(raw)
    return json_response(await probe(_session(request), url))


async def save(request: web.Request) -> web.Response:
    _limit(request, "save")
    api_base = request.app[keys.API_BASE]
    if api_base.locked:
        raise Conflict(
            "BEEFLOW_API_BASE_URL is set in the app's environment; to change it, re-register "
            "the app with another --env BEEFLOW_API_BASE_URL=... (or without it, to use this "
            "picker)",
            code="env_locked",
        )
    body = await _json_body(request)
    mode = body.get("mode")
    if mode == "cloud":
        url = parse_allowed_url(CLOUD_URL)
    elif mode == "self-hosted":
        url = await assert_allowed_url(body.get("apiBaseUrl"))
    else:
        raise BadRequest('mode must be "cloud" or "self-hosted"', code="invalid_mode")
    storage = request.app[keys.CONFIG].persistent_storage
    try:
        choice = await asyncio.to_thread(store.save, storage, mode, str(url))
    except OSError as exc:
        log.error("cannot save %s: %s", store.path_in(storage), exc.strerror or exc)
        raise BeeflowError(
            "The setting could not be saved to the app's persistent storage",
            code="setup_not_saved",
        ) from None
    previous = str(api_base.url)
    api_base.url, api_base.source = url, "setup"
    if previous != str(url):
        log.info("Bee Flow service changed by an admin: %s -> %s", previous, url)
    if request.app[keys.CONFIG].tenant_key_env:
        # A key fixed by BEEFLOW_TENANT_KEY cannot be re-provisioned: nothing to run.
        rebootstrap = "env_key"
    else:
        rebootstrap = _rebootstrap(request.app).request()
    result = await probe(_session(request), url)
    return json_response(
        {
            "saved": choice.to_json(),
            "active": str(api_base.url),
            "activeSource": api_base.source,
            "probe": result,
            "rebootstrap": rebootstrap,
            "restartRequired": False,
        }
    )


# ------------------------------------------------------------------ tenant actions


def _bootstrapper(request: web.Request) -> tenant.Bootstrapper:
    boot = request.app.get(tenant.BOOTSTRAPPER)
    if boot is None:  # only without the tenant module
        raise BeeflowError(
            "Tenant provisioning is not available", code="tenant_unavailable", status=503
        )
    return boot


def _refuse_env_key(app: web.Application) -> None:
    if app[keys.CONFIG].tenant_key_env:
        raise Conflict(
            "The tenant key is set by BEEFLOW_TENANT_KEY and cannot be re-provisioned here; "
            "change it by re-registering the app with another --env BEEFLOW_TENANT_KEY=... "
            "(or auto)",
            code="tenant_key_env_locked",
        )


def _refuse_busy(app: web.Application) -> None:
    """One provisioning at a time: a second click (or an /init, or a picker save) is refused
    instead of queued, so no action ever mints a second key behind the admin's back."""
    if _busy(app):
        raise Conflict(
            "Provisioning is running; try again when it has finished",
            code="bootstrap_running",
            headers={"Retry-After": "5"},
        )


def _user(request: web.Request) -> str:
    return request[keys.IDENTITY].user_id or "?"


def _outcome(app: web.Application) -> tuple[dict[str, Any], int]:
    """After a re-bootstrap: 200 with the key's fingerprint, or 202 when the service asks for an
    e-mail verification first (the page then shows the code field and where the code went)."""
    state = app[keys.TENANT]
    body: dict[str, Any] = {
        "ok": True,
        "status": state.status,
        "fingerprint": state.fingerprint,
        "organizationId": state.organization_id,
        "organizationName": state.organization_name,
        "previousKeyInUse": state.previous_key_in_use,
    }
    if state.status in tenant.PENDING_STATES and state.pending:
        body["pending"] = {k: state.pending[k] for k in _PENDING_FIELDS if k in state.pending}
        return body, 202
    return body, 200


def _bootstrap_error(exc: tenant.BootstrapFailed, *, pairing_code: str = "") -> BeeflowError:
    """A failed re-bootstrap (everything restored). 409 when the service answered and refused,
    502 when it could not be reached or failed, 500 when the key could not be stored."""
    category = str(exc.extra.get("category", "unknown"))
    message = exc.message
    if pairing_code:
        message = message.replace(pairing_code, tenant.mask_pairing_code(pairing_code))
    extra = {"category": category, "remediation": exc.extra.get("remediation", "")}
    if exc.instance_code == "tenant_store_failed" or category == "storage_failed":
        return BeeflowError(message, code="tenant_store_failed", status=500, extra=extra)
    if pairing_code and (category.startswith("pairing_code_") or category == "saas_auth_rejected"):
        return Conflict(
            "The Bee Flow service did not accept this pairing code: " + message,
            code="pairing_code_rejected",
            extra=extra,
        )
    if category in tenant.REFUSED_CATEGORIES:
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
            + tenant.REMEDIATION["admin_email_conflict"],
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
    _limit(request, "verify")
    body = await _json_body(request)
    raw = body.get("code")
    code = raw.strip() if isinstance(raw, str) else ""
    if not VERIFY_CODE_RE.fullmatch(code):
        raise BadRequest("Enter the 6-digit code from the e-mail", code="invalid_code_format")
    boot = _bootstrapper(request)
    _refuse_busy(request.app)
    result = await boot.verify_code(code)
    if not result.get("ok"):
        kept = bool(request.app[keys.TENANT].key)
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
    _limit(request, "send")
    await _json_body(request)
    boot = _bootstrapper(request)
    _refuse_busy(request.app)
    return _new_code_answer(request, await boot.resend())


async def request_verification_code(request: web.Request) -> web.Response:
    """POST {}: send the pending verification's code to the admin making this request: to their
    own Nextcloud address when they have one (the service's retarget: it must belong to the
    organisation), else to the address the service holds (resend). The page calls this by
    itself when the service has not sent any code yet (it never does on its own) -> {ok,
    expiresAt, maskedEmail, emailSent, sentVia}."""
    _limit(request, "send")
    await _json_body(request)
    boot = _bootstrapper(request)
    _refuse_busy(request.app)
    if not boot.verification_pending():
        raise Conflict("No e-mail verification is pending", code="no_pending_verification")
    user = await _fresh_admin(request)
    result = await boot.send_code(user)
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
    users = request.app[keys.USERS]
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
        kept = bool(request.app[keys.TENANT].key)
        raise _sub_flow_error(result, verifying=False, key_kept=kept, retargeting=retargeting)
    return json_response({k: result.get(k) for k in _NEW_CODE_FIELDS})


_NEW_CODE_FIELDS: Final = ("ok", "expiresAt", "maskedEmail", "emailSent", "sentVia")


async def apply_pairing_code(request: web.Request) -> web.Response:
    """POST {"code": "ABCD-EFGH"}: provision again, sending the code to bind this Nextcloud to an
    existing organisation. The code is never echoed and never logged beyond 4 characters."""
    _limit(request, "verify")
    body = await _json_body(request)
    code = tenant.normalise_pairing_code(body.get("code"))
    if code is None:
        raise BadRequest(
            "A pairing code looks like ABCD-EFGH: 4 letters or digits, a dash, 4 more",
            code="invalid_pairing_code",
        )
    _refuse_env_key(request.app)
    boot = _bootstrapper(request)
    _refuse_busy(request.app)
    REDACTOR.add(code)
    log.info("pairing code %s entered by %s", tenant.mask_pairing_code(code), _user(request))
    try:
        await boot.rebootstrap(pairing_code=code)
    except tenant.BootstrapFailed as exc:
        raise _bootstrap_error(exc, pairing_code=code) from None
    answer, status = await _after_rebootstrap(request, boot)
    return json_response(answer, status=status)


async def rotate_tenant_key(request: web.Request) -> web.Response:
    """POST {}: provision a new key (the old file is kept as tenant-key.previous.json); on
    failure the old key stays in use."""
    _limit(request, "save")
    await _json_body(request)
    _refuse_env_key(request.app)
    boot = _bootstrapper(request)
    _refuse_busy(request.app)
    previous = request.app[keys.TENANT].fingerprint
    log.info(
        "tenant key rotation requested by %s (current fingerprint %s)", _user(request), previous
    )
    try:
        await boot.rebootstrap()
    except tenant.BootstrapFailed as exc:
        raise _bootstrap_error(exc) from None
    answer, status = await _after_rebootstrap(request, boot)
    answer["previousFingerprint"] = previous
    # The service keeps one key per organisation: a returning binding hands back the same one.
    answer["keyChanged"] = previous != answer.get("fingerprint")
    return json_response(answer, status=status)


async def _after_rebootstrap(
    request: web.Request, boot: tenant.Bootstrapper
) -> tuple[dict[str, Any], int]:
    """The outcome; when the service answered 202, the code goes to the admin who asked right
    away (the service e-mails nobody by itself), and the answer says where it went."""
    problem: dict[str, Any] | None = None
    if boot.verification_pending() and not boot.code_sent():
        try:
            user: NcUser | None = await _fresh_admin(request)
        except BeeflowError:
            user = None
        sent = await boot.send_code(user)
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


# ------------------------------------------------------------------ start-up


def apply_saved(app: web.Application) -> bool:
    """Apply setup-config.json unless the environment pins the URL or a tenant binding does.
    Precedence (reference 9): env -> saved choice -> default; a bound tenant pins it."""
    api_base = app[keys.API_BASE]
    if api_base.source in ("env", "bound"):
        return False
    choice = store.load(app[keys.CONFIG].persistent_storage)
    if choice is None:
        return False
    try:
        url = parse_allowed_url(choice.api_base_url)
    except UrlRejected as exc:
        log.warning("ignoring the saved service URL: %s (%s)", exc.message, exc.instance_code)
        return False
    api_base.url, api_base.source = url, "setup"
    app[_STATE].loaded_from_file = True
    log.info("Bee Flow service from the setup picker: %s", url)
    return True


async def _on_startup(app: web.Application) -> None:
    apply_saved(app)


async def _probe_ctx(app: web.Application) -> AsyncIterator[None]:
    async for session in probe_session():
        app[_STATE].session = session
        yield
        app[_STATE].session = None


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def setup(app: web.Application) -> None:
    script_body = _read("setup.js")
    app[_STATE] = SetupState(
        limits={name: RateLimiter(limit, window) for name, (limit, window) in LIMITS.items()},
        page=_read("page.html").decode("utf-8"),
        script=script_body,
        script_etag='"' + hashlib.sha256(script_body).hexdigest()[:20] + '"',
    )
    # First of all start-up work, so the tenant bootstrap at boot already sees the saved URL.
    app.on_startup.insert(0, _on_startup)
    app.cleanup_ctx.append(_probe_ctx)
    for path in ("/setup", "/setup/"):
        add_route(app, "GET", path, page, Access.ADMIN)
        add_route(app, "POST", path, save, Access.ADMIN)
    add_route(app, "GET", "/setup/status", status, Access.ADMIN)
    add_route(app, "POST", "/setup/test", test, Access.ADMIN)
    for path, handler in TENANT_ROUTES.items():
        add_route(app, "POST", path, handler, Access.ADMIN)
    for method in ("GET", "HEAD"):
        add_route(app, method, SCRIPT_PATH, script, Access.PUBLIC)
