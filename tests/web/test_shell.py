"""The UI shell from the service's front-end host (BEEFLOW_EMBED_BASE_URL + /embed + path), over
real sockets against a local stand-in of that host: what is asked, what comes back, the bundled
UI when the host does not answer, and the build that fits the request's route."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from beeflow.config import Config
from beeflow.web import shell, spa
from tests.conftest import ConnectorFactory
from tests.helpers import SECRET, RunningConnector, appapi_headers

REPO_SPA = Path(__file__).resolve().parents[2] / "spa"
SHELL_HTML = b"<!doctype html><title>Bee Flow hive</title><script src='assets/app.js'></script>"
BROWSER = {
    "Cookie": "oc_sessionPassphrase=secret-session; nc_token=abc",
    "Authorization": "Basic YWxpY2U6cGFzc3dvcmQ=",
    "Origin": "https://cloud.example.com",
    "Referer": "https://cloud.example.com/apps/app_api/embedded/bee_flow/main",
    "Accept": "text/html",
    "Accept-Language": "nl",
    "Accept-Encoding": "gzip, br",
    "X-Origin-IP": "203.0.113.7",
}


@attrs.define
class Asked:
    method: str
    path_qs: str
    headers: CIMultiDict[str]


@attrs.define
class EmbedHost:
    """Serves /embed/...: index.html, assets/app.js; fails on demand."""

    asked: list[Asked] = attrs.field(factory=list)
    drop_next: int = 0  # close the connection without answering
    status: int | None = None  # answer every request with this status
    url: URL = attrs.field(factory=URL)
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(Asked(request.method, request.path_qs, CIMultiDict(request.headers)))
        if self.drop_next > 0:
            self.drop_next -= 1
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if self.status is not None:
            return web.Response(status=self.status, text="host trouble")
        files = {"/embed/": (SHELL_HTML, "text/html"), "/embed/assets/app.js": (b"hive();", "")}
        found = files.get(request.path)
        if found is None:
            return web.Response(status=404, text="not here")
        body, ctype = found
        response = web.Response(
            body=body,
            content_type=ctype or "text/javascript",
            headers={
                "Cache-Control": "public, max-age=600",
                "ETag": '"v1"',
                "Content-Security-Policy": "frame-ancestors 'none'",
                "X-Frame-Options": "DENY",
                "Strict-Transport-Security": "max-age=63072000",
            },
        )
        response.headers.add("Set-Cookie", "cdn_session=tracking; Path=/")
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = URL.build(scheme="http", host="127.0.0.1", port=self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def host() -> AsyncIterator[EmbedHost]:
    running = EmbedHost()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def conn(connector_factory: ConnectorFactory, host: EmbedHost) -> RunningConnector:
    return await connector_factory(BEEFLOW_EMBED_BASE_URL=str(host.url))


async def get(
    conn: RunningConnector, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    async with await conn.request(method, path, headers={**BROWSER, **(headers or {})}) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def test_the_shell_comes_from_the_hosts_embed_path(
    conn: RunningConnector, host: EmbedHost
) -> None:
    status, headers, body = await get(conn, "/", headers=appapi_headers(""))
    assert (status, body) == (200, SHELL_HTML)
    (asked,) = host.asked
    assert (asked.method, asked.path_qs) == ("GET", "/embed/")
    # Only what fetching a file needs; nothing of the user's, the browser's or AppAPI's.
    assert asked.headers["Accept-Encoding"] == "identity"
    assert asked.headers["Accept-Language"] == "nl"
    for name in ("Cookie", "Authorization", "Origin", "Referer", "X-Origin-IP"):
        assert name not in asked.headers, name
    for name in ("AUTHORIZATION-APP-API", "EX-APP-ID", "EX-APP-VERSION", "AA-VERSION"):
        assert name not in asked.headers, name
    assert SECRET not in str(asked.headers)
    # The host's cookies, CSP and frame options never reach the browser; ours do.
    assert "Set-Cookie" not in headers
    assert "X-Frame-Options" not in headers
    assert "Strict-Transport-Security" not in headers
    assert headers["Content-Security-Policy"].startswith("frame-ancestors 'self' ")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"  # the shell names new asset files each build
    assert headers["ETag"] == '"v1"'


async def test_assets_keep_their_path_query_and_caching(
    conn: RunningConnector, host: EmbedHost
) -> None:
    status, headers, body = await get(conn, "/assets/app.js?v=3")
    assert (status, body) == (200, b"hive();")
    assert host.asked[-1].path_qs == "/embed/assets/app.js?v=3"
    assert headers["Cache-Control"] == "public, max-age=600"
    status, headers, body = await get(conn, "/index.html")
    assert host.asked[-1].path_qs == "/embed/index.html"
    assert status == 200  # the host has no index.html (404): the bundled one answers
    assert body == (REPO_SPA / "index.html").read_bytes()


async def test_head_is_asked_as_head(conn: RunningConnector, host: EmbedHost) -> None:
    status, _, body = await get(conn, "/assets/app.js", method="HEAD")
    assert (status, body) == (200, b"")
    assert host.asked[-1].method == "HEAD"


async def test_a_dropped_connection_is_retried_once(
    conn: RunningConnector, host: EmbedHost
) -> None:
    host.drop_next = 1
    status, _, body = await get(conn, "/assets/app.js")
    assert (status, body) == (200, b"hive();")
    assert len(host.asked) == 2


async def test_the_bundled_ui_answers_when_the_host_does_not(
    conn: RunningConnector, host: EmbedHost
) -> None:
    host.drop_next = 2  # the attempt and its retry
    status, headers, body = await get(conn, "/")
    assert status == 200
    assert body == (REPO_SPA / "index.html").read_bytes()
    assert headers["Cache-Control"] == "no-store"
    assert len(host.asked) == 2
    assert conn.app[shell.EMBED].fallbacks == 1


async def test_a_host_that_is_gone_is_the_bundled_ui(
    connector_factory: ConnectorFactory,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn = await connector_factory(BEEFLOW_EMBED_BASE_URL=f"http://127.0.0.1:{port}")
    status, _, body = await get(conn, "/favicon.ico")
    assert status == 200
    assert body == (REPO_SPA / "favicon.ico").read_bytes()


@pytest.mark.parametrize("failure", [404, 500, 503])
async def test_missing_or_failing_files_fall_back_to_the_bundled_ui(
    conn: RunningConnector, host: EmbedHost, failure: int
) -> None:
    host.status = failure
    status, _, body = await get(conn, "/bee-flow-logo.svg")
    assert status == 200
    assert body == (REPO_SPA / "bee-flow-logo.svg").read_bytes()
    status, headers, _ = await get(conn, "/assets/nowhere.js")
    assert status == 404  # neither has it: the bundled UI's JSON 404
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "path",
    [
        "/js/embed.js",
        "/js/embed",
        "/img/app.svg",
        "/js/beeflow-setup.js",
        "/heartbeat",
        "/assets/..%2f..%2fadmin",
        "/assets/%2e%2e/admin",
        "/assets/.env",
    ],
)
async def test_connector_files_and_odd_paths_are_never_asked(
    conn: RunningConnector, host: EmbedHost, path: str
) -> None:
    await get(conn, path)
    assert host.asked == []


async def test_writes_never_reach_the_host(conn: RunningConnector, host: EmbedHost) -> None:
    async with await conn.request("POST", "/index.html", data=b"x") as resp:
        assert resp.status == 405
    assert host.asked == []


# ------------------------------------------------------------------ one build per prefix


@pytest.fixture
def per_prefix(tmp_path: Path) -> Path:
    """A full UI built twice, as the Dockerfile's hive stage does."""
    root = tmp_path / "spa"
    for build in ("proxy", "exapps"):
        (root / build / "assets").mkdir(parents=True)
        (root / build / "index.html").write_text(f"<!doctype html><title>{build}</title>")
        (root / build / "assets" / "app.js").write_text(f"/* {build} */")
    return root


