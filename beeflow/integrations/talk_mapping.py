"""Talk's bot deliveries (Activity Streams, as spreed's BotService sends them and AppAPI forwards
them) turned into the events Bee Flow automations know, and the @mention a reply answers. Pure:
no I/O (docs/assistant.md, "Talk bot")."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any, Final

import attrs

from beeflow.serde import iso_utc

MESSAGE_EVENT: Final = "talk.message.received"
REACTION_EVENT: Final = "talk.reaction.added"
_PLACEHOLDER: Final = re.compile(r"\{(mention-[A-Za-z0-9_-]+)\}")
_SPACES: Final = re.compile(r"\s+")


@attrs.frozen
class Mention:
    """A user's message that mentions the bot: what to ask, and where to answer."""

    question: str
    room: str
    message_id: int | None
    user: str


@attrs.frozen
class TalkEvent:
    event: str
    nc_uid: str | None  # the actor when it is a Nextcloud user
    payload: dict[str, Any]
    mention: Mention | None = None


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _actor(actor: Mapping[str, Any]) -> tuple[str, str, str]:
    """(type, id, name) from `{"id": "users/bob", "name": ...}`: Talk's actor types are users,
    guests, bots, emails, federated_users..."""
    kind, _, ident = _text(actor.get("id")).partition("/")
    return kind, ident, _text(actor.get("name"))


def _message_id(value: Any) -> int | None:
    """Talk sends comment ids as numeric strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 20:
        return int(value)
    return None


def _content(note: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """`object.content` is a JSON string `{"message", "parameters"}`; a broken one is empty."""
    try:
        data = json.loads(_text(note.get("content")) or "null")
    except (ValueError, RecursionError):
        data = None
    data = _obj(data)
    params = data.get("parameters")
    return _text(data.get("message")), dict(params) if isinstance(params, Mapping) else {}


def map_delivery(
    body: Mapping[str, Any], bot_name: str, now: float | None = None
) -> TalkEvent | str:
    """The event for a delivery, or the delivery's type when Bee Flow has no event for it
    (Join, Leave, system messages...)."""
    kind = _text(body.get("type")) or "unknown"
    target = _obj(body.get("target"))
    actor_type, actor_id, actor_name = _actor(_obj(body.get("actor")))
    base: dict[str, Any] = {
        "roomToken": _text(target.get("id")),
        "roomName": _text(target.get("name")),
        "actor": actor_id,
        "actorType": actor_type,
        "actorName": actor_name,
    }
    nc_uid = actor_id if actor_type == "users" and actor_id else None
    note = _obj(body.get("object"))
    if kind == "Create" and note.get("name") == "message":
        message, params = _content(note)
        reply = _obj(_obj(note.get("inReplyTo")).get("object"))
        payload = {
            "messageId": _message_id(note.get("id")),
            **base,
            "message": message,
            "parameters": params,
            "isMarkdown": note.get("mediaType") == "text/markdown",
            "inReplyTo": _message_id(reply.get("id")),
            "datetime": iso_utc(time.time() if now is None else now),
        }
        mention = None
        if actor_type == "users" and actor_id and mentions(message, params, bot_name):
            mention = Mention(
                question(message, params, bot_name),
                base["roomToken"],
                payload["messageId"],
                actor_id,
            )
        return TalkEvent(MESSAGE_EVENT, nc_uid, payload, mention)
    if kind == "Like":
        payload = {
            "messageId": _message_id(note.get("id")),
            **base,
            "reaction": _text(body.get("content")),
            "removed": False,
        }
        return TalkEvent(REACTION_EVENT, nc_uid, payload)
    if kind == "Undo" and note.get("type") == "Like":
        if not base["roomToken"]:
            base["roomToken"] = _text(_obj(note.get("target")).get("id"))
            base["roomName"] = _text(_obj(note.get("target")).get("name"))
        payload = {
            "messageId": _message_id(_obj(note.get("object")).get("id")),
            **base,
            "reaction": _text(note.get("content")),
            "removed": True,
        }
        return TalkEvent(REACTION_EVENT, nc_uid, payload)
    return kind[:64]


def _is_bot(param: Any, bot_name: str) -> bool:
    data = _obj(param)
    return _text(data.get("name")).strip().casefold() == bot_name.casefold()


def _at_name(bot_name: str) -> re.Pattern[str]:
    words = r"[\s_-]*".join(re.escape(w) for w in bot_name.split())
    return re.compile(rf'@"?{words}"?(?![\w-])', re.IGNORECASE)


def mentions(message: str, params: Mapping[str, Any], bot_name: str) -> bool:
    """A mention parameter named like the bot, or its name written after an @."""
    for key, param in params.items():
        if key.startswith("mention-") and _is_bot(param, bot_name):
            return True
    return bool(_at_name(bot_name).search(message))


def question(message: str, params: Mapping[str, Any], bot_name: str) -> str:
    """The message without its mentions of the bot; other mentions become the person's name."""

    def replace(match: re.Match[str]) -> str:
        param = params.get(match.group(1))
        if param is None or _is_bot(param, bot_name):
            return " "
        name = _text(_obj(param).get("name")) or _text(_obj(param).get("id"))
        return f"@{name}" if name else " "

    text = _PLACEHOLDER.sub(replace, message)
    text = _at_name(bot_name).sub(" ", text)
    return _SPACES.sub(" ", text).strip()
