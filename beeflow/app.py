"""make_app(config): the web.Application, its middleware, routes and resources. Binds nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from beeflow import appapi, events, keys, lifecycle, middleware, static, tenant, ui, usersync
from beeflow import setup as setup_picker
from beeflow.config import Config
from beeflow.nextcloud import UserDirectory, session_context
from beeflow.proxy import saas as saas_proxy
from beeflow.proxy.nc import handler as nc_proxy
from beeflow.state import ApiBase, Draining

# Generous for uploads through /api (the /nc proxy streams its bodies itself).
CLIENT_MAX_SIZE = 64 * 1024 * 1024


async def _nextcloud_ctx(app: web.Application) -> AsyncIterator[None]:
    async for client in session_context(app[keys.CONFIG]):
        app[keys.NEXTCLOUD] = client
        app[keys.USERS] = UserDirectory(client)
        yield


def make_app(config: Config, *, run_at_boot: bool = True) -> web.Application:
    """Build the application. Middleware order, outermost first, and why:
    1. error_middleware: everything below may raise; one place turns it into JSON with a code.
    2. draining: during shutdown new requests get 503 before any work is done.
    3. csrf: a cross-site browser write is refused before authentication spends anything.
    4. appapi: authenticates by the matched route's access level, last so it sees the route.
    """
    app = web.Application(
        middlewares=[
            middleware.error_middleware,
            middleware.draining_middleware,
            middleware.csrf_middleware,
            appapi.appapi_middleware,
        ],
        client_max_size=CLIENT_MAX_SIZE,
        handler_args={
            "max_field_size": 16384,
            "max_line_size": 16384,
            # aiohttp has no request-head timeout; its keep-alive timer also runs from the
            # moment a connection opens or goes idle, so it bounds a slow or silent client
            # (its default, 3630 s, bounds nothing in practice). See docs/bad-input.md.
            "keepalive_timeout": config.client_header_timeout_seconds,
            # Request bodies arrive as sent: nobody we serve compresses them, and decoding on
            # the way in would hash, spool and forward different bytes than the ones labelled
            # by Content-Encoding (a small gzip body can inflate to GiBs). The proxies refuse
            # an encoded body with 415 content_encoding_unsupported.
            "auto_decompress": False,
            # Parser refusals logged as one line, without the quoted request bytes.
            "logger": middleware.http_logger(),
        },
    )
    app[keys.CONFIG] = config
    app[keys.DRAINING] = Draining()
    app[keys.INIT_PHASES] = []
    app[keys.HEALTH] = {}
    app[keys.API_BASE] = ApiBase(
        config.api_base_url, "env" if config.api_base_url_from_env else "default"
    )
    middleware.install_security_headers(app)
    appapi.setup(app)
    app.cleanup_ctx.append(_nextcloud_ctx)
    tenant.setup(app)
    # Feature routes. Connector-owned paths first; the static SPA routes last (its GETs are the
    # most generic).
    lifecycle.setup(app, run_at_boot=run_at_boot)
    ui.setup(app)
    events.setup(app)
    usersync.setup(app)
    setup_picker.setup(app)
    saas_proxy.setup(app)
    nc_proxy.setup(app)
    static.setup(app)
    # Last: the USER catch-all forwarding every path no route above took to the service.
    saas_proxy.setup_catch_all(app)
    return app
