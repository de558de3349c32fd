"""Security headers on every response, streamed ones included: the page may be framed only by
Nextcloud's own origins, and nothing is sniffed, referred or indexed."""

from __future__ import annotations

from aiohttp import web

from beeflow.config import CONFIG, Config


def frame_ancestors(config: Config) -> str:
    """Nextcloud's own origins (and the configured embedders); never the request's Origin."""
    origins: list[str] = []
    for url in (config.nextcloud_url, config.public_nextcloud_url):
        origin = str(url.origin())
        if origin not in origins:
            origins.append(origin)
    for origin in config.trusted_embed_origins:
        if origin not in origins:
            origins.append(origin)
    return "frame-ancestors 'self' " + " ".join(origins)


def confined_policy(config: Config) -> str:
    """The policy of every answer a proxy relays from an upstream onto Nextcloud's origin (the
    service's, and Nextcloud's own on /nc): nothing in it may run script, load anything, submit
    a form or act as Nextcloud's origin (`sandbox` gives it an opaque one), and it may be framed
    only where the connector's own pages may (docs/security.md, "Browser-facing protections")."""
    return "default-src 'none'; sandbox; " + frame_ancestors(config)


_CSP: web.AppKey[str] = web.AppKey("csp")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", request.app[_CSP])
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Robots-Tag"] = "noindex, nofollow"
    headers["X-Permitted-Cross-Domain-Policies"] = "none"


def install(app: web.Application) -> None:
    """on_response_prepare sees every response, streamed ones before their first byte."""
    app[_CSP] = frame_ancestors(app[CONFIG])
    app.on_response_prepare.append(_security_headers)
