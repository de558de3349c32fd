"""The handlers behind `occ bee_flow:status | sync-users | rotate-key | doctor`: plain text,
streamed line by line, every line through the redactor (no key, secret or signature is ever
printed: the tenant key appears as its fingerprint). Work an operator started (a user sync, a
key rotation) runs in its own task and finishes even when occ is interrupted
(docs/administration.md, "occ commands")."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from beeflow import __version__
from beeflow.config import CONFIG
from beeflow.errors import BadRequest, BeeflowError, NotFound
from beeflow.health import collect
from beeflow.integrations.usersync import USER_SYNC
from beeflow.nextcloud.links import setup_page_url
from beeflow.nextcloud.occ import NAMES
from beeflow.redact import REDACTOR
from beeflow.service_client import SERVICE_URL
from beeflow.tasks import spawn
from beeflow.tenant.state import PENDING_STATES, TENANT
from beeflow.tenant.wiring import BOOTSTRAPPER, ROTATION
from beeflow.web.auth import Access, add_route
from beeflow.web.bodies import read_capped

log = logging.getLogger(__name__)

MAX_BODY: Final = 16 * 1024
# The command doctor runs, and how long it may take (module attributes: a test stands a
# crashing or hanging child in for it).
DOCTOR: list[str] = [sys.executable, "-m", "beeflow", "doctor"]
DOCTOR_TIMEOUT = 120.0
STDERR_KEPT: Final = 20


class Output:
    """A streamed text/plain answer; each line scrubbed before it leaves."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(
            headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
        )

    async def start(self) -> None:
        await self.response.prepare(self.request)

    async def line(self, text: str = "") -> None:
        await self.response.write((REDACTOR.scrub(text) + "\n").encode("utf-8"))

    async def end(self) -> web.StreamResponse:
        await self.response.write_eof()
        return self.response


async def _options(request: web.Request) -> dict[str, Any]:
    """`{"occ": {"arguments": ..., "options": {...}}}` (null when the command has none)."""
    raw = await read_capped(request, MAX_BODY)
    if raw is None:
        raise BadRequest("Request body too large", code="payload_too_large", status=413)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise BadRequest("The body is not valid JSON", code="invalid_json") from None
    occ = body.get("occ") if isinstance(body, dict) else None
    options = occ.get("options") if isinstance(occ, dict) else None
    return options if isinstance(options, dict) else {}


# ------------------------------------------------------------------ status


def status_report(app: web.Application) -> dict[str, Any]:
    """What status prints: the service in force, the tenant (never the key), every health
    field as an administrator sees it, and where the setup page is."""
    config = app[CONFIG]
    service = app[SERVICE_URL]
    tenant = app[TENANT]
    return {
        "version": __version__,
        "appId": config.app_id,
        "transport": "harp" if config.harp else "legacy",
        "service": {"url": str(service.url), "source": service.source},
        "tenant": {
            "status": tenant.status,
            "organization": tenant.organization_name or tenant.organization_id,
            "fingerprint": tenant.fingerprint,
            "source": tenant.source,
        },
        "setupPage": setup_page_url(config),
        "health": collect(app, True),
    }


def _status_lines(report: dict[str, Any]) -> list[str]:
    tenant, health = report["tenant"], report["health"]
    lines = [
        f"Bee Flow connector {report['version']} (app {report['appId']}, "
        f"{report['transport']} transport)",
        f"Service:      {report['service']['url']} (from {report['service']['source']})",
        f"Tenant:       {tenant['status']}"
        + (f", organisation {tenant['organization']}" if tenant["organization"] else "")
        + (f", key fingerprint {tenant['fingerprint']}" if tenant["fingerprint"] else ""),
    ]
    bootstrap = health.get("bootstrap", {})
    if bootstrap.get("error"):
        lines.append(f"Last error:   {bootstrap['error']}")
        if bootstrap.get("remediation"):
            lines.append(f"Fix:          {bootstrap['remediation']}")
    init = health.get("init", {})
    lines.append(f"Install:      {init.get('state', '?')} (progress {init.get('progress', '?')})")
    auth = health.get("appapiAuth")
    lines.append(
        "AppAPI calls: "
        + ("PAUSED: " + str(auth.get("remedy", "")) if auth and auth.get("spent") else "ok")
    )
    sync = health.get("userSync", {})
    if sync:
        lines.append(f"User sync:    {sync.get('state', '?')}")
    for name in ("ui", "filesActions", "occCommands", "settingsForm", "setupChecks"):
        fields = health.get(name)
        if fields:
            text = ", ".join(f"{k} {v}" for k, v in fields.items() if not isinstance(v, dict))
            lines.append(f"{name + ':':<14}{text}")
    studio = health.get("studioMenus")
    if studio:
        entries = studio.get("entries", 0)
        lines.append(f"Studio menus: {studio.get('state', '?')}, {entries} entries")
    lines.append(f"Setup page:   {report['setupPage']}")
    return lines


async def status(request: web.Request, out: Output, options: dict[str, Any]) -> None:
    report = status_report(request.app)
    if options.get("json"):
        await out.line(json.dumps(report, indent=2, default=str))
        return
    for line in _status_lines(report):
        await out.line(line)


