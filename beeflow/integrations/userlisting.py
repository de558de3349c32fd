"""Who exists in Nextcloud and what it knows of them, as the user reconciliation reads it: the
AppAPI user list (the only source that decides who exists), an enabled administrator found by
reading their own account, everyone's details read as that administrator a page at a time
(docs/lifecycle.md, "Periodic reconciliation (`beeflow/integrations/usersync.py`)")."""

from __future__ import annotations

import asyncio
import logging
from typing import Final
from urllib.parse import quote

from beeflow.errors import NextcloudError
from beeflow.integrations.userrecords import (
    Snapshot,
    SyncAborted,
    SyncStatus,
    UserRecord,
    aborted_by,
    details_page,
    gather_reads,
    stop_state,
)
from beeflow.nextcloud.client import NextcloudClient
from beeflow.nextcloud.ocs import OcsResult

log = logging.getLogger(__name__)

LOOKUP_CONCURRENCY: Final = 5
DETAILS_PAGE: Final = 500  # users per cloud/users/details call
SINGLE_LOOKUPS_MAX: Final = 50  # listed users missing from the details, read one by one


class UserListing:
    """One run's reads of Nextcloud's users; `status` gets what the run learnt (read as whom,
    how many could not be read)."""

    def __init__(self, client: NextcloudClient, status: SyncStatus) -> None:
        self._client = client
        self.status = status

    async def read(self, previous: Snapshot) -> Snapshot:
        client = self._client
        try:
            # No warm-up retries: the next interval is the retry, and each refusal costs budget.
            listing = await client.ocs("GET", "/ocs/v2.php/apps/app_api/api/v1/users", timeout=15.0)
        except NextcloudError as exc:
            raise aborted_by(exc) from None
        if not listing.ok or not isinstance(listing.data, list):
            raise SyncAborted(
                f"AppAPI user list: HTTP {listing.http_status} OCS {listing.statuscode}",
                state=stop_state(client.budget),
            )
        uids = sorted({str(u) for u in listing.data if isinstance(u, str | int) and str(u)})
        users: Snapshot = {}
        admin = await self._find_admin(uids, users, previous)
        self.status.read_as = admin
        if admin is not None:
            await self._read_as_admin(admin, uids, users, previous)
        # Only the listing decides who exists: a listed user we could not read (disabled, or
        # deleted since the listing) keeps their last record; the next listing settles it.
        unreadable = [uid for uid in uids if uid not in users]
        for uid in unreadable:
            if uid in previous:
                users[uid] = previous[uid]
        self.status.users_unreadable = len(unreadable)
        if unreadable:
            log.info(
                "user sync: %d listed user(s) could not be read (disabled accounts?); their last "
                "known details are kept",
                len(unreadable),
            )
        return users

    async def _find_admin(self, uids: list[str], users: Snapshot, previous: Snapshot) -> str | None:
        """An enabled administrator, proven by reading their own account as them: the remembered
        ones first (one call in the usual case), then everyone in batches. Every account read on
        the way goes into `users`. None when no listed user is an enabled administrator (then
        everyone readable has been read as themselves)."""
        listed = set(uids)
        remembered = sorted(u for u, r in previous.items() if u in listed and r.usable_admin)
        for uid in remembered:
            record = await self._read_self(uid)
            if record is not None:
                users[uid] = record
                if record.usable_admin:
                    return uid
        rest = [u for u in uids if u not in users and u not in remembered]
        limit = asyncio.Semaphore(LOOKUP_CONCURRENCY)

        async def read(uid: str) -> tuple[str, UserRecord | None]:
            async with limit:
                return uid, await self._read_self(uid)

        for start in range(0, len(rest), LOOKUP_CONCURRENCY):
            batch = rest[start : start + LOOKUP_CONCURRENCY]
            found = await gather_reads([read(uid) for uid in batch])
            for uid, record in found:
                if record is not None:
                    users[uid] = record
            admins = [uid for uid, record in found if record is not None and record.usable_admin]
            if admins:
                return admins[0]
        return None

    async def _read_self(self, uid: str) -> UserRecord | None:
        """A user's own account, read as them. None when Nextcloud will not let them read it:
        a disabled account is not logged in (997, proven not to be our secret), a user deleted
        since the listing is 404."""
        result = await self._get(f"/ocs/v2.php/cloud/users/{quote(uid, safe='')}", uid)
        if result.ok:
            return UserRecord.from_ocs(uid, result.data)
        if result.user_refused or result.http_status == 404 or result.statuscode in (404, 998):
            return None
        raise self._stop("user info", result)

    async def _read_as_admin(
        self, admin: str, uids: list[str], users: Snapshot, previous: Snapshot
    ) -> None:
        """Everyone's details as `admin`, a page of DETAILS_PAGE per call; listed users missing
        from the pages are read one by one (at most SINGLE_LOOKUPS_MAX a run). A user whose
        record did not change keeps the previous record object: the run holds
        one copy of the unchanged users' records, not two."""
        listed = set(uids)
        got: set[str] = set()
        offset = 0
        while offset <= len(uids) + DETAILS_PAGE:
            result = await self._get(
                "/ocs/v2.php/cloud/users/details",
                admin,
                params={"limit": str(DETAILS_PAGE), "offset": str(offset)},
                timeout=60.0,
            )
            if not result.ok:
                raise self._stop(f"user details as {admin}", result)
            page = details_page(result.data)
            if page is None:
                raise SyncAborted(f"user details as {admin}: unexpected answer")
            new = set(page) - got
            for uid, data in page.items():
                record = UserRecord.from_ocs(uid, data)
                if record is not None and uid in listed:
                    _keep(users, uid, record, previous)
            got |= set(page)
            if len(page) < DETAILS_PAGE or not new:
                break
            offset += DETAILS_PAGE
        if uids and not got:
            raise SyncAborted(f"administrator {admin} was shown no users; retrying next run")
        missing = [uid for uid in uids if uid not in users][:SINGLE_LOOKUPS_MAX]
        for uid in missing:
            result = await self._get(f"/ocs/v2.php/cloud/users/{quote(uid, safe='')}", admin)
            if result.ok:
                record = UserRecord.from_ocs(uid, result.data)
                if record is not None:
                    users[uid] = record
            elif not (
                result.user_refused or result.http_status == 404 or result.statuscode in (404, 998)
            ):
                raise self._stop("user info", result)

    async def _get(
        self, path: str, user: str, *, params: dict[str, str] | None = None, timeout: float = 10.0
    ) -> OcsResult:
        client = self._client
        if client.budget.spent:
            raise SyncAborted("AppAPI refused too many calls; paused", state="paused")
        try:
            return await client.ocs("GET", path, user=user, params=params, timeout=timeout)
        except NextcloudError as exc:
            raise aborted_by(exc) from None

    def _stop(self, what: str, result: OcsResult) -> SyncAborted:
        """Anything unexpected leaves a hole that would read as a deletion: stop, diff nothing."""
        state = stop_state(self._client.budget)
        return SyncAborted(
            f"{what}: HTTP {result.http_status} OCS {result.statuscode}", state=state
        )


def _keep(users: Snapshot, uid: str, record: UserRecord, previous: Snapshot) -> None:
    """users[uid] = record, or the previous snapshot's equal record (one object, not two)."""
    before = previous.get(uid)
    users[uid] = before if before is not None and before == record else record
