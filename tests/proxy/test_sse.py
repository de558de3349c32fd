"""Server-sent events as the relay tracks them (beeflow/proxy/sse.py): event boundaries in any
chunking, the last event's name, and the error event's text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from beeflow.proxy.sse import Boundary, ErrorEvents, EventTracker

_LINE = st.text(alphabet='abc: {}"', min_size=1, max_size=12).filter(lambda s: "\n" not in s)


_EVENT = st.lists(_LINE, min_size=1, max_size=3).map(lambda lines: "\n".join(lines) + "\n\n")


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(_EVENT, min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_boundary_is_exactly_the_end_of_an_event(events: list[str], cuts: list[int]) -> None:
    """Fed in arbitrary chunks, the tracker is at a boundary exactly where an event ended."""
    stream = "".join(events).encode()
    ends = {0}
    pos = 0
    for event in events:
        pos += len(event.encode())
        ends.add(pos)
    points = sorted({c for c in cuts if c < len(stream)} | {len(stream)})
    boundary = Boundary()
    start = 0
    for point in points:
        boundary.feed(stream[start:point])
        start = point
        assert boundary.at_boundary == (point in ends), (stream, point)


def test_boundary_line_endings() -> None:
    for stream, expected in [
        (b"", True),
        (b"data: x\r\n\r\n", True),
        (b"data: x\r\r", True),
        (b"data: x\n\r\n", True),
        (b"data: x\r\n", False),
        (b"data: x\n", False),
        (b"data: x\r\n\r", False),  # a CR may still be followed by its LF
        (b": keep-alive\n\n", True),
    ]:
        boundary = Boundary()
        boundary.feed(stream)
        assert boundary.at_boundary is expected, stream


def test_the_error_events_name_the_upstream_they_are_given() -> None:
    """The core knows no peer: the name in the message the UI shows comes from the options."""
    events = ErrorEvents(upstream_name="The Bee Flow service")
    assert events.disconnected() == (
        "upstream_disconnected",
        "The Bee Flow service stopped in the middle of the reply; it is incomplete",
    )
    assert events.idle(120.0) == (
        "upstream_idle",
        "The Bee Flow service sent nothing for 120 s; the reply was ended",
    )
    assert "Bee Flow" not in ErrorEvents().disconnected()[1]


def test_a_reply_is_unfinished_at_a_boundary_unless_its_last_event_was_final() -> None:
    events = ErrorEvents(final_events=frozenset({b"done"}))
    tracker = EventTracker()
    assert tracker.unfinished(events)  # nothing sent yet
    for chunk, unfinished in [
        (b"event: content\ndata: {}\n\n", True),
        (b"event: done\ndata: {}", False),  # inside the final event: no boundary
        (b"\n\n", False),  # after it: complete
        (b"event: content\ndata: {}\n\n", True),
    ]:
        tracker.boundary.feed(chunk)
        tracker.note_event_name(chunk)
        assert tracker.unfinished(events) is unfinished, chunk


def test_only_an_event_field_at_the_start_of_a_line_names_the_event() -> None:
    tracker = EventTracker()
    tracker.note_event_name(b'data: {"text": "event: done"}\n\n')
    assert tracker.last_event == b""
    tracker.note_event_name(b"event: first\n\nevent:second\n")
    assert tracker.last_event == b"second"
