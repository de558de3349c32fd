"""A webhook_listeners delivery turned into the payload the Bee Flow service's automations read
(docs/automations.md, "Payloads"). Pure and lenient: Nextcloud's serialisations differ between
versions and apps, so a missing or odd field becomes null, never an error.

The shapes follow the Node connector's normalisePayload (Bee-Flow/Bee-Flow @3c2dabd9,
`nextcloud-connector/src/automationEventsWebhook.js`), which the service's trigger filters
were written against; calendar events add what that connector could not read (Nextcloud 32
sends the iCalendar text, so summary, start, end, location and attendees are filled in)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_USER_FILES: Final = re.compile(r"^/?([^/]+)/files(/.*)?$")
_ICAL_DATE: Final = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_ICAL_TIME: Final = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(Z?)$")
_ESCAPES: Final = {"n": "\n", "N": "\n", ",": ",", ";": ";", "\\": "\\"}


def iso_ms(ts: float) -> str:
    """JavaScript's Date.toISOString(): UTC, milliseconds, `Z`."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _id(value: Any) -> Any:
    """An id as Nextcloud sent it (number or text); anything else is null."""
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ------------------------------------------------------------------ files


def user_relative(raw: Any) -> tuple[str | None, str | None]:
    """`/<uid>/files/<rel>` -> (`/<rel>`, uid); other paths (versions, trash) unchanged."""
    if not isinstance(raw, str) or not raw:
        return None, None
    match = _USER_FILES.match(raw)
    if match is None:
        return raw, None
    return match.group(2) or "/", match.group(1)


def node_fields(node: Any) -> dict[str, Any]:
    node = _dict(node)
    path, owner = user_relative(node.get("path"))
    name = next((part for part in reversed(path.split("/")) if part), None) if path else None
    extension = name.rsplit(".", 1)[1].lower() if name and "." in name else None
    # No id on a deleted node (Nextcloud serialises a NonExistingFile without one).
    return {
        "id": _id(node.get("id")),
        "path": path,
        "name": name,
        "extension": extension,
        "kind": "file",
        "owner": owner,
    }


def _file_payload(event: str, e: Mapping[str, Any]) -> dict[str, Any]:
    if e.get("source") or e.get("target"):
        source = node_fields(e.get("source"))
        return {**node_fields(e.get("target")), "oldPath": source["path"], "sourceId": source["id"]}
    if event in ("file.tagged", "file.untagged"):
        objects = [str(o) for o in _list(e.get("objectIds")) if _id(o) is not None]
        tags = [_number(t) for t in _list(e.get("tagIds"))]
        return {
            "objectType": _text(e.get("objectType")) or "files",
            "objectIds": objects,
            "fileId": objects[0] if objects else None,
            "tagIds": tags,
            "tagId": tags[0] if tags else None,
        }
    return node_fields(e.get("node"))


