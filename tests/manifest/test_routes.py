"""The manifest's routes under all three matchers of contract 4.2: every (path, verb, user level)
gets the access the seeds' route table wants, and no answer depends on route order."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Final

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import AbstractRoute
from hypothesis import given, settings
from hypothesis import strategies as st

from beeflow.app import make_app
from beeflow.config import Config
from beeflow.proxy import service as saas
from beeflow.web.auth import ROUTE_POLICIES, Access
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
    """A path, the level of the connector-owned route that serves it (None: the USER catch-all,
    i.e. the path belongs to the service), and the verbs that route lists."""

    path: str
    level: int | None
    verbs: frozenset[str] = CRUD
    case_variant: bool = False
    # Reaches the connector through the catch-all but is the connector's (a near miss of its
    # own paths): answered there, never forwarded.
    kept: bool = False

    @property
    def owned(self) -> bool:
        return self.level is not None

    @property
    def forwarded(self) -> bool:
        return not self.owned and not self.kept


SERVICE: Final = None  # served by the catch-all, forwarded to the Bee Flow service

# Paths a browser, AppAPI or the Bee Flow service really sends, and near misses.
TABLE: Final = (
    Row("/", PUBLIC, GET),
    Row("/index.html", PUBLIC, GET),
    Row("/favicon.ico", PUBLIC, GET),
    Row("/assets/index-4f2a9c.js", PUBLIC, GET),
    Row("/assets/fonts/inter.woff2", PUBLIC, GET),
    Row("/js/embed.js", PUBLIC, GET),
    Row("/img/app.svg", PUBLIC, GET),
    Row("/img/studio-app/sa_b6hw2w6zzfdj7ijfoccoojyuby.svg", PUBLIC, GET),
    Row("/js/embed-app.js", PUBLIC, GET),
    Row("/bee-flow-logo.png", PUBLIC, GET),
    Row("/bee-flow-logo-dark.svg", PUBLIC, GET),
    Row("/BeeFlow-logo.png", PUBLIC, GET),
    Row("/heartbeat", PUBLIC, GET),
    Row("/ready", PUBLIC, GET),
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
    Row("/occ/status", ADMIN, frozenset({"POST"})),
    Row("/occ/rotate-key", ADMIN, frozenset({"POST"})),
    Row("/setup_checks", ADMIN, GET),
    Row("/files-action/ask", USER, frozenset({"POST"})),
    Row("/files-action/summarise", USER, frozenset({"POST"})),
    Row("/hooks/studio-menus", PUBLIC, frozenset({"POST"})),
    Row("/nc/remote.php/dav/files/bob/", PUBLIC, NC_VERBS),
    Row("/nc/ocs/v2.php/cloud/users/alice", PUBLIC, NC_VERBS),
    Row("/nc/index.php/apps/deck/api/v1.0/boards", PUBLIC, NC_VERBS),
    # The service's paths (its UI's calls): the USER catch-all.
    Row("/ai/chat/direct/stream", SERVICE),
    Row("/ai/direct/conversations/c1", SERVICE),
    Row("/agents/7/chat/stream", SERVICE),
    Row("/components/list", SERVICE),
    Row("/reports/weekly", SERVICE),
    Row("/apps/a1", SERVICE),
    Row("/versions/v2", SERVICE),
    Row("/api/health", SERVICE),
    # The UI's l10n calls: under the catch-all in the manifest, answered by the connector.
    Row("/api/languages/user/locales", SERVICE),
    Row("/api/languages/user/strings/de", SERVICE),
    Row("/api/languages/public/strings/nl", SERVICE),
    Row("/api/", SERVICE),
    Row("/auth/me", SERVICE),
    Row("/auth/oauth/google/callback", SERVICE),
    # near misses of connector routes: the catch-all's in the manifest; those still under a
    # connector prefix are kept by the connector
    Row("/api", SERVICE),
    Row("/nc", SERVICE, kept=True),
    Row("/ncx/ocs/", SERVICE),
    Row("/webhook", SERVICE, kept=True),
    Row("/heartbeat/", SERVICE, kept=True),
    Row("/heartbeats", SERVICE),
    Row("/ready/", SERVICE, kept=True),
    Row("/readyz", SERVICE),
    Row("/init/x", SERVICE, kept=True),
    Row("/enabledx", SERVICE),
    Row("/setup/statusx", SERVICE, kept=True),
    Row("/setup/diagnostics", SERVICE, kept=True),
    Row("/setup/verify-email-code/", SERVICE, kept=True),
    Row("/setup/rotate-tenant-keys", SERVICE, kept=True),
    Row("/setup/test/rotate-tenant-key", SERVICE, kept=True),
    Row("/index.htm", SERVICE),
    Row("/favicon.icon", SERVICE),
    Row("/hooks/other", SERVICE, kept=True),
    Row("/occ/nope", SERVICE, kept=True),
    Row("/files-action/run", SERVICE, kept=True),
    Row("/setup_checksx", SERVICE),
    Row("/xapi/x", SERVICE),
    # PHP matches case-insensitively, HaRP does not.
    Row("/API/x", SERVICE, case_variant=True),
    Row("/Setup/status", ADMIN, GET_POST, case_variant=True),
    Row("/setup/Rotate-Tenant-Key", ADMIN, GET_POST, case_variant=True),
    Row("/NC/ocs/v2.php/cloud/capabilities", PUBLIC, NC_VERBS, case_variant=True),
    Row("/HEARTBEAT", PUBLIC, GET, case_variant=True),
)

MANIFEST: Final = routes()
CATCH_ALL: Final = MANIFEST[-1]


def owner(row: Row, matcher: str) -> int | None:
    """The level of the route this matcher finds first for the row's path (None: the catch-all).
    HaRP is case-sensitive: a case variant of an owned path is the catch-all's there."""
    if matcher == "harp" and row.case_variant:
        return None
    return row.level


