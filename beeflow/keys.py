"""Every shared web.AppKey and RequestKey (a module-private key may live beside its owner)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from beeflow.appapi import Identity, RoutePolicy
    from beeflow.config import Config
    from beeflow.nextcloud import NextcloudClient, UserDirectory
    from beeflow.state import ApiBase, Draining, HealthProvider, InitPhase
    from beeflow.tenant import TenantState

CONFIG: web.AppKey[Config] = web.AppKey("config")
TENANT: web.AppKey[TenantState] = web.AppKey("tenant")
NEXTCLOUD: web.AppKey[NextcloudClient] = web.AppKey("nextcloud")
USERS: web.AppKey[UserDirectory] = web.AppKey("users")
ROUTE_POLICIES: web.AppKey[dict[Any, RoutePolicy]] = web.AppKey("route_policies")
DRAINING: web.AppKey[Draining] = web.AppKey("draining")
# Filled by cli from the transport (HaRP: the frpc supervisor's snapshot); read by the heartbeat,
# the setup status and doctor (TCP mode: the legacy-mode advisory).
TUNNEL_STATUS: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("tunnel_status")

# Features append their /init phases and health providers in their setup(); lifecycle runs them.
INIT_PHASES: web.AppKey[list[InitPhase]] = web.AppKey("init_phases")
HEALTH: web.AppKey[dict[str, HealthProvider]] = web.AppKey("health")

# Called (cheaply, synchronously) whenever a request bears the valid AppAPI secret.
ON_TRUSTED: web.AppKey[Callable[[web.Request], None]] = web.AppKey("on_trusted")

# The service base URL in force (mutable: the setup picker changes it live).
API_BASE: web.AppKey[ApiBase] = web.AppKey("api_base")
# Set by the tenant module: forget the key and provision again in the background (setup picker).
REBOOTSTRAP: web.AppKey[Callable[[], Awaitable[None]]] = web.AppKey("rebootstrap")

# Per request: who AppAPI says is calling, set by the AppAPI middleware on every routed request.
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
