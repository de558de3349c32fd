"""The chat UI in a real Chromium: three base paths, progressive SSE rendering, PATCH tunnel."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web

from beeflow.app import make_app
from beeflow.config import Config
from beeflow.demo import DEMO_TENANT_KEY, Demo
from beeflow.demo.service import reply_pieces
from beeflow.setup import store
from tests.browser.conftest import Console, shot_path
from tests.demo.stack import DemoStack
from tests.fakes.service import FakeService, StreamPlan, chat_pieces
from tests.fakes.service_control import ServiceControl

pytestmark = pytest.mark.asyncio(loop_scope="session")

BASES = ["legacy", "harp", "root"]
# HaRP answers a browser's request for these with a silent drop and counts it towards banning
# the client's IP (contract 1.3, step 6): the UI must never ask for them.
LIFECYCLE = re.compile(r"/(heartbeat|init|enabled)(\?.*)?$")
SESSION = "Your Nextcloud session may have expired \u2014 reload the page"
NOT_SET_UP = (
    "Not connected to the Bee Flow service yet \u2014 an administrator has to finish the setup"
)
TENANT_MISSING = {
    "code": "tenant_key_missing",
    "error": "The connector is not connected to the Bee Flow service yet; try again shortly",
}


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
    assert origin + path + "api/health" in requested
    assert not [u for u in requested if LIFECYCLE.search(u)]
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
    assert await page.text_content("#conv-title") == message.split(",")[0] + ", please"
    assert await page.is_disabled("#send")

    gate.release()
    await page.wait_for_selector('.msg-assistant[data-chunks="1"]')
    # Rendered as Markdown: a paragraph, its trailing space dropped.
    assert await text.text_content() == pieces[0].rstrip()
    assert await text.locator("p").count() == 1
    assert await reply.get_attribute("data-state") == "streaming"

    gate.release()
    gate.release()
    await page.wait_for_selector('.msg-assistant[data-chunks="3"]')
    assert await text.text_content() == "".join(pieces[:3]).rstrip()
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
    await rename_to(page, "Weekly plan")
    await page.wait_for_selector('#notice:text("Conversation renamed.")')
    assert service.conversations == {"demo-1": "Weekly plan"}
    assert await page.text_content("#conv-title") == "Weekly plan"
    renames = [r for r in seen if "/ai/direct/conversations/" in r.url]
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


async def rename_to(page: Any, title: str) -> None:
    """Rename the open conversation through the UI: Rename, type, Save."""
    await page.click("#rename")
    await page.fill("#title", title)
    await page.click("#rename-save")


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
    # The failed send re-checked the connection: the pill says it, Send waits for it.
    await page.wait_for_selector('#conn[data-state="degraded"]')
    assert await page.is_disabled("#send")
    assert await page.is_visible("#recheck")
    # Nothing lost: the message is back in the composer.
    assert await page.input_value("#message") == "anyone there?"
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


Reply = Callable[[Any], Awaitable[None]]


def script_errors(console: Console) -> list[str]:
    """What the page's script said, without Chromium's own line for each 4xx/5xx it loaded
    (the failures these tests provoke on purpose)."""
    return [
        e
        for e in console.errors
        if e.startswith(("pageerror", "console.")) and "Failed to load resource" not in e
    ]


def fulfil(status: int, body: str | dict[str, Any], content_type: str | None = None) -> Reply:
    text = json.dumps(body) if isinstance(body, dict) else body
    ctype = content_type or ("application/json" if isinstance(body, dict) else "text/html")

    async def reply(route: Any) -> None:
        await route.fulfill(status=status, body=text, headers={"Content-Type": ctype})

    return reply


async def refuse(route: Any) -> None:
    await route.abort("connectionrefused")


async def forward(route: Any) -> None:
    await route.continue_()


class Switch:
    """A route handler whose answer the test changes between checks."""

    def __init__(self) -> None:
        self.reply: Reply = forward

    async def __call__(self, route: Any) -> None:
        await self.reply(route)


async def watch_lifecycle(page: Any) -> list[str]:
    """Every request the page makes for a lifecycle path (refused like HaRP would)."""
    asked: list[str] = []

    async def refuse_lifecycle(route: Any) -> None:
        asked.append(route.request.url)
        await route.abort("connectionreset")

    await page.route(LIFECYCLE, refuse_lifecycle)
    return asked


async def pill(page: Any) -> tuple[str, str, str, str]:
    await page.wait_for_selector('#conn:not([data-state="checking"])')
    result = await page.eval_on_selector(
        "#conn", "e => [e.dataset.state, e.textContent, e.title, e.dataset.code || '']"
    )
    return result[0], result[1], result[2], result[3]


async def recheck(page: Any) -> tuple[str, str, str, str]:
    """Check the connection again: with Retry when it is shown (not connected); while
    connected there is no Retry, so the check the UI runs when a tab is shown again."""
    if await page.is_visible("#recheck"):
        await page.click("#recheck")
    else:
        assert await page.get_attribute("#conn", "data-state") == "connected"
        await page.evaluate("() => window.BeeFlowUI.checkConnection()")
    return await pill(page)


@pytest.mark.parametrize("base", BASES)
async def test_pill_states_and_no_lifecycle_requests(
    browser: Any, stack: DemoStack, base: str
) -> None:
    """Issue (review, HIGH): the pill used to fetch `heartbeat` from the browser and stop there.
    Only `api/health` decides now: a network error = connector unreachable, a JSON code = that
    state, an HTML 401/403/404 = the front refused a lost session."""
    seen: list[Any] = []
    demo = stack.demo
    assert demo.nextcloud is not None
    headers = {}
    if base == "legacy":
        url = demo.url
    elif base == "harp":
        url = demo.harp_url
    else:
        url = str(stack.connector_url) + "/"
        headers = demo.nextcloud.appapi_headers("admin")
    context = await browser.new_context(
        viewport={"width": 1100, "height": 720}, extra_http_headers=headers
    )
    page = await context.new_page()
    console = Console()
    console.attach(page)
    page.on("request", lambda r: seen.append(r))
    asked = await watch_lifecycle(page)
    health = Switch()
    await page.route("**/api/health", health)
    await page.goto(url)

    state = await pill(page)
    assert state[:2] == ("connected", "Connected (demo-1)")

    health.reply = fulfil(503, TENANT_MISSING)
    state = await recheck(page)
    assert state == (
        "degraded",
        NOT_SET_UP,
        "tenant_key_missing: " + TENANT_MISSING["error"],
        "tenant_key_missing",
    )
    if base == "harp":
        await page.screenshot(path=shot_path("ui-pill-tenant-missing.png"))
        # The long sentence wraps inside the bar on a phone; nothing scrolls sideways.
        await page.set_viewport_size({"width": 380, "height": 640})
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        await page.screenshot(path=shot_path("ui-pill-tenant-missing-narrow.png"))
        assert overflow <= 0
        await page.set_viewport_size({"width": 1100, "height": 720})

    # The service really down: the connector's own 502 upstream_unreachable.
    health.reply = forward
    assert demo.service is not None
    await demo.service.stop()
    state = await recheck(page)
    assert state[0] == "degraded"
    assert state[1] == "The Bee Flow service cannot be reached"
    assert state[3] == "upstream_unreachable"
    if base == "harp":
        await page.screenshot(path=shot_path("ui-pill-service-down.png"))

    health.reply = fulfil(504, {"code": "upstream_timeout", "error": "The service timed out"})
    assert (await recheck(page))[:2] == ("degraded", "The Bee Flow service is not answering")

    health.reply = refuse
    state = await recheck(page)
    assert state[:2] == ("offline", "Connector unreachable")
    if base == "harp":
        await page.screenshot(path=shot_path("ui-pill-unreachable.png"))

    # Not our JSON: Nextcloud's 500 when the ExApp is down, a reverse proxy's empty 502.
    health.reply = fulfil(500, "")
    assert (await recheck(page))[:2] == ("offline", "Connector unreachable (HTTP 500)")
    health.reply = fulfil(502, "", "text/plain")
    assert (await recheck(page))[:2] == ("offline", "Connector unreachable (HTTP 502)")

    # A lost session: Nextcloud's PHP proxy answers 404 HTML, HaRP's HAProxy 403.
    health.reply = fulfil(404, "<html><body>Page not found</body></html>")
    assert (await recheck(page))[:2] == ("degraded", SESSION)
    health.reply = fulfil(403, "<html><body><h1>403 Forbidden</h1></body></html>")
    assert (await recheck(page))[:2] == ("degraded", SESSION)
    if base == "harp":
        await page.screenshot(path=shot_path("ui-pill-session.png"))

    assert asked == []
    assert not [r.url for r in seen if LIFECYCLE.search(r.url)]
    assert script_errors(console) == []
    await context.close()


CHAT_FAILURES = [
    # (name, status, body, content type, expected text, reload button)
    (
        "legacy-session-404",
        404,
        "<!DOCTYPE html><html><body><h2>Page not found</h2></body></html>",
        "text/html; charset=UTF-8",
        "Could not send: " + SESSION,
        True,
    ),
    (
        "harp-session-403",
        403,
        "<html><body><h1>403 Forbidden</h1>Request forbidden by administrative rules.</body>",
        "text/html",
        "Could not send: " + SESSION,
        True,
    ),
    (
        # The service's connectorJwt when no tenant key of its own verifies the token.
        "no-matching-key-401",
        401,
        {"error": "Connector token rejected: no matching tenant key"},
        None,
        "Could not send: " + SESSION + " (Connector token rejected: no matching tenant key)",
        True,
    ),
    (
        "tenant-key-missing",
        503,
        TENANT_MISSING,
        None,
        # The answer links administrators to the setup page (test_admin_pages.py).
        "Could not send: "
        + NOT_SET_UP
        + " [tenant_key_missing] Administrators: open the setup page",
        False,
    ),
    (
        # The service's streamTurn.js refusal of an empty turn.
        "service-400",
        400,
        {"error": "Message or attachments required"},
        None,
        "Could not send: Message or attachments required",
        False,
    ),
    (
        # terminalErrorHandler.js: an unexpected failure, with a correlation id.
        "service-500",
        500,
        {"error": "Internal server error", "correlationId": "7b0e"},
        None,
        "Could not send: Internal server error",
        False,
    ),
    (
        # connectorJwt.js before the organisation's admin finished the onboarding wizard.
        "onboarding-pending-403",
        403,
        {"error": "Setup in progress", "code": "NC_ONBOARDING_PENDING"},
        None,
        "Could not send: Bee Flow is being set up by your administrator \u2014 try again in a "
        "few minutes [NC_ONBOARDING_PENDING]",
        False,
    ),
    (
        # The connector's own answer for a Nextcloud account without an e-mail address.
        "no-email-403",
        403,
        {"error": "no address", "code": "nextcloud_email_missing"},
        None,
        "Could not send: Your Nextcloud account has no e-mail address \u2014 add one under "
        "Personal settings, then reload [nextcloud_email_missing]",
        False,
    ),
]


@pytest.mark.parametrize(
    ("status", "body", "ctype", "expected", "reload"),
    [case[1:] for case in CHAT_FAILURES],
    ids=[case[0] for case in CHAT_FAILURES],
)
async def test_send_failure_says_why(
    browser: Any,
    stack: DemoStack,
    status: int,
    body: str | dict[str, Any],
    ctype: str | None,
    expected: str,
    reload: bool,
) -> None:
    """Issue (review 5): "Could not send: HTTP 404" told nobody anything."""
    context, page, console, _ = await open_ui(browser, stack, "harp")
    await page.wait_for_selector('#conn[data-state="connected"]')
    await page.route("**/ai/chat/direct/stream", fulfil(status, body, ctype))
    await page.fill("#message", "hello?")
    await page.press("#message", "Enter")
    await page.wait_for_selector('.msg-assistant[data-state="error"]')
    text = page.locator(".msg-assistant .text")
    button = text.locator("button.reload")
    assert await button.count() == (1 if reload else 0)
    # The button's label follows the sentence inside the same element.
    assert (await text.text_content() or "") == expected + (" Reload" if reload else "")
    if reload:
        await page.screenshot(path=shot_path(f"chat-failed-{status}.png"))
        async with page.expect_navigation():
            await button.click()
        await page.wait_for_selector('#conn[data-state="connected"]')
        assert await page.locator(".msg").count() == 0
    assert script_errors(console) == []
    await context.close()


async def test_rename_failure_says_why(browser: Any, stack: DemoStack) -> None:
    context, page, console, _ = await open_ui(browser, stack, "legacy")
    await page.wait_for_selector('#conn[data-state="connected"]')
    await page.fill("#message", "hello")
    await page.press("#message", "Enter")
    await page.wait_for_selector('.msg-assistant[data-state="done"]')
    await page.route(
        "**/ai/direct/conversations/*",
        fulfil(404, "<html><body>Page not found</body></html>"),
    )
    await rename_to(page, "Weekly plan")
    await page.wait_for_selector("#notice button.reload")
    assert await page.get_attribute("#notice", "data-kind") == "error"
    assert await page.text_content("#notice") == "Rename failed: " + SESSION + " Reload"
    await page.screenshot(path=shot_path("rename-failed-session.png"))
    # A JSON error of ours: its own words and code, no reload button.
    await page.unroute("**/ai/direct/conversations/*")
    await page.route(
        "**/ai/direct/conversations/*",
        fulfil(400, {"code": "invalid_body", "error": "The title is too long"}),
    )
    await page.click("#rename-save")  # the form stays open after a failure
    await page.wait_for_selector('#notice:text("Rename failed: The title is too long")')
    assert (
        await page.text_content("#notice") == "Rename failed: The title is too long [invalid_body]"
    )
    assert await page.locator("#notice button.reload").count() == 0
    assert script_errors(console) == []
    await context.close()


async def test_chat_round_trip_against_the_strict_fake_service(browser: Any) -> None:
    """The bundled UI against the fake that follows the real service (its JWT rules, its
    routes, its strict rename body), not the demo's stand-in: a reply streams in, the rename
    reaches the service as PATCH and sticks."""
    service = FakeService(control=ServiceControl(verify_key=DEMO_TENANT_KEY))
    await service.start()
    service.sse = StreamPlan(chat_pieces(["Real ", "routes", "."], conversation_id="c-77"))
    demo = Demo(delay=0.0)
    env = await demo.start()
    store.save(Path(env["APP_PERSISTENT_STORAGE"]), "self-hosted", str(service.url))
    config = attrs.evolve(Config.from_env(env), demo=True)
    runner = web.AppRunner(make_app(config, run_at_boot=False), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.app_host, config.app_port).start()
        context = await browser.new_context(viewport={"width": 1100, "height": 720})
        page = await context.new_page()
        console = Console()
        console.attach(page)
        await page.goto(demo.url)
        await page.wait_for_selector('#conn[data-state="connected"]')
        assert (await page.text_content("#conn") or "").startswith("Connected (0f3c2a1b)")
        await page.fill("#message", "Which routes?")
        await page.press("#message", "Enter")
        await page.wait_for_selector('.msg-assistant[data-state="done"]')
        assert await page.locator(".msg-assistant .text").text_content() == "Real routes."
        chat = service.last("/ai/chat/direct/stream")
        assert (chat.auth, chat.user_email) == ("ok", "admin@demo.invalid")
        assert json.loads(chat.body)["message"] == "Which routes?"
        await rename_to(page, "Routes")
        await page.wait_for_selector('#notice:text("Conversation renamed.")')
        rename = service.last("/ai/direct/conversations/c-77")
        assert (rename.method, json.loads(rename.body)) == ("PATCH", {"title": "Routes"})
        assert service.conversations["c-77"].title == "Routes"
        await page.screenshot(path=shot_path("chat-strict-fake.png"))
        assert console.errors == []
        await context.close()
    finally:
        await runner.cleanup()
        await demo.stop()
        await service.stop()
