"""Task Processing for the fake Nextcloud: AppAPI's provider registration and core's task API,
mounted on a FakeNextcloud (`FakeTaskProcessing(nc).mount()` before `nc.start()`).

Written from the real sources and checked against the real server (tests/integration/
test_task_processing_real.py runs the same scenarios there):

* nextcloud/app_api v32.0.0 `lib/Controller/TaskProcessingController.php` and
  `lib/Service/ProvidersAI/TaskProcessingService.php`: `POST .../ai_provider/task_processing`
  `{provider, customTaskType}` answers 400 (data []) when a key validateTaskProcessingProvider
  wants is missing or of the wrong kind, else inserts or overwrites the provider of that name
  (200); `DELETE` with `name` answers 404 for an unknown one. Nothing checks the task type or the
  shape types: a provider whose `shape_type` is not an EShapeType number registers, then fails
  to load (EShapeType::from), so its type is never offered (measured on 32.0.1).
* nextcloud/server v32.0.1 `core/Controller/TaskProcessingApiController.php` with
  `lib/private/TaskProcessing/Manager.php` and `Db/TaskMapper.php`: `GET /taskprocessing/tasktypes`
  needs a logged-in user (the empty AppAPI user is 997/401) and lists the types that are core
  types of this version AND have a loadable provider; `POST /schedule` (user) answers 412 when no
  provider serves the type and 400 when the input lacks a required field; `GET /task/{id}` shows
  a user only their own task (404 otherwise) and never the error message;
  `GET /tasks_provider/next` (ExApp, empty user allowed) asks only for types whose PREFERRED
  provider is listed, hands out the oldest scheduled task and locks it (`UPDATE ... SET status =
  running WHERE status != running`: two callers never get the same task), 204 when none;
  `POST /tasks_provider/{id}/result` stores an error (first 1000 characters) or checks the output
  against the type's output shape and the provider's optional one (a wrong field fails the task
  with a generic message), drops keys no shape names, ignores a cancelled task, OVERWRITES a
  finished one, and answers 404 for an unknown id.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Final

import attrs
from aiohttp import web

from tests.fakes.nextcloud import APPAPI, BODY, FakeNextcloud

# Core task types of Nextcloud 32 (those the connector may register, and one it never does),
# with their required input and output fields (lib/public/TaskProcessing/TaskTypes/*.php). There
# is no core:text2text:improve in 32.
TEXT: Final = ("input",)
NC32_TYPES: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "core:text2text": (TEXT, ("output",)),
    "core:text2text:chat": (("system_prompt", "input", "history"), ("output",)),
    "core:text2text:summary": (TEXT, ("output",)),
    "core:text2text:headline": (TEXT, ("output",)),
    "core:text2text:topics": (TEXT, ("output",)),
    "core:text2text:proofread": (TEXT, ("output",)),
    "core:text2text:reformulation": (TEXT, ("output",)),
    "core:text2text:simplification": (TEXT, ("output",)),
    "core:text2text:formalization": (TEXT, ("output",)),
    "core:text2text:translate": (("input", "origin_language", "target_language"), ("output",)),
    "core:contextagent:interaction": (
        ("input", "confirmation", "conversation_token"),
        ("output", "conversation_token", "actions"),
    ),
    # Not served by Bee Flow: the parity tests' own probe provider uses it.
    "core:generateemoji": (TEXT, ("output",)),
}
SHAPE_NUMBERS: Final = frozenset({0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15})
LIST_SHAPES: Final = frozenset({10, 11, 12, 13, 14, 15})
STATUS: Final = {
    0: "UNKNOWN",
    1: "SCHEDULED",
    2: "RUNNING",
    3: "SUCCESSFUL",
    4: "FAILED",
    5: "CANCELLED",
}
OUTPUT_INVALID: Final = (
    "The task was processed successfully but the provider's output doesn't pass validation "
    "against the task type's outputShape spec and/or the provider's own optionalOutputShape spec"
)


@attrs.define
class FakeTask:
    id: int
    type: str
    input: dict[str, Any]
    user_id: str | None
    app_id: str
    custom_id: str
    status: int = 1
    output: dict[str, Any] | None = None
    error_message: str | None = None
    scheduled_at: int = attrs.field(factory=lambda: int(time.time()))
    ended_at: int | None = None
    results: int = 0  # result calls that changed it

    @property
    def status_name(self) -> str:
        return f"STATUS_{STATUS[self.status]}"

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "lastUpdated": int(time.time()),
            "status": self.status_name,
            "userId": self.user_id,
            "appId": self.app_id,
            "input": self.input or [],  # PHP: an empty array is []
            "output": self.output,
            "customId": self.custom_id,
            "completionExpectedAt": None,
            "progress": 1 if self.status in (3, 4) else (0 if self.status == 2 else None),
            "scheduledAt": self.scheduled_at,
            "startedAt": None,
            "endedAt": self.ended_at,
            "allowCleanup": True,
        }


_KEYS_STR: Final = ("id", "name", "task_type")
_LISTS: Final = ("optional_input_shape", "optional_output_shape")
_MAPS: Final = (
    "input_shape_enum_values",
    "optional_input_shape_enum_values",
    "output_shape_enum_values",
    "optional_output_shape_enum_values",
)
_DEFAULTS: Final = ("input_shape_defaults", "optional_input_shape_defaults")


def provider_problem(provider: Any) -> str | None:
    """validateTaskProcessingProvider (and the task-type check before it)."""
    if not isinstance(provider, dict) or not provider.get("task_type"):
        return "Task type must be provided if custom task type is not provided"
    for key in _KEYS_STR:
        if not isinstance(provider.get(key), str):
            return f'"{key}" key must be a string'
    if not isinstance(provider.get("expected_runtime"), int) or isinstance(
        provider.get("expected_runtime"), bool
    ):
        return '"expected_runtime" key must be an integer'
    for key in _LISTS:
        value = provider.get(key)
        if not isinstance(value, list | dict):
            return f'"{key}" should be an array'
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if not isinstance(item, dict) or not {"name", "description", "shape_type"} <= set(item):
                return f'"{key}" entries need name, description and shape_type'
    for key in _MAPS:
        value = provider.get(key)
        # PHP decodes {} and [] alike into an empty array.
        if not isinstance(value, dict | list) or (isinstance(value, list) and value):
            return f'"{key}" should be an array'
    for key in _DEFAULTS:
        if not isinstance(provider.get(key), dict | list):
            return f'"{key}" key must be an array'
    return None


def loadable(provider: dict[str, Any]) -> bool:
    """The anonymous IProvider builds its optional shapes with EShapeType::from(shape_type)."""
    for key in _LISTS:
        value = provider[key]
        for item in value.values() if isinstance(value, dict) else value:
            shape = item.get("shape_type")
            if isinstance(shape, bool) or shape not in SHAPE_NUMBERS:
                return False
    return True


class FakeTaskProcessing:
    """Providers (by app id and name), preferences and tasks, on a FakeNextcloud."""

    def __init__(
        self,
        nc: FakeNextcloud,
        types: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None = None,
    ) -> None:
        self.nc = nc
        self.types = dict(NC32_TYPES if types is None else types)
        self.providers: dict[str, dict[str, Any]] = {}  # name -> provider (one app here)
        self.preferences: dict[str, str] = {}  # type -> preferred provider id
        self.other_providers: dict[str, str] = {}  # provider id -> type (another app's)
        self.tasks: dict[int, FakeTask] = {}
        self.next_calls = 0
        # Fault injection: the next result calls answer 500 "Internal error" (what SQLite's
        # "database is locked" becomes in setResult).
        self.result_failures = 0
        self._ids = iter(range(1, 10**9))
        self.changed = asyncio.Condition()

    def mount(self) -> FakeTaskProcessing:
        self.nc.add_routes(self.routes())
        return self

    def routes(self) -> list[web.RouteDef]:
        out: list[web.RouteDef] = []
        for v in ("v1", "v2"):
            path = f"/ocs/{v}.php/apps/app_api/api/v1/ai_provider/task_processing"
            out += [web.post(path, self._register), web.delete(path, self._unregister)]
        base = "/ocs/v2.php/taskprocessing"
        out += [
            web.get(f"{base}/tasktypes", self._tasktypes),
            web.post(f"{base}/schedule", self._schedule),
            web.get(f"{base}/task/{{id}}", self._get_task),
            web.get(f"{base}/tasks_provider/next", self._next),
            web.post(f"{base}/tasks_provider/{{id}}/result", self._result),
        ]
        return out

    # ------------------------------------------------------------ helpers for tests

    def schedule(
        self, type_id: str, text: str = "hello", *, user: str | None = "alice"
    ) -> FakeTask:
        """What POST /schedule does, without the HTTP (the fake's own shortcut)."""
        task = FakeTask(next(self._ids), type_id, {"input": text}, user, "test", "")
        self.tasks[task.id] = task
        return task

    def preferred(self, type_id: str) -> str | None:
        """Manager::getPreferredProvider: the admin's choice when it exists, else the first."""
        candidates = [
            p["id"] for p in self.providers.values() if p["task_type"] == type_id and loadable(p)
        ] + [pid for pid, t in self.other_providers.items() if t == type_id]
        choice = self.preferences.get(type_id)
        if choice in candidates:
            return choice
        return candidates[0] if candidates else None

    def offered(self) -> set[str]:
        return {t for t in self.types if self.preferred(t) is not None}

    async def wait_done(self, count: int, timeout: float = 10.0) -> list[FakeTask]:
        async with asyncio.timeout(timeout), self.changed:
            while True:
                done = [t for t in self.tasks.values() if t.status in (3, 4, 5)]
                if len(done) >= count:
                    return done
                await self.changed.wait()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # ------------------------------------------------------------ AppAPI

    def _appapi(self, request: web.Request) -> web.Response | None:
        return self.nc._require(request, login=False)

    async def _register(self, request: web.Request) -> web.Response:
        denied = self._appapi(request)
        if denied is not None:
            return denied
        body = _params(request)
        problem = provider_problem(body.get("provider"))
        if problem is not None:
            return self.nc._ocs(request, [], 400, "")
        provider = body["provider"]
        self.providers[provider["id"]] = provider
        await self._notify()
        return self.nc._ocs(request, [])

    async def _unregister(self, request: web.Request) -> web.Response:
        denied = self._appapi(request)
        if denied is not None:
            return denied
        name = _params(request).get("name")
        if not isinstance(name, str) or self.providers.pop(name, None) is None:
            return self.nc._ocs(request, [], 404, "")
        await self._notify()
        return self.nc._ocs(request, [])

    # ------------------------------------------------------------ core

    async def _tasktypes(self, request: web.Request) -> web.Response:
        denied = self.nc._require(request, login=True)
        if denied is not None:
            return denied
        types = {
            t: {"name": t, "inputShape": {key: {} for key in inputs}, "outputShape": {}}
            for t, (inputs, _) in self.types.items()
            if t in self.offered()
        }
        return self.nc._ocs(request, {"types": types})

    async def _schedule(self, request: web.Request) -> web.Response:
        denied = self.nc._require(request, login=True)
        if denied is not None:
            return denied
        body = _params(request)
        type_id = body.get("type")
        if not isinstance(type_id, str) or type_id not in self.types or not self.preferred(type_id):
            return self.nc._ocs(
                request, {"message": "The given provider is not available"}, 412, ""
            )
        given = body.get("input")
        inputs: dict[str, Any] = dict(given) if isinstance(given, dict) else {}
        for key in self.types[type_id][0]:
            if key not in inputs:
                return self.nc._ocs(request, {"message": f"Missing input field {key}"}, 400, "")
        _, user = request[APPAPI]
        task = FakeTask(
            next(self._ids),
            type_id,
            dict(inputs),
            user or None,
            str(body.get("appId") or ""),
            str(body.get("customId") or ""),
        )
        self.tasks[task.id] = task
        return self.nc._ocs(request, {"task": task.json()})

    async def _get_task(self, request: web.Request) -> web.Response:
        denied = self.nc._require(request, login=True)
        if denied is not None:
            return denied
        _, user = request[APPAPI]
        task = self.tasks.get(_int(request.match_info["id"]))
        if task is None or task.user_id != user:
            return self.nc._ocs(request, {"message": "Task not found"}, 404, "")
        return self.nc._ocs(request, {"task": task.json()})

    async def _next(self, request: web.Request) -> web.StreamResponse:
        denied = self._appapi(request)
        if denied is not None:
            return denied
        self.next_calls += 1
        providers = request.query.getall("providerIds[]", [])
        types = request.query.getall("taskTypeIds[]", [])
        possible = [t for t in types if t in self.types and self.preferred(t) in providers]
        for task in sorted(self.tasks.values(), key=lambda t: t.id):
            if task.status == 1 and task.type in possible:
                task.status = 2  # lockTask: the one caller that gets it
                await self._notify()
                data = {"task": task.json(), "provider": {"name": self.preferred(task.type)}}
                return self.nc._ocs(request, data)
        return web.Response(status=204)

    async def _result(self, request: web.Request) -> web.Response:
        denied = self._appapi(request)
        if denied is not None:
            return denied
        if self.result_failures > 0:
            self.result_failures -= 1
            return self.nc._ocs(request, {"message": "Internal error"}, 500, "")
        task = self.tasks.get(_int(request.match_info["id"]))
        if task is None:
            return self.nc._ocs(request, {"message": "Not found"}, 404, "")
        body = _params(request)
        error, output = body.get("errorMessage"), body.get("output")
        if task.status == 5:
            return self.nc._ocs(request, {"task": task.json()})
        if isinstance(error, str):
            task.status, task.error_message = 4, error[:1000]
        elif isinstance(output, dict):
            checked = self._checked_output(task, output)
            if checked is None:
                task.status, task.error_message = 4, OUTPUT_INVALID
            else:
                task.status, task.output = 3, checked
        else:
            return self.nc._ocs(request, {"task": task.json()})
        task.ended_at = int(time.time())
        task.results += 1
        await self._notify()
        return self.nc._ocs(request, {"task": task.json()})

    def _checked_output(self, task: FakeTask, output: dict[str, Any]) -> dict[str, Any] | None:
        required = self.types[task.type][1]
        provider = self.providers.get(self.preferred(task.type) or "", {})
        optional = {s["name"]: s["shape_type"] for s in provider.get("optional_output_shape", [])}
        for key in required:
            if not isinstance(output.get(key), str):
                return None
        for key, shape in optional.items():
            if key in output:
                value = output[key]
                if shape in LIST_SHAPES and not (
                    isinstance(value, list) and all(isinstance(v, str) for v in value)
                ):
                    return None
        return {k: v for k, v in output.items() if k in required or k in optional}


def _params(request: web.Request) -> dict[str, Any]:
    """Nextcloud merges the JSON body over the query parameters."""
    raw: bytes = request.get(BODY, b"")
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {}
    out: dict[str, Any] = dict(request.query)
    if isinstance(parsed, dict):
        out.update(parsed)
    return out


def _int(text: str) -> int:
    return int(text) if text.isdigit() else -1
