"""The tasks this connector (and its replicas on the same volume) took from Nextcloud and has not
reported yet, in one shared file: a worker killed in the middle leaves its entries behind, and
the next sweep (here, in a replica, or after the restart) reports those tasks as failed, because
Nextcloud never times a running task out (docs/assistant.md, "A worker that dies").

Every change is one locked read-modify-write (beeflow.lease.update_json); the calls are
synchronous and short, made through asyncio.to_thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import attrs

from beeflow import lease

LEDGER_FILE: Final = "task-processing-inflight.json"
MAX_ENTRIES: Final = 10_000  # a bound on a file nobody cleans by hand


@attrs.frozen
class Entry:
    task_id: int
    holder: str  # host:pid:random of the process working on it
    provider: str
    type: str
    user: str | None
    deadline: float  # wall clock: by then the holder has reported, or it is gone

    @property
    def host_pid(self) -> str:
        return self.holder.rsplit(":", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "provider": self.provider,
            "type": self.type,
            "user": self.user,
            "deadline": self.deadline,
        }

    @classmethod
    def parse(cls, task_id: str, raw: Any) -> Entry | None:
        if not isinstance(raw, dict) or not task_id.isdigit():
            return None
        holder, provider, kind = raw.get("holder"), raw.get("provider"), raw.get("type")
        user, deadline = raw.get("user"), raw.get("deadline")
        if not (isinstance(holder, str) and isinstance(provider, str) and isinstance(kind, str)):
            return None
        if user is not None and not isinstance(user, str):
            return None
        if not isinstance(deadline, int | float) or isinstance(deadline, bool):
            return None
        return cls(int(task_id), holder, provider, kind, user, float(deadline))


def _tasks(value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and isinstance(value.get("tasks"), dict):
        return dict(value["tasks"])
    return {}


class Ledger:
    """The shared file of tasks in progress; `holder` names this process."""

    def __init__(self, directory: Path, holder: str | None = None) -> None:
        self.path = directory / LEDGER_FILE
        self.holder = holder or lease.default_holder()

    def add(self, entry: Entry) -> None:
        def change(value: Any) -> dict[str, Any]:
            tasks = _tasks(value)
            tasks[str(entry.task_id)] = entry.to_json()
            if len(tasks) > MAX_ENTRIES:
                oldest = sorted(tasks, key=lambda k: float(tasks[k].get("deadline", 0) or 0))
                for key in oldest[: len(tasks) - MAX_ENTRIES]:
                    del tasks[key]
            return {"tasks": tasks}

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lease.update_json(self.path, change)

    def remove(self, task_id: int, holder: str | None = None) -> None:
        """Forget a task (only while `holder`, default us, still holds it)."""
        owner = holder or self.holder

        def change(value: Any) -> dict[str, Any]:
            tasks = _tasks(value)
            current = tasks.get(str(task_id))
            if isinstance(current, dict) and current.get("holder") == owner:
                del tasks[str(task_id)]
            return {"tasks": tasks}

        lease.update_json(self.path, change)

    def entries(self) -> list[Entry]:
        found = [Entry.parse(k, v) for k, v in _tasks(lease.read_json(self.path)).items()]
        return [e for e in found if e is not None]

    def abandoned(self, now: float, live: set[int], grace: float) -> list[Entry]:
        """Entries nobody will report: ours that no task of this process holds; those of an
        earlier process with our host name and pid (a restart in the same container: that pid
        is ours now, so their holder is dead); and anyone's whose deadline passed `grace` ago."""
        me = self.holder.rsplit(":", 1)[0]
        out: list[Entry] = []
        for entry in self.entries():
            if entry.holder == self.holder:
                if entry.task_id not in live:
                    out.append(entry)
            elif entry.host_pid == me or entry.deadline + grace < now:
                out.append(entry)
        return out

    def claim(self, entry: Entry, deadline: float) -> Entry | None:
        """Take an abandoned entry over for reporting (None: another process took it first)."""
        claimed: list[Entry] = []

        def change(value: Any) -> dict[str, Any]:
            tasks = _tasks(value)
            current = Entry.parse(str(entry.task_id), tasks.get(str(entry.task_id)))
            if current is not None and current.holder == entry.holder:
                mine = attrs.evolve(current, holder=self.holder, deadline=deadline)
                tasks[str(entry.task_id)] = mine.to_json()
                claimed.append(mine)
            return {"tasks": tasks}

        lease.update_json(self.path, change)
        return claimed[0] if claimed else None
