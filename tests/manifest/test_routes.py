"""The manifest's routes under all three matchers of contract 4.2: every (path, verb, user level)
gets the access the seeds' route table wants, and no answer depends on route order."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import attrs
import pytest
from aiohttp.web_urldispatcher import AbstractRoute
from hypothesis import given, settings
from hypothesis import strategies as st

from beeflow import keys
from beeflow.app import make_app
from beeflow.appapi import Access
from beeflow.config import Config
from tests.manifest.manifest import (
    ADMIN,
    LEVEL_NAMES,
    PUBLIC,
    USER,
    Route,
    harp,
    new_php,
    old_php,
    routes,
)

Matcher = Callable[[list[Route], str, str, int], Route | None]

ALL_VERBS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "PROPFIND", "MKCOL", "HEAD")
CRUD: Final = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH"})
NC_VERBS: Final = CRUD | {
    "PROPFIND",
    "REPORT",
    "MKCOL",
    "MOVE",
    "COPY",
    "PROPPATCH",
    "SEARCH",
    "LOCK",
    "UNLOCK",
    "OPTIONS",
    "HEAD",
    "MKCALENDAR",
}
GET: Final = frozenset({"GET"})
GET_POST: Final = frozenset({"GET", "POST"})
ANON, A_USER, AN_ADMIN = PUBLIC, USER, ADMIN  # the caller's level: anonymous, user, admin
CALLERS: Final = (ANON, A_USER, AN_ADMIN)


@attrs.frozen
class Row:
    """A path, the level the seeds want (None: not routed), and the verbs the route lists.
    `harp_level` differs only where HaRP's case-sensitive match sees no route at all."""

    path: str
    level: int | None
    verbs: frozenset[str] = frozenset()
    case_variant: bool = False


# The seeds' route table ("Routes and access levels"), with paths a browser, AppAPI or the
# Bee Flow service really sends, and near misses that must not be routed.
TABLE: Final = (
    Row("/", PUBLIC, GET),
    Row("/index.html", PUBLIC, GET),
    Row("/favicon.ico", PUBLIC, GET),
    Row("/assets/index-4f2a9c.js", PUBLIC, GET),
    Row("/assets/fonts/inter.woff2", PUBLIC, GET),
    Row("/js/embed.js", PUBLIC, GET),
    Row("/img/app.svg", PUBLIC, GET),
    Row("/bee-flow-logo.png", PUBLIC, GET),
    Row("/bee-flow-logo-dark.svg", PUBLIC, GET),
    Row("/BeeFlow-logo.png", PUBLIC, GET),
    Row("/api/ai/chat/direct/stream", USER, CRUD),
    Row("/api/agents/7/chat/stream", USER, CRUD),
    Row("/api/", USER, CRUD),
    Row("/auth/me", USER, CRUD),
    Row("/auth/oauth/google/callback", USER, CRUD),
    Row("/heartbeat", PUBLIC, GET),
    Row("/init", ADMIN, frozenset({"POST"})),
    Row("/enabled", ADMIN, frozenset({"PUT"})),
    Row("/setup", ADMIN, GET_POST),
    Row("/setup/", ADMIN, GET_POST),
    Row("/setup/status", ADMIN, GET_POST),
    Row("/setup/test", ADMIN, GET_POST),
    Row("/setup/verify-email-code", ADMIN, GET_POST),
    Row("/setup/resend-email-code", ADMIN, GET_POST),
    Row("/setup/apply-pairing-code", ADMIN, GET_POST),
    Row("/setup/rotate-tenant-key", ADMIN, GET_POST),
    Row("/setup/request-verification-code", ADMIN, GET_POST),
    Row("/webhook/nc-events", ADMIN, frozenset({"POST"})),
    Row("/nc/remote.php/dav/files/bob/", PUBLIC, NC_VERBS),
    Row("/nc/ocs/v2.php/cloud/users/alice", PUBLIC, NC_VERBS),
    Row("/nc/index.php/apps/deck/api/v1.0/boards", PUBLIC, NC_VERBS),
    # near misses: no route, 404 for everyone
    Row("/api", None),
    Row("/auth", None),
    Row("/nc", None),
    Row("/ncx/ocs/", None),
    Row("/webhook", None),
    Row("/heartbeat/", None),
    Row("/heartbeats", None),
    Row("/init/x", None),
    Row("/enabledx", None),
    Row("/setup/statusx", None),
    Row("/setup/diagnostics", None),
    Row("/setup/verify-email-code/", None),
    Row("/setup/verify-email", None),
    Row("/setup/rotate-tenant-keys", None),
    Row("/setup/apply-pairing-code/x", None),
    Row("/setup/request-verification-code/", None),
    Row("/setup/request-verification", None),
    Row("/setup/test/rotate-tenant-key", None),
    Row("/setup/x/status", None),
    Row("/index.htm", None),
    Row("/favicon.icon", None),
    Row("/static/app.js", None),
    Row("/hooks/nextcloud", None),
    Row("/xapi/x", None),
    Row("/v1/api/x", None),
    # PHP matches case-insensitively, HaRP does not: the connector's own router is
    # case-sensitive, so these reach nothing there either.
    Row("/API/x", USER, CRUD, case_variant=True),
    Row("/Setup/status", ADMIN, GET_POST, case_variant=True),
    Row("/setup/Rotate-Tenant-Key", ADMIN, GET_POST, case_variant=True),
    Row("/NC/ocs/v2.php/cloud/capabilities", PUBLIC, NC_VERBS, case_variant=True),
    Row("/HEARTBEAT", PUBLIC, GET, case_variant=True),
)

