"""The payloads, table by table, from deliveries recorded on the real Nextcloud 32.0.1 (upload,
rename, copy, delete, system tags, CalDAV) and from the apps' serialisers (Forms, Tables, Deck);
the Deck transition memory; and a property: no envelope makes the mapping fail."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beeflow.integrations.hookpayloads import (
    DeckTransitions,
    ical_fields,
    ical_moment,
    iso_ms,
    payload_for,
    user_relative,
)
from beeflow.nextcloud.hooks import EVENT_BY_CLASS

BOB = {"uid": "bob", "displayName": "Bob"}
T = 1796624908
WHEN = "2026-12-07T06:28:28.000Z"

# Envelopes as Nextcloud 32.0.1 delivered them (event part), from tests/integration's runs.
ICS = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//beeflow test//EN\r\nBEGIN:VEVENT\r\n"
    "UID:meet-123\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260105T100000Z\r\n"
    "DTEND:20260105T110000Z\r\nSUMMARY:Planning\\, round 2\r\nLOCATION:Room 1\r\n"
    'ATTENDEE;CN="Lee: PM";ROLE=REQ-PARTICIPANT:mailto:lee@example.com\r\n'
    "BEGIN:VALARM\r\nTRIGGER:-PT15M\r\nACTION:DISPLAY\r\nDESCRIPTION:x\r\nSUMMARY:Alarm\r\n"
    "END:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "OCP\\Files\\Events\\Node\\NodeCreatedEvent",
        {"node": {"id": 20, "path": "/bob/files"}},
        {"id": 20, "path": "/", "name": None, "extension": None, "owner": "bob", "link": None},
    ),
    (
        "OCP\\Files\\Events\\Node\\NodeWrittenEvent",
        {"node": {"id": 24, "path": "/bob/files/Docs/x.TXT"}},
        {"id": 24, "path": "/Docs/x.TXT", "name": "x.TXT", "extension": "txt", "kind": "file"},
    ),
    (
        "OCP\\Files\\Events\\Node\\NodeDeletedEvent",
        {"node": {"path": "/bob/files/Docs/z.txt"}},
        {"id": None, "path": "/Docs/z.txt", "name": "z.txt"},
    ),
    (
        "OCP\\Files\\Events\\Node\\NodeRenamedEvent",
        {
            "source": {"path": "/bob/files/Docs/x.TXT"},
            "target": {"id": 24, "path": "/bob/files/Docs/y.txt"},
        },
        {"id": 24, "path": "/Docs/y.txt", "oldPath": "/Docs/x.TXT", "sourceId": None},
    ),
    (
        "OCP\\Files\\Events\\Node\\NodeCopiedEvent",
        {
            "source": {"id": 24, "path": "/bob/files/Docs/y.txt"},
            "target": {"id": 44, "path": "/bob/files/Docs/z.txt"},
        },
        {"id": 44, "path": "/Docs/z.txt", "oldPath": "/Docs/y.txt", "sourceId": 24},
    ),
    (
        "OCP\\Files\\Events\\Node\\NodeCreatedEvent",
        {"node": {"id": 9, "path": "/bob/files_trashbin/files/a.txt.d1"}},
        {"path": "/bob/files_trashbin/files/a.txt.d1", "owner": None, "extension": "d1"},
    ),
    (
        "OCP\\SystemTag\\TagAssignedEvent",
        {"objectType": "files", "objectIds": ["24"], "tagIds": ["1", "x"]},
        {"objectType": "files", "objectIds": ["24"], "fileId": "24", "tagIds": [1, None]},
    ),
    (
        "OCP\\SystemTag\\TagUnassignedEvent",
        {"objectIds": [], "tagIds": []},
        {"objectType": "files", "objectIds": [], "fileId": None, "tagIds": [], "tagId": None},
    ),
    (
        "OCP\\Calendar\\Events\\CalendarObjectCreatedEvent",
        {
            "calendarId": 4,
            "calendarData": {"id": 4, "uri": "personal"},
            "shares": [],
            "objectData": {"uri": "meet-123.ics", "calendardata": ICS, "component": "vevent"},
        },
        {
            "uid": "meet-123",
            "objectUri": "meet-123.ics",
            "calendarId": 4,
            "calendarUri": "personal",
            "sourceCalendarId": None,
            "component": "vevent",
            "summary": "Planning, round 2",
            "startsAt": "2026-01-05T10:00:00.000Z",
            "endsAt": "2026-01-05T11:00:00.000Z",
            "location": "Room 1",
            "attendees": ["lee@example.com"],
        },
    ),
    (
        "OCP\\Calendar\\Events\\CalendarObjectMovedEvent",
        {
            "sourceCalendarId": 4,
            "sourceCalendarData": {"id": 4, "uri": "personal"},
            "targetCalendarId": 6,
            "targetCalendarData": {"id": 6, "uri": "work"},
            "objectData": {"uri": "m.ics"},
        },
        {"calendarId": 6, "calendarUri": "work", "sourceCalendarId": 4, "targetCalendarId": 6},
    ),
    (
        "OCA\\Forms\\Events\\FormSubmittedEvent",
        {
            "form": {"id": 3, "hash": "h4sh", "title": "Leave", "ownerId": "ann"},
            "submission": {"id": 11, "userId": "bob", "timestamp": T},
        },
        {"formId": 3, "formHash": "h4sh", "formTitle": "Leave", "submittedAt": WHEN},
    ),
    (
        "OCA\\Tables\\Event\\RowUpdatedEvent",
        {"tableId": 2, "rowId": 5, "values": {"1": "done"}, "previousValues": {"1": "open"}},
        {"tableId": 2, "rowId": 5, "values": {"1": "done"}, "previousValues": {"1": "open"}},
    ),
    (
        "OCA\\Deck\\Event\\CardCreatedEvent",
        {
            "card": {
                "id": 7,
                "title": "Ship",
                "stackId": 1,
                "boardId": 2,
                "labels": [{"title": "urgent"}, {"x": 1}],
                "assignedUsers": [{"participant": {"uid": "bob"}}, {"participant": {}}],
            }
        },
        {"cardId": 7, "labels": ["urgent"], "assignedUsers": ["bob"], "done": None},
    ),
]


@pytest.mark.parametrize(("php_class", "event", "expected"), CASES)
def test_each_delivery_maps_to_its_payload(
    php_class: str, event: dict[str, Any], expected: dict[str, Any]
) -> None:
    name = EVENT_BY_CLASS[php_class]
    envelope = {"event": {**event, "class": php_class}, "user": BOB, "time": T}
    payload = payload_for(name, envelope)
    assert {k: payload.get(k) for k in expected} == expected
    assert (payload["actor"], payload["actorName"], payload["datetime"]) == ("bob", "Bob", WHEN)
    json.dumps(payload)  # the body the service gets


def test_without_user_or_time_the_actor_is_null_and_the_time_now() -> None:
    before = time.time()
    payload = payload_for("file.new", {"event": {"node": {"path": "/a/files/b"}}, "user": None})
    assert payload["actor"] is None
    assert payload["actorName"] is None
    stamp = payload["datetime"]
    assert stamp.endswith("Z")
    assert stamp >= iso_ms(int(before))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/bob/files/a/b.txt", ("/a/b.txt", "bob")),
        ("bob/files", ("/", "bob")),
        ("/bob/files_versions/a.v1", ("/bob/files_versions/a.v1", None)),
        ("/appdata_x/preview", ("/appdata_x/preview", None)),
        (None, (None, None)),
        (7, (None, None)),
    ],
)
def test_paths_become_relative_to_the_users_files(raw: Any, expected: Any) -> None:
    assert user_relative(raw) == expected


@pytest.mark.parametrize(
    ("value", "params", "expected"),
    [
        ("20260105", {"VALUE": "DATE"}, "2026-01-05"),
        ("20260105T100000Z", {}, "2026-01-05T10:00:00.000Z"),
        ("20260105T100000", {"TZID": "Europe/Amsterdam"}, "2026-01-05T09:00:00.000Z"),
        ("20260705T100000", {"TZID": "Europe/Amsterdam"}, "2026-07-05T08:00:00.000Z"),
        ("20260105T100000", {"TZID": "W. Europe Standard Time"}, "2026-01-05T10:00:00"),
        ("20260105T100000", {}, "2026-01-05T10:00:00"),
        ("tomorrow", {}, None),
    ],
)
def test_ical_times(value: str, params: dict[str, str], expected: str | None) -> None:
    assert ical_moment(value, params) == expected


def test_ical_folding_escapes_and_tasks() -> None:
    text = (
        "BEGIN:VCALENDAR\nBEGIN:VTODO\nSUMMARY:Write the\n  report\\; then \\\\ rest\\nok\n"
        "DUE;VALUE=DATE:20260110\nEND:VTODO\nBEGIN:VEVENT\nSUMMARY:second\nEND:VEVENT\n"
        "END:VCALENDAR"
    )
    fields = ical_fields(text)
    assert fields["summary"] == "Write the report; then \\ rest\nok"
    assert fields["endsAt"] == "2026-01-10"
    assert ical_fields(None) == {
        "summary": None,
        "startsAt": None,
        "endsAt": None,
        "location": None,
        "attendees": [],
    }


def test_deck_memory_is_bounded_and_forgets_deleted_cards() -> None:
    deck = DeckTransitions(max_cards=3)
    for card in range(5):
        deck.extra_events("deck.card.created", {"cardId": card, "stackId": 1, "done": None})
    assert len(deck) == 3
    # Cards 0 and 1 were forgotten: a change of theirs is `changed` alone.
    assert deck.extra_events("deck.card.changed", {"cardId": 0, "stackId": 2, "done": "x"}) == []
    assert deck.extra_events("deck.card.changed", {"cardId": 4, "stackId": 2, "done": "x"}) == [
        "deck.card.completed",
        "deck.card.moved",
    ]
    deck.extra_events("deck.card.deleted", {"cardId": 4})
    assert deck.extra_events("deck.card.changed", {"cardId": 4, "stackId": 3, "done": None}) == []
    assert deck.extra_events("deck.card.changed", {"cardId": None}) == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    event=st.sampled_from(sorted(set(EVENT_BY_CLASS.values()))),
    inner=st.dictionaries(
        st.sampled_from(
            [
                "node",
                "source",
                "target",
                "objectIds",
                "tagIds",
                "objectData",
                "calendarData",
                "calendarId",
                "form",
                "submission",
                "values",
                "card",
            ]
        ),
        JSON,
    ),
    user=JSON,
    stamp=JSON,
)
def test_no_envelope_makes_the_mapping_fail(
    event: str, inner: dict[str, Any], user: Any, stamp: Any
) -> None:
    payload = payload_for(event, {"event": inner, "user": user, "time": stamp})
    json.dumps(payload)
    assert set(payload) >= {"actor", "actorName", "datetime"}


@pytest.mark.parametrize(
    ("event", "inner", "expected"),
    [
        ("file.tagged", {"objectIds": 1, "tagIds": "x"}, {"objectIds": [], "tagIds": []}),
        ("file.new", {"node": 7}, {"path": None, "id": None}),
        (
            "file.new",
            {"source": None, "target": None, "node": {"path": "/a/files/n.md"}},
            {"path": "/n.md"},
        ),
        (
            "deck.card.changed",
            {"card": {"id": 1, "labels": 5, "assignedUsers": "bob"}},
            {"labels": [], "assignedUsers": []},
        ),
        ("tables.row.added", {"values": "x", "previousValues": 3}, {"values": {}}),
        ("calendar.event.created", {"objectData": {"calendardata": 12}}, {"summary": None}),
    ],
)
def test_odd_shapes_become_nulls_and_empty_lists(
    event: str, inner: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Found by the property below: a number where a list belongs made the mapping fail."""
    payload = payload_for(event, {"event": inner})
    assert {k: payload[k] for k in expected} == expected
