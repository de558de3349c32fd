"""Inbound /nc signature checks: the X-Beeflow-Sig header and its clock, which versions are
allowed, v3 (from the head, docs/nc-proxy.md "The v3 signature"), v1 (from the head) and v2
(once the body hash is known) over every signed form of the target, which forms may match
through AppAPI's PHP proxy, used signatures of writes (replay.py), and the failure bookkeeping
(docs/nc-proxy.md, "The signature" and "Diagnostics").

Failures are billed to one global failure-only limiter AFTER they are found, so a genuine call
always gets through however many forged ones came before it. No message names an expected value.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, NoReturn

import attrs
from aiohttp import web

from beeflow.errors import BadRequest, ServiceUnavailable, TooManyRequests, Unauthorized
from beeflow.limits import RateLimiter
from beeflow.proxy.nc.path import (
    NcTarget,
    js_decode_uri_component,
    loggable_prefix,
    php_query_hazards,
)
from beeflow.proxy.nc.replay import MemoryReplayCache, ReplayCache, ReplayCacheFull
from beeflow.proxy.nc.sigv3 import (
    CONTENT_SHA256_HEADER,
    NONCE_HEADER,
    SIGNED_HEADERS,
    canonical_query,
    content_sha256,
    message_v3,
    parse_v3_header,
    valid_nonce,
)
from beeflow.serde import iso_utc
from beeflow.signing import (
    SIG_HEADER,
    ParsedSig,
    SigFormatError,
    nc_message_v1,
    nc_message_v2,
    parse_sig_header,
)
from beeflow.web.auth import IDENTITY

log = logging.getLogger(__name__)

FAILURE_LIMIT: Final = 60
FAILURE_WINDOW: Final = 60.0
WARN_AT_CONSECUTIVE: Final = 5
DAV_PREFIX: Final = "/remote.php/dav/"
# Verbs whose signatures may be used again within the skew window: the safe methods (RFC 9110
# 9.2.1; WebDAV's PROPFIND, REPORT and SEARCH are reads too). The service lists the same folder
# twice within a second as a matter of course, and a repeated read changes nothing (its answer
# goes to whoever holds the request, as for a GET). Every other verb's signature is good for
# one request (replay.py).
REPEATABLE_VERBS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND", "REPORT", "SEARCH"})


@attrs.frozen
class Claim:
    """What the X-Beeflow-Sig header claims: the parsed signature and its format (3 for v3,
    None for `<ts>.<hex>`, which is v2 or v1)."""

    sig: ParsedSig
    version: int | None

    @property
    def v3(self) -> bool:
        return self.version == 3


@attrs.frozen
class SignaturePolicy:
    """Which versions are accepted (BEEFLOW_NC_SIGNATURE_V1, BEEFLOW_NC_SIGNATURE_REQUIRE_V3)
    and how long a timestamp is good (BEEFLOW_SIG_SKEW_SECONDS)."""

    v1: bool = True
    require_v3: bool = False
    skew_seconds: float = 300.0


@attrs.define
class CallbackStats:
    """Signature failures on /nc, for the heartbeat's `ncCallbacks` (docs/nc-proxy.md,
    "Diagnostics"): for diagnostics, never for decisions."""

    failures: int = 0
    consecutive: int = 0
    verified: int = 0
    rate_limited: int = 0
    last_reason: str | None = None
    last_at: float | None = None

    def failure(self, reason: str) -> None:
        self.failures += 1
        self.consecutive += 1
        self.last_reason = reason
        self.last_at = time.time()

    def success(self) -> None:
        self.verified += 1
        self.consecutive = 0

    def health(self, trusted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"failures": self.failures, "consecutive": self.consecutive}
        if self.consecutive >= WARN_AT_CONSECUTIVE:
            out["warning"] = (
                "The last /nc callbacks failed signature checks: the tenant key or the clock of "
                "the Bee Flow service may be wrong"
            )
        if trusted:
            out["verified"] = self.verified
            out["rateLimited"] = self.rate_limited
            out["lastReason"] = self.last_reason
            out["lastAt"] = iso_utc(self.last_at)
        return out


@attrs.define
class SignatureGuard:
    """The checks of one connector, with its failure limiter, counters and used signatures."""

    policy: SignaturePolicy = attrs.field(factory=SignaturePolicy)
    limiter: RateLimiter = attrs.field(factory=lambda: RateLimiter(FAILURE_LIMIT, FAILURE_WINDOW))
    stats: CallbackStats = attrs.field(factory=CallbackStats)
    replays: ReplayCache = attrs.field(factory=MemoryReplayCache)

    def no_key(self) -> NoReturn:
        """Before bootstrap there is nothing to verify with: a defined 401, counted but not
        billed (the caller is not at fault), never a 500."""
        self.stats.failure("tenant_key_missing")
        raise Unauthorized(
            "The connector has no tenant key yet (bootstrap has not finished)",
            code="tenant_key_missing",
        )

    # -------------------------------------------------------------- from the head

    def parse_header(self, request: web.Request) -> Claim:
        """The signature header, well formed and within the allowed clock skew."""
        value = request.headers.get(SIG_HEADER)
        if value is None or not value.strip():
            self.fail(request, "signature_missing", f"{SIG_HEADER} is missing")
        try:
            v3 = parse_v3_header(value)
            sig = v3 if v3 is not None else parse_sig_header(value)
        except SigFormatError as exc:
            self.fail(
                request,
                exc.code,
                f"{SIG_HEADER} must be '<unixSeconds>.<64 hex>' or 'v3.<unixSeconds>.<64 hex>'",
            )
        if abs(time.time() - sig.ts) > self.policy.skew_seconds:
            self.fail(
                request,
                "signature_expired",
                f"{SIG_HEADER} timestamp is outside the allowed clock skew",
            )
        return Claim(sig, 3 if v3 is not None else None)

    def check_form(self, request: web.Request, claim: Claim, target: NcTarget) -> None:
        """What the claimed version can express: v3 when the admin requires it; for v1/v2, no
        '?' or '#' decoded out of the path (path and query share one field there); for v3, a
        decodable path and query, a nonce of the allowed form."""
        if not claim.v3:
            if self.policy.require_v3:
                self.fail(
                    request,
                    "signature_version_refused",
                    "This connector accepts only v3 signatures (BEEFLOW_NC_SIGNATURE_REQUIRE_V3)",
                )
            if target.decoded_path_splits:
                raise BadRequest(
                    "The path holds an encoded '?' or '#' (%3F, %23): a v1/v2 signature cannot "
                    "tell it from a query; sign with v3",
                    code="path_ambiguous",
                )
            if target.query and target.upstream.startswith(DAV_PREFIX) and via_php_proxy(request):
                # AppAPI's PHP proxy decodes the path before passing it on: a file name's %3F
                # arrives as a real '?', and the rest of the name as a query (measured on
                # Nextcloud 32.0.1). The v1/v2 message reads the same either way, so the call
                # would verify and reach another file; WebDAV calls carry no query otherwise.
                raise BadRequest(
                    "A WebDAV call through AppAPI's PHP proxy arrived with a query: the proxy "
                    "decodes an encoded '?' in a file name into one. Sign with v3 (it refuses the "
                    "mismatch) and use HaRP or a direct callback URL for such names",
                    code="path_ambiguous_via_php_proxy",
                )
            return
        if js_decode_uri_component(target.path) is None:
            raise BadRequest(
                "The path is not valid percent-encoded UTF-8 (a literal '%' is '%25')",
                code="path_invalid",
            )
        if canonical_query(target.query) is None:
            raise BadRequest("The query is not UTF-8 once decoded", code="query_invalid")
        if not valid_nonce(request.headers.get(NONCE_HEADER, "")):
            raise BadRequest(
                f"{NONCE_HEADER} must be 1-128 of A-Z a-z 0-9 . _ ~ -", code="nonce_invalid"
            )

    def refuse_used(self, request: web.Request, claim: Claim, method: str) -> None:
        """A write's signature already used (checked again when it is claimed)."""
        if method not in REPEATABLE_VERBS and self.replays.seen(claim.sig.mac):
            self.fail(request, "signature_replayed", "This signature has already been used")

    def verify_head(
        self,
        request: web.Request,
        key: str,
        claim: Claim,
        method: str,
        target: NcTarget,
        uid: str,
        *,
        record: bool = True,
    ) -> bool:
        """What can be verified before the body: v3 (over the declared body hash), else v1
        when allowed. True when verified; a v3 mismatch is refused; False when only v2 (after
        the body) is left. `record=False` (before `100 Continue`) leaves the counters alone."""
        if claim.v3:
            declared = content_sha256(request.headers.get(CONTENT_SHA256_HEADER))
            if declared is None:
                self.fail(
                    request,
                    "signature_content_hash_invalid",
                    f"A v3 signature needs {CONTENT_SHA256_HEADER}: the body's SHA-256, 64 hex",
                )
            message = v3_message(request, claim, method, target, uid, declared)
            if not _equal(key, message, claim.sig.mac):
                self.fail(request, "signature_mismatch", "Signature mismatch")
            if record:
                self.stats.success()
            return True
        if not self.policy.v1:
            return False
        matched = _match(
            key,
            claim.sig,
            target.candidates,
            lambda p: nc_message_v1(claim.sig.ts_text, method, p, uid),
        )
        if matched is None:
            return False
        check_path_form(request, target, matched)
        if record:
            self.stats.success()
        return True

    # -------------------------------------------------------------- from the body

    def verify_body(
        self,
        request: web.Request,
        key: str,
        claim: Claim,
        method: str,
        target: NcTarget,
        uid: str,
        body_sha256: str,
        *,
        verified: bool,
    ) -> None:
        """Once the body is known: a v3 body must match its declared hash; an unverified
        `<ts>.<hex>` must be a v2 signature over one of the target's forms."""
        if claim.v3:
            declared = content_sha256(request.headers.get(CONTENT_SHA256_HEADER))
            if not hmac.compare_digest(declared or "", body_sha256):
                self.fail(
                    request,
                    "signature_content_hash_mismatch",
                    f"The body does not match {CONTENT_SHA256_HEADER}",
                )
            return
        if verified:
            return
        matched = _match(
            key,
            claim.sig,
            target.candidates,
            lambda p: nc_message_v2(claim.sig.ts_text, method, p, uid, body_sha256),
        )
        if matched is None:
            self._mismatch(request, target)
        self.stats.success()
        check_path_form(request, target, matched)

    def _mismatch(self, request: web.Request, target: NcTarget) -> NoReturn:
        hazards = list(php_query_hazards(target.query))
        if target.query and via_php_proxy(request):
            # PHP may have rewritten the query without leaving a trace (a=1&a=2 -> a=2).
            hazards.append("via_php_proxy")
        if hazards:
            self.fail(
                request,
                "signature_mismatch_query",
                "Signature mismatch; the query has forms Nextcloud's PHP proxy rewrites, or "
                "came through it (see docs/nc-proxy.md)",
                extra={"queryHazards": hazards},
            )
        self.fail(request, "signature_mismatch", "Signature mismatch")

    # -------------------------------------------------------------- one use per write

    async def claim(self, request: web.Request, claim: Claim, method: str) -> bool:
        """Record a verified write's signature as used until its timestamp leaves the skew
        window; a second use is refused. True when something was recorded (release() it if
        the request then never reaches Nextcloud)."""
        if method in REPEATABLE_VERBS:
            return False
        until = claim.sig.ts + self.policy.skew_seconds + 1
        try:
            fresh = await self.replays.claim(claim.sig.mac, until)
        except ReplayCacheFull:
            raise ServiceUnavailable(
                "Too many signed writes in the clock-skew window to remember; retry shortly",
                code="replay_cache_full",
                headers={"Retry-After": "5"},
            ) from None
        if not fresh:
            self.fail(request, "signature_replayed", "This signature has already been used")
        return True

    async def release(self, claim: Claim) -> None:
        await self.replays.release(claim.sig.mac)

    # -------------------------------------------------------------- failures

    def fail(
        self,
        request: web.Request,
        code: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Count and bill one signature failure, then refuse: 401 naming the check, or 429 once
        the window's budget is spent."""
        stats = self.stats
        stats.failure(code)
        if stats.consecutive == WARN_AT_CONSECUTIVE or stats.consecutive % 10 == 0:
            log.warning(
                "/nc callback refused (%s), %d in a row: check the tenant key and clock of the "
                "Bee Flow service (%s %s...)",
                code,
                stats.consecutive,
                request.method,
                loggable_prefix(request.raw_path),
            )
        if not self.limiter.penalise():
            stats.rate_limited += 1
            raise TooManyRequests(
                "Too many invalid /nc signatures",
                code="signature_rate_limited",
                retry_after=self.limiter.retry_after(),
            )
        raise Unauthorized(message, code=code, extra=extra)


def v3_message(
    request: web.Request,
    claim: Claim,
    method: str,
    target: NcTarget,
    uid: str,
    declared_sha256: str,
) -> str:
    """The v3 message of this request (check_form has made sure path and query decode)."""
    headers = request.headers
    destination, overwrite, depth = (headers.get(name, "") for name in SIGNED_HEADERS)
    return message_v3(
        ts=claim.sig.ts_text,
        method=method,
        path=js_decode_uri_component(target.path) or "",
        query=canonical_query(target.query) or "",
        uid=uid,
        content_sha256=declared_sha256,
        destination=destination,
        overwrite=overwrite,
        depth=depth,
        nonce=headers.get(NONCE_HEADER, ""),
    )


def _equal(key: str, message: str, mac: bytes) -> bool:
    digest = hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).digest()
    return hmac.compare_digest(digest, mac)


