"""The Files right-click entries against the fake AppAPI (OCSUiController / FilesActionsMenuService
of AppAPI 32.0.0): two v2 entries registered at /init, the retired ones deleted, every bad
body answered with a code; the handler's redirect; and the embed script handing the file ids
to the UI (run by node against a minimal DOM)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from beeflow.nextcloud.files_actions import ANY_FILE, ENTRIES, RETIRED, entry_body
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.helpers import RunningConnector
from tests.tenant.helpers import heartbeat, run_init

NODE = shutil.which("node")
V1 = "/ocs/v2.php/apps/app_api/api/v1/ui/files-actions-menu"
V2 = "/ocs/v2.php/apps/app_api/api/v2/ui/files-actions-menu"


async def test_init_registers_two_v2_entries_and_removes_retired_ones(
    connector: RunningConnector, fake_nc: FakeNextcloud
) -> None:
    fake_nc.surfaces.files_actions["beeflow_routine"] = {"name": "beeflow_routine"}
    await run_init(connector, fake_nc)
    actions = fake_nc.surfaces.files_actions
    assert sorted(actions) == ["beeflow_ask", "beeflow_summarise"]
    ask, summarise = actions["beeflow_ask"], actions["beeflow_summarise"]
    assert (ask["display_name"], ask["action_handler"], ask["version"]) == (
        "Ask Bee Flow about this",
        "files-action/ask",
        "2.0",
    )
    assert (summarise["display_name"], summarise["mime"]) == ("Summarise with Bee Flow", "text")
    assert [c.json() for c in fake_nc.calls_to(V2, "POST")] == [entry_body(n) for n in ENTRIES]
    deletes = fake_nc.calls_to(V1, "DELETE")
    assert [parse_qs(c.query)["name"] for c in deletes] == [[n] for n in RETIRED]
    assert all(c.user == "" and c.auth == "ok" for c in deletes)
    body = await heartbeat(connector, trusted=True)
    assert body["filesActions"] == {"beeflow_ask": "registered", "beeflow_summarise": "registered"}
    # Again: an upsert, nothing doubled, no failure.
    await run_init(connector, fake_nc)
    assert sorted(actions) == ["beeflow_ask", "beeflow_summarise"]
    assert not any(p.get("error") for p in fake_nc.progress)


def mime_matches(entry_mime: str, node_mime: str) -> bool:
    """AppAPI's Files plugin (js/app_api-filesplugin.js, 32.0.0): shown when the node's type
    contains one of the entry's comma-separated parts."""
    return any(part.strip() in node_mime for part in entry_mime.split(","))


@pytest.mark.parametrize(
    ("node_mime", "ask", "summarise"),
    [
        ("text/plain", True, True),
        ("text/markdown", True, True),
        ("application/vnd.oasis.opendocument.text", True, True),
        ("application/pdf", True, False),
        ("image/png", True, False),
        ("video/mp4", True, False),
        ("httpd/unix-directory", False, False),
    ],
)
def test_which_files_show_which_entry(node_mime: str, ask: bool, summarise: bool) -> None:
    assert mime_matches(ANY_FILE, node_mime) is ask
    assert mime_matches(entry_body("beeflow_summarise")["mime"], node_mime) is summarise
    # The reference's "file" would have matched none of these.
    assert not mime_matches("file", node_mime)


def node(file_id: Any) -> dict[str, Any]:
    """What the Files plugin sends per node (its Bi(): fileId, name, directory, mime...)."""
    return {
        "fileId": file_id,
        "name": "notes.txt",
        "directory": "/Documents",
        "etag": "e1",
        "mime": "text/plain",
        "favorite": "false",
        "permissions": 27,
        "fileType": "file",
        "size": 12,
        "mtime": 1700000000,
        "shareTypes": None,
        "shareAttributes": None,
        "sharePermissions": None,
        "shareOwner": None,
        "shareOwnerId": None,
        "userId": "alice",
        "instanceId": "oc123",
    }


