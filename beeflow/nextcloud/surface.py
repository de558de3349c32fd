"""How an AppAPI registration surface (top menu, settings, Files actions, webhooks...) plugs into
the app: the /init phases it contributes, its health fields and its teardown on disable."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
from aiohttp import web

from beeflow.errors import NextcloudError
from beeflow.health import HealthProvider, provide
from beeflow.nextcloud.client import NextcloudClient
from beeflow.phases import REGISTRATIONS, InitPhase, add_phase

log = logging.getLogger(__name__)


@attrs.frozen
class Surface:
    """One registration surface. `phases` run in the /init pipeline; `health` adds its fields
    under `name`; `teardown` runs when Nextcloud disables the app (PUT /enabled?enabled=0)."""

    name: str
    phases: Sequence[InitPhase]
    health: HealthProvider
    teardown: Callable[[], Awaitable[None]] | None = None


SURFACES: web.AppKey[list[Surface]] = web.AppKey("surfaces")


def install(app: web.Application, surface: Surface) -> None:
    """The one line of wiring a surface needs (app.py calls it once per surface). Its phases
    run under the registrations lease unless they name another: one replica registers at a
    time."""
    for phase in surface.phases:
        add_phase(app, phase if phase.lease else attrs.evolve(phase, lease=REGISTRATIONS))
    provide(app, surface.name, surface.health)
    app.setdefault(SURFACES, []).append(surface)


async def teardown_all(app: web.Application) -> None:
    """Every surface's teardown; one that fails is logged and the others still run."""
    for surface in app.get(SURFACES, ()):
        if surface.teardown is None:
            continue
        try:
            await surface.teardown()
        except Exception:
            log.exception("teardown of %s failed", surface.name)


class Registrations:
    """What the last registration run did, per item (for the heartbeat of trusted callers)."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def snapshot(self) -> dict[str, Any]:
        return dict(self.items)

    def health(self, trusted: bool) -> dict[str, Any]:
        return self.snapshot() if trusted else {}


def register_item(
    client: Callable[[], NextcloudClient],
    status: Registrations,
    item: str,
    path: str,
    body: Mapping[str, Any],
    *,
    warmup: float,
) -> Callable[[], Awaitable[None]]:
    """A phase that POSTs one registration to AppAPI. An answer saying it is already there
    counts as registered (AppAPI 32 answers a repeat 200, older ones 409)."""

    async def run() -> None:
        try:
            result = await client().ocs(
                "POST", path, json_body=dict(body), timeout=5.0, warmup=warmup
            )
        except NextcloudError as exc:
            status.items[item] = "failed"
            raise RuntimeError(f"registering the {item} failed: {exc}") from None
        if result.exists:
            status.items[item] = "registered"
            return
        if result.ok:
            status.items[item] = "registered"
            log.info("registered the %s with AppAPI", item)
            return
        status.items[item] = "failed"
        detail = f"HTTP {result.http_status}"
        if result.statuscode is not None:
            detail += f", OCS {result.statuscode}"
        if result.message:
            detail += f": {result.message[:200]}"
        raise RuntimeError(f"registering the {item} failed ({detail})")

    return run
