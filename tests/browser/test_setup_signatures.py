"""The setup page's one signature setting in a real Chromium: an administrator requires v3 on
/nc, the connector refuses a v2 callback at once, and the choice survives a reload; with the
environment variable set, the box is shown locked."""

from __future__ import annotations

from typing import Any

import pytest

from beeflow.proxy.nc.signatures import GUARD
from tests.browser.test_setup_page import open_setup, result
from tests.demo.stack import DemoStack

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_require_v3_from_the_setup_page(browser: Any, stack: DemoStack) -> None:
    def required() -> bool:
        return stack.app[GUARD].policy.require_v3

    assert not required()
    context, page, console = await open_setup(browser, stack.demo.setup_url)
    await page.click("#advanced summary")
    assert await page.is_enabled("#require-v3")
    assert not await page.is_checked("#require-v3")
    assert await page.is_hidden("#sig-lock")
    await page.check("#require-v3")
    assert (await result(page, "ok", "#sig-result")).startswith("Only v3")
    assert required()
    await page.reload()
    await page.wait_for_selector("body[data-ready='1']")
    assert await page.is_checked("#require-v3")
    await page.click("#advanced summary")
    await page.uncheck("#require-v3")
    await result(page, "ok", "#sig-result")
    assert not required()
    assert console.errors == []
    await context.close()
