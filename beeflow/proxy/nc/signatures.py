"""Inbound /nc signature checks: the X-Beeflow-Sig header and its clock, v2 (body hash) then v1
over every signed form of the target, which forms may match through AppAPI's PHP proxy, and the
failure bookkeeping (docs/nc-proxy.md, "The signature" and "Diagnostics").

Failures are billed to one global failure-only limiter AFTER they are found, so a genuine call
always gets through however many forged ones came before it. No message names an expected value.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final, NoReturn

import attrs
from aiohttp import web

from beeflow import keys
from beeflow.errors import BadRequest, TooManyRequests, Unauthorized
from beeflow.limits import RateLimiter
from beeflow.proxy.nc.path import NcTarget, loggable_prefix, php_query_hazards
from beeflow.serde import iso_utc
from beeflow.signing import SIG_HEADER, ParsedSig, SigFormatError, parse_sig_header, verify_nc

log = logging.getLogger(__name__)

FAILURE_LIMIT: Final = 60
FAILURE_WINDOW: Final = 60.0
WARN_AT_CONSECUTIVE: Final = 5


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
    """The checks of one connector, with its failure limiter and counters."""

    limiter: RateLimiter = attrs.field(factory=lambda: RateLimiter(FAILURE_LIMIT, FAILURE_WINDOW))
    stats: CallbackStats = attrs.field(factory=CallbackStats)

    def no_key(self) -> NoReturn:
        """Before bootstrap there is nothing to verify with: a defined 401, counted but not
        billed (the caller is not at fault), never a 500."""
        self.stats.failure("tenant_key_missing")
        raise Unauthorized(
            "The connector has no tenant key yet (bootstrap has not finished)",
            code="tenant_key_missing",
        )

    def parse_header(self, request: web.Request, skew_seconds: float) -> ParsedSig:
        """The signature header, well formed and within the allowed clock skew."""
        value = request.headers.get(SIG_HEADER)
        if value is None or not value.strip():
            self.fail(request, "signature_missing", f"{SIG_HEADER} is missing")
        try:
            sig = parse_sig_header(value)
        except SigFormatError as exc:
            self.fail(request, exc.code, f"{SIG_HEADER} must be '<unixSeconds>.<64 hex>'")
        if abs(time.time() - sig.ts) > skew_seconds:
            self.fail(
                request,
                "signature_expired",
                f"{SIG_HEADER} timestamp is outside the allowed clock skew",
            )
        return sig

    def verify(
        self,
        request: web.Request,
        key: str,
        sig: ParsedSig,
        method: str,
        target: NcTarget,
        uid: str,
        body_sha256: str,
    ) -> None:
        """v2 then v1, over every signed form of the target, in constant time; then whether
        the form that matched is unambiguous for the way the request came in."""
        matched = verify_nc(key, sig, method, target.candidates, uid, body_sha256)
        if matched is None:
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
        self.stats.success()
        check_path_form(request, target, matched)

    def fail(
        self,
        request: web.Request,
        reason: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Count and bill one signature failure, then refuse: 401 naming the check, or 429 once
        the window's budget is spent."""
        stats = self.stats
        stats.failure(reason)
        if stats.consecutive == WARN_AT_CONSECUTIVE or stats.consecutive % 10 == 0:
            log.warning(
                "/nc callback refused (%s), %d in a row: check the tenant key and clock of the "
                "Bee Flow service (%s %s...)",
                reason,
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
        raise Unauthorized(message, code=reason, extra=extra)


GUARD: web.AppKey[SignatureGuard] = web.AppKey("nc_proxy_signatures")


def via_php_proxy(request: web.Request) -> bool:
    """Delivered by AppAPI's legacy PHP proxy: its valid AppAPI headers plus the x-origin-ip it
    adds (HaRP adds no x-origin-ip to browser-side requests)."""
    return request[keys.IDENTITY].trusted and "x-origin-ip" in request.headers


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
