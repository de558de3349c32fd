"""The setup page in a real Chromium: test ok / failing, save, blocked URL, env-locked; the tenant
actions: e-mail verification, pairing code, key rotation, the key env lock."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_asyncio
from aiohttp import web

from beeflow.app import make_app
from beeflow.config import Config
from beeflow.demo import Demo
from beeflow.service_client import SERVICE_URL
from beeflow.setup import store
from beeflow.setup.status import CLOUD_URL
from beeflow.tenant.failures import REMEDIATION
from beeflow.tenant.state import TENANT, fingerprint
from beeflow.tenant.wiring import bootstrapper
from tests.browser.conftest import Console, shot_path
from tests.demo.stack import DemoStack, start_demo_stack
from tests.fakes.service import FakeService
from tests.fakes.service_control import PAIRED_KEY, PROVISIONED_KEY, ServiceControl

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


async def result(page: Any, kind: str, selector: str = "#result") -> str:
    await page.wait_for_selector(f"{selector}[data-kind='{kind}']")
    return str(await page.text_content(selector))


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
    assert text == "Connection OK (HTTP 200, build demo-1)"
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
    assert str(stack.app[SERVICE_URL].url) == service_url
    await page.screenshot(path=shot_path("setup-saved.png"))

    # A metadata address is refused with its code, and nothing changes.
    await page.fill("#url", "http://169.254.169.254")
    await page.click("#save")
    text = await result(page, "error")
    assert text.startswith("Not saved:")
    assert text.endswith("[blocked_host]")
    assert str(stack.app[SERVICE_URL].url) == service_url
    await context.close()


@pytest_asyncio.fixture(loop_scope="session")
async def locked_stack() -> AsyncIterator[DemoStack]:
    running = await start_demo_stack(env_overrides={"BEEFLOW_API_BASE_URL": dead_url()})
    yield running
    await running.close()


async def test_setup_env_locked(browser: Any, locked_stack: DemoStack) -> None:
    env_url = str(locked_stack.app[SERVICE_URL].url)
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
    assert str(locked_stack.app[SERVICE_URL].url) == env_url
    await context.close()


# ------------------------------------------------------------------ tenant actions


@attrs.define
class TenantStack:
    """The demo's Nextcloud stand-in and proxy front, the fake service with its control
    endpoints, and a connector in BEEFLOW_TENANT_KEY=auto mode pointed at that service."""

    demo: Demo
    service: FakeService
    control: ServiceControl
    app: web.Application
    runner: web.AppRunner
    storage: Path

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.demo.stop()
        await self.service.stop()


async def start_tenant_stack(control: ServiceControl) -> TenantStack:
    service = FakeService(control=control)
    await service.start()
    demo = Demo(delay=0.0)
    env = await demo.start()
    storage = Path(env["APP_PERSISTENT_STORAGE"])
    # The picker's saved choice: the fake service instead of the demo's stand-in.
    store.save(storage, "self-hosted", str(service.url))
    config = attrs.evolve(Config.from_env({**env, "BEEFLOW_TENANT_KEY": "auto"}), demo=True)
    app = make_app(config, run_at_boot=False)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, config.app_host, config.app_port).start()
    running = TenantStack(demo, service, control, app, runner, storage)
    await bootstrapper(app).ensure()
    return running


def unexpected(console: Console) -> list[str]:
    """Errors other than the HTTP error answers of setup actions the tests provoke on purpose
    (Chromium also logs those as "Failed to load resource"): no page error, no failed request."""
    return [
        e
        for e in console.errors
        if not (e.startswith(("http 4", "http 502")) and "/setup/" in e)
        and "Failed to load resource: the server responded with a status of" not in e
    ]


async def test_email_verification(browser: Any) -> None:
    """The service answers 202 and e-mails nobody: the page, opened by an admin, has the code
    sent to that admin at once and says where it went."""
    control = ServiceControl()
    control.add_org("Acme", domain="demo.invalid", key=PROVISIONED_KEY)
    stack = await start_tenant_stack(control)
    try:
        assert control.mails == []
        context, page, console = await open_setup(browser, stack.demo.setup_url)
        assert await page.text_content("#tenant-status") == "Waiting for e-mail verification"
        assert await page.is_visible("#verify-card")
        assert await page.is_hidden("#pair-card")
        text = await result(page, "ok", "#verify-result")
        assert text.startswith("A code was sent to your address a•••n@demo.invalid. It is valid")
        assert [(m.to, m.kind) for m in control.mails] == [("admin@demo.invalid", "retarget")]
        assert control.retargets == [
            {"email": "admin@demo.invalid", "uid": "admin", "displayName": "Demo Admin"}
        ]
        await page.wait_for_function(
            "() => document.getElementById('verify-where').textContent.includes('a•••n@demo')"
        )
        where = await page.text_content("#verify-where")
        assert where == "A code was sent to a•••n@demo.invalid (an administrator's own address)."
        assert await page.text_content("#verify-org") == "Acme"
        assert "valid until" in (await page.text_content("#verify-expiry") or "")
        # Accessible names: the inputs are found by their labels, the buttons by their text.
        code = page.get_by_label("Verification code")
        assert await code.get_attribute("id") == "verify-code"
        assert await code.get_attribute("autocomplete") == "one-time-code"
        await page.screenshot(path=shot_path("setup-verify-pending.png"))

        await code.fill("12345")
        await page.get_by_role("button", name="Verify").click()
        text = await result(page, "error", "#verify-result")
        assert text == "Enter the 6 digits from the e-mail. [invalid_code_format]"
        assert await code.get_attribute("aria-invalid") == "true"
        assert control.verifications == []

        wrong = "000000" if control.last_mail().code != "000000" else "000001"
        await code.fill(wrong)
        await page.get_by_role("button", name="Verify").click()
        text = await result(page, "error", "#verify-result")
        assert text == "That code is not right (4 attempts left) [wrong_code]"
        await page.wait_for_function(
            "() => document.getElementById('verify-expiry').textContent.includes('4 attempts left')"
        )
        await page.screenshot(path=shot_path("setup-verify-wrong.png"))

        await page.get_by_role("button", name="Send it to the address the service holds").click()
        text = await result(page, "ok", "#verify-result")
        assert text.startswith(
            "A new code was sent to a•••n@demo.invalid (the address the service holds). It is"
        )
        assert len(control.resends) == 1
        assert len(control.mails) == 2

        await page.get_by_role("button", name="Send a code to me").click()
        text = await result(page, "ok", "#verify-result")
        assert text.startswith("A code was sent to your address a•••n@demo.invalid.")
        assert len(control.retargets) == 2
        await page.screenshot(path=shot_path("setup-verify-sent-to-me.png"))

        latest = control.last_mail().code
        await code.fill(latest[:3] + " " + latest[3:])  # pasted with a space
        await page.keyboard.press("Enter")
        text = await result(page, "ok", "#tenant-result")
        fp = fingerprint(PROVISIONED_KEY)
        assert text == f"E-mail address confirmed. Connected to Acme (key fingerprint {fp})."
        await page.wait_for_selector("#verify-card", state="hidden")
        assert await page.text_content("#tenant-status") == "Connected"
        assert await page.text_content("#fingerprint") == fp
        assert stack.app[TENANT].key == PROVISIONED_KEY
        assert PROVISIONED_KEY not in await page.content()
        await page.screenshot(path=shot_path("setup-verified.png"))
        assert unexpected(console) == []
        await context.close()
    finally:
        await stack.close()


async def test_pairing_code(browser: Any) -> None:
    """A self-hosted server that refuses new organisations: the page explains the pairing code
    and the server's provisioning setting, and binds with a code."""
    control = ServiceControl()
    control.provisioning = "pairing_only"
    stack = await start_tenant_stack(control)
    try:
        context, page, console = await open_setup(browser, stack.demo.setup_url)
        assert await page.text_content("#tenant-status") == "Failed"
        problem = await page.text_content("#tenant-problem") or ""
        assert problem == (
            "Bee Flow service: HTTP 403: This Bee Flow server does not auto-create "
            "organisations for new Nextcloud instances. Enter a pairing code below. "
            "[pairing_required]"
        )
        assert await page.is_visible("#pair-card")
        assert await page.is_hidden("#verify-card")
        why = await page.text_content("#pair-why") or ""
        assert why.startswith(
            "This Bee Flow server asks for a pairing code before it connects a new Nextcloud. "
        )
        assert "Pair a new Nextcloud" in why
        assert "BEEFLOW_CONNECTOR_PROVISIONING=open" in why
        code = page.get_by_label("Pairing code")
        await page.screenshot(path=shot_path("setup-pairing.png"))

        await code.fill("abcd")
        await page.get_by_role("button", name="Apply pairing code").click()
        text = await result(page, "error", "#pair-result")
        assert text.endswith("[invalid_pairing_code]")
        assert text.startswith("A pairing code looks like ABCD-EFGH")

        valid = control.issue_pairing_code(control.add_org("Existing Org", key=PAIRED_KEY))
        await code.fill("")
        await code.press_sequentially("wxyz-6789")
        assert await code.input_value() == "WXYZ-6789"  # upper-cased as typed
        await page.get_by_role("button", name="Apply pairing code").click()
        text = await result(page, "error", "#pair-result")
        assert text.startswith("The Bee Flow service did not accept this pairing code.")
        assert "works once" in text  # the remediation of pairing_code_invalid
        assert text.endswith("[pairing_code_rejected]")
        assert "6789" not in text
        await page.screenshot(path=shot_path("setup-pairing-rejected.png"))

        await code.fill(valid.lower())
        await page.get_by_role("button", name="Apply pairing code").click()
        text = await result(page, "ok", "#tenant-result")
        fp = fingerprint(PAIRED_KEY)
        assert text == f"Pairing code accepted. Connected to Existing Org (key fingerprint {fp})."
        assert control.bootstraps[-1].headers["X-Beeflow-Pairing-Code"] == valid
        await page.wait_for_function(
            "() => document.getElementById('tenant-status').textContent === 'Connected'"
        )
        assert await page.is_hidden("#pair-card")
        assert await page.is_hidden("#tenant-problem")
        assert valid[5:] not in await page.content()
        await page.screenshot(path=shot_path("setup-paired.png"), full_page=True)
        assert unexpected(console) == []
        await context.close()
    finally:
        await stack.close()


