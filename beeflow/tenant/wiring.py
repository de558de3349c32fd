"""The tenant in the app: its state, the bootstrapper (the /init phase at progress 25, loaded at
start-up, closed at shutdown), the admin's rotation, and its health fields."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from beeflow.config import Config
from beeflow.health import provide
from beeflow.lease import LEASES
from beeflow.nextcloud.client import NextcloudClient
from beeflow.phases import InitPhase, add_phase
from beeflow.service_client import ServiceClient
from beeflow.tenant.bootstrap import Bootstrapper
from beeflow.tenant.discovery import host_instance_id
from beeflow.tenant.health import tenant_health
from beeflow.tenant.rotation import Rotation
from beeflow.tenant.shared import TENANT_FILES, TenantFiles
from beeflow.tenant.state import TENANT, TenantState
from beeflow.tenant.store import TenantStore

BOOTSTRAPPER: web.AppKey[Bootstrapper] = web.AppKey("bootstrapper")
TENANT_LEASE: Final = "tenant"  # held while provisioning or re-provisioning
ROTATION: web.AppKey[Rotation] = web.AppKey("rotation")


def bootstrapper(app: web.Application) -> Bootstrapper:
    return app[BOOTSTRAPPER]


def initial_state(config: Config) -> TenantState:
    """Before anything is loaded: the host-keyed instance id (known without any call; a cached
    binding or capabilities that expose the real id replace it), and the key from the
    environment when one is set."""
    state = TenantState(instance_id=host_instance_id(config.public_nextcloud_url))
    if config.tenant_key_env:
        state.key = config.tenant_key_env
        state.status = "ok"
        state.source = "env"
    return state


def install(
    app: web.Application,
    config: Config,
    state: TenantState,
    nextcloud: NextcloudClient,
    service: ServiceClient,
) -> Bootstrapper:
    app[TENANT] = state
    boot = Bootstrapper(
        config,
        state,
        TenantStore(config.persistent_storage),
        nextcloud,
        service,
        service.service_url,
    )
    if config.pairing_code and not config.tenant_key_env:
        # Used by the first bootstrap; load() drops it when a cached key already exists.
        boot.pairing_code = config.pairing_code
    app[BOOTSTRAPPER] = boot
    app[ROTATION] = Rotation(boot)
    # Replicas on one storage: one provisions at a time, all re-read what it wrote.
    files = app[TENANT_FILES] = TenantFiles(boot)
    boot.lease = app[LEASES].get(TENANT_LEASE) if LEASES in app else None
    boot.reread = files.reload
    # Skipped when the key is explicit or cached; a failure is recorded, retried with backoff
    # and shown in the heartbeat, but does not fail the install.
    add_phase(app, InitPhase("bootstrap", 25, boot.ensure))
    provide(app, "bootstrap", functools.partial(tenant_health, state))

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await boot.load()
        files.mark()
        files.start()
        yield
        await files.stop()
        await boot.close()

    app.cleanup_ctx.append(ctx)
    return boot
