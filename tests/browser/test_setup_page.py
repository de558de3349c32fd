"""The setup picker in a real Chromium: test ok / failing, save, blocked URL, env-locked."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from beeflow import keys
from beeflow.setup import CLOUD_URL
from tests.browser.conftest import Console, shot_path
from tests.demo.stack import DemoStack, start_demo_stack

pytestmark = pytest.mark.asyncio(loop_scope="session")


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def open_setup(browser: Any, url: str) -> tuple[Any, Any, Console]:
    context = await browser.new_context(viewport={"width": 900, "height": 760})
    page = await context.new_page()
    console = Console()
    console.attach(page)
    await page.goto(url)
    await page.wait_for_selector("body[data-ready='1']")
    return context, page, console


async def result(page: Any, kind: str) -> str:
    await page.wait_for_selector(f"#result[data-kind='{kind}']")
    return str(await page.text_content("#result"))


async def test_setup_flow(browser: Any, stack: DemoStack) -> None:
    demo = stack.demo
    assert demo.service is not None
    service_url = str(demo.service.url)
    context, page, console = await open_setup(browser, demo.setup_url)

    assert await page.text_content("#active") == service_url
    assert await page.text_content("#active-source") == "chosen here"
    assert await page.text_content("#tenant-status") == "Connected"
    assert len(await page.text_content("#fingerprint") or "") == 16
    assert "Demo mode" in (await page.text_content("#transport-note") or "")
    assert await page.text_content("#transport") == "Demo stand-in proxy (streaming)"
    assert await page.is_checked("#mode-self")
    assert await page.input_value("#url") == service_url
    assert await page.is_hidden("#env-lock")
    assert await page.is_enabled("#save")

    # Test connection: OK.
    await page.click("#test")
    text = await result(page, "ok")
    assert text == "Connection OK (HTTP 200, version demo-1, tier demo)"
    await page.screenshot(path=shot_path("setup-test-ok.png"))

    # Test connection: nothing listens there.
    await page.fill("#url", dead_url())
    await page.click("#test")
    text = await result(page, "error")
    assert text.startswith("Connection failed: Could not connect to the server")
    assert text.endswith("[unreachable]")
    await page.screenshot(path=shot_path("setup-test-failed.png"))
    assert console.errors == []

    # Cloud card: the URL field shows the cloud URL and is read-only.
    await page.check("#mode-cloud")
    assert await page.is_disabled("#url")
    assert await page.input_value("#url") == CLOUD_URL
    await page.check("#mode-self")
    assert await page.is_enabled("#url")

    # Save and connect: applied live, persisted, re-bootstrap started.
    await page.fill("#url", service_url + "/")
    await page.click("#save")
    text = await result(page, "ok")
    assert text.startswith(f"Saved. Now using {service_url}. Connection OK")
    await page.wait_for_function(
        "url => document.getElementById('active').textContent === url", arg=service_url
    )
    saved = json.loads((stack.config.persistent_storage / "setup-config.json").read_text())
    assert saved["apiBaseUrl"] == service_url
    assert str(stack.app[keys.API_BASE].url) == service_url
    await page.screenshot(path=shot_path("setup-saved.png"))

    # A metadata address is refused with its code, and nothing changes.
    await page.fill("#url", "http://169.254.169.254")
    await page.click("#save")
    text = await result(page, "error")
    assert text.startswith("Not saved:")
    assert text.endswith("[blocked_host]")
    assert str(stack.app[keys.API_BASE].url) == service_url
    await context.close()


@pytest_asyncio.fixture(loop_scope="session")
async def locked_stack() -> AsyncIterator[DemoStack]:
    running = await start_demo_stack(env_overrides={"BEEFLOW_API_BASE_URL": dead_url()})
    yield running
    await running.close()


async def test_setup_env_locked(browser: Any, locked_stack: DemoStack) -> None:
    env_url = str(locked_stack.app[keys.API_BASE].url)
    context, page, console = await open_setup(browser, locked_stack.demo.setup_url)
    assert await page.is_visible("#env-lock")
    assert await page.text_content("#env-url") == env_url
    assert await page.text_content("#active-source") == "from environment"
    assert await page.is_disabled("#save")
    assert await page.is_disabled("#mode-cloud")
    assert await page.is_disabled("#mode-self")
    assert await page.is_disabled("#url")
    assert await page.input_value("#url") == env_url
    # Testing stays possible (here: nothing listens at the pinned URL).
    assert await page.is_enabled("#test")
    await page.click("#test")
    assert (await result(page, "error")).endswith("[unreachable]")
    await page.screenshot(path=shot_path("setup-env-locked.png"))
    assert console.errors == []
    # The API refuses too (the Node reference only disabled the button).
    answer = await page.evaluate(
        """async () => {
            const r = await fetch("setup", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({mode: "cloud"})});
            return [r.status, await r.json()];
        }"""
    )
    assert answer[0] == 409
    assert answer[1]["code"] == "env_locked"
    assert str(locked_stack.app[keys.API_BASE].url) == env_url
    await context.close()
