"""Send waits for the connection and says why; Retry shows only when there is something to
retry, and stays on one line at 380 px."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.browser.conftest import DESKTOP, PHONE, Console, shot_path, shots
from tests.browser.test_ui import (
    NOT_SET_UP,
    SESSION,
    TENANT_MISSING,
    Switch,
    forward,
    fulfil,
    refuse,
    script_errors,
)
from tests.demo.stack import DemoStack

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def composer(page: Any) -> dict[str, Any]:
    """What a person sees of the composer and the status: Send's state, the hint under it,
    whether Retry shows and the pill's state."""
    result: dict[str, Any] = await page.evaluate(
        """() => {
            const hint = document.getElementById("send-hint");
            return {
                send: !document.getElementById("send").disabled,
                hint: hint.hidden ? null : hint.textContent,
                retry: !document.getElementById("recheck").hidden,
                state: document.getElementById("conn").dataset.state,
            };
        }"""
    )
    return result


async def retry_on_one_line(page: Any) -> bool:
    """Retry's label takes one line box, the button lies inside the viewport, and it sits
    beside the pill (not wrapped onto a row of its own)."""
    result: bool = await page.evaluate(
        """() => {
            const button = document.getElementById("recheck");
            const range = document.createRange();
            range.selectNodeContents(button);
            const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
            const box = button.getBoundingClientRect();
            const pill = document.getElementById("conn").getBoundingClientRect();
            const middle = (box.top + box.bottom) / 2;
            return lines.size === 1 && box.left >= 0 && box.right <= window.innerWidth
                && middle > pill.top && middle < pill.bottom && box.left >= pill.right;
        }"""
    )
    return result


async def test_send_waits_for_the_connection_and_says_why(browser: Any, stack: DemoStack) -> None:
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    console = Console()
    console.attach(page)
    chats: list[str] = []
    page.on("request", lambda r: chats.append(r.url) if "chat/direct" in r.url else None)
    health = Switch()
    # While the first check is under way: nothing to send yet, nothing to retry.
    release = asyncio.Event()

    async def slow(route: Any) -> None:
        await release.wait()
        await fulfil(503, TENANT_MISSING)(route)

    health.reply = slow
    await page.route("**/api/health", health)
    await page.goto(stack.demo.url)
    await page.wait_for_selector('#conn[data-state="checking"]')
    assert await composer(page) == {
        "send": False,
        "hint": "Checking the connection\u2026",
        "retry": False,
        "state": "checking",
    }
    release.set()

    # Not set up yet: Send disabled, the reason under it, Retry offered.
    await page.wait_for_selector('#conn[data-state="degraded"]')
    assert await composer(page) == {
        "send": False,
        "hint": "Sending is paused: " + NOT_SET_UP,
        "retry": True,
        "state": "degraded",
    }
    # Enter does not send either.
    await page.fill("#message", "hello?")
    await page.press("#message", "Enter")
    assert chats == []
    assert await page.input_value("#message") == "hello?"
    await shots(page, "send-paused")
    await page.set_viewport_size(PHONE)
    assert await retry_on_one_line(page)
    await page.set_viewport_size(DESKTOP)

    # Connected: Send works, no hint, no Retry.
    health.reply = forward
    await page.click("#recheck")
    await page.wait_for_selector('#conn[data-state="connected"]')
    assert await composer(page) == {
        "send": True,
        "hint": None,
        "retry": False,
        "state": "connected",
    }
    await shots(page, "send-connected")
    await page.press("#message", "Enter")
    await page.wait_for_selector('.msg-assistant[data-state="done"]')
    assert len(chats) == 1

    # The connector gone (a network error): Send waits again, Retry is back.
    health.reply = refuse
    await page.evaluate("() => window.BeeFlowUI.checkConnection()")
    assert await composer(page) == {
        "send": False,
        "hint": "Sending is paused: Connector unreachable",
        "retry": True,
        "state": "offline",
    }
    await page.set_viewport_size(PHONE)
    assert await retry_on_one_line(page)
    await page.set_viewport_size(DESKTOP)

    # A lost session: the hint offers Reload, like the pill's sentence asks.
    health.reply = fulfil(404, "<html><body>Page not found</body></html>")
    await page.click("#recheck")
    await page.wait_for_selector('#conn[data-state="degraded"]')
    state = await composer(page)
    assert state["hint"] == "Sending is paused: " + SESSION + " Reload"
    assert (state["send"], state["retry"]) == (False, True)
    assert await page.locator("#send-hint button.reload").count() == 1
    await shots(page, "send-session")
    assert len(chats) == 1
    assert script_errors(console) == []
    await context.close()


@pytest.mark.parametrize("base", ["legacy", "harp"])
async def test_retry_never_wraps_at_phone_width(browser: Any, stack: DemoStack, base: str) -> None:
    """The longest pill sentence next to Retry at 380 px: the sentence wraps inside the pill,
    Retry keeps its one line and stays inside the screen."""
    context = await browser.new_context(viewport=PHONE)
    page = await context.new_page()
    await page.route(
        "**/api/health",
        fulfil(403, {"code": "nextcloud_email_missing", "error": "no address"}),
    )
    await page.goto(stack.demo.url if base == "legacy" else stack.demo.harp_url)
    await page.wait_for_selector('#conn[data-state="degraded"]')
    assert await page.is_visible("#recheck")
    assert await retry_on_one_line(page)
    pill_lines = await page.evaluate(
        """() => {
            const range = document.createRange();
            range.selectNodeContents(document.getElementById("conn"));
            return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
        }"""
    )
    assert pill_lines > 1  # the sentence itself wraps, inside the pill
    await page.screenshot(path=shot_path(f"retry-{base}-phone.png"))
    await context.close()
