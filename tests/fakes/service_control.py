"""The Bee Flow service's connector-control endpoints, as a fake: the tenant bootstrap (200, 202
e-mail verification with its verify and resend sub-flows, 202 legacy approval polling, pairing
codes, errors) and `/auth/webhook/nc-user-sync`, which verifies the connector's HMAC byte for byte
(reference 7.3) and records the events.

E-mail verification (reference 6.4 step 5): `POST .../pending/{id}/verify {"code"}` answers the
key, or 400 `{error, code: "invalid_code", attemptsLeft}`; the last wrong attempt and any call
after `expires_at` answer 410 (`too_many_attempts` / `verification_expired`); an unknown pending id
is 404. `POST .../pending/{id}/resend` answers `{ok, expiresAt, maskedEmail, emailSent}` with a
new expiry and fresh attempts, 410 once expired, or `resend_status` when a test sets it.
`POST .../pending/{id}/retarget {"email", "uid", "displayName"}` re-points the code to the admin
actually doing the setup: a new code to that address, with the same answer as resend (masked
address, new expiry, fresh attempts); 400 `invalid_email` for an address without `@`, 403
`email_not_in_org` when `retarget_domains` is set and the address's domain is not in it, 410/404
like verify.

Pairing codes: a bootstrap carrying `X-Beeflow-Pairing-Code` equal to `pairing_code` binds to the
existing organisation (200, `pairing_organization_name`) whatever `bootstrap_mode` says; any other
code is 403 `invalid_pairing_code`, with the code quoted back in the message (as a careless
service might: the connector must not pass it on).

Mount the routes on the fake service: `FakeService(extra_routes=control.routes())`. The
signature check is written out here with hashlib/hmac on purpose: it must not share code with
the connector it checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from aiohttp import web
from multidict import CIMultiDict

PROVISIONED_KEY = "tk_provisioned_fedcba9876543210fedcba9876543210"
PAIRED_KEY = "tk_paired_0f1e2d3c4b5a69788796a5b4c3d2e1f0"
EXPIRES_AT = "2099-01-01T00:00:00Z"
PENDING_ID = "p-1"
VERIFY_ATTEMPTS = 5


def _expired(iso: str) -> bool:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")) < datetime.now(UTC)


@attrs.define
class BootstrapCall:
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class SyncDelivery:
    """One POST to /auth/webhook/nc-user-sync and what the fake made of it."""

    headers: CIMultiDict[str]
    body: bytes
    path: str
    verified: bool
    reason: str  # why the signature was refused ("" when verified)
    arrived_at: float
    status: int  # what the fake answered

    def json(self) -> Any:
        return json.loads(self.body)


def expected_signature(key: str, ts: str, method: str, path: str, body: bytes) -> str:
    message = ts.encode() + b"\n" + method.encode() + b"\n" + path.encode() + b"\n" + body
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


class ServiceControl:
    def __init__(self, *, verify_key: str = PROVISIONED_KEY) -> None:
        # -- bootstrap
        # ok | verification | poll | error | stall
        self.bootstrap_mode = "ok"
        self.tenant_key = PROVISIONED_KEY
        self.organization_id = "org-42"
        self.organization_name = "Acme"
        self.error_status = 400
        self.error_body: dict[str, Any] = {
            "error": "Nextcloud capabilities unreachable from the service",
            "code": "nc_capabilities_unreachable",
        }
        self.bootstrap_gate: asyncio.Event | None = None  # hold answers until set
        self.bootstraps: list[BootstrapCall] = []
        self.bootstrap_arrived = asyncio.Event()
        # poll mode: the n-th poll (1-based) that approves; 0 = never (410 instead when denied)
        self.approve_on_poll = 2
        self.deny_polls = False
        self.polls = 0
        self.verify_code = "123456"
        self.verifications: list[Any] = []
        # e-mail verification: expiry (ISO, the 202's expiresAt), attempts, resends
        self.expires_at = EXPIRES_AT
        self.masked_email = "a***@example.com"
        self.attempts_left = VERIFY_ATTEMPTS
        self.resends: list[CIMultiDict[str]] = []
        self.resend_status = 200  # another value: answered with an error body
        self.resend_expires_at = "2099-06-01T00:00:00Z"
        self.retargets: list[Any] = []  # the bodies of retarget calls
        self.retarget_domains: set[str] | None = None  # None: any domain is the organisation's
        # pairing
        self.pairing_code: str | None = None
        self.pairing_key = PAIRED_KEY
        self.pairing_organization_name = "Existing Org"
        # -- user sync
        self.verify_key = verify_key
        self.skew = 300
        self.sync_status = 200
        self.sync_gate: asyncio.Event | None = None  # hold answers until set
        self.deliveries: list[SyncDelivery] = []
        self.sync_arrived = asyncio.Event()  # set when a sync request arrives (before the gate)
        self._arrival = asyncio.Condition()

    # ------------------------------------------------------------ helpers for tests

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events the fake accepted (verified, answered 200), in arrival order."""
        return [d.json() for d in self.deliveries if d.verified and d.status == 200]

    @property
    def refused(self) -> list[SyncDelivery]:
        return [d for d in self.deliveries if not d.verified]

    async def wait_events(self, count: int, *, timeout: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout), self._arrival:
            while len(self.events) < count:
                await self._arrival.wait()
        return self.events

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/auth/connector/bootstrap", self._bootstrap),
            web.get("/auth/connector/bootstrap/pending/{pid}/poll", self._poll),
            web.post("/auth/connector/bootstrap/pending/{pid}/verify", self._verify),
            web.post("/auth/connector/bootstrap/pending/{pid}/resend", self._resend),
            web.post("/auth/connector/bootstrap/pending/{pid}/retarget", self._retarget),
            web.post("/auth/webhook/nc-user-sync", self._user_sync),
        ]

    # ------------------------------------------------------------ bootstrap

    def _key_body(self) -> dict[str, Any]:
        return {
            "tenantKey": self.tenant_key,
            "organizationId": self.organization_id,
            "organizationName": self.organization_name,
        }

    async def _bootstrap(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bootstraps.append(BootstrapCall(CIMultiDict(request.headers), body))
        self.bootstrap_arrived.set()
        if self.bootstrap_gate is not None:
            await self.bootstrap_gate.wait()
        mode = self.bootstrap_mode
        if mode == "stall":
            await asyncio.sleep(3600)
        offered = request.headers.get("X-Beeflow-Pairing-Code")
        if offered is not None:
            if self.pairing_code is None or offered != self.pairing_code:
                return web.json_response(
                    {
                        "error": f"Pairing code {offered} is not valid",
                        "code": "invalid_pairing_code",
                    },
                    status=403,
                )
            return web.json_response(
                {
                    "tenantKey": self.pairing_key,
                    "organizationId": "org-existing",
                    "organizationName": self.pairing_organization_name,
                }
            )
        if mode == "ok":
            return web.json_response(self._key_body())
        if mode == "verification":
            self.attempts_left = VERIFY_ATTEMPTS
            base = f"/auth/connector/bootstrap/pending/{PENDING_ID}"
            return web.json_response(
                {
                    "code": "email_verification_required",
                    "pendingId": PENDING_ID,
                    "verifyUrl": f"{base}/verify",
                    "resendUrl": f"{base}/resend",
                    "retargetUrl": f"{base}/retarget",
                    "expiresAt": self.expires_at,
                    "maskedEmail": self.masked_email,
                    "organizationName": self.organization_name,
                },
                status=202,
            )
        if mode == "poll":
            return web.json_response(
                {
                    "pendingId": "p-2",
                    "pollUrl": "/auth/connector/bootstrap/pending/p-2/poll",
                    "expiresAt": EXPIRES_AT,
                },
                status=202,
            )
        return web.json_response(self.error_body, status=self.error_status)

    async def _poll(self, request: web.Request) -> web.Response:
        self.polls += 1
        if self.deny_polls:
            return web.json_response({"code": "denied"}, status=410)
        if self.approve_on_poll and self.polls >= self.approve_on_poll:
            return web.json_response(self._key_body())
        return web.json_response({"status": "pending"}, status=202)

    def _pending_gone(self, request: web.Request) -> web.Response | None:
        if request.match_info["pid"] != PENDING_ID:
            unknown = {"error": "Unknown pending binding", "code": "not_found"}
            return web.json_response(unknown, status=404)
        if _expired(self.expires_at):
            return web.json_response(
                {"error": "The verification has expired", "code": "verification_expired"},
                status=410,
            )
        if self.attempts_left <= 0:
            return web.json_response(
                {"error": "Too many wrong codes", "code": "too_many_attempts"}, status=410
            )
        return None

    async def _verify(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.verifications.append(body)
        gone = self._pending_gone(request)
        if gone is not None:
            return gone
        if body.get("code") != self.verify_code:
            self.attempts_left -= 1
            if self.attempts_left <= 0:
                return web.json_response(
                    {"error": "Too many wrong codes", "code": "too_many_attempts"}, status=410
                )
            return web.json_response(
                {"error": "Wrong code", "code": "invalid_code", "attemptsLeft": self.attempts_left},
                status=400,
            )
        return web.json_response(self._key_body())

    async def _resend(self, request: web.Request) -> web.Response:
        self.resends.append(CIMultiDict(request.headers))
        gone = self._pending_gone(request)
        if gone is not None:
            return gone
        if self.resend_status != 200:
            return web.json_response(
                {"error": "Resend refused", "code": "resend_refused", "retryAfter": 60},
                status=self.resend_status,
            )
        self.expires_at = self.resend_expires_at
        self.attempts_left = VERIFY_ATTEMPTS
        return web.json_response(
            {
                "ok": True,
                "expiresAt": self.expires_at,
                "maskedEmail": self.masked_email,
                "emailSent": True,
            }
        )

    async def _retarget(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.retargets.append(body)
        gone = self._pending_gone(request)
        if gone is not None:
            return gone
        email = body.get("email") if isinstance(body, dict) else None
        if not isinstance(email, str) or "@" not in email:
            return web.json_response(
                {"error": "A valid e-mail address is required", "code": "invalid_email"},
                status=400,
            )
        domain = email.rsplit("@", 1)[1].lower()
        if self.retarget_domains is not None and domain not in self.retarget_domains:
            return web.json_response(
                {
                    "error": "This address does not belong to the organisation",
                    "code": "email_not_in_org",
                },
                status=403,
            )
        local = email.rsplit("@", 1)[0]
        self.masked_email = f"{local[:1]}***@{domain}"
        self.expires_at = self.resend_expires_at
        self.attempts_left = VERIFY_ATTEMPTS
        return web.json_response(
            {
                "ok": True,
                "expiresAt": self.expires_at,
                "maskedEmail": self.masked_email,
                "emailSent": True,
            }
        )

    def expire_now(self) -> None:
        """Make the pending verification expired on the service's side."""
        past = datetime.now(UTC) - timedelta(minutes=1)
        self.expires_at = past.strftime("%Y-%m-%dT%H:%M:%SZ")

    # ------------------------------------------------------------ user sync

    def _check(self, request: web.Request, body: bytes) -> str:
        """'' when the request is signed exactly as reference 7.3 says, else the reason."""
        header = request.headers.get("X-Beeflow-Sig", "")
        ts, dot, sig = header.partition(".")
        if not dot or not ts.isdigit() or len(sig) != 64:
            return "malformed"
        if abs(int(time.time()) - int(ts)) > self.skew:
            return "skew"
        want = expected_signature(self.verify_key, ts, request.method, request.raw_path, body)
        if not hmac.compare_digest(want, sig):
            return "mismatch"
        if request.headers.get("X-Beeflow-Source") != "nextcloud-connector":
            return "source"
        if not request.headers.get("X-Beeflow-NC-Instance-Id"):
            return "instance"
        if request.headers.get("Content-Type", "").split(";")[0] != "application/json":
            return "content-type"
        return ""

    async def _user_sync(self, request: web.Request) -> web.Response:
        body = await request.read()
        reason = self._check(request, body)
        status = 401 if reason else self.sync_status
        self.sync_arrived.set()
        if self.sync_gate is not None:
            await self.sync_gate.wait()
        delivery = SyncDelivery(
            CIMultiDict(request.headers),
            body,
            request.raw_path,
            reason == "",
            reason,
            time.monotonic(),
            status,
        )
        async with self._arrival:
            self.deliveries.append(delivery)
            self._arrival.notify_all()
        if reason:
            return web.json_response({"error": "bad signature", "code": reason}, status=401)
        if status != 200:
            return web.json_response({"error": "failing", "code": "test"}, status=status)
        return web.json_response({"ok": True})
