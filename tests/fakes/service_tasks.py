"""The fake Bee Flow service's Task Processing execute route, as the real service answers it
(Bee-Flow/Bee-Flow, `server/routes/nextcloudTaskProcessing.js` @e711789a,
`POST /api/nextcloud/task-processing/execute`):

The connector signature (B) first (401 `{"error": "Invalid or missing signature"}`, nothing
about the shape), then the schema (400 `{error, code: "invalid_request", details}`): `taskType`
a non-empty text up to 200 characters; `input` an object (`[]`, null or missing count as {});
`ncUid`, `customId`, `appId` text or null (at most 256, 512, 256 characters); unknown top-level
keys dropped; a text type needs `input.input` with text in it. Then
`core:contextagent:interaction` answers `{output: {output, actions: "", conversation_token,
sources}}` (500 when no Bee Flow user is linked to `ncUid`: runAgentTurn throws), other known
types `{output: {output: text}}` (502 "The model returned no output" for an empty one), an
unknown type 400 `{"error": "Unsupported task type: <type>"}`.

What the fake's model says is the fake's own: `answer(task_type, input)` (a test may replace it),
`"Bee Flow (<type>): <input>"` by default; `mode` stalls or fails every call (fault injection).
The automation events ingest (where Talk events go) is tests/fakes/service_events.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, Final

import attrs
from aiohttp import web

from tests.fakes.service_control import ServiceControl

EXECUTE_PATH: Final = "/api/nextcloud/task-processing/execute"
AGENT_TYPE: Final = "core:contextagent:interaction"
TEXT_TYPES: Final = frozenset(
    {
        "core:text2text",
        "core:text2text:chat",
        "core:text2text:summary",
        "core:text2text:headline",
        "core:text2text:topics",
        "core:text2text:proofread",
        "core:text2text:reformulation",
        "core:text2text:simplification",
        "core:text2text:formalization",
        "core:text2text:improve",
        "core:text2text:translate",
    }
)
BAD_SIGNATURE: Final = {"error": "Invalid or missing signature"}
TASK_TYPE_TEXT: Final = "taskType names the Nextcloud task type, like core:text2text:summary."
TEXT_INPUT_TEXT: Final = "A text task needs input.input: the text to work on."


@attrs.define
class Execution:
    """One execute call the fake answered (or is answering)."""

    body: Any
    status: int = 0
    started: float = attrs.field(factory=time.monotonic)
    finished: float | None = None


def default_answer(task_type: str, inputs: dict[str, Any]) -> str:
    return f"Bee Flow ({task_type}): {inputs.get('input', '')}"


class ServiceTasks:
    """The route, with records and knobs."""

    def __init__(self, control: ServiceControl) -> None:
        self.control = control
        self.executions: list[Execution] = []
        self.refused: list[str] = []  # why each refused call was refused
        self.answer: Callable[[str, dict[str, Any]], str] = default_answer
        # ok | stall (never answers) | status:<code> (answers that status, {error})
        self.mode = "ok"
        self.linked_users: set[str] | None = None  # None: every ncUid has a Bee Flow user
        self.gate: asyncio.Event | None = None  # executions wait for it when set
        self.delay = 0.0  # seconds each execution takes (set from any thread)
        self.running = 0
        self.max_running = 0
        self.arrived = asyncio.Condition()

    def routes(self) -> list[web.RouteDef]:
        return [web.post(EXECUTE_PATH, self._execute)]

    async def _note(self) -> None:
        async with self.arrived:
            self.arrived.notify_all()

    async def wait_executions(self, count: int, timeout: float = 10.0) -> list[Execution]:
        async with asyncio.timeout(timeout), self.arrived:
            while len(self.executions) < count:
                await self.arrived.wait()
            return list(self.executions)

    async def _execute(self, request: web.Request) -> web.Response:
        raw = await request.read()
        reason = self.control.check_signature(request, raw)
        if reason:
            self.refused.append(reason)
            await self._note()
            return web.json_response(BAD_SIGNATURE, status=401)
        body: Any = _json(raw)
        record = Execution(body)
        self.executions.append(record)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        await self._note()
        try:
            response = await self._answer(body)
        finally:
            self.running -= 1
        record.status, record.finished = response.status, time.monotonic()
        await self._note()
        return response

    async def _answer(self, body: Any) -> web.Response:
        problem = _schema_problem(body)
        if problem is not None:
            return web.json_response(problem, status=400)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "stall":
            await asyncio.Event().wait()
        if self.mode.startswith("status:"):
            status = int(self.mode.split(":", 1)[1])
            return web.json_response({"error": "The model returned no output"}, status=status)
        task_type: str = body["taskType"].strip()
        inputs = _inputs(body.get("input"))
        uid = body.get("ncUid")
        if task_type == AGENT_TYPE:
            if not uid or (self.linked_users is not None and uid not in self.linked_users):
                message = f'No Bee Flow user is linked to the Nextcloud account "{uid}"'
                return web.json_response({"error": message}, status=500)
            token = inputs.get("conversation_token") or "conv-new"
            output: dict[str, Any] = {
                "output": self.answer(task_type, inputs) or "I could not find an answer to that.",
                "actions": "",
                "conversation_token": token,
                "sources": [],
            }
            return web.json_response({"output": output})
        if task_type not in TEXT_TYPES:
            return web.json_response({"error": f"Unsupported task type: {task_type}"}, status=400)
        text = self.answer(task_type, inputs)
        if not text:
            return web.json_response({"error": "The model returned no output"}, status=502)
        return web.json_response({"output": {"output": text}})


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return None


def _inputs(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _schema_problem(body: Any) -> dict[str, Any] | None:
    """ExecuteBody (zod) and terminalErrorHandler's 400 body."""

    def bad(path: str, message: str) -> dict[str, Any]:
        issue = {"path": path, "message": message}
        return {"error": message, "code": "invalid_request", "details": [issue]}

    if not isinstance(body, dict):
        return bad("body", "Expected object")
    task_type = body.get("taskType")
    if not isinstance(task_type, str) or not task_type.strip() or len(task_type.strip()) > 200:
        return bad("body.taskType", TASK_TYPE_TEXT)
    inputs = body.get("input")
    if not (inputs is None or inputs == [] or isinstance(inputs, dict)):
        return bad("body.input", "input is the task input object Nextcloud sent.")
    for key, limit, what in (("ncUid", 256, "the Nextcloud user id"), ("customId", 512, "text"),
                             ("appId", 256, "text")):  # fmt: skip
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            return bad(f"body.{key}", f"{key} is {what}.")
    if task_type.strip() in TEXT_TYPES:
        text = _inputs(inputs).get("input")
        if not isinstance(text, str) or not text.strip():
            return bad("body.input.input", TEXT_INPUT_TEXT)
    return None
