"""The embed script and icon the connector serves to Nextcloud's embedded page, and what the
script does when it runs (executed by node against a minimal DOM, when node is installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from tests.conftest import ConnectorFactory
from tests.helpers import RunningConnector

NODE = shutil.which("node")

# A minimal DOM: #content with one child, an OC object, timers and observers recorded.
HARNESS = r"""
const fs = require("fs");
const [scriptPath, innerHeight, frameTop, oc] = process.argv.slice(2);
const listeners = [];
const timers = [];
const observed = [];
const created = [];
const content = {
  attrs: {}, children: [{ tag: "div", id: "old" }],
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
    const el = { tag, style: {}, attrs: {}, setAttribute(k, v) { this.attrs[k] = String(v); },
                 getBoundingClientRect() { return { top: Number(frameTop) }; } };
    created.push(el);
    return el;
  },
  addEventListener(name) { listeners.push("document:" + name); },
};
const OC = JSON.parse(oc);
if (OC.__generate) { OC.generateUrl = (p) => "/index.php" + p; }
if (OC.__root !== undefined) { const r = OC.__root; OC.getRootPath = () => r; }
const window = {
  innerHeight: Number(innerHeight), OC,
  addEventListener(name) { listeners.push(name); },
  ResizeObserver: class {
    constructor(f) { this.f = f; }
    observe(t) { observed.push(t === content); }
  },
};
new Function("window", "document", "setTimeout", fs.readFileSync(scriptPath, "utf8"))(
  window, document, (f, ms) => { timers.push(ms); f(); });
const frame = content.children[content.children.length - 1];
process.stdout.write(JSON.stringify({
  children: content.children.length, tag: frame.tag, src: frame.src, allow: frame.allow,
  title: frame.title, style: frame.attrs.style, height: frame.style.height,
  listeners, timers, observed, marked: content.getAttribute("data-beeflow-embed"),
}));
"""


async def fetch_script(conn: RunningConnector) -> str:
    async with await conn.request("GET", "/js/embed.js") as resp:
        assert resp.status == 200
        return await resp.text()


def run_script(script: str, *, inner_height: int, top: int, oc: dict[str, Any]) -> Any:
    if NODE is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed (scripts/test installs Debian's nodejs)")
        pytest.skip("node is not installed")
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        script_path = Path(tmp) / "embed.js"
        harness_path = Path(tmp) / "harness.js"
        script_path.write_text(script)
        harness_path.write_text(HARNESS)
        done = subprocess.run(
            [
                NODE,
                str(harness_path),
                str(script_path),
                str(inner_height),
                str(top),
                json.dumps(oc),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_embed_script_and_icon_are_public_with_exact_types(
    connector_factory: ConnectorFactory,
) -> None:
    conn = await connector_factory()
    bodies = []
    for path in ("/js/embed", "/js/embed.js"):
        async with await conn.request("GET", path) as resp:  # no AppAPI headers at all
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
            assert resp.headers["Cache-Control"] == "no-cache"
            bodies.append(await resp.read())
    assert bodies[0] == bodies[1]
    script = bodies[0].decode()
    assert "/apps/app_api/proxy/" in script
    assert conn.config.app_secret not in script
    async with await conn.request("GET", "/img/app.svg") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/svg+xml"
        svg = await resp.read()
    root = ElementTree.fromstring(svg)  # noqa: S314 - our own constant, served back
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    async with await conn.request("POST", "/js/embed.js") as resp:
        assert resp.status == 405


async def test_legacy_embed_frames_index_html_sized_to_the_viewport(
    connector_factory: ConnectorFactory,
) -> None:
    script = await fetch_script(await connector_factory())
    out = run_script(script, inner_height=900, top=50, oc={"__generate": True})
    # The path ends in .html so AppAPI nonces the shell's inline scripts (reference 8.2).
    assert out["src"] == "/index.php/apps/app_api/proxy/bee_flow/index.html"
    assert out["children"] == 1  # #content's old children were replaced
    assert out["tag"] == "iframe"
    assert out["allow"] == "clipboard-read; clipboard-write"
    assert out["style"] == "width:100%;border:0;display:block;"
    assert out["height"] == "850px"  # innerHeight - top of the frame
    assert {"resize", "orientationchange"} <= set(out["listeners"])
    assert out["observed"] == [True]  # a ResizeObserver on #content
    assert out["timers"] == [0, 250]
    assert out["marked"] == "1"
    small = run_script(script, inner_height=300, top=50, oc={"__generate": True})
    assert small["height"] == "320px"  # never below 320


async def test_harp_embed_frames_exapps_under_the_web_root(
    connector_factory: ConnectorFactory,
) -> None:
    conn = await connector_factory(HP_SHARED_KEY="harp-key-0123", HP_FRP_ADDRESS="harp")
    script = await fetch_script(conn)
    out = run_script(script, inner_height=700, top=100, oc={"__generate": True, "__root": "/nc"})
    assert out["src"] == "/nc/exapps/bee_flow/"
    assert out["height"] == "600px"
    bare = run_script(script, inner_height=700, top=100, oc={"__generate": True, "__root": ""})
    assert bare["src"] == "/exapps/bee_flow/"
