"""Provisioning the tenant key: one run at a time (boot, /init and the setup page join it), its
outcomes (a key, a pending verification, a failure retried with backoff), and loading what the
files hold at start-up (docs/lifecycle.md, "Bootstrap")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from yarl import URL

from beeflow import storage
from beeflow.config import Config
from beeflow.lease import LeaseHolder
from beeflow.nextcloud.client import NextcloudClient
from beeflow.redact import REDACTOR
from beeflow.serde import iso_utc
from beeflow.service_client import ServiceCallError, ServiceClient, ServiceReply, ServiceUrl
from beeflow.tasks import Slot
from beeflow.tenant.discovery import Admin, Discovery, NcMeta, header_safe
from beeflow.tenant.failures import REMEDIATION, SERVICE_CODES, BootstrapFailed, categorise
from beeflow.tenant.pairing import mask_pairing_code
from beeflow.tenant.pending import BOOTSTRAP_PATH, PendingVerification, parse_iso_utc
from beeflow.tenant.records import ErrorRecord, KeyRecord
from beeflow.tenant.state import PENDING_STATES, TenantState
from beeflow.tenant.store import ERROR_FILE, KEY_FILE, PENDING_FILE, TenantStore

log = logging.getLogger(__name__)


class Bootstrapper:
    """Single-flight provisioning: concurrent triggers (boot, /init, setup) join one run."""

    def __init__(
        self,
        config: Config,
        state: TenantState,
        store: TenantStore,
        nextcloud: NextcloudClient,
        service: ServiceClient,
        service_url: ServiceUrl,
    ) -> None:
        self.config = config
        self.state = state
        self.store = store
        self.service = service
        self.service_url = service_url
        self.discovery = Discovery(nextcloud, config.public_nextcloud_url)
        # Held by whatever changes the tenant on an admin's behalf (verify, resend, retarget,
        # re-bootstrap) and by the end of an expired verification: one at a time.
        self.lock = asyncio.Lock()
        self.run = Slot("tenant-bootstrap")
        self.retry = Slot("tenant-bootstrap-retry")
        self.applied = 0  # keys applied so far (a re-bootstrap's success test)
        self.failures = 0
        self.runs = 0
        self.pairing_code: str | None = None
        # Backoff after a failure: retry_base * 2^(n-1), capped (tests shorten these).
        self.retry_base = 60.0
        self.retry_cap = 3600.0
        self.pending = PendingVerification(
            state, store, service, self.lock, apply_key=self.apply_key, fail=self.record_failure
        )
        # Replicas on one storage (docs/deployments.md): the lease only one of them provisions
        # under, and what re-reads the files another one wrote (wiring sets both).
        self.lease: LeaseHolder | None = None
        self.reread: Callable[[], None] | None = None

    @property
    def running(self) -> bool:
        return self.run.running

    @property
    def busy(self) -> bool:
        """A provisioning run or a re-bootstrap is in progress (the setup page's actions wait)."""
        return self.running or self.lock.locked()

    # -- triggers

    async def ensure(self) -> None:
        """Provision unless a key exists or a pending (202) state is waiting for someone. Never
        raises for a failed attempt: the failure is recorded and retried with backoff."""
        state = self.state
        if state.key:
            return
        if state.status in PENDING_STATES and not self.pending.expired():
            return
        task = self.run.task if self.run.running else self.run.start(self._as_the_one())
        assert task is not None
        await asyncio.shield(task)

    async def _as_the_one(self) -> None:
        """Provision as the one replica that does: under the tenant lease (waiting while another
        replica provisions), after reading what it left. A key or a verification it obtained
        ends the matter; a failure it recorded while we waited is not repeated at once, but at
        the retry time it set."""
        if self.lease is None:
            await self.provision()
            return
        async with self.lease.hold():
            before = self.state.last_error
            if self.reread is not None:
                self.reread()
            state = self.state
            if state.key or (state.status in PENDING_STATES and not self.pending.expired()):
                return
            error = state.last_error
            if self.lease.waited and error is not None and error != before:
                self._retry_at(error.next_retry_at)
                return
            await self.provision()

    def _retry_at(self, when: str | None) -> None:
        """Another replica failed just now: retry when it would have (its backoff)."""
        due = parse_iso_utc(when)
        delay = self.retry_base if due is None else max(1.0, due - time.time())
        if not self.retry.running:
            self.retry.start(self._retry_after(delay))

    # -- one provisioning run

    async def provision(self) -> None:
        state = self.state
        self.runs += 1
        attempt = time.time()
        previous_status = state.status
        state.status = "provisioning"
        try:
            meta = await self.discovery.capabilities()
            state.instance_id = meta.instance_id
            state.nc_version = meta.version
            admins = await self.discovery.admins()
            reply = await self._post(meta, admins)
            await self._handle_reply(reply, meta)
        except BootstrapFailed as failure:
            await self.record_failure(failure, attempt)
        except asyncio.CancelledError:
            if state.status == "provisioning":
                state.status = previous_status
            raise
        except Exception as exc:  # a bug must not leave the state at "provisioning"
            log.exception("tenant bootstrap crashed")
            await self.record_failure(BootstrapFailed("unknown", type(exc).__name__), attempt)

    async def _post(self, meta: NcMeta, admins: list[Admin]) -> ServiceReply:
        config = self.config
        nc_base = str(config.public_nextcloud_url).rstrip("/")
        primary = admins[0]
        headers = {
            "X-Beeflow-NC-Instance-Id": meta.instance_id,
            "X-Beeflow-NC-Base-Url": nc_base,
            "X-Beeflow-NC-Admin-Uid": header_safe(primary.uid),
            "X-Beeflow-NC-Admin-Email": header_safe(primary.email or ""),
            "X-Beeflow-NC-Admin-Display-Name": header_safe(primary.display_name),
            "X-Beeflow-Connector-Callback-Url": (
                f"{nc_base}/index.php/apps/app_api/proxy/{config.app_id}"
            ),
        }
        if self.pairing_code:
            headers["X-Beeflow-Pairing-Code"] = header_safe(self.pairing_code)
            log.info("bootstrap with pairing code %s", mask_pairing_code(self.pairing_code))
        body = {
            "themingName": meta.theming_name,
            "version": meta.version,
            "ncAdmins": [a.wire() for a in admins],
        }
        try:
            return await self.service.post_json(BOOTSTRAP_PATH, body, headers=headers, timeout=15.0)
        except ServiceCallError as exc:
            raise BootstrapFailed("saas_post", f"Bee Flow service: {exc}") from None

    async def _handle_reply(self, reply: ServiceReply, meta: NcMeta) -> None:
        data = reply.data if isinstance(reply.data, dict) else {}
        if reply.status == 200 and isinstance(data.get("tenantKey"), str) and data["tenantKey"]:
            await self.apply_key(data, meta)
            return
        if reply.status == 202:
            await self.pending.enter(data, meta.instance_id)
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
        raise BootstrapFailed(
            "saas_response",
            f"Bee Flow service: HTTP {reply.status}" + (f": {message}" if message else ""),
            service_code=code,
            remediation=remediation,
            http_status=reply.status,
        )

    # -- outcomes

    async def apply_key(self, data: dict[str, Any], meta: NcMeta | None) -> None:
        """200: persist, then use. A write failure keeps the key in memory (it is valid) and
        says so; a re-bootstrap treats it as a failure and restores the old key instead."""
        state = self.state
        key = str(data["tenantKey"]).strip()
        REDACTOR.add(key)
        record = KeyRecord(
            tenant_key=key,
            organization_id=_str_or_none(data.get("organizationId")),
            organization_name=_str_or_none(data.get("organizationName")),
            nc_instance_id=meta.instance_id if meta else state.instance_id,
            nc_version=meta.version if meta else state.nc_version,
            bound_api_base_url=str(self.service_url.url),
            provisioned_at=iso_utc(time.time()),
        )
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
        state.adopt(record, source="bootstrap")
        state.instance_id = record.nc_instance_id
        state.pending = None
        state.last_error = None
        state.store_error = store_error
        self.failures = 0
        self.pairing_code = None
        self.pending.forget()
        self.applied += 1
        log.info(
            "tenant key provisioned (%s; fingerprint %s, organisation %s)",
            data.get("code") if isinstance(data.get("code"), str) else "ok",
            state.fingerprint,
            state.organization_name or state.organization_id or "?",
        )

    async def record_failure(self, failure: BootstrapFailed, attempt: float) -> None:
        state = self.state
        self.failures += 1
        delay = min(self.retry_cap, self.retry_base * 2 ** (self.failures - 1))
        category = categorise(failure)
        record = ErrorRecord(
            status="failed",
            category=category,
            phase=failure.phase,
            error=failure.message,
            remediation=failure.remediation or REMEDIATION.get(category, REMEDIATION["unknown"]),
            last_attempt_at=iso_utc(attempt),
            next_retry_at=iso_utc(time.time() + delay),
        )
        state.last_error = record
        if not state.key:
            state.status = "failed"
        log.warning(
            "tenant bootstrap failed (%s, %s): %s; retrying in %ds. Fix: %s",
            category,
            failure.phase,
            failure.message,
            int(delay),
            record.remediation,
        )
        try:
            await self.store.save_error(record)
        except storage.StoreError as exc:
            log.warning("%s", exc)
        if not self.retry.running:
            self.retry.start(self._retry_after(delay))

    async def _retry_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.retry.task = None  # a failure of the run below schedules the next retry
        if not self.state.key and self.state.status not in PENDING_STATES:
            await self.ensure()

    # -- start-up and shutdown

    async def load(self) -> None:
        """Start-up: the cache file, else a still-valid pending state; the last error."""
        state = self.state
        config = self.config
        if config.tenant_key_env:
            REDACTOR.add(config.tenant_key_env)
            return
        record = await asyncio.to_thread(self.store.load_key)
        if record is not None:
            REDACTOR.add(record.tenant_key.strip())
            state.adopt(record, source="cache")
            state.instance_id = record.nc_instance_id or state.instance_id
            self.pairing_code = None  # BEEFLOW_PAIRING_CODE is for the first bootstrap only
            self.pin_service_url()
            await asyncio.to_thread(self.store.remove, ERROR_FILE)
            log.info("tenant key loaded from %s (fingerprint %s)", KEY_FILE, state.fingerprint)
            pending = await asyncio.to_thread(self.store.load_pending)
            # A re-bootstrap's 202 that replaces this very key comes back with it; anything
            # else next to a key (stale, expired, another key's) is dropped.
            if (
                pending is not None
                and pending.replaces_key == state.fingerprint
                and self.pending.resumable(pending)
            ):
                self.pending.use(pending)
            else:
                await asyncio.to_thread(self.store.remove, PENDING_FILE)
            return
        pending = await asyncio.to_thread(self.store.load_pending)
        if pending is not None and self.pending.resumable(pending):
            if pending.nc_instance_id:
                state.instance_id = pending.nc_instance_id
            self.pending.use(pending)
            return
        await asyncio.to_thread(self.store.remove, PENDING_FILE)
        last = await asyncio.to_thread(self.store.load_error)
        if last is not None and last.status == "failed":
            state.last_error = last
            state.status = "failed"

    def pin_service_url(self) -> None:
        """A cached binding pins the service URL unless the env sets one, so a changed default
        cannot silently move the connector and mint a second organisation (docs/lifecycle.md,
        "Tenant key sources and files")."""
        bound = self.state.bound_api_base_url
        service_url = self.service_url
        if not bound:
            return
        try:
            url = URL(bound)
        except ValueError:
            return
        if not url.scheme.startswith("http") or not url.host:
            return
        if service_url.locked:
            if str(service_url.url).rstrip("/") != bound.rstrip("/"):
                log.warning(
                    "BEEFLOW_API_BASE_URL differs from the service the tenant key was issued by "
                    "(%s); the service may reject the key",
                    bound,
                )
            return
        service_url.url = url
        service_url.source = "bound"

    async def close(self) -> None:
        for slot in (self.run, self.retry, self.pending.expiry):
            slot.cancel()
        for slot in (self.run, self.retry, self.pending.expiry):
            await slot.close()


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
