"""The package's shape, checked on every run: no module over 450 lines, and no import cycle
between beeflow's modules (imports under TYPE_CHECKING count too)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import grimp

PACKAGE: Final = Path(__file__).resolve().parents[1] / "beeflow"
MAX_LINES: Final = 450


def test_no_module_is_over_the_line_limit() -> None:
    too_long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert too_long == {}


def test_no_import_cycle() -> None:
    graph = grimp.build_graph("beeflow", exclude_type_checking_imports=False, cache_dir=None)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(imported=module, importer=imported):
                cycles.append((module, imported))
    assert cycles == []


DOCS: Final = PACKAGE.parent / "docs"
CITATION: Final = re.compile(r"docs/([a-z0-9-]+\.md),?\s+\"([^\"]+)\"")


def _headings(doc: Path) -> set[str]:
    """Its headings, and the bold leads that open a paragraph (`**What the budget counts.**`)."""
    out = set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            out.add(line.lstrip("#").strip().replace("`", ""))
        elif lead := re.match(r"\*\*([^*]+?)\.?\*\*", line):
            out.add(lead.group(1).replace("`", ""))
    return out


def test_every_cited_doc_section_exists() -> None:
    """The code cites the facts it depends on as `docs/<file>.md, "<section>"`: each one must
    name a heading that exists (comments may wrap between the file and the section)."""
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = re.sub(r"\n\s*#?\s*", " ", path.read_text(encoding="utf-8"))
        for name, section in CITATION.findall(text):
            doc = DOCS / name
            if not doc.is_file() or section.replace("`", "") not in _headings(doc):
                missing.append(f"{path.relative_to(PACKAGE.parent)}: {name}, {section!r}")
    assert missing == []
