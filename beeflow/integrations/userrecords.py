"""What the user reconciliation keeps and compares: one record per user, the diff that turns
one snapshot into the next as Nextcloud's events, and the run's status."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine
from typing import Any

import attrs

from beeflow.errors import NextcloudError
from beeflow.nextcloud.budget import AuthBudget
from beeflow.nextcloud.users import user_from_ocs
from beeflow.serde import iso_utc

Event = tuple[str, str, str | None]  # (event, uid, groupId)


@attrs.frozen
class UserRecord:
    email: str | None
    display_name: str
    groups: tuple[str, ...]
    enabled: bool | None = None  # None: not known (snapshots written before it was kept)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "email": self.email,
            "displayName": self.display_name,
            "groups": list(self.groups),
        }
        if self.enabled is not None:
            out["enabled"] = self.enabled
        return out

    @classmethod
    def from_json(cls, data: Any) -> UserRecord | None:
        if not isinstance(data, dict):
            return None
        email = data.get("email")
        name = data.get("displayName")
        groups = data.get("groups")
        enabled = data.get("enabled")
        if not isinstance(name, str) or not isinstance(groups, list):
            return None
        return cls(
            email if isinstance(email, str) and email else None,
            name,
            tuple(sorted(str(g) for g in groups)),
            enabled if isinstance(enabled, bool) else None,
        )

    @classmethod
    def from_ocs(cls, uid: str, data: Any) -> UserRecord | None:
        """None for the `{"id": uid}` placeholder Nextcloud puts where the caller may not see a
        user (or the account vanished from its backend)."""
        if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
            return None
        user = user_from_ocs(uid, data)
        enabled = data.get("enabled")
        return cls(
            user.email,
            user.display_name,
            tuple(sorted(set(user.groups))),
            enabled if isinstance(enabled, bool) else None,
        )

    @property
    def usable_admin(self) -> bool:
        return "admin" in self.groups and self.enabled is not False


Snapshot = dict[str, UserRecord]


def diff(old: Snapshot, new: Snapshot) -> list[Event]:
    """The events that turn `old` into `new`, in the order Nextcloud fires them: a new user is
    created, then added to its groups; a deleted user leaves its groups, then is deleted."""
    events: list[Event] = []
    for uid in sorted(old.keys() | new.keys()):
        before, after = old.get(uid), new.get(uid)
        if before is None and after is not None:
            events.append(("user.created", uid, None))
            events += [("group.member_added", uid, g) for g in after.groups]
        elif after is None and before is not None:
            events += [("group.member_removed", uid, g) for g in before.groups]
            events.append(("user.deleted", uid, None))
        elif before is not None and after is not None:
            if (before.email, before.display_name) != (after.email, after.display_name):
                events.append(("user.updated", uid, None))
            events += [
                ("group.member_added", uid, g) for g in after.groups if g not in before.groups
            ]
            events += [
                ("group.member_removed", uid, g) for g in before.groups if g not in after.groups
            ]
    return events


class SyncAborted(Exception):
    """The run stopped before it had a complete picture; nothing is diffed or sent."""

    def __init__(self, message: str, *, state: str = "failed") -> None:
        self.state = state
        super().__init__(message)


@attrs.define
class SyncStatus:
    # idle | running | baseline | ok | failed | paused | waiting_for_tenant_key | app_disabled
    # | standby (another replica syncs, or did within half an interval)
    state: str = "idle"
    last_run_at: float | None = None
    last_success_at: float | None = None
    next_run_at: float | None = None
    baseline_at: float | None = None
    users_seen: int | None = None
    events_sent: int = 0  # in the last run
    events_sent_total: int = 0
    events_dropped_total: int = 0
    events_skipped: int = 0  # in the last run: already delivered by the webhook
    users_unreadable: int = 0  # in the last run: listed but not readable, last record kept
    read_as: str | None = None  # the administrator the last run read users as
    runs: int = 0
    last_error: str = ""


def first_aborted(group: BaseExceptionGroup[SyncAborted]) -> SyncAborted:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_aborted(exc)
        return exc
    return SyncAborted("user lookups failed")


def details_page(data: Any) -> dict[str, Any] | None:
    """`users` of a cloud/users/details answer: a map uid -> details; PHP sends an empty map,
    or one keyed 0..n-1 (numeric uids), as a list, whose entries carry their `id`."""
    users = data.get("users") if isinstance(data, dict) else None
    if isinstance(users, dict):
        return {str(uid): details for uid, details in users.items()}
    if isinstance(users, list):
        return {str(d.get("id", i)): d for i, d in enumerate(users) if isinstance(d, dict)}
    return None


@attrs.frozen
class SavedState:
    """What user-sync.json holds: the last snapshot (None before the baseline) and the events
    still to send."""

    snapshot: Snapshot | None = None
    taken_at: float | None = None
    baseline_at: float | None = None
    pending: tuple[Event, ...] = ()


def read_state(data: Any, kinds: Collection[str]) -> SavedState:
    """user-sync.json, leniently: unusable users and events (of another kind than `kinds`) are
    skipped."""
    if not isinstance(data, dict):
        return SavedState()
    snapshot: Snapshot | None = None
    taken_at = baseline_at = None
    snap = data.get("snapshot")
    if isinstance(snap, dict) and isinstance(snap.get("users"), dict):
        snapshot = {}
        for uid, raw in snap["users"].items():
            record = UserRecord.from_json(raw)
            if record is not None:
                snapshot[str(uid)] = record
        taken = snap.get("takenAt")
        taken_at = float(taken) if isinstance(taken, int | float) else None
        baseline = data.get("baselineAt")
        baseline_at = float(baseline) if isinstance(baseline, int | float) else taken_at
    pending: list[Event] = []
    rows = data.get("pending")
    if isinstance(rows, list):
        for row in rows:
            if (
                isinstance(row, list)
                and len(row) == 3
                and row[0] in kinds
                and isinstance(row[1], str)
                and (row[2] is None or isinstance(row[2], str))
            ):
                pending.append((row[0], row[1], row[2]))
    return SavedState(snapshot, taken_at, baseline_at, tuple(pending))


def status_fields(
    status: SyncStatus, interval: float, pending: int, trusted: bool
) -> dict[str, Any]:
    """The reconciliation's health fields: the state for everyone, the counts for the trusted."""
    s = status
    out: dict[str, Any] = {"state": s.state, "lastRunAt": iso_utc(s.last_run_at)}
    if not trusted:
        return out
    out.update(
        {
            "intervalSeconds": interval,
            "lastSuccessAt": iso_utc(s.last_success_at),
            "nextRunAt": iso_utc(s.next_run_at),
            "baselineAt": iso_utc(s.baseline_at),
            "usersSeen": s.users_seen,
            "eventsSent": s.events_sent,
            "eventsSentTotal": s.events_sent_total,
            "eventsSkippedAsDelivered": s.events_skipped,
            "eventsDroppedTotal": s.events_dropped_total,
            "eventsPending": pending,
            "usersUnreadable": s.users_unreadable,
            "readAs": s.read_as,
            "runs": s.runs,
        }
    )
    if s.last_error:
        out["lastError"] = s.last_error
    return out


def stop_state(budget: AuthBudget) -> str:
    return "paused" if budget.spent else "failed"


def aborted_by(exc: NextcloudError) -> SyncAborted:
    state = "paused" if exc.kind == "auth_budget_spent" else "failed"
    return SyncAborted(f"Nextcloud: {exc}", state=state)


async def gather_reads(
    calls: list[Coroutine[Any, Any, tuple[str, UserRecord | None]]],
) -> list[tuple[str, UserRecord | None]]:
    """Run the reads together; the first SyncAborted stops them all and is raised alone."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except* SyncAborted as aborted:
        # The first reason is enough; the other reads were cancelled with it.
        raise first_aborted(aborted) from None
    return [t.result() for t in tasks]
