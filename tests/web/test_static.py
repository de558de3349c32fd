"""Static SPA serving: routes, caching, conditional requests, content types, no escape."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp import web

from beeflow.config import Config
from beeflow.errors import NotFound
from beeflow.web import spa, static
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import RunningConnector

REPO_SPA = Path(__file__).resolve().parents[2] / "spa"
SECRET_TEXT = "TOP-SECRET-OUTSIDE-THE-SPA"


@pytest.fixture
def spa_dir(tmp_path: Path) -> Path:
    """A small SPA tree, with a secret file beside it and a symlink pointing out of it."""
    root = tmp_path / "web" / "spa"
    (root / "assets" / "sub").mkdir(parents=True)
    (root / "js").mkdir()
    (root / "img").mkdir()
    (root / "index.html").write_text("<!doctype html><title>shell</title>", encoding="utf-8")
    (root / "favicon.ico").write_bytes(b"\x00\x00\x01\x00icon")
    (root / "bee-flow-logo.svg").write_text("<svg/>", encoding="utf-8")
    (root / "BeeFlow-logo.png").write_bytes(b"\x89PNG")
    (root / "assets" / "app.0123456789.js").write_text("console.log(1)", encoding="utf-8")
    (root / "assets" / "app.0123456789.css").write_text("body{}", encoding="utf-8")
    (root / "assets" / "sub" / "font.woff2").write_bytes(b"wOF2")
    (root / "assets" / "page.html").write_text("<p>nested html</p>", encoding="utf-8")
    (root / "assets" / ".env").write_text(SECRET_TEXT, encoding="utf-8")
    (root / "assets" / "noext").write_bytes(b"raw")
    (root / "js" / "tool.js").write_text("var tool;", encoding="utf-8")
    (root / "js" / "embed.js").write_text("/* must not be served by static */", encoding="utf-8")
    (root / "img" / "app.svg").write_text("<svg>static copy</svg>", encoding="utf-8")
    (root / "img" / "pic.png").write_bytes(b"\x89PNG pic")
    (tmp_path / "web" / "secret.txt").write_text(SECRET_TEXT, encoding="utf-8")
    (tmp_path / "web" / "spa-evil").mkdir()
    (tmp_path / "web" / "spa-evil" / "x.js").write_text(SECRET_TEXT, encoding="utf-8")
    os.symlink(tmp_path / "web" / "secret.txt", root / "assets" / "link.js")
    os.symlink(tmp_path / "web", root / "img" / "up")
    return root


@pytest.fixture
async def served(connector_factory: ConnectorFactory, spa_dir: Path) -> RunningConnector:
    return await connector_factory(BEEFLOW_SPA_DIR=str(spa_dir))


async def raw_request(
    running: RunningConnector, target: str, method: str = "GET", extra: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """Send the request line byte for byte (no client-side normalisation of the target)."""
    host, port = running.url.host, running.url.port
    assert host is not None
    assert port is not None
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode(
                "latin-1"
            )
        )
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, headers, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


# ------------------------------------------------------------------ routes and headers


@pytest.mark.parametrize("path", ["/", "/index.html"])
async def test_shell_is_never_cached(served: RunningConnector, path: str) -> None:
    async with await served.request("GET", path) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["ETag"]
        assert resp.headers["Last-Modified"]
        assert await resp.text() == "<!doctype html><title>shell</title>"


@pytest.mark.parametrize(
    ("path", "content_type", "cache"),
    [
        ("/assets/app.0123456789.js", "text/javascript; charset=utf-8", static.IMMUTABLE),
        ("/assets/app.0123456789.css", "text/css; charset=utf-8", static.IMMUTABLE),
        ("/assets/sub/font.woff2", "font/woff2", static.IMMUTABLE),
        ("/assets/noext", "application/octet-stream", static.IMMUTABLE),
        ("/assets/page.html", "text/html; charset=utf-8", "no-store"),
        ("/js/tool.js", "text/javascript; charset=utf-8", "no-cache"),
        ("/img/pic.png", "image/png", "no-cache"),
        ("/favicon.ico", "image/vnd.microsoft.icon", "no-cache"),
        ("/bee-flow-logo.svg", "image/svg+xml", "no-cache"),
        ("/BeeFlow-logo.png", "image/png", "no-cache"),
    ],
)
async def test_content_types_and_caching(
    served: RunningConnector, spa_dir: Path, path: str, content_type: str, cache: str
) -> None:
    async with await served.request("GET", path) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == content_type
        assert resp.headers["Cache-Control"] == cache
        assert await resp.read() == (spa_dir / path.lstrip("/")).read_bytes()


async def test_public_with_or_without_appapi_headers(served: RunningConnector) -> None:
    for user in (None, "alice", ""):
        async with await served.request("GET", "/index.html", user=user) as resp:
            assert resp.status == 200


async def test_etag_and_last_modified_give_304(served: RunningConnector) -> None:
    path = "/assets/app.0123456789.js"
    async with await served.request("GET", path) as resp:
        etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
    async with await served.request("GET", path, headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
        assert await resp.read() == b""
        assert resp.headers["ETag"] == etag
    async with await served.request("GET", path, headers={"If-Modified-Since": modified}) as resp:
        assert resp.status == 304
    async with await served.request("GET", path, headers={"If-None-Match": '"other"'}) as resp:
        assert resp.status == 200
    old = formatdate(0, usegmt=True)
    async with await served.request("GET", path, headers={"If-Modified-Since": old}) as resp:
        assert resp.status == 200


async def test_etag_changes_with_content(served: RunningConnector, spa_dir: Path) -> None:
    async with await served.request("GET", "/js/tool.js") as resp:
        first = resp.headers["ETag"]
    target = spa_dir / "js" / "tool.js"
    target.write_text("var tool = 2; // changed", encoding="utf-8")
    async with await served.request("GET", "/js/tool.js", headers={"If-None-Match": first}) as resp:
        assert resp.status == 200
        assert resp.headers["ETag"] != first
        assert await resp.text() == "var tool = 2; // changed"


async def test_head_has_headers_and_no_body(served: RunningConnector, spa_dir: Path) -> None:
    size = (spa_dir / "index.html").stat().st_size
    status, headers, body = await raw_request(served, "/index.html", method="HEAD")
    assert status == 200
    assert headers["content-length"] == str(size)
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert body == b""


async def test_range_request(served: RunningConnector) -> None:
    headers = {"Range": "bytes=0-6"}
    async with await served.request("GET", "/assets/app.0123456789.js", headers=headers) as resp:
        assert resp.status == 206
        assert await resp.read() == b"console"


JS = "/assets/app.0123456789.js"
JS_BODY = b"console.log(1)"  # 14 bytes


async def _get(
    served: RunningConnector, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return await raw_request(served, JS, method=method, extra=extra)


async def _etag(served: RunningConnector) -> str:
    _, headers, _ = await _get(served, {})
    return headers["etag"]


def _json_error(status: int, headers: dict[str, str], body: bytes, want: int, code: str) -> None:
    assert status == want, (status, headers, body)
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert json.loads(body)["code"] == code


def _whole(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 200, (status, headers, body)
    assert body == JS_BODY
    assert headers["content-length"] == str(len(JS_BODY))
    assert "content-range" not in headers
    assert headers["accept-ranges"] == "bytes"
    assert headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("bytes=0-6", (0, 6)),
        ("bytes=7-", (7, 13)),
        ("bytes=-3", (11, 13)),
        ("bytes=-99", (0, 13)),
        ("BYTES = 2-3", (2, 3)),
        ("bytes=0-" + "9" * 5000, (0, 13)),
        ("bytes=" + "0" * 5000 + "1-2", (1, 2)),
        ("bytes=0-1,5-6", None),  # several: the whole file, no multipart
        ("bytes=99-,0-1", None),
        ("items=0-5", None),  # another unit is ignored
        ("bytes=0-1,,", (0, 1)),
    ],
)
def test_parse_range(value: str, want: tuple[int, int] | None) -> None:
    assert static.parse_range(value, 14) == want


@pytest.mark.parametrize(
    "value",
    [
        "bytes=14-",
        "bytes=-0",
        "bytes=10-2",
        "bytes=abc",
        "bytes=",
        "bytes",
        "=0-1",
        "bytes=99-,100-",
        "bytes=0-1,x",
        "bytes=1" + "0" * 5000 + "-",
    ],
)
def test_parse_range_refused(value: str) -> None:
    with pytest.raises(static._Unsatisfiable):
        static.parse_range(value, 14)


def test_parse_range_empty_file_is_served_whole() -> None:
    assert static.parse_range("bytes=0-5", 0) is None
    assert static.parse_range("bytes=-5", 0) is None


async def test_if_range_entity_tag(served: RunningConnector) -> None:
    """RFC 9110 13.2.2 step 5: a false If-Range means the Range is ignored (200), whatever the
    Range says; a true one with an unsatisfiable range is 416."""
    etag = await _etag(served)
    _whole(*await _get(served, {"Range": "bytes=999999-", "If-Range": '"abc"'}))
    _whole(*await _get(served, {"Range": "bytes=0-1", "If-Range": '"abc"'}))
    _whole(*await _get(served, {"Range": "bytes=0-1", "If-Range": "W/" + etag}))
    _whole(*await _get(served, {"Range": "bytes=0-1", "If-Range": "garbage"}))
    _whole(*await _get(served, {"Range": "bytes=abc", "If-Range": '"abc"'}))
    status, headers, body = await _get(served, {"Range": "bytes=0-6", "If-Range": etag})
    assert (status, body, headers["content-range"]) == (206, b"console", "bytes 0-6/14")
    status, headers, body = await _get(served, {"Range": "bytes=999999-", "If-Range": etag})
    _json_error(status, headers, body, 416, "range_not_satisfiable")
    assert headers["content-range"] == "bytes */14"


async def test_if_range_date(served: RunningConnector, spa_dir: Path) -> None:
    """A date must equal Last-Modified exactly (and Last-Modified be a strong validator)."""
    os.utime(spa_dir / "assets" / "app.0123456789.js", (1_700_000_000, 1_700_000_000))
    exact = formatdate(1_700_000_000, usegmt=True)
    status, _, body = await _get(served, {"Range": "bytes=0-6", "If-Range": exact})
    assert (status, body) == (206, b"console")
    later = formatdate(1_700_000_100, usegmt=True)
    _whole(*await _get(served, {"Range": "bytes=0-6", "If-Range": later}))
    _whole(*await _get(served, {"Range": "bytes=0-6", "If-Range": formatdate(0, usegmt=True)}))


async def test_if_range_date_of_a_fresh_file_is_weak(
    served: RunningConnector, spa_dir: Path
) -> None:
    path = spa_dir / "assets" / "app.0123456789.js"
    # Modified "now" (a little ahead, so a slow machine cannot age it past the one second):
    # Last-Modified is not yet a strong validator (8.8.2.2).
    soon = time.time() + 30
    os.utime(path, (soon, soon))
    _, headers, _ = await _get(served, {})
    _whole(*await _get(served, {"Range": "bytes=0-6", "If-Range": headers["last-modified"]}))


async def test_preconditions_come_before_range(served: RunningConnector) -> None:
    """Range with If-None-Match / If-Modified-Since: the conditions decide first (304), and a
    Range refused afterwards is our JSON 416, never a bare one cached as immutable."""
    etag = await _etag(served)
    status, headers, body = await _get(served, {"Range": "bytes=999999-", "If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert headers["etag"] == etag
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "content-range" not in headers
    status, headers, body = await _get(served, {"Range": "bytes=999999-", "If-None-Match": '"x"'})
    _json_error(status, headers, body, 416, "range_not_satisfiable")
    assert headers["content-range"] == "bytes */14"
    old = formatdate(0, usegmt=True)
    status, headers, body = await _get(served, {"Range": "bytes=foo", "If-Modified-Since": old})
    _json_error(status, headers, body, 416, "range_not_satisfiable")
    status, headers, body = await _get(served, {"Range": "bytes=0-6", "If-Modified-Since": old})
    assert (status, body) == (206, b"console")
    # If-Match fails before Range is looked at: a JSON 412, not cacheable.
    status, headers, body = await _get(served, {"Range": "bytes=0-6", "If-Match": '"x"'})
    _json_error(status, headers, body, 412, "precondition_failed")
    status, _, body = await _get(served, {"Range": "bytes=0-6", "If-Match": etag})
    assert (status, body) == (206, b"console")
    status, headers, body = await _get(served, {"If-Unmodified-Since": old})
    _json_error(status, headers, body, 412, "precondition_failed")
    # If-Match present: If-Unmodified-Since is not evaluated (13.2.2 step 2).
    _whole(*await _get(served, {"If-Match": etag, "If-Unmodified-Since": old}))
    _whole(*await _get(served, {"If-Match": "*"}))


async def test_several_ranges_or_another_unit_get_the_whole_file(
    served: RunningConnector,
) -> None:
    _whole(*await _get(served, {"Range": "bytes=0-1,5-6"}))
    _whole(*await _get(served, {"Range": "bytes=" + ",".join(f"{i}-{i}" for i in range(500))}))
    _whole(*await _get(served, {"Range": "items=0-5"}))
    status, headers, body = await _get(served, {"Range": "bytes=99-,100-"})
    _json_error(status, headers, body, 416, "range_not_satisfiable")


async def test_range_is_for_get_only(served: RunningConnector) -> None:
    status, headers, body = await _get(served, {"Range": "bytes=0-1"}, method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str(len(JS_BODY))
    assert "content-range" not in headers
    status, headers, body = await _get(served, {"Range": "bytes=999-"}, method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "14")


async def test_huge_range_end_is_clamped(served: RunningConnector) -> None:
    status, headers, body = await _get(served, {"Range": "bytes=0-" + "9" * 5000})
    assert (status, body, headers["content-range"]) == (206, JS_BODY, "bytes 0-13/14")


async def test_large_file_is_sent_in_chunks(served: RunningConnector, spa_dir: Path) -> None:
    data = os.urandom(static._CHUNK * 2 + 123)
    (spa_dir / "assets" / "big.bin").write_bytes(data)
    async with await served.request("GET", "/assets/big.bin") as resp:
        assert resp.status == 200
        assert await resp.read() == data
    headers = {"Range": f"bytes={static._CHUNK - 5}-{static._CHUNK * 2 + 7}"}
    async with await served.request("GET", "/assets/big.bin", headers=headers) as resp:
        assert resp.status == 206
        assert await resp.read() == data[static._CHUNK - 5 : static._CHUNK * 2 + 8]


async def test_writes_are_not_allowed(served: RunningConnector) -> None:
    async with await served.request("POST", "/index.html", data=b"x") as resp:
        assert resp.status == 405
        assert (await resp.json())["code"] == "method_not_allowed"


async def test_security_headers_on_static(served: RunningConnector, fake_nc: FakeNextcloud) -> None:
    headers = {"Origin": "https://evil.example", "Referer": "https://evil.example/x"}
    async with await served.request("GET", "/", headers=headers) as resp:
        csp = resp.headers["Content-Security-Policy"]
        assert csp.startswith("frame-ancestors 'self' ")
        assert str(fake_nc.url.origin()) in csp
        assert "evil.example" not in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert resp.headers["X-Robots-Tag"] == "noindex, nofollow"
    status, raw_headers, _ = await raw_request(served, "/assets/nope.js")
    assert status == 404
    assert raw_headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------ listings and escapes


@pytest.mark.parametrize(
    "target",
    [
        "/assets/",
        "/assets/sub/",
        "/assets/sub",
        "/js/",
        "/img/",
        "/img/up",
        "/img/up/",
        "/assets/.env",
        "/assets/%2eenv",
        "/assets/missing.js",
        "/bee-flow-logo-missing.svg",
    ],
)
async def test_no_listing_or_hidden_files(served: RunningConnector, target: str) -> None:
    status, headers, body = await raw_request(served, target)
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] in ("static_not_found", "not_found")
    assert SECRET_TEXT.encode() not in body


TRAVERSALS = [
    "/assets/../secret.txt",
    "/assets/../../secret.txt",
    "/assets/%2e%2e/%2e%2e/secret.txt",
    "/assets/%2E%2E/%2E%2E/secret.txt",
    "/assets/..%2f..%2fsecret.txt",
    "/assets/..%2F..%2Fsecret.txt",
    "/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/assets/..%5c..%5csecret.txt",
    "/assets/..\\..\\secret.txt",
    "/assets/%252e%252e/%252e%252e/secret.txt",
    "/assets/.%2e/.%2e/secret.txt",
    "/assets/%c0%ae%c0%ae/%c0%ae%c0%ae/secret.txt",
    "/assets/%u002e%u002e/secret.txt",
    "/assets/sub/../../../secret.txt",
    "/assets//../secret.txt",
    "/assets/%2fetc%2fpasswd",
    "/assets//etc/passwd",
    "/assets/%00../secret.txt",
    "/assets/link.js",
    "/img/up/secret.txt",
    "/img/..;/secret.txt",
    "/js/../../secret.txt",
    "/js/%2e%2e/%2e%2e/secret.txt",
    "/assets/../spa-evil/x.js",
    "/assets/%2e%2e/%2e%2e/spa-evil/x.js",
    "/bee-flow-logo/../secret.txt",
    "/bee-flow-logo..%2f..%2fsecret.txt",
    "/assets/C:%5csecret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
async def test_no_escape_by_any_encoding(served: RunningConnector, target: str) -> None:
    status, headers, body = await raw_request(served, target)
    assert SECRET_TEXT.encode() not in body
    # 401: a path that normalises out of the shell lands in the USER catch-all, which refuses
    # an anonymous caller before anything else (and would refuse its dot segments with 400).
    assert status in (400, 401, 404), (target, status, body[:200])
    if status == 404:
        assert headers["content-type"] == "application/json"
        assert "code" in json.loads(body)


def test_segment_checker_unit(spa_dir: Path) -> None:
    root = static.SpaRoot(spa_dir)
    assert root.file("assets/app.0123456789.js") == (spa_dir / "assets/app.0123456789.js")
    for bad in ["..", "assets/..", "assets/../index.html", "assets/.env", "assets//x", "/etc",
                "assets\\x", "assets/a\x00", "a:b", "assets/link.js", "img/up/secret.txt",
                "", "assets", "js/embed.js", "img/app.svg", "x" * 2000]:  # fmt: skip
        with pytest.raises(NotFound):
            root.file(bad)


async def test_reserved_connector_paths_not_served_from_spa(served: RunningConnector) -> None:
    """/js/embed(.js) and /img/app.svg belong to the embed code registered before us."""
    for path in ("/js/embed.js", "/js/embed", "/img/app.svg"):
        async with await served.request("GET", path) as resp:
            body = await resp.read()
        assert b"must not be served by static" not in body
        assert b"static copy" not in body


async def test_missing_ui_is_a_json_404(
    connector_factory: ConnectorFactory, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    running = await connector_factory(BEEFLOW_SPA_DIR=str(empty))
    async with await running.request("GET", "/") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "spa_missing"


def test_spa_dir_resolution(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    second.mkdir()
    (second / "index.html").write_text("x", encoding="utf-8")
    assert spa.find_spa_dir(None, [first, second]) == second
    assert spa.find_spa_dir(first, [first]) is None
    # Without configuration, a source checkout finds the repository's spa/.
    assert spa.find_spa_dir(None) == REPO_SPA
    assert spa.candidates(first) == [first]


async def test_default_serves_the_repository_ui(connector: RunningConnector) -> None:
    async with await connector.request("GET", "/") as resp:
        assert resp.status == 200
        assert await resp.text() == (REPO_SPA / "index.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------ our own UI bundle


def _local_refs(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_repository_ui_assets_are_content_hashed() -> None:
    """assets/ is served immutable: a file's name must change when its content does
    (run `python spa/rehash.py` after editing)."""
    index = (REPO_SPA / "index.html").read_text(encoding="utf-8")
    assets = sorted((REPO_SPA / "assets").iterdir())
    assert assets
    for path in assets:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
        assert f".{digest}." in path.name, f"{path.name}: run `python spa/rehash.py`"
        assert f"assets/{path.name}" in index


def test_repository_ui_references_are_relative_and_exist() -> None:
    index = (REPO_SPA / "index.html").read_text(encoding="utf-8")
    refs = _local_refs(index)
    assert refs
    for ref in refs:
        assert not ref.startswith(("/", "http:", "https:")), ref
        assert (REPO_SPA / ref).is_file(), ref
    assert "<script>" not in index  # no inline scripts (Nextcloud's CSP nonce rules)


def test_repository_ui_uses_relative_api_and_method_override() -> None:
    script = next((REPO_SPA / "assets").glob("beeflow-ui.*.js")).read_text(encoding="utf-8")
    # The service's own chat route (routes/ai.js is mounted at /ai, not under /api).
    assert '"ai/chat/direct/stream"' in script
    assert "api/ai/" not in script
    assert '"X-HTTP-Method-Override": "PATCH"' in script
    assert 'method: "PATCH"' not in script
    assert "innerHTML" not in script


async def test_all_repository_ui_files_served(connector: RunningConnector) -> None:
    index = (REPO_SPA / "index.html").read_text(encoding="utf-8")
    for ref in _local_refs(index):
        async with await connector.request("GET", "/" + ref) as resp:
            assert resp.status == 200, ref
            assert await resp.read() == (REPO_SPA / ref).read_bytes()


def test_content_type_table_covers_repository_ui() -> None:
    types = static.CONTENT_TYPES
    for path in REPO_SPA.rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".md"):
            assert path.suffix in types, path


def test_app_routes_are_public(make_config: Callable[..., Config]) -> None:
    from beeflow.app import make_app
    from beeflow.web.auth import ROUTE_POLICIES, Access

    app: web.Application = make_app(make_config(), run_at_boot=False)
    paths = {
        route.resource.canonical: policy.access
        for route, policy in app[ROUTE_POLICIES].items()
        if route.handler.__module__ == "beeflow.web.static"
    }
    assert set(paths) >= {"/", "/index.html", "/favicon.ico", "/assets/{path}", "/js/{path}"}
    assert set(paths.values()) == {Access.PUBLIC}
