"""appinfo/info.xml read with the standard library, and the three route matchers of contract 4.2.

The matchers reproduce what decides access to a proxied request:
* old PHP (AppAPI <= 32.0.9 / 33.0.3, NC 31): `'/' . url . '/i'` searched in the path WITHOUT its
  leading slash; the first route whose regex, verb (substring of the verb list) AND access level
  all pass wins, so a failed access check falls through to later routes (measured on 32.0.0);
* new PHP (32.0.10+, 33.0.4+, 34): `~^(?:url)~i` on "/path" (with the deprecated bare-path
  fallback); the first route matching path and verb commits and its access level decides;
* HaRP: Python `re.match(url, "/path")`, case-sensitive, verb ignored, first URL match decides.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Final

import attrs

ROOT: Final = Path(__file__).resolve().parents[2]
INFO_XML: Final = ROOT / "appinfo" / "info.xml"

PUBLIC, USER, ADMIN = 0, 1, 2
LEVELS: Final = {"PUBLIC": PUBLIC, "USER": USER, "ADMIN": ADMIN}
LEVEL_NAMES: Final = {v: k for k, v in LEVELS.items()}


@attrs.frozen
class Route:
    url: str
    verbs: str  # the raw comma list, as AppAPI stores it
    access: int
    headers_to_exclude: str | None = None
    bruteforce_protection: str | None = None

    @property
    def verb_list(self) -> list[str]:
        return [v.strip().upper() for v in self.verbs.split(",") if v.strip()]


def load(path: Path = INFO_XML) -> ET.Element:
    return ET.parse(path).getroot()  # noqa: S314 - our own file, not untrusted input


def routes(root: ET.Element | None = None) -> list[Route]:
    root = load() if root is None else root
    out = []
    for el in root.findall("./external-app/routes/route"):
        out.append(
            Route(
                url=el.findtext("url", ""),
                verbs=el.findtext("verb", ""),
                access=LEVELS[el.findtext("access_level", "").strip()],
                headers_to_exclude=el.findtext("headers_to_exclude"),
                bruteforce_protection=el.findtext("bruteforce_protection"),
            )
        )
    return out


def json_routes(root: ET.Element | None = None) -> list[dict[str, object]]:
    """The routes as `occ app_api:app:register --json-info` takes them (contract 7)."""
    out: list[dict[str, object]] = []
    for r in routes(root):
        item: dict[str, object] = {"url": r.url, "verb": r.verbs, "access_level": r.access}
        if r.headers_to_exclude is not None:
            item["headers_to_exclude"] = json.loads(r.headers_to_exclude)
        if r.bruteforce_protection is not None:
            item["bruteforce_protection"] = json.loads(r.bruteforce_protection)
        out.append(item)
    return out


# ------------------------------------------------------------------ matchers


def delimiter_ok(url: str, delimiter: str) -> bool:
    """PHP's preg_* finds the closing delimiter by skipping backslash escapes only (it does not
    know character classes): an unescaped delimiter inside `url` breaks the pattern, preg_match
    returns false and the route never matches."""
    escaped = False
    for ch in url:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == delimiter:
            return False
    return True


def _search(pattern: str, subject: str, flags: int = 0) -> bool:
    try:
        return re.search(pattern, subject, flags) is not None
    except re.error:
        return False


def old_php(table: list[Route], path: str, verb: str, level: int) -> Route | None:
    """AppAPI 32.0.0 and older: unanchored `/url/i` on the bare path, fall-through."""
    bare = path[1:] if path.startswith("/") else path
    for route in table:
        if not delimiter_ok(route.url, "/"):
            continue
        if not _search(route.url, bare, re.IGNORECASE):
            continue
        if verb.lower() not in route.verbs.lower():  # str_contains on the lowered list
            continue
        if level < route.access:
            continue  # falls through to the next route
        return route
    return None


def new_php(
    table: list[Route], path: str, verb: str, level: int, *, bare_fallback: bool = True
) -> Route | None:
    """AppAPI 32.0.10+: `~^(?:url)~i` on "/path" (bare path as deprecated fallback); the first
    route matching path and verb commits."""
    bare = path[1:] if path.startswith("/") else path
    for route in table:
        if not delimiter_ok(route.url, "~"):
            continue
        pattern = f"^(?:{route.url})"
        hit = _search(pattern, "/" + bare, re.IGNORECASE) or (
            bare_fallback and _search(pattern, bare, re.IGNORECASE)
        )
        if not hit or verb.upper() not in route.verb_list:
            continue
        return route if level >= route.access else None
    return None


def harp(table: list[Route], path: str, verb: str, level: int) -> Route | None:
    """HaRP's SPOA agent: `re.match(url, "/path")`, case-sensitive, verb ignored."""
    del verb  # HaRP does not look at the method
    for route in table:
        try:
            hit = re.match(route.url, path) is not None
        except re.error:
            hit = False
        if hit:
            return route if route.access == PUBLIC or level >= route.access else None
    return None
