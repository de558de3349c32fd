"""Cross-site browser writes are refused: AppAPI and HaRP do no CSRF check, so we do
(docs/security.md, "Browser-facing protections")."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from beeflow.errors import Forbidden
from beeflow.web.responses import Handler

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Browsers mark cross-site writes with `Sec-Fetch-Site: cross-site`. Server-to-server
    calls carry no Sec-Fetch-Site and are judged by their signature."""
    if (
        request.method not in SAFE_METHODS
        and request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"
    ):
        raise Forbidden(
            "Cross-site requests are not accepted by this app.",
            code="cross_site_request_blocked",
        )
    return await handler(request)


def install(app: web.Application) -> None:
    app.middlewares.append(csrf_middleware)
