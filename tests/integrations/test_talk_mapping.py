"""Talk deliveries to Bee Flow events, mention detection and the question asked, the reply's
signature and limits: pure functions, checked against payloads shaped like spreed's (the fake's
builder in tests/fakes/talk.py writes them as spreed's BotService does)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beeflow.integrations.talk_mapping import (
    MESSAGE_EVENT,
    REACTION_EVENT,
    TalkEvent,
    map_delivery,
    mentions,
    question,
)
from beeflow.integrations.talk_reply import (
    ELLIPSIS,
    MAX_CHARS,
    defuse,
    fit,
    reference_id,
    signature,
)
from tests.fakes.talk import php_json, talk_signature

BOT = "Bee Flow"
NOW = 1_800_000_000.0
ROOM = {"type": "Collection", "id": "abc123xy", "name": "Launch"}


def create(text: str, params: Any = None, actor: str = "users/bob", **note: Any) -> dict[str, Any]:
    content = php_json({"message": text, "parameters": params if params is not None else []})
    return {
        "type": "Create",
        "actor": {"type": "Person", "id": actor, "name": "Bob B", "talkParticipantType": "3"},
        "object": {
            "type": "Note",
            "id": "1567",
            "name": "message",
            "content": content,
            "mediaType": "text/markdown",
            **note,
        },
        "target": ROOM,
        # AppAPI's talk_proxy adds its own request parameters.
        "appId": "bee_flow",
        "route": "hooks/talk",
        "_route": "ocs.app_api.TalkBot.proxyTalkMessage",
    }


def test_a_message_becomes_talk_message_received() -> None:
    params = {"mention-user1": {"type": "user", "id": "alice", "name": "Alice"}}
    reply = {"type": "Note", "actor": {}, "object": {"type": "Note", "id": "1500"}}
    mapped = map_delivery(create("hi {mention-user1}", params, inReplyTo=reply), BOT, now=NOW)
    assert mapped == TalkEvent(
        MESSAGE_EVENT,
        "bob",
        {
            "messageId": 1567,
            "roomToken": "abc123xy",
            "roomName": "Launch",
            "actor": "bob",
            "actorType": "users",
            "actorName": "Bob B",
            "message": "hi {mention-user1}",
            "parameters": params,
            "isMarkdown": True,
            "inReplyTo": 1500,
            "datetime": "2027-01-15T08:00:00Z",
        },
        None,
    )


@pytest.mark.parametrize(
    ("actor", "uid", "kind"),
    [("guests/5f3a", None, "guests"), ("bots/bot-9a", None, "bots"), ("users/x", "x", "users")],
)
def test_only_a_users_actor_is_a_nextcloud_user(actor: str, uid: str | None, kind: str) -> None:
    mapped = map_delivery(create("@Bee Flow hi", actor=actor), BOT)
    assert isinstance(mapped, TalkEvent)
    assert (mapped.nc_uid, mapped.payload["actorType"]) == (uid, kind)
    # Only a user's mention is answered (bots never: no loops; guests have no account).
    assert (mapped.mention is not None) == (kind == "users")


def test_a_reaction_and_its_undo() -> None:
    note = {"type": "Note", "id": "1567", "name": "hello", "content": "{}"}
    person = {"type": "Person", "id": "users/bob", "name": "Bob B"}
    like = {"type": "Like", "actor": person, "object": note, "target": ROOM, "content": "👍"}
    added = map_delivery(like, BOT)
    assert isinstance(added, TalkEvent)
    assert (added.event, added.nc_uid) == (REACTION_EVENT, "bob")
    assert added.payload == {
        "messageId": 1567,
        "roomToken": "abc123xy",
        "roomName": "Launch",
        "actor": "bob",
        "actorType": "users",
        "actorName": "Bob B",
        "reaction": "👍",
        "removed": False,
    }
    undo = map_delivery({"type": "Undo", "actor": person, "object": like}, BOT)
    assert isinstance(undo, TalkEvent)
    assert undo.event == REACTION_EVENT
    assert undo.payload == {**added.payload, "removed": True}


@pytest.mark.parametrize("kind", ["Join", "Leave", "Activity", "Delete", "", "x" * 100])
def test_other_activities_are_ignored_by_type(kind: str) -> None:
    body = create("system message")
    body["type"] = kind
    assert map_delivery(body, BOT) == (kind or "unknown")[:64]


def test_a_broken_content_is_an_empty_message() -> None:
    body = create("x")
    body["object"]["content"] = "{not json"
    mapped = map_delivery(body, BOT)
    assert isinstance(mapped, TalkEvent)
    assert (mapped.payload["message"], mapped.payload["parameters"]) == ("", {})
    assert map_delivery({"type": "Create", "object": "nope", "actor": 3}, BOT) == "Create"


BOT_PARAM = {"type": "app", "id": "bot-1", "name": "Bee Flow"}


@pytest.mark.parametrize(
    ("text", "params", "expected"),
    [
        ("{mention-app1} what is new?", {"mention-app1": BOT_PARAM}, "what is new?"),
        ("@Bee Flow what is new?", {}, "what is new?"),
        ('@"Bee Flow" summarise', {}, "summarise"),
        ("hey @bee-flow, today?", {}, "hey , today?"),
        (
            "{mention-app1} ask {mention-user1}",
            {"mention-app1": BOT_PARAM, "mention-user1": {"id": "alice", "name": "Alice"}},
            "ask @Alice",
        ),
        ("{mention-app1}", {"mention-app1": BOT_PARAM}, ""),
    ],
)
def test_a_mention_and_the_question_it_asks(
    text: str, params: dict[str, Any], expected: str
) -> None:
    assert mentions(text, params, BOT)
    assert question(text, params, BOT) == expected


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("Bee Flow is nice", {}),
        ("mail me@beeflowers.example", {}),
        ("@Bee Flowers", {}),
        ("{mention-user1}", {"mention-user1": {"id": "bee", "name": "Bee"}}),
    ],
)
def test_not_a_mention(text: str, params: dict[str, Any]) -> None:
    assert not mentions(text, params, BOT)


def test_a_mention_is_carried_with_room_and_message() -> None:
    mapped = map_delivery(create("{mention-app1} hi", {"mention-app1": BOT_PARAM}), BOT)
    assert isinstance(mapped, TalkEvent)
    assert mapped.mention is not None
    assert (mapped.mention.question, mapped.mention.room, mapped.mention.message_id) == (
        "hi",
        "abc123xy",
        1567,
    )


def test_the_reply_signature_is_what_talk_checks() -> None:
    """BotController: hash_hmac('sha256', random . message, secret) over the message text (the
    fake computes it on its own)."""
    secret, random, message = "s" * 64, "ab" * 32, "Hello ü 👋"
    assert signature(secret, random, message) == talk_signature(secret, random, message)
    want = hmac.new(secret.encode(), (random + message).encode(), hashlib.sha256).hexdigest()
    assert signature(secret, random, message) == want
    assert (
        reference_id(random, message) == hashlib.sha256(f"{random}:{message}".encode()).hexdigest()
    )


@given(st.text(max_size=40_000))
def test_a_reply_fits_talks_limit(text: str) -> None:
    fitted = fit(text)
    assert len(fitted) <= MAX_CHARS
    assert fitted == fitted.strip() or fitted.endswith(ELLIPSIS)
    if len(text.strip()) <= MAX_CHARS:
        assert fitted == text.strip()
    else:
        assert fitted.endswith(ELLIPSIS)


def test_php_json_matches_what_php_writes() -> None:
    assert php_json({"a": "x/y", "b": "é"}) == '{"a":"x\\/y","b":"\\u00e9"}'
    assert json.loads(php_json({"m": "a/b"})) == {"m": "a/b"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@all look", "@\u200ball look"),
        ('@"all" look', '@\u200b"all" look'),
        ("@ALL!", "@\u200bALL!"),
        ("@alice and @allan", "@alice and @allan"),
        ("mail all@example.com", "mail all@example.com"),
    ],
)
def test_an_answer_cannot_notify_the_whole_room(text: str, expected: str) -> None:
    assert defuse(text) == expected
