"""Replies rendered as Markdown in a real Chromium, safely: elements are built, never parsed from
the reply, so no raw HTML reaches the DOM; links only to http(s) and mailto, in a new tab with
rel="noopener noreferrer"; images never load."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Console, StrictStack, shots
from tests.demo.stack import DemoStack
from tests.fakes.service import StreamPlan, turn_pieces

pytestmark = pytest.mark.asyncio(loop_scope="session")

LINK = 'target="_blank" rel="noopener noreferrer"'


def a(href: str, text: str, extra: str = "") -> str:
    return f'<a href="{href}" {LINK} title="{href}"{extra}>{text}</a>'


# (name, Markdown, the HTML the renderer builds for it)
CASES = [
    ("strong", "Hello **world**", "<p>Hello <strong>world</strong></p>"),
    (
        "emphasis",
        "*one* and _two_ but snake_case_name and 2 * 3 * 4",
        "<p><em>one</em> and <em>two</em> but snake_case_name and 2 * 3 * 4</p>",
    ),
    ("strike", "~~gone~~ **_both_**", "<p><del>gone</del> <strong><em>both</em></strong></p>"),
    (
        "code span",
        "`a <b> c` and ``x ` y``",
        "<p><code>a &lt;b&gt; c</code> and <code>x ` y</code></p>",
    ),
    ("headings", "# Title\n## Sub\n###### Six", "<h3>Title</h3><h4>Sub</h4><h6>Six</h6>"),
    ("not a heading", "#hashtag", "<p>#hashtag</p>"),
    ("line breaks", "line one\nline two", "<p>line one<br>line two</p>"),
    ("paragraphs", "a\n\nb", "<p>a</p><p>b</p>"),
    ("rule", "a\n\n---\n\nb", "<p>a</p><hr><p>b</p>"),
    (
        "nested list",
        "- a\n- b\n  - c\n  - d\n- e",
        "<ul><li>a</li><li>b<ul><li>c</li><li>d</li></ul></li><li>e</li></ul>",
    ),
    ("ordered list", "3. x\n4. y", '<ol start="3"><li>x</li><li>y</li></ol>'),
    (
        "list after a line",
        "Steps:\n1. open\n2. **save**",
        "<p>Steps:</p><ol><li>open</li><li><strong>save</strong></li></ol>",
    ),
    (
        "loose list",
        "- a\n\n- b",
        "<ul><li><p>a</p></li><li><p>b</p></li></ul>",
    ),
    (
        "fenced code",
        "```js\nif (a < b) { x = '<i>'; }\n```",
        '<pre><code data-lang="js" class="lang-js">'
        "if (a &lt; b) { x = '&lt;i&gt;'; }</code></pre>",
    ),
    ("unclosed fence", "```\nstill code", "<pre><code>still code</code></pre>"),
    (
        "quote",
        "> quoted\n> **more**",
        "<blockquote><p>quoted<br><strong>more</strong></p></blockquote>",
    ),
    (
        "table",
        "| A | B | C |\n|:--|--:|:-:|\n| 1 | **2** | a \\| b |",
        '<div class="table-wrap"><table><thead><tr><th class="align-left">A</th>'
        '<th class="align-right">B</th><th class="align-center">C</th></tr></thead>'
        '<tbody><tr><td class="align-left">1</td><td class="align-right"><strong>2</strong>'
        '</td><td class="align-center">a | b</td></tr></tbody></table></div>',
    ),
    ("pipe without table", "a | b\n---", "<p>a | b</p><hr>"),
    (
        "link",
        "[docs](https://example.com/a_(b))",
        "<p>" + a("https://example.com/a_(b)", "docs") + "</p>",
    ),
    (
        "link with title",
        '[docs](https://example.com "The docs")',
        '<p><a href="https://example.com/" ' + LINK + ' title="The docs">docs</a></p>',
    ),
    (
        "bare url",
        "see https://example.com/x?y=1. Then (https://example.org/z)",
        "<p>see "
        + a("https://example.com/x?y=1", "https://example.com/x?y=1")
        + ". Then ("
        + a("https://example.org/z", "https://example.org/z")
        + ")</p>",
    ),
    (
        "autolink",
        "<mailto:team@example.com> <https://example.com>",
        "<p>"
        + a("mailto:team@example.com", "mailto:team@example.com")
        + " "
        + a("https://example.com/", "https://example.com")
        + "</p>",
    ),
    (
        "image is a link",
        "![pixel](https://tracker.example/p.png)",
        "<p>" + a("https://tracker.example/p.png", "pixel", ' class="image-link"') + "</p>",
    ),
    ("escapes", "\\*not em\\* \\[x\\](y)", "<p>*not em* [x](y)</p>"),
    ("unclosed", "**unclosed and `tick", "<p>**unclosed and `tick</p>"),
    # Raw HTML is text, never markup.
    (
        "raw img",
        '<img src=x onerror="window.__pwned=1">',
        '<p>&lt;img src=x onerror="window.__pwned=1"&gt;</p>',
    ),
    (
        "raw script",
        "<script>window.__pwned=1</script>",
        "<p>&lt;script&gt;window.__pwned=1&lt;/script&gt;</p>",
    ),
    ("entities stay text", "&lt;b&gt; &amp;", "<p>&amp;lt;b&amp;gt; &amp;amp;</p>"),
    (
        "html in a link label",
        "[<b>x</b>](https://e.example)",
        "<p>" + a("https://e.example/", "&lt;b&gt;x&lt;/b&gt;") + "</p>",
    ),
    # Targets we do not follow: the words stay, no link.
    ("javascript", "[click](javascript:window.__pwned=1)", "<p>click</p>"),
    ("javascript mixed case", "[x](JaVaScRiPt:alert(1))", "<p>x</p>"),
    ("javascript entity", "[x](javascript&#58;alert(1))", "<p>x</p>"),
    ("data url", "[d](data:text/html;base64,PHNjcmlwdD4=)", "<p>d</p>"),
    ("relative", "[settings](/index.php/settings/admin)", "<p>settings</p>"),
    ("protocol relative", "[x](//evil.example/)", "<p>x</p>"),
    ("vbscript autolink", "<vbscript:msgbox(1)>", "<p>&lt;vbscript:msgbox(1)&gt;</p>"),
    ("bad mailto", "[m](mailto:javascript:alert(1))", "<p>m</p>"),
]


async def render(page: Any, source: str) -> str:
    """What the UI's renderer builds for `source`, serialised by the browser."""
    html: str = await page.evaluate(
        """source => {
            const box = document.createElement("div");
            box.appendChild(window.BeeFlowMarkdown.render(source));
            return box.innerHTML;
        }""",
        source,
    )
    return html


