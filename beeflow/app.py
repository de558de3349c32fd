"""make_app(config): the web.Application, its middleware, routes and resources. Binds nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from beeflow import lease, lifecycle, storage
from beeflow.config import CONFIG, Config
from beeflow.health import HEALTH
from beeflow.integrations import (
    assistant,
    automations,
    events,
    files_action,
    occ_commands,
    studio,
    studio_routes,
    talk,
    userevents,
    usersync,
)
from beeflow.integrations.userevents import UserEvents
from beeflow.nextcloud import client as nextcloud
from beeflow.nextcloud import (
    files_actions,
    occ,
    settings,
    setup_checks,
    talk_bot,
    task_processing,
    ui,
    webhooks,
)
from beeflow.nextcloud import log as nextcloud_log
from beeflow.nextcloud.users import USERS, UserDirectory
from beeflow.phases import INIT_PHASES
from beeflow.proxy import service as service_proxy
from beeflow.proxy.nc import handler as nc_proxy
from beeflow.service_client import ServiceClient, ServiceUrl
from beeflow.service_client import install as install_service_client
from beeflow.setup import admin_form
from beeflow.setup import routes as setup_page
from beeflow.tenant import wiring as tenant
from beeflow.web import (
    access_log,
    auth,
    csrf,
    draining,
    errors,
    parser_log,
    routing,
    security_headers,
    static,
)

# Generous for uploads through /api (the /nc proxy streams its bodies itself).
CLIENT_MAX_SIZE = 64 * 1024 * 1024


async def _settle_storage(app: web.Application) -> AsyncIterator[None]:
    """First in, last out: no state file write may outlive the app."""
    yield
    await storage.settle()


def make_app(config: Config, *, run_at_boot: bool = True) -> web.Application:
    """Build the application. Middleware order, outermost first, and why:
    0. access_log: logs a request whose client left (the rest is logged after each answer is
       sent, by the access logger in handler_args); outermost, so no cancellation escapes it.
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
            # One line per answer sent, after it is sent (off unless asked: web/access_log.py).
            **access_log.handler_args(config),
        },
    )
    app[CONFIG] = config
    app[INIT_PHASES] = []
    app[HEALTH] = {}
    access_log.install(app)
    errors.install(app)
    draining.install(app)
    csrf.install(app)
    auth.install(app)
    security_headers.install(app)
    # How each request came in (HaRP or the PHP proxy): the proxies' framing, the UI build and
    # the embed script all take this one decision.
    routing.install(app, config)
    app.cleanup_ctx.append(_settle_storage)
    # Singleton work (bootstrap, registrations, user sync) takes a lease on the shared storage,
    # so replicas on one volume do it once (docs/deployments.md); released after all of it.
    lease.install(app, config.persistent_storage, config.lease_ttl_seconds)

    # Shared services, each built once with what it uses; their sessions open with the app.
    nc_client = nextcloud.NextcloudClient(config)
    nextcloud.install(app, nc_client)
    # Warnings and errors into nextcloud.log too (the same redactor; never while paused).
    nextcloud_log.setup(app, nc_client)
    app[USERS] = UserDirectory(nc_client)
    # A request with the valid secret: the client may lift its paused failure budget.
    auth.on_trusted_request(app, lambda _request: nc_client.trusted_request_seen())
    state = tenant.initial_state(config)
    service = ServiceClient(config, ServiceUrl.from_config(config), state)
    install_service_client(app, service)
    sink = UserEvents(service, config.persistent_storage, config.sync_interval_seconds)
    userevents.install(app, sink)
    boot = tenant.install(app, config, state, nc_client, service)

    # Features. Connector-owned paths first; the static UI routes last (its GETs are the most
    # generic). One line per registration surface of Nextcloud's (beeflow.nextcloud.surface).
    lifecycle.setup(app, nc_client, run_at_boot=run_at_boot)
    ui.setup(app)
    webhooks.setup(app, key=lambda: state.key, instance_id=lambda: state.instance_id)
    files_actions.setup(app, nc_client)
    files_action.install(app)
    setup_checks.setup(app, nc_client, app[USERS])
    occ.setup(app, nc_client, config.app_id)
    task_processing.setup(app)
    talk_bot.setup(app)
    events.install(app)
    automations.install(app)
    usersync.install(
        app,
        usersync.UserSync(
            config, config.persistent_storage / usersync.STATE_FILE, state, nc_client, sink
        ),
    )
    occ_commands.install(app)
    studio_routes.install(app, studio.StudioMenus(config, nc_client, service, state))
    assistant.install(app)
    talk.install(app)
    setup_page.install(app)
    form = settings.SettingsForm(nc_client)
    admin = admin_form.AdminForm(
        config, form, nc_client, service.service_url, state, boot, app[tenant.ROTATION]
    )
    settings.install(app, form, admin.view)
    admin_form.install(app, admin)
    service_proxy.setup(app)
    nc_proxy.setup(app)
    static.setup(app)
    # Last: the USER catch-all forwarding every path no route above took to the service.
    service_proxy.setup_catch_all(app)
    return app
