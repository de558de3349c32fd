"""Conversations survive a reload: the bundled UI lists, reopens, renames and deletes them with
the service's own routes (`GET /ai/direct/conversations`, `GET|PATCH|DELETE
/ai/direct/conversations/<id>`, the ones its agent-hub UI calls), here against the strict fake
of the service, through the real connector and the stand-in Nextcloud fronts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.conftest import DESKTOP, PHONE, Console, StrictStack, shot_path, shots
from tests.browser.test_ui import fulfil, script_errors
from tests.fakes.service import StreamPlan, turn_pieces

pytestmark = pytest.mark.asyncio(loop_scope="session")

LONG_TITLE = "Weekly planning for the marketing team and the product launch in the spring of 2026"
LIST = "/ai/direct/conversations"


async def open_ui(browser: Any, url: str) -> tuple[Any, Any, Console, list[Any]]:
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    console = Console()
    console.attach(page)
    seen: list[Any] = []
    page.on("request", lambda r: seen.append(r))
    await page.goto(url)
    await page.wait_for_selector('#conn[data-state="connected"]')
    return context, page, console, seen


async def send(page: Any, text: str) -> None:
    done = await page.locator('.msg-assistant[data-state="done"]').count()
    await page.fill("#message", text)
    await page.press("#message", "Enter")
    await page.wait_for_function(
        "n => document.querySelectorAll('.msg-assistant[data-state=\"done\"]').length > n",
        arg=done,
    )


async def listed(page: Any) -> list[str]:
    names: list[str] = await page.locator("#history-list .conv-name").all_text_contents()
    return names


async def bubbles(page: Any) -> list[tuple[str, str]]:
    found: list[list[str]] = await page.eval_on_selector_all(
        "#log .msg",
        "items => items.map(i => [i.classList.contains('msg-user') ? 'user' : 'assistant',"
        " i.querySelector('.text').textContent])",
    )
    return [(role, text) for role, text in found]


async def cut_with_ellipsis(page: Any, selector: str) -> bool:
    """True when the element's text is wider than its box and CSS ends it with an ellipsis."""
    result: bool = await page.eval_on_selector(
        selector,
        "e => e.scrollWidth > e.clientWidth && getComputedStyle(e).textOverflow === 'ellipsis'"
        " && getComputedStyle(e).whiteSpace === 'nowrap'",
    )
    return result


