"""Tenant key state (runtime, never in Config), its file store, and the bootstrap."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
from aiohttp import web

from beeflow import keys


def fingerprint(key: str) -> str:
    """The 16-hex sha256 prefix that may be shown in place of the key (reference 9)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


@attrs.define
class TenantState:
    """What the connector knows about its tenant. `key` is None until provisioned."""

    key: str | None = attrs.field(default=None, repr=False)
    organization_id: str | None = None
    organization_name: str | None = None
    instance_id: str | None = None
    nc_version: str | None = None
    bound_api_base_url: str | None = None
    # ok | initialising | awaiting_email_verification | awaiting_admin_approval | failed
    status: str = "initialising"
    last_error: dict[str, Any] | None = None

    @property
    def fingerprint(self) -> str | None:
        return fingerprint(self.key) if self.key else None


def setup(app: web.Application) -> None:
    """Install the tenant state. (The file store and bootstrap arrive with the tenant issue.)"""
    config = app[keys.CONFIG]
    app[keys.TENANT] = TenantState(key=config.tenant_key_env)
    if config.tenant_key_env:
        app[keys.TENANT].status = "ok"
