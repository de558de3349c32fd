"""Nextcloud 35 readiness of appinfo/info.xml: AppAPI 35's route validation at registration and
its leading-slash route matching, replayed against the manifest as it is on disk.

What is replayed, and from where:
* reading the manifest: AppAPI turns info.xml into arrays with
  `json_decode(json_encode((array) simplexml_load_string($xml)), true)` and then collapses
  `external-app.routes.route` (one route is an object, several a list) into a list
  (`lib/Service/ExAppService.php::getAppInfo`, nextcloud/app_api at 02b44864). `php_shape` below
  reproduces what PHP's SimpleXML makes of a document (text, empty elements, comments, repeated
  elements, attributes); `test_the_shape_is_phps_own` compares it with PHP itself.
* validation: `ExAppRouteHelper::normalizeAndValidate` (nextcloud/app_api at cfa6da1c, 2026):
  the routes must be a list of objects; `url` and `verb` non-empty strings; `access_level` one of
  PUBLIC, USER, ADMIN (or 0, 1, 2 from JSON); `bruteforce_protection` a list of integers and
  `headers_to_exclude` a list of strings, either as a real list or as a JSON array in the
  element's text, empty meaning none. Registration stops at the first bad route, naming it.
* matching (contract 4.2, AppAPI 32.0.10+, 33.0.4+, 34, 35): the pattern `~^(?:url)~i` against
  "/" + path, the bare path as a deprecated fallback, and the first route whose path and verb
  match decides; HaRP: `re.match(url, "/path")`, case-sensitive, verb ignored.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Final
from xml.dom import Node, minidom
from xml.dom.minidom import Element

import pytest

from tests.manifest.manifest import INFO_XML, delimiter_ok
from tests.manifest.test_routes import TABLE

LEVELS: Final = {"PUBLIC": 0, "USER": 1, "ADMIN": 2}


# ------------------------------------------------------------------ the manifest as PHP reads it


def php_shape(element: Element) -> Any:
    """What `json_decode(json_encode(<SimpleXMLElement>), true)` gives for `element`.

    A text-only element is its text; CDATA does not count (SimpleXML loaded without
    LIBXML_NOCDATA, as AppAPI loads it, leaves it out), and empty or whitespace-only text is an
    empty list (or the attributes, if any). An element with element children is a dict of them:
    a repeated name becomes a list, comments appear as empty "comment" entries, non-namespaced
    attributes go under "@attributes"."""
    nodes = element.childNodes
    children = [n for n in nodes if isinstance(n, Element)]
    attributes = {k: v for k, v in element.attributes.items() if ":" not in k and k != "xmlns"}
    if not children:
        text = "".join(n.data for n in nodes if n.nodeType == Node.TEXT_NODE)
        if text.strip():
            return text
        return {"@attributes": attributes} if attributes else []
    grouped: dict[str, list[Any]] = {}
    for node in nodes:
        if isinstance(node, Element):
            grouped.setdefault(node.tagName, []).append(php_shape(node))
        elif node.nodeType == Node.COMMENT_NODE:
            grouped.setdefault("comment", []).append([])
    shaped: dict[str, Any] = {"@attributes": attributes} if attributes else {}
    shaped.update({name: v[0] if len(v) == 1 else v for name, v in grouped.items()})
    return shaped


def parse(text: str) -> Element:
    root = minidom.parseString(text).documentElement  # noqa: S318 - our own file, a literal
    assert root is not None
    return root


def load(path: Path = INFO_XML) -> dict[str, Any]:
    shaped = php_shape(parse(path.read_text()))
    assert isinstance(shaped, dict)
    return shaped


def collapse_routes(app_info: dict[str, Any]) -> list[Any]:
    """getAppInfo's step: `routes.route` as a list (`isset($route[0])` tells a list)."""
    route = (app_info.get("external-app") or {}).get("routes", {}).get("route")
    if route is None:
        return []
    return route if isinstance(route, list) else [route]


# ------------------------------------------------------------------ AppAPI 35's validation


class RouteRejected(ValueError):
    """AppAPI refuses to register the app: the message names the route and the field."""


def _describe(value: Any) -> str:
    return f"'{value}' (string)" if isinstance(value, str) else type(value).__name__


def _as_list(raw: Any, ident: str, field: str) -> list[Any]:
    if raw is None or raw == "" or raw == []:
        return []
    if isinstance(raw, dict):
        raise RouteRejected(f"{ident}: '{field}' must be a JSON array (list), got an object")
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str):
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = None
        if not isinstance(decoded, list):
            raise RouteRejected(f"{ident}: '{field}' must be a JSON array, got string '{raw}'")
        return decoded
    raise RouteRejected(f"{ident}: '{field}' must be an array, got {_describe(raw)}")