async def test_conversations_survive_a_reload(browser: Any, strict_stack: StrictStack) -> None:
    service = strict_stack.service
    context, page, console, seen = await open_ui(browser, strict_stack.demo.url)
    await page.wait_for_selector('#history-status:text("No conversations yet.")')

    # A first conversation, streamed in the real service's order: the content, then
    # conversation_created, done, and the generated title only after done.
    pieces = turn_pieces(
        ["Here is **the plan**:\n\n", "- one\n- two"],
        conversation_id="c-1",
        title=LONG_TITLE,
        gated=True,
    )
    service.sse = StreamPlan(pieces)
    await page.fill("#message", "Plan the week")
    await page.press("#message", "Enter")
    for _ in pieces[1:-1]:
        service.gate.put_nowait(None)
    await page.wait_for_selector('.msg-assistant[data-state="done"]')
    # `done` frees the composer at once; the title is still the service's placeholder.
    await page.fill("#message", "x")
    assert not await page.is_disabled("#send")
    await page.fill("#message", "")
    assert await page.text_content("#conv-title") == "New Chat"
    assert await listed(page) == ["New Chat"]
    service.gate.put_nowait(None)  # the title event
    await page.wait_for_function(
        "t => document.getElementById('conv-title').textContent === t", arg=LONG_TITLE
    )
    assert await listed(page) == [LONG_TITLE]

    # A follow-up stays in the conversation.
    service.sse = StreamPlan(
        turn_pieces(["Sure, *Tuesday* too."], conversation_id="c-1", new=False)
    )
    await send(page, "And Tuesday?")
    chat = service.last("/ai/chat/direct/stream")
    assert json.loads(chat.body) == {"message": "And Tuesday?", "conversationId": "c-1"}

    # A second conversation.
    await page.click("#new")
    assert await page.text_content("#conv-title") == "New conversation"
    assert await page.locator("#log .msg").count() == 0
    service.sse = StreamPlan(turn_pieces(["Other."], conversation_id="c-2", title="Short one"))
    await send(page, "Something else")
    await page.wait_for_function(
        "() => document.getElementById('conv-title').textContent === 'Short one'"
    )
    assert await listed(page) == ["Short one", LONG_TITLE]

    # Reload: the list comes from the service, the conversation this tab had open reopens.
    await page.reload()
    await page.wait_for_selector('#conn[data-state="connected"]')
    await page.wait_for_selector("body[data-conversation='c-2'] #log .msg-assistant")
    assert await listed(page) == ["Short one", LONG_TITLE]
    assert await bubbles(page) == [("user", "Something else"), ("assistant", "Other.")]
    current = page.locator('#history-list .conv[aria-current="true"]')
    assert await current.get_attribute("data-id") == "c-2"

    # Open the first one from the list: its whole history, replies as Markdown.
    await page.click('#history-list .conv[data-id="c-1"]')
    await page.wait_for_selector("body[data-conversation='c-1']")
    assert await bubbles(page) == [
        ("user", "Plan the week"),
        ("assistant", "Here is the plan:onetwo"),
        ("user", "And Tuesday?"),
        ("assistant", "Sure, Tuesday too."),
    ]
    first = page.locator(".msg-assistant .text").first
    assert await first.locator("strong").text_content() == "the plan"
    assert await first.locator("li").count() == 2
    assert await page.locator(".msg-assistant .text em").text_content() == "Tuesday"
    assert await page.text_content("#conv-title") == LONG_TITLE

    # Automatic titles are cut with an ellipsis, whole in the tooltip.
    assert await page.get_attribute("#conv-title", "title") == LONG_TITLE
    assert await cut_with_ellipsis(page, '#history-list .conv[data-id="c-1"] .conv-name')
    await page.set_viewport_size(PHONE)
    assert await cut_with_ellipsis(page, "#conv-title")
    await shots(page, "history")

    # On a phone the list slides in over the chat and closes when a conversation is picked.
    await page.set_viewport_size(PHONE)
    assert not await page.is_visible("#history")
    await page.click("#toggle-history")
    await page.wait_for_selector("#history", state="visible")
    assert await page.get_attribute("#toggle-history", "aria-expanded") == "true"
    await page.screenshot(path=shot_path("history-open-phone.png"))
    await page.click('#history-list .conv[data-id="c-2"]')
    await page.wait_for_selector("body[data-conversation='c-2']")
    await page.wait_for_selector("#history", state="hidden")

    # The service saw its own routes, each as the signed-in user, the list without a query.
    lists = service.find(LIST, "GET")
    assert len(lists) == 2
    assert {r.auth for r in lists} == {"ok"}
    assert {len(r.query) for r in lists} == {0}
    assert [r.auth for r in service.find(LIST + "/c-1", "GET")] == ["ok"]
    base = strict_stack.demo.url
    assert all(r.url.startswith(base) for r in seen), [r.url for r in seen]
    assert console.errors == []
    await context.close()


