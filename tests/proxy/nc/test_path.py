"""The /nc target checks alone (pure): allow-list, traversal corpus, Hypothesis properties, the
signature path candidates and the PHP query hazards."""

from __future__ import annotations

import posixpath
from urllib.parse import quote, unquote, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from beeflow.proxy.nc.path import (
    ALLOWED_PREFIXES,
    PathRejected,
    check_target,
    js_decode_uri_component,
    php_query_hazards,
    portability_warnings,
    signature_candidates,
)

ACCEPTED = [
    "/nc/ocs/v2.php/cloud/users/alice?format=json",
    "/nc/ocs/v1.php/apps/files_sharing/api/v1/shares?path=%2FDocuments&reshares=true",
    "/nc/remote.php/dav/files/bob/",
    "/nc/remote.php/dav/files/bob/a%40b%20c",
    "/nc/remote.php/dav/files/bob/caf%C3%A9.txt",
    "/nc/remote.php/dav/calendars/bob/personal/event-1%40example.com.ics",
    "/nc/remote.php/dav/files/bob/100%25.txt",
    "/nc/remote.php/dav/files/bob/...hidden",
    "/nc/remote.php/dav/files/bob/a..b/c.d",
    "/nc/index.php/apps/mail/api/accounts",
    "/nc/index.php/apps/deck/api/v1.0/boards?details=true",
]

NOT_PROXIED = [
    "/nc/",
    "/nc",
    "/nc/status.php",
    "/nc/index.php/login",
    "/nc/index.php/settings/admin",
    "/nc/index.php/apps",
    "/nc/ocs",
    "/nc/remote.php/webdav/x",
    "/nc/remote.php/dav",
    "/nc/public.php/dav/files/token/",
    "/nc/cron.php",
    "/nc/OCS/v2.php/cloud/users",
    "/nc/%6fcs/v2.php/cloud/users",
    "/nc/remote.php%2fdav/files/bob",
    "/nc//ocs/v2.php/x",
    "/ocs/v2.php/cloud/users",
    "/ncx/ocs/v2.php/cloud/users",
]

# Every one must be refused (400), whatever the encoding.
TRAVERSAL = [
    "/nc/ocs/../index.php/login",
    "/nc/ocs/v2.php/..",
    "/nc/ocs/./v2.php",
    "/nc/ocs/%2e%2e/index.php",
    "/nc/ocs/%2E%2E/index.php",
    "/nc/ocs/.%2e/index.php",
    "/nc/ocs/%2e./index.php",
    "/nc/ocs/%252e%252e/index.php",
    "/nc/ocs/%252E%252E/index.php",
    "/nc/ocs/%25252e%25252e/index.php",
    "/nc/ocs/%2525252e%2525252e/index.php",
    "/nc/remote.php/dav/files/bob/..%2f..%2fadmin",
    "/nc/remote.php/dav/files/bob/%2e%2e%2f%2e%2e%2fadmin",
    "/nc/remote.php/dav/files/bob/a%2Fb",
    "/nc/remote.php/dav/files/bob/a%252Fb",
    "/nc/remote.php/dav/files/bob/..\\..\\admin",
    "/nc/remote.php/dav/files/bob/%5c..%5cadmin",
    "/nc/remote.php/dav/files/bob/%255c..",
    "/nc/remote.php/dav/files/bob/x%00.txt",
    "/nc/remote.php/dav/files/bob/x%2500.txt",
    "/nc/remote.php/dav/files/bob/x%0d%0aSet-Cookie:%20a",
    "/nc/remote.php/dav/files/bob/%c0%ae%c0%ae/admin",
    "/nc/remote.php/dav/files/bob/%ff",
    "/nc/remote.php/dav/files/bob/a b",
    "/nc/remote.php/dav/files/bob/caf\u00e9",
    "/nc/remote.php/dav/files/bob/#frag",
    "/nc/remote.php/dav/files/bob/x\x00",
    "/nc/remote.php/dav/files/bob/x\tz",
]


@pytest.mark.parametrize("target", ACCEPTED)
def test_accepted_targets(target: str) -> None:
    checked = check_target(target)
    assert checked.upstream == target[3:]
    assert checked.raw == target
    assert checked.candidates[0] == unquote(target)
    assert checked.candidates[-1] == target
    assert checked.decoded_path[0]
    assert checked.decoded_path[-1] == ("%" not in checked.path)
    assert len(checked.decoded_path) == len(checked.candidates)


