"""appinfo/info.xml against the app store's info.xml rules for the elements it uses and AppAPI's
ExApp rules (contract 7), written as tests.

App store rules: the store's info.xsd (nextcloud/appstore `nextcloudappstore/api/v1/release/
info.xsd`): element order of the `info` sequence, `id` pattern, semver, l10n string lengths, URL
patterns, author mail pattern, the category and licence enumerations. The current schema accepts
SPDX licence ids next to the legacy `agpl`/`mpl`/`apache` and the newer `ai`, `dashboard`,
`search` and `workflow` categories (the reference connector publishes with `AGPL-3.0-or-later` and
`ai`/`workflow`).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from typing import Final

import pytest

import beeflow
from beeflow.config import Config
from tests.manifest.manifest import INFO_XML, load, routes

ROOT = load()

# The app store's `info` sequence (order matters in an xs:sequence), then AppAPI's block.
SEQUENCE: Final = (
    "id",
    "name",
    "summary",
    "description",
    "version",
    "licence",
    "author",
    "namespace",
    "types",
    "documentation",
    "category",
    "website",
    "discussion",
    "bugs",
    "repository",
    "screenshot",
    "dependencies",
    "background-jobs",
    "repair-steps",
    "two-factor-providers",
    "commands",
    "settings",
    "activity",
    "navigations",
    "contactsmenu",
    "collaboration",
    "sabre",
    "external-app",
)
REQUIRED: Final = (
    *("id", "name", "summary", "description", "version", "licence", "author"),
    *("category", "bugs", "dependencies"),
)
ID_RE: Final = re.compile(r"[a-z]+[a-z0-9_]*[a-z0-9]+")
SEMVER_RE: Final = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-([0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*))?"
)
VERSION_RE: Final = re.compile(r"[0-9]+(\.[0-9]+){0,2}")
URL_RE: Final = re.compile(r"https?://.+")
SECURE_URL_RE: Final = re.compile(r"https://.+")
EMAIL_RE: Final = re.compile(r"[^@]+@[^\.]+\..+")
LICENCES: Final = frozenset(
    {
        "agpl",
        "mpl",
        "apache",
        "AGPL-3.0-only",
        "AGPL-3.0-or-later",
        "Apache-2.0",
        "GPL-3.0-only",
        "GPL-3.0-or-later",
        "MIT",
        "MPL-2.0",
    }
)
CATEGORIES: Final = frozenset(
    {
        "ai",
        "customization",
        "dashboard",
        "files",
        "games",
        "integration",
        "monitoring",
        "multimedia",
        "office",
        "organization",
        "search",
        "security",
        "social",
        "tools",
        "workflow",
    }
)
HTTP_VERBS: Final = frozenset(
    {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
    | {"PROPFIND", "PROPPATCH", "REPORT", "MKCOL", "MOVE", "COPY", "LOCK", "UNLOCK", "SEARCH"}
    | {"MKCALENDAR"}
)
ENV_NAME_RE: Final = re.compile(r"[A-Z][A-Z0-9_]*")
HEADER_NAME_RE: Final = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


def text(el: ET.Element | None) -> str:
    return (el.text or "") if el is not None else ""


def fullmatch(pattern: re.Pattern[str], value: str) -> bool:
    return pattern.fullmatch(value) is not None


# ------------------------------------------------------------------ app store rules


def test_root_and_element_order() -> None:
    assert ROOT.tag == "info"
    tags = [child.tag for child in ROOT]
    unknown = [t for t in tags if t not in SEQUENCE]
    assert not unknown, f"elements the schema does not know: {unknown}"
    positions = [SEQUENCE.index(t) for t in tags]
    assert positions == sorted(positions), f"out of schema order: {tags}"
    for tag in REQUIRED:
        assert ROOT.find(tag) is not None, f"<{tag}> is required"
    for tag in ("id", "version", "namespace", "website", "bugs", "repository", "dependencies"):
        assert len(ROOT.findall(tag)) <= 1, f"<{tag}> at most once"
    assert len(ROOT.findall("external-app")) == 1


def test_id() -> None:
    app_id = text(ROOT.find("id"))
    assert fullmatch(ID_RE, app_id)
    assert len(app_id) <= 256
    assert app_id != "app_api", "reserved by HaRP"
    assert app_id == Config.from_env({"APP_SECRET": "x", "NEXTCLOUD_URL": "http://nc"}).app_id


def test_version_is_semver_and_the_package_version() -> None:
    version = text(ROOT.find("version"))
    assert fullmatch(SEMVER_RE, version)
    assert version == beeflow.__version__


def test_l10n_strings() -> None:
    for tag, limit in (("name", 128), ("summary", 128), ("description", None)):
        for el in ROOT.findall(tag):
            value = text(el).strip()
            assert value, f"<{tag}> must not be empty"
            if limit is not None:
                assert len(text(el)) <= limit, f"<{tag}> longer than {limit}"
        langs = [el.get("lang", "en") for el in ROOT.findall(tag)]
        assert len(langs) == len(set(langs)), f"<{tag}> repeats a language"


def test_licence() -> None:
    licences = [text(el) for el in ROOT.findall("licence")]
    assert licences == ["AGPL-3.0-or-later"]
    assert set(licences) <= LICENCES


def test_author() -> None:
    for el in ROOT.findall("author"):
        assert text(el).strip()
        assert len(text(el)) <= 256
        if "mail" in el.attrib:
            assert fullmatch(EMAIL_RE, el.attrib["mail"])
        if "homepage" in el.attrib:
            assert fullmatch(URL_RE, el.attrib["homepage"])


def test_categories() -> None:
    cats = [text(el) for el in ROOT.findall("category")]
    assert cats
    assert len(cats) == len(set(cats))
    assert set(cats) <= CATEGORIES, set(cats) - CATEGORIES


def test_urls() -> None:
    for tag in ("website", "discussion", "bugs", "repository"):
        for el in ROOT.findall(tag):
            assert fullmatch(URL_RE, text(el)), tag
            assert len(text(el)) <= 256, tag
    for el in ROOT.findall("repository"):
        assert el.get("type", "git") in ("git", "mercurial", "subversion", "bzr")
    shots = ROOT.findall("screenshot")
    assert len(shots) <= 10
    for el in shots:
        assert fullmatch(SECURE_URL_RE, text(el))
        if "small-thumbnail" in el.attrib:
            assert fullmatch(SECURE_URL_RE, el.attrib["small-thumbnail"])
    for el in ROOT.findall("documentation/*"):
        assert fullmatch(SECURE_URL_RE, text(el)) or re.fullmatch(
            rf"{el.tag}-[a-z]+[\-a-z]*[a-z]+", text(el)
        )


def test_supported_nextcloud_range() -> None:
    """The range the code is tested for (docs/deployments.md, "Nextcloud versions"): 35 since
    AppAPI 35's route validation and matching are replayed (tests/manifest/test_appapi35.py);
    31 while the PHP proxy path stays tested (the fakes' 31 personality, the PHP proxy
    stand-in, and the real Nextcloud 32's PHP proxy in tests/integration/)."""
    nc = ROOT.find("dependencies/nextcloud")
    assert nc is not None
    assert fullmatch(VERSION_RE, nc.attrib["min-version"])
    assert fullmatch(VERSION_RE, nc.attrib["max-version"])
    assert (nc.attrib["min-version"], nc.attrib["max-version"]) == ("31", "35")


def test_no_empty_elements_anywhere() -> None:
    """The app store 500s on an empty <default/> (reference 12, 0.1.11-0.1.14); no element of
    ours is meant to be empty."""
    empty = [el.tag for el in ROOT.iter() if len(el) == 0 and not text(el).strip()]
    assert empty == ["nextcloud"]  # the one element that carries only attributes


# ------------------------------------------------------------------ AppAPI ExApp rules


def test_docker_install() -> None:
    block = ROOT.find("external-app/docker-install")
    assert block is not None
    assert text(block.find("registry")) == "ghcr.io"
    assert text(block.find("image")) == "bee-flow/connector"
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", text(block.find("image-tag")))


def test_routes_are_a_list_of_complete_route_elements() -> None:
    block = ROOT.find("external-app/routes")
    assert block is not None
    assert len(block) > 0
    assert [child.tag for child in block] == ["route"] * len(block)
    allowed = {"url", "verb", "access_level", "headers_to_exclude", "bruteforce_protection"}
    for route in block:
        tags = [child.tag for child in route]
        assert set(tags) <= allowed, tags
        assert len(tags) == len(set(tags)), tags
        assert {"url", "verb", "access_level"} <= set(tags)
        assert text(route.find("url")).strip()
        verbs = text(route.find("verb")).split(",")
        assert all(v == v.strip() and v in HTTP_VERBS for v in verbs), verbs
        assert text(route.find("access_level")) in ("PUBLIC", "USER", "ADMIN")


def test_json_array_fields_are_element_text() -> None:
    """AppAPI (ExAppRouteHelper): JSON arrays in the element text; child elements are refused."""
    for route in ROOT.findall("external-app/routes/route"):
        for tag, kind in (("headers_to_exclude", str), ("bruteforce_protection", int)):
            el = route.find(tag)
            if el is None:
                continue
            assert len(el) == 0, f"<{tag}> must hold JSON text, not elements"
            value = json.loads(text(el))
            assert isinstance(value, list), tag
            assert all(type(item) is kind for item in value), (tag, value)
            if kind is str:
                assert all(fullmatch(HEADER_NAME_RE, h) for h in value), value
            else:
                assert all(100 <= code <= 599 for code in value), value


def test_route_regexes_are_portable() -> None:
    """Contract 4.2/9.22: optional leading slash, every `/` escaped (old PHP's delimiter), no `~`
    (new PHP's delimiter), valid for PCRE and Python alike."""
    for route in routes(ROOT):
        assert route.url.startswith("^\\/?"), route.url
        assert "~" not in route.url
        unescaped = re.search(r"(?<!\\)(?:\\\\)*/", route.url)
        assert unescaped is None, f"unescaped / in {route.url}"
        re.compile(route.url)


def test_nc_callbacks_have_no_bruteforce_protection() -> None:
    """Their 401s come from the service's single egress IP; counting them would cut every
    user's file access (reference 1.1)."""
    nc = [r for r in routes(ROOT) if re.match(r.url, "/nc/ocs/v2.php/cloud/capabilities")]
    # The /nc route itself, then the USER catch-all (which never serves /nc: it comes later).
    assert [r.access for r in nc] == [0, 1]
    assert nc[1].url == "^\\/?.*"
    assert all(r.bruteforce_protection is None for r in nc)


def test_user_credentials_are_excluded_where_a_user_is_proxied() -> None:
    """Defence in depth for issue 10 fact 2: the PHP proxy forwards the browser's Basic auth."""
    for route in routes(ROOT):
        if route.access != 0 or re.match(route.url, "/nc/x"):
            excluded = json.loads(route.headers_to_exclude or "[]")
            assert "authorization" in excluded, route.url


def test_no_removed_blocks() -> None:
    """`<scopes>` was removed in AppAPI 3.2.0 and `<system>` is ignored."""
    assert ROOT.find("external-app/scopes") is None
    assert ROOT.find("external-app/system") is None
    assert ROOT.find("scopes") is None


# ------------------------------------------------------------------ environment variables


def variables() -> Iterator[ET.Element]:
    yield from ROOT.findall("external-app/environment-variables/variable")


class RecordingEnv(Mapping[str, str]):
    """A read-only environment that remembers every name it was asked for."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._values[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.read.add(key)
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("Config.from_env must not enumerate the environment")

    def __len__(self) -> int:
        return len(self._values)


def config_variables() -> set[str]:
    """Every variable Config.from_env reads (HaRP on, so the HaRP-only ones are read too)."""
    env = RecordingEnv(
        {
            "APP_SECRET": "x" * 20,
            "NEXTCLOUD_URL": "http://nc",
            "HP_SHARED_KEY": "key",
            "HP_FRP_ADDRESS": "harp",
        }
    )
    Config.from_env(env)
    return env.read


BASE_ENV: Final = {"APP_SECRET": "x" * 20, "NEXTCLOUD_URL": "http://nc"}


def test_variables_are_complete_and_named_once() -> None:
    names = []
    for var in variables():
        assert [c.tag for c in var][:1] == ["name"]
        assert set(c.tag for c in var) <= {"name", "display-name", "description", "default"}
        name = text(var.find("name"))
        assert fullmatch(ENV_NAME_RE, name)
        assert text(var.find("display-name")).strip(), name
        assert text(var.find("description")).strip(), name
        names.append(name)
    assert names
    assert len(names) == len(set(names))


@pytest.mark.parametrize("var", list(variables()), ids=lambda v: text(v.find("name")))
def test_no_empty_default(var: ET.Element) -> None:
    default = var.find("default")
    assert default is None or text(default).strip(), "omit <default> instead of leaving it empty"


def test_declared_variables_are_ones_the_connector_reads() -> None:
    declared = {text(v.find("name")) for v in variables()}
    unread = declared - config_variables()
    assert not unread, f"declared but never read by Config.from_env: {unread}"
    assert {"BEEFLOW_TENANT_KEY", "BEEFLOW_API_BASE_URL"} <= declared
    assert {"BEEFLOW_JWT_TTL_SECONDS", "BEEFLOW_SIG_SKEW_SECONDS"} <= declared


def test_declared_defaults_change_nothing() -> None:
    """AppAPI passes each declared default into the container: the defaults must parse and must
    mean exactly what an absent variable means (a passed BEEFLOW_API_BASE_URL would lock the
    setup picker, so it has no default)."""
    defaults = {
        text(v.find("name")): text(v.find("default"))
        for v in variables()
        if v.find("default") is not None
    }
    assert Config.from_env({**BASE_ENV, **defaults}) == Config.from_env(BASE_ENV)


def test_the_file_is_utf8_without_a_bom() -> None:
    raw = INFO_XML.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    raw.decode("utf-8")
