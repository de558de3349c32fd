"""AppAPI lifecycle: GET /heartbeat, POST /init (single-flight pipeline with progress),
PUT /enabled, and the boot run that is careful not to lock the connector out of Nextcloud."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import itertools
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path, PurePath
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.config import CONFIG
from beeflow.errors import NextcloudError
from beeflow.health import TUNNEL_STATUS, collect, provide
from beeflow.lease import LEASES, Leases
from beeflow.limits import RateLimiter
from beeflow.nextcloud.client import NEXTCLOUD, NextcloudClient
from beeflow.nextcloud.surface import teardown_all
from beeflow.nextcloud.users import USERS
from beeflow.phases import INIT_PHASES, InitPhase
from beeflow.tasks import spawn
from beeflow.web.auth import IDENTITY, Access, add_route, on_trusted_request
from beeflow.web.draining import DRAINING, READY
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

UNTRUSTED_RUNS: Final = 3
UNTRUSTED_WINDOW: Final = 15 * 60.0
RERUN: Final = frozenset({"failed", "skipped"})  # last run states PUT /enabled?enabled=1 retries
ORIGIN_IP: Final = "x-origin-ip"  # set by AppAPI's PHP proxy on every request it forwards
HARP_AA_VERSION: Final = "32"  # HaRP overwrites AA-VERSION with this on what it forwards
HARP_KEY_HEADER: Final = "harp-shared-key"  # AppAPI's own calls through HaRP carry the key
_UCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
_COMM_MAX: Final = 15  # TASK_COMM_LEN - 1
# AppAPI waits 60 s for PUT /enabled and disables the app right after the answer, from when on
# it refuses the app's calls: a surface's teardown must be done before the answer.
TEARDOWN_SECONDS: Final = 20.0


@attrs.define
class InitRun:
    """What the last pipeline run did, for the heartbeat and diagnostics."""

    state: str = "idle"  # idle | running | done | failed | skipped
    trigger: str = ""
    progress: int = 0
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    runs: int = 0


class Pipeline:
    """Single-flight: concurrent triggers join the run in flight; each run reports its progress
    (docs/lifecycle.md, "/init phases and progress")."""

    def __init__(
        self, client: NextcloudClient, phases: list[InitPhase], leases: Leases | None = None
    ) -> None:
        self._client = client
        self._phases = phases
        self._leases = leases
        self._task: asyncio.Task[None] | None = None
        # An /init started or joined the run: AppAPI is in its init phase, so a failure is
        # reported too (progress 0 + error ends `--wait-finish` with the reason).
        self._init_joined = False
        self.run_info = InitRun()
        self.boot_blocked = False  # the boot probe was refused: wait for AppAPI to call us
        self.blocked_by = ""  # refused | unreachable | disabled (why boot_blocked is set)
        self._counter = itertools.count(1)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def trigger(self, reason: str, *, init: bool) -> asyncio.Task[None]:
        """Start a run, or join the one in flight (`init`: AppAPI's /init asks for it)."""
        if self._task is not None and not self._task.done():
            if init:
                self._init_joined = True
            return self._task
        self._init_joined = init
        self._task = spawn(self._run(reason), name=f"init-pipeline-{next(self._counter)}")
        return self._task

    async def _report(self, progress: int, error: str = "") -> None:
        """Every run reports its progress, whatever started it: AppAPI may be waiting for init
        although its /init never reached us (the connector was down or restarted when it was
        sent), and only a report moves it then. Once init is 100 AppAPI ignores non-zero
        reports, so this is harmless on an installed app. A failure (progress 0 with an error)
        is reported only when /init asked: on an installed app it would mark the app failed."""
        if error and not self._init_joined:
            return
        try:
            result = await self._client.report_progress(progress, error)
        except NextcloudError as exc:
            log.warning("init progress %d not delivered: %s", progress, exc)
            return
        if not result.ok:
            log.warning(
                "init progress %d refused: HTTP %s OCS %s",
                progress,
                result.http_status,
                result.statuscode,
            )

    async def _run(self, reason: str) -> None:
        info = self.run_info
        info.state, info.trigger, info.error = "running", reason, ""
        info.started_at, info.finished_at = time.time(), None
        info.runs += 1
        phases = sorted(self._phases, key=lambda p: p.progress)
        log.info("init pipeline started (%s): %d phase(s)", reason, len(phases))
        try:
            for progress, group in itertools.groupby(phases, key=lambda p: p.progress):
                await _run_group(list(group), self._leases)
                info.progress = progress
                if progress < 100:
                    await self._report(progress)
            info.progress = 100
            await self._report(100)
        except Exception as exc:
            message = _public_error(exc)
            info.state, info.error = "failed", message
            info.finished_at = time.time()
            log.error("init pipeline failed (%s): %s", reason, message)
            await self._report(0, message)
            return
        info.state = "done"
        info.finished_at = time.time()
        log.info("init pipeline finished (%s)", reason)


async def _run_group(group: list[InitPhase], leases: Leases | None) -> None:
    """The phases of one progress level together, under the leases they name (taken in name
    order, waiting while another replica holds one)."""
    async with contextlib.AsyncExitStack() as stack:
        if leases is not None:
            for name in sorted({p.lease for p in group if p.lease}):
                await stack.enter_async_context(leases.get(name).hold())
        results = await asyncio.gather(*(p.run() for p in group), return_exceptions=True)
    for phase, result in zip(group, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            raise RuntimeError(f"{phase.name}: {_public_error(result)}") from result


def _public_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:500]


_PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline")
_UNTRUSTED: web.AppKey[RateLimiter] = web.AppKey("lifecycle_untrusted")


def pipeline(app: web.Application) -> Pipeline:
    return app[_PIPELINE]


# ------------------------------------------------------------------ handlers


async def heartbeat(request: web.Request) -> web.Response:
    """Always 200 {"status":"ok"} (AppAPI reads only that); advisory fields after it: states for
    everyone, details only for callers who may see them (_may_see_detail). No side effects."""
    detail = await _may_see_detail(request)
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


async def _may_see_detail(request: web.Request) -> bool:
    """Details (errors, fingerprints, organisation, counts) only for a caller proven to be a
    Nextcloud administrator, or for a process inside this container (doctor). The valid secret
    with an empty user proves neither: AppAPI's PHP proxy adds it to every anonymous request to
    a PUBLIC route, and HaRP to every anonymous browser request."""
    identity = request[IDENTITY]
    if not identity.trusted:
        return False
    if identity.user_id:
        try:
            user = await request.app[USERS].lookup(identity.user_id)
        except NextcloudError:
            return False
        return user.is_admin
    return _local_caller(request)


def _local_caller(request: web.Request) -> bool:
    """A request that did not come through Nextcloud's proxy or HaRP:
    - never with `x-origin-ip`: AppAPI's PHP proxy sets it on every request it forwards;
    - legacy TCP: from a loopback address, and not with the AA-VERSION HaRP forces ("32") on
      what it forwards (HaRP's direct mode reaches a host-network ExApp over loopback);
    - HaRP: AppAPI's own call, proven by the HaRP shared key (a browser does not have it), or
      over the Unix socket from a process that is not frpc (everything HaRP forwards arrives
      through frpc): neither the frpc we run nor any process named like its binary (one we
      have not seen start yet, or one left over); unknown means frpc."""
    if ORIGIN_IP in request.headers:
        return False
    config = request.app[CONFIG]
    if config.harp:
        offered = request.headers.get(HARP_KEY_HEADER, "")
        if offered and hmac.compare_digest(
            offered.encode("utf-8", "surrogateescape"), config.hp_shared_key.encode("utf-8")
        ):
            return True
        peer = unix_peer_pid(request.transport)
        if peer is None:
            return False
        tunnel = request.app.get(TUNNEL_STATUS)
        if tunnel is not None and tunnel().get("pid") == peer:
            return False
        name = _process_name(peer)
        return name is not None and name != PurePath(config.frpc_bin).name[:_COMM_MAX]
    if request.headers.get("AA-VERSION", "").strip() == HARP_AA_VERSION:
        return False
    return _loopback_peer(request)


def _loopback_peer(request: web.Request) -> bool:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return False
    try:
        return ipaddress.ip_address(peer[0].split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _process_name(pid: int) -> str | None:
    """The kernel's name of a process (the executable's file name, cut at 15 characters)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def unix_peer_pid(transport: asyncio.BaseTransport | None) -> int | None:
    """The pid of the process at the other end of a Unix socket connection (SO_PEERCRED),
    None when it cannot be told (not a Unix socket, not Linux)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, peercred, _UCRED.size)
        pid, _uid, _gid = _UCRED.unpack(raw)
    except (OSError, struct.error):
        return None
    return int(pid) if pid > 0 else None


def _untrusted_allowed(request: web.Request, what: str) -> bool:
    if request[IDENTITY].trusted:
        request.app[NEXTCLOUD].budget.lift()
        return True
    allowed = request.app[_UNTRUSTED].hit(what)
    if not allowed:
        log.debug("untrusted %s ignored (limit %d per 15 min)", what, UNTRUSTED_RUNS)
    return allowed


async def init(request: web.Request) -> web.Response:
    """Answer at once; the work runs in the background and reports progress
    (docs/appapi-wire.md, "Lifecycle calls")."""
    if _untrusted_allowed(request, "init"):
        # AppAPI marks the app enabled before it calls /init.
        request.app[NEXTCLOUD].app_enabled = True
        pipe = pipeline(request.app)
        pipe.boot_blocked, pipe.blocked_by = False, ""
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
    if _untrusted_allowed(request, "enabled"):
        log.info("AppAPI set enabled=%s", int(state))
        request.app[NEXTCLOUD].app_enabled = state
        if not state:
            await _teardown(request.app)
        pipe = pipeline(request.app)
        # Enabling from the UI or `occ app_api:app:enable` sends heartbeat + this call, no /init:
        # re-run what boot held back or what failed (a run in flight is the /init's own).
        if state and not pipe.running and (pipe.boot_blocked or pipe.run_info.state in RERUN):
            pipe.boot_blocked, pipe.blocked_by = False, ""
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


# ------------------------------------------------------------------ boot


async def boot(app: web.Application) -> None:
    """At most ONE authenticated probe at boot. If Nextcloud refuses it (not registered yet, wrong
    secret, locked out), do not run the pipeline: wait for /init, /enabled or a trusted request.
    If it answers that the app is disabled (ex-app/state is the one call AppAPI allows a disabled
    app), every other call would be refused: wait for PUT /enabled?enabled=1 or /init."""
    pipe = pipeline(app)
    client = app[NEXTCLOUD]
    if client.budget.spent:
        log.warning(
            "Not probing Nextcloud at boot: the refused AppAPI logins of the last 30 minutes "
            "(%d attempts on Nextcloud's count) leave no room for another. Waiting for AppAPI to "
            "call /init (register the app), or `occ security:bruteforce:reset <connector-ip>`.",
            client.budget.attempts,
        )
        _block(pipe, "refused")
        return
    try:
        result = await client.probe()
    except NextcloudError as exc:
        log.warning("Nextcloud not reachable at boot (%s); waiting for AppAPI to call /init", exc)
        _block(pipe, "unreachable")
        return
    if result.auth_refused:
        log.warning(
            "AppAPI refused the boot probe (HTTP %s, OCS %s): the app is not registered or its "
            "secret differs. Waiting for AppAPI to call /init.",
            result.http_status,
            result.statuscode,
        )
        _block(pipe, "refused")
        return
    if client.enabled_flag(result) is False:
        log.info(
            "The app is registered but disabled in Nextcloud: no registrations until it is "
            "enabled (AppAPI then calls PUT /enabled?enabled=1, or /init on an update)."
        )
        _block(pipe, "disabled")
        return
    pipe.trigger("boot", init=False)


def _block(pipe: Pipeline, why: str) -> None:
    pipe.boot_blocked, pipe.blocked_by = True, why
    pipe.run_info.state = "skipped"


async def _boot_ctx(app: web.Application) -> AsyncIterator[None]:
    task = spawn(boot(app), name="lifecycle-boot")
    yield
    if not task.done():
        task.cancel()


async def _pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    """A run still going at shutdown stops with the app: its calls would outlive the sessions
    they use (the registrations' phases take a few seconds on a slow Nextcloud)."""
    yield
    pipe = app[_PIPELINE]
    task = pipe._task
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=5.0)