async def test_rotate_tenant_key(browser: Any) -> None:
    """Against the service that issued it, a rotation confirms the organisation's one key."""
    control = ServiceControl()
    stack = await start_tenant_stack(control)
    try:
        before = fingerprint(PROVISIONED_KEY)
        context, page, console = await open_setup(browser, stack.demo.setup_url)
        assert await page.text_content("#fingerprint") == before
        assert await page.is_hidden("#rotate")  # inside the closed Advanced section
        await page.get_by_text("Advanced").click()
        rotate = page.get_by_role("button", name="Rotate tenant key")
        assert await rotate.is_enabled()
        assert await page.is_hidden("#key-lock")
        messages: list[str] = []

        def answer(accept: bool) -> Any:
            def handle(dialog: Any) -> Any:
                messages.append(dialog.message)
                return dialog.accept() if accept else dialog.dismiss()

            return handle

        page.once("dialog", answer(False))
        await rotate.click()
        assert await result(page, "info", "#rotate-result") == "Not rotated."
        assert messages[0].startswith("Rotate the tenant key?")
        assert len(control.bootstraps) == 1

        page.once("dialog", answer(True))
        await rotate.click()
        text = await result(page, "ok", "#rotate-result")
        assert text == (
            f"The Bee Flow service confirmed the key in use (fingerprint {before}): it keeps "
            "one key per organisation."
        )
        assert len(control.bootstraps) == 2
        assert control.bootstraps[-1].answer["code"] == "returning_bind"
        previous = json.loads((stack.storage / "tenant-key.previous.json").read_text())
        assert previous["tenantKey"] == PROVISIONED_KEY
        await page.screenshot(path=shot_path("setup-rotated.png"), full_page=True)

        # The service fails the next rotation: the message and remediation are shown.
        control.fault = (503, {"error": "maintenance"})
        page.once("dialog", answer(True))
        await rotate.click()
        text = await result(page, "error", "#rotate-result")
        assert text.startswith("Provisioning a new key failed; the previous state is kept.")
        assert text.endswith("[bootstrap_failed]")
        assert stack.app[TENANT].key == PROVISIONED_KEY
        assert unexpected(console) == []
        await context.close()
    finally:
        await stack.close()


