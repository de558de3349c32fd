"""What every doctor check shares: the result type, the run's context (config, clock, what earlier
checks learnt), and small helpers. A result never holds a secret."""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
from yarl import URL

from beeflow.config import Config
from beeflow.ops.doctor.listener import PROC_NET

PASS: Final = "pass"  # noqa: S105 - a status, not a password
WARN: Final = "warn"
FAIL: Final = "fail"
SKIP: Final = "skip"

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
class Probe:
    """What an anonymous GET learnt: status, JSON body, Date header, local address used."""

    status: int
    data: Any
    date: float | None
    sent_at: float
    local_ip: str | None
    location: str | None = None


@attrs.frozen
class Deployment:
    """What the container's environment says about how it was deployed (no secret kept)."""

    harp_tunnel: bool = False  # HP_SHARED_KEY set
    kubernetes: bool = False  # KUBERNETES_SERVICE_HOST set
    appapi_version: str = ""  # AA_VERSION, set for Docker and Kubernetes deploys only

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Deployment:
        return cls(
            harp_tunnel=bool(env.get("HP_SHARED_KEY", "").strip()),
            kubernetes=bool(env.get("KUBERNETES_SERVICE_HOST", "").strip()),
            appapi_version=env.get("AA_VERSION", "").strip(),
        )

    @property
    def appapi_major(self) -> int | None:
        match = re.match(r"(\d+)\.", self.appapi_version)
        return int(match.group(1)) if match else None


@attrs.define
class Context:
    """One doctor run: the config, the clock and the per-check network timeout (both for tests),
    and what earlier checks learnt for later ones."""

    config: Config
    clock: Clock = time.time
    timeout: float = 10.0
    nc_probe: Probe | None = None
    service_probe: Probe | None = None
    # The running connector's heartbeat (with the secret) and its tunnel status, when one
    # answered.
    heartbeat: dict[str, Any] = attrs.field(factory=dict)
    tunnel: dict[str, Any] = attrs.field(factory=dict)
    # What the environment says about the deploy daemon (daemon.py).
    deployment: Deployment = attrs.field(factory=Deployment)
    # The kernel's socket tables: who listens on APP_PORT (listener.py; tests point it at
    # their own).
    proc_net: Path = PROC_NET


async def probe_get(ctx: Context, session: aiohttp.ClientSession, url: URL) -> Probe:
    async with session.get(url, allow_redirects=False) as resp:
        sent_at = ctx.clock()
        body = await resp.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        return Probe(
            status=resp.status,
            data=data,
            date=http_date(resp.headers.get("Date")),
            sent_at=sent_at,
            local_ip=None,
            location=resp.headers.get("Location"),
        )


def http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def network_reason(exc: BaseException) -> str:
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


def read_json_file(path: Path) -> tuple[Any, str | None]:
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


def remedy_repair(app_id: str) -> str:
    return (
        "Re-register the app so Nextcloud and the container share one secret: "
        f"`occ app_api:app:unregister {app_id}` then `occ app_api:app:register {app_id} "
        "<daemon> ...` (docs/install-*.md has the full command)."
    )


def remedy_bruteforce(ip: str | None) -> str:
    where = ip or "<connector-ip>"
    return (
        "Each refused AppAPI login counts against this container's IP; after more than 10 in 30 "
        "minutes Nextcloud refuses every AppAPI call from it for 30 minutes. Inspect with "
        f"`occ security:bruteforce:attempts {where} app_api`, clear with "
        f"`occ security:bruteforce:reset {where}`."
    )
