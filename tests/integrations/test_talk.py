"""The Talk bot end to end against the strict Talk fake (spreed's and AppAPI's behaviour, from
their source): registration and its secret, deliveries through AppAPI's talk_proxy, events to
the service, @mention answers posted with a valid signature, and every refusal on the way."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from beeflow.integrations.talk import APOLOGY, HINT, TALK
from beeflow.integrations.talk_reply import post
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.nextcloud.talk_bot import DESCRIPTION, ROUTE, STATE_FILE, TALK_BOT, TALK_BOT_PATH
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.talk import FEATURE_REACTION, Bot, php_json
from tests.helpers import RunningConnector, appapi_headers, wait_for
from tests.integrations.world import World, bot_registration, world_fixture

ROOM = "abc123xy"
BOT_PARAM = {"type": "app", "id": "bot-1", "name": "Bee Flow"}


@pytest.fixture
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    async for w in world_fixture(**getattr(request, "param", {})):
        yield w


@pytest.fixture
def fake_nc(world: World) -> FakeNextcloud:
    return world.nc


async def with_bot(world: World, conn: RunningConnector) -> Bot:
    await bot_registration(conn).run_now("test")
    assert conn.app[TALK_BOT].state == "registered"
    bot = world.talk.bot_for("bee_flow", ROUTE)
    assert bot is not None
    world.talk.add_room(ROOM, "Launch")
    await world.talk.enable_bot(ROOM, bot)
    return bot


async def test_registration_keeps_the_secret_appapi_made(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    bot = await with_bot(world, conn)
    (call,) = world.nc.calls_to(TALK_BOT_PATH, "POST")
    assert call.json() == {"name": "Bee Flow", "route": "/hooks/talk", "description": DESCRIPTION}
    path = Path(conn.config.persistent_storage) / STATE_FILE
    assert json.loads(path.read_text())["secret"] == bot.secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # Registering again is idempotent: AppAPI returns the same secret, Talk keeps one bot.
    await bot_registration(conn).run_now("again")
    assert len(world.talk.bots) == 1
    assert conn.app[TALK_BOT].secret() == bot.secret
    # The Join that enabling the bot in a room sent is ignored.
    assert json.loads(world.talk.forwarded[0].body)["type"] == "Join"
    assert world.talk.forwarded[0].status == 200


@pytest.mark.parametrize("world", [{"talk_installed": False}], indirect=True)
async def test_without_talk_the_bot_is_talk_missing_not_an_error(
    world: World, connector_factory: ConnectorFactory
) -> None:
    """AppAPI 32 answers 400 "Talk bots could not be registered" (measured on 32.0.1)."""
    conn = await connector_factory(**world.env())
    follower = bot_registration(conn)
    follower.check_every, follower.retry_base = 0.05, 0.3
    await follower.run_now("init")
    assert conn.app[TALK_BOT].state == "talk_missing"
    async with await conn.request("GET", "/heartbeat") as resp:
        assert (await resp.json())["talkBot"] == {"state": "talk_missing"}
    # Tried again later (Talk may be installed then), not fatal to anything else.
    world.talk.installed = True
    await wait_for(lambda: conn.app[TALK_BOT].state == "registered", timeout=10)


async def test_a_mention_is_forwarded_and_answered_in_the_room(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    await with_bot(world, conn)
    said = await world.talk.say(
        ROOM, "alice", "{mention-app1} what did we decide?", name="Alice",
        parameters={"mention-app1": BOT_PARAM},
    )  # fmt: skip
    # Talk -> AppAPI (signature checked) -> the connector, as AppAPI forwards it.
    forwarded = await world.talk.wait_forwarded(2)
    delivery = forwarded[1]
    assert delivery.status == 200
    assert delivery.headers["AUTHORIZATION-APP-API"]  # AppAPI's, with an empty user
    assert not any(h.lower().startswith("x-nextcloud-talk") for h in delivery.headers)
    (event,) = await world.service.control.automation.wait_events(1)
    assert event == {
        "event": "talk.message.received",
        "ncUid": "alice",
        "payload": event["payload"] | {"messageId": said.id, "roomToken": ROOM, "actor": "alice"},
    }
    assert event["payload"]["message"] == "{mention-app1} what did we decide?"
    posts = await world.talk.wait_posts(1)
    status, body = posts[0]
    assert status == 201
    assert body["replyTo"] == said.id
    assert body["message"] == "Bee Flow (core:contextagent:interaction): what did we decide?"
    assert len(body["referenceId"]) == 64
    (execution,) = world.service.tasks.executions
    assert execution.body["input"] == {
        "input": "what did we decide?",
        "conversation_token": f"talk:{ROOM}",
    }
    assert execution.body["ncUid"] == "alice"
    reply = world.talk.rooms[ROOM].messages[-1]
    assert (reply.actor_type, reply.reply_to) == ("bots", said.id)
    assert world.talk.throttled == 0
    await wait_for(lambda: conn.app[TALK].stats.answered == 1)


async def test_a_message_without_mention_is_only_forwarded(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    await with_bot(world, conn)
    await world.talk.say(ROOM, "alice", "just chatting about Bee Flow")
    (event,) = await world.service.control.automation.wait_events(1)
    assert event["event"] == "talk.message.received"
    await asyncio.sleep(0.2)
    assert world.talk.bot_posts == []
    assert world.service.tasks.executions == []


async def test_reactions_reach_the_service_when_talk_sends_them(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    bot = await with_bot(world, conn)
    bot.features |= FEATURE_REACTION  # AppAPI's bots get no reactions unless an admin adds it
    message = await world.talk.say(ROOM, "alice", "ship it?")
    await world.talk.react(ROOM, message, "👍")
    await world.talk.react(ROOM, message, "👍", undo=True)
    events = await world.service.control.automation.wait_events(3)
    reactions = [e for e in events if e["event"] == "talk.reaction.added"]
    assert [(e["payload"]["reaction"], e["payload"]["removed"]) for e in reactions] == [
        ("👍", False),
        ("👍", True),
    ]
    assert {e["payload"]["messageId"] for e in reactions} == {message.id}


async def test_an_empty_question_gets_the_hint_and_a_failure_the_apology(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    await with_bot(world, conn)
    await world.talk.say(ROOM, "alice", "@Bee Flow")
    (first,) = await world.talk.wait_posts(1)
    assert first[1]["message"] == HINT
    world.service.tasks.mode = "status:502"
    await world.talk.say(ROOM, "alice", "@Bee Flow are you there?")
    second = (await world.talk.wait_posts(2))[1]
    assert (second[0], second[1]["message"]) == (201, APOLOGY)


async def test_a_reply_to_a_vanished_message_is_sent_again_without_reply_to(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    await with_bot(world, conn)
    gate = world.service.tasks.gate = asyncio.Event()
    said = await world.talk.say(ROOM, "alice", "@Bee Flow quick one")
    await world.service.tasks.wait_executions(1)
    world.talk.rooms[ROOM].messages.remove(said)  # deleted while Bee Flow was thinking
    gate.set()
    posts = await world.talk.wait_posts(2)
    assert [(s, "replyTo" in b) for s, b in posts] == [(400, True), (201, False)]


async def test_a_stale_secret_is_read_again_from_appapi(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    bot = await with_bot(world, conn)
    path = Path(conn.config.persistent_storage) / STATE_FILE
    path.write_text(json.dumps({"secret": "x" * 64, "savedAt": "then"}))  # another replica's
    await world.talk.say(ROOM, "alice", "@Bee Flow hello")
    posts = await world.talk.wait_posts(2)
    assert [s for s, _ in posts] == [401, 201]
    assert conn.app[TALK_BOT].secret() == bot.secret
    assert json.loads(path.read_text())["secret"] == bot.secret


async def test_a_long_answer_is_cut_to_talks_limit(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    await with_bot(world, conn)
    world.service.tasks.answer = lambda _t, _i: "word " * 10_000
    await world.talk.say(ROOM, "alice", "@Bee Flow write a lot")
    ((status, body),) = await world.talk.wait_posts(1)
    assert status == 201
    assert len(body["message"]) == 32_000


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        (None, b"{}", 401, "appapi_headers_missing"),
        (appapi_headers("admin"), b"{}", 403, "talk_delivery_only"),
        (appapi_headers(""), b"[1,2]", 400, "bad_json"),
        (appapi_headers(""), b"{nope", 400, "bad_json"),
        (appapi_headers(""), b'{"m":"' + b"x" * 300_000 + b'"}', 413, "payload_too_large"),
    ],
)
async def test_bad_deliveries_get_clear_answers(
    world: World,
    connector_factory: ConnectorFactory,
    headers: dict[str, str] | None,
    body: bytes,
    status: int,
    code: str,
) -> None:
    conn = await connector_factory(**world.env())
    async with await conn.request(
        "POST", ROUTE, headers={**(headers or {}), "Content-Type": "application/json"}, data=body
    ) as resp:
        assert resp.status == status
        assert (await resp.json())["code"] == code
    assert world.service.control.automation.events == []


async def test_a_delivery_before_the_tenant_key_is_refused_until_set_up(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(BEEFLOW_TENANT_KEY="auto", **world.env())
    body = php_json({"type": "Create", "object": {"name": "message", "content": "{}"}})
    async with await conn.request("POST", ROUTE, user="", data=body.encode()) as resp:
        assert resp.status == 503
        assert (await resp.json())["code"] == "tenant_key_missing"
    join = php_json({"type": "Join"})
    async with await conn.request("POST", ROUTE, user="", data=join.encode()) as resp:
        assert (resp.status, await resp.json()) == (200, {"ignored": "Join"})


async def test_a_forged_talk_delivery_never_reaches_the_connector(
    world: World, connector_factory: ConnectorFactory
) -> None:
    """Talk signs for AppAPI; AppAPI checks it (404 and a brute-force attempt otherwise)."""
    conn = await connector_factory(**world.env())
    await with_bot(world, conn)
    before = len(world.talk.forwarded)
    async with (
        world.talk.session.post(
            world.talk.proxy_url("bee_flow", "hooks/talk"),
            data=b'{"type":"Create"}',
            headers={"X-Nextcloud-Talk-Random": "r" * 64, "X-Nextcloud-Talk-Signature": "0" * 64},
        ) as resp,
    ):
        assert resp.status == 404
    assert world.talk.throttled == 1
    assert len(world.talk.forwarded) == before


async def test_unregistering_takes_the_bot_out_of_talk(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    await with_bot(world, conn)
    bot = conn.app[TALK_BOT]
    assert await bot.unregister() is True
    assert world.talk.bots == {}
    assert world.talk.rooms[ROOM].bots == []
    (call,) = world.nc.calls_to(TALK_BOT_PATH, "DELETE")
    assert call.json() == {"route": "/hooks/talk"}
    assert await bot.unregister() is True  # gone already: 404, which is what was asked


async def test_what_is_never_sent_to_talk(
    world: World, connector_factory: ConnectorFactory
) -> None:
    conn = await connector_factory(**world.env())
    await with_bot(world, conn)
    client, bot = conn.app[NEXTCLOUD], conn.app[TALK_BOT]
    assert (await post(client, bot.secret, bot.refresh, "../x", "hi", None)).status == 0
    assert (await post(client, bot.secret, bot.refresh, ROOM, "   ", None)).status == 0

    async def nothing() -> str | None:
        return None

    assert (await post(client, lambda: None, nothing, ROOM, "hi", None)).status == 0
    assert world.talk.bot_posts == []
    # A secret Talk refuses, and AppAPI holds the same one: 401 stands after one refresh.
    sent = await post(client, lambda: "y" * 64, lambda: _same("y" * 64), ROOM, "hi", None)
    assert (sent.status, sent.refreshed_secret) == (401, True)


async def _same(secret: str) -> str | None:
    return secret


async def test_a_full_queue_and_a_refused_forward_are_counted(
    world: World, connector_factory: ConnectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await connector_factory(**world.env())
    talk = conn.app[TALK]
    body = php_json(
        {
            "type": "Create",
            "actor": {"id": "users/alice"},
            "object": {"name": "message", "content": "{}"},
        }
    ).encode()
    monkeypatch.setattr("beeflow.integrations.talk.MAX_QUEUED", 0)
    async with await conn.request("POST", ROUTE, user="", data=body) as resp:
        assert resp.status == 503
        assert (await resp.json())["code"] == "queue_full"
    assert talk.stats.dropped == 1
    monkeypatch.setattr("beeflow.integrations.talk.MAX_QUEUED", 500)
    world.service.control.verify_key = "tk_other_0123456789abcdef0123456789"  # the key changed
    async with await conn.request("POST", ROUTE, user="", data=body) as resp:
        assert (resp.status, await resp.json()) == (
            200,
            {"ok": True, "event": "talk.message.received"},
        )
    await wait_for(lambda: talk.stats.forward_failed == 1)
    assert "HTTP 401" in talk.stats.last_error
    async with await conn.request("GET", "/heartbeat") as resp:
        assert (await resp.json())["talk"] == {"deliveries": 2}


async def test_closing_talk_leaves_other_work_alone(
    world: World, connector_factory: ConnectorFactory
) -> None:
    """Talk's shutdown waits for and cancels its own forwards and answers only: not the bot's
    registration loop (whose task name also starts with "talk-"), not another app's work."""
    conn = await connector_factory(**world.env())
    follower = conn.app[TALK_BOT].follower
    assert follower is not None
    assert follower._loop.running
    await conn.app[TALK].close()
    assert follower._loop.running
