"""The tenant's records as they sit on disk (tenant-key.json, pending-bootstrap.json,
bootstrap-last-error.json): frozen attrs classes, structured by the one converter under the
files' camelCase names. Reading is lenient: a field of the wrong type is dropped, not fatal."""

from __future__ import annotations

from typing import Any, Final

import attrs

from beeflow.serde import camel, converter, register_camel_record

# What of a pending verification may be shown (never its id or URLs).
PUBLIC_PENDING: Final = ("expiresAt", "organizationName", "codeSent", "maskedEmail", "sentVia")


@attrs.frozen
class KeyRecord:
    """tenant-key.json: the key and what it is bound to."""

    tenant_key: str = attrs.field(repr=False)
    organization_id: str | None
    organization_name: str | None
    nc_instance_id: str | None
    nc_version: str | None
    bound_api_base_url: str | None
    provisioned_at: str | None


@attrs.frozen
class PendingRecord:
    """pending-bootstrap.json: a 202 `pending_verification` answer, and what happened since (a
    code sent, where to). `replaces_key` is the fingerprint of the key a re-bootstrap holds."""

    kind: str
    code: str | None = None
    pending_id: str | int | None = None
    verify_url: str | None = None
    resend_url: str | None = None
    retarget_url: str | None = None
    expires_at: str | None = None
    organization_name: str | None = None
    code_sent: bool = False
    nc_instance_id: str | None = None
    replaces_key: str | None = None
    masked_email: str | None = None
    sent_via: str | None = None

    def public(self) -> dict[str, Any]:
        """The fields that may be shown (TenantState.pending), under their JSON names."""
        data = unstructure(self)
        out: dict[str, Any] = {name: data[name] for name in PUBLIC_PENDING if name in data}
        out["kind"] = "verification"
        return out


@attrs.frozen
class ErrorRecord:
    """A failed provisioning (bootstrap-last-error.json, status "failed"), or a rotation that
    did not complete (in memory only: no status, no retry)."""

    category: str
    phase: str
    error: str
    remediation: str
    last_attempt_at: str | None = None
    next_retry_at: str | None = None
    status: str | None = None


for _record in (KeyRecord, PendingRecord, ErrorRecord):
    register_camel_record(_record, extra_keys=True)

_TYPES: Final = {str: (str,), bool: (bool,), int: (int,)}


def _accepts(annotation: str, value: Any) -> bool:
    """Whether a JSON value fits a field's annotation (as written in this module)."""
    if value is None:
        return "None" in annotation
    if isinstance(value, bool):
        return "bool" in annotation
    if isinstance(value, int):
        return "int" in annotation
    if isinstance(value, str):
        return "str" in annotation and bool(value)
    return False


def structure(data: Any, cls: type[Any]) -> Any:
    """`cls` from a file's JSON, every field of the wrong type left at its default. Raises
    ValueError when a field without a default is missing or unusable."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    clean: dict[str, Any] = {}
    for field in attrs.fields(cls):
        name = camel(field.name)
        if name in data and _accepts(str(field.type), data[name]):
            clean[name] = data[name]
        elif field.default is attrs.NOTHING:
            if "None" not in str(field.type):
                raise ValueError(f"missing or unusable {name}")
            clean[name] = None
    try:
        return converter.structure(clean, cls)
    except Exception as exc:  # cattrs wraps every problem; the caller says which file
        raise ValueError(str(exc)) from None


def unstructure(record: KeyRecord | PendingRecord | ErrorRecord) -> dict[str, Any]:
    data: dict[str, Any] = converter.unstructure(record)
    return data
