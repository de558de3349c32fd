"""The embed script (/js/embed.js) inside a page that imitates Nextcloud's embedded app page:
it replaces #content with an iframe of the UI and sizes it to the viewport (reference 8.2)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Console, shot_path
from tests.demo.stack import DemoStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

HEADER = 50  # Nextcloud's top bar; #content starts below it


async def frame_height(page: Any) -> float:
    return float(
        await page.evaluate(
            "() => document.querySelector('#content iframe').getBoundingClientRect().height"
        )
    )


async def wait_height(page: Any, expected: int) -> None:
    await page.wait_for_function(
        "h => Math.round(document.querySelector('#content iframe')"
        ".getBoundingClientRect().height) === h",
        arg=expected,
    )


async def test_embed_sizes_its_iframe(browser: Any, stack: DemoStack) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    console = Console()
    console.attach(page)
    await page.goto(stack.demo.embedded_url)
    iframe = page.locator("#content iframe")
    await iframe.wait_for()

    # Legacy mode frames index.html through AppAPI's PHP proxy (the .html gets the CSP nonce).
    assert await iframe.get_attribute("src") == "/index.php/apps/app_api/proxy/bee_flow/index.html"
    assert await iframe.get_attribute("allow") == "clipboard-read; clipboard-write"
    assert await page.locator("#content > *").count() == 1  # the placeholder was replaced
    top = await page.evaluate(
        "() => document.querySelector('#content iframe').getBoundingClientRect().top"
    )
    assert top == HEADER
    await wait_height(page, 800 - HEADER)

    # The UI inside the frame is the real one, connected, with its base derived from its URL.
    frame = page.frame_locator("#content iframe")
    await frame.locator('#conn[data-state="connected"]').wait_for()
    assert (
        await frame.locator("body").get_attribute("data-base")
        == "/index.php/apps/app_api/proxy/bee_flow/"
    )
    # The composer is fully inside the viewport (1.0.2: calc(100vh - 50px) clipped it).
    send_box = await frame.locator("#send").bounding_box()
    assert send_box is not None
    assert send_box["y"] + send_box["height"] <= 800
    # A chat inside the frame streams like outside it.
    await frame.locator("#message").fill("Hello from inside Nextcloud")
    await frame.locator("#message").press("Enter")
    await frame.locator('.msg-assistant[data-state="done"]').wait_for()
    await page.screenshot(path=shot_path("embedded.png"))

    # Resizing the window resizes the frame; it never gets smaller than 320 px.
    await page.set_viewport_size({"width": 1024, "height": 600})
    await wait_height(page, 600 - HEADER)
    await page.set_viewport_size({"width": 800, "height": 300})
    await wait_height(page, 320)
    await page.set_viewport_size({"width": 1280, "height": 900})
    await wait_height(page, 900 - HEADER)
    assert await frame_height(page) == 900 - HEADER
    assert console.errors == []
    await context.close()
