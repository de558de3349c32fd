"""The chat UI in a real Chromium: three base paths, progressive SSE rendering, PATCH tunnel."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from beeflow.demo.service import reply_pieces
from tests.browser.conftest import Console, shot_path
from tests.demo.stack import DemoStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

BASES = ["legacy", "harp", "root"]


async def open_ui(
    browser: Any, stack: DemoStack, base: str, requested: list[Any] | None = None
) -> tuple[Any, Any, Console, str]:
    """A page showing the UI under `base`; returns (context, page, console, expected path).
    Every request the page makes is appended to `requested` when given."""
    demo = stack.demo
    assert demo.nextcloud is not None
    headers: dict[str, str] = {}
    if base == "legacy":
        url, path = demo.url, "/index.php/apps/app_api/proxy/bee_flow/"
    elif base == "harp":
        url, path = demo.harp_url, "/exapps/bee_flow/"
    else:
        # The connector at the root of its own origin, its proxy adding AppAPI's headers.
        url, path = str(stack.connector_url) + "/", "/"
        headers = demo.nextcloud.appapi_headers("admin")
    context = await browser.new_context(
        viewport={"width": 1100, "height": 720}, extra_http_headers=headers
    )
    page = await context.new_page()
    console = Console()
    console.attach(page)
    if requested is not None:
        page.on("request", lambda r: requested.append(r))
    await page.goto(url)
    return context, page, console, path


@pytest.mark.parametrize("base", BASES)
async def test_ui_loads_under_each_base_path(browser: Any, stack: DemoStack, base: str) -> None:
    seen: list[Any] = []
    context, page, console, path = await open_ui(browser, stack, base, seen)
    await page.wait_for_selector('#conn[data-state="connected"]')
    assert await page.title() == "Bee Flow"
    assert await page.get_attribute("body", "data-base") == path
    assert (await page.text_content("#conn") or "").startswith("Connected (demo-1)")
    # Everything came from under the base path: nothing absolute escaped it.
    origin = page.url.split(path, 1)[0] if path != "/" else page.url.rstrip("/")
    requested = [r.url for r in seen]
    for url in requested:
        assert url.startswith(origin + path), url
    assert origin + path + "heartbeat" in requested
    assert origin + path + "api/health" in requested
    logo_ok = await page.evaluate(
        "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert logo_ok
    await page.screenshot(path=shot_path(f"ui-{base}.png"))
    assert console.errors == []
    await context.close()


async def test_chat_reply_renders_progressively(browser: Any, stack: DemoStack) -> None:
    service = stack.demo.service
    assert service is not None
    gate = asyncio.Semaphore(0)

    async def step(index: int) -> None:
        await gate.acquire()

    service.pace = step
    message = "Plan my week, please"
    pieces = reply_pieces("Demo Admin", message)
    context, page, console, _ = await open_ui(browser, stack, "legacy")
    await page.wait_for_selector('#conn[data-state="connected"]')
    await page.fill("#message", message)
    await page.press("#message", "Enter")

    reply = page.locator(".msg-assistant").last
    text = reply.locator(".text")
    # conversation_created arrived, no content yet.
    await page.wait_for_function("() => document.body.dataset.conversation === 'demo-1'")
    assert await reply.get_attribute("data-state") == "waiting"
    assert await text.text_content() == ""
    assert await page.input_value("#title") == message.split(",")[0] + ", please"
    assert await page.is_disabled("#send")

    gate.release()
    await page.wait_for_selector('.msg-assistant[data-chunks="1"]')
    assert await text.text_content() == pieces[0]
    assert await reply.get_attribute("data-state") == "streaming"

    gate.release()
    gate.release()
    await page.wait_for_selector('.msg-assistant[data-chunks="3"]')
    assert await text.text_content() == "".join(pieces[:3])
    assert await reply.get_attribute("data-state") == "streaming"
    await page.screenshot(path=shot_path("chat-streaming.png"))

    for _ in pieces[3:]:
        gate.release()
    await page.wait_for_selector('.msg-assistant[data-state="done"]')
    assert await text.text_content() == "".join(pieces)
    assert await reply.get_attribute("data-chunks") == str(len(pieces))
    assert not await page.is_disabled("#send")
    await page.screenshot(path=shot_path("chat-done.png"))
    assert console.errors == []
    await context.close()


async def test_rename_uses_post_with_method_override(browser: Any, stack: DemoStack) -> None:
    service = stack.demo.service
    assert service is not None
    seen: list[Any] = []
    context, page, console, _ = await open_ui(browser, stack, "legacy", seen)
    await page.wait_for_selector('#conn[data-state="connected"]')
    await page.fill("#message", "hello")
    await page.press("#message", "Enter")
    await page.wait_for_selector('.msg-assistant[data-state="done"]')
    await page.fill("#title", "Weekly plan")
    await page.click("#rename")
    await page.wait_for_selector('#notice:text("Conversation renamed.")')
    assert service.conversations == {"demo-1": "Weekly plan"}
    renames = [r for r in seen if "/api/ai/direct/conversations/" in r.url]
    assert [(r.method, r.headers.get("x-http-method-override")) for r in renames] == [
        ("POST", "PATCH")
    ]
    assert not [r for r in seen if r.method == "PATCH"]
    # The service saw a real PATCH (the connector restored the verb).
    assert [s.method for s in service.seen if "/conversations/" in s.path] == ["PATCH"]
    # A follow-up message stays in the conversation.
    await page.fill("#message", "and Tuesday?")
    await page.press("#message", "Enter")
    await page.wait_for_function(
        "() => document.querySelectorAll('.msg-assistant[data-state=\"done\"]').length === 2"
    )
    assert list(service.conversations) == ["demo-1"]
    assert console.errors == []
    await context.close()


async def test_failed_reply_is_shown_not_blank(browser: Any, stack: DemoStack) -> None:
    """Reference 3.5: every transport failure used to look like an empty answer."""
    context, page, _console, _ = await open_ui(browser, stack, "legacy")
    await page.wait_for_selector('#conn[data-state="connected"]')
    assert stack.demo.service is not None
    await stack.demo.service.stop()
    await page.fill("#message", "anyone there?")
    await page.press("#message", "Enter")
    await page.wait_for_selector('.msg-assistant[data-state="error"]')
    text = await page.locator(".msg-assistant .text").text_content() or ""
    assert text.startswith("Could not send:")
    assert "[upstream_unreachable]" in text or "[upstream" in text
    await page.click("#recheck")
    await page.wait_for_selector('#conn[data-state="degraded"]')
    await page.screenshot(path=shot_path("chat-service-down.png"))
    await context.close()


async def test_legacy_buffered_reply_arrives_whole_and_renders(
    browser: Any, stack: DemoStack
) -> None:
    """NC 32's PHP proxy delivers a reply only when it ends (issue 10, fact 1): the UI still
    shows the whole answer, marked done, never an empty one."""
    assert stack.demo.nextcloud is not None
    assert stack.demo.service is not None
    stack.demo.nextcloud.buffer_legacy = True
    stack.demo.service.delay = 0.02
    context, page, console, _ = await open_ui(browser, stack, "legacy")
    await page.wait_for_selector('#conn[data-state="connected"]')
    await page.fill("#message", "all at once")
    await page.press("#message", "Enter")
    await page.wait_for_selector('.msg-assistant[data-state="done"]')
    pieces = reply_pieces("Demo Admin", "all at once")
    assert await page.locator(".msg-assistant .text").text_content() == "".join(pieces)
    assert console.errors == []
    await context.close()
