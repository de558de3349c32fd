"""Studio app menus against the fake AppAPI and the fake service (routes/nextcloudStudioApps.js
and appStudio/nextcloudMenuSync.js): entry names from the UUID, two published apps as two
entries with their scripts, a rename, an unpublish, a failed or switched-off listing that
removes nothing, the signed push (and what a bad one gets), two replicas at once, the icons and
the embed script (run by node)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from beeflow.integrations import studio_assets as assets
from beeflow.integrations.studio import STATE_FILE, StudioMenus
from beeflow.integrations.studio_routes import STUDIO
from beeflow.nextcloud.client import NEXTCLOUD
from beeflow.service_client import SERVICE
from beeflow.tenant.state import TENANT
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.fakes.service import FakeService
from tests.fakes.service_control import ServiceControl
from tests.fakes.service_studio import StudioApp, StudioService
from tests.helpers import RunningConnector
from tests.nextcloud.helpers import settled
from tests.tenant.helpers import heartbeat, run_init

A = "0f8fad5b-d9cb-469f-a165-70867728950e"
B = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
SCRIPT_OCS = "/ocs/v1.php/apps/app_api/api/v1/ui/script"
MENU_OCS = "/ocs/v1.php/apps/app_api/api/v1/ui/top-menu"
NODE = shutil.which("node")


def name_of(app_id: str) -> str:
    return assets.entry_name(uuid.UUID(app_id))


@pytest.fixture
def studio() -> StudioService:
    return StudioService(ServiceControl())


@pytest.fixture
async def studio_service(studio: StudioService) -> AsyncIterator[FakeService]:
    async with FakeService(control=studio.control, extra_routes=studio.routes()) as svc:
        yield svc


@pytest.fixture
async def conn(
    connector_factory: ConnectorFactory, studio_service: FakeService, fake_nc: FakeNextcloud
) -> RunningConnector:
    running = await connector_factory(
        BEEFLOW_TENANT_KEY="auto", BEEFLOW_API_BASE_URL=str(studio_service.url)
    )
    await run_init(running, fake_nc)
    await settled(running)
    return running


def test_names_fit_nextclouds_column_and_come_back() -> None:
    for raw in (A, B, str(uuid.uuid4())):
        name = name_of(raw)
        assert len(name) == 29
        assert assets.NAME_RE.match(name)
        assert assets.app_id_of(name) == uuid.UUID(raw)
        assert len("sa_" + uuid.UUID(raw).hex) == 35  # why not hex: over the 32 of the column
    assert assets.app_id_of("sa_" + "a" * 25) is None
    assert assets.app_id_of("sa_" + "1" * 26) is None
    assert assets.display_name("A" * 40) == "A" * 31 + "\u2026"
    assert assets.display_name("  Tab\tand\nnewline  ") == "Tab and newline"
    assert assets.display_name(None) == "Studio app"
    assert assets.display_name("\u200b") == "Studio app"  # format characters are blanks


@pytest.mark.parametrize(
    ("name", "letter"),
    [("Invoices", "I"), ("42 things", "4"), ("<script>", "S"), ("élan", "L"), ("!!!", "\u2022")],
)
def test_the_tile_carries_one_safe_character(name: str, letter: str) -> None:
    svg = assets.letter_tile(name).decode()
    assert f">{letter}</text>" in svg
    assert "<script" not in svg


async def test_two_apps_then_a_rename_then_an_unpublish(
    conn: RunningConnector, fake_nc: FakeNextcloud, studio: StudioService, storage: Path
) -> None:
    menus = conn.app[STUDIO]
    studio.apps = [StudioApp(A, "Invoices"), StudioApp(B, "Holiday planner", icon="Sun")]
    result = await menus.run("test")
    assert result.to_json() == {"ok": True, "added": 2, "removed": 0, "updated": 0}
    a, b = name_of(A), name_of(B)
    assert fake_nc.top_menu[a]["displayName"] == "Invoices"
    assert fake_nc.top_menu[a]["icon"] == f"img/studio-app/{a}.svg"
    assert fake_nc.top_menu[b]["displayName"] == "Holiday planner"
    assert ("top_menu", a, "js/embed-app") in fake_nc.scripts
    assert ("top_menu", b, "js/embed-app") in fake_nc.scripts
    saved = json.loads((storage / STATE_FILE).read_text())
    assert saved["entries"][a] == {"appId": A, "displayName": "Invoices", "icon": "Sparkles"}
    assert (await heartbeat(conn, trusted=True))["studioMenus"]["entries"] == 2

    # Nothing changed: no call to AppAPI.
    before = len(fake_nc.calls_to(MENU_OCS))
    assert (await menus.run("test")).to_json() == {
        "ok": True,
        "added": 0,
        "removed": 0,
        "updated": 0,
    }
    assert len(fake_nc.calls_to(MENU_OCS)) == before

    studio.apps[0].name = "Invoices 2026"
    result = await menus.run("test")
    assert (result.added, result.updated, result.removed) == (0, 1, 0)
    assert fake_nc.top_menu[a]["displayName"] == "Invoices 2026"
    assert fake_nc.calls_to(MENU_OCS, "DELETE") == []  # an upsert, no delete

    studio.apps = studio.apps[1:]
    result = await menus.run("test")
    assert (result.added, result.updated, result.removed) == (0, 0, 1)
    assert a not in fake_nc.top_menu
    assert ("top_menu", a, "js/embed-app") not in fake_nc.scripts
    deletes = [
        c.path for c in fake_nc.calls if c.method == "DELETE" and c.path in (SCRIPT_OCS, MENU_OCS)
    ]
    assert deletes == [SCRIPT_OCS, MENU_OCS]  # the script first
    assert list(json.loads((storage / STATE_FILE).read_text())["entries"]) == [b]


async def test_a_listing_that_arrives_in_many_reads_is_read_whole(
    conn: RunningConnector, fake_nc: FakeNextcloud, studio: StudioService
) -> None:
    """A listing of a few hundred KiB comes in several socket reads: all of it is parsed."""
    studio.apps = [StudioApp(A, "Invoices " + "x" * 300_000)]
    result = await conn.app[STUDIO].run("test")
    assert result.to_json() == {"ok": True, "added": 1, "removed": 0, "updated": 0}
    assert fake_nc.top_menu[name_of(A)]["displayName"].startswith("Invoices x")


@pytest.mark.parametrize(("knob", "skipped"), [("fault", ""), ("module_off", "unsupported")])
async def test_a_failed_or_switched_off_listing_removes_nothing(
    conn: RunningConnector,
    fake_nc: FakeNextcloud,
    studio: StudioService,
    knob: str,
    skipped: str,
) -> None:
    menus = conn.app[STUDIO]
    studio.apps = [StudioApp(A, "Invoices")]
    await menus.run("test")
    if knob == "fault":
        studio.fault = 500
    else:
        studio.module_on = False
    result = await menus.run("test")
    assert result.ok is (knob != "fault")
    assert result.skipped == skipped
    assert name_of(A) in fake_nc.top_menu
    assert fake_nc.calls_to(MENU_OCS, "DELETE") == []


async def test_the_listing_is_signed(conn: RunningConnector, studio: StudioService) -> None:
    await conn.app[STUDIO].run("test")
    assert studio.listings[-1] == "ok"
    # A key the service does not hold: refused, and nothing is removed for it.
    conn.app[TENANT].key = "tk_not_the_services_key_0123456789"
    result = await conn.app[STUDIO].run("test")
    assert studio.listings[-1] == "refused_mismatch"
    assert (result.ok, result.error) == (False, "the service answered HTTP 401")


async def test_the_push_reconciles_and_answers(
    conn: RunningConnector, fake_nc: FakeNextcloud, studio: StudioService
) -> None:
    studio.apps = [StudioApp(A, "Invoices")]
    key = conn.app[TENANT].key
    assert key is not None
    outcome, body = await studio.push(str(conn.url), key, app_id=A)
    assert (outcome, body) == ("synced", {"ok": True, "added": 1, "removed": 0, "updated": 0})
    assert name_of(A) in fake_nc.top_menu


def signed(key: str, body: bytes, *, ts: int | None = None, uid: str = "") -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    digest = hashlib.sha256(body).hexdigest()
    message = f"{stamp}\nPOST\n/hooks/studio-menus\n{uid}\n{digest}"
    mac = hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()
    return {"X-Beeflow-Sig": f"{stamp}.{mac}", "X-Beeflow-NC-Uid": uid}


async def test_bad_pushes_get_200_and_a_reason(
    conn: RunningConnector, studio: StudioService
) -> None:
    key = conn.app[TENANT].key
    assert key is not None
    body = b'{"reason":"publish"}'

    async def push(data: bytes, headers: dict[str, str]) -> dict[str, object]:
        async with await conn.request(
            "POST", "/hooks/studio-menus", data=data, headers=headers
        ) as resp:
            assert resp.status == 200
            answer: dict[str, object] = await resp.json()
            return answer

    assert await push(body, {}) == {"ok": False, "error": "signature_malformed"}
    wrong = signed("tk_wrong_key_0123456789abcdef", body)
    assert await push(body, wrong) == {"ok": False, "error": "signature_invalid"}
    old = signed(key, body, ts=int(time.time()) - 3600)
    assert await push(body, old) == {"ok": False, "error": "signature_expired"}
    tampered = signed(key, body)
    assert (await push(b'{"reason":"other"}', tampered))["error"] == "signature_invalid"
    good = signed(key, body)
    assert (await push(body, good))["ok"] is True
    assert (await push(body, good))["skipped"] == "replayed"
    big = b"{" + b" " * (65 * 1024) + b"}"
    assert await push(big, signed(key, big)) == {"ok": False, "error": "body_too_large"}
    # 60 refusals a minute, then every push is refused for a while (still 200).
    for _ in range(60):
        await push(body, wrong)
    assert await push(body, signed(key, body)) == {"ok": False, "error": "rate_limited"}


async def test_two_replicas_reconcile_at_once(
    conn: RunningConnector, fake_nc: FakeNextcloud, studio: StudioService
) -> None:
    app = conn.app
    other = StudioMenus(app[STUDIO].config, app[NEXTCLOUD], app[SERVICE], app[TENANT])
    studio.apps = [StudioApp(A, "Invoices"), StudioApp(B, "Planner")]
    first, second = await asyncio.gather(app[STUDIO].run("one"), other.run("two"))
    assert first.ok
    assert second.ok
    assert sorted(fake_nc.top_menu) == sorted(["main", name_of(A), name_of(B)])
    studio.apps = []
    first, second = await asyncio.gather(app[STUDIO].run("one"), other.run("two"))
    assert first.ok
    assert second.ok
    assert sorted(fake_nc.top_menu) == ["main"]
    assert other.load() == {}


async def test_nothing_while_nextcloud_calls_are_paused(
    conn: RunningConnector, fake_nc: FakeNextcloud, studio: StudioService
) -> None:
    client = conn.app[NEXTCLOUD]
    for _ in range(client.budget.limit):
        client.budget.record_failure("test")
    studio.apps = [StudioApp(A, "Invoices")]
    before, listed = len(fake_nc.calls), len(studio.listings)
    result = await conn.app[STUDIO].run("test")
    assert result.skipped == "nextcloud_paused"
    assert len(fake_nc.calls) == before
    assert len(studio.listings) == listed


async def test_icons(conn: RunningConnector, studio: StudioService) -> None:
    studio.apps = [StudioApp(A, "Invoices")]
    await conn.app[STUDIO].run("test")
    async with await conn.request("GET", f"/img/studio-app/{name_of(A)}.svg") as resp:
        assert resp.status == 200
        assert resp.content_type == "image/svg+xml"
        assert resp.headers["Cache-Control"] == "public, max-age=300"
        assert ">I</text>" in await resp.text()
    async with await conn.request("GET", f"/img/studio-app/{name_of(B)}.svg") as resp:
        assert resp.status == 404
    async with await conn.request("GET", "/img/studio-app/sa_..%2F..%2Fsecret.svg") as resp:
        assert resp.status == 404


HARNESS = r"""
const fs = require("fs");
const [scriptPath, pathname] = process.argv.slice(2);
const content = {
  attrs: {}, children: [],
  get firstChild() { return this.children[0] || null; },
  getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; },
  setAttribute(k, v) { this.attrs[k] = String(v); },
  removeChild(c) { this.children.splice(this.children.indexOf(c), 1); },
  appendChild(c) { this.children.push(c); },
};
const document = {
  readyState: "complete",
  getElementById(id) { return id === "content" ? content : null; },
  createElement(tag) {
    return { tag, style: {}, setAttribute() {}, getBoundingClientRect() { return { top: 50 }; } };
  },
  addEventListener() {},
};
const OC = { webroot: "", generateUrl: (p) => "/index.php" + p, getRootPath: () => "" };
const window = { innerHeight: 800, OC, location: { pathname, search: "" }, addEventListener() {} };
new Function("window", "document", "setTimeout", fs.readFileSync(scriptPath, "utf8"))(
  window, document, () => {});
