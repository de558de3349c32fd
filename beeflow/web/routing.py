"""How each request reached the connector, decided per request: through Nextcloud's PHP proxy,
which delivers a reply only once it is complete (legacy framing), or through HaRP, which streams
(docs/deployments.md, "Routing, per request"). One decision for the proxies' framing, the UI
build and the embed script, and a record of what was seen for the heartbeat, the setup status
and doctor.

The facts it rests on (docs/appapi-harp-contract.md §1.3 and §4.1):
* AppAPI's PHP proxy adds `X-Origin-IP` to every request it forwards and drops any copy the
  client sent; HaRP adds none to a browser's request. So `X-Origin-IP` present: the PHP proxy.
* HaRP overwrites `AA-VERSION` with the constant "32" on everything it forwards; AppAPI itself
  sends its own version ("32.0.0"). So a request stamped "32" went through HaRP, even when the
  PHP proxy sent it there first (in a HaRP deployment the PHP proxy calls /exapps/<app>/...).

HaRP direct connect and Kubernetes start the ExApp without HP_* on TCP, like the Docker Socket
Proxy: the transport cannot tell them apart, the requests can. BEEFLOW_ROUTING=harp|php forces
one answer for every request (a proxy in front that strips or adds the header).
"""

from __future__ import annotations

import time
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.config import Config
from beeflow.health import provide
from beeflow.serde import iso_utc
from beeflow.web.auth import on_trusted_request

HARP: Final = "harp"
PHP: Final = "php"
AUTO: Final = "auto"
ORIGIN_IP: Final = "X-Origin-IP"
HARP_AA_VERSION: Final = "32"  # what HaRP writes into AA-VERSION (contract §1.3)


def via_php_proxy(request: web.BaseRequest) -> bool:
    """Nextcloud's PHP proxy forwarded it (it always adds X-Origin-IP, HaRP never does)."""
    return ORIGIN_IP in request.headers


def stamped_by_harp(request: web.BaseRequest) -> bool:
    """HaRP forwarded it: its HAProxy overwrites AA-VERSION with "32"."""
    return request.headers.get("AA-VERSION", "").strip() == HARP_AA_VERSION


@attrs.define
class Routing:
    """The per-request decision (under an optional override) and what was seen.

    `seen` counts only requests that bore the AppAPI secret (the caller, web.auth's trusted
    signal, guarantees it), so nobody can make the connector report a routing by sending a
    header: HaRP when stamped by HaRP, the PHP proxy when forwarded by it without HaRP; AppAPI's
    own calls straight to the connector (no stamp, no X-Origin-IP) count as neither."""

    override: str = AUTO
    harp_transport: bool = False
    harp_requests: int = 0
    php_requests: int = 0
    direct_requests: int = 0
    harp_at: float | None = None
    php_at: float | None = None

    def framing(self, request: web.BaseRequest) -> str:
        """PHP: the reply goes back through the PHP proxy, which buffers it whole (legacy
        framing, idle cap, no keep-alive comments); HARP: it streams."""
        if self.override != AUTO:
            return self.override
        return PHP if via_php_proxy(request) else HARP

    def streaming(self, request: web.BaseRequest) -> bool:
        return self.framing(request) == HARP

    def embed(self, request: web.BaseRequest) -> str:
        """Where the embed script frames the UI. Nextcloud loads the script itself through the
        PHP proxy, so its request always carries X-Origin-IP; whether HaRP is in use shows in
        the HaRP stamp (the PHP proxy of a HaRP deployment goes through HaRP) or the tunnel.
        Without either, the PHP proxy: every deployment has it, only HaRP has /exapps/."""
        if self.override != AUTO:
            return self.override
        return HARP if self.harp_transport or stamped_by_harp(request) else PHP

    def note(self, request: web.BaseRequest) -> None:
        """A request bearing the valid secret arrived: what does it say about the routing?"""
        now = time.time()
        if stamped_by_harp(request):
            self.harp_requests += 1
            self.harp_at = now
        elif via_php_proxy(request):
            self.php_requests += 1
            self.php_at = now
        else:
            self.direct_requests += 1

    @property
    def seen(self) -> str | None:
        """HARP once any request came through HaRP (a HaRP deployment also sends the scripts
        through the PHP proxy, which goes on to HaRP); PHP when only the PHP proxy was seen."""
        if self.harp_requests:
            return HARP
        if self.php_requests:
            return PHP
        return None

    def expected(self) -> str:
        """The routing to describe (setup page, heartbeat notes) before any request says: the
        override, else what was seen, else the transport's usual one."""
        if self.override != AUTO:
            return self.override
        return self.seen or (HARP if self.harp_transport else PHP)

    def health(self, trusted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"seen": self.seen, "mode": self.override}
        if trusted:
            out["harpRequests"] = self.harp_requests
            out["phpProxyRequests"] = self.php_requests
            out["directRequests"] = self.direct_requests
            out["lastHarpAt"] = iso_utc(self.harp_at)
            out["lastPhpProxyAt"] = iso_utc(self.php_at)
        return out


ROUTING: web.AppKey[Routing] = web.AppKey("routing")


def install(app: web.Application, config: Config) -> Routing:
    """The decision under ROUTING, fed by every request bearing the secret, in the health
    fields as `routing` (doctor's deploy-daemon check reads `routing.seen`)."""
    routing = app[ROUTING] = Routing(override=config.routing, harp_transport=config.harp)
    on_trusted_request(app, routing.note)
    provide(app, "routing", routing.health)
    return routing
