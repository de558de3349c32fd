"""The connector-facing half of the fake Bee Flow service: organisations and their tenant keys,
the bootstrap and its e-mail verification, the per-user JWT check, the connector -> service HMAC
check with `/auth/webhook/nc-user-sync`, and the service's own v2 signer for `/nc` callbacks.

Every rule is read from the service's source (`Bee-Flow/Bee-Flow`, folder `server/`); each block
names the file and commit it copies:

* `auth/connectorBootstrap.js` @3c2dabd9: `POST /auth/connector/bootstrap` and the
  `pending/:id` routes. Required headers (400 `missing_headers`, `invalid_admin_email`); the
  anti-spoof capabilities round trip (403 `nc_capabilities_unreachable|mismatch`, skipped only
  with `skip_verify`, the service's BEEFLOW_BOOTSTRAP_SKIP_VERIFY); then, in this order: pairing
  code (401 `pairing_code_invalid`, 410 `pairing_code_org_gone`, 409
  `pairing_code_org_already_bound` / `pairing_code_race`, 200 `pairing_code_redeemed`), returning
  bind (200 `returning_bind`), same e-mail or corporate domain (429 `too_many_pending_bindings`
  past 5, else 202 `pending_verification` WITHOUT sending any e-mail), the provisioning gate (403
  `pairing_required` unless `provisioning == "open"`), fresh org (500 `org_create_failed`, else
  200 `fresh_org`). 409 `admin_email_conflict` when the admin's address belongs to a user of
  another organisation. Errors are `{error, code, remediation?}`.
  The code is e-mailed only by `/resend` (to the address the pending row holds) and `/retarget`
  (to the admin doing the setup, if that address qualifies for the organisation: 403
  `email_not_in_org`); both answer `{ok, maskedEmail, expiresAt, emailSent}`. `/verify` answers
  400 `invalid_code` (with `attemptsLeft`), 429 `too_many_attempts`, 410 `expired`, 404
  `not_found`, or 200 with the key and `code: "verified"`. `GET pending/:id` is 404 for
  verification rows. IP limits: 20 bootstraps / 15 min, 60 verifies / min, 5 resend+retarget /
  15 min (429 with a bare `{error}`).
* `auth/connectorJwt.js` @13d3b01e: the JWT is looked at only with `X-Beeflow-Source:
  nextcloud-connector` and a JWT-shaped `Authorization: Bearer`; every tenant key is tried;
  HS256 only, `typ` absent or JWT, `exp`/`nbf` when present, `iss`/`aud` only when present; no
  key verifies -> 401, falsy `email` -> 400 "Connector token missing email claim"; users are
  found by e-mail and auto-provisioned (403 `NC_ONBOARDING_PENDING` before the organisation
  finished onboarding unless `nc_admin` or the bootstrap admin's uid, 403 `seat_cap_exceeded`,
  403 `NC_ORG_MISMATCH` for a user of another organisation).
* `auth/connectorSig.js` / `routes/webhooks/ncEvents.js` @e711789a: connector -> service HMAC
  over `ts\\nMETHOD\\noriginalUrl\\nrawBody` (the wire method, the path as received with its query,
  not decoded, the raw body text), the key of the organisation bound to
  `X-Beeflow-NC-Instance-Id`, |now - ts| <= 300 s, any failure 401 `{error}` without detail.
  The nc-user-sync body is checked only after the signature: `event` one of five names,
  `ncUid` non-empty text, `groupId` text or null, no other key -> 400 `invalid_request`.
* `integrations/ncSigning.js` @e711789a (+ its callers): the service signs `/nc` callbacks v2
  only, over the real verb, the DECODED path with `/nc` and the query, the uid (or ''), and
  sha256 of the body; every verb but GET and POST travels as POST + `X-HTTP-Method-Override`;
  `X-Beeflow-NC-Uid` is always sent. `appStudio/nextcloudMenuSync.js` pushes
  `POST {callback}/hooks/studio-menus` signed the same way with uid ''.

Written out with hashlib/hmac on purpose: it must not share code with the connector it checks.
Where the fake chooses (the tenant key it hands out first, how many wrong codes a pending
verification takes), the choice is named as the fake's own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import unquote

import aiohttp
import attrs
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.fakes.service_events import AutomationIngest

# The first fresh organisation gets these keys (the service mints 32 random bytes, base64url:
# the fake picks fixed ones so a test can name them).
PROVISIONED_KEY = "tk_provisioned_fedcba9876543210fedcba9876543210"
PAIRED_KEY = "tk_paired_0f1e2d3c4b5a69788796a5b4c3d2e1f0"
EXPIRES_AT = "2099-01-01T00:00:00Z"
PENDING_TTL_SECONDS: Final = 1800  # connectorBootstrap.js PENDING_TTL_SECONDS
MAX_VERIFICATIONS_PER_ORG: Final = 5  # connectorBootstrap.js
# The fake's choice: userStore.verifyPendingNcCode's attempt cap is not in the files read.
VERIFY_ATTEMPTS: Final = 5
SKEW: Final = 300
SOURCE: Final = "nextcloud-connector"
USER_SYNC_EVENTS: Final = (
    "user.created",
    "user.updated",
    "user.deleted",
    "group.member_added",
    "group.member_removed",
)
# utils/freeEmailDomains.js is not read; these are the obvious members of such a list.
FREE_EMAIL_DOMAINS: Final = frozenset(
    {"gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "yahoo.com",
     "icloud.com", "gmx.net", "gmx.de", "proton.me", "protonmail.com"}
)  # fmt: skip
_JWT_SHAPE: Final = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")

REMEDIATION_PAIRING_INVALID: Final = (
    "Ask the Bee Flow organisation admin to generate a fresh pairing code from Settings → "
    "Organisation → Pair a new Nextcloud, then set it as the BEEFLOW_PAIRING_CODE env var on "
    "this connector and reinstall."
)
REMEDIATION_PAIRING_REQUIRED: Final = (
    "Ask a Bee Flow organisation admin to generate a pairing code (Settings → Organisation → "
    "Pair a new Nextcloud), set it as the BEEFLOW_PAIRING_CODE env var on this connector, and "
    "redeploy."
)


def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def mask_email(email: str) -> str:
    """connectorBootstrap.js maskEmail: `tomsmit@beeflow.nl` -> `t•••t@beeflow.nl`."""
    local, _, domain = email.partition("@")
    if not domain:
        return "***"
    first = local[:1] or "*"
    last = local[-1:] if len(local) > 1 else ""
    return f"{first}{'•' * 3}{last}@{domain}"


def nc_host(url: str) -> str:
    """`new URL(base).host`: lower-case host, port only when it is not the scheme's default."""
    try:
        parsed = URL(url)
    except ValueError:
        return ""
    host = (parsed.raw_host or "").lower()
    if not host:
        return ""
    if ":" in host:
        host = f"[{host}]"
    port = parsed.explicit_port
    if port is not None and port != {"http": 80, "https": 443}.get(parsed.scheme):
        host = f"{host}:{port}"
    return host