def normalize_routes(routes: list[Any]) -> list[dict[str, Any]]:
    out = []
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            raise RouteRejected(f"route #{index}: entry must be an object")
        url = route.get("url")
        if not isinstance(url, str) or not url.strip():
            raise RouteRejected(f"route #{index}: 'url' must be a non-empty string")
        ident = f"route '{url}'"
        verb = route.get("verb")
        if not isinstance(verb, str) or not verb.strip():
            raise RouteRejected(f"{ident}: 'verb' must be a non-empty string")
        level = route.get("access_level")
        if isinstance(level, str):
            if level not in LEVELS:
                raise RouteRejected(f"{ident}: invalid 'access_level' '{level}'")
            level = LEVELS[level]
        elif not isinstance(level, int) or isinstance(level, bool) or level not in (0, 1, 2):
            raise RouteRejected(f"{ident}: 'access_level' is required ({_describe(level)})")
        codes = _as_list(route.get("bruteforce_protection"), ident, "bruteforce_protection")
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
            raise RouteRejected(f"{ident}: 'bruteforce_protection' must contain only integers")
        headers = _as_list(route.get("headers_to_exclude"), ident, "headers_to_exclude")
        if not all(isinstance(h, str) for h in headers):
            raise RouteRejected(f"{ident}: 'headers_to_exclude' must contain only strings")
        out.append(
            {
                "url": url,
                "verb": verb,
                "access_level": level,
                "bruteforce_protection": codes,
                "headers_to_exclude": headers,
            }
        )
    return out


# ------------------------------------------------------------------ AppAPI 35's matching


def _pcre(url: str) -> re.Pattern[str] | None:
    """`~^(?:url)~i` as PHP compiles it, or None where preg_match would fail (an unescaped `~`
    ends the pattern early; Python's re stands in for PCRE on the rest)."""
    if not delimiter_ok(url, "~"):
        return None
    try:
        return re.compile(f"^(?:{url})", re.IGNORECASE)
    except re.error:
        return None


def match35(
    routes: list[dict[str, Any]], path: str, verb: str, *, fallback: bool = True
) -> dict[str, Any] | None:
    """The route AppAPI 35 picks for `verb path` (path with its leading slash), or None."""
    bare = path.removeprefix("/")
    for route in routes:
        pattern = _pcre(route["url"])
        if pattern is None:
            continue
        hit = pattern.search("/" + bare) or (fallback and pattern.search(bare))
        if hit and verb.lower() in route["verb"].lower():
            return route
    return None


def match_harp(routes: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    for route in routes:
        try:
            if re.match(route["url"], path):
                return route
        except re.error:
            continue
    return None


# ------------------------------------------------------------------ the replay itself


@pytest.fixture(scope="module")
def registered() -> list[dict[str, Any]]:
    """The manifest's routes as AppAPI 35 stores them (registration fails otherwise)."""
    return normalize_routes(collapse_routes(load()))


def test_appapi_35_accepts_the_manifests_routes(registered: list[dict[str, Any]]) -> None:
    raw = collapse_routes(load())
    assert len(registered) == len(raw) == len(ET.parse(INFO_XML).findall(".//route"))  # noqa: S314
    for route in registered:
        assert route["access_level"] in (0, 1, 2)
        assert all(isinstance(h, str) for h in route["headers_to_exclude"])


def test_every_route_compiles_as_appapi_35s_pattern(registered: list[dict[str, Any]]) -> None:
    bad = [r["url"] for r in registered if _pcre(r["url"]) is None]
    assert bad == []


@pytest.mark.parametrize("row", [r for r in TABLE if r.level is not None], ids=lambda r: r.path)
def test_each_path_matches_with_its_leading_slash_alone(
    row: Any, registered: list[dict[str, Any]]
) -> None:
    """The bare-path fallback is transitional: nothing may depend on it."""
    for verb in sorted(row.verbs):
        with_slash = match35(registered, row.path, verb, fallback=False)
        assert with_slash is not None, (verb, row.path)
        assert with_slash == match35(registered, row.path, verb), (verb, row.path)
        assert with_slash["access_level"] == row.level, (verb, row.path, with_slash["url"])


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.path)
def test_appapi_35_and_harp_pick_the_same_route(row: Any, registered: list[dict[str, Any]]) -> None:
    """For every verb a route lists, AppAPI 35 and HaRP decide alike. HaRP matches case-
    sensitively, so a case variant of a connector-owned path reaches only the USER catch-all
    there: a logged-in user at least, and the connector refuses its own paths in any case
    (tests/manifest/test_routes.py, tests/proxy/test_saas.py), never forwarding them."""
    harp = match_harp(registered, row.path)
    for verb in sorted(row.verbs) or ["GET"]:
        php = match35(registered, row.path, verb)
        if row.case_variant:
            assert harp is not None
            assert harp["url"] == CATCH_ALL, (row.path, harp["url"])
            assert harp["access_level"] == 1
            continue
        assert php == harp, (verb, row.path)


# ------------------------------------------------------------------ the replay's own rules


CATCH_ALL = "^\\/?.*"  # the manifest's last route: USER, forwarded to the service