async def test_the_handler_redirects_into_the_embedded_ui(connector: RunningConnector) -> None:
    async with await connector.request(
        "POST",
        "/files-action/summarise",
        user="alice",
        json={"files": [node(12), node("13"), node(12)]},
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"redirect_handler": "main/summarise", "fileIds": [12, 13]}


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/files-action/ask", {"files": []}, 400, "no_files"),
        ("/files-action/ask", {"file": node(1)}, 400, "no_files"),
        ("/files-action/ask", [node(1)], 400, "no_files"),
        ("/files-action/ask", {"files": [node(0)]}, 400, "bad_file_id"),
        ("/files-action/ask", {"files": [node(-4)]}, 400, "bad_file_id"),
        ("/files-action/ask", {"files": [node(True)]}, 400, "bad_file_id"),
        ("/files-action/ask", {"files": [node("1e3")]}, 400, "bad_file_id"),
        ("/files-action/ask", {"files": [node(2**63)]}, 400, "bad_file_id"),
        ("/files-action/ask", {"files": ["12"]}, 400, "bad_file_id"),
        ("/files-action/ask", {"files": [node(i) for i in range(1, 102)]}, 400, "too_many_files"),
        ("/files-action/run", {"files": [node(1)]}, 404, "not_found"),
    ],
)
async def test_bad_bodies_get_a_code(
    connector: RunningConnector, path: str, body: Any, status: int, code: str
) -> None:
    async with await connector.request("POST", path, user="alice", json=body) as resp:
        assert resp.status == status
        assert (await resp.json())["code"] == code


async def test_not_json_too_big_and_anonymous(connector: RunningConnector) -> None:
    async with await connector.request(
        "POST", "/files-action/ask", user="alice", data=b"{", headers={"Content-Type": "x"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "invalid_json"
    big = b'{"files": [' + b" " * (300 * 1024) + b"]}"
    async with await connector.request("POST", "/files-action/ask", user="alice", data=big) as resp:
        assert resp.status == 413
    async with await connector.request(
        "POST", "/files-action/ask", user="", json={"files": [node(1)]}
    ) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "appapi_user_required"


HARNESS = r"""
const fs = require("fs");
const [scriptPath, pathname, search, harp] = process.argv.slice(2);
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
const window = { innerHeight: 800, OC, location: { pathname, search }, addEventListener() {} };
new Function("window", "document", "setTimeout", fs.readFileSync(scriptPath, "utf8"))(
  window, document, () => {});
process.stdout.write(content.children[0].src);
"""


def frame_src(script: str, pathname: str, search: str) -> str:
    if NODE is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed (scripts/test installs Debian's nodejs)")
        pytest.skip("node is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "embed.js"
        path.write_text(script)
        harness = Path(tmp) / "harness.js"
        harness.write_text(HARNESS)
        done = subprocess.run(
            [NODE, str(harness), str(path), pathname, search, ""],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    return done.stdout


@pytest.mark.parametrize(
    ("pathname", "search", "expected"),
    [
        (
            "/index.php/apps/app_api/embedded/bee_flow/main/summarise",
            "?fileIds=12,13",
            "?ncFileIds=12,13&ncFileAction=summarise",
        ),
        (
            "/index.php/apps/app_api/embedded/bee_flow/main/ask",
            "?fileIds=7",
            "?ncFileIds=7&ncFileAction=ask",
        ),
        (
            "/index.php/apps/app_api/embedded/bee_flow/main/ask",
            "?fileIds=7%2C8",
            "?ncFileIds=7,8&ncFileAction=ask",
        ),
        ("/index.php/apps/app_api/embedded/bee_flow/main/other", "?fileIds=7", "?ncFileIds=7"),
        ("/index.php/apps/app_api/embedded/bee_flow/main", "", ""),
        ("/index.php/apps/app_api/embedded/bee_flow/main/ask", "?fileIds=7<script>", ""),
        ("/index.php/apps/app_api/embedded/bee_flow/main/ask", "?fileIds=", ""),
        (
            "/index.php/apps/app_api/embedded/bee_flow/main/ask",
            "?x=1&fileIds=9&y=2",
            "?ncFileIds=9&ncFileAction=ask",
        ),
    ],
)
async def test_the_embed_script_hands_the_file_ids_to_the_ui(
    connector_factory: ConnectorFactory, pathname: str, search: str, expected: str
) -> None:
    for harp, base in (
        ({}, "/index.php/apps/app_api/proxy/bee_flow/index.html"),
        ({"HP_SHARED_KEY": "k" * 12, "HP_FRP_ADDRESS": "harp"}, "/exapps/bee_flow/"),
    ):
        conn = await connector_factory(**harp)
        async with await conn.request("GET", "/js/embed.js") as resp:
            script = await resp.text()
        assert frame_src(script, pathname, search) == base + expected
