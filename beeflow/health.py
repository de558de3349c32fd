"""The advisory fields of /heartbeat, /setup/status and doctor: what each feature contributes, and
the one collector that asks them all."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

# A health provider contributes advisory fields under its name. It is called with trusted=True
# only for callers who may see details (administrators, doctor in the container); it must be
# cheap and free of I/O.
HealthProvider = Callable[[bool], dict[str, Any]]

HEALTH: web.AppKey[dict[str, HealthProvider]] = web.AppKey("health")
# The transport's status (HaRP: the frpc supervisor's snapshot), set by cli from the transport;
# read by the heartbeat, the setup status and doctor.
TUNNEL_STATUS: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("tunnel_status")


def provide(app: web.Application, name: str, provider: HealthProvider) -> None:
    """Add `provider`'s fields under `name`."""
    app.setdefault(HEALTH, {})[name] = provider


def collect(app: web.Application, trusted: bool) -> dict[str, Any]:
    """Every provider's fields, by name; a provider that fails is logged and left out, and one
    with nothing to say is not listed."""
    out: dict[str, Any] = {}
    for name, provider in app.get(HEALTH, {}).items():
        try:
            fields = provider(trusted)
        except Exception:
            log.exception("health provider %s failed", name)
            continue
        if fields:
            out[name] = fields
    return out