MANIFEST: Final = routes()


def expected(row: Row, matcher: str, verb: str, caller: int) -> bool:
    """Allowed? PHP matchers check the verb; HaRP ignores it and is case-sensitive."""
    if row.level is None:
        return False
    if matcher == "harp":
        return not row.case_variant and caller >= row.level
    return verb in row.verbs and caller >= row.level


MATCHERS: Final[dict[str, Matcher]] = {"old_php": old_php, "new_php": new_php, "harp": harp}


@pytest.mark.parametrize("matcher", sorted(MATCHERS))
@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.path)
def test_table_under_each_matcher(row: Row, matcher: str) -> None:
    match = MATCHERS[matcher]
    wrong = []
    for verb in ALL_VERBS:
        for caller in CALLERS:
            got = match(MANIFEST, row.path, verb, caller) is not None
            if got != expected(row, matcher, verb, caller):
                wrong.append(f"{verb} as {LEVEL_NAMES[caller]}: allowed={got}")
    assert not wrong, f"{matcher} {row.path}: " + "; ".join(wrong)


@pytest.mark.parametrize("row", [r for r in TABLE if r.level is not None], ids=lambda r: r.path)
def test_the_route_that_serves_a_path_has_the_seeds_level(row: Row) -> None:
    """Not only allowed/denied: the route doing it carries the seeds' level and verbs."""
    verb = sorted(row.verbs)[0]
    for name, match in MATCHERS.items():
        if name == "harp" and row.case_variant:
            continue
        route = match(MANIFEST, row.path, verb, ADMIN)
        assert route is not None, (name, row.path)
        assert route.access == row.level, (name, row.path, route.url)
        assert set(route.verb_list) == set(row.verbs), (name, row.path, route.url)


@pytest.mark.parametrize("row", [r for r in TABLE if r.level is not None], ids=lambda r: r.path)
def test_exactly_one_route_matches_each_path(row: Row) -> None:
    """Disjoint routes: order can never decide, so AppAPI's fall-through change is moot."""
    path = row.path.lower()
    hits = [r.url for r in MANIFEST if re.match(f"^(?:{r.url})", path, re.IGNORECASE)]
    assert len(hits) == 1, (row.path, hits)


def test_bare_path_fallback_changes_nothing() -> None:
    for row in TABLE:
        for verb in ALL_VERBS:
            for caller in CALLERS:
                with_fb = new_php(MANIFEST, row.path, verb, caller, bare_fallback=True)
                without = new_php(MANIFEST, row.path, verb, caller, bare_fallback=False)
                assert with_fb == without, (row.path, verb, caller)


# ------------------------------------------------------------ properties over many paths

SEGMENTS: Final = (
    "",
    "api",
    "auth",
    "nc",
    "setup",
    "status",
    "test",
    "verify-email-code",
    "rotate-tenant-key",
    "request-verification-code",
    "init",
    "enabled",
    "heartbeat",
    "webhook",
    "assets",
    "js",
    "img",
    "index.html",
    "favicon.ico",
    "bee-flow-logo.png",
    "ocs",
    "remote.php",
    "x",
    "API",
    "Setup",
    "%2F",
    "a.b",
)
paths = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash else ""),
    st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=4),
    st.booleans(),
) | st.text(alphabet="abcdefghinpstuvwx/._-", max_size=24).map(lambda s: "/" + s)


@settings(max_examples=400, deadline=None)
@given(path=paths, verb=st.sampled_from(ALL_VERBS), caller=st.sampled_from(CALLERS))
def test_old_and_new_php_agree_everywhere(path: str, verb: str, caller: int) -> None:
    """No request's fate depends on 32.0.0's fall-through."""
    assert old_php(MANIFEST, path, verb, caller) == new_php(MANIFEST, path, verb, caller)


