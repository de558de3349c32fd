"""The app's root without its trailing slash. Nextcloud's PHP proxy hands the connector `/` for
both `.../proxy/bee_flow` and `.../proxy/bee_flow/` (measured on Nextcloud 32.0.1, and HaRP
forwards the same way), so the connector cannot redirect there: the page itself says what to
do. The demo's stand-in front, which can tell, redirects (tests/demo/test_demo.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from beeflow.demo.loopback import serve_loopback
from tests.browser.conftest import DESKTOP, Console, shot_path
from tests.demo.stack import DemoStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

PREFIX: Final = "/index.php/apps/app_api/proxy/bee_flow"


@pytest_asyncio.fixture(loop_scope="session")
async def nextcloud_like(stack: DemoStack) -> AsyncIterator[URL]:
    """A front that forwards PREFIX and PREFIX/<path> to the connector as / and /<path>, as
    AppAPI's PHP proxy does, and nothing else (like Nextcloud: another app's path is a 404)."""
    session = aiohttp.ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"].lstrip("/")
        target = stack.connector_url.with_path(path).with_query(request.query)
        async with session.get(target, allow_redirects=False) as upstream:
            body = await upstream.read()
            kept = ("Content-Type", "Content-Encoding", "Cache-Control")
            headers = {k: upstream.headers[k] for k in kept if k in upstream.headers}
            return web.Response(status=upstream.status, body=body, headers=headers)

    app = web.Application()
    app.router.add_get(PREFIX + "{tail:(/.*)?}", forward)
    runner, url = await serve_loopback(app)
    yield url
    await runner.cleanup()
    await session.close()


async def hint_visible(browser: Any, url: str, shot: str) -> tuple[bool, list[str]]:
    context = await browser.new_context(viewport=DESKTOP)
    try:
        page = await context.new_page()
        console = Console()
        console.attach(page)
        await page.goto(url, wait_until="load")
        visible = bool(await page.locator(".slash-hint").is_visible())
        await page.screenshot(path=shot_path(shot))
        return visible, console.errors
    finally:
        await context.close()


async def test_without_the_slash_the_page_says_what_to_do(
    browser: Any, nextcloud_like: URL
) -> None:
    visible, errors = await hint_visible(
        browser, str(nextcloud_like) + PREFIX, "ui-no-trailing-slash.png"
    )
    assert visible
    assert any("/index.php/apps/app_api/proxy/assets/" in e for e in errors), errors


async def test_with_the_slash_the_hint_stays_hidden(browser: Any, nextcloud_like: URL) -> None:
    for path in (PREFIX + "/", PREFIX + "/index.html"):
        visible, errors = await hint_visible(
            browser, str(nextcloud_like) + path, "ui-trailing-slash.png"
        )
        assert not visible, path
        assert [e for e in errors if "/assets/" in e] == []
