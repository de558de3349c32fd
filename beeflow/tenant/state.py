"""The tenant state in memory (runtime, never in Config): the key, the organisation, the status a
heartbeat shows, and the pending verification's public fields."""

from __future__ import annotations

import hashlib
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.tenant.records import ErrorRecord, KeyRecord

PENDING_STATES: Final = frozenset({"awaiting_email_verification"})


def fingerprint(key: str) -> str:
    """The 16-hex sha256 prefix that may be shown in place of the key (docs/security.md,
    "Secrets: where they live, where they never go")."""
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
    # ok | initialising | provisioning | awaiting_email_verification | failed
    status: str = "initialising"
    last_error: ErrorRecord | None = None
    source: str = "none"  # env | cache | bootstrap | none
    provisioned_at: str | None = None
    # Public fields of a pending (202) bootstrap: expiresAt, organizationName, and once a code
    # was sent: codeSent, maskedEmail (where it went), sentVia (retarget | resend).
    pending: dict[str, Any] | None = None
    # Set while the key in memory could not be written to the storage.
    store_error: str | None = None

    @property
    def fingerprint(self) -> str | None:
        return fingerprint(self.key) if self.key else None

    @property
    def previous_key_in_use(self) -> bool:
        """A re-bootstrap's 202 waits for someone (e-mail code, approval) while the key it
        would replace keeps serving every request."""
        return bool(self.key) and self.status in PENDING_STATES

    def adopt(self, record: KeyRecord, *, source: str) -> None:
        """Use the key `record` holds (from the bootstrap, or from the storage) and what is bound
        to it; the instance id is the caller's to set (what the record knows of it differs)."""
        self.key = record.tenant_key.strip()
        self.organization_id = record.organization_id
        self.organization_name = record.organization_name
        self.nc_version = record.nc_version
        self.bound_api_base_url = record.bound_api_base_url
        self.provisioned_at = record.provisioned_at
        self.source, self.status = source, "ok"

    def reset(self) -> None:
        """Forget the key and everything bound to it; what Nextcloud told us (its instance id and
        version) stays."""
        self.restore(TenantState(instance_id=self.instance_id, nc_version=self.nc_version))

    def restore(self, saved: TenantState) -> None:
        """Take every field of `saved` (a copy made with attrs.evolve)."""
        for field in attrs.fields(TenantState):
            setattr(self, field.name, getattr(saved, field.name))


TENANT: web.AppKey[TenantState] = web.AppKey("tenant")
