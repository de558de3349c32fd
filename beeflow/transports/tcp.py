"""Legacy transport: TCP on APP_HOST:APP_PORT, behind Nextcloud's PHP proxy (NC 31, DSP, manual)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from beeflow.transports.base import Transport, TransportError


class TcpTransport(Transport):
    name = "legacy"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._site: web.TCPSite | None = None

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
        self._site = web.TCPSite(
            runner, self.config.app_host, self.config.app_port, reuse_address=True
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
            "advice": (
                "Legacy mode: Nextcloud's PHP proxy delivers each reply whole, when it ends; "
                "streamed chat replies need HaRP (Nextcloud 32+)."
            ),
        }
