"""make_app(config): the web.Application, its middleware, routes and resources. Binds nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from beeflow import lifecycle, storage
from beeflow.config import CONFIG, Config
from beeflow.health import HEALTH
from beeflow.integrations import assistant, events, talk, userevents, usersync
from beeflow.integrations.userevents import UserEvents
from beeflow.nextcloud import client as nextcloud
from beeflow.nextcloud import talk_bot, task_processing, ui
from beeflow.nextcloud.users import USERS, UserDirectory
from beeflow.phases import INIT_PHASES
from beeflow.proxy import service as service_proxy
from beeflow.proxy.nc import handler as nc_proxy
from beeflow.service_client import ServiceClient, ServiceUrl
from beeflow.service_client import install as install_service_client
from beeflow.setup import routes as setup_page
from beeflow.tenant import wiring as tenant
from beeflow.web import auth, csrf, draining, errors, parser_log, security_headers, static

# Generous for uploads through /api (the /nc proxy streams its bodies itself).
CLIENT_MAX_SIZE = 64 * 1024 * 1024


async def _settle_storage(app: web.Application) -> AsyncIterator[None]:
    """First in, last out: no state file write may outlive the app."""
    yield
    await storage.settle()


def make_app(config: Config, *, run_at_boot: bool = True) -> web.Application:
    """Build the application. Middleware order, outermost first, and why:
    1. errors: everything below may raise; one place turns it into JSON with a code.
    2. draining: during shutdown new requests get 503 before any work is done.
    3. csrf: a cross-site browser write is refused before authentication spends anything.
    4. auth: authenticates by the matched route's access level, last so it sees the route.
    """
    app = web.Application(
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
            "logger": parser_log.http_logger(),
        },
    )
    app[CONFIG] = config
    app[INIT_PHASES] = []
    app[HEALTH] = {}
    errors.install(app)
    draining.install(app)
    csrf.install(app)
    auth.install(app)
    security_headers.install(app)
    app.cleanup_ctx.append(_settle_storage)

    # Shared services, each built once with what it uses; their sessions open with the app.
    nc_client = nextcloud.NextcloudClient(config)
    nextcloud.install(app, nc_client)
    app[USERS] = UserDirectory(nc_client)
    # A request with the valid secret: the client may lift its paused failure budget.
    auth.on_trusted_request(app, lambda _request: nc_client.trusted_request_seen())
    state = tenant.initial_state(config)
    service = ServiceClient(config, ServiceUrl.from_config(config), state)
    install_service_client(app, service)
    sink = UserEvents(service, config.persistent_storage, config.sync_interval_seconds)
    userevents.install(app, sink)
    tenant.install(app, config, state, nc_client, service)

    # Features. Connector-owned paths first; the static UI routes last (its GETs are the most
    # generic). One line per registration surface of Nextcloud's (beeflow.nextcloud.surface).
    lifecycle.setup(app, nc_client, run_at_boot=run_at_boot)
    ui.setup(app)
    task_processing.setup(app)
    talk_bot.setup(app)
    events.install(app)
    usersync.install(
        app,
        usersync.UserSync(
            config, config.persistent_storage / usersync.STATE_FILE, state, nc_client, sink
        ),
    )
    assistant.install(app)
    talk.install(app)
    setup_page.install(app)
    service_proxy.setup(app)
    nc_proxy.setup(app)
    static.setup(app)
    # Last: the USER catch-all forwarding every path no route above took to the service.
    service_proxy.setup_catch_all(app)
    return app
