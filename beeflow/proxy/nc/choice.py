"""The administrator's choice to accept only v3 signatures on /nc, made on the setup page where
the connector's other settings are (docs/nc-proxy.md, "The v3 signature"): kept in
`nc-signatures.json` in APP_PERSISTENT_STORAGE, applied at start and at once when changed.

BEEFLOW_NC_SIGNATURE_REQUIRE_V3=1 in the app's environment requires v3 whatever the page says
(the page shows it locked); without it the saved choice decides, and nothing saved means v1/v2
are still accepted (as BEEFLOW_NC_SIGNATURE_V1 allows).

    POST /setup/nc-signatures  {"requireV3": true|false}   ADMIN
        -> {"requireV3": bool, "source": "env"|"setup"|"default"}
        409 env_locked, 400 invalid_json / invalid_choice, 415 json_required, 429 rate_limited,
        500 setup_not_saved
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.config import CONFIG
from beeflow.errors import BadRequest, BeeflowError, Conflict, TooManyRequests
from beeflow.limits import RateLimiter
from beeflow.proxy.nc.signatures import GUARD, SignatureGuard
from beeflow.storage import StoreError, Unusable, read_json, write_json_atomic
from beeflow.web.auth import IDENTITY, Access, add_route
from beeflow.web.bodies import read_capped
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

FILENAME: Final = "nc-signatures.json"
ROUTE: Final = "/setup/nc-signatures"
MAX_BODY: Final = 1024


@attrs.define
class Choice:
    """What the page saved (None: nothing), and its rate limit."""

    saved: bool | None = None
    limiter: RateLimiter = attrs.field(factory=lambda: RateLimiter(10, 600.0))


CHOICE: web.AppKey[Choice] = web.AppKey("nc_signature_choice")


def source(app: web.Application, saved: bool | None) -> str:
    if app[CONFIG].nc_signature_require_v3:
        return "env"
    return "setup" if saved is not None else "default"


def load(storage: Path) -> bool | None:
    """The saved choice, or None (none saved, or a file that is not ours: moved aside)."""
    data = read_json(storage / FILENAME)
    if data is None or isinstance(data, Unusable):
        return None
    value = data.get("requireV3") if isinstance(data, dict) else None
    return value if isinstance(value, bool) else None


def apply(guard: SignatureGuard, env_requires: bool, saved: bool | None) -> None:
    guard.policy = attrs.evolve(guard.policy, require_v3=env_requires or bool(saved))


def describe(app: web.Application) -> dict[str, Any]:
    """For the heartbeat's ncCallbacks (trusted callers) and so the setup status."""
    guard = app[GUARD]
    return {
        "v1": guard.policy.v1,
        "requireV3": guard.policy.require_v3,
        "requireV3Source": source(app, app[CHOICE].saved),
    }


async def _on_startup(app: web.Application) -> None:
    saved = await asyncio.to_thread(load, app[CONFIG].persistent_storage)
    app[CHOICE].saved = saved
    apply(app[GUARD], app[CONFIG].nc_signature_require_v3, saved)
    if saved and not app[CONFIG].nc_signature_require_v3:
        log.info("/nc accepts only v3 signatures (chosen on the setup page)")


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise BadRequest("Send the request as application/json", code="json_required", status=415)
    raw = await read_capped(request, MAX_BODY)
    if raw is None:
        raise BadRequest("Request body too large", code="payload_too_large", status=413)
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise BadRequest("The body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object", code="invalid_json")
    return data


async def save(request: web.Request) -> web.Response:
    app = request.app
    user = request[IDENTITY].user_id or "anonymous"
    if not app[CHOICE].limiter.hit(user):
        raise TooManyRequests("Too many setup requests; wait a moment", code="rate_limited")
    config = app[CONFIG]
    if config.nc_signature_require_v3:
        raise Conflict(
            "BEEFLOW_NC_SIGNATURE_REQUIRE_V3 is set in the app's environment; to accept v1/v2 "
            "signatures again, re-register the app without it",
            code="env_locked",
        )
    value = (await _body(request)).get("requireV3")
    if not isinstance(value, bool):
        raise BadRequest("requireV3 must be true or false", code="invalid_choice")
    record = {"requireV3": value, "savedAt": round(time.time(), 3)}
    try:
        await asyncio.to_thread(write_json_atomic, config.persistent_storage / FILENAME, record)
    except StoreError as exc:
        log.error("cannot save %s: %s", FILENAME, exc.reason)
        raise BeeflowError(
            "The setting could not be saved to the app's persistent storage",
            code="setup_not_saved",
        ) from None
    app[CHOICE].saved = value
    apply(app[GUARD], False, value)
    log.info("/nc %s (changed on the setup page)", "requires v3" if value else "accepts v1/v2/v3")
    return json_response({"requireV3": value, "source": "setup"})


def setup(app: web.Application) -> None:
    """The route, its limiter, and the saved choice applied at start."""
    app[CHOICE] = Choice()
    app.on_startup.append(_on_startup)
    add_route(app, "POST", ROUTE, save, Access.ADMIN)
