"""The demo's start page (the stand-in Nextcloud's `/`): styled like the bundled UI, every entry
point a working link, readable on a phone."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import DESKTOP, Console, shots
from tests.demo.stack import DemoStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENTRIES = [
    ("Inside Nextcloud (embedded)", "/index.php/apps/app_api/embedded/bee_flow/main"),
    ("The UI on its own", "/index.php/apps/app_api/proxy/bee_flow/"),
    ("The UI the HaRP way", "/exapps/bee_flow/"),
    ("Setup picker (admin)", "/index.php/apps/app_api/proxy/bee_flow/setup"),
]


async def test_landing_page_is_styled_and_its_links_work(browser: Any, stack: DemoStack) -> None:
    root = str(stack.demo.nextcloud_url)
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    console = Console()
    console.attach(page)
    await page.goto(root + "/")
    assert await page.title() == "Bee Flow demo"
    assert await page.text_content("h1") == "Bee Flow demo"

    # The UI's look: its paper background, ink, system font, honey accents, the logo.
    look = await page.evaluate(
        """() => {
            const body = getComputedStyle(document.body);
            const card = getComputedStyle(document.querySelector(".card"));
            const logo = document.querySelector("header img");
            return {
                background: body.backgroundColor, color: body.color,
                font: body.fontFamily, radius: card.borderRadius,
                logo: logo.complete && logo.naturalWidth > 0,
            };
        }"""
    )
    if look["background"] == "rgb(23, 21, 15)":  # a dark-mode browser
        assert look["color"] == "rgb(241, 237, 226)"
    else:
        assert (look["background"], look["color"]) == ("rgb(255, 253, 247)", "rgb(29, 27, 22)")
    assert look["font"].startswith("system-ui")
    assert look["radius"] == "12px"
    assert look["logo"]

    cards = page.locator("a.card")
    found = [
        ((await cards.nth(i).locator("b").text_content()), await cards.nth(i).get_attribute("href"))
        for i in range(await cards.count())
    ]
    assert found == ENTRIES
    await shots(page, "landing")
    for _, href in ENTRIES:
        answer = await page.request.get(root + href)
        assert answer.status == 200, href
        assert answer.headers["content-type"].startswith("text/html"), href
    # The first card opens the chat inside the Nextcloud-like page.
    await page.click("a.card.primary")
    await page.wait_for_url(root + ENTRIES[0][1])
    await page.frame_locator("#content iframe").locator('#conn[data-state="connected"]').wait_for()
    assert console.errors == []
    await context.close()
