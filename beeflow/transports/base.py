"""The Transport contract: a parsed spec plus a class whose start()/stop() wrap _start()/_stop()."""

from __future__ import annotations

import abc
import logging
from typing import Any, ClassVar

from aiohttp import web

from beeflow.config import Config
from beeflow.transports.guard import ConnectionGuard

log = logging.getLogger(__name__)


class TransportError(Exception):
    """The transport cannot start (socket in use, frpc missing...): a clear start-up error."""


class Transport(abc.ABC):
    """Binds an AppRunner. Knows nothing about routes: only the runner and the config.

    Order: start() binds (_start) and logs one "listening on ..." line, then _started() (HaRP:
    start frpc, which must find the socket listening). stop(): before_close() (HaRP: stop frpc,
    while the socket still listens), runner.cleanup() (closes the listeners), _stop() (HaRP:
    remove the socket file)."""

    name: ClassVar[str]

    def __init__(self, config: Config) -> None:
        self.config = config
        self._runner: web.AppRunner | None = None
        # Connection count and request-head limits of this transport's listener.
        self.guard = ConnectionGuard(
            max_connections=config.max_connections,
            max_head_bytes=config.max_head_bytes,
            head_timeout=config.head_timeout_seconds,
        )

    @abc.abstractmethod
    def describe(self) -> str:
        """Where it listens, for the one 'listening on ...' log line."""

    async def start(self, runner: web.AppRunner) -> None:
        self._runner = runner
        await self._start(runner)
        log.info("listening on %s (%s mode)", self.describe(), self.name)
        await self._started()

    async def _started(self) -> None:  # noqa: B027 - optional hook
        """Called once the listeners accept connections."""

    async def before_close(self) -> None:  # noqa: B027 - optional hook
        """Called after in-flight requests drained and before listeners close (HaRP: stop frpc)."""

    async def stop(self) -> None:
        """Close the listeners (runner.cleanup) and whatever _stop() adds."""
        try:
            await self.before_close()
        finally:
            if self._runner is not None:
                await self._runner.cleanup()
            await self._stop()

    @abc.abstractmethod
    async def _start(self, runner: web.AppRunner) -> None: ...

    async def _stop(self) -> None:  # noqa: B027 - optional hook
        """Extra clean-up after the runner closed."""

    def abort(self) -> None:  # noqa: B027 - optional hook
        """Immediate exit (second Ctrl-C): synchronous, best effort, leave nothing behind."""

    def status(self) -> dict[str, Any]:
        """Advisory fields for the heartbeat, setup status and doctor."""
        return {
            "mode": self.name,
            "listening": self.describe(),
            "connections": self.guard.status(),
        }
