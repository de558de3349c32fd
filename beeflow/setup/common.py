"""What the setup page's modules share: its per-app state (rate limits, the background
re-bootstrap), the JSON body reader, and the busy test."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import attrs
from aiohttp import web

from beeflow.errors import BadRequest, TooManyRequests
from beeflow.lease import FileWatch
from beeflow.limits import RateLimiter
from beeflow.setup.reachability import Reachability
from beeflow.tasks import spawn
from beeflow.tenant.wiring import BOOTSTRAPPER
from beeflow.web.auth import IDENTITY
from beeflow.web.bodies import read_capped

log = logging.getLogger(__name__)

MAX_BODY: Final = 16 * 1024
# Per Nextcloud user: probe 20/min, rebind 10/10 min, verify 10/10 min, sendCode 5/15 min;
# status is cheap but bounded. Rotating the key counts as a rebind ("save").
LIMITS: Final = {
    "status": (120, 60.0),
    "probe": (20, 60.0),
    "save": (10, 600.0),
    "verify": (10, 600.0),
    "send": (5, 900.0),
}


@attrs.define
class Rebootstrap:
    """Runs the tenant module's re-bootstrap in the background, one at a time; a save during a
    run makes exactly one more run follow it (the newest URL always gets provisioned)."""

    hook: Callable[[], Awaitable[None]] | None
    state: str = "idle"  # idle | running | done | failed | unavailable
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    _again: bool = False
    _task: asyncio.Task[None] | None = None

    def request(self) -> str:
        if self.hook is None:
            self.state = "unavailable"
            return "unavailable"
        if self._task is not None and not self._task.done():
            self._again = True
            return "queued"
        self._task = spawn(self._run(), name="setup-rebootstrap")
        return "started"

    async def _run(self) -> None:
        assert self.hook is not None
        while True:
            self._again = False
            self.state, self.error = "running", ""
            self.started_at, self.finished_at = time.time(), None
            try:
                await self.hook()
            except asyncio.CancelledError:
                self.state = "idle"
                raise
            except Exception as exc:
                self.state, self.error = "failed", (str(exc) or type(exc).__name__)[:300]
                log.warning("re-bootstrap after a setup change failed: %s", self.error)
            else:
                self.state = "done"
            self.finished_at = time.time()
            if not self._again:
                return

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.started_at is not None:
            out["startedAt"] = round(self.started_at, 3)
        if self.finished_at is not None:
            out["finishedAt"] = round(self.finished_at, 3)
        if self.error:
            out["error"] = self.error
        return out


@attrs.define
class SetupState:
    limits: dict[str, RateLimiter]
    page: str
    script: bytes
    script_etag: str
    saved: FileWatch  # setup-config.json, changed by another replica's save
    rebootstrap: Rebootstrap | None = None
    session: aiohttp.ClientSession | None = None
    loaded_from_file: bool = False
    # The saved choice in force here (its savedAt): another replica's save changes the file.
    applied_saved_at: float | None = None
    # The last health check of each service URL (the status reports the one in force).
    reachability: Reachability = attrs.field(factory=Reachability)


STATE: web.AppKey[SetupState] = web.AppKey("setup_state")


def state_of(request: web.Request) -> SetupState:
    return request.app[STATE]


def rebootstrap_of(app: web.Application) -> Rebootstrap:
    state = app[STATE]
    if state.rebootstrap is None:  # only an app without the tenant (tests of the page)
        state.rebootstrap = Rebootstrap(None)
    return state.rebootstrap


def limit(request: web.Request, bucket: str) -> None:
    limiter = state_of(request).limits[bucket]
    user = request[IDENTITY].user_id or "anonymous"
    if not limiter.hit(user):
        raise TooManyRequests(
            "Too many setup requests; wait a moment",
            retry_after=limiter.retry_after(user),
            code="rate_limited",
        )


async def json_body(request: web.Request) -> dict[str, Any]:
    """JSON objects only. Requiring application/json also keeps plain HTML forms out."""
    if request.content_type != "application/json":
        raise BadRequest("Send the request as application/json", code="json_required", status=415)
    raw = await read_capped(request, MAX_BODY)
    if raw is None:
        raise BadRequest("Request body too large", code="payload_too_large", status=413)
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than the parser's recursion limit ("[" * 15000).
        raise BadRequest("The body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object", code="invalid_json")
    return data


PENDING_FIELDS: Final = (
    "kind",
    "organizationName",
    "expiresAt",
    "attemptsLeft",
    "codeSent",
    "maskedEmail",
    "sentVia",
)


def busy(app: web.Application) -> bool:
    """A provisioning run, a re-bootstrap or the picker's background re-bootstrap is running,
    here or on another replica sharing the storage (it holds the tenant lease)."""
    boot = app.get(BOOTSTRAPPER)
    if boot is not None and boot.busy:
        return True
    if boot is not None and boot.lease is not None and boot.lease.held_elsewhere():
        return True
    return rebootstrap_of(app).state == "running"
