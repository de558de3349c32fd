"""One Task Processing task through the Bee Flow service: the task as Nextcloud hands it out, the
signed execute call, the service's reply checked against the output Nextcloud will accept, and
the error texts Nextcloud stores when it fails (docs/assistant.md, "Running a task")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from beeflow.nextcloud.task_processing import AGENT_TYPE
from beeflow.redact import REDACTOR
from beeflow.service_client import ServiceCallError, ServiceClient

EXECUTE_PATH: Final = "/api/nextcloud/task-processing/execute"
ERROR_MAX: Final = 1000  # Nextcloud keeps the first 1000 characters of an error message
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

USER_TEXTS: Final = {
    "timeout": "Bee Flow did not answer in time. Please try again.",
    "upstream": "Bee Flow could not complete this task right now. Please try again later.",
    "unconfigured": "Bee Flow is not set up yet. Ask your administrator to finish its setup.",
    "rejected": "Bee Flow could not process this request.",
    "invalid_output": "Bee Flow returned an answer Nextcloud cannot use. Please try again.",
    "stopped": "The Bee Flow connector stopped while working on this task. Please try again.",
}


@attrs.frozen
class NcTask:
    """A task from `tasks_provider/next`, read leniently (Nextcloud's own JSON)."""

    id: int
    type: str
    user_id: str | None
    app_id: str
    custom_id: str
    input: dict[str, Any]

    @classmethod
    def parse(cls, raw: Any) -> NcTask | None:
        if not isinstance(raw, Mapping):
            return None
        task_id, kind = raw.get("id"), raw.get("type")
        if isinstance(task_id, bool) or not isinstance(task_id, int) or not isinstance(kind, str):
            return None
        user = raw.get("userId")
        data = raw.get("input")
        # PHP encodes an empty array as [], and the service takes {} for "no input".
        inputs = dict(data) if isinstance(data, Mapping) else {}
        return cls(
            task_id,
            kind,
            user if isinstance(user, str) and user else None,
            str(raw.get("appId") or ""),
            str(raw.get("customId") or ""),
            inputs,
        )

    def execute_body(self) -> dict[str, Any]:
        return {
            "taskType": self.type,
            "input": self.input,
            "ncUid": self.user_id,
            "customId": self.custom_id,
            "appId": self.app_id,
        }


@attrs.frozen
class Outcome:
    """What is reported: `output` (success) or an error with its kind."""

    output: dict[str, Any] | None = None
    kind: str = "ok"  # ok | timeout | upstream | unconfigured | rejected | invalid_output | stopped
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.output is not None

    def report_body(self) -> dict[str, Any]:
        """`{output}` or `{errorMessage, userFacingErrorMessage}` (the second is read from
        Nextcloud 33 on; 32 stores and shows errorMessage)."""
        if self.output is not None:
            return {"output": self.output}
        return {
            "errorMessage": clean(f"Bee Flow: {self.detail}" if self.detail else "Bee Flow failed"),
            "userFacingErrorMessage": USER_TEXTS.get(self.kind, USER_TEXTS["upstream"]),
        }


def task_failed(kind: str, detail: str) -> Outcome:
    return Outcome(None, kind, detail)


def clean(text: str) -> str:
    """An error text as Nextcloud may store and show it: no known secret (the service's own
    words are part of it), no control characters, bounded."""
    return _CONTROL.sub(" ", REDACTOR.scrub(text))[:ERROR_MAX]


async def execute(service: ServiceClient, task: NcTask, timeout: float) -> Outcome:
    """Ask the service; never raises for a failure of the call (it becomes the Outcome)."""
    if task.type != AGENT_TYPE:
        text = task.input.get("input")
        if not isinstance(text, str) or not text.strip():
            # The service refuses a text task without its text; say so without asking it.
            return task_failed("rejected", "the task has no text to work on (input.input)")
    try:
        reply = await service.post_signed(EXECUTE_PATH, task.execute_body(), timeout=timeout)
    except ServiceCallError as exc:
        if exc.kind == "no_key":
            return task_failed("unconfigured", "the connector has no tenant key yet")
        if exc.kind == "timeout":
            return task_failed("timeout", f"no answer within {timeout:g} s")
        return task_failed("upstream", f"the service cannot be reached ({exc.kind})")
    if reply.status == 401:
        return task_failed("rejected", "the service refused the connector's signature (tenant key)")
    if not reply.ok:
        kind = "rejected" if 400 <= reply.status < 500 else "upstream"
        return task_failed(kind, f"HTTP {reply.status}" + _service_error(reply.data))
    data = reply.data
    output = data.get("output") if isinstance(data, dict) else None
    return check_output(task.type, output)


def _service_error(data: Any) -> str:
    if isinstance(data, dict):
        message = data.get("error")
        if isinstance(message, str) and message.strip():
            return f": {message.strip()[:300]}"
    return ""


def check_output(task_type: str, output: Any) -> Outcome:
    """The reply as the task type's output shape (and our optional shape) allows it: text
    fields as text, `sources` a list of texts, nothing else (Nextcloud would fail the whole
    task over a wrong field, with a message that names nothing)."""
    if not isinstance(output, dict):
        return task_failed("invalid_output", "the service's answer has no output object")
    text = output.get("output")
    if not isinstance(text, str):
        return task_failed("invalid_output", "the service's answer has no output text")
    if task_type != AGENT_TYPE:
        return Outcome({"output": text})
    token = output.get("conversation_token")
    if not isinstance(token, str):
        return task_failed("invalid_output", "the agent's answer has no conversation_token")
    actions = output.get("actions", "")
    if not isinstance(actions, str):
        return task_failed("invalid_output", "the agent's actions are not text")
    checked: dict[str, Any] = {"output": text, "conversation_token": token, "actions": actions}
    sources = output.get("sources")
    if isinstance(sources, list) and all(isinstance(s, str) for s in sources):
        checked["sources"] = sources
    return Outcome(checked)
