"""The tenant's fields in /heartbeat, /setup/status and doctor: the state for everyone, details
only for callers who may see them (docs/lifecycle.md, "Heartbeat disclosure")."""

from __future__ import annotations

from typing import Any

from beeflow.tenant.failures import GENERIC_REMEDIATION, REMEDIATION
from beeflow.tenant.records import unstructure
from beeflow.tenant.state import PENDING_STATES, TenantState

_ERROR_FIELDS = ("category", "error", "remediation", "lastAttemptAt", "nextRetryAt")


def tenant_health(state: TenantState, trusted: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"state": state.status}
    if state.previous_key_in_use:
        # Waiting for the new key does not stop anything: the previous one still serves.
        out["previousKeyInUse"] = True
    if state.pending and state.status in PENDING_STATES:
        if "expiresAt" in state.pending:
            out["expiresAt"] = state.pending["expiresAt"]
        if trusted:
            out.update({k: v for k, v in state.pending.items() if k != "expiresAt"})
    error = unstructure(state.last_error) if state.last_error else None
    if state.status == "failed":
        if trusted and error:
            for name in _ERROR_FIELDS:
                if error.get(name) is not None:
                    out[name] = error[name]
        else:
            out["remediation"] = GENERIC_REMEDIATION
    if trusted:
        out["source"] = state.source
        if state.fingerprint:
            out["fingerprint"] = state.fingerprint
        if state.instance_id:
            out["instanceId"] = state.instance_id
        if state.organization_name:
            out["organizationName"] = state.organization_name
        if state.store_error:
            out["storageError"] = state.store_error
            out["storageRemediation"] = REMEDIATION["storage_failed"]
        if state.key and error:
            out["lastError"] = error.get("error")
    return out