def _health(app: web.Application) -> Any:
    def provide(trusted: bool) -> dict[str, Any]:
        info = app[_PIPELINE].run_info
        out: dict[str, Any] = {"state": info.state}
        pipe = app[_PIPELINE]
        if pipe.boot_blocked:
            out["waitingFor"] = (
                "the app to be enabled in Nextcloud"
                if pipe.blocked_by == "disabled"
                else "AppAPI /init (boot probe was refused)"
            )
        if trusted:
            out["progress"] = info.progress
            if info.error:
                out["error"] = info.error
        return out

    return provide


def _budget_health(app: web.Application) -> Any:
    def provide(trusted: bool) -> dict[str, Any]:
        budget = app[NEXTCLOUD].budget
        if not budget.used:
            return {}
        snap = budget.snapshot()
        return snap if trusted else {"spent": snap["spent"]}

    return provide


def _on_trusted(app: web.Application) -> Any:
    def seen(request: web.Request) -> None:
        # A request bearing the valid secret proves Nextcloud knows us: run a pipeline held back
        # at boot (the Nextcloud client lifts its own failure budget on the same signal).
        pipe = app[_PIPELINE]
        if (
            pipe.boot_blocked
            and pipe.blocked_by != "disabled"  # a disabled app's calls would all be refused
            and request.path not in ("/init", "/enabled")
        ):
            pipe.boot_blocked, pipe.blocked_by = False, ""
            pipe.trigger("trusted-request", init=False)

    return seen


def setup(app: web.Application, client: NextcloudClient, *, run_at_boot: bool = True) -> None:
    """The lifecycle routes; the pipeline runs the phases every feature added (INIT_PHASES)."""
    app[_PIPELINE] = Pipeline(client, app.setdefault(INIT_PHASES, []), app.get(LEASES))
    on_trusted_request(app, _on_trusted(app))
    app[_UNTRUSTED] = RateLimiter(limit=UNTRUSTED_RUNS, window=UNTRUSTED_WINDOW)
    provide(app, "init", _health(app))
    provide(app, "appapiAuth", _budget_health(app))
    # Passive: the heartbeat has no side effects, whoever calls it.
    add_route(app, "GET", "/heartbeat", heartbeat, Access.PUBLIC, passive=True)
    add_route(app, "GET", "/ready", ready, Access.PUBLIC, passive=True)
    add_route(app, "POST", "/init", init, Access.ADMIN, service_ok=True, lifecycle=True)
    add_route(app, "PUT", "/enabled", enabled, Access.ADMIN, service_ok=True, lifecycle=True)
    app.cleanup_ctx.append(_pipeline_ctx)
    if run_at_boot:
        app.cleanup_ctx.append(_boot_ctx)
