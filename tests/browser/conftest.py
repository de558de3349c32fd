"""Headless Debian Chromium driven by Playwright for Python (never `playwright install`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_asyncio
from aiohttp import web

from beeflow.app import make_app
from beeflow.config import Config
from beeflow.demo import DEMO_TENANT_KEY, Demo
from beeflow.setup import store
from tests.demo.stack import DemoStack, start_demo_stack
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl

CHROMIUM = os.environ.get("BEEFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _unavailable() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e .[test])"
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Missing browser: skip on a developer machine; in CI (where .ci/run installs it) the
    tests run anyway and fail loudly."""
    reason = None if os.environ.get("CI") else _unavailable()
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@attrs.define
class Console:
    """Everything the page said that a person would call an error."""

    errors: list[str] = attrs.field(factory=list)

    def attach(self, page: Any) -> None:
        page.on(
            "console",
            lambda m: (
                self.errors.append(f"console.{m.type}: {m.text}")
                if m.type in ("error", "assert")
                else None
            ),
        )
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on(
            "requestfailed",
            lambda r: self.errors.append(f"requestfailed: {r.url} {r.failure}"),
        )
        page.on(
            "response",
            lambda r: self.errors.append(f"http {r.status}: {r.url}") if r.status >= 400 else None,
        )


# One Chromium for the whole session (launching costs ~1.5 s); each test gets its own context.
# Browser test modules therefore run in the session's event loop:
#     pytestmark = pytest.mark.asyncio(loop_scope="session")
@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


@pytest_asyncio.fixture(loop_scope="session")
async def stack() -> AsyncIterator[DemoStack]:
    running = await start_demo_stack()
    yield running
    await running.close()


def shot_path(name: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)


# ------------------------------------------------------------------ the UI against the strict fake

# The two widths every UI screenshot is taken at.
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 380, "height": 720}


@attrs.define
class StrictStack:
    """The demo's stand-in Nextcloud and the real connector in front of the strict fake of the
    Bee Flow service (tests/fakes/service.py) instead of the demo's stand-in service."""

    demo: Demo
    service: FakeService
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.demo.stop()
        await self.service.stop()


async def start_strict_stack() -> StrictStack:
    service = FakeService(control=ServiceControl(verify_key=DEMO_TENANT_KEY))
    await service.start()
    demo = Demo(delay=0.0)
    try:
        env = await demo.start()
        store.save(Path(env["APP_PERSISTENT_STORAGE"]), "self-hosted", str(service.url))
        config = attrs.evolve(Config.from_env(env), demo=True)
        runner = web.AppRunner(make_app(config, run_at_boot=False), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, config.app_host, config.app_port).start()
        except BaseException:
            await runner.cleanup()
            raise
    except BaseException:
        await demo.stop()
        await service.stop()
        raise
    return StrictStack(demo, service, runner)


@pytest_asyncio.fixture(loop_scope="session")
async def strict_stack() -> AsyncIterator[StrictStack]:
    running = await start_strict_stack()
    yield running
    await running.close()


async def sideways_overflow(page: Any) -> float:
    """How far the page scrolls sideways (0 when everything fits the viewport)."""
    return float(
        await page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
    )


async def shots(page: Any, name: str) -> None:
    """`<name>-desktop.png` at 1280 px and `<name>-phone.png` at 380 px, checking that nothing
    scrolls sideways on the phone; the viewport is left as it was."""
    before = page.viewport_size
    await page.set_viewport_size(DESKTOP)
    await page.screenshot(path=shot_path(f"{name}-desktop.png"))
    await page.set_viewport_size(PHONE)
    await page.screenshot(path=shot_path(f"{name}-phone.png"))
    assert await sideways_overflow(page) <= 0, f"{name}: scrolls sideways at 380 px"
    if before:
        await page.set_viewport_size(before)