@pytest.mark.parametrize(
    ("harp", "routing", "origin_ip", "build"),
    [
        # HaRP direct connect and Kubernetes: TCP, no HP_*, HaRP's requests have no X-Origin-IP.
        (False, "auto", False, "exapps"),
        (False, "auto", True, "proxy"),
        (True, "auto", True, "proxy"),
        (True, "auto", False, "exapps"),
        # BEEFLOW_ROUTING overrides the header either way.
        (False, "php", False, "proxy"),
        (True, "harp", True, "exapps"),
    ],
)
async def test_the_build_matching_the_route_answers(
    connector_factory: ConnectorFactory,
    per_prefix: Path,
    harp: bool,
    routing: str,
    origin_ip: bool,
    build: str,
) -> None:
    """Through Nextcloud's PHP proxy (it adds X-Origin-IP) the /index.php/apps/app_api/proxy/
    build, through HaRP's /exapps/ route the /exapps/ build, whatever the transport."""
    env = {"BEEFLOW_SPA_DIR": str(per_prefix), "BEEFLOW_ROUTING": routing}
    if harp:
        env.update(HP_SHARED_KEY="harp-shared-key-for-tests", HP_FRP_ADDRESS="127.0.0.1")
    conn = await connector_factory(**env)
    headers = {"X-Origin-IP": "203.0.113.7"} if origin_ip else {}
    for path, want in (("/", f"<title>{build}</title>"), ("/assets/app.js", f"/* {build} */")):
        async with await conn.request("GET", path, headers=headers) as resp:
            assert resp.status == 200
            assert want in await resp.text()


def test_builds_needs_both() -> None:
    assert spa.builds(REPO_SPA) is None  # one build for every prefix


async def test_the_shell_host_is_not_used_in_the_demo(
    connector_factory: ConnectorFactory, host: EmbedHost, make_config: Callable[..., Config]
) -> None:
    config = attrs.evolve(make_config(BEEFLOW_EMBED_BASE_URL=str(host.url)), demo=True)
    conn = await connector_factory(config)
    async with await conn.request("GET", "/") as resp:
        assert resp.status == 200
    assert host.asked == []


def test_the_images_full_ui_stage_builds_one_ui_per_prefix() -> None:
    """The Dockerfile's hive stage builds the UI as its repository does (Vite: --base and
    VITE_API_URL baked in), once per prefix, into the two directories spa.builds() expects."""
    dockerfile = (REPO_SPA.parent / "Dockerfile").read_text()
    proxy = "/index.php/apps/app_api/proxy/${APP_ID}"
    exapps = "/exapps/${APP_ID}"
    for prefix, out in ((proxy, "dist-proxy"), (exapps, "dist-exapps")):
        assert f'VITE_API_URL="{prefix}"' in dockerfile
        assert f'--base="{prefix}/" --outDir={out}' in dockerfile
    assert f"/hive/dist-proxy/ /spa/{spa.PROXY_BUILD}/" in dockerfile
    assert f"/hive/dist-exapps/ /spa/{spa.EXAPPS_BUILD}/" in dockerfile
