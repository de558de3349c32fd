"""The setup page's routes: save a service choice (applied live, then a background
re-bootstrap), test one, read the status; the saved choice applied at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
from aiohttp import web
from yarl import URL

from beeflow.config import CONFIG
from beeflow.errors import BadRequest, BeeflowError, Conflict
from beeflow.lease import FileWatch
from beeflow.limits import RateLimiter
from beeflow.service_client import SERVICE_URL
from beeflow.setup import store
from beeflow.setup.actions import TENANT_ROUTES
from beeflow.setup.common import (
    LIMITS,
    STATE,
    Rebootstrap,
    SetupState,
    json_body,
    limit,
    rebootstrap_of,
    state_of,
)
from beeflow.setup.page import SCRIPT_PATH, etag_of, page, read, script
from beeflow.setup.probe import probe, probe_session
from beeflow.setup.status import CLOUD_URL, status_body
from beeflow.setup.urlcheck import UrlRejected, assert_allowed_url, parse_allowed_url
from beeflow.storage import StoreError
from beeflow.tasks import spawn
from beeflow.tenant.wiring import ROTATION
from beeflow.web.auth import Access, add_route
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

SAVED_POLL_SECONDS: Final = 1.0  # how soon another replica's saved choice applies here


def _session(request: web.Request) -> aiohttp.ClientSession:
    session = state_of(request).session
    if session is None:  # only outside a running app
        raise BeeflowError("The probe is not ready", code="not_ready", status=503)
    return session


async def status(request: web.Request) -> web.Response:
    limit(request, "status")
    session = _session(request)

    async def check(url: URL) -> dict[str, Any]:
        return await probe(session, url)

    url = request.app[SERVICE_URL].url
    result = await state_of(request).reachability.current(url, check)
    return json_response(status_body(request.app, result))


async def test(request: web.Request) -> web.Response:
    limit(request, "probe")
    body = await json_body(request)
    raw = body.get("apiBaseUrl", body.get("url"))
    if raw is None and body.get("mode") == "cloud":
        raw = CLOUD_URL
    url = await assert_allowed_url(raw)
    result = await probe(_session(request), url)
    state_of(request).reachability.record(url, result)
    return json_response(result)


async def save(request: web.Request) -> web.Response:
    limit(request, "save")
    api_base = request.app[SERVICE_URL]
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
    storage = request.app[CONFIG].persistent_storage
    try:
        choice = await asyncio.to_thread(store.save, storage, mode, str(url))
    except StoreError as exc:
        log.error("cannot save %s: %s", store.FILENAME, exc.reason)
        raise BeeflowError(
            "The setting could not be saved to the app's persistent storage",
            code="setup_not_saved",
        ) from None
    previous = str(api_base.url)
    api_base.url, api_base.source = url, "setup"
    state_of(request).applied_saved_at = choice.saved_at
    state_of(request).saved.mark()  # our own write
    if previous != str(url):
        log.info("Bee Flow service changed by an admin: %s -> %s", previous, url)
    if request.app[CONFIG].tenant_key_env:
        # A key fixed by BEEFLOW_TENANT_KEY cannot be re-provisioned: nothing to run.
        rebootstrap = "env_key"
    else:
        rebootstrap = rebootstrap_of(request.app).request()
    result = await probe(_session(request), url)
    state_of(request).reachability.record(url, result)
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


def _allowed(saved_url: str) -> URL | None:
    """The saved service URL if it is still allowed (a rule may have changed since it was
    saved), else None, logged."""
    try:
        return parse_allowed_url(saved_url)
    except UrlRejected as exc:
        log.warning("ignoring the saved service URL: %s (%s)", exc.message, exc.instance_code)
        return None


def apply_saved(app: web.Application) -> bool:
    """Apply setup-config.json unless the environment pins the URL or a tenant binding does.
    Precedence: env -> saved choice -> default; a bound tenant pins it (docs/lifecycle.md,
    "Tenant key sources and files")."""
    api_base = app[SERVICE_URL]
    if api_base.source in ("env", "bound"):
        return False
    choice = store.load(app[CONFIG].persistent_storage)
    if choice is None:
        return False
    url = _allowed(choice.api_base_url)
    if url is None:
        return False
    api_base.url, api_base.source = url, "setup"
    app[STATE].loaded_from_file = True
    app[STATE].applied_saved_at = choice.saved_at
    log.info("Bee Flow service from the setup picker: %s", url)
    return True


def reapply_saved(app: web.Application) -> bool:
    """Another replica's admin saved a choice (setup-config.json changed): apply it as the save
    did there, live, unless the environment pins the URL. True when the URL in force moved."""
    state = app[STATE]
    if not state.saved.changed():
        return False
    api_base = app[SERVICE_URL]
    choice = store.load(app[CONFIG].persistent_storage)
    if api_base.locked or choice is None or choice.saved_at == state.applied_saved_at:
        return False
    url = _allowed(choice.api_base_url)
    if url is None:
        return False
    state.applied_saved_at = choice.saved_at
    if str(api_base.url) == str(url) and api_base.source == "setup":
        return False
    log.info("Bee Flow service changed on another replica: %s -> %s", api_base.url, url)
    api_base.url, api_base.source = url, "setup"
    return True


async def _watch_saved(app: web.Application) -> None:
    while True:
        await asyncio.sleep(SAVED_POLL_SECONDS)
        try:
            reapply_saved(app)
        except Exception:
            log.exception("re-reading the saved setup choice failed")


async def _on_startup(app: web.Application) -> None:
    apply_saved(app)
    app[STATE].saved.mark()


async def _watch_ctx(app: web.Application) -> AsyncIterator[None]:
    """Replicas on one storage: a choice saved on another one is applied here too."""
    task = spawn(_watch_saved(app), name="setup-choice-watch")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _probe_ctx(app: web.Application) -> AsyncIterator[None]:
    async for session in probe_session():
        app[STATE].session = session
        yield
        app[STATE].session = None


def install(app: web.Application) -> None:
    """The page, its script, the status, the probe and the tenant actions (all ADMIN but the
    script); the saved choice is applied first of all start-up work."""
    script_body = read("setup.js")
    app[STATE] = SetupState(
        limits={name: RateLimiter(limit, window) for name, (limit, window) in LIMITS.items()},
        page=read("page.html").decode("utf-8"),
        script=script_body,
        script_etag=etag_of(script_body),
        rebootstrap=Rebootstrap(app[ROTATION].rebootstrap if ROTATION in app else None),
        saved=FileWatch(store.path_in(app[CONFIG].persistent_storage)),
    )
    # First of all start-up work, so the tenant bootstrap at boot already sees the saved URL.
    app.on_startup.insert(0, _on_startup)
    app.cleanup_ctx.append(_probe_ctx)
    app.cleanup_ctx.append(_watch_ctx)
    for path in ("/setup", "/setup/"):
        add_route(app, "GET", path, page, Access.ADMIN)
        add_route(app, "POST", path, save, Access.ADMIN)
    add_route(app, "GET", "/setup/status", status, Access.ADMIN)
    add_route(app, "POST", "/setup/test", test, Access.ADMIN)
    for path, handler in TENANT_ROUTES.items():
        add_route(app, "POST", path, handler, Access.ADMIN)
    for method in ("GET", "HEAD"):
        add_route(app, method, SCRIPT_PATH, script, Access.PUBLIC)
