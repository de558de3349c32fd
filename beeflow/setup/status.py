"""GET /setup/status's answer: the service URL in force, where it came from and whether it
answers, the transport, the tenant as the page needs it (never the key), the connection state
made of both, the background re-bootstrap and every health field."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from beeflow.config import CONFIG, DEFAULT_API_BASE_URL
from beeflow.health import TUNNEL_STATUS, collect
from beeflow.service_client import SERVICE_URL
from beeflow.setup import store
from beeflow.setup.common import PENDING_FIELDS, busy, rebootstrap_of
from beeflow.setup.reachability import connection, service_field
from beeflow.tenant.failures import PAIRING_CATEGORIES
from beeflow.tenant.records import unstructure
from beeflow.tenant.state import PENDING_STATES, TENANT
from beeflow.tenant.wiring import BOOTSTRAPPER
from beeflow.web.routing import HARP, ROUTING

log = logging.getLogger(__name__)

CLOUD_URL: Final = DEFAULT_API_BASE_URL
DEFAULTS: Final = {
    "cloud": CLOUD_URL,
    "selfHostedHint": "http://bee-flow-server:3001",
    "selfHostedLan": "http://server.example.lan:3001",
}
SCRIPT_PATH: Final = "/js/beeflow-setup.js"
LEGACY_NOTE: Final = (
    "Nextcloud's PHP proxy (no HaRP) delivers each reply whole, when it ends, so chat "
    "replies appear all at once instead of word by word. Streaming needs HaRP (Nextcloud 32+)."
)
HARP_NOTE: Final = "HaRP: replies stream to the browser as they are written."
DEMO_NOTE: Final = "Demo mode: the built-in stand-in proxy streams replies as HaRP would."


def _transport(app: web.Application) -> dict[str, Any]:
    """`mode` is the transport (HaRP's tunnel or TCP); `streaming` and the note follow the
    routing the requests show (HaRP direct connect and Kubernetes stream over TCP), and
    `routing` says what was seen (beeflow.web.routing)."""
    config = app[CONFIG]
    routing = app[ROUTING]
    streaming = routing.expected() == HARP
    out: dict[str, Any] = {
        "mode": "harp" if config.harp else "legacy",
        "streaming": streaming,
        "routing": routing.health(True),
    }
    if config.demo:
        out["demo"] = True
        out["note"] = DEMO_NOTE
    else:
        out["note"] = HARP_NOTE if streaming else LEGACY_NOTE
    tunnel = app.get(TUNNEL_STATUS)
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
    state = app.get(TENANT)
    if state is None:
        return {"status": "unknown", "fingerprint": None}
    boot = app.get(BOOTSTRAPPER)
    out: dict[str, Any] = {
        "status": state.status,
        "fingerprint": state.fingerprint,  # never the key itself
        "organizationName": state.organization_name,
        "organizationId": state.organization_id,
        "source": state.source,
        # BEEFLOW_TENANT_KEY fixes the key: no verification, pairing or rotation applies.
        "keyLocked": bool(app[CONFIG].tenant_key_env),
        "busy": busy(app),
        # A re-bootstrap waits (e-mail code, approval) while the key in use keeps serving.
        "previousKeyInUse": state.previous_key_in_use,
    }
    if state.pending and state.status in PENDING_STATES:
        pending: dict[str, Any] = {
            k: state.pending[k] for k in PENDING_FIELDS if k in state.pending
        }
        expires = _parse_time(pending.get("expiresAt"))
        pending["expired"] = expires is not None and time.time() > expires
        out["pending"] = pending
    error = unstructure(state.last_error) if state.last_error else {}
    if state.last_error is not None:
        out["lastError"] = {k: error[k] for k in _TENANT_ERROR_FIELDS if k in error}
    category = error.get("category")
    out["pairingSuggested"] = bool(
        boot is not None and not out["keyLocked"] and category in PAIRING_CATEGORIES
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


def status_body(app: web.Application, check: dict[str, Any]) -> dict[str, Any]:
    """The status, with `check` the health check of the service in force (setup.probe's
    answer): `service` says whether it answers, `connection` what the page shows."""
    api_base = app[SERVICE_URL]
    choice = store.load(app[CONFIG].persistent_storage)
    tenant = _tenant(app)
    service = service_field(check)
    return {
        "envOverridden": api_base.locked,
        "envApiBaseUrl": str(api_base.url) if api_base.locked else None,
        "active": str(api_base.url),
        "activeSource": api_base.source,
        "chosen": choice.to_json() if choice is not None else None,
        "cloudUrl": CLOUD_URL,
        "defaults": DEFAULTS,
        "transport": _transport(app),
        "service": service,
        "tenant": tenant,
        "connection": connection(tenant, service),
        "rebootstrap": rebootstrap_of(app).snapshot(),
        "health": collect(app, True),
    }
