"""Tenant key state (runtime, never in Config), its file store, and the single-flight bootstrap.

Precedence (seeds): BEEFLOW_TENANT_KEY unless `auto`; else the cached
`${APP_PERSISTENT_STORAGE}/tenant-key.json`; else provision it from the service
(`POST {api}/auth/connector/bootstrap`, reference 6.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import attrs
from aiohttp import web
from yarl import URL

from beeflow import keys, service_client, storage
from beeflow.config import PAIRING_CODE_RE
from beeflow.errors import BeeflowError, Conflict, NextcloudError
from beeflow.nextcloud import NcUser, user_from_ocs
from beeflow.redact import REDACTOR
from beeflow.serde import iso_utc
from beeflow.state import InitPhase
from beeflow.tasks import spawn

log = logging.getLogger(__name__)

KEY_FILE: Final = "tenant-key.json"
# What of a pending verification may be shown (never its id or URLs).
PUBLIC_PENDING: Final = (
    "expiresAt",
    "organizationName",
    "codeSent",
    "maskedEmail",
    "sentVia",
)
PENDING_FILE: Final = "pending-bootstrap.json"
ERROR_FILE: Final = "bootstrap-last-error.json"
PREVIOUS_FILE: Final = "tenant-key.previous.json"
BOOTSTRAP_PATH: Final = "/auth/connector/bootstrap"

PENDING_STATES: Final = frozenset({"awaiting_email_verification"})
PENDING_GRACE: Final = 300.0  # a pending state is kept until expiresAt + 5 min (reference 6.3)
DISCOVERY_BATCH: Final = 5
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


def normalise_pairing_code(raw: object) -> str | None:
    """`XXXX-XXXX` (letters and digits) after trimming and upper-casing, else None."""
    if not isinstance(raw, str):
        return None
    code = raw.strip().upper()
    return code if PAIRING_CODE_RE.fullmatch(code) else None


def mask_pairing_code(code: str) -> str:
    """What may be logged or shown of a pairing code: its first 4 characters (reference 11)."""
    return code[:4] + "***"


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
    # ok | initialising | provisioning | awaiting_email_verification | failed
    status: str = "initialising"
    last_error: dict[str, Any] | None = None
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


# ------------------------------------------------------------------ the file store


class TenantStore:
    """The three files of reference 6.5, JSON, 0600, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / name

    def load_key(self) -> dict[str, Any] | None:
        data = storage.read_json(self.path(KEY_FILE))
        if data is None or isinstance(data, storage.Unusable):
            return None
        key = data.get("tenantKey") if isinstance(data, dict) else None
        if not isinstance(key, str) or len(key.strip()) < 16:
            storage.set_aside(self.path(KEY_FILE), "missing a usable tenantKey")
            return None
        assert isinstance(data, dict)
        return data

    async def save_key(self, record: dict[str, Any]) -> None:
        await storage.write_json(self.path(KEY_FILE), record)

    def load_pending(self) -> dict[str, Any] | None:
        data = storage.read_json(self.path(PENDING_FILE))
        return data if isinstance(data, dict) else None

    async def save_pending(self, record: dict[str, Any]) -> None:
        await storage.write_json(self.path(PENDING_FILE), record)

    async def save_error(self, record: dict[str, Any]) -> None:
        await storage.write_json(self.path(ERROR_FILE), record)

    def load_error(self) -> dict[str, Any] | None:
        data = storage.read_json(self.path(ERROR_FILE))
        return data if isinstance(data, dict) else None

    def remove(self, name: str) -> None:
        storage.remove(self.path(name))

    def read_raw(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except OSError:
            return None

    async def write_raw(self, name: str, raw: bytes) -> None:
        """Restore a file's content (same atomic 0600 write)."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return
        await storage.write_json(self.path(name), data)


# ------------------------------------------------------------------ metadata helpers


@attrs.frozen
class NcMeta:
    instance_id: str
    version: str
    theming_name: str


@attrs.frozen
class Admin:
    uid: str
    email: str | None
    display_name: str

    def wire(self) -> dict[str, Any]:
        return {"uid": self.uid, "email": self.email, "displayName": self.display_name}


def host_instance_id(url: URL) -> str:
    """`nc-host:<host[:port]>` like the Node reference's `new URL(base).host`: lower-case host,
    IPv6 in brackets, port only when it is not the scheme's default. Byte-identical to the
    service's copy, and stable across restarts and Nextcloud upgrades."""
    host = (url.raw_host or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = url.explicit_port
    default = {"http": 80, "https": 443}.get(url.scheme)
    if port is not None and port != default:
        host = f"{host}:{port}"
    return f"nc-host:{host}"


def meta_from_capabilities(data: Any, fallback_url: URL) -> NcMeta:
    if not isinstance(data, dict):
        raise BootstrapFailure("capabilities", "capabilities answer has no data")
    version = data.get("version")
    version_string = version.get("string") if isinstance(version, dict) else None
    if not isinstance(version_string, str) or not version_string:
        raise BootstrapFailure("capabilities", "capabilities answer has no version")
    caps = data.get("capabilities")
    caps = caps if isinstance(caps, dict) else {}
    theming: dict[str, Any] = caps["theming"] if isinstance(caps.get("theming"), dict) else {}
    core: dict[str, Any] = caps["core"] if isinstance(caps.get("core"), dict) else {}
    name = theming.get("name") if isinstance(theming.get("name"), str) else ""
    instance = theming.get("instanceid") or core.get("instanceid")
    if not isinstance(instance, str) or not instance:
        instance = host_instance_id(fallback_url) if fallback_url.raw_host else ""
    if not instance:
        instance = f"nc:{name or 'Nextcloud'}"
    return NcMeta(instance, version_string, name or "Nextcloud")


_CTRL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _header_safe(value: str) -> str:
    return _CTRL.sub(" ", value).strip()[:255]


def _parseiso_utc(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class BootstrapFailure(Exception):
    """One failed provisioning attempt, with the step it failed in (reference 6.5 `phase`)."""

    def __init__(
        self,
        phase: str,
        message: str,
        *,
        code: str | None = None,
        category: str | None = None,
        remediation: str | None = None,
        http_status: int | None = None,
    ) -> None:
        self.phase = phase  # capabilities | admin | saas_post | saas_response | storage
        self.message = message[:500]
        self.code = code
        self.category = category
        self.remediation = remediation
        self.http_status = http_status
        super().__init__(self.message)


_NETWORKISH: Final = re.compile(
    r"timed? ?out|network|ClientConnector|ServerDisconnected|Connection|refused|unreachable|"
    r"resolve|DNS|reset",
    re.IGNORECASE,
)


def categorise(failure: BootstrapFailure) -> str:
    """Reference 6.6: the service's code first, then the step and the message."""
    if failure.category:
        return failure.category
    if failure.code and failure.code in SERVICE_CODES:
        return SERVICE_CODES[failure.code]
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


class BootstrapFailed(BeeflowError):
    """A re-bootstrap asked for by the admin failed; the previous tenant state is back."""

    status = 502
    code = "bootstrap_failed"
    default_message = "Provisioning the tenant key failed"


# ------------------------------------------------------------------ the bootstrap


class Bootstrapper:
    """Single-flight provisioning: concurrent triggers (boot, /init, setup) join one run."""

    def __init__(self, app: web.Application, store: TenantStore) -> None:
        self._app = app
        self.store = store
        self._task: asyncio.Task[None] | None = None
        self._retry_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._rebootstrap_lock = asyncio.Lock()
        self._applied = 0  # keys applied so far (a re-bootstrap's success test)
        self.failures = 0
        self.runs = 0
        self.pairing_code: str | None = None
        self._pending_record: dict[str, Any] | None = None
        # Backoff after a failure: retry_base * 2^(n-1), capped (tests shorten these).
        self.retry_base = 60.0
        self.retry_cap = 3600.0
        # A held key's pending verification ends at expiresAt + grace (checked this often).
        self.pending_grace = PENDING_GRACE
        self.expiry_check = 30.0

    @property
    def state(self) -> TenantState:
        return self._app[keys.TENANT]

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def busy(self) -> bool:
        """A provisioning run or a re-bootstrap is in progress (the setup page's actions wait)."""
        return self.running or self._rebootstrap_lock.locked()

    # -- triggers

    async def ensure(self) -> None:
        """Provision unless a key exists or a pending (202) state is waiting for someone. Never
        raises for a failed attempt: the failure is recorded and retried with backoff."""
        state = self.state
        if state.key:
            return
        if state.status in PENDING_STATES and not self._pending_expired():
            return
        if self._task is None or self._task.done():
            self._task = spawn(self._provision(), name="tenant-bootstrap")
        await asyncio.shield(self._task)

    def _pending_expired(self) -> bool:
        expires = _parseiso_utc((self.state.pending or {}).get("expiresAt"))
        return expires is not None and time.time() > expires + PENDING_GRACE

    # -- one provisioning run

    async def _provision(self) -> None:
        state = self.state
        self.runs += 1
        attempt = time.time()
        previous_status = state.status
        state.status = "provisioning"
        try:
            meta = await self._capabilities()
            state.instance_id = meta.instance_id
            state.nc_version = meta.version
            admins = await self._discover_admins()
            reply = await self._post(meta, admins)
            await self._handle_reply(reply, meta)
        except BootstrapFailure as failure:
            await self._record_failure(failure, attempt)
        except asyncio.CancelledError:
            if state.status == "provisioning":
                state.status = previous_status
            raise
        except Exception as exc:  # a bug must not leave the state at "provisioning"
            log.exception("tenant bootstrap crashed")
            await self._record_failure(BootstrapFailure("unknown", type(exc).__name__), attempt)

    async def _capabilities(self) -> NcMeta:
        client = self._app[keys.NEXTCLOUD]
        config = self._app[keys.CONFIG]
        try:
            result = await client.ocs(
                "GET", "/ocs/v2.php/cloud/capabilities", user=None, timeout=10.0
            )
        except NextcloudError as exc:
            raise BootstrapFailure("capabilities", f"Nextcloud capabilities: {exc}") from None
        if not result.ok:
            raise BootstrapFailure(
                "capabilities",
                f"Nextcloud capabilities: HTTP {result.http_status} OCS {result.statuscode}",
            )
        return meta_from_capabilities(result.data, config.public_nextcloud_url)

    async def _discover_admins(self) -> list[Admin]:
        """Issue 11.3: AppAPI's user list (as the service), then each user's info impersonating
        that user, in parallel batches of 5. `cloud/groups/admin/users` with an empty user is
        401 on NC 32 (nobody is logged in; the AppAPI login itself succeeds and nothing is
        counted), so it is only asked as a found admin. A disabled account answers its own
        lookup with 997, which the client reports as `user_refused` without spending the auth
        budget: that user is skipped."""
        client = self._app[keys.NEXTCLOUD]
        try:
            listing = await client.ocs(
                "GET", "/ocs/v2.php/apps/app_api/api/v1/users", timeout=10.0, warmup=30.0
            )
        except NextcloudError as exc:
            raise _admin_failure(exc) from None
        if not listing.ok or not isinstance(listing.data, list):
            raise BootstrapFailure(
                "admin",
                f"AppAPI user list: HTTP {listing.http_status} OCS {listing.statuscode}",
                category="nextcloud_auth_paused" if client.budget.spent else None,
            )
        uids = sorted({str(u) for u in listing.data if isinstance(u, str | int) and str(u)})
        admins: dict[str, NcUser] = {}
        for start in range(0, len(uids), DISCOVERY_BATCH):
            batch = uids[start : start + DISCOVERY_BATCH]
            users = await asyncio.gather(*(self._user(uid, uid) for uid in batch))
            for user in users:
                if user is not None and user.is_admin:
                    admins[user.uid] = user
            if admins:
                rest = await self._admin_group(min(admins), set(uids))
                if rest is not None:
                    admins.update(rest)
                    break
        found = [
            Admin(u.uid, u.email, _header_safe(u.display_name) or u.uid)
            for u in sorted(admins.values(), key=lambda u: u.uid)
        ]
        if not found:
            raise BootstrapFailure("admin", "no Nextcloud administrator found through AppAPI")
        with_email = [a for a in found if a.email]
        if not with_email:
            raise BootstrapFailure(
                "admin",
                f"none of the {len(found)} Nextcloud administrator(s) has an e-mail address",
                category="admin_email_missing",
            )
        return with_email

    async def _user(self, uid: str, as_user: str) -> NcUser | None:
        client = self._app[keys.NEXTCLOUD]
        try:
            result = await client.ocs(
                "GET", f"/ocs/v2.php/cloud/users/{quote(uid, safe='')}", user=as_user, timeout=10.0
            )
        except NextcloudError as exc:
            raise _admin_failure(exc) from None
        if not result.ok or not isinstance(result.data, dict):
            return None
        if result.data.get("enabled") is False:
            # Read by another admin, a disabled admin still shows up: never the bootstrap's
            # admin (NcUser does not carry `enabled`, so it is checked on the payload).
            return None
        return user_from_ocs(uid, result.data)

    async def _admin_group(self, admin_uid: str, listed: set[str]) -> dict[str, NcUser] | None:
        """Asked as a known admin, the admin group lists every other admin in one call."""
        client = self._app[keys.NEXTCLOUD]
        try:
            result = await client.ocs(
                "GET", "/ocs/v2.php/cloud/groups/admin/users", user=admin_uid, timeout=10.0
            )
        except NextcloudError as exc:
            raise _admin_failure(exc) from None
        if not result.ok or not isinstance(result.data, dict):
            return None
        members = result.data.get("users")
        if not isinstance(members, list):
            return None
        out: dict[str, NcUser] = {}
        wanted = sorted({str(m) for m in members if isinstance(m, str) and m in listed})
        for start in range(0, len(wanted), DISCOVERY_BATCH):
            batch = wanted[start : start + DISCOVERY_BATCH]
            users = await asyncio.gather(*(self._user(uid, admin_uid) for uid in batch))
            for user in users:
                if user is not None and user.is_admin:
                    out[user.uid] = user
        return out

    async def _post(self, meta: NcMeta, admins: list[Admin]) -> service_client.ServiceReply:
        config = self._app[keys.CONFIG]
        nc_base = str(config.public_nextcloud_url).rstrip("/")
        primary = admins[0]
        headers = {
            "X-Beeflow-NC-Instance-Id": meta.instance_id,
            "X-Beeflow-NC-Base-Url": nc_base,
            "X-Beeflow-NC-Admin-Uid": _header_safe(primary.uid),
            "X-Beeflow-NC-Admin-Email": _header_safe(primary.email or ""),
            "X-Beeflow-NC-Admin-Display-Name": _header_safe(primary.display_name),
            "X-Beeflow-Connector-Callback-Url": (
                f"{nc_base}/index.php/apps/app_api/proxy/{config.app_id}"
            ),
        }
        if self.pairing_code:
            headers["X-Beeflow-Pairing-Code"] = _header_safe(self.pairing_code)
            log.info("bootstrap with pairing code %s", mask_pairing_code(self.pairing_code))
        body = {
            "themingName": meta.theming_name,
            "version": meta.version,
            "ncAdmins": [a.wire() for a in admins],
        }
        client = self._app[service_client.SERVICE]
        try:
            return await client.post_json(BOOTSTRAP_PATH, body, headers=headers, timeout=15.0)
        except service_client.ServiceCallError as exc:
            raise BootstrapFailure("saas_post", f"Bee Flow service: {exc}") from None

    async def _handle_reply(self, reply: service_client.ServiceReply, meta: NcMeta) -> None:
        data = reply.data if isinstance(reply.data, dict) else {}
        if reply.status == 200 and isinstance(data.get("tenantKey"), str) and data["tenantKey"]:
            await self._apply_key(data, meta)
            return
        if reply.status == 202:
            await self._enter_pending(data, meta)
            return
        message = data.get("error") if isinstance(data.get("error"), str) else ""
        code = data.get("code") if isinstance(data.get("code"), str) else None
        # Our own remediation for the codes we know (they name this connector's setup page);
        # the service's words for a code we do not.
        remediation = data.get("remediation") if isinstance(data.get("remediation"), str) else None
        if code in SERVICE_CODES:
            remediation = None
        if reply.ok:
            message = message or "the service answered without a tenant key"
        if self.pairing_code and isinstance(message, str) and self.pairing_code in message:
            # A service that quotes the code back must not put it into the error file or a log.
            message = message.replace(self.pairing_code, mask_pairing_code(self.pairing_code))
        raise BootstrapFailure(
            "saas_response",
            f"Bee Flow service: HTTP {reply.status}" + (f": {message}" if message else ""),
            code=code,
            remediation=remediation,
            http_status=reply.status,
        )

    # -- outcomes

    async def _apply_key(self, data: dict[str, Any], meta: NcMeta | None) -> None:
        """200: persist, then use. A write failure keeps the key in memory (it is valid) and
        says so; a re-bootstrap treats it as a failure and restores the old key instead."""
        state = self.state
        key = str(data["tenantKey"]).strip()
        REDACTOR.add(key)
        api_base = self._app[keys.API_BASE]
        record = {
            "tenantKey": key,
            "organizationId": _str_or_none(data.get("organizationId")),
            "organizationName": _str_or_none(data.get("organizationName")),
            "ncInstanceId": meta.instance_id if meta else state.instance_id,
            "ncVersion": meta.version if meta else state.nc_version,
            "boundApiBaseUrl": str(api_base.url),
            "provisionedAt": iso_utc(time.time()),
        }
        store_error: str | None = None
        try:
            await self.store.save_key(record)
        except storage.StoreError as exc:
            store_error = str(exc)
            log.error(
                "%s: the new tenant key is in use but will be lost on restart. %s",
                exc,
                REMEDIATION["storage_failed"],
            )
        # Files first, state last: whoever sees the key in memory sees the files settled.
        await asyncio.to_thread(self.store.remove, ERROR_FILE)
        await asyncio.to_thread(self.store.remove, PENDING_FILE)
        state.key = key
        state.organization_id = record["organizationId"]
        state.organization_name = record["organizationName"]
        state.instance_id = record["ncInstanceId"]
        state.nc_version = record["ncVersion"]
        state.bound_api_base_url = record["boundApiBaseUrl"]
        state.provisioned_at = record["provisionedAt"]
        state.source = "bootstrap"
        state.status = "ok"
        state.pending = None
        state.last_error = None
        state.store_error = store_error
        self.failures = 0
        self.pairing_code = None
        self._pending_record = None
        self._applied += 1
        log.info(
            "tenant key provisioned (%s; fingerprint %s, organisation %s)",
            data.get("code") if isinstance(data.get("code"), str) else "ok",
            state.fingerprint,
            state.organization_name or state.organization_id or "?",
        )

    async def _enter_pending(self, data: dict[str, Any], meta: NcMeta) -> None:
        """202 `pending_verification` (connectorBootstrap.js): an organisation on the service
        matches the admin's address, and a code e-mailed to an admin proves the binding. The
        service sends NO e-mail yet: the code goes out only when the connector asks (resend, or
        retarget to the admin doing the setup), see send_code()."""
        verify_url = data.get("verifyUrl") if isinstance(data.get("verifyUrl"), str) else None
        pending_id = data.get("pendingId")
        if not verify_url and not (isinstance(pending_id, str | int) and str(pending_id)):
            raise BootstrapFailure(
                "saas_response",
                "Bee Flow service: 202 without a verification (pendingId, verifyUrl)",
                category="unsupported_answer",
            )
        record: dict[str, Any] = {
            k: data[k]
            for k in (
                "code",
                "pendingId",
                "verifyUrl",
                "resendUrl",
                "retargetUrl",
                "expiresAt",
                "organizationName",
            )
            if isinstance(data.get(k), str | int)
        }
        record["kind"] = "verification"
        record["codeSent"] = False
        record["ncInstanceId"] = meta.instance_id
        if self.state.key:
            # A re-bootstrap holding the key in use: after a restart, load() restores both only
            # when tenant-key.json still holds this key.
            record["replacesKey"] = self.state.fingerprint
        await self._persist_pending(record)
        self._use_pending(record)

    async def _persist_pending(self, record: dict[str, Any]) -> None:
        try:
            await self.store.save_pending(record)
        except storage.StoreError as exc:
            self.state.store_error = str(exc)
            log.error("%s: the pending bootstrap is kept in memory only", exc)

    def _use_pending(self, record: dict[str, Any]) -> None:
        state = self.state
        state.pending = {k: record[k] for k in PUBLIC_PENDING if k in record}
        state.pending["kind"] = "verification"
        self._pending_record = record
        state.last_error = None
        state.status = "awaiting_email_verification"
        if record.get("codeSent"):
            log.info("bootstrap waits for the code e-mailed to %s", record.get("maskedEmail"))
        else:
            log.info(
                "bootstrap waits for e-mail verification; no code was sent yet: an administrator "
                "opening the setup page gets it"
            )
        if state.key:
            # Nothing else ends a held key's verification (ensure() never runs with a key).
            if self._expiry_task is not None and not self._expiry_task.done():
                self._expiry_task.cancel()
            self._expiry_task = spawn(self._expire(record), name="tenant-pending-expiry")
            log.info(
                "the tenant key in use (fingerprint %s) stays until the new one is issued",
                state.fingerprint,
            )

    async def _expire(self, record: dict[str, Any]) -> None:
        """A held key's verification that nobody finished: at expiresAt + grace (a resend moves
        expiresAt) the pending state ends and the key in use simply stays."""
        while self._pending_record is record:
            expires = _parseiso_utc(record.get("expiresAt"))
            if expires is None:
                return
            remaining = expires + self.pending_grace - time.time()
            if remaining > 0:
                await asyncio.sleep(min(remaining, self.expiry_check))
                continue
            async with self._rebootstrap_lock:
                if self._pending_record is record and self.state.key:
                    await self._abandon_pending(
                        "the e-mail verification expired", category="verification_expired"
                    )
            return

    async def _abandon_pending(self, message: str, category: str = "unknown") -> None:
        state = self.state
        state.pending = None
        self._pending_record = None
        await asyncio.to_thread(self.store.remove, PENDING_FILE)
        if state.key:
            # A re-bootstrap's 202 ended: the key it would have replaced simply stays. Nothing
            # to retry; the error says so (and is not a failed state).
            state.status = "ok"
            state.last_error = {
                "category": "rotation_not_completed",
                "phase": "saas_response",
                "error": message[:500],
                "remediation": REMEDIATION["rotation_not_completed"],
                "lastAttemptAt": iso_utc(time.time()),
            }
            log.warning(
                "%s; the previous tenant key stays in use (fingerprint %s)",
                message,
                state.fingerprint,
            )
            return
        await self._record_failure(
            BootstrapFailure("saas_response", message, category=category), time.time()
        )

    async def _record_failure(self, failure: BootstrapFailure, attempt: float) -> None:
        state = self.state
        self.failures += 1
        delay = min(self.retry_cap, self.retry_base * 2 ** (self.failures - 1))
        category = categorise(failure)
        record = {
            "status": "failed",
            "category": category,
            "phase": failure.phase,
            "error": failure.message,
            "remediation": failure.remediation or REMEDIATION.get(category, REMEDIATION["unknown"]),
            "lastAttemptAt": iso_utc(attempt),
            "nextRetryAt": iso_utc(time.time() + delay),
        }
        state.last_error = record
        if not state.key:
            state.status = "failed"
        log.warning(
            "tenant bootstrap failed (%s, %s): %s; retrying in %ds",
            category,
            failure.phase,
            failure.message,
            int(delay),
        )
        try:
            await self.store.save_error(record)
        except storage.StoreError as exc:
            log.warning("%s", exc)
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = spawn(self._retry_after(delay), name="tenant-bootstrap-retry")

    async def _retry_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._retry_task = None
        if not self.state.key and self.state.status not in PENDING_STATES:
            await self.ensure()

    # -- e-mail verification sub-flow (called by the setup page)

    def _verification(self) -> dict[str, Any]:
        """The pending 202 e-mail verification record, or 409 no_pending_verification."""
        record = self._pending_record
        if (
            self.state.status != "awaiting_email_verification"
            or not record
            or record.get("kind") != "verification"
        ):
            raise Conflict("No e-mail verification is pending", code="no_pending_verification")
        return record

    def _sub_flow_url(self, record: dict[str, Any], name: str) -> str | None:
        """`{name}Url` of the 202 answer (a path under the service URL), else the service's
        `/auth/connector/bootstrap/pending/{pendingId}/{name}`."""
        url = record.get(f"{name}Url")
        if isinstance(url, str) and url.startswith("/"):
            return url
        pending_id = record.get("pendingId")
        if isinstance(pending_id, str | int) and str(pending_id):
            return f"{BOOTSTRAP_PATH}/pending/{quote(str(pending_id), safe='')}/{name}"
        return None

    async def _sub_flow_failed(self, reply: service_client.ServiceReply) -> dict[str, Any]:
        """A verify, resend or retarget answer that is not a success. 404 (`not_found`), 410
        (`expired`, `org_gone`) and 409 `not_verification` / `already_bound` mean the service no
        longer has this verification: the pending state ends (a fresh bootstrap follows)."""
        data = reply.data if isinstance(reply.data, dict) else {}
        code = data.get("code")
        if reply.status in (404, 410) or (
            reply.status == 409 and code in ("not_verification", "already_bound")
        ):
            await self._abandon_pending(
                f"the e-mail verification ended: HTTP {reply.status}"
                + (f" {data['code']}" if isinstance(data.get("code"), str) else ""),
                category="verification_expired",
            )
        out: dict[str, Any] = {
            "ok": False,
            "status": reply.status,
            "code": data.get("code") or f"http_{reply.status}",
            "error": data.get("error") or f"HTTP {reply.status}",
        }
        for name in ("attemptsLeft", "retryAfter"):
            if isinstance(data.get(name), int) and not isinstance(data.get(name), bool):
                out[name] = data[name]
        return out

    async def verify_code(self, code: str) -> dict[str, Any]:
        """POST {verifyUrl} {"code"}: 200 with a key applies it; anything else is returned
        (with the service's HTTP `status`, and `attemptsLeft` when it said)."""
        async with self._rebootstrap_lock:
            record = self._verification()
            url = self._sub_flow_url(record, "verify")
            if url is None:
                raise Conflict("No e-mail verification is pending", code="no_pending_verification")
            client = self._app[service_client.SERVICE]
            try:
                reply = await client.post_json(url, {"code": code.strip()}, timeout=15.0)
            except service_client.ServiceCallError as exc:
                return {"ok": False, "status": None, "code": "saas_unreachable", "error": str(exc)}
            data = reply.data if isinstance(reply.data, dict) else {}
            if reply.status == 200 and isinstance(data.get("tenantKey"), str) and data["tenantKey"]:
                await self._apply_key(data, None)
                return {"ok": True, "fingerprint": self.state.fingerprint}
            out = await self._sub_flow_failed(reply)
            if "attemptsLeft" in out and self.state.pending is not None:
                self.state.pending["attemptsLeft"] = out["attemptsLeft"]
            return out

    async def resend(self) -> dict[str, Any]:
        """POST {resendUrl}: the service e-mails a new code to the address its pending row holds
        (the bootstrap's admin, or whoever it was retargeted to). Returns {ok, expiresAt,
        maskedEmail, emailSent, sentVia}, or {ok: False, status, code, error}."""
        return await self._new_code("resend", {}, "sent to the address the service holds")

    def verification_pending(self) -> bool:
        """An e-mail verification is waiting for a code (the setup page's code field)."""
        try:
            self._verification()
        except Conflict:
            return False
        return True

    async def retarget(self, email: str, uid: str, display_name: str) -> dict[str, Any]:
        """POST {retargetUrl} {"email", "uid", "displayName"}: the service e-mails the code to
        the admin doing the setup (if that address belongs to the organisation: 403
        email_not_in_org otherwise). Same answer as resend()."""
        body = {"email": email, "uid": uid, "displayName": display_name}
        return await self._new_code("retarget", body, "sent to the admin doing the setup")

    async def send_code(self, user: NcUser | None) -> dict[str, Any]:
        """Send the pending verification's code where it helps most: to `user` (the admin doing
        the setup) when they have an address, else to the address the service holds."""
        if user is not None and user.email:
            return await self.retarget(user.email, user.uid, user.display_name or user.uid)
        return await self.resend()

    def code_sent(self) -> bool:
        record = self._pending_record
        return bool(record and record.get("codeSent"))

    async def _new_code(self, kind: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        """Ask the service for a new code through the pending record's `kind` URL."""
        async with self._rebootstrap_lock:
            record = self._verification()
            url = self._sub_flow_url(record, kind)
            if url is None:
                raise Conflict("No e-mail verification is pending", code="no_pending_verification")
            client = self._app[service_client.SERVICE]
            try:
                reply = await client.post_json(url, body, timeout=15.0)
            except service_client.ServiceCallError as exc:
                return {"ok": False, "status": None, "code": "saas_unreachable", "error": str(exc)}
            data = reply.data if isinstance(reply.data, dict) else {}
            if not reply.ok or data.get("ok") is False:
                return await self._sub_flow_failed(reply)
            fresh: dict[str, Any] = {
                k: data[k] for k in ("expiresAt", "maskedEmail") if isinstance(data.get(k), str)
            }
            fresh["codeSent"] = data.get("emailSent") is not False
            fresh["sentVia"] = kind
            record.update(fresh)
            await self._persist_pending(record)
            if self.state.pending is not None:
                self.state.pending.update(fresh)
                self.state.pending.pop("attemptsLeft", None)  # a new code, new attempts
            log.info("verification code %s (to %s)", what, record.get("maskedEmail", "the admin"))
            return {
                "ok": True,
                "expiresAt": record.get("expiresAt"),
                "maskedEmail": record.get("maskedEmail"),
                "emailSent": fresh["codeSent"],
                "sentVia": kind,
            }

    # -- re-bootstrap (reference 6.7)

    async def rebootstrap(self, pairing_code: str | None = None) -> None:
        """Provision again (rotation, a pairing code, or after the setup page changed the
        service URL). The current key file is kept as tenant-key.previous.json. On failure
        everything is restored and BootstrapFailed is raised; a 202 leaves the pending state in
        place.

        No outage: the key in use keeps serving every request while the service is asked and,
        when it answers 202 (an e-mail code, an approval), until the new key is issued; if that
        never happens it simply stays. Only a changed service URL drops it at once (a key
        issued by another service is no use there), as does the first bootstrap (no key)."""
        config = self._app[keys.CONFIG]
        if config.tenant_key_env:
            raise Conflict(
                "The tenant key is set by BEEFLOW_TENANT_KEY and cannot be re-provisioned",
                code="tenant_key_env_locked",
            )
        async with self._rebootstrap_lock:
            if self._task is not None and not self._task.done():
                await asyncio.shield(self._task)
            if self._retry_task is not None and not self._retry_task.done():
                self._retry_task.cancel()
            state = self.state
            saved = attrs.evolve(state)
            saved_failures, saved_pairing = self.failures, self.pairing_code
            saved_record = self._pending_record
            raw_key = await asyncio.to_thread(self.store.read_raw, KEY_FILE)
            raw_pending = await asyncio.to_thread(self.store.read_raw, PENDING_FILE)
            if raw_key is not None:
                try:
                    await self.store.write_raw(PREVIOUS_FILE, raw_key)
                except storage.StoreError as exc:
                    raise BootstrapFailed(
                        f"Cannot keep a copy of the current key: {exc.reason}",
                        code="tenant_store_failed",
                    ) from None
            hold = self._can_hold()
            await asyncio.to_thread(self.store.remove, PENDING_FILE)
            if hold:
                state.pending = None
                state.last_error = None
                state.store_error = None
                self._pending_record = None
            else:
                await asyncio.to_thread(self.store.remove, KEY_FILE)
                _clear(state)
            self.failures = 0
            if pairing_code:
                self.pairing_code = pairing_code
            applied = self._applied
            self._task = spawn(self._provision(), name="tenant-rebootstrap")
            await asyncio.shield(self._task)
            if self._applied != applied and state.key and not state.store_error:
                if self._retry_task is not None:
                    self._retry_task.cancel()
                return
            if self._applied == applied and state.status in PENDING_STATES:
                return
            failure = dict(state.last_error or {})
            if self._applied != applied and state.store_error:
                failure = {
                    "category": "storage_failed",
                    "error": state.store_error,
                    "remediation": REMEDIATION["storage_failed"],
                }
            if self._retry_task is not None:
                self._retry_task.cancel()
            # Put everything back as it was.
            for field in attrs.fields(TenantState):
                setattr(state, field.name, getattr(saved, field.name))
            self.failures, self.pairing_code = saved_failures, saved_pairing
            self._pending_record = saved_record
            for name, raw in ((KEY_FILE, raw_key), (PENDING_FILE, raw_pending)):
                if raw is not None:
                    try:
                        await self.store.write_raw(name, raw)
                    except storage.StoreError as exc:
                        log.error("%s while restoring the previous tenant state", exc)
            raise BootstrapFailed(
                str(failure.get("error") or "no tenant key was provisioned"),
                code="bootstrap_failed",
                extra={
                    "category": failure.get("category", "unknown"),
                    "remediation": failure.get("remediation", REMEDIATION["unknown"]),
                },
            )

    def _can_hold(self) -> bool:
        """The key in use may keep serving during a re-bootstrap: it exists and was issued by
        the service the connector talks to now."""
        state = self.state
        if not state.key:
            return False
        bound = (state.bound_api_base_url or "").rstrip("/")
        return not bound or bound == str(self._app[keys.API_BASE].url).rstrip("/")

    # -- start-up and shutdown

    async def load(self) -> None:
        """Start-up: the cache file, else a still-valid pending state; the last error."""
        state = self.state
        config = self._app[keys.CONFIG]
        if config.tenant_key_env:
            REDACTOR.add(config.tenant_key_env)
            return
        record = await asyncio.to_thread(self.store.load_key)
        if record is not None:
            key = str(record["tenantKey"]).strip()
            REDACTOR.add(key)
            state.key = key
            state.organization_id = _str_or_none(record.get("organizationId"))
            state.organization_name = _str_or_none(record.get("organizationName"))
            state.instance_id = _str_or_none(record.get("ncInstanceId")) or state.instance_id
            state.nc_version = _str_or_none(record.get("ncVersion"))
            state.bound_api_base_url = _str_or_none(record.get("boundApiBaseUrl"))
            state.provisioned_at = _str_or_none(record.get("provisionedAt"))
            state.source, state.status = "cache", "ok"
            self.pairing_code = None  # BEEFLOW_PAIRING_CODE is for the first bootstrap only
            self._pin_api_base()
            await asyncio.to_thread(self.store.remove, ERROR_FILE)
            log.info("tenant key loaded from %s (fingerprint %s)", KEY_FILE, state.fingerprint)
            pending = await asyncio.to_thread(self.store.load_pending)
            if pending is not None:
                # A re-bootstrap's 202 that replaces this very key: both come back; anything
                # else next to a key (stale, expired, another key's) is dropped.
                if pending.get("replacesKey") == state.fingerprint and self._resumable(pending):
                    self._use_pending(pending)
                else:
                    await asyncio.to_thread(self.store.remove, PENDING_FILE)
            return
        pending = await asyncio.to_thread(self.store.load_pending)
        if pending is not None:
            if self._resumable(pending):
                if isinstance(pending.get("ncInstanceId"), str):
                    state.instance_id = pending["ncInstanceId"]
                self._use_pending(pending)
                return
            await asyncio.to_thread(self.store.remove, PENDING_FILE)
        last = await asyncio.to_thread(self.store.load_error)
        if last is not None and last.get("status") == "failed":
            state.last_error = last
            state.status = "failed"

    def _resumable(self, pending: dict[str, Any]) -> bool:
        """A verification, until expiresAt + 5 min."""
        expires = _parseiso_utc(pending.get("expiresAt"))
        usable = pending.get("kind") == "verification"
        return usable and (expires is None or time.time() <= expires + self.pending_grace)

    def _pin_api_base(self) -> None:
        """Reference 6.2: a cached binding pins the service URL unless the env sets one, so a
        changed default cannot silently move the connector and mint a second organisation."""
        bound = self.state.bound_api_base_url
        api_base = self._app[keys.API_BASE]
        if not bound:
            return
        try:
            url = URL(bound)
        except ValueError:
            return
        if not url.scheme.startswith("http") or not url.host:
            return
        if api_base.locked:
            if str(api_base.url).rstrip("/") != bound.rstrip("/"):
                log.warning(
                    "BEEFLOW_API_BASE_URL differs from the service the tenant key was issued by "
                    "(%s); the service may reject the key",
                    bound,
                )
            return
        api_base.url = url
        api_base.source = "bound"

    async def close(self) -> None:
        tasks = (self._task, self._retry_task, self._expiry_task)
        for task in tasks:
            if task is not None and not task.done():
                task.cancel()
        for task in tasks:
            if task is not None and not task.done():
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, 2.0)


def _admin_failure(exc: NextcloudError) -> BootstrapFailure:
    category = "nextcloud_auth_paused" if exc.kind == "auth_budget_spent" else None
    return BootstrapFailure("admin", f"Nextcloud: {exc}", category=category)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _clear(state: TenantState) -> None:
    state.key = None
    state.organization_id = None
    state.organization_name = None
    state.bound_api_base_url = None
    state.provisioned_at = None
    state.pending = None
    state.last_error = None
    state.store_error = None
    state.source = "none"
    state.status = "initialising"


# ------------------------------------------------------------------ wiring

BOOTSTRAPPER: web.AppKey[Bootstrapper] = web.AppKey("bootstrapper")


def bootstrapper(app: web.Application) -> Bootstrapper:
    return app[BOOTSTRAPPER]


def health(app: web.Application) -> Callable[[bool], dict[str, Any]]:
    """Reference 5.1: the state for everyone; details only for callers with the AppAPI secret."""

    def provide(trusted: bool) -> dict[str, Any]:
        state = app[keys.TENANT]
        out: dict[str, Any] = {"state": state.status}
        if state.previous_key_in_use:
            # Waiting for the new key does not stop anything: the previous one still serves.
            out["previousKeyInUse"] = True
        if state.pending and state.status in PENDING_STATES:
            if "expiresAt" in state.pending:
                out["expiresAt"] = state.pending["expiresAt"]
            if trusted:
                out.update({k: v for k, v in state.pending.items() if k != "expiresAt"})
        if state.status == "failed":
            if trusted and state.last_error:
                for name in ("category", "error", "remediation", "lastAttemptAt", "nextRetryAt"):
                    if state.last_error.get(name) is not None:
                        out[name] = state.last_error[name]
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
            if state.key and state.last_error:
                out["lastError"] = state.last_error.get("error")
        return out

    return provide


async def _tenant_ctx(app: web.Application) -> AsyncIterator[None]:
    boot = app[BOOTSTRAPPER]
    await boot.load()
    yield
    await boot.close()


def _phase(app: web.Application) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        # Skipped when the key is explicit or cached; a failure is recorded, retried with
        # backoff and shown in the heartbeat, but does not fail the install (reference 5.2).
        await app[BOOTSTRAPPER].ensure()

    return run


def setup(app: web.Application) -> None:
    """Install the tenant state, its store, the bootstrap phase (25), health and REBOOTSTRAP."""
    config = app[keys.CONFIG]
    # The host-keyed id is known without any call; a cached binding or capabilities that
    # expose the real id replace it.
    state = TenantState(instance_id=host_instance_id(config.public_nextcloud_url))
    if config.tenant_key_env:
        state.key = config.tenant_key_env
        state.status = "ok"
        state.source = "env"
    app[keys.TENANT] = state
    service_client.setup(app)
    boot = Bootstrapper(app, TenantStore(config.persistent_storage))
    if config.pairing_code and not config.tenant_key_env:
        # Used by the first bootstrap; load() drops it when a cached key already exists.
        boot.pairing_code = config.pairing_code
    app[BOOTSTRAPPER] = boot
    app[keys.REBOOTSTRAP] = boot.rebootstrap
    app.setdefault(keys.INIT_PHASES, []).append(InitPhase("bootstrap", 25, _phase(app)))
    app.setdefault(keys.HEALTH, {})["bootstrap"] = health(app)
    app.cleanup_ctx.append(_tenant_ctx)