def _number(value: Any) -> int | float | None:
    """JavaScript's Number(): "12" -> 12; what is not a number -> null (NaN in JSON)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() else number


# ------------------------------------------------------------------ calendar


def _unfold(text: str) -> list[str]:
    lines: list[str] = []
    for line in re.split(r"\r\n|\n|\r", text):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += line[1:]
        elif line:
            lines.append(line)
    return lines


def _split_property(line: str) -> tuple[str, dict[str, str], str]:
    """NAME;PARAM=VALUE;...:value, with ':' allowed inside quoted parameter values."""
    quoted = False
    for i, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == ":" and not quoted:
            head, value = line[:i], line[i + 1 :]
            break
    else:
        return line.upper(), {}, ""
    name, *params = head.split(";")
    parsed = {}
    for param in params:
        key, _, val = param.partition("=")
        parsed[key.upper()] = val.strip('"')
    return name.upper(), parsed, value


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), value)


def ical_moment(value: str, params: Mapping[str, str]) -> str | None:
    """DTSTART/DTEND/DUE as ISO 8601: a date, a UTC instant, a zoned time converted to UTC,
    or a floating local time (no zone)."""
    value = value.strip()
    if (date := _ICAL_DATE.match(value)) is not None:
        return "-".join(date.groups())
    moment = _ICAL_TIME.match(value)
    if moment is None:
        return None
    y, mo, d, h, mi, s, utc = moment.groups()
    local = f"{y}-{mo}-{d}T{h}:{mi}:{s}"
    if utc:
        return local + ".000Z"
    zone = params.get("TZID")
    if zone:
        try:
            zoned = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            return local
        return iso_ms(zoned.timestamp())
    return local


def ical_fields(text: Any) -> dict[str, Any]:
    """Summary, start, end, location and attendees of the first VEVENT or VTODO."""
    out: dict[str, Any] = {"summary": None, "startsAt": None, "endsAt": None, "location": None}
    attendees: list[str] = []
    if isinstance(text, str):
        depth = 0  # 1 inside the component; deeper inside its VALARMs
        for line in _unfold(text):
            name, params, value = _split_property(line)
            if name == "BEGIN":
                if depth or value.upper() in ("VEVENT", "VTODO"):
                    depth += 1
                continue
            if name == "END" and depth:
                depth -= 1
                if depth == 0:
                    break
                continue
            if depth != 1:
                continue
            if name in ("SUMMARY", "LOCATION") and out[name.lower()] is None:
                out[name.lower()] = _unescape(value)
            elif name == "DTSTART" and out["startsAt"] is None:
                out["startsAt"] = ical_moment(value, params)
            elif name in ("DTEND", "DUE") and out["endsAt"] is None:
                out["endsAt"] = ical_moment(value, params)
            elif name == "ATTENDEE":
                address = re.sub(r"(?i)^mailto:", "", value.strip())
                if address:
                    attendees.append(address)
    out["attendees"] = attendees
    return out


def _calendar_payload(e: Mapping[str, Any]) -> dict[str, Any]:
    obj = _dict(e.get("objectData"))
    cal = _dict(e.get("calendarData") or e.get("targetCalendarData") or e.get("sourceCalendarData"))
    uri = _text(obj.get("uri"))
    calendar_id = next(
        (
            v
            for v in (e.get("calendarId"), e.get("targetCalendarId"), e.get("sourceCalendarId"))
            if _id(v) is not None
        ),
        _id(cal.get("id")),
    )
    return {
        "uid": re.sub(r"(?i)\.ics$", "", uri) if uri else None,
        "objectUri": uri,
        "calendarId": calendar_id,
        "calendarUri": _text(cal.get("uri")),
        "sourceCalendarId": _id(e.get("sourceCalendarId")),
        "targetCalendarId": _id(e.get("targetCalendarId")),
        "component": _text(obj.get("component")),
        **ical_fields(obj.get("calendardata")),
    }


# ------------------------------------------------------------------ apps


def _forms_payload(e: Mapping[str, Any], actor: str | None, when: str) -> dict[str, Any]:
    form, submission = _dict(e.get("form")), _dict(e.get("submission"))
    stamp = submission.get("timestamp")
    return {
        "formId": _id(form.get("id")),
        "formHash": _text(form.get("hash")),
        "formTitle": form.get("title") if isinstance(form.get("title"), str) else "",
        "formOwner": _text(form.get("ownerId")),
        "submissionId": _id(submission.get("id")),
        "submittedBy": _text(submission.get("userId")) or actor,
        "submittedAt": iso_ms(stamp) if _is_time(stamp) else when,
    }


def _tables_payload(e: Mapping[str, Any]) -> dict[str, Any]:
    values, previous = e.get("values"), e.get("previousValues")
    return {
        "tableId": _id(e.get("tableId")),
        "rowId": _id(e.get("rowId")),
        "values": values if isinstance(values, Mapping | list) else {},
        "previousValues": previous if isinstance(previous, Mapping | list) else None,
    }


def _deck_payload(e: Mapping[str, Any]) -> dict[str, Any]:
    card = _dict(e.get("card"))
    labels = [_dict(label).get("title") for label in _list(card.get("labels"))]
    assigned = []
    for item in _list(card.get("assignedUsers")):
        participant = _dict(_dict(item).get("participant"))
        uid = participant.get("uid") or participant.get("primaryKey")
        if isinstance(uid, str) and uid:
            assigned.append(uid)
    return {
        "cardId": _id(card.get("id")),
        "title": card.get("title"),
        "description": card.get("description"),
        "stackId": _id(card.get("stackId")),
        "boardId": _id(card.get("boardId")),
        # Deck's `done` is when the card was completed (ISO) or null: kept as sent.
        "done": card.get("done"),
        "archived": card.get("archived"),
        "duedate": card.get("duedate"),
        "labels": [t for t in labels if isinstance(t, str) and t],
        "assignedUsers": assigned,
    }


# ------------------------------------------------------------------ the envelope


def _is_time(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 2**33


def payload_for(event: str, envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of Bee Flow event `event` for a delivery. Only named fields are copied:
    anything else in the envelope (an `authentication` block, Nextcloud's full calendar row)
    stays here."""
    e = _dict(envelope.get("event"))
    user = _dict(envelope.get("user"))
    actor = _text(user.get("uid"))
    stamp = envelope.get("time")
    when = iso_ms(stamp if _is_time(stamp) else time.time())
    base = {"actor": actor, "actorName": _text(user.get("displayName")), "datetime": when}
    if event.startswith("file."):
        body = _file_payload(event, e)
        link: dict[str, Any] = {} if event in ("file.tagged", "file.untagged") else {"link": None}
        return {**body, **base, **link}
    if event.startswith("calendar."):
        return {**_calendar_payload(e), **base}
    if event == "forms.submitted":
        return {**_forms_payload(e, actor, when), **base}
    if event.startswith("tables.row."):
        return {**_tables_payload(e), **base}
    if event.startswith("deck.card."):
        return {**_deck_payload(e), **base}
    return dict(base)