async def test_rename_and_delete(browser: Any, strict_stack: StrictStack) -> None:
    """Under the HaRP prefix: rename (POST + override, the service gets PATCH) and delete
    (a real DELETE), each kept across a reload."""
    service = strict_stack.service
    context, page, console, seen = await open_ui(browser, strict_stack.demo.harp_url)
    service.sse = StreamPlan(turn_pieces(["Numbers."], conversation_id="c-9", title="Budget"))
    await send(page, "The budget")
    await page.wait_for_function(
        "() => document.getElementById('conv-title').textContent === 'Budget'"
    )

    await page.click("#rename")
    assert await page.input_value("#title") == "Budget"
    await page.fill("#title", "Budget 2026")
    await page.press("#title", "Enter")
    await page.wait_for_selector('#notice:text("Conversation renamed.")')
    assert await page.text_content("#conv-title") == "Budget 2026"
    assert await listed(page) == ["Budget 2026"]
    assert service.conversations["c-9"].title == "Budget 2026"
    assert [r.method for r in service.find(LIST + "/c-9") if r.method != "GET"] == ["PATCH"]
    sent = [r for r in seen if r.url.endswith("/ai/direct/conversations/c-9")]
    assert [(r.method, r.headers.get("x-http-method-override")) for r in sent] == [
        ("POST", "PATCH")
    ]
    # Escape leaves the title alone.
    await page.click("#rename")
    await page.fill("#title", "Never sent")
    await page.press("#title", "Escape")
    assert await page.is_hidden("#rename-form")
    assert await page.text_content("#conv-title") == "Budget 2026"

    await page.reload()
    await page.wait_for_selector("body[data-conversation='c-9'] #log .msg-assistant")
    assert await page.text_content("#conv-title") == "Budget 2026"

    # Delete asks first; "Keep" sends nothing.
    await page.click("#delete")
    assert await page.text_content("#confirm-text") == (
        "Delete \u201cBudget 2026\u201d? This cannot be undone."
    )
    await shots(page, "delete-confirm")
    await page.click("#delete-no")
    assert await page.is_hidden("#confirm-delete")
    assert service.find(LIST + "/c-9", "DELETE") == []

    await page.click("#delete")
    await page.click("#delete-yes")
    await page.wait_for_selector('#notice:text("Conversation deleted.")')
    assert "c-9" not in service.conversations
    assert [r.auth for r in service.find(LIST + "/c-9", "DELETE")] == ["ok"]
    assert await listed(page) == []
    assert await page.text_content("#conv-title") == "New conversation"
    assert await page.is_hidden("#delete")
    assert await page.is_hidden("#rename")

    await page.reload()
    await page.wait_for_selector('#history-status:text("No conversations yet.")')
    assert await page.get_attribute("body", "data-conversation") == ""
    assert await page.locator("#log .msg").count() == 0
    assert all("/exapps/bee_flow/" in r.url for r in seen)
    assert console.errors == []
    await context.close()


async def test_history_failures_say_why(browser: Any, strict_stack: StrictStack) -> None:
    service = strict_stack.service
    context, page, console, _ = await open_ui(browser, strict_stack.demo.url)
    service.sse = StreamPlan(turn_pieces(["Hi."], conversation_id="c-3", title="Greeting"))
    await send(page, "Hello")
    await page.click("#new")

    async def reload_list() -> str:
        await page.evaluate("() => window.BeeFlowUI.loadHistory()")
        return await page.text_content("#history-status") or ""

    # The service's own 500 for a failed list: its words.
    await page.route(
        "**/ai/direct/conversations", fulfil(500, {"error": "Failed to list conversations"})
    )
    assert await reload_list() == "Could not load the conversations: Failed to list conversations"
    assert await listed(page) == ["Greeting"]  # what was listed stays
    # Not a list at all.
    await page.unroute("**/ai/direct/conversations")
    await page.route("**/ai/direct/conversations", fulfil(200, {"rows": []}))
    assert await reload_list() == "Could not load the conversations: unexpected answer"
    # A lost session (Nextcloud's PHP proxy answers 404 HTML): the sentence and Reload.
    await page.unroute("**/ai/direct/conversations")
    await page.route("**/ai/direct/conversations", fulfil(404, "<html><body>Not found</body>"))
    status = await reload_list()
    assert status.startswith("Could not load the conversations: Your Nextcloud session may")
    assert await page.locator("#history-status button.reload").count() == 1
    # Rows that are not conversations, or ids that are no single path segment, are left out.
    await page.unroute("**/ai/direct/conversations")
    junk = [{"id": ".."}, {"id": "."}, {"title": "no id"}, "junk", {"id": "c-3", "title": None}]
    await page.route(
        "**/ai/direct/conversations",
        lambda route: route.fulfill(status=200, json=junk),
    )
    assert await reload_list() == ""
    assert await listed(page) == ["Untitled conversation"]
    await page.unroute("**/ai/direct/conversations")
    assert await reload_list() == ""
    assert await listed(page) == ["Greeting"]

    # Deleted elsewhere: opening it says so and drops it from the list.
    del service.conversations["c-3"]
    await page.click('#history-list .conv[data-id="c-3"]')
    await page.wait_for_selector('#notice:text("That conversation no longer exists.")')
    assert await listed(page) == []
    assert await page.get_attribute("body", "data-conversation") == ""
    assert script_errors(console) == []
    await context.close()
