"""Nextcloud: reachable and installed, a supported version, and the ONE authenticated call that
proves the AppAPI secret (Nextcloud locks an IP out after more than 10 refused logins in 30
minutes)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Final

import aiohttp
from yarl import URL

from beeflow.errors import NextcloudError
from beeflow.nextcloud.client import NextcloudClient
from beeflow.nextcloud.ocs import OcsResult
from beeflow.ops.doctor.result import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    Check,
    Context,
    network_reason,
    probe_get,
    remedy_bruteforce,
    remedy_repair,
)

# The Nextcloud versions this release supports (appinfo/info.xml <dependencies>).
NC_MIN: Final = 31
NC_MAX: Final = 35


async def check_nextcloud(ctx: Context, session: aiohttp.ClientSession) -> Check:
    url = ctx.config.nextcloud_url
    remedy = (
        "NEXTCLOUD_URL must be Nextcloud's base URL as reachable from this container (the "
        "deploy daemon's nextcloud_url), without /index.php."
    )
    try:
        probe = await probe_get(ctx, session, URL(str(url) + "/status.php", encoded=True))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Check("nextcloud", FAIL, f"{url}/status.php: {network_reason(exc)}", remedy)
    data = probe.data if isinstance(probe.data, dict) else None
    if probe.status != 200 or data is None or "installed" not in data:
        return Check(
            "nextcloud",
            FAIL,
            f"{url}/status.php answered HTTP {probe.status} without Nextcloud's status",
            remedy,
        )
    ctx.nc_probe = probe
    probe.local_ip = await local_address(url, ctx.timeout)
    details = {"version": data.get("versionstring"), "localAddress": probe.local_ip}
    if not data.get("installed"):
        return Check("nextcloud", FAIL, "Nextcloud is not installed", remedy, details)
    if data.get("maintenance"):
        return Check(
            "nextcloud",
            FAIL,
            "Nextcloud is in maintenance mode",
            "Finish the upgrade or maintenance, then `occ maintenance:mode --off`.",
            details,
        )
    if data.get("needsDbUpgrade"):
        return Check(
            "nextcloud",
            WARN,
            "Nextcloud needs a database upgrade",
            "Run `occ upgrade`.",
            details,
        )
    seen = f", reached from {probe.local_ip}" if probe.local_ip else ""
    return Check("nextcloud", PASS, f"{url} is up{seen}", details=details)


def check_nextcloud_version(ctx: Context) -> Check:
    if ctx.nc_probe is None:
        return Check("nextcloud_version", SKIP, "Nextcloud was not reachable")
    data = ctx.nc_probe.data if isinstance(ctx.nc_probe.data, dict) else {}
    text = str(data.get("versionstring") or data.get("version") or "")
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if not match:
        return Check("nextcloud_version", WARN, f"unreadable Nextcloud version {text!r}")
    major = int(match.group(1))
    parts = tuple(int(p or 0) for p in match.groups())
    supported = f"{NC_MIN} to {NC_MAX}"
    if not NC_MIN <= major <= NC_MAX:
        return Check(
            "nextcloud_version",
            FAIL,
            f"Nextcloud {text} is outside the supported range {supported}",
            f"Use Nextcloud {supported}, or a connector release that supports {major}.",
        )
    if parts == (33, 0, 0):
        return Check(
            "nextcloud_version",
            WARN,
            "Nextcloud 33.0.0: its events listener is broken; user sync relies on the "
            "periodic reconciliation",
            "Update to 33.0.1 or later.",
        )
    notes = []
    if major >= 32 and not ctx.config.harp:
        notes.append("HaRP is available: streamed replies need it")
    summary = f"Nextcloud {text} is supported ({supported})"
    if notes:
        summary += "; " + "; ".join(notes)
    return Check("nextcloud_version", PASS, summary)


async def check_appapi_secret(ctx: Context, session: aiohttp.ClientSession) -> Check:
    """The ONE authenticated call: GET ex-app/state (allowed even while disabled)."""
    name = "appapi_secret"
    if ctx.nc_probe is None:
        return Check(name, SKIP, "Nextcloud was not reachable: no authenticated call made")
    ip = ctx.nc_probe.local_ip
    client = NextcloudClient(ctx.config, session)
    try:
        result: OcsResult = await client.probe()
    except NextcloudError as exc:
        return Check(
            name,
            FAIL,
            f"the authenticated call failed: {exc}",
            "Nextcloud answered status.php but not the AppAPI call: check that the AppAPI "
            "app is enabled and that a proxy in front of Nextcloud passes OCS requests.",
        )
    where = {"httpStatus": result.http_status, "ocsStatus": result.statuscode}
    if result.http_status == 429 or result.statuscode == 429:
        return Check(
            name,
            FAIL,
            "Nextcloud's brute-force protection blocks AppAPI logins from this container",
            remedy_bruteforce(ip) + " Then fix the secret if this check still fails.",
            where,
        )
    if result.auth_refused:
        return Check(
            name,
            FAIL,
            "Nextcloud refused the AppAPI login (HTTP "
            f"{result.http_status}, OCS {result.statuscode}): the app is not registered, or "
            "APP_SECRET differs from the secret Nextcloud stored",
            remedy_repair(ctx.config.app_id) + " " + remedy_bruteforce(ip),
            where,
        )
    if not result.ok:
        return Check(
            name,
            FAIL,
            f"unexpected answer to the AppAPI login: HTTP {result.http_status}, "
            f"OCS {result.statuscode}",
            "Check that the AppAPI app is installed and enabled in Nextcloud.",
            where,
        )
    enabled = result.data in (1, True, "1")
    state = "enabled" if enabled else "registered but disabled"
    return Check(name, PASS, f"Nextcloud accepts the AppAPI secret; the app is {state}")


async def local_address(url: URL, timeout: float) -> str | None:
    """The address this container connects to Nextcloud from: the IP Nextcloud's brute-force
    protection counts (unless a proxy or NAT sits between them)."""
    if not url.host:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(url.host, port), timeout)
    except (OSError, TimeoutError):
        return None
    sockname = writer.get_extra_info("sockname")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return str(sockname[0]) if isinstance(sockname, tuple) and sockname else None
