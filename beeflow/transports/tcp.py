"""Legacy transport: TCP on APP_HOST:APP_PORT, behind Nextcloud's PHP proxy (NC 31, DSP, manual)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from beeflow.transports.base import Transport, TransportError
from beeflow.transports.guard import GuardedSite

log = logging.getLogger(__name__)

SOMAXCONN: Final = Path("/proc/sys/net/core/somaxconn")

# TCP carries the PHP proxy's requests and HaRP's (direct connect, Kubernetes) alike: which one
# a request came through, and so whether its reply streams, is the routing's to say.
ADVICE: Final = (
    "TCP: through Nextcloud's PHP proxy each reply arrives whole, when it ends; through HaRP "
    "(direct connect, Kubernetes) replies stream. `routing` shows which the requests took."
)
DEMO_ADVICE: Final = "Demo: the stand-in fronts stream replies as they are written."


def listen_backlog(wanted: int, somaxconn: Path = SOMAXCONN) -> int:
    """`wanted`, bounded by the kernel's cap, which listen() applies silently: the value in
    force, to report (as is where the cap cannot be read)."""
    try:
        cap = int(somaxconn.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return wanted
    return max(1, min(wanted, cap))


class TcpTransport(Transport):
    name = "legacy"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._site: GuardedSite | None = None
        self.backlog = self.config.listen_backlog

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
        wanted = self.config.listen_backlog
        self.backlog = await asyncio.to_thread(listen_backlog, wanted)
        if self.backlog < wanted:
            log.info(
                "listen backlog %d (BEEFLOW_LISTEN_BACKLOG=%d is over net.core.somaxconn)",
                self.backlog,
                wanted,
            )
        self._site = GuardedSite(
            runner,
            self.guard,
            host=self.config.app_host,
            port=self.config.app_port,
            backlog=self.backlog,
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
            "backlog": self.backlog,
            "advice": DEMO_ADVICE if self.config.demo else ADVICE,
        }