async def test_markdown_renders_safely(browser: Any, stack: DemoStack) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    console = Console()
    console.attach(page)
    await page.goto(stack.demo.url)
    await page.wait_for_selector('#conn[data-state="connected"]')
    wrong = []
    for name, source, expected in CASES:
        got = await render(page, source)
        if got != expected:
            wrong.append(f"{name}: {source!r}\n  got      {got}\n  expected {expected}")
    assert not wrong, "\n".join(wrong)
    assert await page.evaluate("() => window.__pwned") is None
    assert console.errors == []
    await context.close()


# Inputs that make naive scanners quadratic or recursive: they must render, keeping their text.
HOSTILE = [
    "*a " * 20000,
    "_a " * 20000,
    "[" * 20000,
    "[a](" * 5000,
    "[" * 20000 + "](https://x.example)",
    "<" * 20000 + "x",
    "http:" * 10000,
    "`" * 3000 + "x" + "``" * 1000,
    "**" * 10000,
    "> " * 500 + "deep",
    "".join("  " * i + "- level\n" for i in range(200)),
    "http://" + "a" * 50000,
    "x " + "~~" * 10000 + "x",
]


async def test_hostile_markdown_renders_and_keeps_its_text(browser: Any, stack: DemoStack) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(stack.demo.url)
    await page.wait_for_selector('#conn[data-state="connected"]')
    for source in HOSTILE:
        text = await page.evaluate(
            """source => {
                const box = document.createElement("div");
                box.appendChild(window.BeeFlowMarkdown.render(source));
                return box.textContent;
            }""",
            source,
        )
        # Markup characters may be consumed, the words never are.
        letters = sorted(c for c in source if c.isalnum())
        assert sorted(c for c in text if c.isalnum()) == letters, source[:40]
    await context.close()


ALLOWED_TAGS = {
    "P", "BR", "STRONG", "EM", "DEL", "CODE", "PRE", "A", "UL", "OL", "LI", "H3", "H4", "H5",
    "H6", "BLOCKQUOTE", "HR", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "DIV",
}  # fmt: skip