@pytest.mark.parametrize("target", NOT_PROXIED)
def test_not_proxied_is_404(target: str) -> None:
    with pytest.raises(PathRejected) as info:
        check_target(target)
    assert (info.value.status, info.value.code) == (404, "path_not_proxied")


@pytest.mark.parametrize("target", TRAVERSAL)
def test_traversal_corpus_is_refused(target: str) -> None:
    with pytest.raises(PathRejected) as info:
        check_target(target)
    assert info.value.status == 400
    assert info.value.code in ("path_traversal", "path_invalid")


def test_query_does_not_count_as_path() -> None:
    """Dots and slashes in the query are data, not traversal; the prefix is on the path."""
    checked = check_target("/nc/ocs/v2.php/x?path=../../etc&dir=%2F..%2F")
    assert checked.query == "path=../../etc&dir=%2F..%2F"
    with pytest.raises(PathRejected):
        check_target("/nc/status.php?x=/nc/ocs/")
    with pytest.raises(PathRejected):
        check_target("/nc/ocs/v2.php/x?bad=a b")


def test_overlong_target_is_refused() -> None:
    with pytest.raises(PathRejected) as info:
        check_target("/nc/ocs/" + "a" * 9000)
    assert info.value.code == "path_invalid"


# ------------------------------------------------------------ Hypothesis

_DOT = st.sampled_from([".", "%2e", "%2E", "%252e", "%252E", "%25252e"])
_SLASH = st.sampled_from(["/", "%2f", "%2F", "%252f", "\\", "%5c", "%5C", "%255c"])
_TOKENS = st.one_of(
    _DOT,
    _SLASH,
    st.sampled_from(
        [
            "a",
            "b",
            "..",
            "%00",
            "%25",
            "%",
            "%c3%a9",
            "%C3",
            "%20",
            "%40",
            "@",
            "~",
            "+",
            ";",
            "%3b",
        ]
    ),
    st.sampled_from(["ocs", "remote.php", "dav", "index.php", "apps", "nc", "files", "v2.php"]),
)
_PREFIXES = st.sampled_from(
    ["/nc/ocs/", "/nc/remote.php/dav/", "/nc/index.php/apps/", "/nc/", "/nc", "/", ""]
)


def _levels(path: str) -> list[bytes]:
    """The path and every further percent-decoding of it until it stops changing."""
    out = [path.encode("utf-8", "surrogateescape")]
    for _ in range(10):
        nxt = unquote_to_bytes(out[-1])
        if nxt == out[-1]:
            break
        out.append(nxt)
    return out


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=_PREFIXES, tokens=st.lists(_TOKENS, max_size=12))
@example(prefix="/nc/ocs/", tokens=["%252e", "%252e", "/", "x"])
@example(prefix="/nc/remote.php/dav/", tokens=["..", "%5c", "a"])
def test_accepted_paths_cannot_escape(prefix: str, tokens: list[str]) -> None:
    """Whatever is accepted stays under an allowed prefix in EVERY decoding: no '.'/'..'
    segment, no backslash or control byte, no slash that decoding created, and normalising the
    path (what a lax server would do) changes nothing."""
    target = prefix + "".join(tokens)
    try:
        checked = check_target(target)
    except PathRejected:
        return
    raw_slashes = target.count("/")
    allowed = tuple(b"/nc" + p.encode() for p in ALLOWED_PREFIXES)
    for level in _levels(checked.path):
        assert level.startswith(allowed)
        assert b"\\" not in level
        assert not any(b < 0x20 or b == 0x7F for b in level)
        assert level.count(b"/") == raw_slashes
        segments = level.split(b"/")
        assert b".." not in segments
        assert b"." not in segments
        # what a server that normalises would make of it stays inside too
        normalised = posixpath.normpath(level.decode("utf-8", "surrogateescape")) + "/"
        assert normalised.startswith(tuple("/nc" + p for p in ALLOWED_PREFIXES))
    assert checked.upstream == target[3:]


@settings(max_examples=150)
@given(
    prefix=st.sampled_from(["/nc/ocs/", "/nc/remote.php/dav/files/bob/", "/nc/index.php/apps/"]),
    before=st.lists(st.sampled_from(["a", "b", "x.y", "%20"]), max_size=3),
    dots=st.tuples(_DOT, _DOT),
    after=st.sampled_from(["", "/", "/admin", "%2fadmin"]),
)
def test_any_encoding_of_dot_dot_is_refused(
    prefix: str, before: list[str], dots: tuple[str, str], after: str
) -> None:
    target = prefix + "/".join([*before, dots[0] + dots[1]]) + after
    with pytest.raises(PathRejected) as info:
        check_target(target)
    assert info.value.status == 400


