"""Legacy transport: TCP on APP_HOST:APP_PORT, behind Nextcloud's PHP proxy (NC 31, DSP, manual)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from beeflow.transports.base import Transport, TransportError
from beeflow.transports.guard import GuardedSite


class TcpTransport(Transport):
    name = "legacy"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._site: GuardedSite | None = None

    def describe(self) -> str:
        host = self.config.app_host
        port = self.bound_port or self.config.app_port
        return f"http://{host}:{port}"

    @property
    def bound_port(self) -> int | None:
        """The real port (useful when APP_PORT asked for an ephemeral one in tests)."""
        if self._runner is None or self._site is None:
            return None
        for address in self._runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                return int(address[1])
        return None

    async def _start(self, runner: web.AppRunner) -> None:
        self._site = GuardedSite(
            runner, self.guard, host=self.config.app_host, port=self.config.app_port
        )
        try:
            await self._site.start()
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {self.config.app_host}:{self.config.app_port}: "
                f"{exc.strerror or exc}"
            ) from None

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.name,
            "connections": self.guard.status(),
            "advice": (
                "Legacy mode: Nextcloud's PHP proxy delivers each reply whole, when it ends; "
                "streamed chat replies need HaRP (Nextcloud 32+)."
            ),
        }
