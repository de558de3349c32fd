"""The Task Processing registration surface against the fake Nextcloud's Task Processing (written
from AppAPI's and core's source; tests/integration/test_task_processing_real.py checks the same on
the real server): what is registered, when, and what is dropped."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from beeflow.nextcloud.task_processing import (
    AGENT_TYPE,
    NOT_SERVED,
    PROVIDER_PATH,
    PROVIDERS,
    REGISTRAR,
    TASK_TYPES,
    Shape,
    provider_body,
)
from beeflow.tenant.state import TENANT
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.nextcloud_tasks import provider_problem
from tests.helpers import TENANT_KEY, appapi_headers, wait_for
from tests.integrations.world import World, registration, world_fixture


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async for w in world_fixture():
        yield w


@pytest.fixture
def fake_nc(world: World) -> FakeNextcloud:
    return world.nc


EXPECTED_RUNTIMES = {
    "core:text2text": 30,
    "core:text2text:chat": 30,
    "core:text2text:summary": 30,
    "core:text2text:headline": 15,
    "core:text2text:topics": 15,
    "core:text2text:proofread": 20,
    "core:text2text:reformulation": 20,
    "core:text2text:simplification": 20,
    "core:text2text:formalization": 20,
    "core:text2text:improve": 20,
    "core:text2text:translate": 20,
    "core:contextagent:interaction": 60,
}


def test_the_twelve_types_and_their_runtimes() -> None:
    assert {t.id: t.expected_runtime for t in TASK_TYPES} == EXPECTED_RUNTIMES
    assert not {t.id for t in TASK_TYPES} & NOT_SERVED


@pytest.mark.parametrize("task_type", TASK_TYPES, ids=lambda t: t.id)
def test_a_provider_body_is_what_appapi_validates(task_type: object) -> None:
    body = provider_body("bee_flow", task_type)  # type: ignore[arg-type]
    provider = body["provider"]
    assert body["customTaskType"] is None
    assert provider_problem(provider) is None
    assert provider["id"] == f"bee_flow:{provider['task_type']}"
    assert provider["name"] == "Bee Flow"
    for key in (
        "input_shape_defaults",
        "optional_input_shape_defaults",
        "input_shape_enum_values",
        "optional_input_shape_enum_values",
        "output_shape_enum_values",
        "optional_output_shape_enum_values",
    ):
        assert provider[key] == {}
    # The wire carries EShapeType's number, never its name (a name breaks the provider).
    text = json.dumps(body)
    assert "ListOfTexts" not in text
    assert "LIST_OF_TEXTS" not in text
    for entry in provider["optional_input_shape"] + provider["optional_output_shape"]:
        assert type(entry["shape_type"]) is int


def test_the_agent_declares_memories_and_sources_as_lists_of_texts() -> None:
    (agent,) = [t for t in TASK_TYPES if t.id == AGENT_TYPE]
    provider = provider_body("bee_flow", agent)["provider"]
    assert provider["optional_input_shape"] == [
        {"name": "memories", "description": agent.optional_input[0].description, "shape_type": 11}
    ]
    assert [(s["name"], s["shape_type"]) for s in provider["optional_output_shape"]] == [
        ("sources", int(Shape.LIST_OF_TEXTS))
    ]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda p: p.pop("expected_runtime"), '"expected_runtime" key must be an integer'),
        (lambda p: p.update(expected_runtime="30"), '"expected_runtime" key must be an integer'),
        (lambda p: p.pop("input_shape_defaults"), '"input_shape_defaults" key must be an array'),
        (lambda p: p.pop("task_type"), "Task type must be provided"),
    ],
)
def test_the_fake_refuses_what_appapi_refuses(change: object, problem: str) -> None:
    provider = provider_body("bee_flow", TASK_TYPES[0])["provider"]
    change(provider)  # type: ignore[operator]
    assert (provider_problem(provider) or "").startswith(problem)


async def test_registered_once_the_key_exists_and_only_for_offered_types(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    conn.app[REGISTRAR].offer_cache_seconds = 0.0
    await registration(conn).run_now("test")
    providers = conn.app[PROVIDERS]
    states = providers.states
    # Nextcloud 32 has no core:text2text:improve: registered, not offered, unregistered.
    assert states.pop("core:text2text:improve") == "not_offered"
    assert set(states.values()) == {"registered"}
    assert set(world.tasks.providers) == {
        f"bee_flow:{t}" for t in EXPECTED_RUNTIMES if t != "core:text2text:improve"
    }
    assert providers.state == "registered"
    deletes = world.nc.calls_to(PROVIDER_PATH, "DELETE")
    assert [c.json() for c in deletes] == [{"name": "bee_flow:core:text2text:improve"}]
    # The listing was read as a user (as the empty user Nextcloud answers 401).
    (listing,) = world.nc.calls_to("/ocs/v2.php/taskprocessing/tasktypes")
    assert listing.user == "admin"


async def test_a_type_missing_from_a_listing_that_may_be_cached_stays(
    world: World, connector_factory: ConnectorFactory
) -> None:
    """Nextcloud caches the offered types for 60 s: a type missing from a listing made within
    that time after registering is kept (checking), and the run asks to be retried."""
    conn = await connector_factory(**world.env())
    registrar = conn.app[REGISTRAR]
    assert registrar.offer_cache_seconds >= 60
    assert await registrar.run("test") is False
    assert conn.app[PROVIDERS].states["core:text2text:improve"] == "checking"
    assert "bee_flow:core:text2text:improve" in world.tasks.providers
    assert world.nc.calls_to(PROVIDER_PATH, "DELETE") == []
    registrar.offer_cache_seconds = 0.0
    assert await registrar.run("retry") is True
    assert conn.app[PROVIDERS].states["core:text2text:improve"] == "not_offered"


async def test_nothing_is_registered_without_a_key_until_one_appears(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(BEEFLOW_TENANT_KEY="auto", **world.env())
    follower = registration(conn)
    follower.check_every = 0.05
    await follower.run_now("init")
    assert conn.app[PROVIDERS].state == "waiting_for_key"
    assert world.nc.calls_to(PROVIDER_PATH) == []
    conn.app[TENANT].key = TENANT_KEY  # the bootstrap (or e-mail verification) got one
    follower.poke()
    await wait_for(lambda: conn.app[PROVIDERS].state == "registered")
    assert len(world.nc.calls_to(PROVIDER_PATH, "POST")) == len(TASK_TYPES)


async def test_a_disabled_app_registers_nothing_and_registers_when_enabled_again(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    follower = registration(conn)
    follower.check_every = 0.05
    world.nc.enabled = False
    async with await conn.request("PUT", "/enabled?enabled=0", user="") as resp:
        assert resp.status == 200
    await follower.run_now("init")
    assert conn.app[PROVIDERS].state == "paused"
    assert world.nc.calls_to(PROVIDER_PATH) == []
    world.nc.enabled = True
    async with await conn.request("PUT", "/enabled?enabled=1", user="") as resp:
        assert resp.status == 200
    await wait_for(lambda: conn.app[PROVIDERS].state == "registered")


async def test_a_refused_registration_is_failed_and_retried(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    follower = registration(conn)
    follower.check_every, follower.retry_base = 0.05, 0.1
    world.nc.down = True  # every call 503
    await follower.run_now("init")
    providers = conn.app[PROVIDERS]
    assert providers.state == "failed"
    assert set(providers.states.values()) == {"failed"}
    assert "HTTP 503" in providers.last_error
    world.nc.down = False
    await wait_for(lambda: providers.state == "registered")


async def test_two_connectors_registering_at_once_leave_one_provider_per_type(
    world: World, connector_factory: ConnectorFactory
) -> None:
    one = await connector_factory(**world.env())
    two = await connector_factory(**world.env())
    for conn in (one, two):
        conn.app[REGISTRAR].offer_cache_seconds = 0.0
    await asyncio.gather(registration(one).run_now("a"), registration(two).run_now("b"))
    assert conn.app[PROVIDERS].state == "registered"
    assert len(world.tasks.providers) == len(TASK_TYPES) - 1
    assert world.tasks.offered() == set(EXPECTED_RUNTIMES) - {"core:text2text:improve"}


async def test_a_shape_given_by_name_registers_but_is_never_offered(world: World) -> None:
    """What AppAPI does with the bug the reference connector shipped (measured on 32.0.1)."""
    agent = next(t for t in TASK_TYPES if t.id == AGENT_TYPE)
    body = provider_body("bee_flow", agent)
    body["provider"]["optional_input_shape"][0]["shape_type"] = "ListOfTexts"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            str(world.nc.url) + PROVIDER_PATH,
            json=body,
            headers={**appapi_headers(""), "OCS-APIRequest": "true"},
        ) as resp,
    ):
        assert resp.status == 200
    assert "bee_flow:core:contextagent:interaction" in world.tasks.providers
    assert AGENT_TYPE not in world.tasks.offered()


async def test_health_shows_states_and_details_only_to_trusted_callers(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    conn.app[REGISTRAR].offer_cache_seconds = 0.0
    await registration(conn).run_now("test")
    async with await conn.request("GET", "/heartbeat") as resp:
        anonymous = (await resp.json())["taskProcessing"]
    assert anonymous == {"state": "registered", "types": 11}
    async with await conn.request("GET", "/setup/status", user="admin") as resp:
        detail = (await resp.json())["health"]["taskProcessing"]
    assert detail["typeStates"]["core:text2text:improve"] == "not_offered"
    assert detail["typeStates"]["core:text2text"] == "registered"


async def test_the_listing_is_read_as_the_next_user_when_one_is_disabled(
    world: World, connector_factory: ConnectorFactory
) -> None:
    """A disabled account cannot be asked as (997, not counted): the next user is."""
    conn = await connector_factory(**world.env())
    world.nc.users["admin"].enabled = False
    conn.app[REGISTRAR].offer_cache_seconds = 0.0
    await registration(conn).run_now("test")
    assert conn.app[PROVIDERS].states["core:text2text:improve"] == "not_offered"
    listings = world.nc.calls_to("/ocs/v2.php/taskprocessing/tasktypes")
    assert [c.user for c in listings if c.auth == "ok"][-1] == "alice"
    assert world.nc.attempts_for() == 0