const el = content.children[0];
process.stdout.write(el.tag === "iframe" ? el.src : "text:" + el.textContent);
"""


def run_embed(script: str, pathname: str) -> str:
    if NODE is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed (scripts/test installs Debian's nodejs)")
        pytest.skip("node is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "s.js").write_text(script)
        (Path(tmp) / "h.js").write_text(HARNESS)
        done = subprocess.run(
            [NODE, str(Path(tmp) / "h.js"), str(Path(tmp) / "s.js"), pathname],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    return done.stdout


@pytest.mark.parametrize("harp", [False, True])
async def test_the_embed_script_frames_the_app(
    connector_factory: ConnectorFactory, harp: bool
) -> None:
    env = {"HP_SHARED_KEY": "k" * 12, "HP_FRP_ADDRESS": "harp"} if harp else {}
    running = await connector_factory(**env)
    async with await running.request("GET", "/js/embed-app.js") as resp:
        assert resp.status == 200
        script = await resp.text()
    page = f"/index.php/apps/app_api/embedded/bee_flow/{name_of(A)}"
    base = "/exapps/bee_flow/" if harp else "/index.php/apps/app_api/proxy/bee_flow/index.html"
    assert run_embed(script, page) == f"{base}?ncStudioApp={A}"
    assert run_embed(script, "/index.php/apps/app_api/embedded/bee_flow/main") == (
        "text:This Bee Flow menu entry does not name a Studio app."
    )
