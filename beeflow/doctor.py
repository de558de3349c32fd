"""`python -m beeflow doctor`: check this installation end to end and say what to do about it.

Every check prints one PASS / WARN / FAIL / SKIP line and, when it is not a pass, the fix.
`--json` prints the same as one JSON object. Exit code 0 when nothing failed, 1 otherwise.
Secrets (APP_SECRET, the tenant key, HP_SHARED_KEY) are never printed: the tenant key appears
only as its 16-hex fingerprint.

Nextcloud counts every refused AppAPI login against this container's IP and locks the IP out
after more than 10 in 30 minutes, so doctor makes exactly ONE authenticated call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
from yarl import URL

from beeflow import __version__, tenant
from beeflow.config import Config
from beeflow.errors import ConfigError, NextcloudError
from beeflow.nextcloud import NextcloudClient, OcsResult, appapi_headers
from beeflow.transports.frpc import (
    DEFAULT_PIN_FILE,
    ENGINE_PORTS,
    EXAPP_PORTS,
    PINNED_VERSION,
    FrpcError,
    certs_remedy,
    diagnose,
    port_problem,
    port_remedy,
    read_pin,
)
from beeflow.transports.frpc import read_version as read_frpc_version
from beeflow.transports.frpc import resolve_binary as resolve_frpc

PASS: Final = "pass"  # noqa: S105 - a status, not a password
WARN: Final = "warn"
FAIL: Final = "fail"
SKIP: Final = "skip"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
# The Nextcloud versions this release supports (appinfo/info.xml <dependencies>).
NC_MIN: Final = 31
NC_MAX: Final = 34
CERT_FILES: Final = ("ca.crt", "client.crt", "client.key")
SETUP_FILE: Final = "setup-config.json"  # the setup picker's saved choice (beeflow.setup.store)
_MASK: Final = "***"

Clock = Callable[[], float]


@attrs.frozen
class Check:
    """One result. `remedy` says what to do when status is not PASS; never holds a secret."""

    name: str
    status: str
    summary: str
    remedy: str = ""
    details: dict[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "summary": self.summary}
        if self.remedy:
            out["remedy"] = self.remedy
        if self.details:
            out["details"] = self.details
        return out


@attrs.define
class _Probe:
    """What an anonymous GET learnt: status, JSON body, Date header, local address used."""

    status: int
    data: Any
    date: float | None
    sent_at: float
    local_ip: str | None
    location: str | None = None


# ------------------------------------------------------------------ helpers


def _remedy_repair(app_id: str) -> str:
    return (
        "Re-register the app so Nextcloud and the container share one secret: "
        f"`occ app_api:app:unregister {app_id}` then `occ app_api:app:register {app_id} "
        "<daemon> ...` (docs/install-*.md has the full command)."
    )


def _remedy_bruteforce(ip: str | None) -> str:
    where = ip or "<connector-ip>"
    return (
        "Each refused AppAPI login counts against this container's IP; after more than 10 in 30 "
        "minutes Nextcloud refuses every AppAPI call from it for 30 minutes. Inspect with "
        f"`occ security:bruteforce:attempts {where} app_api`, clear with "
        f"`occ security:bruteforce:reset {where}`."
    )


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _skew_check(name: str, who: str, probe: _Probe | None, allowed: int, clock: Clock) -> Check:
    if probe is None:
        return Check(name, SKIP, f"{who} was not reachable")
    if probe.date is None:
        return Check(name, SKIP, f"{who} sent no Date header")
    # The Date header has a resolution of one second; our clock is read when the answer came.
    skew = probe.sent_at - probe.date
    magnitude = abs(skew)
    direction = "ahead of" if skew > 0 else "behind"
    summary = f"this container's clock is {magnitude:.0f} s {direction} {who}"
    details = {"skewSeconds": round(skew, 1), "allowedSeconds": allowed}
    remedy = (
        "Synchronise the clocks with NTP (host and containers share the host clock). "
        f"Signed /nc callbacks are refused beyond BEEFLOW_SIG_SKEW_SECONDS={allowed}."
    )
    if magnitude > allowed + 1:
        return Check(name, FAIL, summary, remedy, details)
    if magnitude > allowed / 2:
        return Check(name, WARN, summary + " (more than half the allowed skew)", remedy, details)
    return Check(name, PASS, summary, details=details)


def _reason(exc: BaseException) -> str:
    """A network failure in words (no URL credentials, no internals)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate is not trusted by this container"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "DNS lookup failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _read_json_file(path: Path) -> tuple[Any, str | None]:
    """(data, problem). Missing file -> (None, None)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or type(exc).__name__}"
    try:
        return json.loads(raw), None
    except ValueError:
        return None, f"{path} is not valid JSON"


# ------------------------------------------------------------------ the checks


class Doctor:
    """Runs the checks against one Config. `clock` and `timeout` exist for tests."""

    def __init__(self, config: Config, *, clock: Clock = time.time, timeout: float = 10.0):
        self.config = config
        self.clock = clock
        self.timeout = timeout
        self.nc_probe: _Probe | None = None
        self.service_probe: _Probe | None = None
        # The running connector's tunnel status (its heartbeat), when one answered.
        self.tunnel: dict[str, Any] = {}

    async def run(self) -> list[Check]:
        checks = [self.check_config(), self.check_storage()]
        connector = aiohttp.TCPConnector(limit=4, force_close=True)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": f"beeflow-doctor/{__version__}"},
        ) as session:
            checks.append(await self.check_nextcloud(session))
            checks.append(self.check_nextcloud_version())
            checks.append(await self.check_appapi_secret(session))
            checks.append(
                _skew_check(
                    "clock_nextcloud",
                    "Nextcloud",
                    self.nc_probe,
                    self.config.sig_skew_seconds,
                    self.clock,
                )
            )
            checks.append(await self.check_service(session))
            checks.append(
                _skew_check(
                    "clock_service",
                    "the Bee Flow service",
                    self.service_probe,
                    self.config.sig_skew_seconds,
                    self.clock,
                )
            )
        checks.append(self.check_tenant_key())
        checks.append(await self.check_running())
        if self.config.harp:
            checks.append(await self.check_harp_socket())
            checks.append(self.check_harp_port())
            checks.append(await self.check_frpc())
            checks.append(await self.check_frps())
            checks.append(self.check_frp_certs())
        return checks

    # -- config and storage

    def check_config(self) -> Check:
        c = self.config
        if c.harp:
            mode = f"HaRP mode (socket {c.socket_path}, frps {c.hp_frp_address}:{c.hp_frp_port})"
        else:
            mode = f"legacy mode (TCP {c.app_host}:{c.app_port})"
        details = {
            "appId": c.app_id,
            "appVersion": c.app_version,
            "mode": "harp" if c.harp else "legacy",
            "nextcloudUrl": str(c.nextcloud_url),
            "tenantKey": "auto" if c.tenant_key_auto else "set by BEEFLOW_TENANT_KEY",
        }
        return Check("config", PASS, f"{c.app_id} {c.app_version}, {mode}", details=details)

    def check_storage(self) -> Check:
        directory = self.config.persistent_storage
        remedy = (
            "APP_PERSISTENT_STORAGE must be a writable directory (AppAPI mounts the volume "
            f"nc_app_{self.config.app_id}_data there); the tenant key is cached in it."
        )
        if not directory.exists():
            parent = directory.parent
            if parent.is_dir() and os.access(parent, os.W_OK):
                return Check(
                    "storage",
                    WARN,
                    f"{directory} does not exist yet (the connector creates it)",
                    remedy,
                )
            return Check("storage", FAIL, f"{directory} does not exist", remedy)
        if not directory.is_dir():
            return Check("storage", FAIL, f"{directory} is not a directory", remedy)
        try:
            fd, name = tempfile.mkstemp(prefix=".doctor-", dir=directory)
            try:
                os.write(fd, b"beeflow doctor")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as exc:
            return Check(
                "storage",
                FAIL,
                f"cannot write in {directory}: {exc.strerror or type(exc).__name__}",
                remedy,
            )
        return Check("storage", PASS, f"{directory} is writable")

    # -- Nextcloud

    async def _get(self, session: aiohttp.ClientSession, url: URL) -> _Probe:
        async with session.get(url, allow_redirects=False) as resp:
            sent_at = self.clock()
            body = await resp.read()
            try:
                data = json.loads(body) if body else None
            except ValueError:
                data = None
            return _Probe(
                status=resp.status,
                data=data,
                date=_http_date(resp.headers.get("Date")),
                sent_at=sent_at,
                local_ip=None,
                location=resp.headers.get("Location"),
            )

    async def check_nextcloud(self, session: aiohttp.ClientSession) -> Check:
        url = self.config.nextcloud_url
        remedy = (
            "NEXTCLOUD_URL must be Nextcloud's base URL as reachable from this container (the "
            "deploy daemon's nextcloud_url), without /index.php."
        )
        try:
            probe = await self._get(session, URL(str(url) + "/status.php", encoded=True))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Check("nextcloud", FAIL, f"{url}/status.php: {_reason(exc)}", remedy)
        data = probe.data if isinstance(probe.data, dict) else None
        if probe.status != 200 or data is None or "installed" not in data:
            return Check(
                "nextcloud",
                FAIL,
                f"{url}/status.php answered HTTP {probe.status} without Nextcloud's status",
                remedy,
            )
        self.nc_probe = probe
        probe.local_ip = await _local_address(url, self.timeout)
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

    def check_nextcloud_version(self) -> Check:
        if self.nc_probe is None:
            return Check("nextcloud_version", SKIP, "Nextcloud was not reachable")
        data = self.nc_probe.data if isinstance(self.nc_probe.data, dict) else {}
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
        if major >= 32 and not self.config.harp:
            notes.append("HaRP is available: streamed replies need it")
        summary = f"Nextcloud {text} is supported ({supported})"
        if notes:
            summary += "; " + "; ".join(notes)
        return Check("nextcloud_version", PASS, summary)

    async def check_appapi_secret(self, session: aiohttp.ClientSession) -> Check:
        """The ONE authenticated call: GET ex-app/state (allowed even while disabled)."""
        name = "appapi_secret"
        if self.nc_probe is None:
            return Check(name, SKIP, "Nextcloud was not reachable: no authenticated call made")
        ip = self.nc_probe.local_ip
        client = NextcloudClient(self.config, session)
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
                _remedy_bruteforce(ip) + " Then fix the secret if this check still fails.",
                where,
            )
        if result.auth_refused:
            return Check(
                name,
                FAIL,
                "Nextcloud refused the AppAPI login (HTTP "
                f"{result.http_status}, OCS {result.statuscode}): the app is not registered, or "
                "APP_SECRET differs from the secret Nextcloud stored",
                _remedy_repair(self.config.app_id) + " " + _remedy_bruteforce(ip),
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

    # -- the Bee Flow service

    def api_base(self) -> tuple[URL, str]:
        """The service URL the server would use: env, else the tenant binding, else the setup
        page's choice, else the default."""
        c = self.config
        if c.api_base_url_from_env:
            return c.api_base_url, "BEEFLOW_API_BASE_URL"
        record, _ = _read_json_file(c.persistent_storage / tenant.KEY_FILE)
        bound = record.get("boundApiBaseUrl") if isinstance(record, dict) else None
        if isinstance(bound, str) and bound.startswith(("http://", "https://")):
            return URL(bound.rstrip("/")), f"{tenant.KEY_FILE} (bound)"
        choice, _ = _read_json_file(c.persistent_storage / SETUP_FILE)
        chosen = choice.get("apiBaseUrl") if isinstance(choice, dict) else None
        if isinstance(chosen, str) and chosen.startswith(("http://", "https://")):
            return URL(chosen.rstrip("/")), "the setup page"
        return c.api_base_url, "default"

    async def check_service(self, session: aiohttp.ClientSession) -> Check:
        base, source = self.api_base()
        url = URL(str(base) + "/api/health", encoded=True)
        details = {"url": str(url), "source": source}
        remedy = (
            "The container must reach the Bee Flow service over HTTPS: check DNS, proxy and "
            "firewall, and the service URL (BEEFLOW_API_BASE_URL or the setup page)."
        )
        try:
            probe = await self._get(session, url)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Check("service", FAIL, f"{url}: {_reason(exc)}", remedy, details)
        self.service_probe = probe
        if 300 <= probe.status < 400:
            return Check(
                "service",
                FAIL,
                f"{url} redirects (HTTP {probe.status}) to {probe.location}",
                "Enter the final URL of the service: redirects are not followed.",
                details,
            )
        if probe.status != 200:
            return Check("service", FAIL, f"{url} answered HTTP {probe.status}", remedy, details)
        data = probe.data if isinstance(probe.data, dict) else {}
        version = data.get("version")
        summary = f"{url} is healthy" + (f" (version {version})" if version else "")
        return Check("service", PASS, summary, details=details)

    # -- tenant key

    def check_tenant_key(self) -> Check:
        c = self.config
        name = "tenant_key"
        if c.tenant_key_env:
            fp = tenant.fingerprint(c.tenant_key_env)
            return Check(
                name,
                PASS,
                f"set by BEEFLOW_TENANT_KEY (fingerprint {fp})",
                details={"source": "env", "fingerprint": fp},
            )
        directory = c.persistent_storage
        record, problem = _read_json_file(directory / tenant.KEY_FILE)
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
                    f"{tenant.KEY_FILE} has no usable tenantKey",
                    "Restore the file from a backup, or re-bootstrap from the setup page.",
                )
            assert isinstance(record, dict)
            fp = tenant.fingerprint(key.strip())
            org = record.get("organizationName") or record.get("organizationId") or "?"
            details = {
                "source": "cache",
                "fingerprint": fp,
                "organizationId": record.get("organizationId"),
                "provisionedAt": record.get("provisionedAt"),
            }
            mode = stat.S_IMODE((directory / tenant.KEY_FILE).stat().st_mode)
            summary = f"provisioned for organisation {org} (fingerprint {fp})"
            if mode & 0o077:
                return Check(
                    name,
                    WARN,
                    summary + f", but {tenant.KEY_FILE} is readable by others ({mode:o})",
                    f"chmod 600 {directory / tenant.KEY_FILE}",
                    details,
                )
            return Check(name, PASS, summary, details=details)
        pending, _ = _read_json_file(directory / tenant.PENDING_FILE)
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
        error, _ = _read_json_file(directory / tenant.ERROR_FILE)
        if isinstance(error, dict):
            category = str(error.get("category") or "unknown")
            remediation = str(
                error.get("remediation")
                or tenant.REMEDIATION.get(category, tenant.REMEDIATION["unknown"])
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

    # -- HaRP

    async def check_harp_socket(self) -> Check:
        path = self.config.socket_path
        name = "harp_socket"
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                return Check(
                    name,
                    FAIL,
                    f"{path} exists and is not a socket",
                    f"Remove {path} or set HP_EXAPP_SOCK to a free path.",
                )
            if await _socket_listens(path, self.timeout):
                return Check(name, PASS, f"the connector listens on {path}")
            return Check(
                name,
                WARN,
                f"{path} is a stale socket: nothing listens",
                "Start the connector (it replaces the stale file); if it runs, read its log.",
            )
        parent = path.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            return Check(
                name,
                FAIL,
                f"cannot create {path}: {parent} is not a writable directory",
                "Set HP_EXAPP_SOCK to a path in a writable directory.",
            )
        return Check(name, PASS, f"{path} is free and {parent} is writable (server not running)")

    async def check_running(self) -> Check:
        """Ask the connector running in this container (if any) how it is doing: its heartbeat
        with the AppAPI secret carries the tunnel state, the AppAPI failure budget, the /init
        run and the bootstrap. The heartbeat has no side effects."""
        name = "connector"
        c = self.config
        if c.harp:
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(c.socket_path))
            url = URL("http://localhost/heartbeat")
            where = str(c.socket_path)
        else:
            connector = aiohttp.TCPConnector(force_close=True)
            url = URL.build(scheme="http", host="127.0.0.1", port=c.app_port, path="/heartbeat")
            where = f"127.0.0.1:{c.app_port}"
        try:
            async with (
                aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
                ) as session,
                session.get(url, headers=appapi_headers(c, "")) as resp,
            ):
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return Check(name, SKIP, f"no connector answers on {where} (not running here)")
        if not isinstance(data, dict) or data.get("status") != "ok":
            return Check(name, FAIL, f"the connector on {where} answered an unexpected heartbeat")
        problems: list[tuple[str, str, str]] = []  # (status, what, remedy)
        auth = data.get("appapiAuth") or {}
        if auth.get("spent"):
            problems.append(
                (
                    FAIL,
                    "it paused its Nextcloud calls after refused AppAPI logins "
                    f"({auth.get('lastRefusal', 'refused')})",
                    _remedy_bruteforce(None),
                )
            )
        tunnel = data.get("tunnel") or {}
        if isinstance(tunnel, dict):
            self.tunnel = tunnel
        state = tunnel.get("state")
        last_error = str(tunnel.get("last_error") or "")
        if state == "exited":
            problems.append((FAIL, f"frpc exited ({last_error})", "Read the frpc log lines."))
        elif state in ("retrying", "starting") and c.harp:
            specific = diagnose(last_error, c)
            problems.append(
                (
                    # frps refused our port, or our plain connection while it forces TLS: the
                    # tunnel never comes up by itself. Anything else frpc retries.
                    FAIL if specific and self._tunnel_refused(last_error) else WARN,
                    f"the HaRP tunnel is {state} ({last_error or 'not connected yet'})",
                    specific
                    or "frpc retries by itself; check that HaRP runs and HP_SHARED_KEY matches.",
                )
            )
        init = data.get("init") or {}
        if init.get("state") == "failed":
            problems.append(
                (
                    WARN,
                    f"the last /init failed: {init.get('error', '')}",
                    "Fix the cause, then `occ app_api:app:update` (or disable and enable the app).",
                )
            )
        bootstrap = data.get("bootstrap") or {}
        if bootstrap.get("state") == "failed":
            problems.append(
                (
                    WARN,
                    f"the tenant bootstrap failed ({bootstrap.get('category', 'unknown')})",
                    str(bootstrap.get("remediation", "")),
                )
            )
        details = {
            k: data[k]
            for k in ("tunnel", "appapiAuth", "init", "bootstrap", "userSync")
            if isinstance(data.get(k), dict)
        }
        if not problems:
            summary = f"the connector on {where} is healthy"
            if state:
                summary += f" (tunnel {state})"
            return Check(name, PASS, summary, details=details)
        worst = FAIL if any(p[0] == FAIL for p in problems) else WARN
        summary = "; ".join(p[1] for p in problems)
        remedy = " ".join(p[2] for p in problems if p[2])
        return Check(name, worst, summary, remedy, details)

    def _tunnel_refused(self, last_error: str) -> bool:
        """frps turned the tunnel down for good: a port outside allowPorts, or a connection
        without TLS closed (EOF) while the certificates are missing."""
        error = last_error.lower()
        if "port not allowed" in error:
            return True
        return error.endswith("eof") and not self.config.frp_cert_dir.is_dir()

    def check_harp_port(self) -> Check:
        """APP_PORT is frpc's remotePort: HaRP's frps refuses ports outside its allowPorts."""
        name = "harp_port"
        port = self.config.app_port
        if problem := port_problem(port):
            return Check(name, FAIL, problem, port_remedy(self.config.app_id), {"port": port})
        if not EXAPP_PORTS[0] <= port <= EXAPP_PORTS[1]:
            return Check(
                name,
                WARN,
                f"APP_PORT {port} is in {ENGINE_PORTS[0]}-{ENGINE_PORTS[1]}, the ports HaRP keeps "
                f"for Docker engines ({ENGINE_PORTS[0]} is its bundled one)",
                port_remedy(self.config.app_id),
                {"port": port},
            )
        return Check(
            name, PASS, f"APP_PORT {port} is in HaRP's ExApp range", details={"port": port}
        )

    async def check_frpc(self) -> Check:
        name = "frpc"
        pin_file = self.config.frpc_pin_file or DEFAULT_PIN_FILE
        pinned = read_pin(pin_file) or PINNED_VERSION
        remedy = (
            f"Install frpc {pinned}, the version HaRP's frps runs: a different frpc caused silent "
            "handshake failures. The image ships a pinned, verified /usr/local/bin/frpc "
            "(BEEFLOW_FRPC_BIN)."
        )
        try:
            binary = resolve_frpc(self.config.frpc_bin)
        except FrpcError as exc:
            return Check(name, FAIL, str(exc), remedy)
        version = await _frpc_version(binary, self.timeout)
        if version is None:
            return Check(name, FAIL, f"{binary} -v printed no version", remedy)
        details = {"binary": binary, "version": version, "pinned": pinned}
        if version != pinned:
            return Check(
                name, FAIL, f"{binary} is frpc {version}, the pin is {pinned}", remedy, details
            )
        return Check(name, PASS, f"{binary} is frpc {version} (pinned)", details=details)

    async def check_frps(self) -> Check:
        host, port = self.config.hp_frp_address, self.config.hp_frp_port
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            return Check(
                "frps",
                FAIL,
                f"cannot open TCP {host}:{port}: {reason}",
                "HP_FRP_ADDRESS:HP_FRP_PORT (the daemon's --harp_frp_address) must be reachable "
                "from this container: same Docker network as HaRP, HaRP running.",
            )
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return Check("frps", PASS, f"frps at {host}:{port} accepts TCP connections")

    def check_frp_certs(self) -> Check:
        directory = self.config.frp_cert_dir
        name = "frp_certs"
        reinstall = certs_remedy(self.config.app_id, directory)
        if not directory.exists():
            last_error = str(self.tunnel.get("last_error") or "")
            if self._tunnel_refused(last_error) and "port not allowed" not in last_error:
                return Check(
                    name,
                    FAIL,
                    f"{directory} does not exist, and frps closed frpc's plain connection "
                    f"({last_error}): HaRP forces TLS",
                    reinstall,
                )
            return Check(
                name,
                WARN,
                f"{directory} does not exist: frpc connects without TLS, so HP_SHARED_KEY "
                "crosses the network in clear text",
                reinstall,
            )
        missing = []
        for file in CERT_FILES:
            path = directory / file
            try:
                head = path.read_bytes()[:4096]
            except OSError:
                missing.append(f"{file} (missing or unreadable)")
                continue
            if b"-----BEGIN " not in head:
                missing.append(f"{file} (not PEM)")
        if missing:
            return Check(name, FAIL, f"{directory} is incomplete: " + ", ".join(missing), reinstall)
        return Check(name, PASS, f"{directory} holds {', '.join(CERT_FILES)}")


