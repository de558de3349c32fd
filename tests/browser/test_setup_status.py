"""The setup page's connection state in a real Chromium: after saving a service that does not
answer, it says so in red instead of a green "Connected"; saving one that answers turns it
green again."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import shot_path
from tests.browser.test_setup_page import open_setup, result
from tests.demo.stack import DemoStack
from tests.ports import refused_url

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_an_unreachable_saved_service_is_shown_as_not_connected(
    browser: Any, stack: DemoStack
) -> None:
    demo = stack.demo
    assert demo.service is not None
    context, page, console = await open_setup(browser, demo.setup_url)
    try:
        assert await page.text_content("#tenant-status") == "Connected"
        assert await page.get_attribute("#tenant-status", "class") == "state-ok"

        await page.fill("#url", refused_url())
        await page.click("#save")
        assert (await result(page, "error")).startswith(f"Saved. Now using {refused_url()}.")
        await page.wait_for_selector("#tenant-status[data-state='unreachable']")
        text = await page.text_content("#tenant-status") or ""
        assert text.startswith("Not connected: the Bee Flow service does not answer")
        assert text.endswith("[unreachable])")
        assert await page.get_attribute("#tenant-status", "class") == "state-bad"
        await page.screenshot(path=shot_path("setup-saved-unreachable.png"))

        await page.fill("#url", str(demo.service.url))
        await page.click("#save")
        await result(page, "ok")
        await page.wait_for_selector("#tenant-status[data-state='connected']")
        assert await page.text_content("#tenant-status") == "Connected"
        assert await page.get_attribute("#tenant-status", "class") == "state-ok"
        assert console.errors == []
    finally:
        await context.close()
