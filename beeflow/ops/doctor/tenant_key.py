"""The tenant key: from BEEFLOW_TENANT_KEY, or cached after bootstrap; otherwise what the
bootstrap is waiting for or why it failed. Only the key's fingerprint is ever shown."""

from __future__ import annotations

import stat

from beeflow.ops.doctor.result import FAIL, PASS, WARN, Check, Context, read_json_file
from beeflow.tenant.failures import REMEDIATION
from beeflow.tenant.state import fingerprint
from beeflow.tenant.store import ERROR_FILE, KEY_FILE, PENDING_FILE


def check_tenant_key(ctx: Context) -> Check:
    c = ctx.config
    name = "tenant_key"
    if c.tenant_key_env:
        fp = fingerprint(c.tenant_key_env)
        return Check(
            name,
            PASS,
            f"set by BEEFLOW_TENANT_KEY (fingerprint {fp})",
            details={"source": "env", "fingerprint": fp},
        )
    directory = c.persistent_storage
    record, problem = read_json_file(directory / KEY_FILE)
    if problem is not None:
        return Check(
            name,
            FAIL,
            problem,
            "Fix or remove the file; the connector provisions a new key on the next /init "
            "(which creates a new organisation unless you use a pairing code).",
        )
    if record is not None:
        key = record.get("tenantKey") if isinstance(record, dict) else None
        if not isinstance(key, str) or len(key.strip()) < 16:
            return Check(
                name,
                FAIL,
                f"{KEY_FILE} has no usable tenantKey",
                "Restore the file from a backup, or re-bootstrap from the setup page.",
            )
        assert isinstance(record, dict)
        fp = fingerprint(key.strip())
        org = record.get("organizationName") or record.get("organizationId") or "?"
        details = {
            "source": "cache",
            "fingerprint": fp,
            "organizationId": record.get("organizationId"),
            "provisionedAt": record.get("provisionedAt"),
        }
        mode = stat.S_IMODE((directory / KEY_FILE).stat().st_mode)
        summary = f"provisioned for organisation {org} (fingerprint {fp})"
        if mode & 0o077:
            return Check(
                name,
                WARN,
                summary + f", but {KEY_FILE} is readable by others ({mode:o})",
                f"chmod 600 {directory / KEY_FILE}",
                details,
            )
        return Check(name, PASS, summary, details=details)
    pending, _ = read_json_file(directory / PENDING_FILE)
    if isinstance(pending, dict):
        kind = pending.get("kind")
        what = (
            "an e-mail verification code"
            if kind == "verification"
            else "approval by the organisation's administrator"
        )
        return Check(
            name,
            FAIL,
            f"not provisioned yet: waiting for {what} (expires {pending.get('expiresAt')})",
            "Open Bee Flow in Nextcloud as an administrator and finish the verification.",
        )
    error, _ = read_json_file(directory / ERROR_FILE)
    if isinstance(error, dict):
        category = str(error.get("category") or "unknown")
        remediation = str(
            error.get("remediation") or REMEDIATION.get(category, REMEDIATION["unknown"])
        )
        return Check(
            name,
            FAIL,
            f"bootstrap failed ({category}) at {error.get('lastAttemptAt')}",
            remediation,
            {"category": category, "phase": error.get("phase")},
        )
    return Check(
        name,
        FAIL,
        "no tenant key: not provisioned yet",
        "The connector provisions it during install (/init) and at start. Bootstrap needs "
        "a Nextcloud administrator with an e-mail address; then open Bee Flow as an admin "
        "or see the setup page.",
    )
