"""The tenant key as doctor sees it: from the cache file (fingerprint only), readable by others,
or missing, with what the bootstrap waits for or why it failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beeflow.ops.doctor.result import FAIL, PASS, WARN
from beeflow.tenant.state import fingerprint
from beeflow.tenant.store import ERROR_FILE, KEY_FILE, PENDING_FILE
from tests.ops.doctor.conftest import FILE_KEY, Env, checks_of, write_key


async def test_tenant_key_from_the_cache_file(env: Env, storage: Path) -> None:
    env["BEEFLOW_TENANT_KEY"] = "auto"
    write_key(storage)
    check = (await checks_of(env))["tenant_key"]
    assert check.status == PASS
    assert check.details["fingerprint"] == fingerprint(FILE_KEY)
    assert "Acme" in check.summary


async def test_a_world_readable_key_file_warns(env: Env, storage: Path) -> None:
    env["BEEFLOW_TENANT_KEY"] = "auto"
    write_key(storage, mode=0o644)
    check = (await checks_of(env))["tenant_key"]
    assert check.status == WARN
    assert "chmod 600" in check.remedy


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({}, "not provisioned yet"),
        ({KEY_FILE: "{broken"}, "not valid JSON"),
        ({KEY_FILE: '{"tenantKey": "short"}'}, "no usable tenantKey"),
        (
            {PENDING_FILE: '{"kind": "verification", "expiresAt": "2026-11-22T15:00:00Z"}'},
            "e-mail verification",
        ),
        (
            {
                ERROR_FILE: json.dumps(
                    {"status": "failed", "category": "admin_email_missing", "phase": "admin"}
                )
            },
            "admin_email_missing",
        ),
    ],
)
async def test_tenant_key_missing_states_fail(
    env: Env, storage: Path, files: dict[str, str], words: str
) -> None:
    env["BEEFLOW_TENANT_KEY"] = "auto"
    for name, content in files.items():
        (storage / name).write_text(content)
    check = (await checks_of(env))["tenant_key"]
    assert check.status == FAIL
    assert words in check.summary
    assert check.remedy
    if "admin_email_missing" in words:
        assert "e-mail" in check.remedy
