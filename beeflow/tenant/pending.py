"""A pending e-mail verification: the service's 202 `pending_verification`, kept until a code
proves the binding (verify), a new code is sent (resend, or retarget to the admin doing the
setup), or it expires (docs/lifecycle.md, "The e-mail verification")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

import attrs

from beeflow import storage
from beeflow.errors import Conflict
from beeflow.nextcloud.users import NcUser
from beeflow.serde import iso_utc
from beeflow.service_client import ServiceCallError, ServiceClient, ServiceReply
from beeflow.tasks import Slot
from beeflow.tenant.failures import REMEDIATION, BootstrapFailed
from beeflow.tenant.records import ErrorRecord, PendingRecord
from beeflow.tenant.state import TenantState
from beeflow.tenant.store import PENDING_FILE, TenantStore

log = logging.getLogger(__name__)

BOOTSTRAP_PATH: Final = "/auth/connector/bootstrap"
# A pending state is kept until expiresAt + 5 min (the service's own grace).
PENDING_GRACE: Final = 300.0

ApplyKey = Callable[[dict[str, Any], Any], Awaitable[None]]
RecordFailure = Callable[[BootstrapFailed, float], Awaitable[None]]


def parse_iso_utc(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _no_pending() -> Conflict:
    return Conflict("No e-mail verification is pending", code="no_pending_verification")


class PendingVerification:
    """The pending record, its expiry, and the service calls that move it on. `apply_key` and
    `fail` are the bootstrap's outcomes (a key issued, a failure recorded)."""

    def __init__(
        self,
        state: TenantState,
        store: TenantStore,
        service: ServiceClient,
        lock: asyncio.Lock,
        *,
        apply_key: ApplyKey,
        fail: RecordFailure,
    ) -> None:
        self.state = state
        self.store = store
        self.service = service
        self.lock = lock
        self._apply_key = apply_key
        self._fail = fail
        self.record: PendingRecord | None = None
        # Bumped by use(): an expiry watches the verification it was started for.
        self.generation = 0
        self.expiry = Slot("tenant-pending-expiry")
        self.grace = PENDING_GRACE
        self.expiry_check = 30.0  # how often a held key's verification is checked

    # -- entering and leaving

    async def enter(self, data: dict[str, Any], instance_id: str) -> None:
        """202 `pending_verification`: an organisation on the service matches the admin's
        address, and a code e-mailed to an admin proves the binding. The service sends NO
        e-mail yet: the code goes out only when the connector asks (send_code)."""
        verify_url = data.get("verifyUrl") if isinstance(data.get("verifyUrl"), str) else None
        pending_id = data.get("pendingId")
        if not verify_url and not (isinstance(pending_id, str | int) and str(pending_id)):
            raise BootstrapFailed(
                "saas_response",
                "Bee Flow service: 202 without a verification (pendingId, verifyUrl)",
                category="unsupported_answer",
            )

        def take(name: str) -> Any:
            value = data.get(name)
            return value if isinstance(value, str | int) and not isinstance(value, bool) else None

        record = PendingRecord(
            kind="verification",
            code=_text(take("code")),
            pending_id=take("pendingId"),
            verify_url=_text(take("verifyUrl")),
            resend_url=_text(take("resendUrl")),
            retarget_url=_text(take("retargetUrl")),
            expires_at=_text(take("expiresAt")),
            organization_name=_text(take("organizationName")),
            code_sent=False,
            nc_instance_id=instance_id,
            # A re-bootstrap holding the key in use: after a restart, load() restores both only
            # when tenant-key.json still holds this key.
            replaces_key=self.state.fingerprint if self.state.key else None,
        )
        await self._persist(record)
        self.use(record)

    def use(self, record: PendingRecord) -> None:
        state = self.state
        state.pending = record.public()
        self.record = record
        self.generation += 1
        state.last_error = None
        state.status = "awaiting_email_verification"
        if record.code_sent:
            log.info("bootstrap waits for the code e-mailed to %s", record.masked_email)
        else:
            log.info(
                "bootstrap waits for e-mail verification; no code was sent yet: an administrator "
                "opening the setup page gets it"
            )
        if state.key:
            # Nothing else ends a held key's verification (ensure() never runs with a key).
            self.expiry.cancel()
            self.expiry.start(self._expire(self.generation))
            log.info(
                "the tenant key in use (fingerprint %s) stays until the new one is issued",
                state.fingerprint,
            )

    def forget(self) -> None:
        self.record = None

    def resumable(self, record: PendingRecord) -> bool:
        """A verification, until expiresAt + grace."""
        expires = parse_iso_utc(record.expires_at)
        usable = record.kind == "verification"
        return usable and (expires is None or time.time() <= expires + self.grace)

    def expired(self) -> bool:
        expires = parse_iso_utc((self.state.pending or {}).get("expiresAt"))
        return expires is not None and time.time() > expires + PENDING_GRACE

    async def _persist(self, record: PendingRecord) -> None:
        try:
            await self.store.save_pending(record)
        except storage.StoreError as exc:
            self.state.store_error = str(exc)
            log.error("%s: the pending bootstrap is kept in memory only", exc)

    async def _expire(self, generation: int) -> None:
        """A held key's verification that nobody finished: at expiresAt + grace (a resend moves
        expiresAt) the pending state ends and the key in use simply stays."""
        while self._watching(generation):
            assert self.record is not None
            expires = parse_iso_utc(self.record.expires_at)
            if expires is None:
                return
            remaining = expires + self.grace - time.time()
            if remaining > 0:
                await asyncio.sleep(min(remaining, self.expiry_check))
                continue
            async with self.lock:
                if self._watching(generation) and self.state.key:
                    await self.abandon(
                        "the e-mail verification expired", category="verification_expired"
                    )
            return

    def _watching(self, generation: int) -> bool:
        """The verification an expiry was started for is still the one pending."""
        return self.generation == generation and self.record is not None

    async def abandon(self, message: str, category: str = "unknown") -> None:
        state = self.state
        state.pending = None
        self.record = None
        await asyncio.to_thread(self.store.remove, PENDING_FILE)
        if state.key:
            # A re-bootstrap's 202 ended: the key it would have replaced simply stays. Nothing
            # to retry; the error says so (and is not a failed state).
            state.status = "ok"
            state.last_error = ErrorRecord(
                category="rotation_not_completed",
                phase="saas_response",
                error=message[:500],
                remediation=REMEDIATION["rotation_not_completed"],
                last_attempt_at=iso_utc(time.time()),
            )
            log.warning(
                "%s; the previous tenant key stays in use (fingerprint %s)",
                message,
                state.fingerprint,
            )
            return
        await self._fail(BootstrapFailed("saas_response", message, category=category), time.time())

    # -- the setup page's calls

    def verification(self) -> PendingRecord:
        """The pending 202 e-mail verification record, or 409 no_pending_verification."""
        record = self.record
        if (
            self.state.status != "awaiting_email_verification"
            or record is None
            or record.kind != "verification"
        ):
            raise _no_pending()
        return record

    def is_pending(self) -> bool:
        """An e-mail verification is waiting for a code (the setup page's code field)."""
        try:
            self.verification()
        except Conflict:
            return False
        return True

    def code_sent(self) -> bool:
        return bool(self.record and self.record.code_sent)

    @staticmethod
    def _url(record: PendingRecord, name: str) -> str | None:
        """`{name}Url` of the 202 answer (a path under the service URL), else the service's
        `/auth/connector/bootstrap/pending/{pendingId}/{name}`."""
        url = {"verify": record.verify_url, "resend": record.resend_url}.get(
            name, record.retarget_url
        )
        if isinstance(url, str) and url.startswith("/"):
            return url
        pending_id = record.pending_id
        if pending_id is not None and str(pending_id):
            return f"{BOOTSTRAP_PATH}/pending/{quote(str(pending_id), safe='')}/{name}"
        return None

    async def _failed(self, reply: ServiceReply) -> dict[str, Any]:
        """A verify, resend or retarget answer that is not a success. 404 (`not_found`), 410
        (`expired`, `org_gone`) and 409 `not_verification` / `already_bound` mean the service no
        longer has this verification: the pending state ends (a fresh bootstrap follows)."""
        data = reply.data if isinstance(reply.data, dict) else {}
        code = data.get("code")
        if reply.status in (404, 410) or (
            reply.status == 409 and code in ("not_verification", "already_bound")
        ):
            await self.abandon(
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
        async with self.lock:
            url = self._url(self.verification(), "verify")
            if url is None:
                raise _no_pending()
            try:
                reply = await self.service.post_json(url, {"code": code.strip()}, timeout=15.0)
            except ServiceCallError as exc:
                return {"ok": False, "status": None, "code": "saas_unreachable", "error": str(exc)}
            data = reply.data if isinstance(reply.data, dict) else {}
            if reply.status == 200 and isinstance(data.get("tenantKey"), str) and data["tenantKey"]:
                await self._apply_key(data, None)
                return {"ok": True, "fingerprint": self.state.fingerprint}
            out = await self._failed(reply)
            if "attemptsLeft" in out and self.state.pending is not None:
                self.state.pending["attemptsLeft"] = out["attemptsLeft"]
            return out

    async def resend(self) -> dict[str, Any]:
        """POST {resendUrl}: the service e-mails a new code to the address its pending row holds
        (the bootstrap's admin, or whoever it was retargeted to). Returns {ok, expiresAt,
        maskedEmail, emailSent, sentVia}, or {ok: False, status, code, error}."""
        return await self._new_code("resend", {}, "sent to the address the service holds")

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

    async def _new_code(self, kind: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        """Ask the service for a new code through the pending record's `kind` URL."""
        async with self.lock:
            record = self.verification()
            url = self._url(record, kind)
            if url is None:
                raise _no_pending()
            try:
                reply = await self.service.post_json(url, body, timeout=15.0)
            except ServiceCallError as exc:
                return {"ok": False, "status": None, "code": "saas_unreachable", "error": str(exc)}
            data = reply.data if isinstance(reply.data, dict) else {}
            if not reply.ok or data.get("ok") is False:
                return await self._failed(reply)
            fresh: dict[str, Any] = {
                k: data[k] for k in ("expiresAt", "maskedEmail") if isinstance(data.get(k), str)
            }
            fresh["codeSent"] = data.get("emailSent") is not False
            fresh["sentVia"] = kind
            record = attrs.evolve(
                record,
                expires_at=fresh.get("expiresAt", record.expires_at),
                masked_email=fresh.get("maskedEmail", record.masked_email),
                code_sent=fresh["codeSent"],
                sent_via=kind,
            )
            self.record = record
            await self._persist(record)
            if self.state.pending is not None:
                self.state.pending.update(fresh)
                self.state.pending.pop("attemptsLeft", None)  # a new code, new attempts
            log.info("verification code %s (to %s)", what, record.masked_email or "the admin")
            return {
                "ok": True,
                "expiresAt": record.expires_at,
                "maskedEmail": record.masked_email,
                "emailSent": fresh["codeSent"],
                "sentVia": kind,
            }


def _text(value: Any) -> str | None:
    """A 202 field that is text (a URL, a time, a name); None otherwise."""
    return value if isinstance(value, str) else None
