"""Whether the Bee Flow service in force answers, and the one-line connection state the setup
page shows from it and the tenant: "Connected" only when the tenant has a working key AND the
saved service answers its health check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
from yarl import URL

from beeflow.tasks import spawn

# A check of the URL in force younger than this is reused by the status (the page polls it).
FRESH_SECONDS: Final = 15.0

Probe = Callable[[URL], Awaitable[dict[str, Any]]]


@attrs.define
class Reachability:
    """The last health check of each service URL (a save's, a test's, or the status's own),
    one check in flight per URL."""

    checks: dict[str, tuple[float, dict[str, Any]]] = attrs.field(factory=dict)
    _running: dict[str, asyncio.Task[dict[str, Any]]] = attrs.field(factory=dict)

    def record(self, url: URL, result: dict[str, Any], *, at: float | None = None) -> None:
        self.checks[_key(url)] = (time.monotonic() if at is None else at, result)
        # Only the URL in force matters; an admin's tests of other URLs are not kept forever.
        while len(self.checks) > 8:
            self.checks.pop(next(iter(self.checks)))

    def fresh(self, url: URL, now: float | None = None) -> dict[str, Any] | None:
        entry = self.checks.get(_key(url))
        now = time.monotonic() if now is None else now
        if entry is None or now - entry[0] > FRESH_SECONDS:
            return None
        return entry[1]

    async def current(self, url: URL, probe: Probe) -> dict[str, Any]:
        """The fresh check of `url`, or a new one (callers at the same time share it)."""
        known = self.fresh(url)
        if known is not None:
            return known
        key = _key(url)
        running = self._running.get(key)
        if running is None:
            running = spawn(self._check(url, probe), name="setup-service-check")
            self._running[key] = running
        return await asyncio.shield(running)

    async def _check(self, url: URL, probe: Probe) -> dict[str, Any]:
        try:
            result = await probe(url)
            self.record(url, result)
            return result
        finally:
            self._running.pop(_key(url), None)


def _key(url: URL) -> str:
    return str(url).rstrip("/")


def service_field(result: dict[str, Any]) -> dict[str, Any]:
    """The status's `service`: reachable or not, and why not (the probe's code and text)."""
    out: dict[str, Any] = {"reachable": bool(result.get("ok")), "status": result.get("status")}
    if not out["reachable"]:
        out["code"] = result.get("code") or "unhealthy"
        out["error"] = result.get("error") or "The service did not answer its health check"
    return out


CONNECTING: Final = frozenset({"initialising", "provisioning"})


def connection(tenant: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    """The one state the page shows, with its label and the detail behind it: `connected` (a
    working key and the service answers), `unreachable` (the saved service does not answer,
    whatever the key), `failed` (the tenant's last provisioning failed), `connecting`,
    `waiting` (e-mail verification), or `unknown`."""
    status = tenant.get("status")
    if status == "failed":
        error = tenant.get("lastError") or {}
        detail = str(error.get("error") or error.get("category") or "")
        return {"state": "failed", "label": "Failed", "detail": detail}
    if not service.get("reachable"):
        why = f"{service.get('error', '')} [{service.get('code', '')}]"
        return {
            "state": "unreachable",
            "label": f"Not connected: the Bee Flow service does not answer ({why})",
            "detail": why,
        }
    if tenant.get("busy") or status in CONNECTING:
        return {"state": "connecting", "label": "Connecting\u2026", "detail": ""}
    if status == "ok":
        return {"state": "connected", "label": "Connected", "detail": ""}
    if tenant.get("previousKeyInUse"):
        # A rotation (or pairing) waits for the service; the key in use keeps working.
        label = "Connected (the new key waits for e-mail verification)"
        return {"state": "connected", "label": label, "detail": ""}
    if status == "awaiting_email_verification":
        return {"state": "waiting", "label": "Waiting for e-mail verification", "detail": ""}
    return {"state": "unknown", "label": str(status or "unknown"), "detail": ""}