async def _local_address(url: URL, timeout: float) -> str | None:
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


async def _socket_listens(path: Path, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _frpc_version(binary: str, timeout: float) -> str | None:
    try:
        return await read_frpc_version(binary, timeout)
    except FrpcError:
        return None


# ------------------------------------------------------------------ output


def _secrets(config: Config | None) -> list[str]:
    if config is None:
        return []
    values = [config.app_secret, config.hp_shared_key, config.tenant_key_env or ""]
    record, _ = _read_json_file(config.persistent_storage / tenant.KEY_FILE)
    if isinstance(record, dict) and isinstance(record.get("tenantKey"), str):
        values.append(record["tenantKey"].strip())
    return sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """Defence in depth: no check prints a secret, and this masks one if it ever would."""
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


def render_text(checks: list[Check]) -> str:
    counts = {s: sum(1 for c in checks if c.status == s) for s in (PASS, WARN, FAIL, SKIP)}
    width = max(len(c.name) for c in checks)
    lines = [
        f"beeflow doctor {__version__}: {counts[PASS]} passed, {counts[WARN]} warning(s), "
        f"{counts[FAIL]} failed, {counts[SKIP]} skipped",
        "",
    ]
    for c in checks:
        lines.append(f"{c.status.upper():<5} {c.name:<{width}}  {c.summary}")
        if c.remedy and c.status != PASS:
            lines.append(f"{'':<5} {'':<{width}}  fix: {c.remedy}")
    return "\n".join(lines) + "\n"


def render_json(checks: list[Check]) -> str:
    counts = {s: sum(1 for c in checks if c.status == s) for s in (PASS, WARN, FAIL, SKIP)}
    body = {
        "ok": counts[FAIL] == 0,
        "version": __version__,
        "counts": counts,
        "checks": [c.to_json() for c in checks],
    }
    return json.dumps(body, indent=2) + "\n"


def config_failure(exc: ConfigError) -> Check:
    problems = "; ".join(f"{name} {why}" for name, why in exc.problems.items())
    return Check(
        "config",
        FAIL,
        f"{len(exc.problems)} problem(s) in the environment: {problems}",
        "Fix these variables (docs/configuration.md); AppAPI sets APP_* and NEXTCLOUD_URL.",
        {"variables": sorted(exc.problems)},
    )


# ------------------------------------------------------------------ the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds allowed for each network check (default 10)",
    )


async def run_checks(
    env: Mapping[str, str], *, clock: Clock = time.time, timeout: float = 10.0
) -> tuple[list[Check], Config | None]:
    try:
        config = Config.from_env(env)
    except ConfigError as exc:
        return [config_failure(exc)], None
    return await Doctor(config, clock=clock, timeout=timeout).run(), config


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    timeout = max(0.5, float(getattr(args, "timeout", 10.0)))
    checks, config = asyncio.run(run_checks(env, timeout=timeout))
    text = render_json(checks) if args.json else render_text(checks)
    sys.stdout.write(scrub(text, _secrets(config)))
    sys.stdout.flush()
    return EXIT_FAILED if any(c.status == FAIL for c in checks) else EXIT_OK
