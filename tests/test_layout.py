"""The package's shape, checked on every run: no module over 450 lines, and no import cycle
between beeflow's modules (imports under TYPE_CHECKING count too)."""

from __future__ import annotations

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
