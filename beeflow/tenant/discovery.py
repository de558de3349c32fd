"""What the bootstrap learns from Nextcloud before it asks the service: the instance's id,
version and name (capabilities) and its administrators with an e-mail address (through AppAPI,
as the administrators themselves)."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final
from urllib.parse import quote

import attrs
from yarl import URL

from beeflow.errors import NextcloudError
from beeflow.nextcloud.client import NextcloudClient
from beeflow.nextcloud.users import NcUser, user_from_ocs
from beeflow.tenant.failures import BootstrapFailed

DISCOVERY_BATCH: Final = 5


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
    """`nc-host:<host[:port]>` as WHATWG's `new URL(base).host` spells it: lower-case host,
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
        raise BootstrapFailed("capabilities", "capabilities answer has no data")
    version = data.get("version")
    version_string = version.get("string") if isinstance(version, dict) else None
    if not isinstance(version_string, str) or not version_string:
        raise BootstrapFailed("capabilities", "capabilities answer has no version")
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


CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f]")


def header_safe(value: str) -> str:
    return CONTROL_CHARS.sub(" ", value).strip()[:255]


class Discovery:
    """The calls to Nextcloud a provisioning run makes before it asks the service."""

    def __init__(self, client: NextcloudClient, public_url: URL) -> None:
        self._client = client
        self._public_url = public_url

    async def capabilities(self) -> NcMeta:
        client = self._client
        try:
            result = await client.ocs(
                "GET", "/ocs/v2.php/cloud/capabilities", user=None, timeout=10.0
            )
        except NextcloudError as exc:
            raise BootstrapFailed("capabilities", f"Nextcloud capabilities: {exc}") from None
        if not result.ok:
            raise BootstrapFailed(
                "capabilities",
                f"Nextcloud capabilities: HTTP {result.http_status} OCS {result.statuscode}",
            )
        return meta_from_capabilities(result.data, self._public_url)

    async def admins(self) -> list[Admin]:
        """AppAPI's user list (as the service), then each user's info impersonating
        that user, in parallel batches of 5. `cloud/groups/admin/users` with an empty user is
        401 on NC 32 (nobody is logged in; the AppAPI login itself succeeds and nothing is
        counted), so it is only asked as a found admin. A disabled account answers its own
        lookup with 997, which the client reports as `user_refused` without spending the auth
        budget: that user is skipped."""
        client = self._client
        try:
            listing = await client.ocs(
                "GET", "/ocs/v2.php/apps/app_api/api/v1/users", timeout=10.0, warmup=30.0
            )
        except NextcloudError as exc:
            raise _admin_failure(exc) from None
        if not listing.ok or not isinstance(listing.data, list):
            raise BootstrapFailed(
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
            Admin(u.uid, u.email, header_safe(u.display_name) or u.uid)
            for u in sorted(admins.values(), key=lambda u: u.uid)
        ]
        if not found:
            raise BootstrapFailed("admin", "no Nextcloud administrator found through AppAPI")
        with_email = [a for a in found if a.email]
        if not with_email:
            raise BootstrapFailed(
                "admin",
                f"none of the {len(found)} Nextcloud administrator(s) has an e-mail address",
                category="admin_email_missing",
            )
        return with_email

    async def _user(self, uid: str, as_user: str) -> NcUser | None:
        client = self._client
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
        client = self._client
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


def _admin_failure(exc: NextcloudError) -> BootstrapFailed:
    category = "nextcloud_auth_paused" if exc.kind == "auth_budget_spent" else None
    return BootstrapFailed("admin", f"Nextcloud: {exc}", category=category)
