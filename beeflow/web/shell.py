"""The web UI shell from the service's front-end host (BEEFLOW_EMBED_BASE_URL + `/embed` + the
shell path); the bundled UI (beeflow.web.spa) answers when that host does not; and the shell a
browser navigation gets while the connector has no tenant key yet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from beeflow.config import CONFIG
from beeflow.web import spa
from beeflow.web.routing import ROUTING

log = logging.getLogger(__name__)

# Only what a browser needs to fetch a static file: never its cookies, credentials, Origin or
# Referer, nor anything AppAPI or HaRP added (the AppAPI secret among them).
REQUEST_HEADERS: Final = ("Accept", "Accept-Language", "If-None-Match", "If-Modified-Since")
# What of the host's answer describes the file. Its cookies never reach the browser, and its own
# CSP or frame options never replace the connector's security headers.
RESPONSE_HEADERS: Final = (
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Content-Language",
    "Cache-Control",
    "ETag",
    "Last-Modified",
    "Expires",
    "Vary",
)
NO_STORE: Final = "no-store"
INDEX_PATHS: Final = frozenset({"/", "/index.html"})
CONNECT_TIMEOUT: Final = 5.0
READ_TIMEOUT: Final = 15.0
CHUNK: Final = 64 * 1024


class EmbedHost:
    """The service's front-end host. `relay()` answers a shell request from it, or returns None
    when the bundled UI should answer instead (the host is unreachable after one retry, or has
    no such file, or failed with a 5xx)."""

    def __init__(self, base: URL, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.fallbacks = 0

    def target(self, request: web.Request) -> URL:
        """`/` -> `<base>/embed/`, `/assets/x.js?v=1` -> `<base>/embed/assets/x.js?v=1`."""
        path = str(self.base.with_query(None)).rstrip("/") + "/embed" + request.raw_path
        return URL(path, encoded=True)

    async def relay(self, request: web.Request) -> web.StreamResponse | None:
        if request.method not in ("GET", "HEAD"):
            return None
        headers = CIMultiDict(
            (name, request.headers[name]) for name in REQUEST_HEADERS if name in request.headers
        )
        # AppAPI decodes gzip'd HTML to inject its CSP nonce and answered an empty 200 for a
        # gzip shell (measured on Nextcloud 34): ask for plain bytes.
        headers["Accept-Encoding"] = "identity"
        url = self.target(request)
        upstream: aiohttp.ClientResponse | None = None
        for attempt in (1, 2):
            try:
                upstream = await self.session.request(
                    request.method, url, headers=headers, allow_redirects=False
                )
                break
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info(
                    "UI host %s: %s (%s)",
                    self.base.host,
                    type(exc).__name__,
                    "retrying" if attempt == 1 else "serving the bundled UI",
                )
        if upstream is None:
            self.fallbacks += 1
            return None
        try:
            if upstream.status == 404 or upstream.status >= 500:
                log.info(
                    "UI host answered %d for %s: serving the bundled UI", upstream.status, url.path
                )
                self.fallbacks += 1
                return None
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status)
        for name in RESPONSE_HEADERS:
            for value in upstream.headers.getall(name, []):
                response.headers.add(name, value)
        if request.path in INDEX_PATHS:
            response.headers["Cache-Control"] = NO_STORE
        await response.prepare(request)
        if request.method != "HEAD":
            try:
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Too late for the bundled UI: the status line is out. Cut the body short.
                log.warning("UI host failed mid-file (%s): %s", url_path(request), exc)
                if request.transport is not None:
                    request.transport.close()
                return response
        await response.write_eof()
        return response


def url_path(request: web.Request) -> str:
    return request.path[:200]


class _Dropped(aiohttp.ClientError):
    """The connection dropped before an answer (outside aiohttp's own replay, see below)."""


async def _one_retry_is_ours(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """aiohttp replays a GET once by itself when the connection drops; relay() retries every
    network error once, so aiohttp's replay would make it twice."""
    try:
        return await handler(req)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise _Dropped(str(exc) or type(exc).__name__) from exc


EMBED: web.AppKey[EmbedHost] = web.AppKey("embed_host")


def embed_host(app: web.Application) -> EmbedHost | None:
    return app.get(EMBED)


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    base = config.embed_base_url
    if base is None:
        yield
        return
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": f"ExApp/{config.app_id}/{config.app_version} (beeflow)"},
        skip_auto_headers=("Accept-Encoding",),
        middlewares=(_one_retry_is_ours,),
    ) as session:
        app[EMBED] = EmbedHost(base, session)
        log.info("UI shell from %s/embed (the bundled UI when it does not answer)", base)
        yield


def setup(app: web.Application) -> None:
    """The front-end host's client (opened and closed with the app), when one is configured."""
    app.cleanup_ctx.append(_session_ctx)


# ------------------------------------------------------------------ without a tenant key

SHELL_FALLBACK: Final = (
    b"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
    b"<title>Bee Flow</title></head><body><main><h1>Bee Flow is being set up</h1>"
    b"<p>The connector is not connected to the Bee Flow service yet. "
    b"Reload this page in a minute; if it stays like this, ask your administrator to open "
    b"the Bee Flow setup page.</p></main></body></html>"
)


def is_navigation(request: web.BaseRequest) -> bool:
    """A document navigation is a GET/HEAD whose Sec-Fetch-Mode is `navigate`, or, without
    Sec-Fetch-Mode, whose Accept names text/html (fetch()'s `*/*` is not one)."""
    if request.method not in ("GET", "HEAD"):
        return False
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode.strip().lower() == "navigate"
    return "text/html" in request.headers.get("Accept", "").lower()


def _read_shell(path: Path | None) -> bytes:
    if path is None:
        return SHELL_FALLBACK
    try:
        return path.read_bytes()
    except OSError:
        return SHELL_FALLBACK


async def keyless_shell(app: web.Application, request: web.BaseRequest) -> web.Response:
    """The UI shell while the connector cannot proxy yet: the SPA renders its own notice. The
    bundled UI comes from where beeflow.web.spa found it (an installed wheel's share/ too)."""
    index = spa.index_for(app.get(spa.SPA_DIR), app[ROUTING].streaming(request))
    body = await asyncio.to_thread(_read_shell, index)
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )
