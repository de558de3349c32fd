"""The /init pipeline: every feature's phases in progress order, single-flight, under the
leases they name, each level reported to AppAPI (docs/lifecycle.md, "/init phases and
progress")."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
from aiohttp import web

from beeflow.errors import NextcloudError
from beeflow.lease import Leases
from beeflow.nextcloud.client import NextcloudClient
from beeflow.phases import InitPhase
from beeflow.tasks import spawn

log = logging.getLogger(__name__)

# How long a run still going at shutdown gets to end once cancelled.
CANCEL_WAIT = 5.0


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
        self.closed = False  # the app is stopping: no run starts any more
        self._counter = itertools.count(1)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def trigger(self, reason: str, *, init: bool) -> asyncio.Task[None] | None:
        """Start a run, or join the one in flight (`init`: AppAPI's /init asks for it). None
        once the app is stopping: a run then would outlive the sessions it uses."""
        if self.closed:
            log.info("init pipeline not started (%s): the connector is stopping", reason)
            return None
        if self._task is not None and not self._task.done():
            if init:
                self._init_joined = True
            return self._task
        self._init_joined = init
        self._task = spawn(self._run(reason), name=f"init-pipeline-{next(self._counter)}")
        return self._task

    def block(self, why: str) -> None:
        """The boot run is held back (`why`: refused, unreachable or disabled)."""
        self.boot_blocked, self.blocked_by = True, why
        self.run_info.state = "skipped"

    def unblock(self) -> None:
        self.boot_blocked, self.blocked_by = False, ""

    async def close(self) -> None:
        """The app is stopping: no new run, and the one still going is cancelled and waited
        for, before any feature closes what its phases use (the Nextcloud session, the
        registrar's run, the lease files)."""
        self.closed = True
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=CANCEL_WAIT)
        if done:
            log.info("init pipeline cancelled: the connector is stopping")
        else:
            log.warning("init pipeline still running %d s after it was cancelled", CANCEL_WAIT)

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

    def health(self, trusted: bool) -> dict[str, Any]:
        """The heartbeat's `init` fields: the state for everyone, progress and error for
        callers who may see details."""
        info = self.run_info
        out: dict[str, Any] = {"state": info.state}
        if self.boot_blocked:
            out["waitingFor"] = (
                "the app to be enabled in Nextcloud"
                if self.blocked_by == "disabled"
                else "AppAPI /init (boot probe was refused)"
            )
        if trusted:
            out["progress"] = info.progress
            if info.error:
                out["error"] = info.error
        return out


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


PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline")


def pipeline(app: web.Application) -> Pipeline:
    return app[PIPELINE]


def install_shutdown(app: web.Application) -> None:
    """A run still going when the app stops is cancelled at the shutdown signal, which comes
    before every feature's clean-up (their phases' resources close there), and again at the
    clean-up for an app cleaned up without a shutdown."""

    async def on_shutdown(app: web.Application) -> None:
        await app[PIPELINE].close()

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[PIPELINE].close()

    app.on_shutdown.append(on_shutdown)
    app.cleanup_ctx.append(ctx)
