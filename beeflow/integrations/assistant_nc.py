"""The Task Processing worker's calls to Nextcloud besides `next`: reporting a result (retried
where a second try may pass) and asking, as a task's user, whether it still runs."""

from __future__ import annotations

import asyncio
from typing import Any, Final

from beeflow.errors import NextcloudError
from beeflow.nextcloud.client import NextcloudClient

RESULT_PATH: Final = "/ocs/v2.php/taskprocessing/tasks_provider/{id}/result"
TASK_PATH: Final = "/ocs/v2.php/taskprocessing/task/{id}"
REPORT_ATTEMPTS: Final = 3


async def deliver(client: NextcloudClient, task_id: int, body: dict[str, Any]) -> str:
    """POST the result: "" once Nextcloud has it (or no longer has the task: 404), else what went
    wrong. Network errors and 5xx (SQLite's "database is locked" is a 500) are tried again; a
    refused login is not (the failure budget decides about the next call)."""
    path = RESULT_PATH.format(id=task_id)
    problem = ""
    for attempt in range(REPORT_ATTEMPTS):
        try:
            result = await client.ocs("POST", path, json_body=body, timeout=15.0)
        except NextcloudError as exc:
            if exc.kind == "auth_budget_spent":
                return str(exc)
            problem = str(exc)
        else:
            if result.ok or result.http_status == 404:
                return ""
            problem = f"HTTP {result.http_status}"
            if result.auth_refused:
                return problem
        if attempt + 1 < REPORT_ATTEMPTS:
            await asyncio.sleep(0.5 * 2**attempt)
    return problem


async def still_running(client: NextcloudClient, task_id: int, user: str | None) -> bool:
    """Whether the task still runs, asked as its user (the only one its API shows it to). A
    task without a user, or an answer that says nothing: assume it does."""
    if not user:
        return True
    try:
        result = await client.ocs("GET", TASK_PATH.format(id=task_id), user=user, timeout=10.0)
    except NextcloudError:
        return True
    if result.http_status == 404:
        return False
    task = result.data.get("task") if isinstance(result.data, dict) else None
    status = task.get("status") if isinstance(task, dict) else None
    return status in (None, "STATUS_RUNNING")