def expected(row: Row, matcher: str, verb: str, caller: int) -> int | None:
    """The access level of the route that lets (verb, caller) through to the connector, or None
    when AppAPI / HaRP refuses it. PHP: a verb the owned route does not list falls to the
    catch-all; a failed access check falls through only on 32.0.0 (old_php). HaRP ignores
    verbs: the first URL match decides."""
    level = owner(row, matcher)
    catch_all = USER if verb in CATCH_ALL.verb_list and caller >= USER else None
    if matcher == "harp":
        if level is None:
            return USER if caller >= USER else None
        return level if level == PUBLIC or caller >= level else None
    if level is None or verb not in row.verbs:
        return catch_all
    if caller >= level:
        return level
    return catch_all if matcher == "old_php" else None


MATCHERS: Final[dict[str, Matcher]] = {"old_php": old_php, "new_php": new_php, "harp": harp}


def test_the_catch_all_is_last_user_and_crud() -> None:
    assert CATCH_ALL.url == r"^\/?.*"
    assert CATCH_ALL.access == USER
    assert set(CATCH_ALL.verb_list) == CRUD
    assert all(r.url != CATCH_ALL.url for r in MANIFEST[:-1])
    assert all(r.access != PUBLIC or r.url != CATCH_ALL.url for r in MANIFEST)


@pytest.mark.parametrize("matcher", sorted(MATCHERS))
@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.path)
def test_table_under_each_matcher(row: Row, matcher: str) -> None:
    match = MATCHERS[matcher]
    wrong = []
    for verb in ALL_VERBS:
        for caller in CALLERS:
            route = match(MANIFEST, row.path, verb, caller)
            got = None if route is None else route.access
            want = expected(row, matcher, verb, caller)
            if got != want:
                wrong.append(f"{verb} as {LEVEL_NAMES[caller]}: {got} (want {want})")
    assert not wrong, f"{matcher} {row.path}: " + "; ".join(wrong)


