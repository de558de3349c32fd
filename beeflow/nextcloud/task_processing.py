"""The Task Processing registration surface: Bee Flow as Nextcloud's provider for the text task
types the service serves, registered once a tenant key exists and kept only for the types the
running Nextcloud offers; the record of what is registered (the worker drains those), its health
fields (docs/assistant.md, "Registration")."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Final

import attrs
from aiohttp import web

from beeflow.config import CONFIG, Config
from beeflow.errors import NextcloudError
from beeflow.nextcloud.client import NEXTCLOUD, NextcloudClient
from beeflow.nextcloud.follow import Follower, install_followed, under_lease
from beeflow.tenant.state import TENANT, TenantState

log = logging.getLogger(__name__)

PROVIDER_PATH: Final = "/ocs/v2.php/apps/app_api/api/v1/ai_provider/task_processing"
TASKTYPES_PATH: Final = "/ocs/v2.php/taskprocessing/tasktypes"
USERS_PATH: Final = "/ocs/v2.php/apps/app_api/api/v1/users"
DISPLAY_NAME: Final = "Bee Flow"
WARMUP_SECONDS: Final = 20.0
INIT_PROGRESS: Final = 60
# Nextcloud caches the task types it offers for 60 s (Manager::getAvailableTaskTypes): a type
# missing from a listing is dropped only when it is still missing this long after registering.
OFFER_CACHE_SECONDS: Final = 65.0
ASK_USERS: Final = 3  # users tried for the listing (a disabled one cannot be asked as)
REGISTER_CONCURRENCY: Final = 4


class Shape(enum.IntEnum):
    """OCP\\TaskProcessing\\EShapeType. AppAPI stores `shape_type` as given and Nextcloud reads
    it with EShapeType::from(): the name instead of the number registers fine but the provider
    then fails to load, and the Assistant says "No provider found" (measured on 32.0.1)."""

    NUMBER = 0
    TEXT = 1
    IMAGE = 2
    AUDIO = 3
    VIDEO = 4
    FILE = 5
    ENUM = 6
    LIST_OF_NUMBERS = 10
    LIST_OF_TEXTS = 11
    LIST_OF_IMAGES = 12
    LIST_OF_AUDIOS = 13
    LIST_OF_VIDEOS = 14
    LIST_OF_FILES = 15


@attrs.frozen
class ShapeEntry:
    name: str
    description: str
    shape: Shape

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "shape_type": int(self.shape)}


@attrs.frozen
class TaskType:
    id: str
    expected_runtime: int  # seconds
    optional_input: tuple[ShapeEntry, ...] = ()
    optional_output: tuple[ShapeEntry, ...] = ()


AGENT_TYPE: Final = "core:contextagent:interaction"
TASK_TYPES: Final = (
    TaskType("core:text2text", 30),
    TaskType("core:text2text:chat", 30),
    TaskType("core:text2text:summary", 30),
    TaskType("core:text2text:headline", 15),
    TaskType("core:text2text:topics", 15),
    TaskType("core:text2text:proofread", 20),
    TaskType("core:text2text:reformulation", 20),
    TaskType("core:text2text:simplification", 20),
    TaskType("core:text2text:formalization", 20),
    TaskType("core:text2text:improve", 20),
    TaskType("core:text2text:translate", 20),
    TaskType(
        AGENT_TYPE,
        60,
        optional_input=(
            ShapeEntry(
                "memories", "What the assistant remembers about the user", Shape.LIST_OF_TEXTS
            ),
        ),
        optional_output=(ShapeEntry("sources", "The tools the answer used", Shape.LIST_OF_TEXTS),),
    ),
)
# Never registered: the service does not serve them, and a provider that always fails is
# worse than none (Nextcloud would route every such task to it).
NOT_SERVED: Final = frozenset({"core:audio2text", "core:text2image", "core:text2speech"})
BY_ID: Final = {t.id: t for t in TASK_TYPES}


def provider_id(app_id: str, type_id: str) -> str:
    return f"{app_id}:{type_id}"


def provider_body(app_id: str, task_type: TaskType) -> dict[str, Any]:
    """The registration AppAPI expects (its TaskProcessingService::validateTaskProcessingProvider
    needs every key; the enum and default maps are empty)."""
    return {
        "provider": {
            "id": provider_id(app_id, task_type.id),
            "name": DISPLAY_NAME,
            "task_type": task_type.id,
            "expected_runtime": task_type.expected_runtime,
            "optional_input_shape": [s.to_json() for s in task_type.optional_input],
            "optional_output_shape": [s.to_json() for s in task_type.optional_output],
            "input_shape_enum_values": {},
            "input_shape_defaults": {},
            "optional_input_shape_enum_values": {},
            "optional_input_shape_defaults": {},
            "output_shape_enum_values": {},
            "optional_output_shape_enum_values": {},
        },
        "customTaskType": None,
    }


# Per type: registered (Nextcloud offers it through us) | unverified (registered, the listing
# could not be read) | checking (registered, missing from a listing that may be cached) |
# not_offered (Nextcloud does not know the type, or its admin turned it off: unregistered) |
# failed (the registration was refused).
SERVING: Final = frozenset({"registered", "unverified", "checking"})


class Providers:
    """What is registered now, for the worker (`serving`) and the health fields."""

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self.states: dict[str, str] = {}
        self.state = "idle"  # idle | waiting_for_key | paused | registered | failed
        self.last_error = ""
        self.last_run_at: float | None = None
        # Called when the serving set changes (the worker looks at once).
        self.listeners: list[Callable[[], None]] = []

    def serving(self) -> list[TaskType]:
        return [BY_ID[t] for t, s in self.states.items() if s in SERVING]

    def provider_ids(self) -> dict[str, TaskType]:
        return {provider_id(self.app_id, t.id): t for t in self.serving()}

    def set_states(self, states: dict[str, str]) -> None:
        before = {t.id for t in self.serving()}
        self.states = states
        if {t.id for t in self.serving()} != before:
            for listener in self.listeners:
                listener()

    def health(self, trusted: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "types": len(self.serving())}
        if trusted:
            out["typeStates"] = dict(sorted(self.states.items()))
            if self.last_error:
                out["lastError"] = self.last_error
        return out


class Registrar:
    """Registers every type, asks Nextcloud which of them it offers, unregisters the rest.
    Idempotent: AppAPI overwrites a provider of the same name, and removing one that is gone
    answers 404, so two replicas may run this at the same time."""

    def __init__(
        self,
        client: Callable[[], NextcloudClient],
        tenant: TenantState,
        providers: Providers,
    ) -> None:
        self._client = client
        self._tenant = tenant
        self.providers = providers
        self.offer_cache_seconds = OFFER_CACHE_SECONDS
        # When each type was first registered by this process (monotonic).
        self._since: dict[str, float] = {}
        self.follower: Follower | None = None  # set by setup()

    def watch(self) -> Hashable:
        return (self._tenant.fingerprint, self._client().app_enabled is not False)

    async def run(self, reason: str) -> bool:
        """One reconciliation; True when nothing is left to retry."""
        providers = self.providers
        if not self._tenant.key:
            providers.state = "waiting_for_key"
            return True  # the follower runs again when a key appears
        if self._client().app_enabled is False:
            providers.state = "paused"
            return True
        providers.last_run_at = time.time()
        semaphore = asyncio.Semaphore(REGISTER_CONCURRENCY)

        async def one(task_type: TaskType) -> tuple[str, str]:
            async with semaphore:
                return task_type.id, await self._register(task_type)

        results = dict(await asyncio.gather(*(one(t) for t in TASK_TYPES)))
        done = await self._check_offered(results)
        providers.set_states(results)
        if any(s == "failed" for s in results.values()):
            providers.state = "failed"
            return False
        providers.state = "registered"
        log.info(
            "Task Processing (%s): %d type(s) served, %s",
            reason,
            len(providers.serving()),
            ", ".join(f"{t}={s}" for t, s in sorted(results.items()) if s not in SERVING)
            or "none left out",
        )
        return done

    async def _register(self, task_type: TaskType) -> str:
        body = provider_body(self.providers.app_id, task_type)
        try:
            result = await self._client().ocs(
                "POST", PROVIDER_PATH, json_body=body, timeout=10.0, warmup=WARMUP_SECONDS
            )
        except NextcloudError as exc:
            self.providers.last_error = f"{task_type.id}: {exc}"[:300]
            return "failed"
        if result.done:
            return "registered"
        self.providers.last_error = (
            f"{task_type.id}: HTTP {result.http_status} OCS {result.statuscode}"
        )
        return "failed"

    async def _check_offered(self, results: dict[str, str]) -> bool:
        """Drop the types Nextcloud does not offer. A type missing from the listing is dropped
        only once it has been registered longer than Nextcloud caches the listing; until then it
        is `checking` and the run answers False (run again later)."""
        now = time.monotonic()
        for type_id, state in results.items():
            if state == "registered":
                self._since.setdefault(type_id, now)
        if "registered" not in results.values():
            return True  # nothing to check (a failure is retried by itself)
        offered = await self._offered()
        if offered is None:
            for type_id, state in results.items():
                if state == "registered":
                    results[type_id] = "unverified"
            return False
        settled = True
        for type_id, state in list(results.items()):
            if state != "registered" or type_id in offered:
                continue
            if now - self._since[type_id] >= self.offer_cache_seconds:
                results[type_id] = await self._unregister(type_id)
                if results[type_id] == "not_offered":
                    self._since.pop(type_id, None)
            else:
                results[type_id] = "checking"
                settled = False
        return settled

    async def _unregister(self, type_id: str) -> str:
        name = provider_id(self.providers.app_id, type_id)
        try:
            result = await self._client().ocs(
                "DELETE", PROVIDER_PATH, json_body={"name": name}, timeout=10.0
            )
        except NextcloudError as exc:
            self.providers.last_error = f"{type_id}: {exc}"[:300]
            return "checking"
        if result.ok or result.http_status == 404:
            log.info("Task Processing: Nextcloud does not offer %s; not provided", type_id)
            return "not_offered"
        return "checking"

    async def _offered(self) -> set[str] | None:
        """The task types Nextcloud offers now (its listing needs a logged-in user: one of
        AppAPI's users is asked as, never the empty user, which is 401). None: not readable."""
        client = self._client()
        try:
            listing = await client.ocs("GET", USERS_PATH, timeout=10.0)
        except NextcloudError:
            return None
        if not listing.ok or not isinstance(listing.data, list):
            return None
        uids = sorted({str(u) for u in listing.data if isinstance(u, str) and u})
        for uid in uids[:ASK_USERS]:
            try:
                result = await client.ocs("GET", TASKTYPES_PATH, user=uid, timeout=10.0)
            except NextcloudError:
                return None
            if result.user_refused:
                continue
            data = result.data
            if result.ok and isinstance(data, dict) and isinstance(data.get("types"), dict):
                return set(data["types"])
            return None
        return None


REGISTRAR: web.AppKey[Registrar] = web.AppKey("task_processing_registrar")
PROVIDERS: web.AppKey[Providers] = web.AppKey("task_processing_providers")


def setup(app: web.Application) -> None:
    """The registration at /init progress 60 and whenever the key or the enabled flag changes;
    its health under `taskProcessing`. Nothing is undone on disable: AppAPI offers the
    providers of enabled apps only, and removes them itself when the app is removed."""
    config: Config = app[CONFIG]
    providers = Providers(config.app_id)

    def client() -> NextcloudClient:
        return app[NEXTCLOUD]

    registrar = Registrar(client, app[TENANT], providers)
    follower = registrar.follower = Follower(
        "task-processing-registration", under_lease(app, registrar.run), registrar.watch
    )
    app[PROVIDERS] = providers
    app[REGISTRAR] = registrar

    install_followed(
        app,
        follower,
        surface_name="taskProcessing",
        phase_name="task-processing",
        progress=INIT_PROGRESS,
        health=providers.health,
    )
