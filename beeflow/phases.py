"""The /init pipeline's steps: each feature contributes its phases, lifecycle runs them in order
of progress."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from aiohttp import web


@attrs.frozen
class InitPhase:
    """One step of the /init pipeline. Phases with the same `progress` run concurrently; the
    pipeline reports `progress` to Nextcloud once all of them have finished."""

    name: str
    progress: int
    run: Callable[[], Awaitable[None]]


INIT_PHASES: web.AppKey[list[InitPhase]] = web.AppKey("init_phases")


def add_phase(app: web.Application, phase: InitPhase) -> None:
    app.setdefault(INIT_PHASES, []).append(phase)
