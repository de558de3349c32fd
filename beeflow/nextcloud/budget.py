"""The authentication failure budget: our own count of refused AppAPI logins, kept under
Nextcloud's brute-force lock-out threshold (docs/nextcloud-measured.md, "Brute-force
protection")."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

import attrs

log = logging.getLogger(__name__)

BRUTEFORCE_WINDOW: Final = 30 * 60.0
# Nextcloud refuses every AppAPI login from an IP with MORE than this many attempts in 30 minutes
# (IThrottler::MAX_ATTEMPTS, `auth.bruteforce.max-attempts`).
NC_MAX_ATTEMPTS: Final = 10
# A refused call adds 2 attempts on AppAPI's own routes (it validates the login twice), 1 on
# other routes (measured on 32.0.1): every refusal is counted as 2.
ATTEMPTS_PER_REFUSAL: Final = 2
USER_REFUSAL_SLACK_MAX: Final = 3
BUDGET_FILE: Final = "appapi-auth-budget.json"
BUDGET_FILE_VERSION: Final = 1
BRUTEFORCE_REMEDY: Final = (
    "Nextcloud counts failed AppAPI logins per IP (2 attempts per refused call); with more than "
    "10 attempts in 30 minutes it refuses every AppAPI call from this IP. Register the app "
    "(`occ app_api:app:register ...`), then clear the counter with "
    "`occ security:bruteforce:reset <connector-ip>`."
)


@attrs.define
class _Refusal:
    """One refused AppAPI login as Nextcloud's throttler records it: when, for which user (its
    metadata), and how many attempts it added."""

    at: float
    user: str | None  # None: a lock-out seen (any successful login ends it)
    attempts: int


@attrs.define
class AuthBudget:
    """Our own count of refused AppAPI logins, kept under Nextcloud's lock-out threshold.

    Counted as Nextcloud counts (measured on 32.0.1 with AppAPI 32.0.0): its throttler refuses
    every AppAPI login from an IP once that IP has more than NC_MAX_ATTEMPTS attempts in the last
    30 minutes, and a refused call adds 2 attempts on AppAPI's own routes (1 elsewhere), so
    every refusal is counted as ATTEMPTS_PER_REFUSAL, an upper bound. A successful login clears
    only the attempts recorded for the same user (Nextcloud's metadata is app id + user id).
    The count survives restarts when the client persists it (see NextcloudClient.load_budget).

    We allow `limit` refused calls per window across every feature, never more attempts than
    Nextcloud tolerates; when they are spent, calls stop until the window passes. An inbound
    request bearing the secret (AppAPI knows us again) lifts the pause for ONE call, at most once
    a minute and only while one more refusal would still leave Nextcloud below its threshold.

    Only refusals that can mean a wrong app id or secret are counted: Nextcloud's throttler
    counts exactly those (docs/appapi-wire.md, "How Nextcloud judges the outbound call") and
    they do not depend on the user part. An impersonated refusal while the credentials are
    `verified` (an authenticated call succeeded since the last counted refusal) is the user's
    (disabled: not logged in) or the disabled app's, uncounted by Nextcloud; at most
    `user_slack` of them are taken on trust (their worst case is budgeted like counted ones)
    before the client re-proves the credentials with one empty-user call (docs/lifecycle.md,
    "What the budget counts").
    """

    limit: int = 4
    window: float = BRUTEFORCE_WINDOW
    lift_interval: float = 60.0
    clock: Callable[[], float] = time.time  # wall clock: the count outlives the process
    _refusals: list[_Refusal] = attrs.field(factory=list)
    _allow_one: bool = False
    _last_lift: float = -1e18
    last_refusal: str = ""
    last_refusal_at: float | None = None
    verified: bool = False  # an authenticated call succeeded since the last counted refusal
    _trusted_user_refusals: int = 0  # user refusals taken on trust since that success
    user_refusals: int = 0  # impersonated refusals not counted (lifetime, for the heartbeat)
    changed: bool = False  # the persisted form is out of date (the client saves and clears it)
    # Replicas share the count through one file (NextcloudClient.save_budget merges): what this
    # process recorded since its last merge, and the successes that clear refusals (user ->
    # when; None: every refusal, `occ security:bruteforce:reset`).
    _new: list[_Refusal] = attrs.field(factory=list)
    _cleared: dict[str | None, float] = attrs.field(factory=dict)

    def _trim(self, now: float) -> None:
        kept = [r for r in self._refusals if 0 <= now - r.at < self.window]
        if len(kept) != len(self._refusals):
            self._refusals = kept
            self.changed = True

    @property
    def attempts(self) -> int:
        """Nextcloud's count for our IP as far as our own refusals go (a lower bound of its
        real count: other clients behind the same IP add to it)."""
        self._trim(self.clock())
        return sum(r.attempts for r in self._refusals)

    @property
    def _ceiling(self) -> int:
        """The attempts we stop at: `limit` refusals, never past the last refusal that leaves
        Nextcloud at or under its threshold."""
        return min(self.limit * ATTEMPTS_PER_REFUSAL, NC_MAX_ATTEMPTS)

    def _worst_case(self) -> int:
        """What Nextcloud may have counted: ours plus the user refusals taken on trust."""
        return self.attempts + self._trusted_user_refusals * ATTEMPTS_PER_REFUSAL

    def _exhausted(self) -> bool:
        """Our own limit is reached, or one more refusal could cross Nextcloud's threshold."""
        return self.attempts + ATTEMPTS_PER_REFUSAL > self._ceiling or not self._room_for_one()

    def _room_for_one(self) -> bool:
        """One more refusal would leave Nextcloud at or under its threshold."""
        return self._worst_case() + ATTEMPTS_PER_REFUSAL <= NC_MAX_ATTEMPTS

    @property
    def spent(self) -> bool:
        return self._exhausted() and not (self._allow_one and self._room_for_one())

    @property
    def user_slack(self) -> int:
        """User refusals taken on trust per verified success. If the secret went bad right after
        that success, Nextcloud counts these too: they are budgeted within the same ceiling, and
        one refusal's room is kept for a lifted trial."""
        room = NC_MAX_ATTEMPTS - self._ceiling - ATTEMPTS_PER_REFUSAL
        return max(0, min(USER_REFUSAL_SLACK_MAX, room // ATTEMPTS_PER_REFUSAL))

    def take_user_refusal(self) -> bool:
        """An impersonated refusal arrived: True if it may be taken as the user's without a new
        proof of the credentials."""
        if not self.verified or self._trusted_user_refusals >= self.user_slack:
            return False
        self._trusted_user_refusals += 1
        self.user_refusals += 1
        return True

    def may_probe(self) -> bool:
        """Whether re-proving the credentials is worth a call (not after a counted refusal)."""
        return self.verified and not self.spent

    def begin_call(self) -> None:
        """An authenticated call is about to go out: it consumes a lifted pause."""
        if self._allow_one and self._exhausted():
            self._allow_one = False

    def lift(self, claim: Callable[[float], bool] | None = None) -> None:
        """Inbound proof that Nextcloud knows our secret: allow one trial call (rate-limited,
        and only while a refusal of it would not lock the IP out). `claim(interval)`, when
        given, must also win the trial for this process among the replicas sharing the count
        (one trial per interval among all of them)."""
        now = time.monotonic()
        if (
            self._exhausted()
            and self._room_for_one()
            and now - self._last_lift >= self.lift_interval
        ):
            self._last_lift = now
            if claim is None or claim(self.lift_interval):
                self._allow_one = True

    @property
    def used(self) -> int:
        """Refused calls in the window."""
        self._trim(self.clock())
        return len(self._refusals)

    def record_failure(self, reason: str, user: str = "") -> None:
        now = self.clock()
        self._trim(now)
        was_exhausted = self._exhausted()
        self._add(_Refusal(now, user, ATTEMPTS_PER_REFUSAL))
        self.verified = False
        self.last_refusal = reason
        self.last_refusal_at = time.time()
        if self._exhausted() and not was_exhausted:
            log.error(
                "AppAPI refused %d calls (%d attempts on Nextcloud's count); pausing Nextcloud "
                "calls. %s",
                len(self._refusals),
                self.attempts,
                BRUTEFORCE_REMEDY,
            )

    def record_lockout(self, reason: str) -> None:
        """Nextcloud answered 429: its count for our IP is over the threshold (refusals from
        before a restart without storage, or other clients behind the same IP). Taken as a
        count at the threshold until the window passes or a login succeeds again."""
        now = self.clock()
        self._trim(now)
        missing = NC_MAX_ATTEMPTS + 1 - self._worst_case()
        if missing > 0:
            self._add(_Refusal(now, None, missing))
        self._allow_one = False
        self.verified = False
        self.last_refusal = reason
        self.last_refusal_at = time.time()
        log.error("Nextcloud refuses every AppAPI login from this IP (429). %s", BRUTEFORCE_REMEDY)

    def _add(self, refusal: _Refusal) -> None:
        self._refusals.append(refusal)
        self._new.append(refusal)
        self.changed = True

    def record_success(self, user: str = "") -> None:
        """Nextcloud resets the attempts whose metadata matches this login (app id + user)."""
        kept = [r for r in self._refusals if r.user is not None and r.user != user]
        if len(kept) != len(self._refusals):
            self._refusals = kept
            self._new = [r for r in self._new if r.user is not None and r.user != user]
            self._cleared[user] = self.clock()
            self.changed = True
        self._allow_one = False
        self.verified = True
        self._trusted_user_refusals = 0

    def record_user_refusal(self) -> None:
        """Counted separately after a fresh proof of the credentials (nothing taken on trust)."""
        self.user_refusals += 1

    def reset(self) -> None:
        """Forget every failure (after `occ security:bruteforce:reset`, or in tests)."""
        if self._refusals:
            self._refusals = []
            self._new = []
            self._cleared = {None: self.clock()}
            self.changed = True
        self.record_success()
        self.verified = False

    def snapshot(self) -> dict[str, Any]:
        spent = self.spent
        out: dict[str, Any] = {
            "failures": self.used,
            "limit": self.limit,
            "attempts": self.attempts,
            "nextcloudMaxAttempts": NC_MAX_ATTEMPTS,
            "spent": spent,
        }
        if self.user_refusals:
            out["userRefusals"] = self.user_refusals  # disabled users / app: not counted
        if self.last_refusal:
            out["lastRefusal"] = self.last_refusal
        if spent:
            out["remedy"] = BRUTEFORCE_REMEDY
        return out

    # ------------------------------------------------------------ persisted form

    def to_json(self) -> dict[str, Any]:
        self._trim(self.clock())
        return {
            "version": BUDGET_FILE_VERSION,
            "refusals": [
                {"at": r.at, "user": r.user, "attempts": r.attempts} for r in self._refusals
            ],
            "lastRefusal": self.last_refusal,
            "lastRefusalAt": self.last_refusal_at,
        }

    def restore(self, data: Any) -> int:
        """Take the refusals of a persisted budget (lenient: unusable entries are skipped, a
        future timestamp is taken as now). Returns how many are still in the window."""
        if not isinstance(data, dict) or not isinstance(data.get("refusals"), list):
            return 0
        now = self.clock()
        self._refusals = _parse_refusals(data, now)
        self._new, self._cleared = [], {}
        self._trim(now)
        self._take_last(data)
        self.changed = False
        return len(self._refusals)

    def _take_last(self, data: dict[str, Any]) -> None:
        if isinstance(data.get("lastRefusal"), str):
            self.last_refusal = data["lastRefusal"][:300]
        at = data.get("lastRefusalAt")
        if isinstance(at, int | float) and not isinstance(at, bool):
            self.last_refusal_at = float(at)

    # ------------------------------------------------------------ shared between replicas

    def absorb(self, data: Any) -> None:
        """Another replica changed the shared file: its refusals are ours too (plus what we
        recorded and have not merged yet, minus what our successes cleared)."""
        if not isinstance(data, dict):
            return
        now = self.clock()
        shared = [r for r in _parse_refusals(data, now) if not _cleared(r, self._cleared)]
        self._refusals = shared + self._new
        self._trim(now)
        if not self._new:
            self._take_last(data)

    def delta(self) -> tuple[list[_Refusal], dict[str | None, float]]:
        """What a merge must take over (a copy: the merge runs in a worker thread)."""
        return list(self._new), dict(self._cleared)

    def merged(self, data: Any, delta: tuple[list[_Refusal], dict[str | None, float]]) -> Any:
        """The shared file's next content: its refusals minus the ones `delta`'s successes
        cleared, plus `delta`'s new ones. Pure (no state of ours is touched): it runs under the
        file's lock, in a worker thread."""
        new, cleared = delta
        now = self.clock()
        base = data if isinstance(data, dict) else {}
        kept = [r for r in _parse_refusals(base, now) if not _cleared(r, cleared)] + new
        out = {
            "version": BUDGET_FILE_VERSION,
            "refusals": [
                {"at": r.at, "user": r.user, "attempts": r.attempts}
                for r in kept
                if 0 <= now - r.at < self.window
            ],
            "lastRefusal": base.get("lastRefusal", ""),
            "lastRefusalAt": base.get("lastRefusalAt"),
        }
        if new or not out["lastRefusal"]:
            out["lastRefusal"], out["lastRefusalAt"] = self.last_refusal, self.last_refusal_at
        if "lastLiftAt" in base:
            out["lastLiftAt"] = base["lastLiftAt"]
        return out

    def merged_into(self, data: Any, delta: tuple[list[_Refusal], dict[str | None, float]]) -> None:
        """After a merge: the file's content is our view, and `delta` is no longer pending
        (what was recorded while the merge ran stays pending)."""
        new, cleared = delta
        self._new = [r for r in self._new if r not in new]
        for key, at in cleared.items():
            if self._cleared.get(key) == at:
                del self._cleared[key]
        self.absorb(data)
        self.changed = bool(self._new or self._cleared)


def _parse_refusals(data: dict[str, Any], now: float) -> list[_Refusal]:
    out: list[_Refusal] = []
    rows = data.get("refusals")
    for item in rows if isinstance(rows, list) else ():
        if not isinstance(item, dict):
            continue
        at, user, attempts = item.get("at"), item.get("user", ""), item.get("attempts")
        if not isinstance(at, int | float) or isinstance(at, bool):
            continue
        if user is not None and not isinstance(user, str):
            continue
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            attempts = ATTEMPTS_PER_REFUSAL
        out.append(_Refusal(min(float(at), now), user, min(attempts, NC_MAX_ATTEMPTS + 1)))
    return out


def _cleared(refusal: _Refusal, cleared: dict[str | None, float]) -> bool:
    """Nextcloud's reset on a successful login: every earlier attempt of that user, and any
    lock-out (user None); `occ security:bruteforce:reset` (key None): everything earlier."""
    everything = cleared.get(None)
    if everything is not None and refusal.at <= everything:
        return True
    for user, at in cleared.items():
        if user is not None and refusal.at <= at and refusal.user in (None, user):
            return True
    return False


def claim_lift(data: Any, interval: float, now: float) -> tuple[Any, bool]:
    """One trial call per `interval` among the replicas: the file's lastLiftAt decides."""
    base = dict(data) if isinstance(data, dict) else {"version": BUDGET_FILE_VERSION}
    last = base.get("lastLiftAt")
    if isinstance(last, int | float) and not isinstance(last, bool) and 0 <= now - last < interval:
        return base, False
    base["lastLiftAt"] = now
    return base, True