VALID = {
    "url": "^\\/?api\\/",
    "verb": "GET,POST",
    "access_level": "USER",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": []}, "'url' must be a non-empty string"),  # <url/> or whitespace only
        ({"url": "  "}, "'url' must be a non-empty string"),
        ({"verb": []}, "'verb' must be a non-empty string"),
        ({"verb": {"v": "GET"}}, "'verb' must be a non-empty string"),
        ({"access_level": "1"}, "invalid 'access_level' '1'"),  # XML gives strings only
        ({"access_level": "user"}, "invalid 'access_level' 'user'"),
        ({"access_level": None}, "'access_level' is required"),
        ({"access_level": 3}, "'access_level' is required"),
        ({"bruteforce_protection": '[401, "429"]'}, "must contain only integers"),
        ({"bruteforce_protection": "401"}, "must be a JSON array, got string '401'"),
        ({"bruteforce_protection": {"status": "401"}}, "must be a JSON array (list)"),
        ({"headers_to_exclude": "[1]"}, "must contain only strings"),
        ({"headers_to_exclude": "{}"}, "must be a JSON array"),
        ({"headers_to_exclude": {"header": "Cookie"}}, "must be a JSON array (list)"),
    ],
)
def test_what_appapi_35_refuses(change: dict[str, Any], message: str) -> None:
    with pytest.raises(RouteRejected, match=re.escape(message)):
        normalize_routes([{**VALID, **change}])


def test_what_appapi_35_accepts_and_how_it_stores_it() -> None:
    stored = normalize_routes(
        [
            {**VALID, "bruteforce_protection": "[401,429]", "headers_to_exclude": '["Cookie"]'},
            {
                **VALID,
                "access_level": "ADMIN",
                "bruteforce_protection": [],
                "headers_to_exclude": "",
            },
            {**VALID, "access_level": 0},  # --json-info gives numbers
        ]
    )
    assert [r["access_level"] for r in stored] == [1, 2, 0]
    assert stored[0]["bruteforce_protection"] == [401, 429]
    assert stored[0]["headers_to_exclude"] == ["Cookie"]
    assert stored[1]["bruteforce_protection"] == stored[1]["headers_to_exclude"] == []
    with pytest.raises(RouteRejected, match="route #1: entry must be an object"):
        normalize_routes([VALID, "not a route"])


def test_the_shape_of_tricky_xml() -> None:
    root = parse(
        "<info><!-- c --><a> </a><b/><d>[]</d><routes><!-- r --><route><url>^x</url></route>"
        '</routes><n min="31" max="34"/><t>a<!-- c -->b</t><c><![CDATA[gone]]></c></info>'
    )
    assert php_shape(root) == {
        "comment": [],
        "a": [],
        "b": [],
        "d": "[]",
        "routes": {"comment": [], "route": {"url": "^x"}},
        "n": {"@attributes": {"min": "31", "max": "34"}},
        "t": "ab",
        "c": [],
    }
    assert collapse_routes({"external-app": {"routes": {"route": {"url": "^x"}}}}) == [
        {"url": "^x"}
    ]


PHP_SHAPE: Final = (
    "echo json_encode(json_decode(json_encode((array) simplexml_load_file($argv[1])), true));"
)


def test_the_shape_is_phps_own() -> None:
    """php_shape against PHP's SimpleXML itself, on the manifest (needs the php CLI, which the
    real-Nextcloud lane installs)."""
    php = shutil.which("php")
    if php is None:
        pytest.skip("no php CLI to compare with")
    done = subprocess.run(
        [php, "-r", PHP_SHAPE, str(INFO_XML)], capture_output=True, check=True, text=True
    )
    assert json.loads(done.stdout) == load()


def test_the_replay_catches_what_35_would_break(tmp_path: Path) -> None:
    """A route without the optional leading slash works only through the deprecated fallback,
    and a list written as child elements stops the registration: both are caught."""
    text = INFO_XML.read_text()
    bare = tmp_path / "bare.xml"
    bare.write_text(text.replace("<url>^\\/?api\\/</url>", "<url>^api\\/</url>"))
    routes = normalize_routes(collapse_routes(load(bare)))
    assert match35(routes, "/api/x", "GET") is not None  # only thanks to the fallback
    # without the fallback (and on HaRP) only the catch-all is left to take it
    slash_only = match35(routes, "/api/x", "GET", fallback=False)
    assert slash_only is not None
    assert slash_only["url"] == CATCH_ALL
    harp = match_harp(routes, "/api/x")
    assert harp is not None
    assert harp["url"] == CATCH_ALL
    children = tmp_path / "children.xml"
    children.write_text(
        text.replace(
            "<headers_to_exclude>[]</headers_to_exclude>",
            "<headers_to_exclude><header>Cookie</header></headers_to_exclude>",
            1,
        )
    )
    first = ET.parse(INFO_XML).find(".//route/url")  # noqa: S314
    assert first is not None
    assert first.text is not None
    with pytest.raises(
        RouteRejected, match=f"route '{re.escape(first.text)}': 'headers_to_exclude'"
    ):
        normalize_routes(collapse_routes(load(children)))
