"""The pure parts of the streaming core: header filters, media types, SSE event boundaries."""

from __future__ import annotations

from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from beeflow.proxy import streaming
from beeflow.proxy.streaming import _Boundary


def test_filter_keeps_repeats_and_order() -> None:
    src = CIMultiDict(
        [("Set-Cookie", "a=1"), ("X-A", "1"), ("Set-Cookie", "b=2"), ("Connection", "close")]
    )
    out = streaming.filter_headers(src, streaming.HOP_BY_HOP)
    assert list(out.items()) == [("Set-Cookie", "a=1"), ("X-A", "1"), ("Set-Cookie", "b=2")]


def test_filter_drops_what_connection_names_prefixes_and_empty_values() -> None:
    src = CIMultiDict(
        [
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "p"),
            ("AA-Something-New", "1"),
            ("EX-APP-Whatever", "2"),
            ("Content-Type", ""),
            ("Keep", "yes"),
        ]
    )
    out = streaming.filter_headers(src, streaming.HOP_BY_HOP, prefixes=streaming.APPAPI_PREFIXES)
    assert list(out.items()) == [("Keep", "yes")]
    kept_empty = streaming.filter_headers(src, drop_empty=False, prefixes=("aa-", "ex-app-"))
    assert kept_empty.getall("Content-Type") == [""]


def test_filter_is_case_insensitive_for_named_sets() -> None:
    src = {"AUTHORIZATION-APP-API": "x", "Cookie": "c", "authorization": "Basic y", "Accept": "a"}
    out = streaming.filter_headers(src, streaming.APPAPI, streaming.CREDENTIALS)
    assert dict(out) == {"Accept": "a"}


def test_named_sets_are_lower_case() -> None:
    for group in (
        streaming.HOP_BY_HOP,
        streaming.REQUEST_FRAMING,
        streaming.RESPONSE_FRAMING,
        streaming.CREDENTIALS,
        streaming.BROWSER_CONTEXT,
        streaming.FORWARDING,
        streaming.APPAPI,
    ):
        assert all(name == name.lower() for name in group)


def test_media_type_checks() -> None:
    assert streaming.is_event_stream({"Content-Type": "text/event-stream; charset=utf-8"})
    assert streaming.is_event_stream({"content-type": "Text/Event-Stream"})
    assert not streaming.is_event_stream({"Content-Type": "application/json"})
    assert streaming.is_encoded({"Content-Encoding": "gzip"})
    assert not streaming.is_encoded({"Content-Encoding": "identity"})
    assert not streaming.is_encoded({})


def test_outbound_body_replayability() -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b""

    assert streaming.NO_BODY.replayable
    assert streaming.OutboundBody(b"x", 1).replayable
    stream = gen()
    assert not streaming.OutboundBody(stream, None).replayable


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
    boundary = _Boundary()
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
        boundary = _Boundary()
        boundary.feed(stream)
        assert boundary.at_boundary is expected, stream
