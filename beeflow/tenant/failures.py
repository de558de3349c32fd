"""Why a provisioning failed, in words an admin can act on: the service's codes, our categories,
their remediation, and the one error type a failed bootstrap raises."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from beeflow.errors import BeeflowError

GENERIC_REMEDIATION: Final = (
    "Open Bee Flow in Nextcloud as an administrator, or read GET /setup/status, for details."
)

# The bootstrap's `code`s (the service's auth/connectorBootstrap.js) -> category. The pairing
# codes keep their own name: each needs its own fix.
SERVICE_CODES: Final = {
    "nc_capabilities_unreachable": "nc_not_publicly_reachable",
    "nc_capabilities_mismatch": "nc_capabilities_mismatch",
    "missing_headers": "connector_outdated",
    "invalid_admin_email": "admin_email_invalid",
    "admin_email_conflict": "admin_email_conflict",
    "too_many_pending_bindings": "too_many_pending",
    "org_create_failed": "saas_transient",
    "pairing_required": "pairing_required",
    "pairing_code_invalid": "pairing_code_invalid",
    "pairing_code_org_gone": "pairing_code_org_gone",
    "pairing_code_org_already_bound": "pairing_code_org_already_bound",
    "pairing_code_race": "pairing_code_race",
}
PAIRING_HOW: Final = (
    "An admin of the Bee Flow organisation creates a pairing code on the service (Settings → "
    "Organisation → Pair a new Nextcloud); enter it on this connector's setup page (Bind to an "
    "existing organisation)."
)
REMEDIATION: Final = {
    "saas_unreachable": (
        "The connector cannot reach the Bee Flow service. Check BEEFLOW_API_BASE_URL and that the "
        "container can make outbound HTTPS connections (DNS, proxy, firewall)."
    ),
    "saas_transient": (
        "The Bee Flow service had a temporary problem (for a new organisation, usually its "
        "database); the connector retries on its own. If it keeps failing, tell the service's "
        "operator."
    ),
    "nc_not_publicly_reachable": (
        "The Bee Flow service could not fetch this Nextcloud's capabilities. Make Nextcloud "
        "reachable from the service, or set BEEFLOW_NC_PUBLIC_URL to a URL it can reach."
    ),
    "nc_capabilities_mismatch": (
        "The capabilities the service fetched differ from what the connector sent: "
        "BEEFLOW_NC_PUBLIC_URL must point at this same Nextcloud."
    ),
    "connector_outdated": "Update the Bee Flow connector: the service expects newer headers.",
    "admin_lookup_failed": (
        "The connector could not find a Nextcloud administrator through AppAPI. Check that the "
        "app is registered and enabled (`occ app_api:app:list`), then retry from the setup page."
    ),
    "admin_email_missing": (
        "No Nextcloud administrator has an e-mail address. Set one under Personal settings of an "
        "admin account; the connector retries on its own."
    ),
    "admin_email_invalid": "Give a Nextcloud administrator a valid e-mail address.",
    "admin_email_conflict": (
        "The administrator's e-mail address already belongs to another Bee Flow organisation: "
        "enter a pairing code from that organisation on the setup page (Bind to an existing "
        "organisation), or give the admin another address."
    ),
    "too_many_pending": (
        "Five connection attempts for this Bee Flow organisation are already waiting for their "
        "e-mail code. Finish one with its code, or let them expire (30 minutes), then retry from "
        "the setup page."
    ),
    "saas_auth_rejected": (
        "The service refused this connector. Check the pairing code or contact Bee Flow support."
    ),
    "tenant_already_provisioned": (
        "This Nextcloud already has a Bee Flow tenant. Restore tenant-key.json, set "
        "BEEFLOW_TENANT_KEY, or enter a pairing code from the service on the setup page (Bind "
        "to an existing organisation)."
    ),
    "pairing_required": (
        "This Bee Flow server creates organisations only for Nextclouds it already knows. "
        + PAIRING_HOW
        + " Or its operator opens provisioning to new Nextclouds: BEEFLOW_CONNECTOR_PROVISIONING="
        "open in the server's environment (or its configuration key "
        "connector_provisioning_mode=open); Bee Flow Cloud is open."
    ),
    "pairing_code_invalid": (
        "The Bee Flow service does not know this pairing code: it is mistyped, expired or used "
        "already (each code works once). " + PAIRING_HOW
    ),
    "pairing_code_org_gone": (
        "The organisation this pairing code was made for no longer exists on the Bee Flow "
        "service. Use a code from an existing organisation, or clear BEEFLOW_PAIRING_CODE to "
        "let the connector create an organisation."
    ),
    "pairing_code_org_already_bound": (
        "The organisation of this pairing code is connected to another Nextcloud already. "
        "Disconnect it there first (on the Bee Flow service), or use a code from another "
        "organisation."
    ),
    "pairing_code_race": (
        "Another request used this pairing code at the same moment, so it is spent. Create a "
        "fresh code on the service and enter it on the setup page."
    ),
    "verification_expired": (
        "The e-mail verification expired or was ended by the service; the connector starts "
        "again. Open the setup page as an administrator: the new code is sent to you."
    ),
    "unsupported_answer": (
        "The Bee Flow service answered in a way this connector does not know (an older server "
        "asking for approval by polling?). Update the connector or the server."
    ),
    "rotation_not_completed": (
        "The new tenant key was not issued: the e-mail verification expired or was ended by the "
        "service. The previous key stays in use; rotate again (or apply the pairing code again) "
        "for a new code."
    ),
    "appstore_signature_invalid": "Reinstall the app from the app store.",
    "nextcloud_auth_paused": (
        "Nextcloud refused the connector's AppAPI logins; calls are paused to avoid a brute-force "
        "lock-out. Register the app, then `occ security:bruteforce:reset <connector-ip>`."
    ),
    "storage_failed": (
        "The tenant key could not be saved under APP_PERSISTENT_STORAGE (read-only or full). "
        "Free space or make the volume writable."
    ),
    "unknown": "Retry from the setup page; if it persists, read the connector's log.",
}


# Categories an admin resolves by entering a pairing code on the setup page.
PAIRING_CATEGORIES: Final = frozenset(
    {
        "pairing_required",
        "admin_email_conflict",
        "tenant_already_provisioned",
        "pairing_code_invalid",
        "pairing_code_org_gone",
        "pairing_code_org_already_bound",
        "pairing_code_race",
    }
)
# Categories where the service answered and said no (as opposed to not answering at all).
REFUSED_CATEGORIES: Final = frozenset(
    {
        *PAIRING_CATEGORIES,
        "saas_auth_rejected",
        "admin_email_invalid",
        "too_many_pending",
        "nc_not_publicly_reachable",
        "nc_capabilities_mismatch",
        "connector_outdated",
    }
)


class BootstrapFailed(BeeflowError):
    """A provisioning attempt failed, in the step `phase` (capabilities | admin | saas_post |
    saas_response | storage | unknown). Recorded (and retried) when the connector provisions on
    its own; answered 502 `bootstrap_failed` with its category and remediation when an admin's
    re-bootstrap fails (the previous tenant state is back then)."""

    status = 502
    code = "bootstrap_failed"
    default_message = "Provisioning the tenant key failed"

    def __init__(
        self,
        phase: str,
        message: str,
        *,
        service_code: str | None = None,
        category: str | None = None,
        remediation: str | None = None,
        http_status: int | None = None,
        code: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message[:500], code=code, extra=extra)
        self.phase = phase
        self.service_code = service_code
        self.category = category
        self.remediation = remediation
        self.http_status = http_status

    @classmethod
    def answered(cls, message: str, category: str, remediation: str) -> BootstrapFailed:
        """The admin's answer: the failure's category and remediation beside its message."""
        return cls(
            "rebootstrap",
            message,
            category=category,
            remediation=remediation,
            extra={"category": category, "remediation": remediation},
        )


_NETWORKISH: Final = re.compile(
    r"timed? ?out|network|ClientConnector|ServerDisconnected|Connection|refused|unreachable|"
    r"resolve|DNS|reset",
    re.IGNORECASE,
)


def categorise(failure: BootstrapFailed) -> str:
    """The service's code first, then the step, the HTTP status and the message."""
    if failure.category:
        return failure.category
    if failure.service_code and failure.service_code in SERVICE_CODES:
        return SERVICE_CODES[failure.service_code]
    if failure.phase == "capabilities":
        return "nc_not_publicly_reachable"
    if failure.phase == "admin":
        return "admin_lookup_failed"
    if failure.phase == "storage":
        return "storage_failed"
    if failure.http_status in (401, 403):
        return "saas_auth_rejected"
    if failure.http_status == 409:
        return "tenant_already_provisioned"
    if failure.http_status is not None and failure.http_status >= 500:
        return "saas_transient"
    if "signature" in failure.message.lower():
        return "appstore_signature_invalid"
    if failure.phase == "saas_post" or _NETWORKISH.search(failure.message):
        return "saas_unreachable"
    return "unknown"
