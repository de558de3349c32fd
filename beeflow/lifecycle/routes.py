"""AppAPI's lifecycle routes: GET /heartbeat, GET /ready, POST /init and PUT /enabled
(docs/appapi-wire.md, "Lifecycle calls"), and the wiring of the pipeline and the boot run."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from aiohttp import web

from beeflow.health import collect, provide
from beeflow.lease import LEASES
from beeflow.lifecycle.boot import boot_ctx, on_trusted
from beeflow.lifecycle.callers import may_see_detail
from beeflow.lifecycle.pipeline import PIPELINE, Pipeline, install_shutdown, pipeline
from beeflow.nextcloud.client import NEXTCLOUD, NextcloudClient
from beeflow.nextcloud.surface import teardown_all
from beeflow.phases import INIT_PHASES
from beeflow.tasks import spawn
from beeflow.web.auth import Access, add_route, on_trusted_request
from beeflow.web.draining import DRAINING, READY
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

RERUN: Final = frozenset({"failed", "skipped"})  # last run states PUT /enabled?enabled=1 retries
# AppAPI waits 60 s for PUT /enabled and disables the app right after the answer, from when on
# it refuses the app's calls: a surface's teardown must be done before the answer.
TEARDOWN_SECONDS: Final = 20.0

# ------------------------------------------------------------------ handlers


async def heartbeat(request: web.Request) -> web.Response:
    """Always 200 {"status":"ok"} (AppAPI reads only that); advisory fields after it: states for
    everyone, details only for callers who may see them (may_see_detail). No side effects."""
    detail = await may_see_detail(request)
    return json_response({"status": "ok", **collect(request.app, detail)})


async def ready(request: web.Request) -> web.Response:
    """GET /ready: the load balancer's readiness (Kubernetes readinessProbe, HAProxy's check),
    separate from AppAPI's liveness (/heartbeat, 200 as long as the process answers). 503 while
    the app starts and from SIGTERM on (the pre-stop delay, then the drain), so the balancer
    stops sending before anything is refused. Public, no side effects, nothing but the state."""
    state = request.app[DRAINING].state
    if state == READY:
        return json_response({"status": READY})
    return json_response(
        {"status": state, "code": "not_ready", "error": "The connector is not taking requests"},
        status=503,
        headers={"Retry-After": "1", "Cache-Control": "no-store"},
    )


async def init(request: web.Request) -> web.Response:
    """Answer at once; the work runs in the background and reports progress
    (docs/appapi-wire.md, "Lifecycle calls"). Only AppAPI's own call gets here: every AppAPI
    sends its headers on /init and /enabled, so the middleware refuses anyone else."""
    # AppAPI marks the app enabled before it calls /init.
    request.app[NEXTCLOUD].app_enabled = True
    pipe = pipeline(request.app)
    pipe.unblock()
    pipe.trigger("init", init=True)
    return json_response({"status": "ok"})


async def enabled(request: web.Request) -> web.Response:
    """PUT /enabled?enabled=0|1 -> {"error": ""} (docs/appapi-wire.md, "Lifecycle calls").
    Enabling after a refused boot probe runs the registration pipeline; disabling runs every
    registration surface's teardown."""
    value = request.query.get("enabled", "")
    if value not in ("0", "1", "true", "false"):
        return json_response({"error": "", "code": "enabled_value_ignored"})
    state = value in ("1", "true")
    log.info("AppAPI set enabled=%s", int(state))
    request.app[NEXTCLOUD].app_enabled = state
    if not state:
        await _teardown(request.app)
    pipe = pipeline(request.app)
    # Enabling from the UI or `occ app_api:app:enable` sends heartbeat + this call, no /init:
    # re-run what boot held back or what failed (a run in flight is the /init's own).
    if state and not pipe.running and (pipe.boot_blocked or pipe.run_info.state in RERUN):
        pipe.unblock()
        pipe.trigger("enabled", init=False)
    return json_response({"error": ""})


async def _teardown(app: web.Application) -> None:
    """Every surface's teardown, answered when done or after TEARDOWN_SECONDS (it then goes on,
    and whatever Nextcloud refuses from then on is logged by the surface)."""
    task = spawn(teardown_all(app), name="surfaces-teardown")
    try:
        await asyncio.wait_for(asyncio.shield(task), TEARDOWN_SECONDS)
    except TimeoutError:
        log.warning(
            "the registrations' teardown took over %d s; answering AppAPI", TEARDOWN_SECONDS
        )


def _budget_health(app: web.Application) -> Any:
    def provide(trusted: bool) -> dict[str, Any]:
        budget = app[NEXTCLOUD].budget
        if not budget.used:
            return {}
        snap = budget.snapshot()
        return snap if trusted else {"spent": snap["spent"]}

    return provide


def setup(app: web.Application, client: NextcloudClient, *, run_at_boot: bool = True) -> None:
    """The lifecycle routes; the pipeline runs the phases every feature added (INIT_PHASES)."""
    app[PIPELINE] = Pipeline(client, app.setdefault(INIT_PHASES, []), app.get(LEASES))
    on_trusted_request(app, on_trusted(app))
    provide(app, "init", app[PIPELINE].health)
    provide(app, "appapiAuth", _budget_health(app))
    # Passive: the heartbeat has no side effects, whoever calls it.
    add_route(app, "GET", "/heartbeat", heartbeat, Access.PUBLIC, passive=True)
    add_route(app, "GET", "/ready", ready, Access.PUBLIC, passive=True)
    # AppAPI's own calls (valid secret, empty user), or an administrator's.
    add_route(app, "POST", "/init", init, Access.ADMIN, service_ok=True)
    add_route(app, "PUT", "/enabled", enabled, Access.ADMIN, service_ok=True)
    install_shutdown(app)
    if run_at_boot:
        app.cleanup_ctx.append(boot_ctx)