def _slug(text: str) -> str:
    out = re.sub(r"[^a-z0-9]+", "-", (text or "nc").lower()).strip("-")[:40]
    return out or "nc"


EMAIL_CONFLICT: Final = "NC admin email is linked to another Bee Flow organization"
EMAIL_CONFLICT_REMEDIATION: Final = (
    "The Nextcloud admin email is already used by a user in a different Bee Flow organization. "
    "Either use a different admin user on Nextcloud, or contact support to merge the accounts."
)


def _error(status: int, error: str, code: str | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if code is not None:
        body["code"] = code
    body.update(extra)
    return web.json_response(body, status=status)


# ------------------------------------------------------------------ records


@attrs.define
class Org:
    id: str
    name: str
    key: str | None = attrs.field(default=None, repr=False)
    instance_id: str | None = None
    nc_base_url: str = ""
    admin_uid: str = ""
    callback_url: str = ""
    # Corporate domain an unbound organisation is found by (findUnboundOrgByEmailDomain).
    domain: str | None = None
    onboarding_completed: bool = False
    # verify_key's organisation: bound to whatever instance id a signed call names.
    any_instance: bool = False


@attrs.define
class User:
    id: str
    email: str
    org_id: str | None
    nc_uid: str = ""
    status: str = "active"
    org_role: str = "agent_editor"


@attrs.define
class Pending:
    id: str
    org_id: str
    instance_id: str
    nc_base_url: str
    admin_uid: str
    admin_email: str
    admin_display_name: str
    callback_url: str
    nc_version: str
    verification_email: str
    expires_at: float
    code: str
    attempts_left: int = VERIFY_ATTEMPTS
    status: str = "pending"


@attrs.frozen
class Mail:
    """One e-mail the service sent (sendNcVerificationCodeEmail)."""

    to: str
    code: str
    org_name: str
    kind: str  # resend | retarget


@attrs.define
class BootstrapCall:
    headers: CIMultiDict[str]
    body: bytes
    status: int = 0
    answer: Any = None

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class SyncDelivery:
    """One POST to /auth/webhook/nc-user-sync and what the fake made of it."""

    headers: CIMultiDict[str]
    body: bytes
    path: str
    verified: bool
    reason: str  # why it was refused ("" when accepted)
    arrived_at: float
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class Limiter:
    """express-rate-limit, keyed by client IP, fixed window."""

    limit: int
    window: float
    hits: dict[str, list[float]] = attrs.field(factory=dict)

    def hit(self, key: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self.hits.get(key, []) if now - t < self.window]
        recent.append(now)
        self.hits[key] = recent
        return len(recent) <= self.limit


# ------------------------------------------------------------------ signatures


def expected_signature(key: str, ts: str, method: str, path: str, body: bytes) -> str:
    """connectorSig.js: hex HMAC over `ts\\nMETHOD\\noriginalUrl\\nrawBody`."""
    message = ts.encode() + b"\n" + method.encode() + b"\n" + path.encode() + b"\n" + body
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def nc_signature(key: str, ts: int, method: str, path: str, uid: str, body: bytes) -> str:
    """ncSigning.js signedConnectorHeaders: v2 only, over the decoded path (raw when the escape
    is malformed), the upper-cased real verb, the uid and sha256(body)."""
    signable = decode_uri_component(path)
    digest = hashlib.sha256(body).hexdigest()
    message = f"{ts}\n{method.upper()}\n{signable}\n{uid}\n{digest}"
    return f"{ts}." + hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def decode_uri_component(text: str) -> str:
    """JavaScript's decodeURIComponent, falling back to the raw text where it would throw (a
    `%` not followed by two hex digits, or escapes that are not UTF-8)."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        return text
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return text


def callback_request(
    key: str, method: str, nc_path: str, *, uid: str = "", body: bytes = b"", ts: int | None = None
) -> tuple[str, dict[str, str]]:
    """What the service puts on the wire for one `/nc` callback: (wire method, headers).
    `nc_path` starts with `/nc` and carries the query. Signed per attempt."""
    stamp = int(_now()) if ts is None else ts
    headers = {
        "X-Beeflow-Sig": nc_signature(key, stamp, method, nc_path, uid, body),
        "X-Beeflow-NC-Uid": uid,
    }
    verb = method.upper()
    if verb in ("GET", "POST"):
        return verb, headers
    headers["X-HTTP-Method-Override"] = verb
    return "POST", headers


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_hs256(token: str, key: str, *, now: float | None = None) -> dict[str, Any] | None:
    """connectorJwt.js _verifyHs256: the claims, or None for any failure."""
    try:
        head_b64, payload_b64, sig_b64 = token.split(".")
        header = json.loads(_b64url_decode(head_b64))
        signature = _b64url_decode(sig_b64)
    except (ValueError, binascii.Error):
        return None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return None
    if header.get("typ") and header.get("typ") != "JWT":
        return None
    expected = hmac.new(key.encode(), f"{head_b64}.{payload_b64}".encode(), hashlib.sha256)
    if not hmac.compare_digest(expected.digest(), signature):
        return None
    try:
        payload = json.loads(_b64url_decode(payload_b64))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(payload, dict):
        return None
    moment = int(_now() if now is None else now)
    exp, nbf = payload.get("exp"), payload.get("nbf")
    if exp and isinstance(exp, int | float) and moment >= exp:
        return None
    if nbf and isinstance(nbf, int | float) and moment < nbf:
        return None
    if payload.get("iss") and payload.get("iss") != "nextcloud-connector":
        return None
    if payload.get("aud") and payload.get("aud") != "beeflow.nl":
        return None
    return payload


@attrs.frozen
class Session:
    """What connectorJwt puts in req.session for the routes behind it."""

    user: User
    org: Org
    claims: dict[str, Any]


class AuthRefused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response
        super().__init__(response.status)


# ------------------------------------------------------------------ the control


class ServiceControl:
    """The service's organisations, users and connector routes. `verify_key`: a key the service
    already holds for an organisation bound to this Nextcloud (whatever instance id it presents,
    with onboarding finished): what a connector with a fixed BEEFLOW_TENANT_KEY talks to."""

    def __init__(self, *, verify_key: str | None = PROVISIONED_KEY) -> None:
        self.orgs: dict[str, Org] = {}
        self.users: dict[str, User] = {}  # by e-mail
        self.pending: dict[str, Pending] = {}
        self.pairing_codes: dict[str, str] = {}  # code -> org id (unused codes)
        self.mails: list[Mail] = []
        self.mail_works = True
        # -- bootstrap knobs
        self.provisioning = "open"  # "open" (Bee Flow Cloud) | "pairing_only" (self-hosted)
        self.skip_verify = False  # BEEFLOW_BOOTSTRAP_SKIP_VERIFY=true
        self.tenant_key = PROVISIONED_KEY  # the first fresh organisation's key
        self.pairing_key = PAIRED_KEY  # the key of organisations made by add_org without one
        self.org_create_fails = False
        self.pairing_race = False  # consumePairingCode loses to a concurrent request
        self.seat_cap: int | None = None  # users an organisation may hold
        # A new organisation starts with its onboarding wizard unfinished, so users other than
        # an NC admin get 403 NC_ONBOARDING_PENDING until its admin finishes it on the service.
        # The fake's default skips the wizard (finished at creation); False keeps the gate.
        self.onboarding_done_on_create = True
        self.stall = False  # a bootstrap that never answers (timeouts)
        # Fault injection, not a service branch: the next bootstraps answer this as is.
        self.fault: tuple[int, Any] | None = None
        self.bootstrap_gate: asyncio.Event | None = None  # hold answers until set
        self.bootstraps: list[BootstrapCall] = []
        self.bootstrap_arrived = asyncio.Event()
        self.verifications: list[Any] = []
        self.resends: list[CIMultiDict[str]] = []
        self.retargets: list[Any] = []
        # -- user sync
        self.skew = SKEW
        self.sync_status = 200  # another value: answered as a failure (fault injection)
        self.sync_gate: asyncio.Event | None = None
        self.deliveries: list[SyncDelivery] = []
        self.sync_arrived = asyncio.Event()
        # -- automation events (tests/fakes/service_events.py)
        self.automation = AutomationIngest(self)
        # -- limits (per client IP)
        self.limits = {
            "bootstrap": Limiter(20, 900.0),
            "poll": Limiter(60, 60.0),
            "resend": Limiter(5, 900.0),
        }
        self._arrival = asyncio.Condition()
        self._pids = iter(range(1, 10**6))
        self.bound = Org(
            "org-bound", "Bound Org", key=verify_key, any_instance=True, onboarding_completed=True
        )

    @property
    def verify_key(self) -> str | None:
        """The key of the organisation already bound to this Nextcloud (None: there is none)."""
        return self.bound.key

    @verify_key.setter
    def verify_key(self, key: str | None) -> None:
        self.bound.key = key

    # ------------------------------------------------------------ test helpers

    def add_org(
        self,
        name: str,
        *,
        domain: str | None = None,
        emails: tuple[str, ...] = (),
        key: str | None = None,
        instance_id: str | None = None,
        onboarding_completed: bool = True,
    ) -> Org:
        """An organisation that exists on the service (signed up there, or bound elsewhere)."""
        org = Org(
            id="org-" + _slug(name),
            name=name,
            key=key,
            instance_id=instance_id,
            domain=domain,
            onboarding_completed=onboarding_completed,
        )
        self.orgs[org.id] = org
        for email in emails:
            self.users[email.lower()] = User(
                id=f"u-{_slug(email)}", email=email.lower(), org_id=org.id, org_role="org_admin"
            )
        return org

    def issue_pairing_code(self, org: Org) -> str:
        """Settings → Organisation → Pair a new Nextcloud: a one-shot `XXXX-XXXX` code."""
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        code = "".join(secrets.choice(alphabet) for _ in range(4))
        code += "-" + "".join(secrets.choice(alphabet) for _ in range(4))
        self.pairing_codes[code] = org.id
        return code

    def org_for_instance(self, instance_id: str) -> Org | None:
        for org in self.orgs.values():
            if org.instance_id and org.instance_id == instance_id:
                return org
        return None

    def last_mail(self) -> Mail:
        assert self.mails, "the service sent no e-mail"
        return self.mails[-1]

    def expire_pending(self) -> None:
        """Every pending verification's 30 minutes are over."""
        for row in self.pending.values():
            row.expires_at = _now() - 60

    @property
    def events(self) -> list[dict[str, Any]]:
        """The user/group events the fake accepted, in arrival order."""
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
        """The `/auth` routes of connectorBootstrap.js and ncEvents.js (mounted under /auth), and
        the automation events ingest."""
        base = "/auth/connector/bootstrap"
        return [
            web.post(base, self._bootstrap),
            web.get(base + "/pending/{pid}", self._poll),
            web.post(base + "/pending/{pid}/verify", self._verify),
            web.post(base + "/pending/{pid}/resend", self._resend),
            web.post(base + "/pending/{pid}/retarget", self._retarget),
            web.post("/auth/webhook/nc-user-sync", self._user_sync),
            *self.automation.routes(),
        ]

    # ------------------------------------------------------------ keys

    def all_keyed_orgs(self) -> list[Org]:
        orgs = [o for o in self.orgs.values() if o.key]
        if self.bound.key:
            orgs.append(self.bound)
        return orgs

    def _get_or_mint_key(self, org: Org) -> str:
        if not org.key:
            fresh = not any(o.key == self.tenant_key for o in self.orgs.values())
            org.key = self.tenant_key if fresh else secrets.token_urlsafe(32)
        return org.key

    # ------------------------------------------------------------ JWT (connectorJwt.js)

    def authenticate(self, request: web.Request) -> Session | None:
        """None: no connector marker, fall through unauthenticated. Raises AuthRefused with the
        service's answer."""
        if request.headers.get("X-Beeflow-Source") != SOURCE:
            return None
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        token = auth[7:].strip()
        if not _JWT_SHAPE.match(token):
            return None
        resolved: tuple[Org, dict[str, Any]] | None = None
        for org in self.all_keyed_orgs():
            assert org.key is not None
            claims = verify_hs256(token, org.key)
            if claims is not None:
                resolved = (org, claims)
                break
        if resolved is None:
            raise AuthRefused(_error(401, "Connector token rejected: no matching tenant key"))
        org, claims = resolved
        email = claims.get("email")
        if not email:
            raise AuthRefused(_error(400, "Connector token missing email claim"))
        email = str(email)
        nc_uid = (request.headers.get("X-Beeflow-NC-Uid") or str(claims.get("sub") or "")).strip()
        user = self.users.get(email.lower())
        if user is None:
            admin = claims.get("nc_admin") is True or (nc_uid and nc_uid == org.admin_uid)
            if not admin and not org.onboarding_completed and not org.any_instance:
                raise AuthRefused(
                    _error(
                        403,
                        "Setup in progress — your organization administrator is finalising the "
                        "Bee Flow setup. Please refresh in a few minutes.",
                        "NC_ONBOARDING_PENDING",
                    )
                )
            members = sum(1 for u in self.users.values() if u.org_id == org.id)
            if self.seat_cap is not None and members >= self.seat_cap:
                raise AuthRefused(
                    _error(
                        403,
                        "Your organization has reached its user seat limit. Ask your Bee Flow "
                        "administrator to upgrade.",
                        "seat_cap_exceeded",
                    )
                )
            user = User(
                id=f"nc_{org.id}_{_slug(nc_uid or email)}",
                email=email.lower(),
                org_id=org.id,
                nc_uid=nc_uid,
                org_role="org_admin" if admin else "agent_editor",
            )
            self.users[user.email] = user
        elif user.org_id and user.org_id != org.id:
            raise AuthRefused(
                _error(
                    403,
                    "This Nextcloud is connected to a different Bee Flow organisation than your "
                    "account. Ask an admin of your organisation to generate a pairing code and "
                    "re-pair this Nextcloud with it.",
                    "NC_ORG_MISMATCH",
                )
            )
        if user.status == "pending":
            raise AuthRefused(_error(403, "Account is pending admin approval"))
        return Session(user=user, org=org, claims=claims)

    # ------------------------------------------------------------ bootstrap

    def _client_ip(self, request: web.Request) -> str:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return str(peer[0]) if peer else "?"

    async def verify_instance(self, base_url: str, expected: str) -> tuple[str, str] | str:
        """verifyNcInstance: (themingName, ncVersion), or the failure message."""
        url = f"{base_url}/ocs/v2.php/cloud/capabilities?format=json"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=8)) as session,
                session.get(
                    url, headers={"OCS-APIRequest": "true", "Accept": "application/json"}
                ) as resp,
            ):
                if resp.status >= 400:
                    return f"NC capabilities HTTP {resp.status}"
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return f"NC capabilities unreachable: {type(exc).__name__}"
        data = (body or {}).get("ocs", {}).get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not data.get("version"):
            return "NC capabilities returned no version data"
        caps = data.get("capabilities") or {}
        theming = caps.get("theming") or {}
        core = caps.get("core") or {}
        host = nc_host(base_url)
        fallback = f"nc-host:{host}" if host else f"nc:{theming.get('name') or 'nextcloud'}"
        reported = theming.get("instanceid") or core.get("instanceid") or fallback
        if reported != expected:
            return f"NC instance id mismatch: header={expected} server={reported}"
        version = data.get("version") or {}
        return str(theming.get("name") or "Nextcloud"), str(version.get("string") or "unknown")

    def _ensure_admin(self, org: Org, email: str, uid: str) -> bool:
        """ensureOrgAdminUser: False when the address belongs to another organisation's user
        (the callers answer 409 admin_email_conflict)."""
        user = self.users.get(email)
        if user is None:
            self.users[email] = User(
                id=f"nc_{org.id}_{_slug(uid)}", email=email, org_id=org.id, nc_uid=uid,
                org_role="org_admin",
            )  # fmt: skip
            return True
        if user.org_id and user.org_id != org.id and user.org_id in self.orgs:
            return False
        user.org_id, user.org_role = org.id, "org_admin"
        user.nc_uid = user.nc_uid or uid
        return True

    def _key_answer(self, org: Org, nc_version: str, code: str, **extra: Any) -> web.Response:
        body = {
            "tenantKey": self._get_or_mint_key(org),
            "organizationId": org.id,
            "organizationName": org.name,
            **extra,
            "ncVersion": nc_version,
            "code": code,
        }
        return web.json_response(body)

    async def _bootstrap(self, request: web.Request) -> web.Response:
        body = await request.read()
        call = BootstrapCall(CIMultiDict(request.headers), body)
        self.bootstraps.append(call)
        self.bootstrap_arrived.set()
        if self.bootstrap_gate is not None:
            await self.bootstrap_gate.wait()
        if self.stall:
            await asyncio.sleep(3600)
        response = await self._bootstrap_answer(request, body)
        call.status = response.status
        call.answer = json.loads(response.body) if isinstance(response.body, bytes) else None
        return response

    async def _bootstrap_answer(self, request: web.Request, raw: bytes) -> web.Response:
        if not self.limits["bootstrap"].hit(self._client_ip(request)):
            return _error(429, "Too many bootstrap attempts; try again later.")
        if self.fault is not None:
            status, answer = self.fault
            return web.json_response(answer, status=status)
        h = request.headers
        instance = h.get("X-Beeflow-NC-Instance-Id", "").strip()
        base_url = h.get("X-Beeflow-NC-Base-Url", "").strip().rstrip("/")
        admin_uid = h.get("X-Beeflow-NC-Admin-Uid", "").strip()
        admin_email = h.get("X-Beeflow-NC-Admin-Email", "").strip().lower()
        display = h.get("X-Beeflow-NC-Admin-Display-Name", "").strip()
        callback = h.get("X-Beeflow-Connector-Callback-Url", "").strip().rstrip("/")
        pairing = h.get("X-Beeflow-Pairing-Code", "").strip().upper()
        if not instance or not base_url or not admin_uid or not admin_email:
            return _error(
                400,
                "Missing required X-Beeflow-NC-* headers",
                "missing_headers",
                remediation="The Bee Flow connector must send X-Beeflow-NC-Instance-Id, "
                "-Base-Url, -Admin-Uid and -Admin-Email. Re-deploy the connector or upgrade to "
                "the latest release.",
            )
        if "@" not in admin_email:
            return _error(
                400,
                "NC admin email is not a valid email",
                "invalid_admin_email",
                remediation="Configure an email address on your Nextcloud admin user and "
                "re-deploy the connector.",
            )
        if self.skip_verify:
            theming, nc_version = "Nextcloud (dev)", "unverified"
        else:
            checked = await self.verify_instance(base_url, instance)
            if isinstance(checked, str):
                unreachable = re.search(
                    r"unreachable|fetch failed|timeout|ENOTFOUND|ECONNREFUSED", checked, re.I
                )
                code = "nc_capabilities_unreachable" if unreachable else "nc_capabilities_mismatch"
                return _error(
                    403,
                    "Could not verify NC instance ownership: " + checked,
                    code,
                    remediation=(
                        f"Bee Flow Cloud could not reach your Nextcloud at {base_url}. Your "
                        "Nextcloud must be publicly reachable for SaaS-to-NC callbacks. Either "
                        "expose it publicly, or set BEEFLOW_NC_PUBLIC_URL in the connector to an "
                        "HTTPS tunnel or reverse-proxy URL we can reach."
                        if unreachable
                        else "Your Nextcloud responded but its instance id does not match the "
                        "one the connector sent. This usually means the connector was "
                        "reinstalled while the SaaS still tracked the old instance. Contact "
                        "support if it persists."
                    ),
                )
            theming, nc_version = checked
        binding = {
            "instance_id": instance,
            "nc_base_url": base_url,
            "admin_uid": admin_uid,
            "callback_url": callback,
        }
        # 0. Pairing code.
        if pairing:
            org_id = self.pairing_codes.get(pairing)
            if org_id is None:
                return _error(
                    401,
                    "Pairing code is invalid, expired, or already used",
                    "pairing_code_invalid",
                    remediation=REMEDIATION_PAIRING_INVALID,
                )
            target = self.orgs.get(org_id)
            if target is None:
                return _error(
                    410, "Organisation for this pairing code no longer exists",
                    "pairing_code_org_gone",
                )  # fmt: skip
            if target.instance_id and target.instance_id != instance:
                return _error(
                    409,
                    "Target organisation is already bound to a different Nextcloud instance",
                    "pairing_code_org_already_bound",
                )
            if self.pairing_race:
                return _error(
                    409, "Pairing code was just consumed by another request", "pairing_code_race"
                )
            del self.pairing_codes[pairing]
            if not target.instance_id:
                for name, value in binding.items():
                    setattr(target, name, value)
            if not self._ensure_admin(target, admin_email, admin_uid):
                return _error(409, EMAIL_CONFLICT, "admin_email_conflict")
            self._secondary_admins(target, raw, admin_uid)
            if not target.key:
                target.key = self.pairing_key
            return self._key_answer(
                target, nc_version, "pairing_code_redeemed", isNew=False, isAdopted=True
            )
        # 1. Returning bind.
        org = self.org_for_instance(instance)
        if org is not None:
            if not self._ensure_admin(org, admin_email, admin_uid):
                return _error(
                    409,
                    EMAIL_CONFLICT,
                    "admin_email_conflict",
                    remediation=EMAIL_CONFLICT_REMEDIATION,
                )
            self._secondary_admins(org, raw, admin_uid)
            if callback:
                org.callback_url = callback
            return self._key_answer(org, nc_version, "returning_bind", isNew=False)
        # 2. Same e-mail, or the same corporate domain: verification by an e-mailed code.
        domain = admin_email.rsplit("@", 1)[1]
        verify_org = None
        candidate = self.users.get(admin_email)
        if candidate is not None and candidate.org_id in self.orgs:
            owner = self.orgs[candidate.org_id]
            if not owner.instance_id:
                verify_org = owner
        if verify_org is None and domain not in FREE_EMAIL_DOMAINS:
            verify_org = self._unbound_org_by_domain(domain)
        if verify_org is not None:
            active = [
                p
                for p in self.pending.values()
                if p.org_id == verify_org.id and p.status == "pending" and p.expires_at > _now()
            ]
            if len(active) >= MAX_VERIFICATIONS_PER_ORG:
                return _error(
                    429,
                    "Too many pending Nextcloud connection attempts for this organisation. Try "
                    "again later.",
                    "too_many_pending_bindings",
                    remediation="Wait for the existing verification codes to expire (15 "
                    "minutes) and retry from the connector.",
                )
            row = Pending(
                id=f"p-{next(self._pids)}",
                org_id=verify_org.id,
                instance_id=instance,
                nc_base_url=base_url,
                admin_uid=admin_uid,
                admin_email=admin_email,
                admin_display_name=display,
                callback_url=callback,
                nc_version=nc_version,
                verification_email=admin_email,
                expires_at=_now() + PENDING_TTL_SECONDS,
                code=_code(),
            )
            self.pending[row.id] = row
            base = f"/auth/connector/bootstrap/pending/{row.id}"
            return web.json_response(
                {
                    "status": "pending_verification",
                    "code": "email_verification_required",
                    "pendingId": row.id,
                    "verifyUrl": f"{base}/verify",
                    "resendUrl": f"{base}/resend",
                    "retargetUrl": f"{base}/retarget",
                    "expiresAt": _iso(row.expires_at),
                    "organizationName": verify_org.name,
                    "message": "Awaiting in-app verification by a Nextcloud admin.",
                },
                status=202,
            )
        # The provisioning gate.
        if self.provisioning != "open":
            return _error(
                403,
                "This Bee Flow server does not auto-create organisations for new Nextcloud "
                "instances.",
                "pairing_required",
                remediation=REMEDIATION_PAIRING_REQUIRED,
            )
        # 3. Fresh organisation.
        if self.org_create_fails:
            return _error(
                500,
                "Failed to create organization",
                "org_create_failed",
                remediation="Bee Flow could not provision a new organization. This is usually a "
                "transient database issue — wait a minute and the connector will retry "
                "automatically. If it persists, contact support with the connector logs.",
            )
        host = nc_host(base_url)
        fresh = Org(
            id=f"nc-{_slug(theming)}-{_slug(instance[:12])}"[:48],
            name=f"{theming} ({host})" if host else theming,
            instance_id=instance,
            nc_base_url=base_url,
            admin_uid=admin_uid,
            callback_url=callback,
            onboarding_completed=self.onboarding_done_on_create,
        )
        self.orgs[fresh.id] = fresh
        if not self._ensure_admin(fresh, admin_email, admin_uid):
            return _error(
                409, EMAIL_CONFLICT, "admin_email_conflict", remediation=EMAIL_CONFLICT_REMEDIATION
            )
        self._secondary_admins(fresh, raw, admin_uid)
        return self._key_answer(fresh, nc_version, "fresh_org", isNew=True)

    def _unbound_org_by_domain(self, domain: str) -> Org | None:
        for org in self.orgs.values():
            if not org.instance_id and org.domain and org.domain.lower() == domain:
                return org
        return None

    def _secondary_admins(self, org: Org, raw: bytes, primary_uid: str) -> None:
        """ensureAdditionalOrgAdmins: only `ncAdmins` is read from the body, best effort."""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return
        admins = body.get("ncAdmins") if isinstance(body, dict) else None
        if not isinstance(admins, list):
            return
        for entry in admins:
            if not isinstance(entry, dict):
                continue
            uid = str(entry.get("uid") or "").strip()
            email = str(entry.get("email") or "").strip().lower()
            if uid and email and uid != primary_uid:
                self._ensure_admin(org, email, uid)

    # ------------------------------------------------------------ pending verification

    async def _poll(self, request: web.Request) -> web.Response:
        """GET pending/:id: approval rows only; a verification row is 404 (not_found)."""
        if not self.limits["poll"].hit(self._client_ip(request)):
            return _error(429, "Too many poll requests.")
        return web.json_response({"status": "not_found"}, status=404)

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            raise AuthRefused(_error(400, "Invalid JSON body")) from None
        return body if isinstance(body, dict) else {}

    async def _verify(self, request: web.Request) -> web.Response:
        if not self.limits["poll"].hit(self._client_ip(request)):
            return _error(429, "Too many poll requests.")
        try:
            body = await self._read_json(request)
        except AuthRefused as exc:
            return exc.response
        self.verifications.append(body)
        code = str(body.get("code") or "").strip()
        if not re.fullmatch(r"\d{6}", code):
            return _error(400, "Enter the 6-digit code from the email.", "invalid_code")
        row = self.pending.get(request.match_info["pid"])
        if row is None:
            return web.json_response({"status": "not_found", "code": "not_found"}, status=404)
        if row.status != "pending" or row.expires_at <= _now():
            return web.json_response(
                {
                    "status": "expired",
                    "code": "expired",
                    "remediation": "The code expired. Request a new one and try again.",
                },
                status=410,
            )
        too_many = "Too many incorrect attempts. Request a new code."
        if row.attempts_left <= 0:
            return _error(429, too_many, "too_many_attempts")
        if not hmac.compare_digest(code, row.code):
            row.attempts_left -= 1
            if row.attempts_left <= 0:
                return _error(429, too_many, "too_many_attempts")
            return _error(
                400, "That code is not correct.", "invalid_code", attemptsLeft=row.attempts_left
            )
        org = self.orgs.get(row.org_id)
        if org is None:
            return web.json_response({"status": "expired", "code": "org_gone"}, status=410)
        if org.instance_id and org.instance_id != row.instance_id:
            return _error(
                409, "Organisation is already bound to a different Nextcloud instance",
                "already_bound",
            )  # fmt: skip
        if not org.instance_id:
            org.instance_id = row.instance_id
            org.nc_base_url = row.nc_base_url
            org.admin_uid = row.admin_uid
            org.callback_url = row.callback_url
        if not self._ensure_admin(org, row.admin_email, row.admin_uid):
            return _error(409, EMAIL_CONFLICT, "admin_email_conflict")
        row.status = "approved"
        return self._key_answer(org, row.nc_version, "verified", isAdopted=True)

    def _send(self, row: Pending, to: str, kind: str) -> bool:
        row.code = _code()
        row.attempts_left = VERIFY_ATTEMPTS
        row.expires_at = _now() + PENDING_TTL_SECONDS
        if not self.mail_works:
            return False
        org = self.orgs.get(row.org_id)
        self.mails.append(Mail(to=to, code=row.code, org_name=org.name if org else "", kind=kind))
        return True

    async def _resend(self, request: web.Request) -> web.Response:
        self.resends.append(CIMultiDict(request.headers))
        if not self.limits["resend"].hit(self._client_ip(request)):
            return _error(429, "Too many code requests; try again later.")
        row = self.pending.get(request.match_info["pid"])
        # resetNcVerificationCode: no pending verification row (or an expired one) -> null.
        if row is None or row.status != "pending" or row.expires_at <= _now():
            return web.json_response({"status": "expired", "code": "expired"}, status=410)
        to = row.verification_email or row.admin_email
        sent = self._send(row, to, "resend")
        return web.json_response(
            {
                "ok": True,
                "maskedEmail": mask_email(to),
                "expiresAt": _iso(row.expires_at),
                "emailSent": sent,
            }
        )

    async def _retarget(self, request: web.Request) -> web.Response:
        if not self.limits["resend"].hit(self._client_ip(request)):
            return _error(429, "Too many code requests; try again later.")
        try:
            body = await self._read_json(request)
        except AuthRefused as exc:
            return exc.response
        self.retargets.append(body)
        email = str(body.get("email") or "").strip().lower()
        if "@" not in email:
            return _error(400, "A valid email is required", "invalid_email")
        row = self.pending.get(request.match_info["pid"])
        if row is None:
            return web.json_response({"status": "not_found", "code": "not_found"}, status=404)
        if row.status != "pending":
            return _error(409, "No pending verification for this connection", "not_verification")
        if row.expires_at <= _now():
            return web.json_response({"status": "expired", "code": "expired"}, status=410)
        domain = email.rsplit("@", 1)[1]
        exact = self.users.get(email)
        qualifies = exact is not None and exact.org_id == row.org_id
        if not qualifies and domain not in FREE_EMAIL_DOMAINS:
            owner = self._unbound_org_by_domain(domain)
            qualifies = owner is not None and owner.id == row.org_id
        if not qualifies:
            return _error(
                403,
                "This Nextcloud account is not part of the Bee Flow organisation this "
                "connection is being linked to.",
                "email_not_in_org",
            )
        row.verification_email = email
        row.admin_email = email
        row.admin_uid = str(body.get("uid") or "").strip() or row.admin_uid
        row.admin_display_name = str(body.get("displayName") or "").strip()
        sent = self._send(row, email, "retarget")
        return web.json_response(
            {
                "ok": True,
                "maskedEmail": mask_email(email),
                "expiresAt": _iso(row.expires_at),
                "emailSent": sent,
            }
        )

    # ------------------------------------------------------------ connector -> service HMAC

    def org_for_signed_call(self, instance_id: str) -> Org | None:
        if not instance_id:
            return None
        org = self.org_for_instance(instance_id)
        if org is not None:
            return org if org.key else None
        return self.bound if self.verify_key else None

    def check_signature(self, request: web.Request, body: bytes) -> str:
        """'' when `verifyConnectorSig` accepts the request, else why (the service's 401 says
        nothing; the reason is for the tests)."""
        org = self.org_for_signed_call(request.headers.get("X-Beeflow-NC-Instance-Id", ""))
        if org is None:
            return "instance"
        header = request.headers.get("X-Beeflow-Sig", "")
        ts_text, dot, sig = header.partition(".")
        if not dot:
            return "malformed"
        match = re.match(r"^\s*([+-]?\d+)", ts_text)  # parseInt
        if match is None:
            return "malformed"
        ts = int(match.group(1))
        if abs(int(_now()) - ts) > self.skew:
            return "skew"
        # rawBody exists only when the global JSON parser read the body (index.js).
        is_json = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        raw = body if is_json == "application/json" else b""
        assert org.key is not None
        want = expected_signature(org.key, str(ts), request.method, request.raw_path, raw)
        if len(want) != len(sig) or not hmac.compare_digest(want, sig.lower()):
            return "mismatch"
        return ""

    async def _user_sync(self, request: web.Request) -> web.Response:
        body = await request.read()
        reason = self.check_signature(request, body)
        status = 401 if reason else 200
        answer: Any = {"error": "Invalid or missing signature"}
        if not reason:
            problem = _nc_event_problem(body)
            if problem is not None:
                status, answer = 400, problem
                reason = "body"
            elif self.sync_status != 200:
                status, answer = self.sync_status, {"error": "Internal server error"}
            else:
                answer = {"ok": True, "action": "noop"}
        self.sync_arrived.set()
        if self.sync_gate is not None:
            await self.sync_gate.wait()
        delivery = SyncDelivery(
            CIMultiDict(request.headers),
            body,
            request.raw_path,
            reason in ("", "body"),
            reason,
            time.monotonic(),
            status,
        )
        async with self._arrival:
            self.deliveries.append(delivery)
            self._arrival.notify_all()
        return web.json_response(answer, status=status)


def _code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


def _nc_event_problem(raw: bytes) -> dict[str, Any] | None:
    """ncEvents.js NcEvent (zod, `.strict()`), with terminalErrorHandler's 400 body."""

    def bad(path: str, message: str) -> dict[str, Any]:
        issue = {"path": path, "message": message}
        return {"error": message, "code": "invalid_request", "details": [issue]}

    body_text = "A Nextcloud event is a JSON object with event, ncUid and groupId."
    try:
        body = json.loads(raw)
    except ValueError:
        return {"error": "Invalid JSON body"}
    if not isinstance(body, dict):
        return bad("body", body_text)
    extra = sorted(set(body) - {"event", "ncUid", "groupId"})
    if body.get("event") not in USER_SYNC_EVENTS:
        return bad("body.event", f"event is one of {', '.join(USER_SYNC_EVENTS)}.")
    uid = body.get("ncUid")
    if not isinstance(uid, str) or not uid:
        return bad("body.ncUid", "ncUid is the Nextcloud user id, as text.")
    group = body.get("groupId")
    if group is not None and not isinstance(group, str):
        return bad("body.groupId", "groupId is the Nextcloud group id, as text.")
    if extra:
        return bad("body", body_text)
    return None