# ------------------------------------------------------------------ sync-users


async def sync_users(request: web.Request, out: Output, options: dict[str, Any]) -> None:
    sync = request.app[USER_SYNC]
    await out.line("Reconciling Nextcloud's users and groups with Bee Flow...")
    await asyncio.shield(spawn(sync.run(), name="occ-sync-users"))
    fields = sync.snapshot_status(True)
    await out.line(f"State:        {fields.get('state')}")
    for key in ("usersSeen", "eventsSent", "eventsSkipped", "pending", "lastError"):
        if fields.get(key) not in (None, "", 0):
            await out.line(f"{key + ':':<14}{fields[key]}")


# ------------------------------------------------------------------ rotate-key


async def rotate_key(request: web.Request, out: Output, options: dict[str, Any]) -> None:
    app = request.app
    tenant = app[TENANT]
    if app[CONFIG].tenant_key_env:
        await out.line(
            "The tenant key is set by BEEFLOW_TENANT_KEY: re-register the app with another "
            "--env BEEFLOW_TENANT_KEY=... (or auto) to change it. Nothing done."
        )
        return
    if not options.get("confirm"):
        await out.line(
            f"This provisions a new tenant key at {app[SERVICE_URL].url} (the key in use, "
            f"fingerprint {tenant.fingerprint or 'none'}, keeps serving until then)."
        )
        await out.line("Run it again with --confirm to do it. Nothing done.")
        return
    boot = app.get(BOOTSTRAPPER)
    if boot is not None and boot.busy:
        await out.line("A provisioning is running; try again when it has finished. Nothing done.")
        return
    previous = tenant.fingerprint
    await out.line(f"Rotating the tenant key (current fingerprint {previous or 'none'})...")
    log.info("tenant key rotation requested through occ")
    task = spawn(app[ROTATION].rebootstrap(), name="occ-rotate-key")
    try:
        await asyncio.shield(task)
    except BeeflowError as exc:
        await out.line(f"FAILED: {exc.message}")
        remediation = exc.extra.get("remediation")
        if remediation:
            await out.line(f"Fix: {remediation}")
        await out.line("The previous key stays in use.")
        return
    if tenant.status in PENDING_STATES:
        await out.line(
            "The Bee Flow service asks for the code it e-mails to an administrator: finish on "
            f"the setup page, {setup_page_url(app[CONFIG])}. The previous key stays in use "
            "until then."
        )
        return
    await out.line(f"Done: key fingerprint {tenant.fingerprint}.")
    if tenant.fingerprint == previous:
        await out.line("(The service keeps one key per organisation: it confirmed the same key.)")


# ------------------------------------------------------------------ doctor


async def doctor(request: web.Request, out: Output, options: dict[str, Any]) -> None:
    """`python -m beeflow doctor` in this container (it inherits the container's environment,
    as when an operator runs it with docker exec): its report streamed as it comes; its log
    (stderr) shown only when it crashed."""
    args = list(DOCTOR)
    if options.get("json"):
        args.append("--json")
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    errors: deque[str] = deque(maxlen=STDERR_KEPT)
    doctor_timeout = DOCTOR_TIMEOUT  # AppAPI itself waits for ever

    async def drain(stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            errors.append(line.decode("utf-8", "replace").rstrip("\n"))

    drainer = spawn(drain(proc.stderr), name="occ-doctor-stderr")
    try:
        async with asyncio.timeout(doctor_timeout):
            while line := await proc.stdout.readline():
                await out.line(line.decode("utf-8", "replace").rstrip("\n"))
            await proc.wait()
    except TimeoutError:
        await out.line(f"doctor did not finish within {doctor_timeout:g} s")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.wait([drainer], timeout=1.0)
    if proc.returncode == 1:
        await out.line("(doctor exit code 1: see the FAIL lines above)")
    elif proc.returncode != 0:
        await out.line(f"doctor ended with exit code {proc.returncode}:")
        for kept in errors:
            await out.line("  " + kept)


# ------------------------------------------------------------------ the route

Runner = Callable[[web.Request, Output, dict[str, Any]], Awaitable[None]]
RUNNERS: Final[dict[str, Runner]] = {
    "status": status,
    "sync-users": sync_users,
    "rotate-key": rotate_key,
    "doctor": doctor,
}


async def occ(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    runner = RUNNERS.get(name)
    if runner is None or name not in NAMES:
        raise NotFound("No such occ command", code="occ_command_unknown")
    options = await _options(request)
    out = Output(request)
    await out.start()
    try:
        await runner(request, out, options)
    except Exception as exc:  # the answer has started: say it in the output
        log.exception("occ %s failed", name)
        await out.line(f"FAILED: {type(exc).__name__}")
    return await out.end()


def install(app: web.Application) -> None:
    """ADMIN, and AppAPI's own call (empty user) allowed: AppAPI runs the command."""
    names = "|".join(sorted(NAMES))  # the manifest's list: any other name is not ours
    add_route(app, "POST", "/occ/{name:" + names + "}", occ, Access.ADMIN, service_ok=True)
