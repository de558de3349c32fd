"""Machine-to-machine calls to the Bee Flow service: one pooled session, unsigned JSON posts (the
bootstrap) and tenant-key-signed posts (reference 7.3), plus the one user/group event forwarder
shared by the webhook and the periodic reconciliation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
from aiohttp import web
from yarl import URL

from beeflow import keys, storage
from beeflow.serde import iso_utc
from beeflow.signing import SIG_HEADER, sign_outbound
from beeflow.tasks import spawn

log = logging.getLogger(__name__)

SOURCE: Final = "nextcloud-connector"
USER_SYNC_PATH: Final = "/auth/webhook/nc-user-sync"
FORWARD_TIMEOUT: Final = 10.0
USER_EVENTS: Final = (
    "user.created",
    "user.deleted",
    "user.updated",
    "group.member_added",
    "group.member_removed",
)
RECENT_FILE: Final = "user-events-recent.json"
RECENT_MAX: Final = 5000
# Deliveries are written to RECENT_FILE at most this long after they happen.
FLUSH_DELAY: Final = 0.5


class ServiceCallError(Exception):
    """A call to the service did not produce an HTTP answer; `kind` says why (no secrets)."""

    def __init__(self, message: str, *, kind: str) -> None:
        self.kind = kind  # network | timeout | no_key
        super().__init__(message)


@attrs.frozen
class ServiceReply:
    status: int
    data: Any  # parsed JSON, or None
    text: str  # the first 2000 characters of the body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def dumps(body: Any) -> str:
    """The exact JSON text sent and signed (compact, UTF-8, like the service's JSON.stringify)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class ServiceClient:
    """Calls to the service base URL in force (`app[keys.API_BASE]`, read at each call)."""

    def __init__(self, app: web.Application, session: aiohttp.ClientSession) -> None:
        self._app = app
        self.session = session

    def url(self, path: str) -> URL:
        base = str(self._app[keys.API_BASE].url).rstrip("/")
        return URL(base + path, encoded=True)

    async def request(
        self,
        method: str,
        url: URL,
        *,
        body: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float,
    ) -> ServiceReply:
        if self.session.closed:
            # Shutting down: a caller still waiting for its turn gets a normal failure.
            raise ServiceCallError(
                f"{method} {url.path}: the connector is stopping", kind="network"
            )
        try:
            async with self.session.request(
                method,
                url,
                data=body.encode("utf-8") if body is not None else None,
                headers=dict(headers or {}),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise ServiceCallError(f"{method} {url.path}: timed out", kind="timeout") from None
        except aiohttp.ClientError as exc:
            raise ServiceCallError(
                f"{method} {url.path}: {type(exc).__name__}", kind="network"
            ) from None
        except RuntimeError as exc:  # "Session is closed": the session closed mid-call
            if not self.session.closed:
                raise
            raise ServiceCallError(
                f"{method} {url.path}: the connector is stopping", kind="network"
            ) from exc
        text = raw.decode("utf-8", "replace")
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        return ServiceReply(status, data, text[:2000])

    async def post_json(
        self,
        path_or_url: str | URL,
        body: Any,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 15.0,
    ) -> ServiceReply:
        """An unsigned JSON POST (the bootstrap and its sub-flows)."""
        url = path_or_url if isinstance(path_or_url, URL) else self.url(path_or_url)
        hdrs = {"Content-Type": "application/json", "X-Beeflow-Source": SOURCE}
        hdrs.update(headers or {})
        return await self.request("POST", url, body=dumps(body), headers=hdrs, timeout=timeout)

    async def post_signed(
        self, path: str, body: Any, *, timeout: float = FORWARD_TIMEOUT
    ) -> ServiceReply:
        """`X-Beeflow-Sig: {ts}.{hex}` over "{ts}\\n{METHOD}\\n{path}\\n{body}": the service's
        connectorSig.js checks the method on the wire, the path as it receives it WITH its query
        (not decoded: req.originalUrl) and the exact body text."""
        tenant = self._app[keys.TENANT]
        key = tenant.key
        if not key:
            raise ServiceCallError("no tenant key yet", kind="no_key")
        url = self.url(path)
        text = dumps(body)
        ts = int(time.time())
        headers = {
            SIG_HEADER: sign_outbound(key, ts, "POST", url.raw_path_qs, text),
            "X-Beeflow-Source": SOURCE,
            "X-Beeflow-NC-Instance-Id": tenant.instance_id or "",
            "Content-Type": "application/json",
        }
        return await self.request("POST", url, body=text, headers=headers, timeout=timeout)


# ------------------------------------------------------------------ user/group events


EventKey = tuple[str, str, str]  # (event, uid, groupId or "")


@attrs.define
class ForwardStats:
    forwarded: int = 0
    failed: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    last_forwarded_at: float | None = None

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"forwarded": self.forwarded, "failed": self.failed}
        if self.last_error:
            out["lastError"] = self.last_error
            out["lastErrorAt"] = iso_utc(self.last_error_at)
        if self.last_forwarded_at:
            out["lastForwardedAt"] = iso_utc(self.last_forwarded_at)
        return out


class UserEvents:
    """Sends user/group events to `/auth/webhook/nc-user-sync`, signed, and remembers which the
    webhook delivered so the reconciliation does not send them a second time."""

    def __init__(self, app: web.Application, directory: Path) -> None:
        self._app = app
        self._path = directory / RECENT_FILE
        self._recent: dict[EventKey, float] = {}
        self._lock = asyncio.Lock()
        self._dirty = False
        self._flusher: asyncio.Task[None] | None = None
        self.stats: dict[str, ForwardStats] = {"webhook": ForwardStats(), "sync": ForwardStats()}

    @staticmethod
    def payload(event: str, uid: str, group_id: str | None) -> dict[str, Any]:
        return {"event": event, "ncUid": uid, "groupId": group_id}

    async def forward(self, event: str, uid: str, group_id: str | None, *, origin: str) -> str:
        """Send one event. Returns "sent" (2xx), "rejected" (a 4xx that a retry cannot fix: the
        event is dropped, logged) or "retry" (network, 5xx, 401/403/408/429, no key yet).
        Every failure is logged here."""
        stats = self.stats.setdefault(origin, ForwardStats())
        client = self._app[SERVICE]
        outcome = "retry"
        try:
            reply = await client.post_signed(USER_SYNC_PATH, self.payload(event, uid, group_id))
        except ServiceCallError as exc:
            problem = str(exc)
        else:
            if reply.ok:
                stats.forwarded += 1
                stats.last_forwarded_at = time.time()
                if origin == "webhook":
                    await self._remember((event, uid, group_id or ""))
                return "sent"
            problem = f"HTTP {reply.status}"
            code = reply.data.get("code") if isinstance(reply.data, dict) else None
            if isinstance(code, str) and code:
                problem += f" ({code[:80]})"
            if 400 <= reply.status < 500 and reply.status not in (401, 403, 408, 429):
                outcome = "rejected"
        stats.failed += 1
        stats.last_error = f"{event}: {problem}"[:300]
        stats.last_error_at = time.time()
        log.warning(
            "%s event %s for %s not delivered to the service: %s%s",
            origin,
            event,
            uid,
            problem,
            _after_failure(origin, outcome),
        )
        return outcome

    # -- deliveries seen through the webhook

    def delivered_since(self, key: EventKey, since: float) -> bool:
        at = self._recent.get(key)
        return at is not None and at >= since

    async def _remember(self, key: EventKey) -> None:
        """Record a delivery now; the file follows within FLUSH_DELAY (one write for a burst,
        not an fsync per webhook)."""
        now = time.time()
        self._recent.pop(key, None)
        self._recent[key] = now  # insertion order is time order: the oldest comes first
        horizon = now - 2 * self._app[keys.CONFIG].sync_interval_seconds - 3600
        if len(self._recent) > RECENT_MAX or next(iter(self._recent.values())) < horizon:
            fresh = {k: t for k, t in self._recent.items() if t >= horizon}
            if len(fresh) > RECENT_MAX:
                fresh = dict(sorted(fresh.items(), key=lambda kv: kv[1])[-RECENT_MAX:])
            self._recent = fresh
        self._dirty = True
        if self._flusher is None or self._flusher.done():
            self._flusher = spawn(self._flush_later(), name="user-events-flush")

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        await self.flush()

    async def flush(self) -> None:
        """Write the remembered deliveries if they changed (also at shutdown)."""
        async with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            rows = [[e, u, g, t] for (e, u, g), t in self._recent.items()]
            try:
                await storage.write_json(self._path, {"events": rows})
            except storage.StoreError as exc:
                log.warning("%s (webhook deliveries are kept in memory only)", exc)

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()

    def load(self) -> None:
        data = storage.read_json(self._path)
        if not isinstance(data, dict):
            return
        rows = data.get("events")
        if not isinstance(rows, list):
            return
        for row in rows:
            if (
                isinstance(row, list)
                and len(row) == 4
                and all(isinstance(x, str) for x in row[:3])
                and isinstance(row[3], int | float)
            ):
                self._recent[(row[0], row[1], row[2])] = float(row[3])


def _after_failure(origin: str, outcome: str) -> str:
    if origin == "webhook":
        return "; the next reconciliation sends what the service missed"
    return " (dropped)" if outcome == "rejected" else " (kept for the next run)"


SERVICE: web.AppKey[ServiceClient] = web.AppKey("service_client")
USER_EVENTS_SINK: web.AppKey[UserEvents] = web.AppKey("user_events")


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=None, connect=config.upstream_connect_timeout),
        headers={"User-Agent": f"ExApp/{config.app_id}/{config.app_version} (beeflow)"},
    ) as session:
        app[SERVICE] = ServiceClient(app, session)
        await asyncio.to_thread(app[USER_EVENTS_SINK].load)
        yield
        await app[USER_EVENTS_SINK].close()
    # Opened first, closed last among the tenant/events/sync contexts: no write may outlive us.
    await storage.settle()


def setup(app: web.Application) -> None:
    """Install the client (opened and closed with the app) and the event forwarder."""
    if USER_EVENTS_SINK in app:
        return
    app[USER_EVENTS_SINK] = UserEvents(app, app[keys.CONFIG].persistent_storage)
    app.cleanup_ctx.append(_session_ctx)