def _match(
    key: str, sig: ParsedSig, candidates: Iterable[str], message: Callable[[str], str]
) -> str | None:
    """Which candidate form ("v:<index>") the signature covers, or None. Every candidate is
    computed and compared, so timing does not tell which one came closest."""
    matched: str | None = None
    for i, form in enumerate(candidates):
        if _equal(key, message(form), sig.mac) and matched is None:
            matched = f"v:{i}"
    return matched


GUARD: web.AppKey[SignatureGuard] = web.AppKey("nc_proxy_signatures")


def via_php_proxy(request: web.Request) -> bool:
    """Delivered by AppAPI's legacy PHP proxy: its valid AppAPI headers plus the x-origin-ip it
    adds (HaRP adds no x-origin-ip to browser-side requests)."""
    return request[IDENTITY].trusted and "x-origin-ip" in request.headers


def check_path_form(request: web.Request, target: NcTarget, matched: str) -> None:
    """Through AppAPI's PHP proxy the path was decoded once before it reached us and Nextcloud
    decodes it again: a raw-form match on a path with escapes may name another file (the
    service's `My%2520Report.pdf`, meaning the literal name `My%20Report.pdf`, arrives as
    `My%20Report.pdf`, whose raw form verifies and which Nextcloud reads as `My Report.pdf`).
    Only a match on the decoded path form is unambiguous there. HaRP and direct callers get the
    target byte for byte (one decode, by Nextcloud): both forms are fine."""
    index = int(matched.partition(":")[2])
    if target.decoded_path[index] or not target.has_escapes or not via_php_proxy(request):
        return
    raise BadRequest(
        "The path has percent escapes and came through AppAPI's PHP proxy, which decodes it "
        "once more: only a signature over the decoded path is accepted there. A name that "
        "itself contains '%XX' text needs HaRP (/exapps/) or a direct callback URL",
        code="path_ambiguous_via_php_proxy",
    )