async def test_rotation_waiting_for_the_code_keeps_the_old_key(browser: Any) -> None:
    """The service no longer has this Nextcloud's organisation (deleted there) and another with
    the admin's domain exists: a rotation waits for the e-mailed code, the key in use stays
    until then, and the code goes to the admin who clicked."""
    control = ServiceControl()
    stack = await start_tenant_stack(control)
    try:
        old = fingerprint(PROVISIONED_KEY)
        (bound,) = control.orgs.values()
        del control.orgs[bound.id]
        control.users = {e: u for e, u in control.users.items() if u.org_id != bound.id}
        new_key = "tk_rotated_aabbccddeeff00112233445566778899"
        control.add_org("Acme", domain="demo.invalid", key=new_key)
        context, page, console = await open_setup(browser, stack.demo.setup_url)
        await page.get_by_text("Advanced").click()
        rotate = page.get_by_role("button", name="Rotate tenant key")
        page.on("dialog", lambda dialog: dialog.accept())
        await rotate.click()
        await page.wait_for_function(
            "() => document.getElementById('rotate-result').textContent.includes('enter it above')"
        )
        text = str(await page.text_content("#rotate-result"))
        assert text == (
            "The service asks to confirm an e-mail address before it issues the key: a code was "
            "sent to a•••n@demo.invalid; enter it above. The current key stays in use until then."
        )
        assert [(m.to, m.kind) for m in control.mails] == [("admin@demo.invalid", "retarget")]
        await page.wait_for_selector("#verify-card", state="visible")
        status = "Connected (the new key waits for e-mail verification)"
        assert await page.text_content("#tenant-status") == status
        assert await page.get_attribute("#tenant-status", "class") == "state-ok"
        assert await page.text_content("#fingerprint") == old
        assert await page.is_visible("#verify-keep")
        assert await page.text_content("#verify-keep-fp") == old
        assert stack.app[TENANT].key == PROVISIONED_KEY
        await page.screenshot(path=shot_path("setup-rotation-pending.png"), full_page=True)

        # Nobody enters the code in time: the old key stays, the page says why.
        control.expire_pending()
        code = page.get_by_label("Verification code")
        await code.fill(control.last_mail().code)
        await page.get_by_role("button", name="Verify").click()
        await page.wait_for_selector("#verify-card", state="hidden")
        await page.wait_for_selector("#tenant-problem", state="visible")
        problem = await page.text_content("#tenant-problem") or ""
        assert problem == REMEDIATION["rotation_not_completed"] + " [rotation_not_completed]"
        assert await page.text_content("#tenant-status") == "Connected"
        assert await page.text_content("#fingerprint") == old
        assert await page.text_content("#rotate-result") == ""  # "enter the code" is over
        assert await page.is_hidden("#tenant-result")
        assert stack.app[TENANT].key == PROVISIONED_KEY
        await page.screenshot(path=shot_path("setup-rotation-expired.png"), full_page=True)

        # Again, and this time the code is entered: the organisation's key replaces the old one.
        await rotate.click()
        await page.wait_for_selector("#verify-card", state="visible")
        await code.fill(control.last_mail().code)
        await page.get_by_role("button", name="Verify").click()
        text = await result(page, "ok", "#tenant-result")
        new = fingerprint(new_key)
        assert text == f"E-mail address confirmed. Connected to Acme (key fingerprint {new})."
        await page.wait_for_selector("#verify-card", state="hidden")
        assert await page.text_content("#tenant-status") == "Connected"
        assert await page.text_content("#fingerprint") == new
        assert await page.is_hidden("#tenant-problem")
        assert stack.app[TENANT].key == new_key
        assert unexpected(console) == []
        await context.close()
    finally:
        await stack.close()


async def test_tenant_actions_env_locked(browser: Any, stack: DemoStack) -> None:
    context, page, console = await open_setup(browser, stack.demo.setup_url)
    await page.get_by_text("Advanced").click()
    assert await page.is_visible("#key-lock")
    assert await page.get_by_role("button", name="Rotate tenant key").is_disabled()
    assert await page.is_hidden("#verify-card")
    assert await page.is_hidden("#pair-card")
    await page.screenshot(path=shot_path("setup-key-locked.png"), full_page=True)
    answer = await page.evaluate(
        """async () => {
            const r = await fetch("setup/rotate-tenant-key", {method: "POST",
                headers: {"Content-Type": "application/json"}, body: "{}"});
            return [r.status, await r.json()];
        }"""
    )
    assert answer[0] == 409
    assert answer[1]["code"] == "tenant_key_env_locked"
    assert unexpected(console) == []
    await context.close()
