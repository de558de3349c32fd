"""What an administrator and a user see of the admin surfaces in a real Chromium, against the
demo stack: a Files action's redirect target (the embedded page with the files in context),
the "an administrator has to finish the setup" answer linking the setup page, and the setup
page it opens. The screenshots are the ones docs/administration.md shows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Console, shot_path
from tests.demo.stack import DemoStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
TENANT_MISSING = {
    "code": "tenant_key_missing",
    "error": "The connector is not connected to the Bee Flow service yet; try again shortly",
}


def keep_for_docs(name: str) -> None:
    """The docs show these screenshots: refresh them when BEEFLOW_DOCS_SHOTS is set."""
    if os.environ.get("BEEFLOW_DOCS_SHOTS"):
        DOCS_IMAGES.mkdir(exist_ok=True)
        shutil.copyfile(shot_path(name), DOCS_IMAGES / name)


async def new_page(browser: Any, width: int = 1000, height: int = 620) -> tuple[Any, Any, Console]:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    console = Console()
    console.attach(page)
    return context, page, console


async def test_a_files_action_opens_the_ui_with_the_files(browser: Any, stack: DemoStack) -> None:
    demo = stack.demo
    context, page, console = await new_page(browser)
    # Where Nextcloud's Files app sends the browser after the handler's redirect_handler.
    await page.goto(demo.embedded_url + "/summarise?fileIds=12,13")
    frame_el = await page.wait_for_selector("#content iframe")
    src = await frame_el.get_attribute("src")
    frame_path = "/index.php/apps/app_api/proxy/bee_flow/index.html"
    assert src == frame_path + "?ncFileIds=12,13&ncFileAction=summarise"
    frame = await frame_el.content_frame()
    assert frame is not None
    await frame.wait_for_selector("#context:not([hidden])")
    assert await frame.text_content("#context") == (
        "Nextcloud files #12, #13 \u2014 Summarise with Bee Flow"
    )
    assert await frame.input_value("#message") == ("Summarise the Nextcloud files with ids 12, 13.")
    await frame.wait_for_selector('#conn[data-state="connected"]')
    await page.screenshot(path=shot_path("admin-files-context.png"))
    keep_for_docs("admin-files-context.png")
    assert console.errors == []
    await context.close()


@pytest.mark.parametrize(
    "query",
    [
        "?ncFileIds=12<b>x</b>&ncFileAction=ask",
        "?ncFileIds=1,,2",
        "?ncFileIds=" + ",".join(["1"] * 101),
        "?ncFileAction=summarise",
    ],
)
async def test_anything_else_in_the_file_parameters_is_ignored(
    browser: Any, stack: DemoStack, query: str
) -> None:
    context, page, _ = await new_page(browser)
    await page.goto(stack.demo.harp_url + query)
    await page.wait_for_selector("#conn:not([data-state='checking'])")
    assert await page.is_hidden("#context")
    assert await page.input_value("#message") == ""
    await context.close()


async def test_the_setup_answer_links_the_setup_page(browser: Any, stack: DemoStack) -> None:
    context, page, console = await new_page(browser, height=420)

    async def not_set_up(route: Any) -> None:
        await route.fulfill(status=503, json=TENANT_MISSING)

    await page.route("**/api/health", not_set_up)
    await page.goto(stack.demo.harp_url)
    link = await page.wait_for_selector("#setup-link:not([hidden])")
    href = await link.get_attribute("href")
    assert href is not None
    assert href.endswith("/exapps/bee_flow/setup")
    await page.screenshot(path=shot_path("admin-ui-setup-link.png"))
    keep_for_docs("admin-ui-setup-link.png")

    # The same answer to a chat message carries the link too.
    await page.route("**/ai/chat/direct/stream", not_set_up)
    await page.fill("#message", "hello")
    await page.click("#send")
    bubble_link = await page.wait_for_selector(".msg-assistant .setup-link")
    assert (await bubble_link.get_attribute("href") or "").endswith("/exapps/bee_flow/setup")

    # It opens the setup page (the demo's stand-in signs the browser in as its admin).
    async with context.expect_page() as opened:
        await page.click("#setup-link")
    setup = await opened.value
    await setup.wait_for_load_state()
    assert setup.url.endswith("/exapps/bee_flow/setup")
    await setup.wait_for_selector("#status, h1")
    assert "Bee Flow" in (await setup.title())
    await setup.set_viewport_size({"width": 1000, "height": 900})
    await setup.screenshot(path=shot_path("admin-setup-page.png"))
    keep_for_docs("admin-setup-page.png")

    # Once connected, the link is gone.
    await page.unroute("**/api/health")
    await page.click("#recheck")
    await page.wait_for_selector('#conn[data-state="connected"]')
    assert await page.is_hidden("#setup-link")
    assert [e for e in console.errors if "503" not in e] == []
    await context.close()
