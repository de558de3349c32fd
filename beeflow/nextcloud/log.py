"""Warnings and errors into nextcloud.log as well (AppAPI's `POST /api/v1/log`), through the same
redactor as the local log, rate-limited, and never while the AppAPI failure budget is paused
(docs/administration.md, "Nextcloud's log").

A record made while a record is being shipped (the client's own logging of a refused call, this
module's) stays local: a failed log call never feeds another one."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.errors import NextcloudError
from beeflow.health import provide
from beeflow.limits import TokenBucket
from beeflow.nextcloud.client import NextcloudClient
from beeflow.redact import REDACTOR
from beeflow.tasks import spawn

log = logging.getLogger(__name__)

LOG_PATH: Final = "/ocs/v1.php/apps/app_api/api/v1/log"
# Nextcloud's levels (ILogger): 0 debug, 1 info, 2 warning, 3 error, 4 fatal.
LEVELS: Final = ((logging.CRITICAL, 4), (logging.ERROR, 3), (logging.WARNING, 2))
MAX_MESSAGE: Final = 4000
QUEUE_MAX: Final = 200
# 20 at once, then one every 3 s: a burst reaches the log, a flood does not.
BURST: Final = 20
PER_SECOND: Final = 1 / 3
HOLD_SECONDS: Final = 5.0  # how often a held queue looks again
# The loggers shipped: the connector's own.
SOURCE_LOGGER: Final = "beeflow"

_SHIPPING: contextvars.ContextVar[bool] = contextvars.ContextVar("beeflow_nc_log", default=False)


def nextcloud_level(levelno: int) -> int:
    for python, nextcloud in LEVELS:
        if levelno >= python:
            return nextcloud
    return 2


def render(record: logging.LogRecord) -> str:
    """One line: the message, scrubbed again, with the exception's type (never a traceback:
    it can hold values the redactor does not know)."""
    try:
        message = record.getMessage()
    except Exception:
        message = str(record.msg)
    if record.exc_info and record.exc_info[0] is not None:
        message += f" ({record.exc_info[0].__name__})"
    elif record.exc_text:
        # The redactor turned the exception into text: its last line names the type.
        kind = record.exc_text.strip().rsplit("\n", 1)[-1].split(":", 1)[0].strip()
        if kind.replace(".", "").replace("_", "").isalnum():
            message += f" ({kind.rsplit('.', 1)[-1]})"
    name = record.name.removeprefix(SOURCE_LOGGER + ".")
    return REDACTOR.scrub(f"[{name}] {message}")[:MAX_MESSAGE]


@attrs.define
class ShipStats:
    sent: int = 0
    dropped_rate: int = 0  # over the rate limit
    dropped_full: int = 0  # the queue was full (Nextcloud not reachable for long)
    failed: int = 0
    held: int = 0  # times shipping waited: the app not enabled yet, or the budget paused

    def snapshot(self) -> dict[str, int]:
        return {k: v for k, v in attrs.asdict(self).items() if v}


class NextcloudLogHandler(logging.Handler):
    """Queues WARNING and above (thread-safe: records come from worker threads too); one task
    ships them while Nextcloud knows the app and the budget allows it."""

    def __init__(self, client: NextcloudClient, *, bucket: TokenBucket | None = None) -> None:
        super().__init__(level=logging.WARNING)
        self.addFilter(REDACTOR)
        self.client = client
        self.bucket = bucket or TokenBucket(capacity=BURST, per_second=PER_SECOND)
        self.stats = ShipStats()
        self.hold_seconds = HOLD_SECONDS
        self._queue: deque[tuple[int, str]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        if _SHIPPING.get() or self._loop is None or self._loop.is_closed():
            return
        try:
            item = (nextcloud_level(record.levelno), render(record))
        except Exception:
            return  # logging must never fail its caller
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._enqueue(item)
        else:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._enqueue, item)

    def _enqueue(self, item: tuple[int, str]) -> None:
        if not self.bucket.take():
            self.stats.dropped_rate += 1
            return
        if len(self._queue) >= QUEUE_MAX:
            self._queue.popleft()
            self.stats.dropped_full += 1
        self._queue.append(item)
        self._wake.set()

    def ready(self) -> bool:
        """Nextcloud has this app enabled (so the call cannot add a refused login) and the
        failure budget is not paused."""
        return self.client.app_enabled is True and not self.client.budget.spent

    async def run(self) -> None:
        """Ship until cancelled; what waits is sent once Nextcloud can take it."""
        _SHIPPING.set(True)
        while True:
            await self._wake.wait()
            self._wake.clear()
            held = False
            while self._queue:
                if not self.ready():
                    # Nothing tells this task when AppAPI knows us again or the budget lifts:
                    # look again in a while (no call is made meanwhile).
                    if not held:
                        self.stats.held += 1
                        held = True
                    await asyncio.sleep(self.hold_seconds)
                    continue
                held = False
                level, message = self._queue.popleft()
                await self._ship(level, message)

    async def _ship(self, level: int, message: str) -> None:
        try:
            result = await self.client.ocs(
                "POST", LOG_PATH, json_body={"level": level, "message": message}, timeout=5.0
            )
        except NextcloudError as exc:
            self.stats.failed += 1
            log.debug("a log line was not delivered to Nextcloud: %s", exc.kind)
            return
        if result.ok:
            self.stats.sent += 1
        else:
            self.stats.failed += 1
            log.debug("Nextcloud refused a log line: HTTP %s", result.http_status)

    def health(self, trusted: bool) -> dict[str, Any]:
        return self.stats.snapshot() if trusted else {}


HANDLER: web.AppKey[NextcloudLogHandler] = web.AppKey("nextcloud_log_handler")


def setup(app: web.Application, client: NextcloudClient) -> NextcloudLogHandler:
    """Attached to the connector's loggers while the app runs (and only then)."""
    handler = NextcloudLogHandler(client)
    # cli registers these for the local log; a connector built without cli (tests, embedding)
    # must not ship them either.
    for secret in (client.config.app_secret, client.config.hp_shared_key):
        REDACTOR.add(secret)
    app[HANDLER] = handler
    provide(app, "nextcloudLog", handler.health)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        handler.bind(asyncio.get_running_loop())
        source = logging.getLogger(SOURCE_LOGGER)
        source.addHandler(handler)
        task = spawn(handler.run(), name="nextcloud-log")
        yield
        source.removeHandler(handler)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(ctx)
    return handler
