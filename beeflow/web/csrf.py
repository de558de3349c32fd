"""Browser writes from anywhere but Nextcloud's own origins are refused: AppAPI and HaRP do no CSRF
check, and the user's Nextcloud session cookie authenticates whatever a page makes the browser
send through them, so we do (docs/security.md, "Browser-facing protections").

A write (any method but GET, HEAD, OPTIONS) is judged by what a page cannot forge:

1. `Sec-Fetch-Site: cross-site`: refused (`cross_site_request_blocked`).
2. An `Origin` (other than `null`) must be one of Nextcloud's origins, else refused
   (`origin_not_allowed`); `Sec-Fetch-Site: same-site` is not enough (a sibling subdomain
   gets Nextcloud's Lax cookies too).
3. Without one (or with `null`), a `Referer` must be, the same way.
4. With neither, the browser's own `Sec-Fetch-Site: same-origin` (or `none`) passes, any other
   `Sec-Fetch-Site` or a bare `Origin: null` (a sandboxed frame, a data: URL) is refused.
5. No browser context at all (server-to-server: AppAPI, webhooks, the service's `/nc` calls)
   is left to the route's own authentication.

Nextcloud's origins are the configured ones (NEXTCLOUD_URL, BEEFLOW_NC_PUBLIC_URL) and the
one observed on the request itself: the `Host` the browser addressed (AppAPI's PHP proxy and
HaRP pass it on), with the scheme's default port when it names none.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from aiohttp import web
from yarl import URL

from beeflow.config import CONFIG, Config
from beeflow.errors import Forbidden
from beeflow.web.responses import Handler

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# What a host of an http(s) origin can hold once parsed (IDNA names arrive as xn--, IPv6 bare).
_HOST: Final = re.compile(r"^[a-z0-9._:-]+$")

Origin = tuple[str, str, int]  # scheme, host (lower case), port


@functools.lru_cache(maxsize=256)
def origin_of(text: str) -> Origin | None:
    """(scheme, host, port) of an http(s) URL or serialized origin; None for anything else."""
    try:
        url = URL(text.strip())
    except ValueError:
        return None
    scheme = (url.scheme or "").lower()
    host = (url.raw_host or "").lower().rstrip(".")
    if scheme not in _DEFAULT_PORTS or not _HOST.match(host) or url.port is None:
        return None
    return scheme, host, url.port


def configured_origins(config: Config) -> frozenset[Origin]:
    out = {origin_of(str(url)) for url in (config.nextcloud_url, config.public_nextcloud_url)}
    return frozenset(origin for origin in out if origin is not None)


def _observed(origin: Origin, host_header: str | None) -> bool:
    """The Origin names the host (and port) the browser sent this very request to."""
    if not host_header:
        return False
    return origin_of(f"{origin[0]}://{host_header.strip()}") == origin


_ORIGINS: web.AppKey[frozenset[Origin]] = web.AppKey("csrf_origins")


def _allowed(request: web.Request, text: str) -> bool:
    origin = origin_of(text)
    if origin is None:
        return False
    return origin in request.app[_ORIGINS] or _observed(origin, request.headers.get("Host"))


def _refuse(code: str, message: str) -> Forbidden:
    return Forbidden(message, code=code)


def check(request: web.Request) -> None:
    """Raise Forbidden for a write a browser was made to send from another origin."""
    headers = request.headers
    site = headers.get("Sec-Fetch-Site", "").strip().lower()
    if site == "cross-site":
        raise _refuse("cross_site_request_blocked", "Cross-site requests are not accepted.")
    origin = headers.get("Origin")
    if origin is not None and origin.strip().lower() != "null":
        if not _allowed(request, origin):
            raise _refuse(
                "origin_not_allowed",
                "Requests from this origin are not accepted: only Nextcloud's own pages may "
                "send them",
            )
        return
    referer = headers.get("Referer")
    if referer:
        if not _allowed(request, referer):
            raise _refuse(
                "origin_not_allowed",
                "Requests from this page are not accepted: only Nextcloud's own pages may "
                "send them",
            )
        return
    if site in ("same-origin", "none"):
        return
    if site or origin is not None:
        raise _refuse(
            "origin_not_allowed",
            "The browser did not say this request comes from Nextcloud's own pages",
        )


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in SAFE_METHODS:
        check(request)
    return await handler(request)


def install(app: web.Application) -> None:
    app[_ORIGINS] = configured_origins(app[CONFIG])
    app.middlewares.append(csrf_middleware)
