"""The /init pipeline's steps: each feature contributes its phases, lifecycle runs them in order
of progress."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import attrs
from aiohttp import web

# The lease every registration surface's phases run under (beeflow.nextcloud.surface): one
# replica registers at a time (docs/architecture.md, "Adding a registration surface").
REGISTRATIONS: Final = "registrations"


@attrs.frozen
class InitPhase:
    """One step of the /init pipeline. Phases with the same `progress` run concurrently; the
    pipeline reports `progress` to Nextcloud once all of them have finished. A phase with a
    `lease` runs only while this process holds that lease on the shared storage (replicas on
    one volume take turns; beeflow.lease)."""

    name: str
    progress: int
    run: Callable[[], Awaitable[None]]
    lease: str | None = None


INIT_PHASES: web.AppKey[list[InitPhase]] = web.AppKey("init_phases")


def add_phase(app: web.Application, phase: InitPhase) -> None:
    app.setdefault(INIT_PHASES, []).append(phase)
