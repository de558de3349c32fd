"""The Task Processing worker: takes the tasks Nextcloud hands Bee Flow's providers
(`tasks_provider/next`), runs each through the service with a watchdog and reports the result.
Woken by AppAPI's `/trigger` (Nextcloud 33+) and by a poll backstop; several connectors may
drain one queue at once, since Nextcloud locks each task to the caller it hands it to
(docs/assistant.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final
from urllib.parse import urlencode

import attrs
from aiohttp import web

from beeflow.config import CONFIG, Config
from beeflow.errors import NextcloudError
from beeflow.health import provide
from beeflow.integrations.assistant_execute import NcTask, Outcome, execute, task_failed
from beeflow.integrations.assistant_ledger import Entry, Ledger
from beeflow.integrations.assistant_nc import deliver, still_running
from beeflow.limits import Interval
from beeflow.nextcloud.client import NEXTCLOUD, NextcloudClient
from beeflow.nextcloud.task_processing import PROVIDERS, Providers, TaskType
from beeflow.serde import iso_utc
from beeflow.service_client import SERVICE, ServiceClient
from beeflow.tasks import Slot, spawn
from beeflow.web.auth import Access, add_route
from beeflow.web.responses import json_response

log = logging.getLogger(__name__)

NEXT_PATH: Final = "/ocs/v2.php/taskprocessing/tasks_provider/next"
MAX_PER_DRAIN: Final = 50
EMPTY_ROUNDS_BEFORE_BACKOFF: Final = 6
REPORT_GRACE: Final = 60.0  # past a task's watchdog, before a replica calls it abandoned
SWEEP_EVERY: Final = 30.0
SETTLE_SECONDS: Final = 2.0  # at shutdown, running tasks get this long before they are failed
RUNNER_PREFIX: Final = "assistant-task-"


def watchdog(expected_runtime: float, low: float, high: float) -> float:
    """clamp(expected runtime x 6, low, high): Nextcloud itself never times a task out."""
    return min(max(expected_runtime * 6, low), max(high, low))


@attrs.define
class Stats:
    fetched: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    recovered: int = 0  # abandoned tasks reported as failed by a sweep
    largest_drain: int = 0  # the most tasks one drain fetched (at most MAX_PER_DRAIN)
    last_error: str = ""
    last_task_at: float | None = None

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fetched": self.fetched,
            "completed": self.completed,
            "failed": self.failed,
            "timedOut": self.timed_out,
            "recovered": self.recovered,
            "largestDrain": self.largest_drain,
        }
        if self.last_error:
            out["lastError"] = self.last_error
        if self.last_task_at:
            out["lastTaskAt"] = iso_utc(self.last_task_at)
        return out


class Worker:
    """One per process: a poll loop, single-flight drains, at most `concurrency` tasks per
    provider at once."""

    def __init__(
        self,
        config: Config,
        client: Callable[[], NextcloudClient],
        service: ServiceClient,
        providers: Providers,
        ledger: Ledger | None,
    ) -> None:
        self.config = config
        self._client = client
        self._service = service
        self.providers = providers
        self.ledger = ledger
        self.stats = Stats()
        self.interval = config.task_poll_seconds
        self._empty_rounds = 0
        self._wake = asyncio.Event()
        self._again = False
        self._drain = Slot("assistant-drain")
        self._loop = Slot("assistant-poll")
        self._inflight: dict[str, int] = {}  # per provider id
        self._live: set[int] = set()  # task ids this process is working on
        self._jobs: set[asyncio.Task[Any]] = set()  # this worker's (not another app's)
        self._last_sweep = 0.0
        self._ledger_warned = False
        self.paused = ""  # why no task is fetched now ("" = not paused)
        self.last_fetched = 0  # tasks the last drain fetched
        self._next_warned = Interval(
            60.0
        )  # a Nextcloud that keeps failing `next`: one line a minute

    # -- wake-ups

    def trigger(self) -> None:
        """AppAPI says a task was scheduled: back to the shortest interval, drain now."""
        self._reset_interval()
        self._again = True
        self._wake.set()

    def _reset_interval(self) -> None:
        self.interval = self.config.task_poll_seconds
        self._empty_rounds = 0

    def _pause_reason(self) -> str:
        if not self.providers.serving():
            return "no provider registered"
        client = self._client()
        if client.app_enabled is False:
            return "the app is disabled in Nextcloud"
        if client.budget.spent:
            return "Nextcloud calls are paused (refused AppAPI logins)"
        return ""

    # -- the poll backstop

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self._poll())

    async def _poll(self) -> None:
        while True:
            await self._sleep()
            if time.monotonic() - self._last_sweep >= SWEEP_EVERY:
                self._last_sweep = time.monotonic()
                await self.sweep()
            self.paused = self._pause_reason()
            if self.paused:
                continue
            found = await self.drain()
            if found:
                self._reset_interval()
            else:
                self._empty_rounds += 1
                if self._empty_rounds >= EMPTY_ROUNDS_BEFORE_BACKOFF:
                    self.interval = min(self.interval * 2, self.config.task_poll_max_seconds)

    async def _sleep(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.interval):
                await self._wake.wait()
        self._wake.clear()

    def providers_changed(self) -> None:
        """The served types changed (registered, dropped): look at once."""
        self._reset_interval()
        self._wake.set()

    # -- draining

    @property
    def draining(self) -> bool:
        return self._drain.running

    async def drain(self) -> int:
        """Fetch while a provider has room; join the drain in flight (re-entrant drains do
        nothing but ask it for one more round). Returns the tasks fetched."""
        if self._drain.running:
            self._again = True
            return 0
        await asyncio.shield(self._drain.start(self._drain_once()))
        return self.last_fetched

    async def _drain_once(self) -> None:
        self.last_fetched = fetched = 0
        self._again = True
        while self._again and fetched < MAX_PER_DRAIN:
            self._again = False
            while fetched < MAX_PER_DRAIN:
                room = {
                    pid: t
                    for pid, t in self.providers.provider_ids().items()
                    if self._inflight.get(pid, 0) < self.config.task_concurrency
                }
                if not room:
                    break  # a finishing task wakes the poller for the next round
                got = await self._next(room)
                if got is None:
                    break
                fetched += 1
                self.last_fetched = fetched
                self.stats.largest_drain = max(self.stats.largest_drain, fetched)
                self._start(*got)

    async def _next(self, room: dict[str, TaskType]) -> tuple[NcTask, str, TaskType] | None:
        query = urlencode(
            [("providerIds[]", pid) for pid in room]
            + [("taskTypeIds[]", t.id) for t in room.values()]
        )
        try:
            result = await self._client().ocs("GET", f"{NEXT_PATH}?{query}", timeout=10.0)
        except NextcloudError as exc:
            self._error(f"next: {exc}", log_it=self._next_warned.ready())
            return None
        if result.http_status in (204, 404):
            return None  # nothing scheduled (Nextcloud 32 answers 204; older builds 404)
        data = result.data if isinstance(result.data, dict) else {}
        task = NcTask.parse(data.get("task")) if result.ok else None
        if task is None:
            problem = f"next: HTTP {result.http_status} OCS {result.statuscode}"
            self._error(problem, log_it=self._next_warned.ready())
            return None
        provider = data.get("provider")
        pid = provider.get("name") if isinstance(provider, dict) else None
        if pid not in room:
            pid = next((p for p, t in room.items() if t.id == task.type), None)
        if pid is None:
            # Locked to us, but for a type we did not ask for: report rather than strand it.
            self._keep(
                spawn(
                    self._report(task, task_failed("rejected", "not a task type Bee Flow serves")),
                    name=f"{RUNNER_PREFIX}{task.id}",
                )
            )
            return None
        self.stats.fetched += 1
        self.stats.last_task_at = time.time()
        return task, pid, room[pid]

    def _start(self, task: NcTask, pid: str, task_type: TaskType) -> None:
        self._inflight[pid] = self._inflight.get(pid, 0) + 1
        self._live.add(task.id)
        self._keep(spawn(self._run(task, pid, task_type), name=f"{RUNNER_PREFIX}{task.id}"))

    def _keep(self, job: asyncio.Task[Any]) -> None:
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _run(self, task: NcTask, pid: str, task_type: TaskType) -> None:
        config = self.config
        limit = watchdog(
            task_type.expected_runtime,
            config.task_watchdog_min_seconds,
            config.task_watchdog_max_seconds,
        )
        entry = Entry(task.id, "", pid, task.type, task.user_id, time.time() + limit + REPORT_GRACE)
        await self._ledger_call("add", entry)
        outcome: Outcome | None = None
        try:
            try:
                async with asyncio.timeout(limit):
                    outcome = await execute(self._service, task, limit)
            except TimeoutError:
                outcome = task_failed("timeout", f"no answer within {limit:g} s")
        except asyncio.CancelledError:
            # Stopping: say so now rather than leave the task to a sweep.
            with contextlib.suppress(Exception):
                stopped = task_failed("stopped", "the connector stopped")
                if await asyncio.wait_for(self._report(task, stopped), 2.0):
                    await self._ledger_call("remove", entry)
            raise
        finally:
            self._inflight[pid] -= 1
            if outcome is None:
                self._live.discard(task.id)
        reported = await self._report(task, outcome)
        if reported:
            await self._ledger_call("remove", entry)
        self._live.discard(task.id)
        self._wake.set()  # room for the next task

    async def _report(self, task: NcTask, outcome: Outcome) -> bool:
        """Count the outcome and report it; True when Nextcloud has it (or lost the task)."""
        stats = self.stats
        if outcome.ok:
            stats.completed += 1
        else:
            stats.failed += 1
            stats.timed_out += outcome.kind == "timeout"
            self._error(f"task {task.id} ({task.type}): {outcome.kind}: {outcome.detail}")
        problem = await deliver(self._client(), task.id, outcome.report_body())
        if problem:
            self._error(f"task {task.id}: the result could not be delivered ({problem})")
        return not problem

    def _error(self, text: str, *, log_it: bool = True) -> None:
        self.stats.last_error = text[:300]
        if log_it:
            log.warning("Task Processing: %s", text[:300])

    # -- the ledger and the sweep

    async def _ledger_call(self, what: str, entry: Entry) -> None:
        ledger = self.ledger
        if ledger is None:
            return
        try:
            if what == "add":
                await asyncio.to_thread(ledger.add, attrs.evolve(entry, holder=ledger.holder))
            else:
                await asyncio.to_thread(ledger.remove, entry.task_id)
        except OSError as exc:
            if not self._ledger_warned:
                self._ledger_warned = True
                log.warning(
                    "Task Processing: the in-progress ledger cannot be written (%s): a task of "
                    "a connector killed mid-way stays 'running' in Nextcloud",
                    exc.strerror or type(exc).__name__,
                )

    async def sweep(self) -> int:
        """Report the tasks of a worker that died (docs/assistant.md, "A worker that dies")."""
        ledger = self.ledger
        if ledger is None:
            return 0
        try:
            lost = await asyncio.to_thread(
                ledger.abandoned, time.time(), set(self._live), REPORT_GRACE
            )
        except OSError:
            return 0
        count = 0
        for entry in lost:
            try:
                mine = await asyncio.to_thread(ledger.claim, entry, time.time() + REPORT_GRACE)
            except OSError:
                return count
            if mine is None:
                continue
            if await still_running(self._client(), mine.task_id, mine.user):
                task = NcTask(mine.task_id, mine.type, mine.user, "", "", {})
                if not await self._report(task, task_failed("stopped", "the connector stopped")):
                    continue
                self.stats.recovered += 1
                count += 1
            with contextlib.suppress(OSError):
                await asyncio.to_thread(ledger.remove, mine.task_id)
        return count

    # -- shutdown and health

    async def close(self) -> None:
        await self._loop.close()
        await self._drain.close()
        pending = [job for job in self._jobs if not job.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=SETTLE_SECONDS)
            for job in late:
                job.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)

    def health(self, trusted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": "paused" if self.paused else ("draining" if self.draining else "idle"),
            "running": len(self._live),
        }
        if trusted:
            out.update(self.stats.snapshot())
            out["pollSeconds"] = self.interval
            if self.paused:
                out["pausedBecause"] = self.paused
            out["ledger"] = (
                "off" if self.ledger is None else ("failing" if self._ledger_warned else "ok")
            )
        return out


WORKER: web.AppKey[Worker] = web.AppKey("assistant_worker")


async def trigger(request: web.Request) -> web.Response:
    """AppAPI's wake-up (Nextcloud 33+): answered at once, the drain runs in the background."""
    worker = request.app[WORKER]
    provider = request.query.get("providerId", "")
    if provider not in worker.providers.provider_ids():
        return json_response({"status": "ignored", "code": "unknown_provider"})
    worker.trigger()
    return json_response({"status": "ok"})


def install(app: web.Application) -> None:
    """The worker (after the Task Processing surface and the service client), its /trigger
    route and its health fields under `assistant`. It stops before the sessions it uses."""
    config = app[CONFIG]
    worker = Worker(
        config,
        lambda: app[NEXTCLOUD],
        app[SERVICE],
        app[PROVIDERS],
        Ledger(config.persistent_storage),
    )
    app[WORKER] = worker
    worker.providers.listeners.append(worker.providers_changed)
    for method in ("POST", "GET"):
        add_route(app, method, "/trigger", trigger, Access.ADMIN, service_ok=True)
    provide(app, "assistant", worker.health)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        worker.start()
        yield
        await worker.close()

    app.cleanup_ctx.append(ctx)