_SAFE_TEXT = st.text(
    st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\", min_codepoint=0x20
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))


@settings(max_examples=150)
@given(
    prefix=st.sampled_from(["/nc/ocs/", "/nc/remote.php/dav/files/bob/", "/nc/index.php/apps/"]),
    names=st.lists(_SAFE_TEXT, min_size=1, max_size=4),
)
def test_properly_encoded_names_are_accepted(prefix: str, names: list[str]) -> None:
    """Any file name a user can have (no '/', '\\', controls; not '.'/'..'), percent-encoded
    once, is accepted; its decoded signature candidate is the name itself, unless a further
    decoding of it would form traversal (a name like '%2e%2e' is refused: rejected, never
    normalised)."""
    target = prefix + "/".join(quote(n, safe="") for n in names)
    try:
        checked = check_target(target)
    except PathRejected:
        assert any("%" in n for n in names)
        return
    assert checked.candidates[0] == prefix + "/".join(names)


# ------------------------------------------------------------ candidates and decoding


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/nc/a%40b", "/nc/a@b"),
        ("%E4%BD%A0", "\u4f60"),
        ("a+b", "a+b"),
        ("%2B", "+"),
        ("%00", "\x00"),
        ("%", None),
        ("%zz", None),
        ("%C3", None),
        ("%ED%A0%80", None),
        ("%C0%AE", None),
        ("caf\u00e9%20x", "caf\u00e9 x"),
    ],
)
def test_js_decode_uri_component(text: str, expected: str | None) -> None:
    assert js_decode_uri_component(text) == expected


def test_signature_candidates_decoded_first_then_raw() -> None:
    """Path forms x query forms: fully decoded first, fully raw last, the mixed ones between."""
    assert signature_candidates("/nc/a%40b%20c?x=%2F") == (
        "/nc/a@b c?x=/",
        "/nc/a@b c?x=%2F",
        "/nc/a%40b%20c?x=/",
        "/nc/a%40b%20c?x=%2F",
    )
    assert signature_candidates("/nc/a%40?x=1") == ("/nc/a@?x=1", "/nc/a%40?x=1")
    assert signature_candidates("/nc/a?x=%41") == ("/nc/a?x=A", "/nc/a?x=%41")
    assert signature_candidates("/nc/bad%zz?x=%41") == ("/nc/bad%zz?x=A", "/nc/bad%zz?x=%41")
    # A path that cannot be decoded has no decoded form to accept through the PHP proxy.
    assert check_target("/nc/ocs/bad%zz?x=%41").decoded_path == (False, False)
    assert check_target("/nc/ocs/a%40?x=%41").decoded_path == (True, True, False, False)
    assert signature_candidates("/nc/plain?x=1") == ("/nc/plain?x=1",)
    assert signature_candidates("/nc/bad%zz") == ("/nc/bad%zz",)


# ------------------------------------------------------------ what PHP does to queries


@pytest.mark.parametrize(
    ("query", "hazards"),
    [
        ("format=json&limit=10", ()),
        ("e%40=%40&search=caf%C3%A9", ()),
        ("a[x]=1", ()),
        ("a=1&a=2", ("repeated_key",)),
        ("x.y=1", ("dot_or_space_in_key",)),
        ("b%20c=1", ("dot_or_space_in_key", "space")),
        ("arr[]=x&arr[]=y", ("array_key",)),
        ("arr%5B0%5D=x&arr%5B1%5D=y", ("array_key",)),
        ("empty", ("bare_key",)),
        ("empty=", ("empty_value",)),
        ("q=a+b", ("space",)),
        ("q=a%20b", ("space",)),
    ],
)
def test_php_query_hazards(query: str, hazards: tuple[str, ...]) -> None:
    assert php_query_hazards(query) == hazards


def test_portability_warnings() -> None:
    assert portability_warnings("/nc/ocs/v2.php/cloud/users?format=json") == []
    assert any("%2F" in w for w in portability_warnings("/nc/remote.php/dav/files/b/a%2Fb"))
    assert any("@" in w for w in portability_warnings("/nc/remote.php/dav/files/b/a%40b"))
    assert any("repeated_key" in w for w in portability_warnings("/nc/ocs/x?a=1&a=2"))
    assert any("not valid" in w for w in portability_warnings("/nc/ocs/x%C3"))
    literal = portability_warnings("/nc/remote.php/dav/files/b/My%2520Report.pdf")
    assert any("path_ambiguous_via_php_proxy" in w for w in literal)
    assert not any("%25" in w for w in portability_warnings("/nc/ocs/x?q=100%25"))