@settings(max_examples=400, deadline=None)
@given(path=paths, caller=st.sampled_from(CALLERS))
def test_harp_agrees_with_php_on_the_verbs_a_route_lists(path: str, caller: int) -> None:
    """HaRP ignores verbs: it admits exactly what some listed verb admits in PHP."""
    if path != path.lower():
        return  # HaRP is case-sensitive, PHP is not (the connector's router is case-sensitive)
    # Without the deprecated bare-path fallback: with it, "//" reaches the shell root in PHP.
    php = any(
        new_php(MANIFEST, path, verb, caller, bare_fallback=False)
        for verb in sorted(NC_VERBS | {"HEAD"})
    )
    assert (harp(MANIFEST, path, "GET", caller) is not None) == php


@settings(max_examples=300, deadline=None)
@given(path=paths, verb=st.sampled_from(ALL_VERBS))
def test_more_privilege_never_loses_access(path: str, verb: str) -> None:
    for match in MATCHERS.values():
        allowed = [match(MANIFEST, path, verb, c) is not None for c in CALLERS]
        assert allowed == sorted(allowed), (path, verb, allowed)


# ------------------------------------------------------------ the matchers are faithful


def test_matchers_reproduce_the_measured_fall_through() -> None:
    """nextcloud32-observed.md: ADMIN `^api/admin/.*$` then USER `^api/.*$`: on 32.0.0 bob (not
    an admin) gets 200 on api/admin/x (fall-through); later builds answer 404."""
    table = [Route(r"^api\/admin\/.*$", "GET", ADMIN), Route(r"^api\/.*$", "GET", USER)]
    assert old_php(table, "/api/admin/x", "GET", USER) == table[1]
    assert new_php(table, "/api/admin/x", "GET", USER) is None
    assert harp(table, "/api/admin/x", "GET", USER) is None  # `^api` needs the bare path
    assert old_php(table, "/api/admin/x", "GET", ADMIN) == table[0]


def test_matchers_reproduce_the_unescaped_slash_failure() -> None:
    """Contract 4.2: an unescaped `/` ends the old PHP pattern, so `^/public$` never matched
    there and worked only through HaRP."""
    table = [Route("^/public$", "GET", PUBLIC)]
    assert old_php(table, "/public", "GET", PUBLIC) is None
    assert new_php(table, "/public", "GET", PUBLIC) == table[0]
    assert harp(table, "/public", "GET", PUBLIC) == table[0]


def test_old_php_verb_check_is_a_substring_test() -> None:
    table = [Route(r"^\/?x$", "GET,POST", PUBLIC)]
    assert old_php(table, "/x", "post", PUBLIC) == table[0]
    assert old_php(table, "/x", "PUT", PUBLIC) is None
    assert harp(table, "/x", "PUT", PUBLIC) == table[0]


# ------------------------------------------------------------ the connector agrees

# Paths AppAPI calls server-side (requestToExApp), never through the proxy route matcher.
APPAPI_DIRECT: Final = ("/trigger", "/hooks/")


SAMPLES: Final = tuple(r.path for r in TABLE if r.level is not None and not r.case_variant)


def _samples(route: AbstractRoute) -> list[str]:
    """Paths from TABLE this aiohttp route would serve (its resource's own pattern decides)."""
    info = route.resource.get_info() if route.resource is not None else {}
    pattern = info.get("pattern")
    if isinstance(pattern, re.Pattern):
        return [p for p in SAMPLES if pattern.fullmatch(p)]
    return [p for p in SAMPLES if p == info.get("path")] or [str(info.get("path", ""))]


def test_every_connector_route_has_the_manifests_level() -> None:
    """Each route the app registers through add_route is reachable through the manifest with the
    same access level (AppAPI's gate and the connector's own check agree)."""
    config = Config.from_env(
        {
            "APP_SECRET": "s" * 32,
            "NEXTCLOUD_URL": "http://nc.invalid",
            "BEEFLOW_TENANT_KEY": "k" * 32,
        }
    )
    app = make_app(config, run_at_boot=False)
    problems = []
    for route, policy in app[keys.ROUTE_POLICIES].items():
        method = route.method if route.method not in ("*", "HEAD") else "GET"
        samples = _samples(route)
        if not samples:
            problems.append(f"{method} {route.resource}: no sample path in TABLE; add one")
        for path in samples:
            if path.startswith(APPAPI_DIRECT):
                continue
            served = new_php(MANIFEST, path, method, ADMIN)
            if served is None:
                problems.append(f"{method} {path}: no manifest route (add one to appinfo/info.xml)")
            elif Access(served.access) is not policy.access:
                problems.append(
                    f"{method} {path}: manifest {LEVEL_NAMES[served.access]}, "
                    f"connector {policy.access.name}"
                )
    assert not problems
