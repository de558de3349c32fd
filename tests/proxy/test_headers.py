"""The header rules of the proxies (beeflow/proxy/headers.py): filters, named sets, media types,
and the one refusal of encoded request bodies."""

from __future__ import annotations

from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from beeflow.errors import BadRequest
from beeflow.proxy import headers


def test_filter_keeps_repeats_and_order() -> None:
    src = CIMultiDict(
        [("Set-Cookie", "a=1"), ("X-A", "1"), ("Set-Cookie", "b=2"), ("Connection", "close")]
    )
    out = headers.filter_headers(src, headers.HOP_BY_HOP)
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
    out = headers.filter_headers(src, headers.HOP_BY_HOP, prefixes=headers.APPAPI_PREFIXES)
    assert list(out.items()) == [("Keep", "yes")]
    kept_empty = headers.filter_headers(src, drop_empty=False, prefixes=("aa-", "ex-app-"))
    assert kept_empty.getall("Content-Type") == [""]


def test_filter_is_case_insensitive_for_named_sets() -> None:
    src = {"AUTHORIZATION-APP-API": "x", "Cookie": "c", "authorization": "Basic y", "Accept": "a"}
    out = headers.filter_headers(src, headers.APPAPI, headers.CREDENTIALS)
    assert dict(out) == {"Accept": "a"}


def test_named_sets_are_lower_case() -> None:
    for group in (
        headers.HOP_BY_HOP,
        headers.REQUEST_FRAMING,
        headers.RESPONSE_FRAMING,
        headers.CREDENTIALS,
        headers.BROWSER_CONTEXT,
        headers.FORWARDING,
        headers.APPAPI,
    ):
        assert all(name == name.lower() for name in group)


def test_media_type_checks() -> None:
    assert headers.is_event_stream({"Content-Type": "text/event-stream; charset=utf-8"})
    assert headers.is_event_stream({"content-type": "Text/Event-Stream"})
    assert not headers.is_event_stream({"Content-Type": "application/json"})
    assert headers.is_encoded({"Content-Encoding": "gzip"})
    assert not headers.is_encoded({"Content-Encoding": "identity"})
    assert not headers.is_encoded({})


def _request(*encodings: str, body: bool = True) -> web.Request:
    """A request whose headers announce a body (only its presence matters: nothing is read)."""
    fields = [("Content-Encoding", value) for value in encodings]
    if not body:
        return make_mocked_request("PUT", "/x", headers=CIMultiDict(fields))
    fields.append(("Content-Length", "4"))
    return make_mocked_request("PUT", "/x", headers=CIMultiDict(fields), payload=mock.Mock())


@pytest.mark.parametrize(
    "encodings",
    [("gzip",), ("br",), ("identity, gzip",), ("identity", "gzip"), ("GZIP",), (" deflate ",)],
    ids=["gzip", "br", "list", "two-headers", "upper", "spaces"],
)
def test_an_encoded_body_is_refused_in_any_of_its_forms(encodings: tuple[str, ...]) -> None:
    """Both proxies refuse through this one check: every value and list item counts, so a
    second header or a list cannot smuggle an encoding past an `identity` first."""
    with pytest.raises(BadRequest) as info:
        headers.refuse_encoded_body(_request(*encodings))
    assert info.value.instance_code == "content_encoding_unsupported"
    assert info.value.instance_status == 415


@pytest.mark.parametrize("encodings", [(), ("identity",), ("",), ("identity, identity",)])
def test_identity_or_no_encoding_passes(encodings: tuple[str, ...]) -> None:
    headers.refuse_encoded_body(_request(*encodings))


def test_a_label_without_a_body_is_not_a_compressed_body() -> None:
    headers.refuse_encoded_body(_request("gzip", body=False))