# ------------------------------------------------------------------ Deck transitions


class DeckTransitions:
    """Deck sends one class for every change of a card, with only the card as it is now. The
    last `{done, stackId}` seen per card (bounded, oldest forgotten first) recovers two
    transitions: done turning true (`deck.card.completed`) and another stack
    (`deck.card.moved`, with `previousStackId`). A card not seen before (a restart, another
    replica, an eviction) gives `changed` alone: never a transition that did not happen."""

    def __init__(self, max_cards: int = 5000) -> None:
        self.max_cards = max_cards
        self._cards: dict[Any, tuple[Any, Any]] = {}

    def __len__(self) -> int:
        return len(self._cards)

    def _remember(self, card: Any, state: tuple[Any, Any]) -> None:
        self._cards.pop(card, None)
        self._cards[card] = state  # insertion order is recency order
        while len(self._cards) > self.max_cards:
            del self._cards[next(iter(self._cards))]

    def extra_events(self, event: str, payload: dict[str, Any]) -> list[str]:
        """The derived events for one delivery; annotates `payload` with previousStackId."""
        card = payload.get("cardId")
        if card is None:
            return []
        now = (payload.get("done"), payload.get("stackId"))
        if event == "deck.card.deleted":
            self._cards.pop(card, None)
            return []
        if event == "deck.card.created":
            self._remember(card, now)
            return []
        if event != "deck.card.changed":
            return []
        before = self._cards.get(card)
        self._remember(card, now)
        if before is None:
            return []
        was_done, was_stack = before
        if was_stack is not None:
            payload["previousStackId"] = was_stack
        extra = []
        if not was_done and now[0]:
            extra.append("deck.card.completed")
        if was_stack is not None and now[1] is not None and was_stack != now[1]:
            extra.append("deck.card.moved")
        return extra
