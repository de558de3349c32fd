"""The admin setup page: which Bee Flow service this connector talks to, and the tenant states an
admin must act on (reference 9).

GET /setup (page), POST /setup (save + apply live + re-bootstrap), GET /setup/status,
POST /setup/test (probe); the tenant actions (POST /setup/verify-email-code,
/setup/resend-email-code, /setup/request-verification-code, /setup/apply-pairing-code,
/setup/rotate-tenant-key) live in setup.actions, the state they share in setup.common. All
ADMIN, rate-limited per Nextcloud user. The saved choice lives in
${APP_PERSISTENT_STORAGE}/setup-config.json; BEEFLOW_API_BASE_URL in the environment locks it,
BEEFLOW_TENANT_KEY locks the tenant actions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from importlib import resources
from typing import Any, Final

import aiohttp
from aiohttp import web

from beeflow import keys, tenant
from beeflow.appapi import Access, add_route
from beeflow.config import DEFAULT_API_BASE_URL
from beeflow.errors import BadRequest, BeeflowError, Conflict
from beeflow.middleware import frame_ancestors, json_response
from beeflow.ratelimit import RateLimiter
from beeflow.setup import store
from beeflow.setup.actions import TENANT_ROUTES
from beeflow.setup.common import (
    LIMITS,
    PENDING_FIELDS,
    STATE,
    SetupState,
    busy,
    json_body,
    limit,
    rebootstrap_of,
    state_of,
)
from beeflow.setup.probe import probe, probe_session
from beeflow.setup.urlcheck import UrlRejected, assert_allowed_url, parse_allowed_url

log = logging.getLogger(__name__)

CLOUD_URL: Final = DEFAULT_API_BASE_URL
DEFAULTS: Final = {
    "cloud": CLOUD_URL,
    "selfHostedHint": "http://bee-flow-server:3001",
    "selfHostedLan": "http://server.example.lan:3001",
}
SCRIPT_PATH: Final = "/js/beeflow-setup.js"
LEGACY_NOTE: Final = (
    "Legacy mode (no HaRP): Nextcloud's PHP proxy delivers each reply whole, when it ends, so chat "
    "replies appear all at once instead of word by word. Streaming needs HaRP (Nextcloud 32+)."
)
HARP_NOTE: Final = "HaRP mode: replies stream to the browser as they are written."
DEMO_NOTE: Final = "Demo mode: the built-in stand-in proxy streams replies as HaRP would."

# ------------------------------------------------------------------ helpers


def _session(request: web.Request) -> aiohttp.ClientSession:
    session = state_of(request).session
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
        "busy": busy(app),
        # A re-bootstrap waits (e-mail code, approval) while the key in use keeps serving.
        "previousKeyInUse": state.previous_key_in_use,
    }
    if state.pending and state.status in tenant.PENDING_STATES:
        pending: dict[str, Any] = {
            k: state.pending[k] for k in PENDING_FIELDS if k in state.pending
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
        "rebootstrap": rebootstrap_of(app).snapshot(),
        "health": _health(app),
    }


# ------------------------------------------------------------------ handlers


async def page(request: web.Request) -> web.Response:
    """The picker. Its script is referenced relative to the page's own URL (0.1.10 bug), with one
    `../` more when AppAPI delivered it as `setup/`."""
    prefix = "../" if request.path.endswith("/") else ""
    html = state_of(request).page.replace("{{SCRIPT}}", prefix + SCRIPT_PATH.lstrip("/"))
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
    state = state_of(request)
    headers = {
        "Content-Type": "text/javascript; charset=utf-8",
        "Cache-Control": "no-cache",
        "ETag": state.script_etag,
    }
    if state.script_etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=state.script, headers=headers)


async def status(request: web.Request) -> web.Response:
    limit(request, "status")
    return json_response(status_body(request.app))


async def test(request: web.Request) -> web.Response:
    limit(request, "probe")
    body = await json_body(request)
    raw = body.get("apiBaseUrl", body.get("url"))
    if raw is None and body.get("mode") == "cloud":
        raw = CLOUD_URL
    url = await assert_allowed_url(raw)
    return json_response(await probe(_session(request), url))


async def save(request: web.Request) -> web.Response:
    limit(request, "save")
    api_base = request.app[keys.API_BASE]
    if api_base.locked:
        raise Conflict(
            "BEEFLOW_API_BASE_URL is set in the app's environment; to change it, re-register "
            "the app with another --env BEEFLOW_API_BASE_URL=... (or without it, to use this "
            "picker)",
            code="env_locked",
        )
    body = await json_body(request)
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
        rebootstrap = rebootstrap_of(request.app).request()
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
    app[STATE].loaded_from_file = True
    log.info("Bee Flow service from the setup picker: %s", url)
    return True


async def _on_startup(app: web.Application) -> None:
    apply_saved(app)


async def _probe_ctx(app: web.Application) -> AsyncIterator[None]:
    async for session in probe_session():
        app[STATE].session = session
        yield
        app[STATE].session = None


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def setup(app: web.Application) -> None:
    script_body = _read("setup.js")
    app[STATE] = SetupState(
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
