"""The tenant's files keep their shape: files as the connector wrote them before the records were
attrs classes are read back, and what is written now has the same keys and values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from beeflow.tenant.records import ErrorRecord, KeyRecord, PendingRecord, structure, unstructure
from beeflow.tenant.store import ERROR_FILE, KEY_FILE, PENDING_FILE, TenantStore

# Written by the connector of the previous release (dicts built field by field, in this order).
KEY_WRITTEN: dict[str, Any] = {
    "tenantKey": "tk_live_0123456789abcdef0123456789",
    "organizationId": "org-1",
    "organizationName": "Acme",
    "ncInstanceId": "nc-host:cloud.example.com",
    "ncVersion": "32.0.1.2",
    "boundApiBaseUrl": "https://api.bee-flow.ai",
    "provisionedAt": "2026-01-02T03:04:05Z",
}
KEY_WRITTEN_NO_ORG: dict[str, Any] = {**KEY_WRITTEN, "organizationId": None}
PENDING_WRITTEN: dict[str, Any] = {
    "code": "pending_verification",
    "pendingId": 42,
    "verifyUrl": "/auth/connector/bootstrap/pending/42/verify",
    "resendUrl": "/auth/connector/bootstrap/pending/42/resend",
    "retargetUrl": "/auth/connector/bootstrap/pending/42/retarget",
    "expiresAt": "2026-01-02T03:34:05Z",
    "organizationName": "Acme",
    "kind": "verification",
    "codeSent": True,
    "ncInstanceId": "nc-host:cloud.example.com",
    "replacesKey": "0123456789abcdef",
    "maskedEmail": "a•••n@example.com",
    "sentVia": "retarget",
}
PENDING_FIRST: dict[str, Any] = {
    "code": "pending_verification",
    "pendingId": "p-7",
    "expiresAt": "2026-01-02T03:34:05Z",
    "kind": "verification",
    "codeSent": False,
    "ncInstanceId": "nc-host:cloud.example.com",
}
ERROR_WRITTEN: dict[str, Any] = {
    "status": "failed",
    "category": "saas_unreachable",
    "phase": "saas_post",
    "error": "Bee Flow service: POST /auth/connector/bootstrap: timed out",
    "remediation": "Check BEEFLOW_API_BASE_URL.",
    "lastAttemptAt": "2026-01-02T03:04:05Z",
    "nextRetryAt": "2026-01-02T03:05:05Z",
}


@pytest.mark.parametrize(
    ("data", "cls"),
    [
        (KEY_WRITTEN, KeyRecord),
        (KEY_WRITTEN_NO_ORG, KeyRecord),
        (PENDING_WRITTEN, PendingRecord),
        (PENDING_FIRST, PendingRecord),
        (ERROR_WRITTEN, ErrorRecord),
    ],
)
def test_a_file_of_the_previous_release_round_trips(data: dict[str, Any], cls: type[Any]) -> None:
    assert unstructure(structure(data, cls)) == data


async def test_the_store_reads_the_files_of_the_previous_release(tmp_path: Path) -> None:
    for name, data in (
        (KEY_FILE, KEY_WRITTEN),
        (PENDING_FILE, PENDING_WRITTEN),
        (ERROR_FILE, ERROR_WRITTEN),
    ):
        (tmp_path / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    store = TenantStore(tmp_path)
    key = store.load_key()
    assert key is not None
    assert key.tenant_key == KEY_WRITTEN["tenantKey"]
    assert key.bound_api_base_url == "https://api.bee-flow.ai"
    pending = store.load_pending()
    assert pending is not None
    assert pending.pending_id == 42
    assert pending.masked_email == "a•••n@example.com"
    error = store.load_error()
    assert error is not None
    assert error.category == "saas_unreachable"
    # Written again, each file is what the previous release wrote.
    await store.save_key(key)
    await store.save_pending(pending)
    await store.save_error(error)
    for name, data in (
        (KEY_FILE, KEY_WRITTEN),
        (PENDING_FILE, PENDING_WRITTEN),
        (ERROR_FILE, ERROR_WRITTEN),
    ):
        assert json.loads((tmp_path / name).read_text(encoding="utf-8")) == data


def test_reading_is_lenient_per_field() -> None:
    """A field of the wrong type is dropped (as the dict code ignored it), not the record."""
    record = structure({**KEY_WRITTEN, "organizationId": 7, "ncVersion": "", "extra": 1}, KeyRecord)
    assert record.organization_id is None
    assert record.nc_version is None
    assert record.organization_name == "Acme"


def test_a_pending_file_without_its_kind_is_not_a_verification() -> None:
    with pytest.raises(ValueError, match="kind"):
        structure({k: v for k, v in PENDING_FIRST.items() if k != "kind"}, PendingRecord)


def test_the_public_view_of_a_pending_record_has_no_id_or_url() -> None:
    record = structure(PENDING_WRITTEN, PendingRecord)
    assert record.public() == {
        "expiresAt": "2026-01-02T03:34:05Z",
        "organizationName": "Acme",
        "codeSent": True,
        "maskedEmail": "a•••n@example.com",
        "sentVia": "retarget",
        "kind": "verification",
    }