@pytest.mark.parametrize("row", [r for r in TABLE if r.owned], ids=lambda r: r.path)
def test_the_route_that_serves_an_owned_path_has_its_level(row: Row) -> None:
    """Not only allowed/denied: the route doing it carries the level and verbs."""
    verb = sorted(row.verbs)[0]
    for name, match in MATCHERS.items():
        if name == "harp" and row.case_variant:
            continue
        route = match(MANIFEST, row.path, verb, ADMIN)
        assert route is not None, (name, row.path)
        assert route.access == row.level, (name, row.path, route.url)
        assert set(route.verb_list) == set(row.verbs), (name, row.path, route.url)


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.path)
def test_owned_routes_do_not_overlap(row: Row) -> None:
    """Among the connector's own routes at most one matches a path (order never decides
    between them); the catch-all matches everything and is last."""
    path = row.path.lower()
    hits = [r.url for r in MANIFEST[:-1] if re.match(f"^(?:{r.url})", path, re.IGNORECASE)]
    assert len(hits) == (1 if row.owned else 0), (row.path, hits)
    assert re.match(f"^(?:{CATCH_ALL.url})", path)


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
def test_old_and_new_php_differ_only_by_falling_through_to_the_catch_all(
    path: str, verb: str, caller: int
) -> None:
    """32.0.0's fall-through can only hand a refused owned path to the USER catch-all (where
    the connector's own ADMIN check refuses it): never to another owned route."""
    old = old_php(MANIFEST, path, verb, caller)
    new = new_php(MANIFEST, path, verb, caller)
    if old != new:
        assert new is None, (path, verb, caller, old)
        assert old is CATCH_ALL, (path, verb, caller, old)


@settings(max_examples=400, deadline=None)
@given(path=paths, caller=st.sampled_from(CALLERS))
def test_harp_and_php_pick_the_same_first_route(path: str, caller: int) -> None:
    """HaRP ignores verbs; for each path it picks the route PHP picks for a verb that route
    lists (lower-case paths: HaRP is case-sensitive, PHP is not)."""
    if path != path.lower():
        return
    route = harp(MANIFEST, path, "GET", ADMIN)
    assert route is not None  # the catch-all matches everything
    verb = route.verb_list[0]
    assert new_php(MANIFEST, path, verb, ADMIN, bare_fallback=False) == route


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


SAMPLES: Final = tuple(r.path for r in TABLE if not r.case_variant)


def _app() -> web.Application:
    config = Config.from_env(
        {
            "APP_SECRET": "s" * 32,
            "NEXTCLOUD_URL": "http://nc.invalid",
            "BEEFLOW_TENANT_KEY": "k" * 32,
            "BEEFLOW_EMBED_BASE_URL": "bundled",
        }
    )
    return make_app(config, run_at_boot=False)


def _is_catch_all(route: AbstractRoute) -> bool:
    return route.handler is saas._proxy


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
    app = _app()
    problems = []
    for route, policy in app[ROUTE_POLICIES].items():
        method = route.method if route.method not in ("*", "HEAD") else "GET"
        if _is_catch_all(route):
            if policy.access is not Access.USER:
                problems.append(f"{method} catch-all: {policy.access.name}, not USER")
            continue
        if route.handler is saas._owned:
            continue  # refuses, for anyone: the level of whatever route let it through stands
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


def test_the_catch_all_is_the_last_route_of_the_connector() -> None:
    """aiohttp tries resources in registration order: anything after the catch-all is dead."""
    app = _app()
    resources = [r for r in app.router.resources() if r.get_info()]
    last = resources[-1]
    assert all(_is_catch_all(route) for route in last), last
    assert {route.method for route in last} >= CRUD


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.path)
def test_owned_paths_are_known_to_the_proxy(row: Row) -> None:
    """Whatever verb brings an owned path to the catch-all (a verb its route does not list, a
    case variant, 32.0.0's fall-through), the proxy recognises it and does not forward it."""
    assert saas.is_connector_owned(row.path) is not row.forwarded


@pytest.mark.parametrize(
    "path",
    ["//setup", "/setup//status", "/%73etup", "/assets", "/hooks", "/hooks/nextcloud", "/trigger"],
)
def test_disguised_owned_paths_are_owned(path: str) -> None:
    decoded = path.replace("%73", "s")  # aiohttp routes on the decoded path
    assert saas.is_connector_owned(decoded)


@pytest.mark.parametrize("verb", sorted(ALL_VERBS))
@pytest.mark.parametrize("row", [r for r in TABLE if r.owned], ids=lambda r: r.path)
def test_an_owned_path_never_resolves_to_forwarding(row: Row, verb: str) -> None:
    """For every verb, the connector's router gives an owned path to a connector handler or to
    the catch-all, whose handler refuses owned paths before it looks at anything else."""
    app = _app()
    path = row.path
    request = make_mocked_request(verb, path, app=app)
    match = asyncio.run(app.router.resolve(request))
    handler = getattr(match, "handler", None)
    assert handler is not saas._proxy, (verb, path)