REPLY = [
    "## Your week\n\n",
    "Here is **the pl",
    "an** for _Monday_:\n\n- write `report.md`\n- call <https://meet.example/room>\n",
    "- read [the guide](https://docs.example/guide) and [this](javascript:window.__pwned=1)\n\n",
    "| Day | Hours |\n|---|--:|\n| Mon | 6 |\n| Tue | 7.5 |\n\n",
    "```python\nprint('<b>not bold</b>')\n```\n\n",
    '> Note: <img src=x onerror="window.__pwned=1"> stays text.\n\n',
    "![tracker](https://tracker.example/pixel.png) Ask me at mailto:not-a-link but "
    "[write](mailto:team@example.com).",
]


async def test_streamed_markdown_reply_is_safe(browser: Any, strict_stack: StrictStack) -> None:
    """A reply streamed through the connector from the strict fake, its Markdown cut across
    pieces: rendered as elements, no markup from the reply, links safe, nothing loaded."""
    strict_stack.service.sse = StreamPlan(
        turn_pieces(REPLY, conversation_id="c-md", title="Planning the week")
    )
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    console = Console()
    console.attach(page)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    await page.goto(strict_stack.demo.url)
    await page.wait_for_selector('#conn[data-state="connected"]')
    await page.fill("#message", "What is my week like?")
    await page.press("#message", "Enter")
    reply = page.locator(".msg-assistant").last
    await page.wait_for_selector('.msg-assistant[data-state="done"]')
    text = reply.locator(".text")

    assert await text.locator("h4").text_content() == "Your week"
    assert await text.locator("strong").first.text_content() == "the plan"
    assert await text.locator("em").first.text_content() == "Monday"
    assert await text.locator("li code").text_content() == "report.md"
    assert await text.locator("table td").all_text_contents() == ["Mon", "6", "Tue", "7.5"]
    assert await text.locator("pre code").text_content() == "print('<b>not bold</b>')"
    assert "<img src=x onerror=" in (await text.locator("blockquote").text_content() or "")

    report = await page.evaluate(
        """() => {
            const root = document.querySelector(".msg-assistant:last-child .text");
            const all = [...root.querySelectorAll("*")];
            return {
                tags: [...new Set(all.map(e => e.tagName))],
                handlers: all.flatMap(e => [...e.attributes].map(a => a.name))
                    .filter(n => n.startsWith("on") || n === "style" || n === "src"),
                links: [...root.querySelectorAll("a")].map(a => ({
                    href: a.getAttribute("href"), rel: a.rel, target: a.target,
                    text: a.textContent,
                })),
                pwned: window.__pwned === undefined ? null : window.__pwned,
                loaded: [...document.querySelectorAll("img, script, iframe, object, embed")]
                    .map(e => e.getAttribute("src") || "").filter(s => !s.includes("assets/")
                    && s !== "bee-flow-logo.svg"),
            };
        }"""
    )
    assert set(report["tags"]) <= ALLOWED_TAGS, report["tags"]
    assert report["handlers"] == []
    assert report["pwned"] is None
    assert report["loaded"] == []
    links = report["links"]
    assert [(x["href"], x["text"]) for x in links] == [
        ("https://meet.example/room", "https://meet.example/room"),
        ("https://docs.example/guide", "the guide"),
        ("https://tracker.example/pixel.png", "tracker"),
        ("mailto:team@example.com", "write"),
    ]
    assert {(x["rel"], x["target"]) for x in links} == {("noopener noreferrer", "_blank")}
    assert "this" in (await text.text_content() or "")  # the javascript: link's words stay
    # Nothing was fetched from the reply's URLs.
    assert not [u for u in requested if "example" in u.split("/")[2]]
    chat = strict_stack.service.last("/ai/chat/direct/stream")
    assert json.loads(chat.body) == {"message": "What is my week like?"}
    await shots(page, "markdown")
    assert console.errors == []
    await context.close()


SPA_ASSETS = Path(__file__).resolve().parents[2] / "spa" / "assets"
# Every way a script can turn a string into markup or code.
HTML_SINKS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|createContextualFragment"
    r"|DOMParser|srcdoc|\beval\(|new Function|setTimeout\(\s*[\"'`]"
)


async def test_the_ui_scripts_never_parse_html() -> None:
    scripts = sorted(SPA_ASSETS.glob("*.js"))
    assert {p.name.split(".")[0] for p in scripts} == {
        "beeflow-md",
        "beeflow-service",
        "beeflow-ui",
    }
    for script in scripts:
        found = HTML_SINKS.findall(script.read_text(encoding="utf-8"))
        assert found == [], f"{script.name}: {found}"
